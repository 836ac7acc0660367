--- gateway: starts the real sluice binary on a free loopback port and talks
-- to it over real sockets. Every read has a deadline; SSE streams are read
-- until the expected events arrive, never to their end.
local socket = require "socket"
local unistd = require "posix.unistd"
local wait = require "posix.sys.wait"
local psignal = require "posix.signal"
local fcntl = require "posix.fcntl"

local _M = {}
_M.BIN = os.getenv("SLUICE_BIN") or "build/sluice"
_M.VALGRIND = os.getenv("SLUICE_VALGRIND") == "1"
-- Under valgrind or ASan the allocator is not the real one: memory bounds are not checked.
_M.REAL_MEMORY = not _M.VALGRIND and os.getenv("SLUICE_SANITIZED") ~= "1"
local SLOW = _M.VALGRIND and 20 or 1 -- deadlines stretch under valgrind
-- SLUICE_WORKERS=N runs every gateway with --workers N (the suite runs both ways).
_M.WORKERS = os.getenv("SLUICE_WORKERS")

local tmpdir = os.getenv("TMPDIR") or "/tmp"
local counter = 0

function _M.tmpname(suffix)
  counter = counter + 1
  return ("%s/sluice-spec-%d-%d%s"):format(tmpdir, unistd.getpid(), counter, suffix or "")
end

function _M.write_file(path, text)
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
  return path
end

function _M.read_file(path)
  local f = io.open(path, "rb")
  if not f then return "" end
  local s = f:read("*a")
  f:close()
  return s
end

local handed_out = {}
--- A loopback port nothing listens on, never the same one twice in a run.
function _M.free_port()
  while true do
    local s = assert(socket.bind("127.0.0.1", 0))
    local _, port = s:getsockname()
    s:close()
    port = tonumber(port)
    if not handed_out[port] then
      handed_out[port] = true
      return port
    end
  end
end

--- Waits until fn() returns a true value or the deadline passes; returns that value.
function _M.wait_for(fn, secs, what)
  local deadline = socket.gettime() + (secs or 5) * SLOW
  while true do
    local v = fn()
    if v then return v end
    if socket.gettime() > deadline then error("timed out waiting for " .. (what or "a condition"), 2) end
    socket.sleep(0.01)
  end
end

local Server = {}
Server.__index = Server

