-- examples/presence.lua with sluice.testing: who is here, shouts, and a reload in between.
local testing = require "sluice.testing"
local json = require "cjson"

describe("examples/presence.lua", function()
  it("tells everyone who is here, across a reload of the script", function()
    local gw = testing.start("examples/presence.lua")
    local ann = gw:stream("/presence?name=ann")
    local function names(st)
      while true do
        local ev = assert(st:next())
        if ev.event == "presence" then return json.decode(ev.data) end
      end
    end
    assert.same({ "ann" }, names(ann))
    gw:reload()
    local bob = gw:stream("/presence?name=bob")
    assert.same({ "ann", "bob" }, names(ann))
    assert.same({ "ann", "bob" }, names(bob))
    assert.is_true(gw:request("POST", "/shout", { body = "hello all" }).status < 300)
    ann:close()
    bob:close()
    gw:stop()
  end)
end)
