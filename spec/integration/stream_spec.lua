-- Stream mode against the real binary: generators, sleep, backpressure,
-- disconnects, heartbeats, retry and Last-Event-ID.
local gw = require "gateway"
local json = require "cjson"

local function events(c, n)
  local out = {}
  for i = 1, n do out[i] = assert(c:read_event()) end
  return out
end

describe("stream mode", function()
  local s
  setup(function() s = gw.start("spec/fixtures/stream_app.lua") end)
  teardown(function() s:stop() end)

  local function stats() return json.decode(s:request("GET", "/stats").body) end

  it("sends each yield of a wrap generator as an event, then ends", function()
    local c = s:sse("/count?to=3")
    assert.equal("text/event-stream; charset=utf-8", c.headers["content-type"])
    local evs = events(c, 3)
    for i = 1, 3 do
      assert.equal(tostring(i), evs[i].data)
      assert.equal(tostring(i), evs[i].id)
    end
    assert.is_true(c:closed_by_peer())
  end)

  it("resumes after Last-Event-ID, from the header or the query", function()
    local c = s:sse("/count?to=5", { ["Last-Event-ID"] = "3" })
    local evs = events(c, 2)
    assert.same({ "4", "5" }, { evs[1].data, evs[2].data })
    assert.is_true(c:closed_by_peer())
    c = s:sse("/count?to=5&lastEventId=4")
    assert.equal("5", c:read_event().data)
    assert.is_true(c:closed_by_peer())
  end)

  it("takes plain iterator functions and coroutines", function()
    local c = s:sse("/iter")
    local evs = events(c, 3)
    assert.same({ "v1", "v2", "v3" }, { evs[1].data, evs[2].data, evs[3].data })
    assert.is_true(c:closed_by_peer())
    c = s:sse("/thread")
    evs = events(c, 3)
    assert.same({ n = 3 }, json.decode(evs[3].data))
    assert.is_true(c:closed_by_peer())
    c = s:sse("/returns")
    evs = events(c, 2)
    assert.same({ "a", "b" }, { evs[1].data, evs[2].data })
    assert.is_true(c:closed_by_peer())
  end)

  it("lets a handler sleep before it answers", function()
    local c = s:sse("/late")
    assert.equal("late", c:read_event().data)
  end)

  it("applies stream options: headers, retry first, heartbeats, on_close", function()
    local c = s:sse("/explicit")
    assert.equal("yes", c.headers["x-stream"])
    assert.equal(700, c:read_event().retry)
    assert.equal("first", c:read_event().data)
    local beat = c:read_event(3)
    assert.is_nil(beat.data)
    assert.same({ "" }, beat.comments)
    c:close()
    gw.wait_for(function() return stats().closed.explicit == 1 end, 5, "on_close")
  end)

  it("notices a client that leaves at once: sleep cancelled, on_close run, coroutine collected", function()
    local c = s:sse("/forever/a")
    assert.equal("hello a", c:read_event().data)
    local c2 = s:sse("/forever/b")
    assert.equal("hello b", c2:read_event().data)
    assert.same({ "a", "b" }, stats().alive)
    c:close()
    gw.wait_for(function()
      local st = stats()
      return st.closed.a == 1 and #st.alive == 1 and st.alive[1] == "b"
    end, 5, "the generator of a to be closed and collected")
    c2:close()
    gw.wait_for(function() return #stats().alive == 0 end, 5, "b collected")
    assert.equal(1, stats().closed.b)
  end)

  it("does not resume a generator while its client does not read, and resumes when it does", function()
    local c = s:sse("/flood")
    -- Wait until the producer has stopped: the count holds still over several polls.
    local last, still = -1, 0
    gw.wait_for(function()
      local n = stats().produced.flood or 0
      if n == last and n > 0 then still = still + 1 else still = 0 end
      last = n
      return still >= 5
    end, 20, "the producer to pause")
    local rss_paused = s:rss_kb()
    -- Far fewer events than an unbounded producer would make: socket buffers plus the queue.
    assert.is_true(last < 2000, "produced " .. last)
    -- Draining lets it go on.
    for _ = 1, 200 do assert(c:read_event()) end
    gw.wait_for(function() return stats().produced.flood > last end, 5, "the producer to resume")
    local rss_after = s:rss_kb()
    if gw.REAL_MEMORY then assert.is_true(rss_after - rss_paused < 8 * 1024, ("RSS grew %d KiB"):format(rss_after - rss_paused)) end
    c:close()
  end)

  it("ends the stream and logs the traceback when a generator raises", function()
    local c = s:sse("/boom-mid")
    assert.equal("one", c:read_event().data)
    assert.is_true(c:closed_by_peer())
    local logs = gw.wait_for(function() local l = s:logs(); return l:find("mid-stream failure", 1, true) and l end)
    assert.matches("stream_app%.lua:%d+: mid%-stream failure", logs)
    assert.matches("stack traceback", logs)
    assert.equal(200, s:request("GET", "/stats").status)
  end)

  it("names a value it cannot send as the error", function()
    local c = s:sse("/bad-yield")
    assert.equal("ok", c:read_event().data)
    assert.is_true(c:closed_by_peer())
    gw.wait_for(function() return s:logs():find("cannot send a function as an event", 1, true) end)
  end)

  it("runs many generators at once on one loop", function()
    local clients = {}
    for i = 1, 300 do clients[i] = s:sse("/tick") end
    for i = 1, 300 do
      local evs = events(clients[i], 3)
      assert.same({ "1", "2", "3" }, { evs[1].data, evs[2].data, evs[3].data })
    end
    for i = 1, 300 do clients[i]:close() end
  end)
end)

describe("stream settings from sluice.configure", function()
  it("sends the configured retry first and heartbeats on idle streams", function()
    local s = gw.start([[
      local sluice = require "sluice"
      sluice.configure { heartbeat = 0.1, retry = 1234 }
      sluice.get("/idle", function()
        return coroutine.wrap(function() coroutine.yield("x"); sluice.sleep(60) end)
      end)
      sluice.get("/quiet", function()
        return sluice.stream(coroutine.wrap(function() coroutine.yield("x"); sluice.sleep(60) end), { heartbeat = 0 })
      end)
    ]], { source = true })
    local c = s:sse("/idle")
    assert.equal(1234, c:read_event().retry)
    assert.equal("x", c:read_event().data)
    for _ = 1, 3 do assert.same({ "" }, c:read_event(2).comments) end
    c:close()
    c = s:sse("/quiet")
    assert.equal(1234, c:read_event().retry)
    assert.equal("x", c:read_event().data)
    local ev, err = c:read_event(0.5)
    assert.is_nil(ev)
    assert.equal("timeout", err)
    c:close()
    s:stop()
  end)
end)
