--- sluice: the library route scripts `require`. It declares routes, builds
-- events and responses, and drives the four SSE modes on top of the C core
-- (sluice.core). See docs/api.md for the reference.
local core = require "sluice.core"
local router = require "sluice.router"
local event = require "sluice.event"
local json = require "sluice.json"
local config = require "sluice.config"

local type, tostring, error, select, pairs, ipairs, setmetatable, getmetatable, xpcall =
  type, tostring, error, select, pairs, ipairs, setmetatable, getmetatable, xpcall
local yield, running, resume, status = coroutine.yield, coroutine.running, coroutine.resume, coroutine.status
local traceback, concat, lower, find = debug.traceback, table.concat, string.lower, string.find
local c_send, c_start, c_finish, c_respond = core.send, core.start, core.finish, core.respond
local SLEEP, WAIT, AWAIT = core.SLEEP, core.WAIT, core.AWAIT
local FAILED = {} -- what a generator's step gives when the generator raised
local to_data, Message = event.to_data, event.Message
core.stream_helpers(Message, to_data) -- what the scheduler's own stream loop sends by
local number = require("sluice.text").number

--- A number of seconds: not negative, not NaN (math.huge means forever).
local function seconds(v) return type(v) == "number" and v >= 0 end

--- The text of an error value: a string as it is, anything else described
-- (a table as JSON where it can be), so `error({ code = 1 })` logs something useful.
local function error_text(e)
  if type(e) == "string" then return e end
  if e == nil then return "nil (error called without a message)" end
  local mt = getmetatable(e)
  if type(mt) == "table" and mt.__tostring then return tostring(e) end
  if type(e) == "table" then
    local ok, text = pcall(json.encode, e)
    if ok then return "error object " .. text end
  end
  return "error object " .. tostring(e)
end

--- xpcall's message handler: the error's text and the traceback (once: an
-- error that carries one already, from a generator, is passed on as it is).
local function error_trace(e)
  local text = error_text(e)
  if find(text, "\nstack traceback:", 1, true) then return text end
  return traceback(text, 2)
end

-- Scripts run interpreted unless they ask for the JIT (configure { jit = true }):
-- the watchdog stops a runaway loop only in code the interpreter runs, and the
-- gateway's Lua work (routing, stepping generators) gains nothing measurable
-- from compiling (bench/README.md).
if jit then jit.off() end

local _M = { _VERSION = core.version, json = json }
local routes = router.new()
local hooks = {} -- conn -> list of on_close functions

-- ---------------------------------------------------------------- routes

--- Where a handler was defined ("app.lua:12"), for the log lines of its errors.
local function where(fn)
  local info = type(fn) == "function" and debug.getinfo(fn, "S")
  return info and (info.short_src .. ":" .. info.linedefined) or "?"
end

