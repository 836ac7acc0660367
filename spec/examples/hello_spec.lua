-- examples/hello.lua, tested as a user tests a script: with sluice.testing.
local testing = require "sluice.testing"

describe("examples/hello.lua", function()
  local gw
  setup(function() gw = testing.start("examples/hello.lua") end)
  teardown(function() gw:stop() end)

  it("answers a health check", function()
    local res = gw:request("GET", "/health")
    assert.equal(200, res.status)
    assert.equal("ok\n", res.body)
  end)

  it("sends one event, then ends the stream", function()
    local st = gw:stream("/hello")
    assert.equal(200, st.status)
    assert.equal("text/event-stream; charset=utf-8", st.headers["content-type"])
    assert.equal("Hello, world!", st:next().data)
    assert.is_true(st:closed())
  end)

  it("greets by name with an id and an event name", function()
    local ev = gw:events("/hello/ann")[1]
    assert.equal("greeting", ev.event)
    assert.equal("1", ev.id)
    assert.equal("Hello, ann!", require("cjson").decode(ev.data).greeting)
  end)
end)
