--- sluice.testing: a kit for the specs of your own route scripts, run with
-- the system's busted (`busted --lua=luajit`). It starts your script in a
-- real gateway on a free loopback port and talks to it over real sockets:
--
--   local testing = require "sluice.testing"
--   local gw = testing.start("app.lua")
--   assert.equal(200, gw:request("GET", "/health").status)
--   local events = gw:events("/feed", { count = 2 })
--   gw:stop()
--
-- Every read has a deadline, and an event stream is read until the events
-- asked for, never to its end (streams do not end). See docs/guides/testing.md.
-- Needs lua-socket and lua-posix (Debian: lua-socket, lua-posix).
local socket = require "socket"
local unistd = require "posix.unistd"
local wait = require "posix.sys.wait"
local psignal = require "posix.signal"
local fcntl = require "posix.fcntl"

local _M = {}

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return "" end
  local s = f:read("*a")
  f:close()
  return s
end

local function write_file(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
end

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

--- The sluice binary: SLUICE_BIN, else the one installed next to this module
-- (<prefix>/share/sluice/lua/sluice -> <prefix>/bin/sluice) or built beside it
-- in a source tree (lua/sluice -> build/sluice), else `sluice` on the PATH.
function _M.binary()
  local env = os.getenv("SLUICE_BIN")
  if env and env ~= "" then return env end
  local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]+$")
  if here then
    for _, rel in ipairs { "/../../../../bin/sluice", "/../../build/sluice" } do
      if exists(here .. rel) then return here .. rel end
    end
  end
  return "sluice"
end

--- A loopback port nothing listens on.
function _M.free_port()
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

--- Waits until fn() gives a true value (returned), or raises after secs (5).
function _M.wait_for(fn, secs, what)
  local deadline = socket.gettime() + (secs or 5)
  while true do
    local v = fn()
    if v then return v end
    if socket.gettime() > deadline then error("timed out waiting for " .. (what or "a condition"), 2) end
    socket.sleep(0.01)
  end
end

-- ---------------------------------------------------------------- a connection

local Conn = {}
Conn.__index = Conn

local function connect(port, timeout)
  local c = assert(socket.tcp())
  c:settimeout(timeout)
  assert(c:connect("127.0.0.1", port))
  return setmetatable({ sock = c, buf = "" }, Conn)
end

-- Reads more into the buffer before the deadline; false, why on close or timeout.
function Conn:fill(deadline)
  local left = deadline - socket.gettime()
  if left <= 0 then return false, "timeout" end
  local r = socket.select({ self.sock }, nil, left)
  if not r or #r == 0 then return false, "timeout" end
  self.sock:settimeout(0)
  local data, err, partial = self.sock:receive(65536)
  data = data or partial
  if data and #data > 0 then
    self.buf = self.buf .. data
    return true
  end
  if err == "timeout" then return true end
  return false, err
end

function Conn:head(deadline)
  while true do
    local s, e = self.buf:find("\r\n\r\n", 1, true)
    if s then
      local head = self.buf:sub(1, e)
      self.buf = self.buf:sub(e + 1)
      local headers = {}
      for k, v in head:gmatch("\r\n([^:\r\n]+):[ \t]*([^\r\n]*)") do
        k = k:lower()
        headers[k] = headers[k] and (headers[k] .. ", " .. v) or v
      end
      return tonumber(head:match("^HTTP/1%.%d (%d%d%d)")), headers
    end
    local ok, err = self:fill(deadline)
    if not ok then return nil, "no response (" .. tostring(err) .. ")" end
  end
end