--- Spawns sluice with args (a list); returns the pid and the stderr log path.
local function spawn(args, log, prefix)
  local argv = {}
  local prog = _M.BIN
  if _M.VALGRIND then
    prog = "valgrind"
    argv = { "--error-exitcode=99", "--leak-check=full", "--errors-for-leak-kinds=definite,indirect",
      "--show-leak-kinds=definite,indirect", "-q", "--suppressions=spec/helpers/luajit.supp", _M.BIN }
  end
  for _, a in ipairs(args) do argv[#argv + 1] = a end
  if prefix then
    -- e.g. { "ip", "netns", "exec", NAME }: run the gateway under another command
    local full = {}
    for i = 2, #prefix do full[#full + 1] = prefix[i] end
    full[#full + 1] = prog
    for _, a in ipairs(argv) do full[#full + 1] = a end
    prog, argv = prefix[1], full
  end
  -- Emptied before the fork: a stale file of the same name (left by a killed
  -- gateway) must not be read as this one's log.
  _M.write_file(log, "")
  local pid = assert(unistd.fork())
  if pid == 0 then
    local fd = fcntl.open(log, fcntl.O_WRONLY + fcntl.O_CREAT + fcntl.O_TRUNC, 420)
    unistd.dup2(fd, 2)
    local null = fcntl.open("/dev/null", fcntl.O_RDWR)
    unistd.dup2(null, 0)
    unistd.dup2(null, 1)
    unistd.execp(prog, argv)
    os.exit(127)
  end
  return pid
end

--- Runs sluice to completion (for start-up errors); returns status, stderr.
function _M.run(args, secs)
  local log = _M.tmpname(".log")
  local pid = spawn(args, log)
  local deadline = socket.gettime() + (secs or 10) * SLOW
  while true do
    local p, how, code = wait.wait(pid, wait.WNOHANG)
    if p == pid then
      local err = _M.read_file(log)
      os.remove(log)
      return how == "exited" and code or -1, err
    end
    if socket.gettime() > deadline then
      psignal.kill(pid, psignal.SIGKILL)
      wait.wait(pid)
      error("sluice did not exit in time")
    end
    socket.sleep(0.01)
  end
end

--- Starts a helper program (argv[1] is the program) with stdout and stderr
-- into files; returns its pid.
function _M.tool(argv, out, err)
  _M.write_file(out, "")
  _M.write_file(err, "")
  local pid = assert(unistd.fork())
  if pid == 0 then
    unistd.dup2(fcntl.open(out, fcntl.O_WRONLY + fcntl.O_TRUNC), 1)
    unistd.dup2(fcntl.open(err, fcntl.O_WRONLY + fcntl.O_TRUNC), 2)
    unistd.dup2(fcntl.open("/dev/null", fcntl.O_RDWR), 0)
    unistd.execp(argv[1], { select(2, unpack(argv)) })
    os.exit(127)
  end
  return pid
end

--- Waits (secs at most) for a child to exit; returns its exit code.
function _M.wait_exit(pid, secs, what)
  local code
  _M.wait_for(function()
    local p, how, c = wait.wait(pid, wait.WNOHANG)
    if p == pid then code = how == "exited" and c or -1 end
    return p == pid
  end, secs, what)
  return code
end

--- Starts sluice on a script (a path, or Lua text when opts.source is set).
function _M.start(script, opts)
  opts = opts or {}
  local path = script
  if opts.source then path = _M.write_file(_M.tmpname(".lua"), script) end
  local port = opts.port or _M.free_port()
  local args = { "--listen", "127.0.0.1:" .. port, "--log-level", opts.log_level or "debug" }
  if _M.WORKERS then
    args[#args + 1] = "--workers"
    args[#args + 1] = _M.WORKERS
  end
  for _, a in ipairs(opts.args or {}) do args[#args + 1] = a end
  args[#args + 1] = path
  local self = setmetatable({ port = port, script = path, log = _M.tmpname(".log"), temp = opts.source }, Server)
  self.pid = spawn(args, self.log, opts.prefix)
  _M.wait_for(function()
    local p = wait.wait(self.pid, wait.WNOHANG)
    if p == self.pid then error("sluice exited at start-up:\n" .. _M.read_file(self.log)) end
    -- "serving" is logged once listeners, signals and watchers are all set up
    local logs = _M.read_file(self.log)
    return logs:find("] sluice [^\n]* serving ") or logs:find('"msg":"sluice [^\n]* serving ')
  end, 10, "sluice to listen")
  return self
end

function Server:logs() return _M.read_file(self.log) end

--- Sends SIGTERM and waits for the exit; returns the exit code. Fails the spec
-- when valgrind reported errors or leaks.
function Server:stop(no_signal)
  if not self.pid then return self.code end
  if not no_signal then psignal.kill(self.pid, psignal.SIGTERM) end
  local deadline = socket.gettime() + 10 * SLOW
  local how, code
  while true do
    local p
    p, how, code = wait.wait(self.pid, wait.WNOHANG)
    if p == self.pid then break end
    if socket.gettime() > deadline then
      psignal.kill(self.pid, psignal.SIGKILL)
      wait.wait(self.pid)
      error("sluice did not stop on its signal:\n" .. self:logs())
    end
    socket.sleep(0.01)
  end
  self.pid = nil
  self.code = how == "exited" and code or -1
  local logs = self:logs()
  if self.temp then os.remove(self.script) end
  os.remove(self.log)
  if self.code ~= 0 then error(("sluice exited with %s:\n%s"):format(tostring(self.code), logs)) end
  return self.code, logs
end

function Server:signal(sig) psignal.kill(self.pid, sig) end

-- ---------------------------------------------------------------- clients

local Client = {}
Client.__index = Client

function Server:connect()
  local c = assert(socket.tcp())
  c:settimeout(5 * SLOW)
  assert(c:connect("127.0.0.1", self.port))
  return setmetatable({ sock = c, buf = "" }, Client)
end

function Client:send(bytes) return self.sock:send(bytes) end
function Client:close() self.sock:close() end

--- Reads more bytes into the buffer before the deadline; false on close or timeout.
function Client:fill(deadline)
  local left = deadline - socket.gettime()
  if left <= 0 then return false, "timeout" end
  -- receive(n) waits for all n bytes; wait for readability, then take what is there.
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

function Client:until_match(pattern, secs)
  local deadline = socket.gettime() + (secs or 5) * SLOW
  while true do
    local s, e = self.buf:find(pattern)
    if s then return s, e end
    local ok, err = self:fill(deadline)
    if not ok then return nil, err end
  end
end

--- Reads one response head: returns status, headers (lower-case names), or nil, err.
function Client:read_head(secs)
  local s, e = self:until_match("\r\n\r\n", secs)
  if not s then return nil, "no response head (" .. tostring(e) .. ")" end
  local head = self.buf:sub(1, e)
  self.buf = self.buf:sub(e + 1)
  local status = tonumber(head:match("^HTTP/1%.%d (%d%d%d)"))
  local headers = {}
  for k, v in head:gmatch("\r\n([^:\r\n]+):%s*([^\r\n]*)") do
    k = k:lower()
    headers[k] = headers[k] and (headers[k] .. ", " .. v) or v
  end
  return status, headers
end

--- Reads a whole plain response (by Content-Length). Returns { status, headers, body }.
function Client:read_response(secs)
  local status, headers = self:read_head(secs)
  if not status then return nil, headers end
  local len = tonumber(headers["content-length"] or 0)
  local deadline = socket.gettime() + (secs or 5) * SLOW
  while #self.buf < len do
    if not self:fill(deadline) then return nil, "short body" end
  end
  local body = self.buf:sub(1, len)
  self.buf = self.buf:sub(len + 1)
  return { status = status, headers = headers, body = body }
end

--- True when the server closed the connection (read returns closed) before the deadline.
function Client:closed_by_peer(secs)
  local deadline = socket.gettime() + (secs or 5) * SLOW
  while true do
    local ok, err = self:fill(deadline)
    if not ok then return err == "closed" end
  end
end

--- Parses the next SSE event (or comment block) from the stream.
-- Returns { data =, id =, event =, retry =, comments = } or nil, err.
function Client:read_event(secs)
  local deadline = socket.gettime() + (secs or 5) * SLOW
  while true do
    -- A block is a run of lines ended by an empty line. The search goes on from
    -- where the last one stopped, so a large event is not scanned again per read.
    local s, e = self.buf:find("\r?\n\r?\n", math.max(1, (self.scanned or 0) - 3))
    if s then
      self.scanned = 0
      local block = self.buf:sub(1, s - 1)
      self.buf = self.buf:sub(e + 1)
      local ev, data = { comments = {} }, nil
      for line in (block .. "\n"):gmatch("([^\r\n]*)\r?\n") do
        if line:sub(1, 1) == ":" then
          ev.comments[#ev.comments + 1] = line:sub(2)
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
    self.scanned = #self.buf
    local ok, err = self:fill(deadline)
    if not ok then
      self.scanned = 0
      return nil, err
    end
  end
end

--- Opens an SSE request; returns the client after reading the head (status, headers on it).
function Server:sse(path, headers)
  local c = self:connect()
  local lines = { "GET " .. path .. " HTTP/1.1", "Host: 127.0.0.1", "Accept: text/event-stream" }
  for k, v in pairs(headers or {}) do lines[#lines + 1] = k .. ": " .. v end
  c:send(table.concat(lines, "\r\n") .. "\r\n\r\n")
  c.status, c.headers = c:read_head()
  return c
end

--- One plain request on a new connection. Returns { status, headers, body }.
function Server:request(method, path, body, headers)
  local c = self:connect()
  local lines = { method .. " " .. path .. " HTTP/1.1", "Host: 127.0.0.1", "Connection: close" }
  for k, v in pairs(headers or {}) do lines[#lines + 1] = k .. ": " .. v end
  if body then lines[#lines + 1] = "Content-Length: " .. #body end
  c:send(table.concat(lines, "\r\n") .. "\r\n\r\n" .. (body or ""))
  local res, err = c:read_response()
  c:close()
  return res, err
end

--- Sends raw bytes on a new connection and reads one response.
function Server:raw(bytes)
  local c = self:connect()
  c:send(bytes)
  local res, err = c:read_response()
  res = res or { err = err }
  res.client = c
  return res
end

-- ---------------------------------------------------------------- a Redis of the spec's own

local Redis = {}
Redis.__index = Redis

--- Starts a redis-server on a free loopback port (never the system's), with no
-- persistence: a restart comes back empty, like a lost Redis.
function _M.redis()
  local self = setmetatable({ port = _M.free_port(), log = _M.tmpname("-redis.log") }, Redis)
  self.url = "redis://127.0.0.1:" .. self.port
  self:start()
  return self
end

function Redis:start()
  local pid = assert(unistd.fork())
  if pid == 0 then
    local null = fcntl.open("/dev/null", fcntl.O_RDWR)
    unistd.dup2(null, 0)
    unistd.dup2(null, 1)
    unistd.dup2(null, 2)
    unistd.execp("redis-server", { "--port", tostring(self.port), "--bind", "127.0.0.1", "--save", "",
      "--appendonly", "no", "--logfile", self.log })
    os.exit(127)
  end
  self.pid = pid
  _M.wait_for(function()
    local p = wait.wait(pid, wait.WNOHANG)
    if p == pid then error("redis-server exited at start-up:\n" .. _M.read_file(self.log)) end
    local ok, reply = pcall(self.command, self, "PING")
    return ok and reply == "+PONG"
  end, 10, "redis-server to answer")
end

--- Sends one command (a list of words); returns the first line of the reply.
function Redis:command(...)
  local c = assert(socket.tcp())
  c:settimeout(2)
  local ok, err = c:connect("127.0.0.1", self.port)
  if not ok then c:close(); error(err) end
  local args = { ... }
  local parts = { "*" .. #args }
  for _, a in ipairs(args) do parts[#parts + 1] = "$" .. #a; parts[#parts + 1] = a end
  c:send(table.concat(parts, "\r\n") .. "\r\n")
  local line = c:receive("*l")
  c:close()
  return line
end

function Redis:stop()
  if not self.pid then return end
  psignal.kill(self.pid, psignal.SIGKILL)
  wait.wait(self.pid)
  self.pid = nil
end

--- The gateway's resident set size in KiB (from /proc).
function Server:rss_kb()
  local s = _M.read_file("/proc/" .. self.pid .. "/status")
  return tonumber(s:match("VmRSS:%s*(%d+)"))
end

return _M
