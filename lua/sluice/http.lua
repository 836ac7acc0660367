--- sluice.http: HTTP(S) requests from route scripts that suspend only the
-- calling coroutine (a handler before it returns, a generator, a timer body,
-- a raw callback): the gateway's loop drives them through libcurl, so every
-- other client goes on being served meanwhile. See docs/api.md ("Outbound HTTP").
local core = require "sluice.core"
local json = require "sluice.json"

local type, error, pairs, ipairs, tostring, yield = type, error, pairs, ipairs, tostring, coroutine.yield
local find, upper, lower, concat, format, byte, gsub = string.find, string.upper, string.lower, table.concat,
  string.format, string.byte, string.gsub
local setmetatable, pcall, require = setmetatable, pcall, require
local AWAIT = core.AWAIT

local _M = {}

local DEFAULT_MAX_BODY = 4 * 1024 * 1024
local KEYS = { url = true, method = true, headers = true, body = true, form = true, timeout = true,
  connect_timeout = true, max_body = true, follow = true, insecure = true, cainfo = true }

local SPANS = { "timeout", "connect_timeout" }
local function seconds(v) return type(v) == "number" and v > 0 and v == v end

--- application/x-www-form-urlencoded text of a table (keys sorted, lists repeated).
local function form_encode(t)
  local function enc(s)
    return (gsub(tostring(s), "[^%w%-%._~ ]", function(c) return format("%%%02X", byte(c)) end):gsub(" ", "+"))
  end
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = tostring(k) end
  table.sort(keys)
  local out = {}
  for _, k in ipairs(keys) do
    local v = t[k]
    if type(v) == "table" then
      for _, x in ipairs(v) do out[#out + 1] = enc(k) .. "=" .. enc(x) end
    else
      out[#out + 1] = enc(k) .. "=" .. enc(v)
    end
  end
  return concat(out, "&")
end

local warned_insecure = false

--- Checks opts (raising at level for misuse) and returns the arguments of core.http_request.
local function prepare(opts, level, stream)
  level = level + 1
  if type(opts) ~= "table" then error("sluice.http.request expects a table of options", level) end
  for k in pairs(opts) do
    if not KEYS[k] then error("sluice.http.request: unknown option '" .. tostring(k) .. "'", level) end
  end
  local url = opts.url
  if type(url) ~= "string" then error("sluice.http.request: url must be a string", level) end
  if not find(url, "^[hH][tT][tT][pP][sS]?://[^/?#]") then
    error("sluice.http.request: only http:// and https:// URLs with a host are supported, not '" .. url .. "'", level)
  end
  local method = opts.method or "GET"
  if method ~= "GET" and method ~= "POST" then
    if type(method) ~= "string" or not find(method, "^[%w!#$%%&'*+.^_`|~-]+$") then
      error("sluice.http.request: method must be a token such as GET or POST", level)
    end
    method = upper(method)
  end
  -- the header lines (nil if none) and the names they set, made only when there are some
  local lines, has
  if opts.headers ~= nil then
    lines, has = {}, {}
    if type(opts.headers) ~= "table" then error("sluice.http.request: headers must be a table", level) end
    for name, v in pairs(opts.headers) do
      if type(name) ~= "string" or not find(name, "^[%w!#$%%&'*+.^_`|~-]+$") then
        error("sluice.http.request: bad header name '" .. tostring(name) .. "'", level)
      end
      local vals = type(v) == "table" and v or { v }
      for _, x in ipairs(vals) do
        if type(x) == "number" then x = tostring(x) end
        if type(x) ~= "string" then error("sluice.http.request: header '" .. name .. "' must be a string", level) end
        if find(x, "[\r\n%z]") then
          error("sluice.http.request: header '" .. name .. "' may not contain CR, LF or NUL", level)
        end
        lines[#lines + 1] = name .. ": " .. x
      end
      has[name:lower()] = true
    end
  end
  local body = opts.body
  if body ~= nil then
    local t = type(body)
    if t == "table" and opts.form then
      body = form_encode(body)
      if not (has and has["content-type"]) then
        lines = lines or {}
        lines[#lines + 1] = "Content-Type: application/x-www-form-urlencoded"
      end
    elseif t == "table" then
      body = json.encode(body)
      if not (has and has["content-type"]) then
        lines = lines or {}
        lines[#lines + 1] = "Content-Type: application/json"
      end
    elseif t ~= "string" then
      error("sluice.http.request: body must be a string or a table (sent as JSON, or as a form with form = true)", level)
    end
  end
  for i = 1, #SPANS do
    local k = SPANS[i]
    if opts[k] ~= nil and not seconds(opts[k]) then
      error("sluice.http.request: " .. k .. " must be a positive number of seconds", level)
    end
  end
  local max_body = opts.max_body or DEFAULT_MAX_BODY
  if type(max_body) ~= "number" or max_body < 0 or max_body ~= max_body then
    error("sluice.http.request: max_body must be a number of bytes", level)
  end
  local follow = opts.follow
  if follow == true then follow = 10 elseif follow == false or follow == nil then follow = 0 end
  if type(follow) ~= "number" or follow < 0 or follow % 1 ~= 0 then
    error("sluice.http.request: follow must be true, false or a number of redirects", level)
  end
  if opts.cainfo ~= nil and type(opts.cainfo) ~= "string" then
    error("sluice.http.request: cainfo must be the path of a CA bundle", level)
  end
  if opts.insecure and not warned_insecure then
    warned_insecure = true
    core.log(1, "sluice.http: insecure = true turns TLS verification off (logged once)")
  end
  -- a stream may last: no overall limit unless asked
  return url, method, lines, body, opts.timeout or (stream and 0 or 30), opts.connect_timeout or 10, max_body, follow,
    opts.insecure == true, opts.cainfo
end

--- The answer of a started request: waits for it (the await tag) or passes
-- on a failure to start; false, why is a misuse raised at level.
local function await(level, r1, r2, r3)
  if r1 == AWAIT then return yield(AWAIT) end
  if r1 == false then error("sluice.http.request: " .. r2, level + 1) end
  return r1, r2, r3
end

-- No tail calls on the way to an error: they would take the frames that
-- error levels count, and the error would not name the script's line.
local function request(opts, level)
  local res, kind, detail = await(level + 1, core.http_request(prepare(opts, level + 1)))
  return res, kind, detail
end

--- sluice.http.request(opts) -> res ({ status, headers, body }) or nil, kind, detail.
function _M.request(opts)
  local res, kind, detail = request(opts, 2)
  return res, kind, detail
end

--- sluice.http.get(url, opts): a GET.
function _M.get(url, opts)
  local o = { url = url, method = "GET" }
  if opts ~= nil then
    for k, v in pairs(opts) do o[k] = v end
    o.url, o.method = url, "GET"
  end
  local res, kind, detail = request(o, 2)
  return res, kind, detail
end

--- sluice.http.post(url, body, opts): a POST with body (a string, or a table: JSON, or a form with form = true).
function _M.post(url, body, opts)
  local o = {}
  for k, v in pairs(opts or {}) do o[k] = v end
  o.url, o.method, o.body = url, "POST", body
  local res, kind, detail = request(o, 2)
  return res, kind, detail
end

-- ---------------------------------------------------------------- streamed responses

local Stream = {}
Stream.__index = Stream

--- Waits (the await tag) while core says so; returns what it finally says.
local function poll(fn, ud)
  while true do
    local a, b, c = fn(ud)
    if a ~= AWAIT then return a, b, c end
    yield(AWAIT)
  end
end

--- sluice.http.stream(opts) -> a response as soon as its head is in: res.status,
-- res.headers, and res:chunks() to read the body as it comes; or nil, kind, detail.
-- A script that stops reading pauses the transfer; res:close() ends it.
function _M.stream(opts)
  local url, method, lines, body, timeout, ct, max_body, follow, insecure, cainfo = prepare(opts, 2, true)
  local ud, kind, detail = core.http_stream(url, method, lines, body, timeout, ct, max_body, follow, insecure, cainfo)
  if ud == false then error("sluice.http.stream: " .. kind, 2) end
  if not ud then return nil, kind, detail end
  local status, headers, d = poll(core.http_stream_head, ud)
  if not status then
    core.http_stream_close(ud)
    return nil, headers, d
  end
  return setmetatable({ status = status, headers = headers, _ud = ud }, Stream)
end

--- for chunk in res:chunks() do ... end: the body's bytes as they come. When
-- the loop ends, res.error (and res.error_detail) say whether the transfer failed.
function Stream:chunks()
  return function()
    if self.done then return nil end
    local chunk, kind, detail = poll(core.http_stream_read, self._ud)
    if chunk == nil then
      self.done, self.error, self.error_detail = true, kind, detail
      core.http_stream_close(self._ud)
    end
    return chunk
  end
end

--- res:close(): ends the transfer (its connection closes).
function Stream:close()
  self.done = true
  core.http_stream_close(self._ud)
end

-- ---------------------------------------------------------------- an SSE client

local sub, tonumber = string.sub, tonumber
local DEFAULT_MAX_EVENT = 1024 * 1024

--- An event-stream parser by the WHATWG rules: the function it returns takes
-- each chunk of the stream and calls emit(ev) for each event dispatched. Lines
-- end at CR, LF or CRLF (a CR that ends one chunk and an LF that starts the
-- next are one line end); a BOM at the very start is skipped; comments are
-- ignored; an id with NUL is ignored; retry takes only digits; an event
-- without data is not dispatched. A line's pieces are joined once, when it
-- ends, so each byte costs a bounded amount of work; an event or a line over
-- max bytes is an error. last_id is the Last-Event-ID to start from.
local BOM = "\239\187\191"
local function parser(emit, max, last_id)
  local pending, plen = {}, 0
  local started, skip_lf = false, false
  local data, dlen, event, retry = {}, 0, nil, nil
  local function line(l)
    if not started then
      started = true
      if sub(l, 1, 3) == BOM then l = sub(l, 4) end
    end
    if l == "" then
      if #data > 0 then emit({ id = last_id, event = event or "message", data = concat(data, "\n"), retry = retry }) end
      data, dlen, event, retry = {}, 0, nil, nil
      return
    end
    if byte(l, 1) == 58 then return end -- ':' a comment
    local colon = find(l, ":", 1, true)
    local field, value = l, ""
    if colon then
      field, value = sub(l, 1, colon - 1), sub(l, colon + 1)
      if byte(value, 1) == 32 then value = sub(value, 2) end
    end
    if field == "data" then
      data[#data + 1] = value
      dlen = dlen + #value + 1
      if dlen > max then error("an event over " .. max .. " bytes", 0) end
    elseif field == "event" then
      event = value
    elseif field == "id" then
      if not find(value, "\0", 1, true) then last_id = value end
    elseif field == "retry" then
      if find(value, "^%d+$") then retry = tonumber(value) end
    end
  end
  return function(chunk)
    local pos, n = 1, #chunk
    while pos <= n do
      if skip_lf then
        skip_lf = false
        if byte(chunk, pos) == 10 then pos = pos + 1 end
      end
      local e = find(chunk, "[\r\n]", pos)
      if not e then
        if pos <= n then
          pending[#pending + 1] = sub(chunk, pos)
          plen = plen + n - pos + 1
          if plen > max then error("a line over " .. max .. " bytes", 0) end
        end
        break
      end
      local piece = sub(chunk, pos, e - 1)
      if plen > 0 then
        pending[#pending + 1] = piece
        piece = concat(pending)
        pending, plen = {}, 0
      end
      line(piece)
      if byte(chunk, e) == 13 then
        if e == n then skip_lf = true elseif byte(chunk, e + 1) == 10 then e = e + 1 end
      end
      pos = e + 1
    end
  end
end
_M.sse_parser = parser

--- sluice.http.events(url, opts) -> an iterator of { id, event, data, retry }:
-- a Server-Sent Events client. opts are sluice.http.request's (GET), and
-- reconnect = true resumes after the stream ends or fails, with Last-Event-ID,
-- after the server's retry (3 s unless it said otherwise); last_event_id
-- starts from one; max_event bounds an event (1 MiB). When the loop ends,
-- it.error (and it.error_detail) say why, if it failed; it:close() ends it.
function _M.events(url, opts)
  opts = opts or {}
  if type(opts) ~= "table" then error("sluice.http.events: options must be a table", 2) end
  local o = { headers = {} }
  for k, v in pairs(opts) do
    if k ~= "reconnect" and k ~= "max_event" and k ~= "last_event_id" and k ~= "headers" then o[k] = v end
  end
  for k, v in pairs(opts.headers or {}) do o.headers[k] = v end
  o.url = url
  o.headers.Accept = o.headers.Accept or "text/event-stream"
  prepare(o, 2) -- misuse is an error here, at the call
  local max = opts.max_event or DEFAULT_MAX_EVENT
  local queue, qh, qt = {}, 1, 0
  local retry_ms, last_id = 3000, opts.last_event_id
  local res, feed
  local it = {}
  local function emit(ev)
    if ev.retry then retry_ms = ev.retry end
    last_id = ev.id
    qt = qt + 1
    queue[qt] = ev
  end
  local function connect()
    if last_id and last_id ~= "" then o.headers["Last-Event-ID"] = last_id end
    local r, kind, detail = _M.stream(o)
    if not r then return nil, kind, detail end
    local ct = r.headers["content-type"]
    if r.status ~= 200 or type(ct) ~= "string" or not find(lower(ct), "^text/event%-stream") then
      r:close()
      return nil, "protocol", format("status %d, content type %s", r.status, tostring(ct))
    end
    res, feed = r, parser(emit, max, last_id)
    return true
  end
  local function fail(kind, detail)
    if res then res:close() end
    res = nil
    if it.done then return end -- closed by it:close()
    if opts.reconnect and kind ~= "busy" and kind ~= "too large" then
      require("sluice").sleep(retry_ms / 1000)
      return
    end
    it.done, it.error, it.error_detail = true, kind, detail
  end
  return setmetatable(it, { __call = function()
    while true do
      if qh <= qt then
        local ev = queue[qh]
        queue[qh] = nil
        qh = qh + 1
        return ev
      end
      if it.done then return nil end
      if not res then
        local ok, kind, detail = connect()
        if not ok then fail(kind, detail) end
      else
        local chunk, kind, detail = poll(core.http_stream_read, res._ud)
        if chunk then
          local ok, err = pcall(feed, chunk)
          if not ok then fail("too large", err) end
        else
          fail(kind, detail) -- the end of the stream, or its failure
        end
      end
    end
  end, __index = { close = function(self)
    self.done = true
    if res then res:close() end
  end } })
end

return _M
