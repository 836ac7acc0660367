-- Regressions of the script API (each a bug a new user hit): framing headers,
-- inf/NaN spans, sluice.sleep in a coroutine the script drives itself, exact
-- numbers and JSON, option keys, error locations and objects, on_close that
-- waits, every without overlap, routes for unknown methods.
local gw = require "gateway"
local json = require "cjson"

describe("script API", function()
  local s
  setup(function() s = gw.start("spec/fixtures/api_app.lua") end)
  teardown(function() s:stop() end)

  local function get(path) return s:request("GET", path) end
  local function counts() return json.decode(get("/counts").body) end
  local function log_has(text, what)
    gw.wait_for(function() return s:logs():find(text, 1, true) end, 5, what or text)
  end

  it("refuses framing headers in responses and stream heads", function()
    for _, name in ipairs { "Content-Length", "transfer-encoding", "Connection" } do
      local res = get("/frame/response/" .. name)
      assert.equal(500, res.status)
      assert.is_nil(res.body:find("body", 1, true))
      log_has("header '" .. name .. "' is set by the gateway")
      assert.equal(500, get("/frame/stream/" .. name).status)
    end
  end)

  it("rejects NaN spans, and treats math.huge as never", function()
    local out = json.decode(get("/spans").body)
    for _, k in ipairs { "sleep_nan", "after_nan", "every_nan", "every_zero" } do
      assert.matches("number of seconds", out[k], 1, true)
    end
    assert.equal("true", s:request("POST", "/forever").body)
    gw.wait_for(function() return counts().marker == 1 end, 5, "the 0.3 s marker timer")
    local c = counts()
    assert.is_nil(c.every_huge)
    assert.is_nil(c.after_huge)
    -- a sleep of math.huge lasts: heartbeats come, the event after it never does
    local st = s:sse("/sleep-forever")
    assert.equal("before", st:read_event().data)
    local beat = assert(st:read_event(3))
    assert.is_nil(beat.data)
    st:close()
  end)

  it("lets a sleep in a coroutine the script drives work when its pause is passed on, and says so when not", function()
    for _, path in ipairs { "/producer/passed-up", "/producer/loop" } do
      local st = s:sse(path)
      assert.equal("p1", st:read_event().data)
      st:close()
    end
    local st = s:sse("/producer/transformed")
    assert.is_true(st:closed_by_peer(5))
    log_has("ran inside a coroutine the script resumes itself")
    assert.is_nil(s:logs():find("userdata: 0x", 1, true))
    assert.matches("sluice.sleep was cut short", get("/producer/resumed-early").body, 1, true)
  end)

  it("writes whole numbers exactly in data, ids and JSON, and does not escape slashes", function()
    local st = s:sse("/numbers")
    local ev = st:read_event()
    st:close()
    assert.same({ "9007199254740994", "1795553552928042" }, { ev.data, ev.id })
    local body = get("/numbers/json").body
    for _, part in ipairs { '"big":9007199254740994', '"id":1795553552928042', '"half":0.5', '"url":"a/b"',
      '"empty":[]', '"list":[]', '"obj":{}' } do
      assert.truthy(body:find(part, 1, true), part .. " in " .. body)
    end
    assert.matches("^1795553552928042 %d+$", get("/numbers/publish").body)
  end)

  it("makes the same messages and errors as sluice.event's rules, for every kind of data and option", function()
    local out = json.decode(get("/message/same").body)
    assert.equal(14 * 29, out.cases)
    assert.same({}, out.differ)
  end)

  it("rejects unknown option keys everywhere", function()
    for fn, key in pairs { message = "evnt", publish = "evnt", stream = "heartbeats", raw = "stauts",
      subscribe = "on_closed", every = "overlaps" } do
      assert.matches("unknown option '" .. key .. "'", get("/options/" .. fn).body, 1, true)
    end
  end)

  it("names the route and the script's file:line when a handler misuses the API in a tail call", function()
    assert.equal(500, get("/misuse/response").status)
    log_has("handler error in route GET /misuse/response (spec/fixtures/api_app.lua:")
    assert.equal(500, get("/misuse/subscribe").status)
    log_has("handler error in route GET /misuse/subscribe (spec/fixtures/api_app.lua:")
  end)

  it("logs error objects by value", function()
    assert.equal(500, get("/misuse/object").status)
    gw.wait_for(function()
      local l = s:logs()
      return l:find('error object {"code":42,"why":"teapot"}', 1, true) or l:find('error object {"why":"teapot","code":42}', 1, true)
    end, 5, "the error object in the log")
    assert.is_nil(s:logs():find("error object is not a string", 1, true))
  end)

  it("says what is allowed when an on_close hook tries to wait", function()
    local c = s:connect()
    c:send("GET /close-yield HTTP/1.1\r\nHost: x\r\n\r\n")
    assert.is_true(c:closed_by_peer(5))
    log_has("on_close hooks cannot wait")
    assert.equal("ok", get("/counts") and "ok")
  end)

  it("skips ticks of sluice.every while the last run goes on, with overlap = false", function()
    for mode, check in pairs {
      off = function(max) assert.equal(1, max) end,
      on = function(max) assert.is_true(max >= 2, "max running " .. max) end,
    } do
      assert.equal(202, s:request("POST", "/overlap/" .. mode).status)
      gw.wait_for(function() return (counts()["clock_" .. mode] or 0) >= 5 end, 5, "five periods")
      check(tonumber(s:request("POST", "/overlap/" .. mode .. "/release").body))
    end
  end)

  it("replays a history larger than queue_limit to a client that reads, pausing at the high-water mark", function()
    local first = s:request("POST", "/big").body
    local before = json.decode(get("/stats-lite").body).dropped_slow
    local st = s:sse("/sub/big", { ["Last-Event-ID"] = first })
    for i = 1, 2 do
      local ev = assert(st:read_event(20))
      assert.equal(3 * 1024 * 1024 + 1, #ev.data)
      assert.equal(tostring(i), ev.data:sub(1, 1))
    end
    assert.equal(before, json.decode(get("/stats-lite").body).dropped_slow)
    s:request("POST", "/pub-small")
    assert.equal("small", assert(st:read_event(5)).data)
    st:close()
  end)

  it("writes the events published to a subscriber in one turn of the loop with one write", function()
    local function writes() return tonumber(gw.read_file("/proc/" .. s.pid .. "/io"):match("syscw: (%d+)")) end
    local st = s:sse("/sub/burst")
    local before = writes()
    assert.equal(204, s:request("POST", "/burst/20").status)
    for i = 1, 20 do assert.equal(tostring(i), assert(st:read_event()).data) end
    -- the 20 events in one writev, the response, its access log line: not 20
    -- writes (under valgrind, whose own writes count in the process's, only the order);
    -- with I/O threads, the wake-ups of the threads (an eventfd write each) count too
    local most = tonumber(gw.WORKERS or "1") > 1 and 10 or 4
    if not gw.VALGRIND then assert.is_true(writes() - before <= most, "write calls: " .. (writes() - before)) end
    st:close()
  end)

  it("gives scripts the building blocks of a hub: raw path, cookies, form bodies, hashes, MACs, JWT", function()
    local token = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
    local res = s:request("POST", "/blocks/a%2Fb", "topic=a&topic=b+c&x=%3D", {
      Cookie = 'mercureAuthorization=abc.def; other="q"; mercureAuthorization=second',
      Authorization = "Bearer " .. token, ["Content-Type"] = "application/x-www-form-urlencoded" })
    local t = json.decode(res.body)
    assert.same({ "/blocks/a%2Fb", "/blocks/a/b" }, { t.raw_path, t.path })
    assert.same({ mercureAuthorization = "abc.def", other = "q" }, t.cookies)
    assert.same({ topic = { "a", "b c" }, x = "=" }, t.form)
    assert.equal("ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0", t.sha)
    assert.equal(16, t.rnd)
    assert.equal("John Doe", t.jwt)
  end)

  it("publishes one event to any number of channels", function()
    local st = s:sse("/sub/m177")
    local id = s:request("POST", "/pub-many").body
    local ev = st:read_event()
    assert.same({ "to all 200", id }, { ev.data, ev.id })
    st:close()
  end)

  it("refuses a route for a method the parser does not know, at load time", function()
    local code, err = gw.run({ gw.write_file(gw.tmpname(".lua"),
      "local sluice = require 'sluice'\nsluice.route('FETCH', '/x', function() end)\n") })
    assert.equal(1, code)
    assert.matches("%.lua:2: unknown HTTP method 'FETCH'", err)
  end)
end)

describe("script API for hub-like scripts", function()
  it("opts.data starts conn.data; topic_matches and kept answer", function()
    local g = gw.start([[
      local sluice = require "sluice"
      sluice.get("/sub", function() return sluice.subscribe("c", { data = { who = "ann" } }) end)
      sluice.get("/who", function()
        local out = {}
        for _, c in ipairs(sluice.connections { route = "/sub" }) do out[#out + 1] = c.data.who end
        return sluice.response(200, table.concat(out, ","))
      end)
      sluice.get("/pub", function() return sluice.response(200, sluice.publish("c", "x")) end)
      sluice.get("/kept/:id", function(req) return sluice.response(200, tostring(sluice.kept("c", req.params.id))) end)
      sluice.get("/m", function(req)
        return sluice.response(200, tostring(sluice.topic_matches(req.query.s, req.query.t)) .. "," ..
          tostring(sluice.topic_matches({ exact = req.query.s }, req.query.t)))
      end)
      sluice.get("/up", function(req)
        local ok, v = pcall(sluice.topic_matches, { urlpattern = req.query.p }, req.query.t)
        return sluice.response(200, ok and tostring(v) or "error")
      end)
      sluice.get("/bad", function()
        local ok, err = pcall(sluice.subscribe, "c", { data = 5 })
        return sluice.response(ok and 500 or 400, tostring(err))
      end)
    ]], { source = true })
    local c = g:sse("/sub")
    gw.wait_for(function() return g:request("GET", "/who").body == "ann" end, 5, "conn.data from opts.data")
    local id = g:request("GET", "/pub").body
    assert.equal("true", g:request("GET", "/kept/" .. id).body)
    assert.equal("false", g:request("GET", "/kept/12345").body)
    assert.equal("true,false", g:request("GET", "/m?s=a/%7Bid%7D&t=a/7").body)
    assert.equal("false,true", g:request("GET", "/m?s=a/%7Bid%7D&t=a/%7Bid%7D").body)
    local function up(p, t) return g:request("GET", "/up?p=" .. p .. "&t=" .. t).body end
    assert.equal("true", up("https://x/books/:id", "https://x/books/7"))
    assert.equal("false", up("https://x/books/:id", "https://x/books/7/pages"))
    assert.equal("true", up("https://x/*", "https://x/books/7/pages"))
    assert.equal("error", up("https://x/books/:id(%5Cd%2B)", "https://x/books/7"))
    assert.equal("error", up("https://x/books/:id%3F", "https://x/books"))
    local bad = g:request("GET", "/bad")
    assert.equal(400, bad.status)
    assert.truthy(bad.body:find("opts.data must be a table", 1, true))
    c:close()
    g:stop()
  end)
end)

