-- Raw mode and timers against the real binary.
local gw = require "gateway"
local json = require "cjson"

describe("raw mode", function()
  local s
  setup(function() s = gw.start("spec/fixtures/raw_app.lua") end)
  teardown(function() s:stop() end)

  local function state() return json.decode(s:request("GET", "/state").body) end

  it("sends the SSE head and the script's bytes exactly, and stays open after fn returns", function()
    local c = s:sse("/raw")
    assert.equal(200, c.status)
    assert.equal("text/event-stream; charset=utf-8", c.headers["content-type"])
    assert.equal("1", c.headers["x-raw"])
    assert.equal("hello", c:read_event().data)
    local ev = c:read_event()
    assert.same({ "formatted", "x", "1" }, { ev.data, ev.event, ev.id })
    assert.same({ " note" }, c:read_event().comments)
    local more, err = c:read_event(0.3)
    assert.is_nil(more)
    assert.equal("timeout", err) -- still open: fn returned, nobody closed it
    c:close()
  end)

  it("takes opts.status and owns the wire", function()
    local c = s:sse("/raw-plain")
    assert.equal(202, c.status)
    assert.equal("text/plain", c.headers["content-type"])
    assert.is_true(c:closed_by_peer())
    assert.equal("just bytes\n", c.buf)
    local st = state()
    assert.same({ json.null, "closed" }, st.results.after_close)
    assert.is_true(st.results.closed_flag)
  end)

  it("logs a raising fn with its traceback and closes the connection", function()
    local c = s:sse("/raw-boom")
    assert.equal("before", c:read_event().data)
    assert.is_true(c:closed_by_peer())
    gw.wait_for(function() return s:logs():find("raw_app%.lua:%d+: raw failure") end)
  end)

  it("sends heartbeats on raw connections only when asked", function()
    local c = s:sse("/raw-beat")
    assert.equal("hi", c:read_event().data)
    assert.same({ "" }, c:read_event(2).comments)
    c:close()
    c = s:sse("/raw-nobeat")
    assert.equal("hi", c:read_event().data)
    assert.is_nil((c:read_event(0.4)))
    c:close()
  end)

  it("fans out from a POST to stored handles; on_close forgets them, once each", function()
    local a, b = s:sse("/raw"), s:sse("/raw")
    for _, c in ipairs { a, b } do for _ = 1, 3 do c:read_event() end end
    assert.equal("2", s:request("POST", "/broadcast", "to all").body)
    assert.equal("to all", a:read_event().data)
    assert.equal("to all", b:read_event().data)
    local before = #state().closes
    a:close()
    gw.wait_for(function() return state().live == 1 end, 5, "a to be forgotten")
    assert.equal("1", s:request("POST", "/broadcast", "to b").body)
    assert.equal("to b", b:read_event().data)
    b:close()
    gw.wait_for(function() return state().live == 0 end, 5, "b to be forgotten")
    local st = state()
    assert.equal(before + 2, #st.closes)
    -- ids are unique
    local seen = {}
    for _, id in ipairs(st.ids) do assert.is_nil(seen[id]); seen[id] = true end
  end)

  it("makes a stored handle of a closed connection safe to call", function()
    local c = s:sse("/keep")
    assert.equal("kept", c:read_event().data)
    c:close()
    gw.wait_for(function()
      local r = json.decode(s:request("POST", "/write-kept").body)
      return r.closed and r
    end, 5, "the handle to see the close")
    local r = json.decode(s:request("POST", "/write-kept").body)
    assert.same({ ok = false, err = "closed", ok2 = false, err2 = "closed", closed = true }, r)
  end)

  it("returns overflow past queue_limit and closes the slow consumer", function()
    local c = s:sse("/keep")
    assert.equal("kept", c:read_event().data)
    -- the client reads nothing more: the kernel buffers fill, then the queue
    local r = json.decode(s:request("POST", "/stuff-kept").body)
    assert.equal("overflow", r.err)
    assert.is_true(r.closed)
    assert.matches("slow consumer", s:logs())
    c:close()
  end)
end)

describe("timers", function()
  local s
  setup(function() s = gw.start("spec/fixtures/raw_app.lua") end)
  teardown(function() s:stop() end)

  local function state() return json.decode(s:request("GET", "/state").body) end

  it("runs every repeatedly, after once (it may sleep), and not a stopped timer", function()
    gw.wait_for(function() return state().ticks >= 5 end, 5, "ticks")
    gw.wait_for(function() return state().afters == 1 end, 5, "the after timer")
    -- the stopped after-timer (due at 0.2s) never adds its 100
    gw.wait_for(function() return state().ticks >= 10 end, 5, "more ticks")
    assert.equal(1, state().afters)
    assert.is_true(state().monotonic)
  end)

  it("keeps an every timer running after an error, logging each with a traceback", function()
    gw.wait_for(function() return state().boom >= 3 end, 5, "failing ticks")
    local logs = s:logs()
    assert.matches("raw_app%.lua:%d+: timer failure 1", logs)
    assert.matches("raw_app%.lua:%d+: timer failure 2", logs)
    assert.matches("stack traceback", logs)
  end)

  it("stops with :stop()", function()
    assert.is_true(state().ticker_active)
    local at = tonumber(s:request("POST", "/stop-ticker").body)
    local st = state()
    assert.is_false(st.ticker_active)
    -- Wait until the failing timer has run five more times: the ticker would have too.
    local boom = st.boom
    gw.wait_for(function() return state().boom >= boom + 5 end, 5, "time to pass")
    assert.equal(at, state().ticks)
  end)
end)
