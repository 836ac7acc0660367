--- sluice.config: the keys of sluice.configure, their types and defaults.
-- apply() checks a whole table before changing anything, so a bad key leaves
-- the previous settings as they were.
local type, pairs, error, tostring, floor = type, pairs, error, tostring, math.floor

local _M = {}

local function whole(v) return type(v) == "number" and v >= 0 and v == floor(v) end
local function nonneg(v) return type(v) == "number" and v >= 0 end
local function origins(v)
  if type(v) == "string" then return true end
  if type(v) ~= "table" then return false end
  for _, o in pairs(v) do if type(o) ~= "string" then return false end end
  return true
end

-- key -> { check, what it must be }
_M.keys = {
  heartbeat = { nonneg, "a number of seconds (0 = off)" },
  retry = { whole, "a whole number of milliseconds" },
  history = { whole, "a whole number of events" },
  history_ttl = { nonneg, "a number of seconds" },
  queue_limit = { whole, "a whole number of bytes" },
  max_connections = { whole, "a whole number" },
  max_header = { whole, "a whole number of bytes" },
  max_body = { whole, "a whole number of bytes" },
  header_timeout = { nonneg, "a number of seconds" },
  watchdog = { nonneg, "a number of seconds (0 = off)" },
  jit = { function(v) return type(v) == "boolean" end, "true or false" },
  cors = { origins, "an origin string, \"*\" or a list of origins" },
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
      error("configuration key '" .. k .. "' must be " .. spec[2] .. ", got " .. tostring(v), level)
    end
  end
  for k, v in pairs(t) do
    _M.values[k] = v
    if k == "jit" then
      -- The JIT is off unless asked for: the watchdog cannot stop a loop it compiled.
      if v then jit.on() else jit.off() end
    elseif k ~= "cors" then
      set(k, v)
    end
  end
end

--- The Access-Control-Allow-Origin value for a request's Origin, or nil.
function _M.cors_origin(origin)
  local allowed = _M.values.cors
  if allowed == nil then return nil end
  if allowed == "*" then return "*" end
  if origin == nil then return nil end
  if type(allowed) == "string" then return allowed == origin and origin or nil end
  for _, o in pairs(allowed) do
    if o == "*" then return "*" end
    if o == origin then return origin end
  end
  return nil
end

return _M
