-- examples/tokens.lua with sluice.testing: tokens, then "done", then the end.
local testing = require "sluice.testing"
local json = require "cjson"

describe("examples/tokens.lua", function()
  it("streams the answer token by token and ends with done", function()
    local gw = testing.start("examples/tokens.lua")
    local st = gw:stream("/chat?prompt=hello")
    local text, ev = {}, nil
    repeat
      ev = assert(st:next())
      if ev.event == "token" then text[#text + 1] = json.decode(ev.data).text end
    until ev.event == "done"
    assert.matches("^Server%-Sent Events keep one HTTP response open", table.concat(text))
    assert.is_true(st:closed())
    gw:stop()
  end)
end)
