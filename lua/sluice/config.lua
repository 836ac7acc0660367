--- sluice.config: the keys of sluice.configure, their types and defaults.
-- apply() checks a whole table before changing anything, so a bad key leaves
-- the previous settings as they were.
local type, pairs, error, tostring, floor = type, pairs, error, tostring, math.floor

local _M = {}

local function whole(v) return type(v) == "number" and v >= 0 and v == floor(v) end
local function nonneg(v) return type(v) == "number" and v >= 0 end
local function origin_list(v)
  if type(v) == "string" then return true end
  if type(v) ~= "table" then return false end
  for _, o in pairs(v) do if type(o) ~= "string" then return false end end
  return true
end
-- an origin, a list, or { origins = one or a list, credentials = true/false }
local function origins(v)
  if type(v) == "table" and v.origins ~= nil then
    for k in pairs(v) do if k ~= "origins" and k ~= "credentials" then return false end end
    return origin_list(v.origins) and (v.credentials == nil or type(v.credentials) == "boolean")
  end
  return origin_list(v)
end

-- key -> { check, what it must be }
_M.keys = {
  heartbeat = { nonneg, "a number of seconds (0 = off)" },
  retry = { function(v) return whole(v) and v <= 2 ^ 53 - 1 end, "a whole number of milliseconds (up to 2^53 - 1)" },
  history = { whole, "a whole number of events" },
  history_ttl = { nonneg, "a number of seconds" },
  gateway_history = { whole, "a whole number of events" },
  queue_limit = { whole, "a whole number of bytes" },
  max_connections = { whole, "a whole number" },
  max_header = { whole, "a whole number of bytes" },
  max_body = { whole, "a whole number of bytes" },
  header_timeout = { nonneg, "a number of seconds" },
  watchdog = { nonneg, "a number of seconds (0 = off)" },
  jit = { function(v) return type(v) == "boolean" end, "true or false" },
  http = { function(v)
    if type(v) ~= "table" then return false end
    for k, x in pairs(v) do
      if (k ~= "max_concurrent" and k ~= "max_per_host") or not whole(x) or x < 1 then return false end
    end
    return true
  end, "a table { max_concurrent = N, max_per_host = N } (whole numbers, 1 or more)" },
  shared = { function(v)
    if type(v) ~= "table" then return false end
    for k, x in pairs(v) do
      if type(k) ~= "string" or #k == 0 or #k > 255 or not whole(x) or x < 1024 or x > 2 ^ 50 then return false end
    end
    return true
  end, "a table of dictionary names and sizes in bytes ({ sessions = 1048576 }; at least 1024)" },
  cors = { origins, "an origin string, \"*\", a list of origins, or { origins = ..., credentials = true }" },
  redis = { function(v) return type(v) == "string" and (v:find("^redis://") or v:find("^unix://")) ~= nil end,
    "a redis:// or unix:// URL" },
}

_M.values = {}

--- Checks t and hands each value to set(key, value). Raises naming the key.
function _M.apply(t, set, level)
  level = (level or 1) + 1
  if type(t) ~= "table" then error("sluice.configure expects a table", level) end
  for k, v in pairs(t) do
    local spec = _M.keys[k]
    if not spec then error("unknown configuration key '" .. tostring(k) .. "'", level) end
    if not spec[1](v) then
      local got = type(v) == "string" and ("the string %q"):format(v) or (type(v) .. " " .. tostring(v))
      error("configuration key '" .. k .. "' must be " .. spec[2] .. ", got " .. got, level)
    end
  end
  for k, v in pairs(t) do
    _M.values[k] = v
    if k == "jit" then
      -- The JIT is off unless asked for: the watchdog cannot stop a loop it compiled.
      if v then jit.on() else jit.off() end
      set(k, v)
    elseif k == "http" then
      if v.max_concurrent then set("http_max_concurrent", v.max_concurrent) end
      if v.max_per_host then set("http_max_per_host", v.max_per_host) end
    elseif k ~= "cors" and k ~= "shared" then
      set(k, v)
    end
  end
end

--- Whether a cors value answers every origin with credentials: any page on the
-- web can then read, with the user's cookies, what the gateway serves them.
function _M.cors_reflects_credentials(v)
  if type(v) ~= "table" or v.origins == nil or v.credentials ~= true then return false end
  if v.origins == "*" then return true end
  if type(v.origins) == "table" then
    for _, o in pairs(v.origins) do if o == "*" then return true end end
  end
  return false
end

--- The Access-Control-Allow-Origin value for a request's Origin (or nil), and
-- whether credentials are allowed. With credentials, "*" is answered with the
-- request's own origin: browsers refuse "*" on a request with cookies.
function _M.cors_origin(origin)
  local allowed, credentials = _M.values.cors, false
  if allowed == nil then return nil end
  if type(allowed) == "table" and allowed.origins ~= nil then
    allowed, credentials = allowed.origins, allowed.credentials == true
  end
  local any = credentials and origin or "*"
  if allowed == "*" then return any, credentials end
  if origin == nil then return nil end
  if type(allowed) == "string" then return allowed == origin and origin or nil, credentials end
  for _, o in pairs(allowed) do
    if o == "*" then return any, credentials end
    if o == origin then return origin, credentials end
  end
  return nil
end

return _M
