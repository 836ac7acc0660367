-- State that survives a reload and subscriptions the server steers: handles
-- of connections from any state, conn.data, on_reload / previous_state,
-- closing, re-subscribing, snapshots and kicks, sluice.listen, and the
-- presence and jobs examples saved in the middle of their work.
local gw = require "gateway"
local json = require "cjson"
local psignal = require "posix.signal"

describe("connections and state", function()
  local s
  setup(function() s = gw.start("spec/fixtures/state_app.lua") end)
  teardown(function() s:stop() end)

  local function get(path) return s:request("GET", path) end
  local function post(path, body) return s:request("POST", path, body or "") end
  local function list(q) return json.decode(get("/list" .. (q or "")).body) end
  local function count(ch) return tonumber(get("/count/" .. ch).body) end
  local function reload()
    local before = json.decode(get("/stats").body).reloads
    s:signal(psignal.SIGHUP)
    gw.wait_for(function() return json.decode(get("/stats").body).reloads == before + 1 end, 10, "the reload")
  end
  local function joined(c) return tonumber(assert(c:read_event()).data:match("^joined (%d+)$")) end

  it("lists live connections with route, params, mode, channels and data, and finds them by id", function()
    local raw = s:sse("/raw/lobby")
    local id = joined(raw)
    local sub = s:sse("/sub/news")
    gw.wait_for(function() return count("news") == 1 end, 5, "the subscriber")
    local all = list()
    assert.equal(2, #all)
    local r = list("?mode=raw")[1]
    assert.same({ id, "/raw/:room", "raw", { room = "lobby" }, {}, { room = "lobby", tags = { a = 1 } } },
      { r.id, r.route, r.mode, r.params, r.channels, r.data })
    assert.equal(1, #list("?route=/raw/:room"))
    local subd = list("?channel=news")
    assert.same({ "subscribe", { "news" } }, { subd[1].mode, subd[1].channels })
    assert.equal(0, #list("?channel=other"))
    assert.equal("ok", post("/conn/" .. id .. "/send", "direct").body)
    assert.equal("direct", raw:read_event().data)
    local bad = post("/conn/" .. id .. "/data")
    assert.equal(409, bad.status)
    assert.matches("conn.data cannot hold a function", bad.body, 1, true)
    raw:close(); sub:close()
    gw.wait_for(function() return #list() == 0 end, 5, "both gone from the list")
    assert.equal(404, post("/conn/" .. id .. "/send", "x").status)
  end)

  it("hands state and conn.data to the next load, and old handles keep working", function()
    local raw = s:sse("/raw/kitchen")
    local id = joined(raw)
    local loads = tonumber(get("/loads").body)
    reload()
    assert.equal(loads + 1, tonumber(get("/loads").body))
    -- the connection of the previous state, from the new one: its data, its handle
    local r = list("?mode=raw")[1]
    assert.same({ id, { room = "kitchen", tags = { a = 1 } } }, { r.id, r.data })
    assert.equal("ok", post("/conn/" .. id .. "/send", "after reload").body)
    assert.equal("after reload", raw:read_event().data)
    -- a state with a function in it cannot be handed over: logged, and the next load starts afresh
    post("/unsendable")
    reload()
    assert.equal(1, tonumber(get("/loads").body))
    assert.matches("on_reload: its state cannot be handed over: a function", s:logs())
    raw:close()
  end)

  it("lets the server close, re-subscribe and kick subscribers, and send a snapshot first", function()
    local a = s:sse("/snap/alpha", { ["Last-Event-ID"] = post("/pub/alpha", "kept").body })
    local snap = a:read_event()
    assert.same({ "snapshot", "snap" }, { snap.event, snap.data })
    gw.wait_for(function() return count("alpha") == 1 end, 5, "the subscriber")
    post("/pub/alpha", "one")
    assert.equal("one", a:read_event().data)
    local id = list("?channel=alpha")[1].id
    -- add beta, remove alpha: beta's events arrive, alpha's no longer
    assert.equal("ok", post("/conn/" .. id .. "/subscribe", "beta").body)
    assert.equal("ok", post("/conn/" .. id .. "/unsubscribe", "alpha").body)
    post("/pub/alpha", "not for a")
    post("/pub/beta", "two")
    assert.equal("two", a:read_event().data)
    assert.same({ "beta" }, list("?channel=beta")[1].channels)
    -- a raw connection is not a subscription
    local raw = s:sse("/raw/x")
    local rid = joined(raw)
    local res = post("/conn/" .. rid .. "/subscribe", "beta")
    assert.same({ 409, "not subscribed" }, { res.status, res.body })
    raw:close()
    -- closed by the server
    assert.equal("ok", post("/conn/" .. id .. "/close").body)
    assert.is_true(a:closed_by_peer(5))
    -- kick: every subscriber of a channel
    local k1, k2 = s:sse("/sub/gamma"), s:sse("/sub/gamma")
    gw.wait_for(function() return count("gamma") == 2 end, 5, "two subscribers")
    assert.equal("2", post("/kick/gamma").body)
    assert.is_true(k1:closed_by_peer(5))
    assert.is_true(k2:closed_by_peer(5))
  end)

  it("ends a subscription at opts.expires_at, and says so in its access line", function()
    -- 3 s: room to see it subscribed first on a slow (sanitized, loaded) run, where 1 s was not
    local st = s:sse("/expiring/zeta?in=3")
    gw.wait_for(function() return count("zeta") == 1 end, 5, "the subscriber")
    post("/pub/zeta", "before")
    assert.equal("before", st:read_event().data)
    assert.is_true(st:closed_by_peer(8))
    gw.wait_for(function() return s:logs():find("GET /expiring/zeta%?in=3 200 [^\n]* ended=expired") end, 5, "the access line")
    local gone = s:sse("/expiring/zeta?in=-5") -- already expired: it ends at once
    assert.is_true(gone:closed_by_peer(5))
  end)

  it("filters subscriptions by topic selectors and grants, live and on replay", function()
    local function esc(s) return (s:gsub("[^%w%-_.]", function(ch) return ("%%%02X"):format(ch:byte()) end)) end
    local function sub(q) return s:sse("/filtered/hub?" .. q) end
    local book1 = "https://example.com/books/1"
    local exact = sub("match=" .. esc(book1))
    local tmpl = sub("match=" .. esc("https://example.com/books/{id}"))
    local glob = sub("match=" .. esc("https://example.com/*"))
    local granted = sub("match=*&grant=" .. esc("https://example.com/books/{id}"))
    local plain = s:sse("/sub/hub") -- no filter: every event that is not private
    gw.wait_for(function() return count("hub") == 5 end, 5, "five subscribers")
    local function pub(topics, body, private)
      local q = {}
      for _, t in ipairs(topics) do q[#q + 1] = "topic=" .. esc(t) end
      if private then q[#q + 1] = "private=1" end
      return post("/pubt/hub?" .. table.concat(q, "&"), body).body
    end
    local first = pub({ book1 }, "one")
    pub({ "https://example.com/books/2" }, "two")
    pub({ "https://example.com/authors/9" }, "author")
    pub({ "https://example.com/books/3", "https://example.org/x" }, "secret", true)
    post("/pub/hub", "untagged")
    local function got(c, n)
      local out = {}
      for i = 1, n do out[i] = assert(c:read_event()).data end
      return out
    end
    assert.same({ "one" }, got(exact, 1))
    assert.same({ "one", "two" }, got(tmpl, 2))
    assert.same({ "one", "two", "author" }, got(glob, 3))
    assert.same({ "one", "two", "author", "secret" }, got(granted, 4))
    assert.same({ "one", "two", "author", "untagged" }, got(plain, 4))
    -- nothing more arrived for the narrow ones: the next event they get is the next they match
    local again = pub({ book1 }, "again")
    assert.equal(again, get("/last").body) -- sluice.last_event_id(): the newest event's id
    assert.equal("again", assert(exact:read_event()).data)
    -- replay after an id, through the same filter (opts.last_event_id)
    local late = sub("match=" .. esc("https://example.com/books/{id}") .. "&last=" .. first)
    assert.same({ "two", "again" }, got(late, 2))
    -- a malformed template is refused
    assert.equal(500, s:request("GET", "/filtered/hub?match=" .. esc("https://example.com/{id")).status)
    for _, c in ipairs { exact, tmpl, glob, granted, plain, late } do c:close() end
  end)

  it("lets handlers and generators wait on channels with sluice.listen", function()
    -- a handler that waits: a long poll
    local c = s:connect()
    c:send("GET /wait/delta HTTP/1.1\r\nHost: x\r\n\r\n")
    gw.wait_for(function() return count("delta") == 1 end, 5, "the listener")
    local first = post("/pub/delta", "a").body
    post("/pub/delta", "b")
    post("/pub/delta", "stop")
    local res = assert(c:read_response())
    c:close()
    assert.same({ "a", "b" }, json.decode(res.body))
    -- a timeout ends the loop; last_event_id replays what is kept after it
    assert.same({}, json.decode(get("/wait/nothing?timeout=0.2").body))
    c = s:connect()
    c:send("GET /wait/delta?last=" .. first .. "&timeout=5 HTTP/1.1\r\nHost: x\r\n\r\n")
    res = assert(c:read_response())
    c:close()
    assert.same({ "b" }, json.decode(res.body)) -- "stop" ends it after the replay of b
    -- a generator that follows a channel
    local f = s:sse("/follow/epsilon")
    gw.wait_for(function() return count("epsilon") == 1 end, 5, "the follower")
    local id = post("/pub/epsilon", "x1").body
    local ev = f:read_event()
    assert.same({ "seen x1", id }, { ev.data, ev.id })
    post("/pub/epsilon", "stop")
    assert.is_true(f:closed_by_peer(5))
    gw.wait_for(function() return count("epsilon") == 0 end, 5, "the listener let go")
  end)
end)

describe("examples across a reload", function()
  local dir, s
  before_each(function()
    dir = gw.tmpname("-ex")
    assert(os.execute("mkdir -p " .. dir .. "/pages/presence " .. dir .. "/pages/assets"))
  end)
  after_each(function()
    if s then s:stop() end
    os.execute("rm -rf " .. dir)
  end)
  local function copy(name)
    local path = dir .. "/" .. name
    gw.write_file(path, gw.read_file("examples/" .. name))
    return path
  end
  -- Saves the script the way editors do (a new file renamed over it), with an edit.
  local function save(path)
    gw.write_file(path .. ".tmp~", gw.read_file(path) .. "\n-- edited\n")
    assert(os.rename(path .. ".tmp~", path))
  end
  local function reloaded(n)
    gw.wait_for(function()
      local _, k = s:logs():gsub("reloaded [^\n]* in ", "")
      return k >= n
    end, 10, "reload " .. n)
  end

  it("jobs.lua: a job saved mid-way goes on to its end, followers see every step once", function()
    local path = copy("jobs.lua")
    s = gw.start(path, { args = { "--watch" } })
    -- long enough (40 steps) that the save lands mid-job, also under valgrind
    local delay = gw.VALGRIND and 0.5 or 0.05
    local res = s:request("POST", "/jobs?steps=40&delay=" .. delay)
    assert.equal(202, res.status)
    local id = json.decode(res.body).id
    local f = s:sse("/jobs/" .. id .. "/events")
    -- the snapshot, then each later step exactly once, in order, across the save
    local last = json.decode(f:read_event().data).step
    local function read_to(step)
      while last < step do
        local p = json.decode(assert(f:read_event(10)).data)
        assert.equal(last + 1, p.step)
        last = p.step
      end
    end
    read_to(last + 2)
    save(path)
    reloaded(1)
    assert.is_true(last < 40, "the job was still running at the save")
    read_to(40)
    f:close()
    -- the new version knows the job (handed over) and its end (tracked from its events)
    local jobs = json.decode(s:request("GET", "/jobs").body)
    assert.same({ 40, true }, { jobs[id].step, jobs[id].done })
    assert.same({ id = id, done = true }, json.decode(s:request("GET", "/jobs/" .. id .. "/wait").body))
    -- ids go on after the reload
    assert.equal(tostring(tonumber(id) + 1), json.decode(s:request("POST", "/jobs?steps=1&delay=0").body).id)
    assert.is_nil(s:logs():find("%[error%]"))
  end)

  it("presence.lua: clients of the old version and the new one see each other, and leaves are announced", function()
    local path = copy("presence.lua")
    s = gw.start(path, { args = { "--watch" } })
    local function presence(c)
      while true do
        local ev = assert(c:read_event(5))
        if ev.event == "presence" then return json.decode(ev.data) end
      end
    end
    local ann = s:sse("/presence?name=ann")
    assert.same({ "ann" }, presence(ann))
    local bob = s:sse("/presence?name=bob")
    assert.same({ "ann", "bob" }, presence(bob))
    assert.same({ "ann", "bob" }, presence(ann))
    save(path)
    reloaded(1)
    local cat = s:sse("/presence?name=cat") -- joins the new version
    assert.same({ "ann", "bob", "cat" }, presence(cat))
    assert.same({ "ann", "bob", "cat" }, presence(ann))
    bob:close() -- leaves the old version: announced with cat's name, from the new one's data
    assert.same({ "ann", "cat" }, presence(ann))
    assert.same({ "ann", "cat" }, presence(cat))
    assert.equal(202, s:request("POST", "/shout", "hi").status)
    local ev
    repeat ev = assert(cat:read_event(5)) until ev.event == "shout"
    assert.equal("hi", ev.data)
    ann:close(); cat:close()
  end)
end)
