-- examples/chat.lua with sluice.testing: posting needs the token, readers get
-- what is posted, a reader that comes back gets what it missed, and a reload
-- drops nobody.
local testing = require "sluice.testing"

describe("examples/chat.lua", function()
  local gw
  setup(function() gw = testing.start("examples/chat.lua", { env = { CHAT_TOKEN = "secret" } }) end)
  teardown(function() gw:stop() end)

  local function post(text, token)
    return gw:request("POST", "/publish/lobby", { body = text, headers = { Authorization = "Bearer " .. (token or "secret") } })
  end

  it("refuses a post without the token", function()
    assert.equal(401, post("hi", "wrong").status)
  end)

  it("delivers posts to readers, replays what a returning reader missed, and survives a reload", function()
    local reader = gw:stream("/events/lobby")
    assert.equal(200, reader.status)
    assert.is_true(post("first").status < 300)
    local first = reader:next()
    reader:close()
    assert.is_true(post("second").status < 300)
    gw:reload()
    local back = gw:events("/events/lobby", { count = 1, headers = { ["Last-Event-ID"] = first.id } })
    assert.matches("second", back[1].data)
  end)
end)
