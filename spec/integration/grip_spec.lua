-- examples/grip.lua end to end, as a Pushpin app would see it: answers passed
-- through with a valid Grip-Sig on the way in, streams held on their
-- channels, published http-stream content appended, keep-alives, close.
local gw = require "gateway"
local json = require "cjson"

local function start(env)
  local port = gw.free_port()
  local prefix = { "env", "GRIP_SELF=http://127.0.0.1:" .. port }
  for _, e in ipairs(env or {}) do prefix[#prefix + 1] = e end
  return gw.start("examples/grip.lua", { port = port, log_level = "info", prefix = prefix })
end

local function publish(s, items)
  return s:request("POST", "/publish/", json.encode({ items = items }), { ["Content-Type"] = "application/json" })
end

describe("examples/grip.lua", function()
  it("passes an ordinary answer through, signed on the way in", function()
    local s = start()
    local r = s:request("GET", "/hello")
    assert.equal(200, r.status)
    assert.equal("hello world\n", r.body)
    assert.equal("yes", r.headers["x-grip-sig-valid"])
    assert.equal(404, s:request("GET", "/nothing-here").status)
    s:stop()
  end)

  it("holds a stream on its channels: the origin's body, then what is published, keep-alives, close", function()
    local s = start()
    local c = s:sse("/stream?keepalive=1")
    assert.equal(200, c.status)
    assert.matches("^text/event%-stream", c.headers["content-type"])
    assert.is_nil(c.headers["grip-hold"])
    assert.same({ "ok" }, assert(c:read_event()).comments)
    assert.equal(200, publish(s, { { channel = "test", formats = { ["http-stream"] = { content = "event: news\ndata: hi\n\n" } } } }).status)
    local ev = assert(c:read_event())
    assert.equal("news", ev.event)
    assert.equal("hi", ev.data)
    -- the other channel of Grip-Channel, and base64 content
    publish(s, { { channel = "other", formats = { ["http-stream"] = { ["content-bin"] = "ZGF0YTogYmluCgo=" } } } })
    assert.equal("bin", assert(c:read_event()).data)
    -- a second of nothing: the keep-alive (":\n\n")
    assert.same({ "" }, assert(c:read_event(5)).comments)
    publish(s, { { channel = "test", formats = { ["http-stream"] = { action = "close" } } } })
    assert.is_true(c:closed_by_peer())
    s:stop()
  end)

  it("refuses a malformed publish and answers 502 when the origin is away", function()
    local s = start { "GRIP_ORIGIN=http://127.0.0.1:1" }
    assert.equal(400, s:request("POST", "/publish/", "{}").status)
    local r = s:request("GET", "/anything")
    assert.equal(502, r.status)
    assert.matches("^origin: connect", r.body)
    s:stop()
  end)
end)
