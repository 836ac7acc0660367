-- Pub/sub against the real binary: fan-out, ids, multi-channel delivery,
-- history and Last-Event-ID replay, slow consumers, disconnects.
local gw = require "gateway"
local json = require "cjson"

describe("pub/sub", function()
  local s
  setup(function() s = gw.start("spec/fixtures/pubsub_app.lua") end)
  teardown(function() s:stop() end)

  local function pub(chans, data, q)
    local res = s:request("POST", "/pub/" .. chans .. (q and ("?" .. q) or ""), data)
    assert.equal(202, res.status)
    return res.body
  end
  local function count(chan) return tonumber(s:request("GET", "/count/" .. chan).body) end
  local function stats() return json.decode(s:request("GET", "/stats").body) end
  local function subscribe(path, headers)
    local c = s:sse(path, headers)
    assert.equal(200, c.status)
    return c
  end
  local function wait_subscribed(chan, n)
    gw.wait_for(function() return count(chan) == n end, 5, n .. " subscribers of " .. chan)
  end

  it("delivers a publish to every subscriber with an increasing id", function()
    local a, b = subscribe("/sub/news"), subscribe("/sub/news")
    assert.equal("text/event-stream; charset=utf-8", a.headers["content-type"])
    wait_subscribed("news", 2)
    local id1 = pub("news", "one")
    local id2 = pub("news", "two")
    assert.is_true(tonumber(id2) > tonumber(id1))
    for _, c in ipairs { a, b } do
      local e1, e2 = c:read_event(), c:read_event()
      assert.same({ "one", id1, "two", id2 }, { e1.data, e1.id, e2.data, e2.id })
    end
    a:close()
    b:close()
    wait_subscribed("news", 0)
  end)

  it("uses a caller's id as given and passes the event name", function()
    local c = subscribe("/sub/named")
    wait_subscribed("named", 1)
    assert.equal("my-id", pub("named", "x", "id=my-id&event=note"))
    local ev = c:read_event()
    assert.same({ "x", "my-id", "note" }, { ev.data, ev.id, ev.event })
    c:close()
  end)

  it("delivers an event published to several channels once, with one id", function()
    local both = subscribe("/sub2/p/q")
    assert.equal("2", both.headers["x-sub"])
    assert.equal(900, both:read_event().retry)
    local onlyq = subscribe("/sub/q")
    wait_subscribed("q", 2)
    local id = pub("p,q", "shared")
    local after = pub("q", "next")
    local e1, e2 = both:read_event(), both:read_event()
    assert.same({ "shared", id, "next", after }, { e1.data, e1.id, e2.data, e2.id })
    assert.equal("shared", onlyq:read_event().data)
    both:close()
    onlyq:close()
    gw.wait_for(function() return s:logs():find("subscriber of p left", 1, true) end, 5, "on_close")
  end)

  it("takes publishes from generators, raw callbacks and timers", function()
    local c = subscribe("/sub/from")
    wait_subscribed("from", 1)
    local g = s:sse("/gen-pub")
    assert.equal("published", g:read_event().data)
    g:close()
    local r = s:sse("/raw-pub")
    r:closed_by_peer()
    r:close()
    assert.equal(202, s:request("POST", "/timer-pub").status)
    local got = {}
    for i = 1, 3 do got[i] = c:read_event().data end
    assert.same({ "generator", "raw", "timer" }, got)
    c:close()
  end)

  it("replays kept events after Last-Event-ID, then live ones, with no gap and no duplicate", function()
    local ids = {}
    for i = 1, 4 do ids[i] = pub("h", "e" .. i) end
    local c = subscribe("/sub/h", { ["Last-Event-ID"] = ids[2] })
    assert.equal("e3", c:read_event().data)
    assert.equal("e4", c:read_event().data)
    wait_subscribed("h", 1)
    pub("h", "e5")
    local ev = c:read_event()
    assert.same({ "e5" }, { ev.data })
    c:close()
    -- lastEventId in the query works the same
    c = subscribe("/sub/h?lastEventId=" .. ids[4])
    wait_subscribed("h", 1)
    pub("h", "e6")
    assert.equal("e5", c:read_event().data)
    assert.equal("e6", c:read_event().data)
    c:close()
  end)

  it("merges several channels' history in publish order", function()
    local first = pub("m1", "a")
    pub("m2", "b")
    pub("m1,m2", "c")
    pub("m2", "d")
    pub("m1", "e")
    local c = subscribe("/sub2/m1/m2", { ["Last-Event-ID"] = first })
    c:read_event() -- retry
    local got = {}
    for i = 1, 4 do got[i] = c:read_event().data end
    assert.same({ "b", "c", "d", "e" }, got)
    c:close()
  end)

  it("replays from the gateway-wide history with replay = \"gateway\": every channel's events, filtered", function()
    local function fpub(chan, topic, body)
      local res = s:request("POST", "/fpub/" .. chan .. "?topic=" .. topic, body)
      assert.equal(202, res.status, res.body)
      return res.body
    end
    local first = fpub("gw1", "n/0", "before")
    fpub("gw1", "n/1", "one")
    fpub("gw2", "other", "not selected")
    fpub("gw2", "n/2", "two")
    for i = 3, 8 do fpub("gw2", "n/" .. i, "more") end -- gw2 keeps only 5 (history), the gateway 20
    local c = subscribe("/fsub/gw3?replay=gateway&match=n%2F%7Bid%7D", { ["Last-Event-ID"] = first })
    local got = {}
    repeat
      local ev = assert(c:read_event())
      if ev.data then got[#got + 1] = ev.data end
    until #got == 8
    assert.same({ "one", "two", "more", "more", "more", "more", "more", "more" }, got)
    assert.equal("8", s:request("GET", "/replayed/gw3").body) -- what the script learns of it
    c:close()
    local bad = s:request("GET", "/fsub/gw3?replay=everything")
    assert.equal(500, bad.status)
  end)

  it("keeps only the last `history` events; an id older than that replays all kept", function()
    local ids = {}
    for i = 1, 8 do ids[i] = pub("short", "s" .. i) end
    -- history = 5: s4..s8 are kept; ids[1] left history
    local c = subscribe("/sub/short", { ["Last-Event-ID"] = ids[1] })
    local got = {}
    for i = 1, 5 do got[i] = c:read_event().data end
    assert.same({ "s4", "s5", "s6", "s7", "s8" }, got)
    c:close()
    -- an id the hub never handed out (e.g. from before a restart) replays the kept history too
    c = subscribe("/sub/short", { ["Last-Event-ID"] = "not-an-id" })
    assert.equal("s4", c:read_event().data)
    c:close()
  end)

  it("counts subscribers and forgets one that leaves at once", function()
    local cs = {}
    for i = 1, 5 do cs[i] = subscribe("/sub/count") end
    wait_subscribed("count", 5)
    cs[1]:close()
    cs[2]:close()
    wait_subscribed("count", 3)
    for i = 3, 5 do cs[i]:close() end
    wait_subscribed("count", 0)
  end)

  it("disconnects and counts a slow consumer without hurting the others or the publisher", function()
    local slow = subscribe("/sub/firehose")
    local fast = subscribe("/sub/firehose")
    wait_subscribed("firehose", 2)
    local before = stats().dropped_slow
    -- 1000 events of 16 KiB (16 MB) in bursts of 3: each burst fits the reader's queue
    -- (queue_limit 64 KiB), the whole is far past what the kernel buffers for the one that never reads
    local received = 0
    for _ = 1, 333 do
      assert.equal("done", s:request("POST", "/flood/firehose?n=3&size=16384").body)
      for _ = 1, 3 do assert(fast:read_event()); received = received + 1 end
    end
    assert.equal(999, received)
    gw.wait_for(function() return stats().dropped_slow == before + 1 end, 5, "the slow consumer to be dropped")
    assert.is_true(slow:closed_by_peer(10))
    assert.equal(1, count("firehose"))
    fast:close()
  end)

  it("applies history_ttl: old events leave history and empty channels are freed", function()
    assert.equal(204, s:request("POST", "/config", json.encode({ history_ttl = 0.5 })).status)
    local first = pub("ttl", "old")
    local c = subscribe("/sub/ttl", { ["Last-Event-ID"] = "0" })
    assert.equal("old", c:read_event().data)
    c:close()
    wait_subscribed("ttl", 0)
    local chans = stats().channels
    gw.wait_for(function() return stats().channels < chans end, 5, "the sweep to free the channel")
    c = subscribe("/sub/ttl", { ["Last-Event-ID"] = first })
    wait_subscribed("ttl", 1)
    pub("ttl", "new")
    assert.equal("new", c:read_event().data) -- nothing old came first
    c:close()
    assert.equal(204, s:request("POST", "/config", json.encode({ history_ttl = 3600 })).status)
  end)

  it("returns to its memory after many subscribers come and go", function()
    local function round(n)
      local cs = {}
      for i = 1, n do cs[i] = s:sse("/sub/churn-" .. (i % 50)) end
      for i = 1, n do cs[i]:close() end
      gw.wait_for(function() return stats().connections <= 1 end, 10, "every subscriber to leave")
    end
    round(500) -- warm up allocator pools
    local rss0 = s:rss_kb()
    for _ = 1, 3 do round(500) end
    local rss1 = s:rss_kb()
    if gw.REAL_MEMORY then assert.is_true(rss1 - rss0 < 2048, ("RSS grew %d KiB over 1500 subscribers"):format(rss1 - rss0)) end
    assert.equal(0, count("churn-1"))
  end)
end)
