-- The Redis engine: several gateway processes on one redis-server of the
-- spec's own (a free loopback port): cross-node delivery, one delivery per
-- subscriber, replay from Redis history on any node, Redis and node failures.
local gw = require "gateway"
local json = require "cjson"
local psignal = require "posix.signal"
local wait = require "posix.sys.wait"

local APP = "spec/fixtures/redis_app.lua"

describe("redis engine", function()
  local redis, a, b, c

  local function start_node(url)
    local n = gw.start(APP, { args = { "--redis", url or redis.url } })
    return n
  end
  local function stats(n) return json.decode(n:request("GET", "/stats").body) end
  local function connected(n) return stats(n).redis.connected end
  local function wait_connected(n, want)
    if want == nil then want = true end
    gw.wait_for(function() return connected(n) == want end, 10, "redis connected = " .. tostring(want))
  end
  local function pub(n, chans, data, q)
    local res = n:request("POST", "/pub/" .. chans .. (q and ("?" .. q) or ""), data)
    assert.equal(202, res.status, res.body)
    return res.body
  end
  local function count(n, chan) return tonumber(n:request("GET", "/count/" .. chan).body) end
  local function subscribe(n, path, headers)
    local s = n:sse(path, headers)
    assert.equal(200, s.status)
    return s
  end
  local function wait_subscribed(n, chan, k)
    gw.wait_for(function() return count(n, chan) == k end, 5, k .. " subscribers of " .. chan)
  end
  --- Reads events until `want` data-carrying events arrived; returns them.
  local function read_events(s, want, secs)
    local got = {}
    while #got < want do
      local ev = assert(s:read_event(secs or 10))
      if ev.data then got[#got + 1] = ev end
    end
    return got
  end

  setup(function()
    redis = gw.redis()
    a, b, c = start_node(), start_node(), start_node()
    for _, n in ipairs { a, b, c } do wait_connected(n) end
  end)
  teardown(function()
    for _, n in ipairs { a, b, c } do if n.pid then n:stop() end end
    redis:stop()
  end)

  it("delivers a publish on one node to subscribers on every node, with one id", function()
    local subs = { subscribe(a, "/sub/x"), subscribe(b, "/sub/x"), subscribe(b, "/sub/x"), subscribe(c, "/sub/x") }
    wait_subscribed(a, "x", 1); wait_subscribed(b, "x", 2); wait_subscribed(c, "x", 1)
    local id1 = pub(a, "x", "one")
    local id2 = pub(c, "x", "two")
    assert.is_true(tonumber(id2) > tonumber(id1))
    assert.equal("custom", pub(b, "x", "three", "id=custom"))
    for _, s in ipairs(subs) do
      local got = read_events(s, 3)
      assert.same({ "one", id1, "two", id2, "three", "custom" },
        { got[1].data, got[1].id, got[2].data, got[2].id, got[3].data, got[3].id })
      s:close()
    end
  end)

  it("delivers an event published to several channels once, with one id", function()
    local both = subscribe(b, "/sub2/p/q")
    local onlyq = subscribe(c, "/sub/q")
    wait_subscribed(b, "p", 1); wait_subscribed(c, "q", 1)
    local id = pub(a, "p,q", "shared")
    local after = pub(a, "q", "next")
    local got = read_events(both, 2)
    assert.same({ "shared", id, "next", after }, { got[1].data, got[1].id, got[2].data, got[2].id })
    assert.equal("shared", read_events(onlyq, 1)[1].data)
    both:close(); onlyq:close()
  end)

  it("counts the events each node received from Redis once per event", function()
    local before = { stats(a).redis.received, stats(b).redis.received }
    local subs = {}
    for i = 1, 5 do subs[i] = subscribe(b, "/sub/once") end
    wait_subscribed(b, "once", 5)
    for i = 1, 4 do pub(a, "once", "e" .. i) end
    for _, s in ipairs(subs) do read_events(s, 4); s:close() end
    assert.equal(4, stats(a).redis.received - before[1])
    assert.equal(4, stats(b).redis.received - before[2])
  end)

  it("replays from Redis history on another node after Last-Event-ID, then goes live", function()
    local ids = {}
    for i = 1, 4 do ids[i] = pub(a, "h", "e" .. i) end
    local s = subscribe(b, "/sub/h", { ["Last-Event-ID"] = ids[2] })
    local got = read_events(s, 2)
    assert.same({ "e3", ids[3], "e4", ids[4] }, { got[1].data, got[1].id, got[2].data, got[2].id })
    wait_subscribed(b, "h", 1)
    pub(c, "h", "e5")
    assert.equal("e5", read_events(s, 1)[1].data)
    s:close()
    -- a caller's id and an unknown id follow the embedded hub's rules
    pub(a, "h", "e6", "id=mine")
    pub(a, "h", "e7")
    s = subscribe(c, "/sub/h", { ["Last-Event-ID"] = "mine" })
    assert.equal("e7", read_events(s, 1)[1].data)
    s:close()
    s = subscribe(c, "/sub/h", { ["Last-Event-ID"] = "never-handed-out" })
    assert.equal("e1", read_events(s, 1)[1].data)
    s:close()
    -- an expired hub id (older than what is kept) replays all kept after it
    s = subscribe(a, "/sub/h?lastEventId=1")
    assert.equal("e1", read_events(s, 1)[1].data)
    s:close()
  end)

  it("replays with no gap and no duplicate while publishes race the reconnect", function()
    local s = subscribe(a, "/sub/race")
    wait_subscribed(a, "race", 1)
    assert.equal(202, c:request("POST", "/flood/race?n=300&gap=0.002").status)
    local seen, last = {}, nil
    -- read a part on node a, then reconnect to b, then to c, each with the last id
    for _, node in ipairs { b, c } do
      for _, ev in ipairs(read_events(s, 60)) do
        seen[#seen + 1] = tonumber(ev.data:match("^(%d+)"))
        last = ev.id
      end
      s:close()
      s = subscribe(node, "/sub/race", { ["Last-Event-ID"] = last })
    end
    while #seen < 300 do
      local ev = read_events(s, 1)[1]
      seen[#seen + 1] = tonumber(ev.data:match("^(%d+)"))
    end
    s:close()
    for i = 1, 300 do assert.equal(i, seen[i]) end
  end)

  it("publishes from a generator the script wraps and from an on_close hook", function()
    local s = subscribe(b, "/sub/from")
    wait_subscribed(b, "from", 1)
    local g = a:sse("/gen-pub/from")
    local ev = g:read_event()
    assert.truthy(ev.data:match("^published %d+$"))
    g:close()
    local r = a:sse("/close-pub/from")
    r:closed_by_peer()
    r:close()
    local got = read_events(s, 2)
    assert.same({ "from a generator", "from on_close" }, { got[1].data, got[2].data })
    s:close()
  end)

  it("catches a node up from history after it lost its connection: in order, once", function()
    local s = subscribe(b, "/sub/gap")
    wait_subscribed(b, "gap", 1)
    local first = pub(a, "gap", "before")
    assert.equal("before", read_events(s, 1)[1].data)
    -- cut node b's connections only; what a publishes meanwhile reaches b's subscriber from history
    local killed = redis:command("CLIENT", "KILL", "ID", "0") -- warm-up: the command works
    assert.truthy(killed)
    redis:command("CLIENT", "KILL", "USER", "default", "SKIPME", "yes") -- kills everyone but us
    local ids = {}
    for i = 1, 5 do
      gw.wait_for(function()
        local res = a:request("POST", "/pub/gap", "m" .. i)
        if res.status == 202 then ids[i] = res.body end
        return res.status == 202
      end, 10, "a publish through a")
    end
    local got = read_events(s, 5)
    for i = 1, 5 do assert.same({ "m" .. i, ids[i] }, { got[i].data, got[i].id }) end
    pub(a, "gap", "live again")
    assert.equal("live again", read_events(s, 1)[1].data)
    assert.is_true(tonumber(ids[1]) > tonumber(first))
    assert.is_true(stats(b).redis.reconnects >= 1)
    s:close()
  end)

  it("keeps serving while Redis is down: publishes fail, subscribers get heartbeats; then it recovers", function()
    local s = subscribe(c, "/sub/down")
    wait_subscribed(c, "down", 1)
    pub(a, "down", "d1")
    assert.equal("d1", read_events(s, 1)[1].data)
    local function losses() return select(2, a:logs():gsub("connection to [^\n]* lost", "")) end
    local function ups() return select(2, a:logs():gsub("redis: connected to", "")) end
    local lost_before, ups_before = losses(), ups()
    redis:stop()
    wait_connected(a, false)
    local res = a:request("POST", "/pub/down", "lost")
    assert.equal(503, res.status)
    assert.truthy(res.body:find("redis", 1, true))
    -- still connected, and heartbeats keep coming
    s.buf = ""
    local ev = assert(s:read_event(5))
    assert.is_nil(ev.data)
    assert.is_true(#ev.comments >= 1)
    assert.equal("ok", a:request("GET", "/health").body)
    redis:start() -- empty: a Redis that lost its data
    for _, n in ipairs { a, b, c } do wait_connected(n) end
    local id = pub(b, "down", "d2")
    local got = read_events(s, 1)
    assert.same({ "d2", id }, { got[1].data, got[1].id })
    s:close()
    gw.wait_for(function() return a:logs():find("lost its data", 1, true) end, 5, "the lost-data warning")
    -- each state change is logged once, however many attempts it took to come back
    assert.equal(lost_before + 1, losses())
    assert.equal(ups_before + 1, ups())
  end)

  it("keeps the other nodes serving when one is killed", function()
    local sa, sb = subscribe(a, "/sub/k"), subscribe(b, "/sub/k")
    wait_subscribed(a, "k", 1); wait_subscribed(b, "k", 1)
    psignal.kill(c.pid, psignal.SIGKILL)
    wait.wait(c.pid)
    c.pid = nil
    os.remove(c.log)
    pub(a, "k", "still here")
    assert.equal("still here", read_events(sa, 1)[1].data)
    assert.equal("still here", read_events(sb, 1)[1].data)
    sa:close(); sb:close()
    c = start_node()
    wait_connected(c)
  end)

  it("carries topics and privacy: filtered subscribers on other nodes get what they select, also on replay", function()
    local function esc(v) return (v:gsub("[^%w%-_.]", function(ch) return ("%%%02X"):format(ch:byte()) end)) end
    local tmpl = esc("https://x/books/{id}")
    local sel = subscribe(b, "/fsub/topics?match=" .. tmpl)
    local granted = subscribe(c, "/fsub/topics?match=" .. tmpl .. "&grant=" .. esc("https://x/books/2"))
    wait_subscribed(b, "topics", 1); wait_subscribed(c, "topics", 1)
    local function fpub(topic, body, private)
      local res = a:request("POST", "/fpub/topics?topic=" .. esc(topic) .. (private and "&private=1" or ""), body)
      assert.equal(202, res.status, res.body)
      return res.body
    end
    local first = fpub("https://x/books/1", "one")
    fpub("https://x/authors/1", "not a book")
    fpub("https://x/books/2", "secret", true)
    fpub("https://x/books/3", "three")
    assert.same({ "one", "three" }, { read_events(sel, 1)[1].data, read_events(sel, 1)[1].data })
    local g = read_events(granted, 3)
    assert.same({ "one", "secret", "three" }, { g[1].data, g[2].data, g[3].data })
    -- replay from Redis history on another node, through the same filter
    local late = subscribe(a, "/fsub/topics?match=" .. tmpl, { ["Last-Event-ID"] = first })
    assert.equal("three", read_events(late, 1)[1].data)
    sel:close(); granted:close(); late:close()
  end)

  it("replays from the gateway-wide history: every channel's events, through the subscriber's filter", function()
    local function esc(v) return (v:gsub("[^%w%-_.]", function(ch) return ("%%%02X"):format(ch:byte()) end)) end
    local function fpub(chan, topic, body)
      local res = a:request("POST", "/fpub/" .. chan .. "?topic=" .. esc(topic), body)
      assert.equal(202, res.status, res.body)
      return res.body
    end
    local first = fpub("gw-a", "https://x/n/0", "before")
    fpub("gw-a", "https://x/n/1", "one")
    fpub("gw-b", "https://x/other", "not selected")
    fpub("gw-b", "https://x/n/2", "two")
    local late = subscribe(c, "/fsub/gw-c?replay=gateway&match=" .. esc("https://x/n/{id}"), { ["Last-Event-ID"] = first })
    local got = read_events(late, 2)
    assert.same({ "one", "two" }, { got[1].data, got[2].data })
    -- without replay = "gateway", the channel's own history: nothing was published to gw-c
    local own = subscribe(c, "/fsub/gw-c?match=" .. esc("https://x/n/{id}"), { ["Last-Event-ID"] = first })
    wait_subscribed(c, "gw-c", 2)
    fpub("gw-c", "https://x/n/3", "live")
    assert.equal("live", read_events(late, 1)[1].data)
    assert.equal("live", read_events(own, 1)[1].data)
    late:close(); own:close()
  end)

  it("answers sluice.kept from Redis history, on any node", function()
    local id = pub(a, "kept", "x")
    local custom = pub(a, "kept", "y", "id=urn:k:1")
    assert.equal("urn:k:1", custom)
    assert.equal("true", b:request("GET", "/kept/kept/" .. id).body)
    assert.equal("true", c:request("GET", "/kept/kept/urn:k:1").body)
    assert.equal("false", b:request("GET", "/kept/kept/12345").body)
    assert.equal("false", b:request("GET", "/kept/elsewhere/" .. id).body)
  end)

  it("drops a slow subscriber on one node without slowing the others", function()
    local slow = subscribe(a, "/sub/fire")
    local fast = subscribe(b, "/sub/fire")
    wait_subscribed(a, "fire", 1); wait_subscribed(b, "fire", 1)
    local before = stats(a).dropped_slow
    -- paced (2 ms apart), so a reader that keeps up is never over the 64 KiB
    -- queue limit even on a loaded machine; the one that never reads is
    assert.equal(202, c:request("POST", "/flood/fire?n=400&size=16384&gap=0.002").status)
    -- the fast one reads everything, in order, while the slow one never reads
    for i = 1, 400 do
      local ev = read_events(fast, 1)[1]
      assert.equal(i, tonumber(ev.data:match("^(%d+)")))
    end
    gw.wait_for(function() return stats(a).dropped_slow > before end, 10, "the slow subscriber to be dropped")
    slow:close(); fast:close()
  end)

  it("gives connection ids no other node gives, from blocks of ids claimed in Redis", function()
    local BLOCK, CLAIMED = 2 ^ 20, 2 ^ 25 * 2 ^ 20
    local function id_of(n)
      local s = n:sse("/id")
      local ev = assert(s:read_event(5))
      s:close()
      return ev.data
    end
    local blocks = {}
    for _, n in ipairs { a, b, c } do
      local text
      gw.wait_for(function() text = id_of(n) return tonumber(text) >= CLAIMED end, 5, "an id from a claimed block")
      local id = tonumber(text)
      assert.matches("^%d+$", text) -- printed whole: below 2^46
      assert.is_true(id < 2 ^ 46)
      local block = math.floor(id / BLOCK)
      assert.is_nil(blocks[block], "two nodes in one block")
      blocks[block] = true
    end
    -- the counter the nodes claim from (set when Redis was started, from its clock)
    assert.matches("^:%d+$", redis:command("INCRBY", "sluice:id-block", "0"))
  end)

  it("starts and serves with Redis unreachable, and says so in stats", function()
    local port = gw.free_port()
    local n = start_node("redis://127.0.0.1:" .. port)
    assert.equal("ok", n:request("GET", "/health").body)
    local st = stats(n)
    assert.same({ "redis", false }, { st.engine, st.redis.connected })
    local res = n:request("POST", "/pub/any", "x")
    assert.equal(503, res.status)
    assert.equal("redis unavailable", res.body)
    local s = subscribe(n, "/sub/any")
    assert.is_true(#assert(s:read_event(5)).comments >= 1)
    s:close()
    n:stop()
  end)

  it("refuses a bad Redis URL at start-up with one line", function()
    local code, err = gw.run({ "--redis", "http://nope", APP })
    assert.equal(1, code)
    assert.truthy(err:find("bad Redis URL", 1, true))
  end)
end)
