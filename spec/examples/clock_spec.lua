-- examples/clock.lua with sluice.testing: ticks, resumption after Last-Event-ID, the end.
local testing = require "sluice.testing"

describe("examples/clock.lua", function()
  local gw
  setup(function() gw = testing.start("examples/clock.lua") end)
  teardown(function() gw:stop() end)

  it("sends five ticks a response, and resumes after Last-Event-ID", function()
    local ticks = gw:events("/clock?interval=0.05", { count = 5 })
    for i, ev in ipairs(ticks) do assert.equal(tostring(i), ev.id) end
    local next = gw:events("/clock?interval=0.05", { count = 2, headers = { ["Last-Event-ID"] = "5" } })
    assert.equal("6", next[1].id)
    assert.equal("7", next[2].id)
  end)

  it("tells the browser to stop after tick 60 (204)", function()
    assert.equal(204, gw:request("GET", "/clock", { headers = { ["Last-Event-ID"] = "60" } }).status)
  end)
end)
