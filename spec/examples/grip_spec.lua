-- examples/grip.lua with sluice.testing: a stream the demo origin holds, fed
-- through Pushpin's publish API.
local testing = require "sluice.testing"
local json = require "cjson"

describe("examples/grip.lua", function()
  it("holds the origin's stream and appends what is published to its channel", function()
    local port = testing.free_port()
    local gw = testing.start("examples/grip.lua", { port = port, env = { GRIP_SELF = "http://127.0.0.1:" .. port } })
    assert.equal("hello world\n", gw:request("GET", "/hello").body)
    local st = gw:stream("/stream")
    assert.equal(200, st.status)
    local item = { channel = "test", formats = { ["http-stream"] = { content = "event: news\ndata: hi\n\n" } } }
    assert.equal(200, gw:request("POST", "/publish/", { body = json.encode({ items = { item } }) }).status)
    local ev = assert(st:next())
    assert.same({ "news", "hi" }, { ev.event, ev.data })
    st:close()
    gw:stop()
  end)
end)
