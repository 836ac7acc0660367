local event = require "sluice.event"
local json = require "sluice.json"

describe("sluice.event", function()
  it("turns strings, numbers and tables into data", function()
    assert.equal("hi", event.to_data("hi"))
    assert.equal("42", event.to_data(42))
    assert.equal("1.5", event.to_data(1.5))
    assert.same({ a = { 1, 2 } }, json.decode(event.to_data({ a = { 1, 2 } })))
    local ok, why = event.to_data(function() end)
    assert.is_nil(ok)
    assert.equal("a function", why)
    ok, why = event.to_data(true)
    assert.equal("a boolean", why)
  end)

  it("builds messages with id, event and retry", function()
    local m = event.message({ x = 1 }, { id = 5, event = "tick", retry = 100 })
    assert.is_true(event.is_message(m))
    assert.equal('{"x":1}', m.data)
    assert.equal("5", m.id)
    assert.equal("tick", m.event)
    assert.equal(100, m.retry)
    assert.is_false(event.is_message({}))
  end)

  it("refuses CR, LF and NUL in id and event, and bad retry", function()
    for _, bad in ipairs { "a\nb", "a\rb", "a\0b" } do
      assert.has_error(function() event.message("x", { id = bad }) end, "id may not contain CR, LF or NUL")
      assert.has_error(function() event.message("x", { event = bad }) end, "event may not contain CR, LF or NUL")
    end
    assert.has_error(function() event.message("x", { retry = -1 }) end)
    assert.has_error(function() event.message("x", { retry = 1.5 }) end)
    assert.has_error(function() event.message(nil) end)
    assert.has_error(function() event.message("x", "opts") end)
  end)
end)
