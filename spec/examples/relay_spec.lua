-- examples/relay.lua with sluice.testing: a generation from the script's own
-- fake model, watched, and resumed with Last-Event-ID.
local testing = require "sluice.testing"
local json = require "cjson"

describe("examples/relay.lua", function()
  it("streams a generation token by token, and a viewer that reconnects resumes where it was", function()
    local port = testing.free_port()
    local gw = testing.start("examples/relay.lua", { port = port, env = { RELAY_SELF = "http://127.0.0.1:" .. port } })
    local res = gw:request("POST", "/generations", { body = json.encode({ prompt = "hi" }),
      headers = { ["Content-Type"] = "application/json" } })
    assert.equal(201, res.status)
    local path = json.decode(res.body).events
    -- two tokens, then away
    local first = gw:events(path, { count = 2 })
    assert.same({ "token", "token" }, { first[1].event, first[2].event })
    -- back with the last id: the rest, up to "done", with nothing repeated
    local st = gw:stream(path, { headers = { ["Last-Event-ID"] = first[2].id } })
    local text = json.decode(first[1].data).text .. json.decode(first[2].data).text
    local ev = assert(st:next())
    while ev.event == "token" do
      text = text .. json.decode(ev.data).text
      ev = assert(st:next())
    end
    assert.equal("done", ev.event)
    assert.matches("^You said: hi%.", text)
    st:close()
    gw:stop()
  end)
end)
