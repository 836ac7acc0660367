--- sluice.http: HTTP(S) requests from route scripts that suspend only the
-- calling coroutine (a handler before it returns, a generator, a timer body,
-- a raw callback): the gateway's loop drives them through libcurl, so every
-- other client goes on being served meanwhile. See docs/api.md ("Outbound HTTP").
local core = require "sluice.core"
local json = require "sluice.json"

local type, error, pairs, ipairs, tostring, yield = type, error, pairs, ipairs, tostring, coroutine.yield
local find, upper, concat, format, byte, gsub = string.find, string.upper, table.concat, string.format, string.byte,
  string.gsub
local AWAIT = core.AWAIT

local _M = {}

local DEFAULT_MAX_BODY = 4 * 1024 * 1024
local KEYS = { url = true, method = true, headers = true, body = true, form = true, timeout = true,
  connect_timeout = true, max_body = true, follow = true, insecure = true, cainfo = true }

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
local function prepare(opts, level)
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
  if type(method) ~= "string" or not find(method, "^[%w!#$%%&'*+.^_`|~-]+$") then
    error("sluice.http.request: method must be a token such as GET or POST", level)
  end
  method = upper(method)
  local lines, has = {}, {}
  if opts.headers ~= nil then
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
      if not has["content-type"] then lines[#lines + 1] = "Content-Type: application/x-www-form-urlencoded" end
    elseif t == "table" then
      body = json.encode(body)
      if not has["content-type"] then lines[#lines + 1] = "Content-Type: application/json" end
    elseif t ~= "string" then
      error("sluice.http.request: body must be a string or a table (sent as JSON, or as a form with form = true)", level)
    end
  end
  for _, k in ipairs { "timeout", "connect_timeout" } do
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
  return url, method, lines, body, opts.timeout or 30, opts.connect_timeout or 10, max_body, follow,
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
  local o = {}
  for k, v in pairs(opts or {}) do o[k] = v end
  o.url, o.method = url, "GET"
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

return _M
