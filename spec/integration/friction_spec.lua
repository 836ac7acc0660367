-- Small things a script author meets: conn:close() answers like conn:send,
-- an empty ?lastEventId= is no id, a log line keeps what follows a NUL, and a
-- configuration type error says the type it got.
local gw = require "gateway"

local APP = [[
local sluice = require "sluice"
sluice.configure { history = 10 }
sluice.get("/sub", function(req)
  return sluice.subscribe("f", { snapshot = sluice.message(req.last_event_id or "none", { event = "from" }) })
end)
sluice.post("/pub", function(req) return sluice.response(202, sluice.publish("f", req.body)) end)
sluice.get("/close-twice", function()
  return sluice.raw(function(conn)
    local a = conn:close()
    local b, err = conn:close()
    sluice.log.info("close answers", tostring(a), tostring(b), tostring(err))
  end)
end)
sluice.get("/nul", function() sluice.log.info("before\0after") return sluice.response(200, "ok") end)
sluice.get("/config", function()
  local ok, err = pcall(sluice.configure, { heartbeat = "15" })
  return sluice.response(200, err)
end)
]]

describe("script authors' friction", function()
  local s
  setup(function() s = gw.start(APP, { source = true }) end)
  teardown(function() s:stop() end)

  it("conn:close() returns true, then nil and 'closed'", function()
    local c = s:sse("/close-twice")
    assert.is_true(c:closed_by_peer())
    gw.wait_for(function() return s:logs():find("close answers true nil closed", 1, true) end, 5, "the answers")
  end)

  it("treats an empty ?lastEventId= as no id (no replay of the whole history)", function()
    s:request("POST", "/pub", "old")
    local c = s:sse("/sub?lastEventId=")
    local ev = assert(c:read_event())
    assert.equal("from", ev.event)
    assert.equal("none", ev.data)
    s:request("POST", "/pub", "new")
    assert.equal("new", assert(c:read_event()).data) -- not "old" replayed first
    c:close()
  end)

  it("keeps a log line whole past a NUL byte", function()
    assert.equal(200, s:request("GET", "/nul").status)
    gw.wait_for(function() return s:logs():find("before\\0after", 1, true) end, 5, "the whole line")
  end)

  it("says the type a configuration key got", function()
    assert.matches('heartbeat\' must be a number of seconds %(0 = off%), got the string "15"', s:request("GET", "/config").body)
  end)
end)
