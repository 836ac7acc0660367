-- Outbound I/O from scripts: sluice.http against real local upstreams (a
-- gateway of the spec's own, and a TLS server with a CA made here by the
-- openssl command), and sluice.redis against the spec's own redis-server.
-- A call suspends only its coroutine: the specs check that a generator goes
-- on ticking while 200 handlers wait, that a client that leaves cancels its
-- transfer (the upstream's open connections are counted), and that bad input
-- is an error naming the script's line.
local gw = require "gateway"
local json = require "cjson"
local socket = require "socket"
local wait = require "posix.sys.wait"
local psignal = require "posix.signal"

local APP = "spec/fixtures/outbound_app.lua"

local function number_at(srv, path)
  local r = srv:request("GET", path)
  return r and tonumber(r.body)
end

-- Whether the gateway has n outbound requests in flight (its own metrics say).
local function in_flight(s, n)
  local r = s:request("GET", "/metrics")
  return r and r.body:find("\nsluice_http_client_in_flight " .. n .. "\n", 1, true) ~= nil
end

describe("sluice.http", function()
  local up, s, tls_pid, chunked_pid, dir
  setup(function()
    up = gw.start("spec/fixtures/upstream_app.lua", { log_level = "info" })
    -- a CA and a server certificate for 127.0.0.1, made here
    dir = gw.tmpname("-tls")
    assert(os.execute("mkdir -p " .. dir))
    local sh = "(" .. table.concat({
      "cd " .. dir,
      "openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=spec-ca",
      "openssl req -newkey rsa:2048 -nodes -keyout srv.key -out srv.csr -subj /CN=127.0.0.1",
      "printf 'subjectAltName=IP:127.0.0.1\\n' > ext.cnf",
      "openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out srv.pem -days 2 -extfile ext.cnf",
    }, " && ") .. ") >/dev/null 2>&1"
    assert(os.execute(sh) == 0, "openssl could not make the certificates")
    local tls_port = gw.free_port()
    tls_pid = gw.tool({ "openssl", "s_server", "-accept", "127.0.0.1:" .. tls_port, "-cert", dir .. "/srv.pem",
      "-key", dir .. "/srv.key", "-www", "-quiet" }, dir .. "/out", dir .. "/err")
    gw.wait_for(function()
      local c = socket.tcp()
      c:settimeout(0.2)
      local ok = c:connect("127.0.0.1", tls_port)
      c:close()
      return ok
    end, 10, "the TLS upstream")
    local chunked_port = gw.free_port()
    chunked_pid = gw.tool({ "python3", "spec/helpers/chunked_upstream.py", tostring(chunked_port) }, dir .. "/c.out",
      dir .. "/c.err")
    gw.wait_for(function()
      local c = socket.tcp()
      c:settimeout(0.2)
      local ok = c:connect("127.0.0.1", chunked_port)
      c:close()
      return ok
    end, 10, "the chunked upstream")
    s = gw.start(APP, { prefix = { "env", "UPSTREAM=http://127.0.0.1:" .. up.port,
      "CHUNKED=http://127.0.0.1:" .. chunked_port,
      "TLS_UPSTREAM=https://127.0.0.1:" .. tls_port, "CA=" .. dir .. "/ca.pem" } })
  end)
  teardown(function()
    s:stop()
    up:stop()
    for _, pid in ipairs { tls_pid, chunked_pid } do
      psignal.kill(pid, psignal.SIGKILL)
      wait.wait(pid)
    end
    os.execute("rm -rf " .. dir)
  end)

  local function get(path)
    local r = assert(s:request("GET", path))
    if r.status == 200 then return json.decode(r.body), r end
    return nil, r
  end

  it("answers status, headers (lower-case, repeated ones as a list) and body", function()
    local res = assert(get("/get/hello?who=spec"))
    assert.equal(200, res.status)
    assert.equal("hi spec", res.body)
    assert.equal("1", res.headers["x-a"])
    assert.same({ "a=1", "b=2" }, res.headers["set-cookie"])
    assert.equal(404, get("/get/status/404").status)
    assert.equal(503, get("/get/status/503").status)
  end)

  it("reads fixed-length and chunked bodies, sends JSON, forms and other methods", function()
    assert.equal(("x"):rep(100000), get("/get/big/100000").body)
    assert.equal("hello world", get("/chunked").body)
    assert.equal("hello world", get("/get/until-close").body)
    local res = get("/post-json")
    assert.equal('POST {"a":1}', res.body)
    assert.equal("application/json", res.headers["x-ct"])
    res = get("/post-form")
    assert.equal("POST b=x+y", res.body)
    assert.equal("application/x-www-form-urlencoded", res.headers["x-ct"])
    assert.equal("PUT raw", get("/put").body)
  end)

  it("reuses connections to a host (keep-alive, counted at the upstream)", function()
    local before = number_at(up, "/accepted")
    for _ = 1, 5 do assert.equal(200, get("/get/hello").status) end
    local after = number_at(up, "/accepted")
    -- five requests through the gateway: at most one new connection (plus the two /accepted asks)
    assert.is_true(after - before <= 3, ("%d new connections for 5 requests"):format(after - before - 2))
  end)

  it("ends with 'timeout' on an upstream that never answers, or sends its head and stalls", function()
    local _, r = get("/get/never?timeout=0.3")
    assert.equal(502, r.status)
    assert.matches("^timeout|", r.body)
    _, r = get("/get/stall?timeout=0.3")
    assert.matches("^timeout|", r.body)
  end)

  it("follows redirects only when asked, and only so many", function()
    assert.equal(302, get("/get/redirect/0").status)
    local res = get("/get/redirect/2?follow=true")
    assert.equal(200, res.status)
    assert.equal("hi there", res.body)
    local _, r = get("/get/redirect/5?follow=2")
    assert.matches("^redirects|", r.body)
  end)

  it("refuses a body over max_body with 'too large'", function()
    local _, r = get("/get/big/5000?max=1000")
    assert.matches("^too large|", r.body)
    assert.equal(1000, #get("/get/big/1000?max=1000").body)
  end)

  it("verifies TLS against the system CAs: refused without cainfo, accepted with it", function()
    local _, r = get("/tls")
    assert.equal(502, r.status)
    assert.matches("^tls|", r.body)
    local res = assert(get("/tls?ca=1"))
    assert.equal(200, res.status)
    assert.is_truthy(res.body:find("s_server", 1, true) or res.body:find("Ciphers", 1, true))
    assert.equal(200, get("/tls?insecure=1").status)
    gw.wait_for(function() return s:logs():find("insecure = true turns TLS verification off", 1, true) end)
  end)

  it("says 'dns' for a host that does not resolve", function()
    local _, r = get("/dns")
    assert.equal(502, r.status)
    assert.matches("^dns|", r.body)
  end)

  it("works in generators and timer bodies", function()
    local c = s:sse("/relay")
    for i = 1, 3 do assert.equal("hi there " .. i, assert(c:read_event()).data) end
    c:close()
    gw.wait_for(function() return s:request("GET", "/timer").body == "hi there" end, 5, "the timer's answer")
  end)

  it("refuses bad input with an error naming the script's line, and sends nothing", function()
    local before = number_at(up, "/accepted")
    for path, line in pairs { ["/bad/scheme"] = 33, ["/bad/url"] = 34, ["/bad/header"] = 35, ["/bad/body"] = 36 } do
      assert.equal(500, s:request("GET", path).status)
      gw.wait_for(function() return s:logs():find("outbound_app.lua:" .. line .. ": sluice.http.request: ", 1, true) end,
        5, path)
    end
    assert.equal(before + 1, number_at(up, "/accepted"))
  end)

  it("cancels the transfer of a client that leaves (the upstream's connection closes)", function()
    local c = s:connect()
    c:send("GET /get/never HTTP/1.1\r\nHost: x\r\n\r\n")
    gw.wait_for(function() return in_flight(s, 1) end, 5, "the transfer to start")
    c:close()
    gw.wait_for(function() return number_at(up, "/open") == 1 end, 5, "the upstream connection to close")
    gw.wait_for(function() return s:logs():find("GET /get/never 499", 1, true) end, 5, "the access line")
  end)

  it("counts requests in the metrics", function()
    local text = s:request("GET", "/metrics").body
    assert.matches('sluice_http_client_requests_total{code="2xx"} %d+', text)
    assert.matches("sluice_http_client_in_flight 0", text)
    assert.matches("sluice_http_client_duration_seconds_count %d+", text)
  end)
end)

describe("sluice.http under load", function()
  -- n clients each asking the gateway for path (by default the upstream's slow answer)
  local function slow_requests(s, n, path)
    local cs = {}
    for i = 1, n do
      local c = s:connect()
      c:send("GET " .. (path or "/get/slow?timeout=30") .. " HTTP/1.1\r\nHost: x\r\n\r\n")
      cs[i] = c
    end
    return cs
  end
  -- an upstream whose slow answer takes slow seconds (2 unless given), and a gateway in front
  local function gateways(slow)
    local up = gw.start("spec/fixtures/upstream_app.lua",
      { log_level = "info", prefix = slow and { "env", "UPSTREAM_SLOW=" .. slow } or nil })
    return up, gw.start(APP, { log_level = "info", prefix = { "env", "UPSTREAM=http://127.0.0.1:" .. up.port } })
  end
  local function all_answered(cs)
    for _, c in ipairs(cs) do
      local r = assert(c:read_response(30))
      assert.equal(200, r.status)
      c:close()
    end
  end

  it("keeps a generator ticking while 200 handlers wait on a 2-second upstream", function()
    local up, s = gateways()
    local waiting = slow_requests(s, 200)
    local ticks = s:sse("/ticks")
    -- ten ticks arrive while every one of the 200 still waits for its answer
    for i = 1, 10 do assert.equal(tostring(i), assert(ticks:read_event()).data) end
    for _, c in ipairs(waiting) do assert.equal("", c.buf) end
    all_answered(waiting)
    ticks:close()
    s:stop()
    up:stop()
  end)

  it("keeps the connections a burst opened for the next burst (none opened again)", function()
    local up, s = gateways(2)
    -- 150 requests held 2 s each by the upstream: as many connections at once
    local function burst() all_answered(slow_requests(s, 150)) end
    local before = number_at(up, "/accepted")
    burst()
    local opened = number_at(up, "/accepted")
    assert.is_true(opened - before > 64, (opened - before) .. " connections for the first burst")
    burst()
    local again = number_at(up, "/accepted") - opened - 1 -- the ask itself is one
    assert.is_true(again <= 2, again .. " connections opened again for the second burst")
    s:stop()
    up:stop()
  end)

  it("answers beside connections that are refused, many at once, twice over", function()
    local up, s = gateways(1)
    -- sockets whose connect fails are closed by libcurl without telling; their
    -- descriptors come back at once for the next connections
    for _ = 1, 2 do
      local good = slow_requests(s, 60)
      for _, c in ipairs(slow_requests(s, 60, "/refused")) do
        local r = assert(c:read_response(30))
        assert.equal(502, r.status)
        assert.matches("^connect|", r.body)
        c:close()
      end
      all_answered(good)
    end
    s:stop()
    up:stop()
  end)

  it("gives each request its own URL with more different ones in flight than it keeps parsed, twice over", function()
    local up, s = gateways()
    for _ = 1, 2 do
      local cs = {}
      for i = 1, 40 do
        cs[i] = s:connect()
        cs[i]:send("GET /get/status/" .. (250 + i) .. " HTTP/1.1\r\nHost: x\r\n\r\n")
      end
      for i, c in ipairs(cs) do
        local r = assert(c:read_response(30))
        assert.equal(200, r.status)
        local res = json.decode(r.body)
        assert.same({ 250 + i, "status " .. (250 + i) }, { res.status, res.body })
        c:close()
      end
    end
    s:stop()
    up:stop()
  end)

  it("lets a transfer started before a reload finish in the old state", function()
    local up = gw.start("spec/fixtures/upstream_app.lua", { log_level = "info" })
    local src = gw.read_file(APP)
    local path = gw.write_file(gw.tmpname(".lua"), src)
    local s = gw.start(path, { prefix = { "env", "UPSTREAM=http://127.0.0.1:" .. up.port } })
    local c = s:connect()
    c:send("GET /get/slow?timeout=30 HTTP/1.1\r\nHost: x\r\n\r\n")
    gw.wait_for(function() return in_flight(s, 1) end, 5, "the transfer to start")
    s:signal(psignal.SIGHUP)
    gw.wait_for(function() return s:logs():find("reloaded", 1, true) end, 10, "the reload")
    local r = assert(c:read_response(30))
    assert.equal(200, r.status)
    assert.equal("slow", json.decode(r.body).body)
    c:close()
    s:stop()
    up:stop()
    os.remove(path)
  end)
end)

describe("sluice.http at shutdown", function()
  it("ends a waiting handler's transfer with the drain, and the gateway exits 0", function()
    local up = gw.start("spec/fixtures/upstream_app.lua", { log_level = "info" })
    local s = gw.start(APP, { args = { "--grace", "0.5" }, prefix = { "env", "UPSTREAM=http://127.0.0.1:" .. up.port } })
    local c = s:connect()
    c:send("GET /get/never?timeout=60 HTTP/1.1\r\nHost: x\r\n\r\n")
    gw.wait_for(function() return in_flight(s, 1) end, 5, "the transfer to start")
    local code = s:stop()
    assert.equal(0, code)
    gw.wait_for(function() return number_at(up, "/open") == 1 end, 5, "the upstream connection to close")
    c:close()
    up:stop()
  end)
end)

describe("sluice.redis", function()
  it("runs commands on the gateway's Redis, many at once, with nil, errors and lists", function()
    local redis = gw.redis()
    local s = gw.start(APP, { args = { "--redis", redis.url }, prefix = { "env", "UPSTREAM=http://127.0.0.1:1" } })
    local r
    gw.wait_for(function()
      r = s:request("GET", "/redis")
      return r and r.status == 200
    end, 10, "the Redis engine")
    local v = json.decode(r.body)
    assert.equal("OK", v.set)
    assert.equal("42", v.get)
    assert.equal("42", v.mget[1])
    assert.is_true(v.null_in_list)
    assert.equal(5, v.incr)
    assert.is_true(v.none_is_nil)
    assert.is_true(v.bad)
    assert.matches("wrong number of arguments", v.err)
    assert.equal("50", s:request("GET", "/redis-many").body)
    assert.equal(500, s:request("GET", "/bad/redis").status)
    gw.wait_for(function()
      return s:logs():find("outbound_app.lua:37: sluice.redis.call: argument 2 must be a string or a number", 1, true)
    end, 5, "the argument error")
    assert.equal(500, s:request("GET", "/redis-refused").status)
    gw.wait_for(function() return s:logs():find("BLPOP is not allowed", 1, true) end, 5, "the refusal")
    s:stop()
    redis:stop()
  end)

  it("is a clear error without a Redis", function()
    local s = gw.start(APP, { prefix = { "env", "UPSTREAM=http://127.0.0.1:1" } })
    assert.equal(500, s:request("GET", "/redis").status)
    gw.wait_for(function() return s:logs():find("the gateway has no Redis", 1, true) end, 5, "the error")
    s:stop()
  end)
end)

describe("sluice.http streams and the SSE client", function()
  local up, s
  setup(function()
    up = gw.start("spec/fixtures/upstream_app.lua", { log_level = "info" })
    s = gw.start(APP, { prefix = { "env", "UPSTREAM=http://127.0.0.1:" .. up.port } })
  end)
  teardown(function()
    s:stop()
    up:stop()
  end)

  local function get(path)
    local r = assert(s:request("GET", path))
    assert.equal(200, r.status, r.body)
    return json.decode(r.body)
  end

  it("reads a body as it comes, in chunks", function()
    local v = get("/stream-chunks")
    assert.equal(200, v.status)
    assert.equal(300000, v.total)
    assert.is_true(v.parts >= 1)
    assert.is_nil(v.error)
  end)

  it("pauses the transfer while the script does not read", function()
    local v = get("/stream-paused")
    assert.is_true(v.first > 0)
    -- the upstream offers 10 MiB; the gateway holds about 64 KiB and stops taking more
    assert.is_true(v.received < 1024 * 1024, "received " .. v.received .. " bytes while paused")
  end)

  it("parses events (id, event, data, retry) and ends with the stream", function()
    local v = get("/relay-events?path=" .. "/sse%3Flast%3D2" .. "&n=10")
    assert.equal(2, #v.events)
    assert.same({ id = "1", event = "tick", data = "tick 1", retry = 50 }, v.events[1])
    assert.equal("2", v.events[2].id)
  end)

  it("reconnects with Last-Event-ID after the server's retry, losing and repeating nothing", function()
    local v = get("/relay-events?path=" .. "/sse%3Flast%3D7" .. "&n=7&reconnect=1")
    assert.equal(7, #v.events)
    for i, ev in ipairs(v.events) do assert.equal("tick " .. i, ev.data) end
    v = get("/relay-events?path=/sse&n=3&from=40")
    assert.equal("tick 41", v.events[1].data)
  end)

  it("relays an upstream's events in a generator, resuming from the client's Last-Event-ID", function()
    local c = s:sse("/relay-sse", { ["Last-Event-ID"] = "10" })
    for i = 11, 13 do
      local ev = assert(c:read_event())
      assert.equal("tick " .. i, ev.data)
      assert.equal(tostring(i), ev.id)
      assert.equal("tick", ev.event)
    end
    c:close()
    -- the client left: the relay's upstream stream closes too
    gw.wait_for(function() return number_at(up, "/open") == 1 end, 5, "the upstream stream to close")
  end)
end)
