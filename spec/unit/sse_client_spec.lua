-- The SSE client's parser (sluice.http.sse_parser) against the WHATWG
-- event-stream parsing rules, fed whole and a byte at a time.
package.preload["sluice.core"] = package.preload["sluice.core"] or function() return { AWAIT = {} } end
local http = require "sluice.http"

local function parse(stream, step, max)
  local out = {}
  local feed = http.sse_parser(function(ev) out[#out + 1] = ev end, max or 1000)
  step = step or #stream
  for i = 1, #stream, step do feed(stream:sub(i, i + step - 1)) end
  return out
end

local function both(stream, want)
  assert.same(want, parse(stream))
  assert.same(want, parse(stream, 1))
  assert.same(want, parse(stream, 3))
end

describe("the SSE client's parser", function()
  it("dispatches data at a blank line; several data lines join with LF", function()
    both("data: a\ndata: b\n\n", { { event = "message", data = "a\nb" } })
  end)

  it("splits lines at CR, LF and CRLF, a CRLF split across chunks included", function()
    both("data: a\rdata: b\r\n\r\ndata: c\n\n", { { event = "message", data = "a\nb" }, { event = "message", data = "c" } })
  end)

  it("skips a BOM at the very start only", function()
    both("\239\187\191data: x\n\n", { { event = "message", data = "x" } })
    both("data: x\n\n\239\187\191data: y\n\n", { { event = "message", data = "x" } })
  end)

  it("ignores comments, unknown fields and events without data", function()
    both(": hello\nfoo: bar\nevent: lonely\n\ndata: z\n\n", { { event = "message", data = "z" } })
  end)

  it("takes one space after the colon away, and a field without a colon is the whole line", function()
    both("data:  two\ndata\n\n", { { event = "message", data = " two\n" } })
  end)

  it("keeps the last id, ignores ids with NUL, and takes retry only as digits", function()
    both("id: 1\ndata: a\n\nid: x\0y\ndata: b\nretry: 2500\n\nretry: 1s\ndata: c\n\n", {
      { id = "1", event = "message", data = "a" },
      { id = "1", event = "message", data = "b", retry = 2500 },
      { id = "1", event = "message", data = "c" },
    })
  end)

  it("names events, which last one event only", function()
    both("event: tick\ndata: 1\n\ndata: 2\n\n", { { event = "tick", data = "1" }, { event = "message", data = "2" } })
  end)

  it("refuses an event or a line over its bound", function()
    assert.has_error(function() parse(("data: xxxxxxxxxx\n"):rep(10) .. "\n", 7, 50) end, "an event over 50 bytes")
    assert.has_error(function() parse(("x"):rep(100), 7, 50) end, "a line over 50 bytes")
  end)
end)
