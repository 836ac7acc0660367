-- examples/progress.lua with sluice.testing: steps, resumption, a finished job's 204.
local testing = require "sluice.testing"
local json = require "cjson"

describe("examples/progress.lua", function()
  local gw
  setup(function() gw = testing.start("examples/progress.lua") end)
  teardown(function() gw:stop() end)

  it("reports each step, and resumes after Last-Event-ID", function()
    local evs = gw:events("/progress/import?steps=4&delay=0.01", { count = 2 })
    assert.equal("progress", evs[1].event)
    assert.equal(1, json.decode(evs[1].data).step)
    local rest = gw:events("/progress/import?steps=4&delay=0.01", { count = 3, headers = { ["Last-Event-ID"] = "2" } })
    assert.equal(3, json.decode(rest[1].data).step)
    assert.equal(4, json.decode(rest[2].data).step)
    assert.equal("done", rest[3].event)
  end)
end)
