-- The core gateway against the real binary: command line, HTTP/1.1, limits,
-- routing, the request table, plain responses and one-off events.
local gw = require "gateway"
local json = require "cjson"
local socket = require "socket"

describe("command line", function()
  it("prints help and version", function()
    local code, out = gw.run({ "--version" })
    assert.equal(0, code)
    code = gw.run({ "--help" })
    assert.equal(0, code)
  end)

  it("refuses a missing script with one line and status 1", function()
    local code, err = gw.run({ "/nonexistent/app.lua" })
    assert.equal(1, code)
    assert.matches("^sluice: cannot open script '/nonexistent/app.lua': No such file or directory\n$", err)
  end)

  it("reports a syntax error with file:line and status 1", function()
    local path = gw.write_file(gw.tmpname(".lua"), "local sluice = require 'sluice'\n\nlocal x = = 1\n")
    local code, err = gw.run({ path })
    os.remove(path)
    assert.equal(1, code)
    assert.matches("^sluice: [^\n]*%.lua:3: [^\n]+\n$", err)
  end)

  it("reports a runtime error at load time with file:line and status 1", function()
    local path = gw.write_file(gw.tmpname(".lua"), "local sluice = require 'sluice'\nsluice.configure { bogus = 1 }\n")
    local code, err = gw.run({ path })
    os.remove(path)
    assert.equal(1, code)
    assert.matches("^sluice: [^\n]*%.lua:2: unknown configuration key 'bogus'\n$", err)
  end)

  it("reports a port in use with status 1", function()
    local s = gw.start("spec/fixtures/core_app.lua")
    local code, err = gw.run({ "--listen", "127.0.0.1:" .. s.port, "spec/fixtures/core_app.lua" })
    s:stop()
    assert.equal(1, code)
    assert.matches("sluice: cannot listen on 127%.0%.0%.1:%d+: address already in use\n$", err) -- after the load's warnings
  end)

  it("refuses a bad option value", function()
    local code, err = gw.run({ "--log-level", "loud", "spec/fixtures/core_app.lua" })
    assert.equal(1, code)
    assert.matches("bad %-%-log%-level", err)
    code, err = gw.run({ "--listen", "nowhere", "spec/fixtures/core_app.lua" })
    assert.equal(1, code)
    assert.matches("bad listen address", err)
  end)

  it("drains on SIGTERM: what is queued for a client is still written, then it exits", function()
    -- More than the kernel holds for a client that does not read (some 36 MB
    -- with loopback autotuning): the rest is still in the gateway's queue at
    -- the signal, so the drain has something to wait for.
    local s = gw.start([[
      local sluice = require "sluice"
      sluice.configure { queue_limit = 64 * 1024 * 1024 }
      sluice.get("/big", function()
        return sluice.raw(function(conn)
          local chunk = ("q"):rep(65536)
          for _ = 1, 768 do conn:write(chunk) end
          sluice.log.info("queued")
        end, { headers = { ["Content-Type"] = "application/octet-stream" } })
      end)
    ]], { source = true })
    local c = s:sse("/big")
    gw.wait_for(function() return s:logs():find("queued", 1, true) end, 10, "the writes")
    s:signal(require("posix.signal").SIGTERM)
    gw.wait_for(function() return s:logs():find("draining 1 connection", 1, true) end, 10, "the drain")
    -- every byte arrives, then the gateway closes (counted as it comes, not kept)
    local got, deadline, why = #c.buf, socket.gettime() + 60 * (gw.VALGRIND and 20 or 1)
    c.buf = ""
    repeat
      local more
      more, why = c:fill(deadline)
      got = got + #c.buf
      c.buf = ""
    until not more
    assert.equal("closed", why)
    assert.equal(768 * 65536, got)
    assert.equal(0, s:stop(true))
  end)

  -- A client that never reads what it was sent: the drain waits for it.
  local STUCK = [[
    local sluice = require "sluice"
    -- More than the kernel takes for a client that does not read (loopback
    -- autotuning lets it hold some 36 MB): the rest waits in the gateway's queue.
    sluice.configure { queue_limit = 64 * 1024 * 1024 }
    sluice.get("/big", function()
      return sluice.raw(function(conn)
        local chunk = ("q"):rep(65536)
        for _ = 1, 768 do conn:write(chunk) end
        sluice.log.info("queued")
      end)
    end)
  ]]
  local function stuck(args)
    local s = gw.start(STUCK, { source = true, args = args })
    local c = s:sse("/big")
    gw.wait_for(function() return s:logs():find("queued", 1, true) end, 10, "the writes")
    s:signal(require("posix.signal").SIGTERM)
    gw.wait_for(function() return s:logs():find("draining 1 connection", 1, true) end, 10, "the drain")
    return s, c
  end

  it("bounds the drain by --grace, and a second SIGTERM ends it at once, with status 0", function()
    -- --grace 0.3: the client that does not read is closed after it
    local s, c = stuck({ "--grace", "0.3" })
    gw.wait_for(function() return s:logs():find("did not drain in time", 1, true) end, 10, "the grace period")
    local code = s:stop(true)
    assert.equal(0, code)
    c:close()
    -- the default 5 s, cut short by a second signal
    s, c = stuck()
    s:signal(require("posix.signal").SIGTERM)
    gw.wait_for(function() return s:logs():find("received SIGTERM again: closing 1 connection now", 1, true) end, 5,
      "the second signal")
    assert.equal(0, (s:stop(true)))
    c:close()
    -- a bad value is refused
    local bad, err = gw.run({ "--grace", "soon", "spec/fixtures/core_app.lua" })
    assert.equal(1, bad)
    assert.matches("bad %-%-grace 'soon'", err)
  end)

  it("logs one JSON object per line with --log-format json, and each stream's end: mode, events, why", function()
    local app = [[
      local sluice = require "sluice"
      sluice.get("/plain", function() return sluice.response(200, "hi") end)
      sluice.get("/gen", function() return coroutine.wrap(function() coroutine.yield("a"); coroutine.yield("b") end) end)
      sluice.get("/sub", function() return sluice.subscribe("c") end)
      sluice.post("/kick", function() return sluice.response(200, sluice.kick("c")) end)
      sluice.get("/hang", function() return coroutine.wrap(function() coroutine.yield("x"); sluice.sleep(100) end) end)
      sluice.get("/count", function() return sluice.response(200, sluice.subscribers("c")) end)
    ]]
    local function exercise(s)
      assert.equal("hi", s:request("GET", "/plain").body)
      local g = s:sse("/gen")
      assert.is_true(g:closed_by_peer(5))
      local sub = s:sse("/sub")
      assert.equal("1", s:request("POST", "/kick").body)
      assert.is_true(sub:closed_by_peer(5))
      local h = s:sse("/hang")
      assert.equal("x", h:read_event().data)
      h:close()
      gw.wait_for(function() return s:logs():find("/hang", 1, true) end, 5, "the access line of /hang")
    end
    local s = gw.start(app, { source = true, args = { "--log-format", "json" } })
    exercise(s)
    local access = {}
    for line in s:logs():gmatch("[^\n]+") do
      local ok, obj = pcall(json.decode, line)
      assert.is_true(ok, "not JSON: " .. line)
      assert.is_string(obj.time)
      assert.is_string(obj.level)
      assert.is_string(obj.msg)
      if obj.msg == "access" then access[obj.path] = obj end
    end
    assert.same({ "127.0.0.1", "GET", 200 }, { access["/plain"].remote, access["/plain"].method, access["/plain"].status })
    assert.is_true(access["/plain"].bytes > 2) -- head and body
    assert.is_number(access["/plain"].duration)
    assert.is_nil(access["/plain"].mode)
    local function stream(path) return { access[path].mode, access[path].events, access[path].ended } end
    assert.same({ "stream", 2, "handler" }, stream("/gen"))
    assert.same({ "subscribe", 0, "script" }, stream("/sub"))
    assert.same({ "stream", 1, "client" }, stream("/hang"))
    s:stop()
    -- text, the default: the same facts at the end of the line
    s = gw.start(app, { source = true })
    exercise(s)
    assert.matches("GET /hang 200 %d+ [%d.]+ms mode=stream events=1 ended=client\n", s:logs())
    s:stop()
    assert.equal(1, (gw.run({ "--log-format", "xml", "spec/fixtures/core_app.lua" })))
  end)

  it("listens on several addresses and stops cleanly on SIGINT", function()
    local extra = gw.free_port()
    local s = gw.start("spec/fixtures/core_app.lua", { args = { "--listen", "127.0.0.1:" .. extra } })
    local other = setmetatable({ port = extra }, getmetatable(s))
    -- the listeners open one after another: wait for the second too
    gw.wait_for(function() return pcall(other.connect, other) end, 10, "the second listener")
    assert.equal("ok", other:request("GET", "/health").body)
    assert.equal("ok", s:request("GET", "/health").body)
    s:signal(require("posix.signal").SIGINT)
    assert.equal(0, s:stop(true))
  end)
end)

