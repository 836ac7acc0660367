-- The watchdog: a script that keeps the loop busy longer than
-- configure { watchdog } is stopped where it runs (handler: 500; generator:
-- its stream ends; timer, on_close: logged), with its file:line, and the
-- gateway goes on serving. With the JIT on, a compiled loop cannot be stopped:
-- the process exits with status 70 for its supervisor to restart it.
local gw = require "gateway"
local wait = require "posix.sys.wait"
local socket = require "socket"

describe("watchdog", function()
  local s
  setup(function() s = gw.start("spec/fixtures/watchdog_app.lua") end)
  teardown(function() s:stop() end)

  local function ok() assert.equal("ok", s:request("GET", "/ok").body) end
  local function logged(text) gw.wait_for(function() return s:logs():find(text, 1, true) end, 10, text) end

  it("stops `while true do end` in a handler: 500, the route and line in the log, the gateway goes on", function()
    assert.equal(500, s:request("GET", "/spin").status)
    logged("handler error in route GET /spin (spec/fixtures/watchdog_app.lua:6): spec/fixtures/watchdog_app.lua:6: watchdog:")
    ok()
  end)

  it("stops it in a generator: the stream ends after what it sent", function()
    local st = s:sse("/gen")
    assert.equal("first", st:read_event().data)
    assert.is_true(st:closed_by_peer(10))
    logged("watchdog_app.lua:10: watchdog:")
    ok()
  end)

  it("stops it in a timer body and in an on_close hook", function()
    assert.equal(202, s:request("POST", "/timer").status)
    logged("watchdog_app.lua:14: watchdog:")
    ok()
    local c = s:connect()
    c:send("GET /close-spin HTTP/1.1\r\nHost: x\r\n\r\n")
    assert.is_true(c:closed_by_peer(10))
    logged("watchdog_app.lua:19: watchdog:")
    ok()
  end)
end)

-- Requests path on a new gateway and waits for it to exit; returns how, code and its log.
local function exits(env, path)
  local s = gw.start("spec/fixtures/watchdog_app.lua", { prefix = env and { "env", env } or nil })
  local c = s:connect()
  c:send("GET " .. path .. " HTTP/1.1\r\nHost: x\r\n\r\n")
  local deadline = socket.gettime() + 30
  local p, how, code
  repeat
    p, how, code = wait.wait(s.pid, wait.WNOHANG)
    if p ~= s.pid then socket.sleep(0.05) end
  until p == s.pid or socket.gettime() > deadline
  assert.equal(s.pid, p)
  s.pid = nil
  c:close()
  return how, code, s:logs()
end

describe("watchdog with the JIT on", function()
  it("ends the process with status 70 when a compiled loop cannot be stopped", function()
    local how, code, logs = exits("SLUICE_JIT=1", "/spin")
    assert.same({ "exited", 70 }, { how, code })
    assert.matches("either it loops in code the JIT compiled or it is in C work it called, neither of which can be " ..
      "interrupted; exiting %(status 70%)", logs)
  end)
end)

describe("watchdog and C work", function()
  it("names C work a script called, and does not blame the JIT while it is off", function()
    local how, code, logs = exits(nil, "/c-work")
    assert.same({ "exited", 70 }, { how, code })
    assert.matches("in C work it called %(the JIT is off", logs)
    assert.is_nil(logs:find("JIT compiled", 1, true))
  end)
end)