--- The next event (or comment block: ev.comments) of the stream, or nil, why.
function Conn:event(deadline)
  while true do
    local s, e = self.buf:find("\r?\n\r?\n")
    if s then
      local block = self.buf:sub(1, s - 1)
      self.buf = self.buf:sub(e + 1)
      local ev, data = { comments = {} }, nil
      for line in (block .. "\n"):gmatch("([^\r\n]*)\r?\n") do
        if line:sub(1, 1) == ":" then
          ev.comments[#ev.comments + 1] = line:sub(2):gsub("^ ", "")
        else
          local k, v = line:match("^([^:]*):? ?(.*)$")
          if k == "data" then data = data and (data .. "\n" .. v) or v
          elseif k == "id" then ev.id = v
          elseif k == "event" then ev.event = v
          elseif k == "retry" then ev.retry = tonumber(v) end
        end
      end
      ev.data = data
      return ev
    end
    local ok, err = self:fill(deadline)
    if not ok then return nil, err end
  end
end

-- ---------------------------------------------------------------- a stream

local Stream = {}
Stream.__index = Stream

--- stream:next(timeout): the next event ({ id, event, data, retry }; comments
-- and heartbeats are skipped), or nil and "timeout" / "closed".
function Stream:next(timeout)
  local deadline = socket.gettime() + (timeout or self.timeout)
  while true do
    local ev, err = self.conn:event(deadline)
    if not ev then return nil, err end
    if ev.data then
      ev.comments = nil
      return ev
    end
  end
end

--- stream:closed(timeout): whether the gateway ended the stream before the deadline.
function Stream:closed(timeout)
  local deadline = socket.gettime() + (timeout or self.timeout)
  while true do
    local ok, err = self.conn:fill(deadline)
    if not ok then return err == "closed" end
  end
end

function Stream:close() self.conn.sock:close() end

-- ---------------------------------------------------------------- the gateway

local Gateway = {}
Gateway.__index = Gateway

--- testing.start(script, opts) starts the gateway on script (a path) and waits
-- until it serves. opts: args (more command-line options, such as
-- { "--workers", "2" } or { "--redis", url }), env (variables for the script),
-- timeout (seconds for each wait; 5), log_level ("info"), port (a free one by
-- default: testing.free_port(), for a script that must know its own address).
function _M.start(script, opts)
  opts = opts or {}
  local self = setmetatable({ script = script, timeout = opts.timeout or 5, port = opts.port or _M.free_port() }, Gateway)
  self.url = "http://127.0.0.1:" .. self.port
  self.log_path = os.tmpname()
  local argv = { "--listen", "127.0.0.1:" .. self.port, "--log-level", opts.log_level or "info" }
  for _, a in ipairs(opts.args or {}) do argv[#argv + 1] = a end
  argv[#argv + 1] = script
  local env = opts.env
  local pid = assert(unistd.fork())
  if pid == 0 then
    for k, v in pairs(env or {}) do require("posix.stdlib").setenv(k, tostring(v)) end
    local log = fcntl.open(self.log_path, fcntl.O_WRONLY + fcntl.O_CREAT + fcntl.O_TRUNC, 420)
    unistd.dup2(log, 2)
    local null = fcntl.open("/dev/null", fcntl.O_RDWR)
    unistd.dup2(null, 0)
    unistd.dup2(null, 1)
    unistd.execp(_M.binary(), argv)
    os.exit(127)
  end
  self.pid = pid
  _M.wait_for(function()
    if wait.wait(pid, wait.WNOHANG) == pid then
      self.pid = nil
      error("sluice exited at start-up:\n" .. read_file(self.log_path), 0)
    end
    return self:log():find("] sluice [^\n]* serving ") or self:log():find('"msg":"sluice [^\n]* serving ')
  end, math.max(self.timeout, 10), "sluice to serve " .. script)
  return self
end

--- gw:log(): everything the gateway has logged so far.
function Gateway:log() return read_file(self.log_path) end

--- gw:request(method, path, { headers, body, timeout }) -> { status, headers, body }
-- (a plain response, read to its Content-Length), or nil and why.
function Gateway:request(method, path, opts)
  opts = opts or {}
  local timeout = opts.timeout or self.timeout
  local c = connect(self.port, timeout)
  local lines = { method .. " " .. path .. " HTTP/1.1", "Host: 127.0.0.1", "Connection: close" }
  for k, v in pairs(opts.headers or {}) do lines[#lines + 1] = k .. ": " .. v end
  if opts.body then lines[#lines + 1] = "Content-Length: " .. #opts.body end
  c.sock:send(table.concat(lines, "\r\n") .. "\r\n\r\n" .. (opts.body or ""))
  local deadline = socket.gettime() + timeout
  local status, headers = c:head(deadline)
  if not status then
    c.sock:close()
    return nil, headers
  end
  local len = tonumber(headers["content-length"])
  if len then
    while #c.buf < len and c:fill(deadline) do end
  else
    while c:fill(deadline) do end -- a body that ends with the connection
  end
  c.sock:close()
  return { status = status, headers = headers, body = len and c.buf:sub(1, len) or c.buf }
end

--- gw:stream(path, { headers, timeout }) -> a stream after its head (stream.status,
-- stream.headers): stream:next(), stream:closed(), stream:close().
function Gateway:stream(path, opts)
  opts = opts or {}
  local timeout = opts.timeout or self.timeout
  local c = connect(self.port, timeout)
  local lines = { "GET " .. path .. " HTTP/1.1", "Host: 127.0.0.1", "Accept: text/event-stream" }
  for k, v in pairs(opts.headers or {}) do lines[#lines + 1] = k .. ": " .. v end
  c.sock:send(table.concat(lines, "\r\n") .. "\r\n\r\n")
  local status, headers = c:head(socket.gettime() + timeout)
  return setmetatable({ conn = c, status = status, headers = headers, timeout = timeout }, Stream)
end

--- gw:events(path, { count, headers, timeout }) -> the first count (1) events of the
-- stream, each { id, event, data, retry }; fewer if the stream ends or the timeout passes.
function Gateway:events(path, opts)
  opts = opts or {}
  local st = self:stream(path, opts)
  local out = {}
  local deadline = socket.gettime() + (opts.timeout or self.timeout)
  while #out < (opts.count or 1) do
    local ev = st:next(math.max(0, deadline - socket.gettime()))
    if not ev then break end
    out[#out + 1] = ev
  end
  st:close()
  return out, st.status
end

--- gw:reload(source): writes source over the script (if given), reloads it
-- (SIGHUP) and waits until the gateway says it reloaded; raises if it could not.
function Gateway:reload(source)
  if source then write_file(self.script, source) end
  local _, before = self:log():gsub("reloaded ", "")
  local _, failed0 = self:log():gsub("reload of [^\n]* failed", "")
  psignal.kill(self.pid, psignal.SIGHUP)
  _M.wait_for(function()
    local _, now = self:log():gsub("reloaded ", "")
    local _, failed = self:log():gsub("reload of [^\n]* failed", "")
    if failed > failed0 then error("the reload failed:\n" .. self:log(), 0) end
    return now > before
  end, self.timeout, "the reload")
end

--- gw:stop(): SIGTERM, and waits for the exit; returns its status.
function Gateway:stop()
  if not self.pid then return self.code end
  psignal.kill(self.pid, psignal.SIGTERM)
  local deadline = socket.gettime() + math.max(self.timeout, 10)
  while true do
    local p, how, code = wait.wait(self.pid, wait.WNOHANG)
    if p == self.pid then
      self.code = how == "exited" and code or -1
      break
    end
    if socket.gettime() > deadline then
      psignal.kill(self.pid, psignal.SIGKILL)
      wait.wait(self.pid)
      self.code = -1
      break
    end
    socket.sleep(0.01)
  end
  self.pid = nil
  return self.code
end

return _M