describe("HTTP/1.1", function()
  local s
  setup(function() s = gw.start("spec/fixtures/core_app.lua") end)
  teardown(function() s:stop() end)

  it("keeps a connection alive across requests", function()
    local c = s:connect()
    for i = 1, 3 do
      c:send("GET /users/" .. i .. " HTTP/1.1\r\nHost: x\r\n\r\n")
      local res = assert(c:read_response())
      assert.equal(200, res.status)
      assert.equal("user " .. i, res.body)
      assert.is_nil(res.headers.connection)
    end
    c:close()
  end)

  it("answers pipelined requests in order, even when an earlier handler sleeps", function()
    local c = s:connect()
    c:send("GET /slow?s=0.1&tag=a HTTP/1.1\r\nHost: x\r\n\r\n" ..
      "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello" ..
      "GET /slow?s=0&tag=c HTTP/1.1\r\nHost: x\r\n\r\n")
    assert.equal("slept a", c:read_response().body)
    assert.equal("hello", c:read_response().body)
    assert.equal("slept c", c:read_response().body)
    c:close()
  end)

  it("reads a chunked request body", function()
    local res = s:raw("POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" ..
      "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
    assert.equal(201, res.status)
    assert.equal("hello world", res.body)
    assert.equal("11", res.headers["x-len"])
    res.client:close()
  end)

  it("answers Expect: 100-continue before the body comes", function()
    local c = s:connect()
    c:send("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    local st = c:read_head()
    assert.equal(100, st)
    c:send("hello")
    local res = assert(c:read_response())
    assert.same({ 201, "hello" }, { res.status, res.body })
    c:close()
    -- too big: refused at once, no 100
    local res2 = s:raw("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 999999\r\nExpect: 100-continue\r\n\r\n")
    assert.equal(413, res2.status)
    res2.client:close()
  end)

  it("closes after a response to Connection: close and to HTTP/1.0", function()
    local res = s:raw("GET /users/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert.equal("close", res.headers.connection)
    assert.is_true(res.client:closed_by_peer())
    res = s:raw("GET /users/1 HTTP/1.0\r\n\r\n")
    assert.equal(200, res.status)
    assert.is_true(res.client:closed_by_peer())
  end)

  local function rejected(bytes, status)
    local res = s:raw(bytes)
    assert.equal(status, res.status)
    assert.equal("close", res.headers.connection)
    assert.is_true(res.client:closed_by_peer())
  end

  it("rejects malformed requests with 400 and closes", function()
    rejected("GARBAGE\r\n\r\n", 400)
    rejected("GET / HTTP/9.9\r\n\r\n", 400)
    rejected("GET /hello HTTP/1.1\r\nBad Header\r\n\r\n", 400)
    rejected("\0\1\2\3\r\n\r\n", 400)
  end)

  it("rejects smuggling: Content-Length with Transfer-Encoding, or two Content-Lengths", function()
    rejected("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400)
    rejected("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400)
    rejected("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello", 400)
  end)

  it("answers 431 past max_header and 413 past max_body", function()
    rejected("GET /hello HTTP/1.1\r\nHost: x\r\nX-Big: " .. ("a"):rep(3000) .. "\r\n\r\n", 431)
    rejected("GET /" .. ("a"):rep(3000) .. " HTTP/1.1\r\n\r\n", 431)
    rejected("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n", 413)
    local chunk = ("b"):rep(3000)
    rejected("POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" ..
      ("%x\r\n%s\r\n"):format(#chunk, chunk):rep(2) .. "0\r\n\r\n", 413)
  end)

  it("closes a connection whose request head is not complete in header_timeout", function()
    local c = s:connect()
    c:send("GET /hello HTTP/1.1\r\nHost: x\r\n")
    assert.is_true(c:closed_by_peer(5))
  end)

  it("closes a connection whose body does not arrive in header_timeout (a body sent a byte at a time)", function()
    local c = s:connect()
    c:send("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
    local socket = require "socket"
    local t0 = socket.gettime()
    for _ = 1, 3 do -- a byte now and then keeps no request alive past the limit
      socket.sleep(0.3)
      c:send("d")
    end
    assert.is_true(c:closed_by_peer(5))
    assert.is_true(socket.gettime() - t0 < 5)
  end)

  it("survives random bytes", function()
    math.randomseed(1234)
    for _ = 1, 50 do
      local t = {}
      for i = 1, math.random(1, 400) do t[i] = string.char(math.random(0, 255)) end
      local c = s:connect()
      c:send(table.concat(t) .. "\r\n\r\n")
      c:closed_by_peer(3)
      c:close()
    end
    assert.equal("ok", s:request("GET", "/health").body)
  end)
end)

describe("listening on IPv6", function()
  it("serves on [::1]", function()
    local socket = require "socket"
    local probe = socket.tcp6()
    local has_v6 = probe and probe:bind("::1", 0)
    if probe then probe:close() end
    assert.truthy(has_v6, "this machine has no IPv6 loopback")
    local port = gw.free_port()
    local s = gw.start("spec/fixtures/core_app.lua", { args = { "--listen", "[::1]:" .. port } })
    local c = assert(socket.tcp6())
    c:settimeout(5)
    assert(c:connect("::1", port))
    c:send("GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    local all = c:receive("*a")
    c:close()
    assert.matches("^HTTP/1%.1 200 OK", all)
    assert.matches("\r\n\r\nok$", all)
    s:stop()
  end)
end)

describe("max_connections", function()
  it("refuses connections over the limit with 503", function()
    local s = gw.start("local sluice = require 'sluice'\nsluice.configure { max_connections = 2 }\n" ..
      "sluice.get('/h', function() return sluice.response(200, 'ok') end)\n", { source = true })
    local a, b = s:connect(), s:connect()
    gw.wait_for(function() return s:logs():find("conn 2", 1, true) or true end)
    local res = s:raw("GET /h HTTP/1.1\r\nHost: x\r\n\r\n")
    assert.equal(503, res.status)
    assert.is_true(res.client:closed_by_peer())
    a:close()
    b:close()
    gw.wait_for(function()
      local r = s:request("GET", "/h")
      return r and r.status == 200
    end, 5, "a free slot")
    s:stop()
  end)
end)

describe("routes and requests", function()
  local s
  setup(function() s = gw.start("spec/fixtures/core_app.lua") end)
  teardown(function() s:stop() end)

  it("matches captures, rest patterns, first declared wins", function()
    assert.equal("user 42", s:request("GET", "/users/42").body)
    assert.equal("user me", s:request("GET", "/users/me").body)
    assert.equal("rest=a/b/c.txt", s:request("GET", "/files/a/b/c.txt").body)
    assert.equal("rest=", s:request("GET", "/files/").body)
    assert.equal("PATCH", s:request("PATCH", "/any").body)
  end)

  it("answers 404 and 405 with Allow", function()
    assert.equal(404, s:request("GET", "/missing").status)
    local res = s:request("POST", "/items/3")
    assert.equal(405, res.status)
    assert.equal("PUT, DELETE", res.headers.allow)
    assert.equal(204, s:request("PUT", "/items/3").status)
    assert.equal("GET, HEAD, POST", s:request("PATCH", "/echo").headers.allow)
  end)

  it("builds the request table", function()
    local c = s:connect()
    c:send("GET /ech%6F?a=1&b=x%20y&b=z&plus=a+b&lastEventId=q HTTP/1.1\r\nHost: x\r\n" ..
      "X-Multi: one\r\nx-multi: two\r\nLast-Event-ID: 99\r\nContent-Length: 3\r\n\r\nabc")
    local res = assert(c:read_response())
    c:close()
    local r = json.decode(res.body)
    assert.equal("GET", r.method)
    assert.equal("/echo", r.path)
    assert.same({ a = "1", b = { "x y", "z" }, plus = "a b", lastEventId = "q" }, r.query)
    assert.equal("one, two", r.headers["x-multi"])
    assert.equal("x", r.headers.host)
    assert.equal("abc", r.body)
    assert.equal("99", r.last_event_id)
    assert.equal("127.0.0.1", r.remote_addr)
    assert.equal("application/json", res.headers["content-type"])
  end)

  it("takes last_event_id from the query when there is no header", function()
    local r = json.decode(s:request("GET", "/echo?lastEventId=17").body)
    assert.equal("17", r.last_event_id)
    r = json.decode(s:request("GET", "/echo").body)
    assert.is_nil(r.last_event_id)
  end)

  it("decodes percent-escapes per segment and rejects bad ones", function()
    assert.equal("user a/b", s:request("GET", "/users/a%2Fb").body)
    assert.equal(400, s:request("GET", "/users/%zz").status)
    assert.equal(400, s:request("GET", "/echo?x=%4").status)
  end)

  it("runs every handler in a coroutine of its own", function()
    for _ = 1, 3 do assert.equal("fresh", s:request("GET", "/co").body) end
  end)

  it("answers HEAD like GET without a body", function()
    local c = s:connect()
    c:send("HEAD /users/5 HTTP/1.1\r\nHost: x\r\n\r\n")
    local res = {}
    res.status, res.headers = c:read_head()
    c:send("GET /users/6 HTTP/1.1\r\nHost: x\r\n\r\n")
    res.body = c:read_response().body
    res.client = c
    assert.equal(200, res.status)
    assert.equal("6", res.headers["content-length"])
    -- no body came: the next response follows the head directly
    assert.equal("user 6", res.body)
    res.client:close()
  end)

  it("gives 500 for a handler error, logs the traceback, and goes on", function()
    local res = s:request("GET", "/boom")
    assert.equal(500, res.status)
    assert.equal("ok", s:request("GET", "/health").body)
    local logs = gw.wait_for(function()
      local l = s:logs()
      return l:find("kaboom", 1, true) and l
    end)
    assert.matches("core_app%.lua:%d+: kaboom", logs)
    assert.matches("stack traceback:", logs)
    assert.equal(500, s:request("GET", "/bad-return").status)
    assert.matches("handler returned a boolean", s:logs())
  end)

  it("sends header lists and numbers, and refuses header injection with 500", function()
    local res = s:request("GET", "/headers/list")
    assert.equal("a=1, b=2", res.headers["set-cookie"])
    assert.equal("5", res.headers["x-number"])
    for _, p in ipairs { "/headers/crlf", "/headers/name", "/headers/sse" } do
      res = s:request("GET", p)
      assert.equal(500, res.status, p)
      assert.is_nil(res.headers.injected)
    end
    assert.matches("may not contain CR, LF, NUL or another control character", s:logs())
    assert.matches("bad header name 'Bad Name'", s:logs())
  end)

  it("writes one access line per request", function()
    s:request("GET", "/users/77")
    gw.wait_for(function() return s:logs():find("127.0.0.1 GET /users/77 200 %d+ [%d.]+ms") end, 5, "access line")
  end)
end)

describe("one-off events", function()
  local s
  setup(function() s = gw.start("spec/fixtures/core_app.lua") end)
  teardown(function() s:stop() end)

  local function once(path)
    local c = s:sse(path)
    local ev = c:read_event()
    local closed = c:closed_by_peer()
    c:close()
    return c, ev, closed
  end

  it("sends a string as one event with the SSE headers, then ends the stream", function()
    local c, ev, closed = once("/hello")
    assert.equal(200, c.status)
    assert.equal("text/event-stream; charset=utf-8", c.headers["content-type"])
    assert.equal("no-cache", c.headers["cache-control"])
    assert.equal("no", c.headers["x-accel-buffering"])
    assert.is_nil(c.headers["content-length"])
    assert.equal("Hello, world!", ev.data)
    assert.is_true(closed)
    assert.equal("", c.buf)
  end)

  it("sends numbers as text and tables as JSON", function()
    local _, ev = once("/number")
    assert.equal("42", ev.data)
    _, ev = once("/table")
    assert.same({ a = 1, list = { 1, 2, 3 } }, json.decode(ev.data))
  end)

  it("sends a message with id, event, retry and multi-line data", function()
    local c = s:sse("/message")
    local ev = c:read_event()
    c:close()
    assert.equal("7", ev.id)
    assert.equal("note", ev.event)
    assert.equal(2500, ev.retry)
    assert.equal("line1\nline2", ev.data)
  end)

  it("takes headers and retry from sluice.once options", function()
    local c = s:sse("/once-opts")
    assert.equal("yes", c.headers["x-extra"])
    local first = c:read_event()
    assert.equal(1000, first.retry)
    local ev = c:read_event()
    assert.equal("x", ev.data)
    c:close()
  end)

  it("answers HEAD on an SSE route with the head alone, then closes", function()
    local c = s:connect()
    c:send("HEAD /hello HTTP/1.1\r\nHost: x\r\n\r\n")
    local st, h = c:read_head()
    assert.equal(200, st)
    assert.equal("text/event-stream; charset=utf-8", h["content-type"])
    assert.is_true(c:closed_by_peer())
    assert.equal("", c.buf)
  end)

  it("goes on when a client leaves while its handler sleeps", function()
    local c = s:connect()
    c:send("GET /slow?s=0.3&tag=gone HTTP/1.1\r\nHost: x\r\n\r\n")
    c:close()
    assert.equal("slept back", s:request("GET", "/slow?s=0.4&tag=back").body)
    assert.is_nil(s:logs():find("handler error", 1, true))
  end)

  it("answers 204 when a handler returns nil", function()
    assert.equal(204, s:request("GET", "/nothing").status)
  end)
end)
