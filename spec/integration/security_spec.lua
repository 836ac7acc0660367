-- Attacks on the gateway, each as a client (or a misbehaving peer) would make
-- it: topic selectors built to make matching backtrack, request framing that
-- smuggles, and scripts that try to write what HTTP forbids. Every one must
-- end in a 4xx, a closed connection or a clear error, and a gateway that goes
-- on serving at once.
local gw = require "gateway"
local socket = require "socket"

local APP = "spec/fixtures/security_app.lua"

local function q(s) return (s:gsub("[^%w%-%._~]", function(c) return ("%%%02X"):format(c:byte()) end)) end

-- 31 adjacent reserved expressions and a literal that never matches: a
-- backtracking matcher takes about 1e15 steps on a 27-byte topic.
local EVIL = ("{+a}"):rep(31) .. "/never"
local TOPIC = "https://example.com/books/1" -- 27 bytes

local function healthy(s)
  local r = s:request("GET", "/health")
  assert.is_truthy(r, "the gateway does not answer")
  assert.equal(200, r.status)
end

-- Subscribes with the evil selector (and a fair one), publishes with topics,
-- and checks that the subscriber gets the fair event and the gateway answers.
local function selector_attack(s, publish_path)
  local c = s:sse("/fsub/books?match=" .. q(EVIL) .. "&match=" .. q("https://example.com/books/{id}"))
  assert.equal(200, c.status)
  local r = s:request("POST", publish_path .. "?topic=" .. q(TOPIC), "first")
  assert.equal(202, r.status)
  healthy(s)
  local ev = assert(c:read_event())
  assert.equal("first", ev.data)
  c:close()
end

describe("topic selectors chosen by clients", function()
  it("cost polynomial time in the embedded hub: the gateway answers at once", function()
    local s = gw.start(APP)
    selector_attack(s, "/fpub/books")
    s:stop()
  end)

  it("cost polynomial time with the Redis engine (the fan-out in the Redis reader)", function()
    local redis = gw.redis()
    local s = gw.start("spec/fixtures/redis_app.lua", { args = { "--redis", redis.url } })
    gw.wait_for(function()
      local r = s:request("POST", "/fpub/warmup", "x")
      return r and r.status == 202
    end, 10, "the Redis engine")
    selector_attack(s, "/fpub/books")
    s:stop()
    redis:stop()
  end)

  it("cost polynomial time in the Mercure example: two anonymous GETs", function()
    local s = gw.start("examples/mercure.lua")
    local hub = "/.well-known/mercure"
    local a = s:sse(hub .. "?topic=" .. q(EVIL))
    assert.equal(200, a.status)
    -- Every subscribe publishes a subscription event, matched against a's selector.
    local b = s:sse(hub .. "?topic=" .. q(TOPIC))
    assert.equal(200, b.status)
    healthy(s)
    a:close()
    b:close()
    s:stop()
  end)

  it("are refused past their bounds: 4 KiB a pattern, 128 a subscription, 64 channels, 256 topics", function()
    local s = gw.start(APP)
    local long = s:raw("GET /fsub/x?match=" .. ("a"):rep(4096) .. "* HTTP/1.1\r\nHost: x\r\n\r\n")
    assert.equal(500, long.status)
    local many = {}
    for i = 1, 129 do many[i] = "match=" .. i .. "*" end
    local r = s:raw("GET /fsub/x?" .. table.concat(many, "&") .. " HTTP/1.1\r\nHost: x\r\n\r\n")
    assert.equal(500, r.status)
    gw.wait_for(function() return s:logs():find("at most 128 selectors", 1, true) end, 5, "the selector bound")
    assert.matches("bad topic selector 'a+%*'", s:logs())
    local topics = {}
    for i = 1, 257 do topics[i] = "topic=t" .. i end
    r = s:request("POST", "/fpub/x?" .. table.concat(topics, "&"), "x")
    assert.equal(500, r.status)
    gw.wait_for(function() return s:logs():find("topics: at most 256", 1, true) end, 5, "the topic bound")
    local chans = {}
    for i = 1, 65 do chans[i] = "c=" .. i end
    r = s:raw("GET /subs?" .. table.concat(chans, "&") .. " HTTP/1.1\r\nHost: x\r\n\r\n")
    assert.equal(500, r.status)
    gw.wait_for(function() return s:logs():find("at most 64 channels", 1, true) end, 5, "the channel bound")
    chans[65] = nil
    local ok = s:sse("/subs?" .. table.concat(chans, "&"))
    assert.equal(200, ok.status)
    ok:close()
    healthy(s)
    s:stop()
  end)
end)

