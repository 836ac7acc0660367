-- examples/authz.lua with sluice.testing: the demo auth service's yes and no.
local testing = require "sluice.testing"

describe("examples/authz.lua", function()
  it("subscribes the tokens the auth service allows and passes its refusals on", function()
    local port = testing.free_port()
    local gw = testing.start("examples/authz.lua", { port = port, env = { AUTHZ_SELF = "http://127.0.0.1:" .. port } })
    local st = gw:stream("/events/news", { headers = { Authorization = "Bearer reader" } })
    assert.equal(200, st.status)
    assert.equal(202, gw:request("POST", "/events/news", { body = "hello" }).status)
    assert.equal("hello", assert(st:next()).data)
    assert.equal(403, gw:request("GET", "/events/sports", { headers = { Authorization = "Bearer news-only" } }).status)
    assert.equal(401, gw:request("GET", "/events/news").status)
    st:close()
    gw:stop()
  end)
end)
