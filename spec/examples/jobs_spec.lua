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

  it("shows the new version of the script each step a job of the old version takes, at once", function()
    local gw = testing.start("examples/jobs.lua")
    local id = json.decode(gw:request("POST", "/jobs?steps=8&delay=0.1").body).id
    local st = gw:stream("/jobs/" .. id .. "/events")
    assert.equal(0, json.decode(assert(st:next()).data).step) -- the snapshot
    gw:reload()
    -- each step the old version's timer body writes is in the new version's list
    -- before (or as) its event arrives: nothing waits for a hand-over
    local p
    repeat
      p = json.decode(assert(st:next()).data)
      local listed = json.decode(gw:request("GET", "/jobs").body)[id]
      assert.is_true(listed.step >= p.step)
    until p.done
    assert.same({ 8, true }, { json.decode(gw:request("GET", "/jobs").body)[id].step, p.done })
    assert.equal(tostring(tonumber(id) + 1), json.decode(gw:request("POST", "/jobs?steps=1&delay=0").body).id)
    st:close()
    gw:stop()
  end)
end)