local function add_route(method, pattern, handler)
  if type(method) == "string" and method ~= "*" and not core.methods[method:upper()] then
    error("unknown HTTP method '" .. method .. "': requests with it never reach a route", 3)
  end
  routes:add(method, pattern, handler, 4)
  local r = routes.routes[#routes.routes]
  r.label = r.method .. " " .. r.pattern .. " (" .. where(handler) .. ")"
  local earlier = routes:shadowed_by()
  if earlier then
    core.log(1, "route " .. r.label .. " can never match: " .. (earlier.label or earlier.method .. " " .. earlier.pattern) ..
      ", declared before it, takes every request it would (the first declared match wins)")
  end
end

function _M.route(method, pattern, handler) add_route(method, pattern, handler) end
for _, m in ipairs { "get", "post", "put", "delete", "patch", "head", "options" } do
  local M = m:upper()
  _M[m] = function(pattern, handler) add_route(M, pattern, handler) end
end

function _M.configure(t)
  config.apply(t, core.config, 2)
  for name, size in pairs(type(t) == "table" and t.shared or {}) do core.shared(name, size) end
  if type(t) == "table" and config.cors_reflects_credentials(t.cors) then
    core.log(1, "configure { cors = { origins = \"*\", credentials = true } } answers every origin with credentials: " ..
      "any web page can read this gateway's responses with its visitors' cookies (same-origin protection is off " ..
      "for cookie-authenticated reads); list the origins you trust instead")
  end
end

--- sluice.static(prefix, dir): serves the files under dir (relative to the script) at prefix.
function _M.static(prefix, dir)
  if type(prefix) ~= "string" or prefix:sub(1, 1) ~= "/" then error("sluice.static expects a prefix starting with '/'", 2) end
  local real = require("sluice.static").resolve(dir)
  local handler = require("sluice.static").handler(prefix, real, _M.response)
  -- "/assets/*" also matches "/assets" (an empty rest), which redirects to "/assets/"
  routes:add("GET", prefix:gsub("/+$", "") .. "/*", handler, 3)
end

-- ---------------------------------------------------------------- values a handler returns

local Response = { __name = "sluice.response" }
local Mode = { __name = "sluice mode" }

--- sluice.message(data, opts): sluice.event makes it (its plain cases in a
-- few instructions, the others checked and explained by its rules).
_M.message = event.quick_message

--- Framing headers are the gateway's: a second Content-Length or
-- Transfer-Encoding is a request-smuggling vector behind a proxy.
local FRAMING = { ["content-length"] = true, ["transfer-encoding"] = true, connection = true }

local function check_headers(h, what, level)
  if h == nil then return end
  if type(h) ~= "table" then error(what .. " must be a table", level + 1) end
  for k in pairs(h) do
    if type(k) ~= "string" then error(what .. ": header names must be strings", level + 1) end
    if FRAMING[lower(k)] then error(what .. ": header '" .. k .. "' is set by the gateway", level + 1) end
  end
end

--- Whether st is a final HTTP status: 1xx answers are interim, and one with no
-- final answer after it would make the next response answer this request
-- (100 Continue is the gateway's own, sent when a client asks for it).
local function final_status(st) return type(st) == "number" and st >= 200 and st <= 999 and st % 1 == 0 end

--- sluice.response(status, body, headers): a plain HTTP response.
function _M.response(st, body, headers)
  if not final_status(st) then
    error("bad status: " .. tostring(st) .. " (a final status, 200 to 999; 1xx are the gateway's own)", 2)
  end
  check_headers(headers, "response headers", 2)
  local bt = type(body)
  if body ~= nil and bt ~= "string" and bt ~= "number" and bt ~= "table" then
    error("response body must be a string, number or table", 2)
  end
  return setmetatable({ status = st, body = body, headers = headers }, Response)
end

local STREAM_KEYS = { headers = true, retry = true, heartbeat = true, on_close = true, expires_at = true, data = true }
local RAW_KEYS = { headers = true, retry = true, heartbeat = true, on_close = true, status = true, expires_at = true,
  data = true }
local SUBSCRIBE_KEYS = { headers = true, retry = true, heartbeat = true, on_close = true, snapshot = true,
  expires_at = true, match = true, grants = true, last_event_id = true, data = true, replay = true }

local function check_opts(opts, what, allowed, level)
  if opts == nil then return {} end
  if type(opts) ~= "table" then error(what .. ": options must be a table", level + 1) end
  event.check_keys(opts, allowed or STREAM_KEYS, what, level + 1)
  check_headers(opts.headers, "opts.headers", level + 1)
  if opts.retry ~= nil then event.check_retry(opts.retry, level + 1) end
  if opts.heartbeat ~= nil and not seconds(opts.heartbeat) then
    error("opts.heartbeat must be a number of seconds (0 = off)", level + 1)
  end
  if opts.on_close ~= nil and type(opts.on_close) ~= "function" then error("opts.on_close must be a function", level + 1) end
  if opts.data ~= nil then
    -- checked now, while a mistake can still be a 500: the head goes out before conn.data is filled
    if type(opts.data) ~= "table" then error("opts.data must be a table", level + 1) end
    for k in pairs(opts.data) do
      local kt = type(k)
      if kt ~= "string" and kt ~= "number" and kt ~= "boolean" then
        error("opts.data keys must be strings, numbers or booleans", level + 1)
      end
    end
    local ok, why = core.copyable(opts.data)
    if not ok then error("opts.data cannot hold " .. why, level + 1) end
  end
  if opts.expires_at ~= nil and (type(opts.expires_at) ~= "number" or opts.expires_at ~= opts.expires_at) then
    error("opts.expires_at must be a time in seconds since the epoch", level + 1)
  end
  if opts.status ~= nil and not final_status(opts.status) then
    error("opts.status must be a final HTTP status, 200 to 999 (1xx are the gateway's own), not " .. tostring(opts.status),
      level + 1)
  end
  return opts
end

function _M.once(value, opts)
  local ok, why = to_data(value)
  if not ok and getmetatable(value) ~= Message then error("sluice.once cannot send " .. why, 2) end
  return setmetatable({ kind = "once", value = value, opts = check_opts(opts, "sluice.once", nil, 2) }, Mode)
end

function _M.stream(gen, opts)
  local t = type(gen)
  if t ~= "function" and t ~= "thread" then error("sluice.stream expects a function or a coroutine", 2) end
  return setmetatable({ kind = "stream", value = gen, opts = check_opts(opts, "sluice.stream", nil, 2) }, Mode)
end

function _M.raw(fn, opts)
  if type(fn) ~= "function" then error("sluice.raw expects a function", 2) end
  return setmetatable({ kind = "raw", value = fn, opts = check_opts(opts, "sluice.raw", RAW_KEYS, 2) }, Mode)
end

--- Channel names as a list: one name or a list of names, each a non-empty string.
local function channel_list(channels, what, level, unlimited)
  if type(channels) == "string" then channels = { channels } end
  if type(channels) ~= "table" or #channels == 0 then
    error(what .. " expects a channel name or a list of channel names", level + 1)
  end
  for i = 1, #channels do
    local c = channels[i]
    if type(c) ~= "string" or c == "" then error(what .. ": channel names must be non-empty strings", level + 1) end
  end
  if #channels > 64 and not unlimited then error(what .. ": at most 64 channels", level + 1) end
  return channels
end

--- A string or a list of at most max strings as a list (topics); raises naming what.
local function string_list(v, what, level, max)
  if type(v) == "string" then return { v } end
  if type(v) ~= "table" then error(what .. " must be a string or a list of strings", level + 1) end
  for i = 1, #v do
    if type(v[i]) ~= "string" then error(what .. " must be a string or a list of strings", level + 1) end
  end
  if #v > max then error(what .. ": at most " .. max .. " of them", level + 1) end
  return v
end

--- A URL pattern (its ":name" groups and "*" wildcards) as the URI template
-- the hub compiles: ":id" is one path segment, "*" any run; nil for the rest
-- of the URL Pattern syntax (groups, regular expressions, modifiers).
local function urlpattern(p)
  if p == "*" then return "*" end
  if p:find("[(){}\\]") or p:find(":[%a_][%w_]*[?+*]") or p:find("%*[?+]") then return nil end
  local n = 0
  return (p:gsub(":([%a_][%w_]*)", "{%1}"):gsub("%*", function()
    n = n + 1
    return "{+_" .. n .. "}"
  end))
end

--- A selector as the text the hub compiles: a string (exact, "*", glob or URI
-- template), { exact = topic } or { urlpattern = pattern }; nil and why if it
-- is none of them. Whether a template compiles is the hub's to say.
local function selector_text(sel)
  if type(sel) == "table" and type(sel.exact) == "string" then
    return "\0" .. sel.exact -- an exact topic, even with '*' or '{' in it
  end
  if type(sel) == "table" and type(sel.urlpattern) == "string" then
    local text = urlpattern(sel.urlpattern)
    if not text then return nil, "unsupported URL pattern '" .. sel.urlpattern .. "' (only :name and * are)" end
    return text
  end
  if type(sel) ~= "string" then return nil, "a selector is a string, { exact = topic } or { urlpattern = pattern }" end
  return sel
end

--- The same, checked: nil and why if it does not compile either.
local function selector(sel)
  local text, err = selector_text(sel)
  if text and not core.selector_ok(text) then return nil, "bad topic selector '" .. text .. "'" end
  return text, err
end

--- sluice.subscribe(channels, opts): the connection receives every event published to them.
function _M.subscribe(channels, opts)
  channels = channel_list(channels, "sluice.subscribe", 2)
  opts = check_opts(opts, "sluice.subscribe", SUBSCRIBE_KEYS, 2)
  local nsel = 0
  for _, k in ipairs { "match", "grants" } do
    if opts[k] ~= nil then
      local v, list = opts[k], {}
      if type(v) == "string" or (type(v) == "table" and (v.exact ~= nil or v.urlpattern ~= nil)) then v = { v } end
      if type(v) ~= "table" then error("sluice.subscribe: " .. k .. " must be a selector or a list of them", 2) end
      for i = 1, #v do
        local sel, err = selector(v[i])
        if not sel then error("sluice.subscribe: " .. k .. ": " .. err, 2) end
        list[i] = sel
      end
      nsel = nsel + #list
      if nsel > core.max_selectors then
        error("sluice.subscribe: at most " .. core.max_selectors .. " selectors (match and grants together)", 2)
      end
      opts[k] = list
    end
  end
  if opts.replay ~= nil and opts.replay ~= "gateway" and opts.replay ~= "channels" then
    error('sluice.subscribe: replay must be "channels" or "gateway"', 2)
  end
  local lid = opts.last_event_id
  if lid ~= nil and type(lid) ~= "string" and type(lid) ~= "number" then
    error("sluice.subscribe: last_event_id must be a string or a number", 2)
  end
  if type(lid) == "number" then opts.last_event_id = number(lid) end
  if opts.snapshot ~= nil and getmetatable(opts.snapshot) ~= Message and not to_data(opts.snapshot) then
    error("sluice.subscribe: opts.snapshot must be a string, number, table or sluice.message", 2)
  end
  return setmetatable({ kind = "subscribe", value = channels, opts = opts }, Mode)
end

--- With Redis, core.publish answers AWAIT: the coroutine waits (without
-- blocking the loop) and is resumed with the id, or nil and the error.
local function published(id, err)
  if id == AWAIT then return yield(AWAIT) end
  return id, err
end

--- sluice.publish(channels, data, opts): one event to every subscriber of the channels; returns its id.
function _M.publish(channels, data, opts)
  channels = channel_list(channels, "sluice.publish", 2, true)
  local topics, private
  if opts ~= nil then
    if type(opts) ~= "table" then error("sluice.publish options must be a table", 2) end
    if opts.topics ~= nil or opts.private ~= nil then
      -- the event's attributes for filtered subscriptions; the rest are message fields
      topics, private = opts.topics, opts.private
      if topics ~= nil then topics = string_list(topics, "sluice.publish: topics", 2, core.max_topics) end
      if private ~= nil and type(private) ~= "boolean" then error("sluice.publish: private must be a boolean", 2) end
      local rest = {}
      for k, v in pairs(opts) do if k ~= "topics" and k ~= "private" then rest[k] = v end end
      opts = next(rest) and rest or nil
    end
  end
  if getmetatable(data) == Message then
    return published(core.publish(channels, data.data, data.id, data.event, data.retry, topics, private))
  end
  local text, why = to_data(data)
  if not text then error("sluice.publish cannot send " .. why, 2) end
  if opts == nil then return published(core.publish(channels, text, nil, nil, nil, topics, private)) end
  local m = event.message(text, opts, "sluice.publish")
  return published(core.publish(channels, m.data, m.id, m.event, m.retry, topics, private))
end

--- sluice.last_event_id(): the id of the newest event published (on this node), or nil:
-- what a hub tells a subscriber it starts from (Mercure's Last-Event-ID response header).
_M.last_event_id = core.last_event_id

--- sluice.kept(channel, id): whether the channel's history still keeps the
-- event of that id (with Redis, Redis is asked: the caller waits for it).
function _M.kept(channel, id)
  if type(channel) ~= "string" then error("sluice.kept expects a channel name", 2) end
  if type(id) == "number" then id = number(id) end
  if type(id) ~= "string" then error("sluice.kept expects an event id", 2) end
  return published(core.kept(channel, id))
end

--- sluice.topic_matches(selector, topic): whether a subscription selector
-- (as sluice.subscribe takes them: a string, or { exact = topic }) selects the topic.
function _M.topic_matches(sel, topic)
  if type(topic) ~= "string" then error("sluice.topic_matches: the topic must be a string", 2) end
  local text, err = selector_text(sel)
  if not text then error("sluice.topic_matches: " .. err, 2) end
  local ok, r = pcall(core.topic_matches, text, topic) -- compiled once: it raises for a malformed one
  if not ok then error("sluice.topic_matches: bad topic selector '" .. text .. "'", 2) end
  return r
end

--- sluice.subscribers(channel): how many connections are subscribed to it now.
function _M.subscribers(channel)
  if type(channel) ~= "string" then error("sluice.subscribers expects a channel name", 2) end
  return core.subscribers(channel)
end

--- sluice.metrics(): the gateway's metrics as a table: name -> number, or a
-- list of { <labels>..., value = } for metrics with labels.
_M.metrics = core.metrics

local METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"

--- sluice.metrics_handler(): a handler that answers the metrics in the
-- Prometheus text format: sluice.get("/metrics", sluice.metrics_handler()).
function _M.metrics_handler()
  return function() return _M.response(200, core.metrics_text(), { ["Content-Type"] = METRICS_TYPE }) end
end

--- sluice.stats(): gateway counters (channels, published, delivered, dropped_slow, connections, refused).
_M.stats = core.stats

--- sluice.kick(channel): ends every connection subscribed to it (on this node); returns how many.
function _M.kick(channel)
  if type(channel) ~= "string" or channel == "" then error("sluice.kick expects a channel name", 2) end
  return core.kick(channel)
end

local LISTEN_KEYS = { last_event_id = true, timeout = true }

--- sluice.listen(channels, opts): an iterator over the events published to the
-- channels from now on (after opts.last_event_id, replayed first, if given):
-- `for ev in sluice.listen("jobs") do ... end` in a handler, generator, raw
-- callback or timer body. Each ev has data, id and event. With opts.timeout the
-- loop ends after that many seconds without an event; break ends it too.
function _M.listen(channels, opts)
  channels = channel_list(channels, "sluice.listen", 2)
  local timeout, last
  if opts ~= nil then
    if type(opts) ~= "table" then error("sluice.listen: options must be a table", 2) end
    event.check_keys(opts, LISTEN_KEYS, "sluice.listen", 2)
    if opts.timeout ~= nil and not (seconds(opts.timeout)) then
      error("sluice.listen: timeout must be a number of seconds", 2)
    end
    if opts.last_event_id ~= nil and type(opts.last_event_id) ~= "string" and type(opts.last_event_id) ~= "number" then
      error("sluice.listen: last_event_id must be a string or a number", 2)
    end
    timeout = opts.timeout
    last = opts.last_event_id and (type(opts.last_event_id) == "number" and number(opts.last_event_id) or opts.last_event_id)
  end
  local _, main = running()
  if main or running() == nil then
    error("sluice.listen works in a handler, generator, raw callback or timer body", 2)
  end
  local l = core.listen(channels, last)
  local deadline
  return function()
    if timeout then deadline = core.now() + timeout end
    while true do
      local ev, err = core.listen_next(l)
      if ev ~= AWAIT then
        if ev == nil then
          core.listen_close(l)
          if err == nil then return nil end -- its task ended: the channels are gone
          error("sluice.listen: " .. err, 2)
        end
        return ev
      end
      if deadline then
        local left = deadline - core.now()
        if left <= 0 then
          core.listen_close(l)
          return nil
        end
        yield(AWAIT, left)
      else
        yield(AWAIT)
      end
    end
  end, l
end

-- ---------------------------------------------------------------- connections and reloads

local FILTER_KEYS = { route = true, mode = true, channel = true }

--- sluice.connections(filter): handles of the live raw, stream and subscribed
-- connections, whichever state started them; filter = { route =, mode =, channel = }.
function _M.connections(filter)
  if filter ~= nil then
    if type(filter) ~= "table" then error("sluice.connections expects a filter table", 2) end
    event.check_keys(filter, FILTER_KEYS, "sluice.connections", 2)
    for k, v in pairs(filter) do
      if type(v) ~= "string" then error("sluice.connections: filter." .. k .. " must be a string", 2) end
    end
  end
  return core.connections(filter)
end

--- A connection's token: its id and a MAC of it (HMAC-SHA256 with the
-- gateway's random key, 22 base64url characters): what to put in a URL, where
-- an id alone could be guessed.
local function conn_token(id, key)
  local text = number(id)
  local c = require "sluice.crypto"
  return text .. "." .. c.base64url_encode(c.hmac_sha256(key or core.token_key(), text)):sub(1, 22)
end

--- sluice.conn(id_or_token): the handle of a live connection (by conn.id, or by
-- conn.token, which cannot be guessed), or nil.
function _M.conn(id)
  if type(id) == "string" then
    local text = id:match("^(%d+)%.[%w_-]+$")
    if not text or not core.secure_compare(conn_token(tonumber(text)), id) then return nil end
    return core.conn(tonumber(text))
  end
  if type(id) ~= "number" then error("sluice.conn expects a connection id or token", 2) end
  return core.conn(id)
end

local reload_hook, previous, previous_loaded

--- sluice.on_reload(fn): fn() runs in this state when a reload starts; what it
-- returns (data only) is copied to the new state's sluice.previous_state().
function _M.on_reload(fn)
  if fn ~= nil and type(fn) ~= "function" then error("sluice.on_reload expects a function", 2) end
  reload_hook = fn
end

--- Called by the core before the new script loads: (true, state) or nothing.
function _M._reloading()
  if not reload_hook then return end
  return true, reload_hook()
end

--- sluice.previous_state(): what the previous state's on_reload gave (the same copy each call), or nil.
function _M.previous_state()
  if not previous_loaded then
    previous, previous_loaded = core.previous_state(), true
  end
  return previous
end

-- ---------------------------------------------------------------- utilities

--- Suspends the calling coroutine for secs seconds without blocking the loop.
function _M.sleep(secs)
  if not seconds(secs) then error("sluice.sleep expects a number of seconds (not negative, not NaN)", 2) end
  local co, main = running()
  if main or co == nil then
    error("sluice.sleep called outside a handler, generator, raw callback or timer "
      .. "(on_close hooks and the script's load cannot wait: use sluice.after)", 2)
  end
  local back = yield(SLEEP, secs)
  if back ~= SLEEP and back ~= nil then
    -- resumed with a value by the script's own code (a coroutine it drives
    -- itself), not by the gateway. (A nested generator that passed the pause
    -- up may resume it with nothing: that is fine, the pause was taken.)
    error("sluice.sleep was cut short: it ran inside a coroutine the script resumes itself, "
      .. "which got the pause instead of the gateway (call sluice.sleep in the handler, generator, "
      .. "raw callback or timer body, or yield what that coroutine yields on unchanged)", 2)
  end
end

_M.now = core.now

local crypto = require "sluice.crypto"
--- Hashing, MACs, encodings and tokens, from libcrypto (docs/api.md "Crypto and tokens").
_M.sha256, _M.hmac_sha256, _M.random_bytes = crypto.sha256, crypto.hmac_sha256, crypto.random_bytes
_M.base64url_encode, _M.base64url_decode = crypto.base64url_encode, crypto.base64url_decode
_M.jwt = require "sluice.jwt"
--- Outbound HTTP(S) and Redis commands that suspend only the calling coroutine.
_M.http = require "sluice.http"
_M.redis = require "sluice.redis"
--- sluice.query_value(req, name): one value of a query parameter (the first
-- given when it is repeated), or nil.
--- sluice.shared(name): the dictionary name, kept in the gateway: the same for
-- every load of the script (sized by configure { shared = { [name] = bytes } }).
function _M.shared(name)
  if type(name) ~= "string" or #name == 0 or #name > 255 then
    error("sluice.shared expects a name (a string of 1 to 255 bytes)", 2)
  end
  local sizes = config.values.shared
  return core.shared(name, sizes and sizes[name])
end

function _M.query_value(req, name)
  local v = type(req) == "table" and type(req.query) == "table" and req.query[name]
  if type(v) == "table" then return v[1] end
  return v or nil
end

--- sluice.form.decode(body): an application/x-www-form-urlencoded body as a table
-- (the rules of req.query: + is a space, a repeated key is a list); nil if malformed.
_M.form = { decode = function(body)
  if type(body) ~= "string" then error("sluice.form.decode expects a string", 2) end
  return router.parse_query(body)
end }

--- sluice.secure_compare(a, b): string equality in constant time, for tokens and secrets.
function _M.secure_compare(a, b)
  if type(a) ~= "string" or type(b) ~= "string" then return false end
  return core.secure_compare(a, b)
end

--- sluice.after(seconds, fn): runs fn once, in a coroutine of its own.
function _M.after(secs, fn)
  if not seconds(secs) then error("sluice.after expects a number of seconds (not negative, not NaN)", 2) end
  if type(fn) ~= "function" then error("sluice.after expects a function", 2) end
  return core.timer(secs, 0, fn)
end

--- sluice.every(seconds, fn, { overlap = false }): runs fn every `seconds`, each
-- time in a coroutine of its own; with overlap = false a tick is skipped while
-- the previous run is still going (sleeping, waiting for Redis).
function _M.every(secs, fn, opts)
  if not seconds(secs) or secs == 0 then error("sluice.every expects a positive number of seconds", 2) end
  if type(fn) ~= "function" then error("sluice.every expects a function", 2) end
  if opts ~= nil then
    if type(opts) ~= "table" then error("sluice.every: options must be a table", 2) end
    event.check_keys(opts, { overlap = true }, "sluice.every", 2)
    if opts.overlap ~= nil and type(opts.overlap) ~= "boolean" then error("sluice.every: overlap must be a boolean", 2) end
    if opts.overlap == false then
      local busy, body = false, fn
      fn = function()
        if busy then return end
        busy = true
        local ok, err = xpcall(body, error_trace)
        busy = false
        if not ok then error(err, 0) end
      end
    end
  end
  return core.timer(secs, secs, fn)
end

local function log_at(level)
  return function(...)
    if not core.log_enabled(level) then return end
    local n = select("#", ...)
    local parts = {}
    for i = 1, n do
      local v = (select(i, ...))
      parts[i] = type(v) == "number" and number(v) or tostring(v)
    end
    core.log(level, concat(parts, " "))
  end
end
_M.log = { error = log_at(0), warn = log_at(1), info = log_at(2), debug = log_at(3) }

-- ---------------------------------------------------------------- connections

local function on_close(conn, fn)
  if type(fn) ~= "function" then error("on_close expects a function", 3) end
  if core.closed(conn) then
    -- Already gone: run it now so a script's bookkeeping still happens once.
    local ok, err = xpcall(fn, error_trace, conn)
    if not ok then
      core.log(0, "on_close hook: " .. err)
      core.count_error("on_close")
    end
    return
  end
  local list = hooks[conn]
  if not list then list = {}; hooks[conn] = list end
  list[#list + 1] = fn
end

--- Called by the core once a connection is gone, in every state that has a
-- handle for it: runs its on_close hooks. They run outside any coroutine:
-- nothing in them can wait.
function _M._gone(conn)
  local list = conn and hooks[conn]
  if not list then return end
  hooks[conn] = nil
  for i = 1, #list do
    local ok, err = xpcall(list[i], error_trace, conn)
    if not ok then
      if find(err, "attempt to yield across", 1, true) then
        err = "on_close hooks cannot wait (coroutine.yield, sluice.sleep): they run once the connection "
          .. "is gone; start waiting work with sluice.after(0, fn)\n" .. err
      end
      core.log(0, "on_close hook: " .. err)
      core.count_error("on_close")
    end
  end
end

local function send_opts(conn, data, opts)
  local text, why = to_data(data)
  if not text then error("cannot send " .. why .. " as an event", 3) end
  if opts == nil then return c_send(conn, text) end
  local m = event.message(text, opts, "conn:send")
  return c_send(conn, m.data, m.id, m.event, m.retry)
end

local methods = core.conn_methods
function methods.write(conn, bytes)
  if type(bytes) ~= "string" then error("conn:write expects a string", 2) end
  return core.write(conn, bytes)
end
function methods.send(conn, data, opts)
  if getmetatable(data) == Message then return c_send(conn, data.data, data.id, data.event, data.retry) end
  return send_opts(conn, data, opts)
end
function methods.comment(conn, text)
  if text ~= nil and type(text) ~= "string" then error("conn:comment expects a string", 2) end
  return core.comment(conn, text)
end
--- conn:close(): true, or nil, "closed" if it was closed already (as conn:send says).
function methods.close(conn)
  if core.close(conn) then return true end
  return nil, "closed"
end
methods.__captures = router.captures -- conn.params, from the route pattern and the target
methods.__token = conn_token -- conn.token
--- conn:subscribe(channels) / conn:unsubscribe(channels): changes a live
-- subscription (added channels get live events from now on, no replay).
function methods.subscribe(conn, channels)
  return core.change(conn, channel_list(channels, "conn:subscribe", 2), true)
end
function methods.unsubscribe(conn, channels)
  return core.change(conn, channel_list(channels, "conn:unsubscribe", 2), false)
end
function methods.on_close(conn, fn) on_close(conn, fn) end

-- ---------------------------------------------------------------- the modes

local TEXT = "text/plain; charset=utf-8"
-- A response's Content-Type when the handler set none: shared, only read
-- (the core copies headers out; merge_headers makes a new table).
local TEXT_TYPE, JSON_TYPE = { ["Content-Type"] = TEXT }, { ["Content-Type"] = "application/json" }

--- Merges extra headers over base, case-insensitively; returns a new table.
local function merge_headers(base, extra)
  local out, names = {}, {}
  for k, v in pairs(base) do out[k] = v; names[lower(k)] = k end
  if extra then
    for k, v in pairs(extra) do
      local old = names[lower(k)]
      if old then out[old] = nil end
      out[k] = v
      names[lower(k)] = k
    end
  end
  return out
end

local function has_header(h, name)
  if not h then return false end
  for k in pairs(h) do if lower(k) == name then return true end end
  return false
end

local SSE_HEADERS = {
  ["Content-Type"] = "text/event-stream; charset=utf-8",
  ["Cache-Control"] = "no-cache",
  ["X-Accel-Buffering"] = "no",
}

--- Sends one value as an event. Returns true, queue_full or nil, "closed"/"overflow".
local function send_value(conn, v)
  if getmetatable(v) == Message then return c_send(conn, v.data, v.id, v.event, v.retry) end
  local text, why = to_data(v)
  if not text then
    error("cannot send " .. why .. " as an event (send a string, number, table or sluice.message)", 0)
  end
  return c_send(conn, text)
end

local function start_stream(conn, req, opts, heartbeat, extra, mode)
  local headers = merge_headers(SSE_HEADERS, opts.headers)
  if extra then headers = merge_headers(headers, extra) end
  local ok = c_start(conn, opts.status or 200, headers, opts.retry, heartbeat, mode, req.route)
  if ok and opts.data then
    local data = conn.data
    for k, v in pairs(opts.data) do data[k] = v end
  end
  if ok and opts.on_close then on_close(conn, opts.on_close) end
  if ok and opts.expires_at then
    -- a token's expiry: the stream ends then (at once if it has passed)
    core.expire(conn, math.max(0, opts.expires_at - core.time()))
  end
  if ok and req.method == "HEAD" then c_finish(conn); return nil end
  return ok
end

local function dead_error(err)
  return type(err) == "string" and find(err, "cannot resume dead coroutine", 1, true)
end

--- Returns a function that gives the generator's next value, whatever its kind;
-- its arguments are what the generator's pending yield returns.
local function stepper(gen)
  if type(gen) == "thread" then
    return function(...)
      if status(gen) == "dead" then return nil end
      local ok, v, a = resume(gen, ...)
      if not ok then return FAILED, traceback(gen, error_text(v)) end
      return v, a
    end
  end
  return function(...)
    local ok, v, a = xpcall(gen, error_trace, ...)
    if not ok then
      if dead_error(v) then return nil end -- a wrap generator that returned its last value
      return FAILED, v
    end
    return v, a
  end
end

--- Logs an error that belongs to a request, naming its route, and ends the request.
local function request_failed(conn, label, err, where)
  core.log(0, "handler error in route " .. (label or "?") .. ": " .. err)
  core.count_error(where)
  core.fail(conn)
end

-- A generator's errors are caught here, not by a protected call around the
-- stream: the stream's coroutine stays as shallow as it was (a protected call
-- would cost every generator stream a larger Lua stack).
local function run_stream(conn, gen, label)
  local step = stepper(gen)
  while true do
    local v, a = step()
    while v == SLEEP or v == AWAIT do
      -- a sleep or a wait for Redis inside a nested generator: pass it up to the
      -- scheduler, and what it resumes us with back down
      v, a = step(yield(v, a))
    end
    if v == FAILED then return request_failed(conn, label, a, "generator") end
    if v == nil then
      if core.log_enabled(3) then core.log(3, "a stream ended: its generator returned or produced nil") end
      break
    end
    local ok, full = send_value(conn, v)
    if not ok then return end
    if full then yield(WAIT) end
  end
  c_finish(conn)
end

local modes = {}

function modes.once(conn, req, m, cors)
  if not start_stream(conn, req, m.opts, 0, cors, "once") then return end
  send_value(conn, m.value)
  c_finish(conn)
end

function modes.stream(conn, req, m, cors, label)
  if not start_stream(conn, req, m.opts, m.opts.heartbeat, cors, "stream") then return end
  -- A coroutine (or what coroutine.wrap made) is stepped by the scheduler in C
  -- once this handler's coroutine returns: no Lua loop between the generator
  -- and the connection. Other generators (plain functions) are stepped here.
  if core.drive(conn, m.value, label) then return end
  run_stream(conn, m.value, label)
end

function modes.subscribe(conn, req, m, cors)
  if not start_stream(conn, req, m.opts, m.opts.heartbeat, cors, "subscribe") then return end
  -- The snapshot goes out before any replayed or live event, in the same turn
  -- of the loop as the subscription: nothing published in between is missed.
  if m.opts.snapshot ~= nil and not send_value(conn, m.opts.snapshot) then return end
  local lid = m.opts.last_event_id
  if lid == nil then lid = req.last_event_id end
  if core.subscribe(conn, m.value, lid, m.opts.match, m.opts.grants, m.opts.replay == "gateway") and not hooks[conn] then
    -- The hub alone serves it from now on: the script (and its state, after a reload) can let go.
    core.release(conn)
  end
end

function modes.raw(conn, req, m, cors)
  if not start_stream(conn, req, m.opts, m.opts.heartbeat or 0, cors, "raw") then return end
  m.value(conn)
end

local function respond(conn, req, res, cors)
  local body, headers = res.body, res.headers
  if type(body) == "table" then
    body = json.encode(body)
    if not has_header(headers, "content-type") then headers = headers and merge_headers(JSON_TYPE, headers) or JSON_TYPE end
  elseif body == nil then
    body = ""
  else
    if type(body) == "number" then body = number(body) end
    if body ~= "" and not has_header(headers, "content-type") then headers = headers and merge_headers(TEXT_TYPE, headers) or TEXT_TYPE end
  end
  if cors then headers = merge_headers(headers or {}, cors) end
  c_respond(conn, res.status, body, headers)
end

local function deliver(conn, req, res, cors, label)
  if res == nil then return c_respond(conn, 204, "", cors) end
  local mt = getmetatable(res)
  if mt == Response then return respond(conn, req, res, cors) end
  if mt == Mode then return modes[res.kind](conn, req, res, cors, label) end
  local t = type(res)
  if t == "function" or t == "thread" then return modes.stream(conn, req, { value = res, opts = {} }, cors, label) end
  if mt == Message or to_data(res) then return modes.once(conn, req, { value = res, opts = {} }, cors) end
  error("handler returned " .. (select(2, to_data(res))) .. ", which is neither an event nor a response", 0)
end

local function plain(conn, st, text, headers, close)
  headers = headers and merge_headers(TEXT_TYPE, headers) or TEXT_TYPE
  c_respond(conn, st, text, headers, close)
end

--- A generic-for triple (`return ipairs(list)`, `return pairs(t)`) as a
-- function iterator: each step's value is an event (the second value when the
-- iterator gives two, as ipairs and pairs do; else the first).
local function generic_for(f, state, control)
  return function()
    local a, b = f(state, control)
    if a == nil then return nil end
    control = a
    if b ~= nil then return b end
    return a
  end
end

--- Called by the core in a new coroutine for each request.
function _M._dispatch(conn, req)
  local segs, path = router.split(req.target)
  local query = segs and router.parse_query(req.query_string)
  -- A request the gateway cannot read is answered and its connection closed:
  -- what is pipelined after it may not be what the client meant either.
  if not query then return plain(conn, 400, "Bad Request\n", nil, true) end
  req.path, req.query, req.raw_path, req.raw_query = path, query, req.target, req.query_string
  local cookie = req.headers.cookie
  if cookie then req.cookies = router.parse_cookies(cookie) end
  local leid = req.headers["last-event-id"] or query.lastEventId
  if type(leid) == "table" then leid = leid[#leid] end
  if leid == "" then leid = nil end -- an empty ?lastEventId= (what templates leave) is no id
  req.last_event_id = leid

  local cors
  if config.values.cors ~= nil then
    local origin, credentials = config.cors_origin(req.headers.origin)
    if origin then
      cors = { ["Access-Control-Allow-Origin"] = origin }
      if origin ~= "*" then cors["Vary"] = "Origin" end
      if credentials then cors["Access-Control-Allow-Credentials"] = "true" end
    end
  end

  local route, params = routes:match(req.method, segs)
  if not route then
    if params and req.method == "OPTIONS" and cors then
      local h = merge_headers(cors, {
        ["Access-Control-Allow-Methods"] = params,
        ["Access-Control-Allow-Headers"] = req.headers["access-control-request-headers"] or "Last-Event-ID, Content-Type",
        ["Access-Control-Max-Age"] = "600",
      })
      return c_respond(conn, 204, "", h)
    end
    if params then return plain(conn, 405, "Method Not Allowed\n", merge_headers(cors or {}, { Allow = params })) end
    return plain(conn, 404, "Not Found\n", cors)
  end
  req.params, req.route = params, route.pattern
  req.target, req.query_string = nil, nil
  -- Errors name the route and where its handler is: a misuse in a tail call
  -- (`return sluice.response("200")`) leaves no frame of the script behind.
  local ok, res, state, control = xpcall(route.handler, error_trace, req)
  if not ok then
    core.log(0, "handler error in route " .. route.label .. ": " .. res)
    core.count_error("handler")
    return core.fail(conn)
  end
  if type(res) == "function" and state ~= nil then res = generic_for(res, state, control) end
  -- What the handler returned runs protected too (a raw callback's errors, a
  -- value that is no event): its errors name the route and, with their one
  -- traceback, the script's line. A generator's are caught by run_stream,
  -- which keeps a stream's coroutine as shallow as it was.
  local t, mt = type(res), getmetatable(res)
  if t == "function" or t == "thread" or (mt == Mode and res.kind == "stream") then
    return deliver(conn, req, res, cors, route.label)
  end
  local done, err = xpcall(deliver, error_trace, conn, req, res, cors, route.label)
  if not done then
    local mode = conn.mode
    return request_failed(conn, route.label, err, (mode and mode ~= "none") and "generator" or "handler")
  end
end

return _M
