-- examples/jobs.lua with sluice.testing: a job's progress followed, and its end waited for.
local testing = require "sluice.testing"
local json = require "cjson"

describe("examples/jobs.lua", function()
  it("starts a job, follows its progress to done, and answers the long poll", function()
    local gw = testing.start("examples/jobs.lua")
    local res = gw:request("POST", "/jobs?steps=5&delay=0.2") -- a second: the follower below joins while it runs
    assert.equal(202, res.status)
    local id = json.decode(res.body).id
    local st = gw:stream("/jobs/" .. id .. "/events")
    local p
    repeat p = json.decode(assert(st:next()).data) until p.done
    assert.equal(5, p.step)
    st:close()
    assert.equal(200, gw:request("GET", "/jobs/" .. id .. "/wait").status)
    gw:stop()
  end)
end)