describe("request framing", function()
  local s
  setup(function() s = gw.start(APP) end)
  teardown(function() s:stop() end)

  local function rejected(bytes)
    local res = s:raw(bytes)
    assert.equal(400, res.status)
    assert.equal("close", res.headers.connection)
    assert.is_true(res.client:closed_by_peer())
  end

  local POST = "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"

  it("refuses anything but CRLF after a chunk's data", function()
    rejected(POST .. "3\r\nabcXX3\r\ndef\r\n0\r\n\r\n")
    rejected(POST .. "3\r\nabc\n3\r\ndef\r\n0\r\n\r\n")
    rejected(POST .. "3\r\nabc\rX0\r\n\r\n")
    local ok = s:raw(POST .. "3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n")
    assert.equal(200, ok.status)
    assert.equal("abcdef", ok.body)
  end)

  it("checks that CRLF when it arrives a byte at a time", function()
    for _, bad in ipairs { "XX", "\rX", "\n\r" } do
      local c = s:connect()
      c:send(POST .. "3\r\nabc")
      for i = 1, #bad do
        socket.sleep(0.02) -- separate reads: the check carries over from one input to the next
        c:send(bad:sub(i, i))
      end
      c:send("0\r\n\r\n")
      local res = assert(c:read_response())
      assert.equal(400, res.status)
      assert.is_true(c:closed_by_peer())
    end
    local c = s:connect()
    c:send(POST .. "3\r\nabc")
    socket.sleep(0.02)
    c:send("\r")
    socket.sleep(0.02)
    c:send("\n0\r\n\r\n")
    local res = assert(c:read_response())
    assert.equal(200, res.status)
    assert.equal("abc", res.body)
    c:close()
  end)

  it("refuses obs-fold and whitespace before a header's colon", function()
    rejected("POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    rejected("GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n")
    rejected("GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\r\n\tb\r\n\r\n")
    rejected("GET /health HTTP/1.1\r\nHost : x\r\n\r\n")
    rejected("GET /health HTTP/1.1\r\nHost\t: x\r\n\r\n")
    -- split across reads, at every place a fold can hide
    for _, cut in ipairs { "Transfer-Encoding:", "Transfer-Encoding:\r", "Transfer-Encoding:\r\n" } do
      local c = s:connect()
      c:send("POST /echo HTTP/1.1\r\nHost: x\r\n" .. cut)
      socket.sleep(0.02)
      c:send(("POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n"):sub(#"POST /echo HTTP/1.1\r\nHost: x\r\n" + #cut + 1))
      local res = assert(c:read_response())
      assert.equal(400, res.status)
      assert.is_true(c:closed_by_peer())
    end
    -- values with spaces, empty values, and a value split across reads are fine
    local c = s:connect()
    c:send("GET /health HTTP/1.1\r\nHost: x\r\nX-Empty:\r\nX-A: a")
    socket.sleep(0.02)
    c:send(" b \r\nConnection: close\r\n\r\n")
    assert.equal(200, assert(c:read_response()).status)
    c:close()
  end)

  it("joins repeated headers in one pass, however many there are", function()
    local r = s:raw("GET /req-header/x-r HTTP/1.1\r\nHost: x\r\nX-R: a\r\nx-r: b\r\nOther: z\r\nX-r: c\r\n\r\n")
    assert.equal("a, b, c", r.body)
    local many = {}
    for i = 1, 900 do many[i] = "X-R: " .. i % 10 end
    r = s:raw("GET /req-header/x-r HTTP/1.1\r\n" .. table.concat(many, "\r\n") .. "\r\n\r\n")
    assert.equal(200, r.status)
    local parts = {}
    for v in r.body:gmatch("[^,]+") do parts[#parts + 1] = v end
    assert.equal(900, #parts)
    assert.equal("1", parts[1])
    assert.equal(" 0", parts[900])
  end)

  it("closes the connection after a 400 for a bad escape, OPTIONS * or CONNECT", function()
    local after = "GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    for _, bad in ipairs {
      "GET /%zz HTTP/1.1\r\nHost: x\r\n\r\n",
      "GET /health?x=%4 HTTP/1.1\r\nHost: x\r\n\r\n",
      "OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",
      "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    } do
      local res = s:raw(bad .. after)
      assert.equal(400, res.status)
      assert.equal("close", res.headers.connection)
      assert.is_true(res.client:closed_by_peer())
      assert.equal("", res.client.buf) -- the pipelined request was not served
    end
  end)
end)

describe("what scripts may send", function()
  local s
  setup(function() s = gw.start(APP) end)
  teardown(function() s:stop() end)

  it("refuses 1xx statuses with an error naming the script's line", function()
    assert.equal(500, s:request("GET", "/early-hints").status)
    gw.wait_for(function() return s:logs():find("(spec/fixtures/security_app.lua:19): bad status: 103", 1, true) end, 5, "103")
    local r = s:raw("GET /raw-101 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert.equal(500, r.status)
    gw.wait_for(function() return s:logs():find("(spec/fixtures/security_app.lua:20): opts.status must be a final HTTP status", 1, true) end,
      5, "101")
  end)

  it("refuses control characters but tab in header values", function()
    for _, b in ipairs { 0, 1, 8, 10, 11, 12, 13, 27, 31, 127 } do
      assert.equal(500, s:request("GET", "/header/" .. b).status)
    end
    gw.wait_for(function() return s:logs():find("may not contain CR, LF, NUL or another control character", 1, true) end)
    local r = s:request("GET", "/header/9")
    assert.equal(200, r.status)
    assert.equal("a\tb", r.headers["x-a"])
    assert.equal(200, s:request("GET", "/header/128").status) -- obs-text passes
  end)

  it("lets a script's Date and Server replace the gateway's, never doubling them", function()
    for _, path in ipairs { "/own-date", "/own-date-stream" } do
      local c = s:connect()
      c:send("GET " .. path .. " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
      local _, e = c:until_match("\r\n\r\n")
      local head = c.buf:sub(1, e):lower()
      local _, dates = head:gsub("\r\ndate:", "")
      local _, servers = head:gsub("\r\nserver:", "")
      assert.equal(1, dates)
      assert.equal(1, servers)
      assert.matches("date: thu, 01 jan 1970", head)
      c:close()
    end
    local r = s:request("GET", "/own-date")
    assert.equal("mine", r.headers.server)
    assert.equal("sluice", s:request("GET", "/health").headers.server)
  end)

  it("refuses message fields the framing cannot write, where the message is made", function()
    assert.matches("retry must be a whole number", s:request("GET", "/message/retry").body)
    assert.matches("id must be a finite number", s:request("GET", "/message/nan").body)
    assert.matches("event must be a finite number", s:request("GET", "/message/inf").body)
  end)
end)

describe("the log under attack", function()
  it("logs a request whose client half-closed while its handler slept", function()
    local s = gw.start(APP)
    local c = s:connect()
    c:send("GET /sleep HTTP/1.1\r\nHost: x\r\n\r\n")
    c.sock:shutdown("send")
    assert.is_true(c:closed_by_peer())
    gw.wait_for(function() return s:logs():find("GET /sleep 499", 1, true) end, 5, "the access line")
    s:stop()
  end)

  it("sums up refused connections once a second instead of a line each", function()
    local s = gw.start(APP, { prefix = { "env", "SECURITY_MAX_CONNS=3" } })
    local held = { s:connect(), s:connect(), s:connect() }
    for _, c in ipairs(held) do c:send("GET /fsub/x HTTP/1.1\r\nHost: x\r\n\r\n") end
    for _, c in ipairs(held) do assert.truthy(c:read_head()) end
    for _ = 1, 50 do
      local r = s:raw("GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
      assert.equal(503, r.status)
      r.client:close()
    end
    gw.wait_for(function() return s:logs():find("refused %d+ connection%(s%) in the last second") end, 5, "the summary")
    local total
    gw.wait_for(function()
      total = 0
      for n in s:logs():gmatch("refused (%d+) connection") do total = total + tonumber(n) end
      return total == 50
    end, 5, "every refusal counted")
    local lines = 0
    for _ in s:logs():gmatch("refused %d+ connection") do lines = lines + 1 end
    assert.is_true(lines <= 3, lines .. " lines for 50 refusals")
    assert.is_nil(s:logs():find("refusing", 1, true))
    for _, c in ipairs(held) do c:close() end
    s:stop()
  end)

  it("logs events from Redis that cannot be framed, once for each kind", function()
    local redis = gw.redis()
    local s = gw.start("spec/fixtures/redis_app.lua", { args = { "--redis", redis.url } })
    local last
    gw.wait_for(function()
      local r = s:request("POST", "/pub/x", "x")
      last = r and r.status == 202 and r.body
      return last
    end, 10, "the Redis engine")
    local c = s:sse("/sub/x")
    local seq = assert(tonumber(last)) -- injected events come after the engine's own
    local function inject(id, ev)
      seq = seq + 1
      local msg = ("v2,%d,-1,%d,%d,0,0,1\n%s%sx%s"):format(seq, #id, ev and #ev or -1, id, ev or "", "data")
      redis:command("PUBLISH", "sluice:0:ev", msg)
    end
    inject("a\rb")
    inject("c\nd")
    inject("ok", "bad\nname")
    inject("ok", "bad\rname")
    inject("fine", "tick")
    local ev
    local deadline = socket.gettime() + 5
    repeat ev = assert(c:read_event()) until ev.data or socket.gettime() > deadline -- heartbeats come as comments
    assert.equal("data", ev.data)
    assert.equal("fine", ev.id)
    assert.equal("tick", ev.event)
    local logs = s:logs()
    local _, ids = logs:gsub("whose id holds CR, LF or NUL", "")
    local _, names = logs:gsub("whose event name holds CR, LF or NUL", "")
    assert.equal(1, ids)
    assert.equal(1, names)
    c:close()
    s:stop()
    redis:stop()
  end)

  it("warns at load time when CORS reflects every origin with credentials", function()
    local s = gw.start("local sluice = require 'sluice'\nsluice.configure { cors = { origins = '*', credentials = true } }\n",
      { source = true })
    assert.matches("answers every origin with credentials", s:logs())
    s:stop()
    s = gw.start("local sluice = require 'sluice'\nsluice.configure { cors = { origins = 'https://a.example', credentials = true } }\n",
      { source = true })
    assert.is_nil(s:logs():find("answers every origin", 1, true))
    s:stop()
  end)
end)
