--- sluice.event: event messages and the rules for what can be sent as one.
-- A message is data (string, number or table as JSON) with optional id,
-- event name and retry. The wire framing itself is done in C.
local type, error, setmetatable, getmetatable, find, floor, pairs, next, tostring, sort, concat =
  type, error, setmetatable, getmetatable, string.find, math.floor, pairs, next, tostring, table.sort, table.concat
local json = require "sluice.json"
local number = require("sluice.text").number

local _M = {}
local Message = { __name = "sluice.message" }
Message.__index = Message
_M.Message = Message

--- The text of an event's data, or nil and why it cannot be sent.
-- `special` is a lookup of metatables (responses, modes) that are not data.
function _M.to_data(v)
  local t = type(v)
  if t == "string" then return v end
  if t == "number" then return number(v) end
  if v == json.empty_array then return "[]" end
  if t == "table" then
    local mt = getmetatable(v)
    if mt ~= nil and mt ~= json.array_mt then return nil, "a " .. (mt.__name or "table with a metatable") end
    return json.encode(v)
  end
  return nil, "a " .. t
end

local huge = math.huge
-- The largest retry that is still an exact whole number (and fits the framing's integers).
local MAX_RETRY = 2 ^ 53 - 1

local function check_field(name, v, level)
  if v == nil then return nil end
  local t = type(v)
  if t == "number" then
    if v ~= v or v == huge or v == -huge then error(name .. " must be a finite number, not " .. tostring(v), level + 1) end
    return number(v) -- digits, a sign, a point, an exponent: never CR, LF or NUL
  end
  if t ~= "string" then error(name .. " must be a string or a number", level + 1) end
  if find(v, "[\r\n%z]") then error(name .. " may not contain CR, LF or NUL", level + 1) end
  return v
end

local function check_retry(v, level)
  if v == nil then return nil end
  if type(v) ~= "number" or v < 0 or v ~= floor(v) or v > MAX_RETRY then
    error("retry must be a whole number of milliseconds (0 to 2^53 - 1)", level + 1)
  end
  return v
end
_M.check_retry = check_retry

--- Raises (at level) for a key of the options table t that is not in allowed:
-- a misspelt option must not pass for a default.
function _M.check_keys(t, allowed, what, level)
  for k in pairs(t) do
    if not allowed[k] then
      local names = {}
      for n in pairs(allowed) do names[#names + 1] = n end
      sort(names)
      error(what .. ": unknown option '" .. tostring(k) .. "' (known: " .. concat(names, ", ") .. ")", level + 1)
    end
  end
end

local MESSAGE_KEYS = { id = true, event = true, retry = true }

--- sluice.message(data, { id =, event =, retry = }); what names the caller in errors.
function _M.message(data, opts, what)
  what = what or "sluice.message"
  local text, why = _M.to_data(data)
  if not text then error(what .. ": data must be a string, number or table, not " .. why, 2) end
  if opts ~= nil and type(opts) ~= "table" then error(what .. ": options must be a table", 2) end
  if opts == nil then return setmetatable({ data = text }, Message) end
  for k in pairs(opts) do
    if not MESSAGE_KEYS[k] then _M.check_keys(opts, MESSAGE_KEYS, what, 2) end
  end
  return setmetatable({
    data = text,
    id = check_field("id", opts.id, 2),
    event = check_field("event", opts.event, 2),
    retry = check_retry(opts.retry, 2),
  }, Message)
end

--- An id or event name as text (a string without CR, LF or NUL, or a finite
-- number's digits), or nil if it is neither: check_field's rule, without the error.
local function field_text(v)
  local t = type(v)
  if t == "string" then
    if not find(v, "[\r\n%z]") then return v end
  elseif t == "number" and v == v and v ~= huge and v ~= -huge then
    return number(v)
  end
end

local message = _M.message

--- sluice.message(data, opts) itself: the plain cases (data a string or a
-- finite number, options that need no error) made here, in a few
-- instructions and one table sized to its fields; the others (a table as
-- JSON, a mistake to explain) by message (a tail call, so its errors point at
-- the script's line).
function _M.quick_message(data, opts)
  local t = type(data)
  if t == "number" and data == data and data ~= huge and data ~= -huge then
    data = number(data)
  elseif t ~= "string" then
    return message(data, opts, "sluice.message")
  end
  if opts == nil then return setmetatable({ data = data }, Message) end
  if type(opts) ~= "table" then return message(data, opts, "sluice.message") end
  local id, ev, retry, n = opts.id, opts.event, opts.retry, 0
  for _ in next, opts do n = n + 1 end
  if id ~= nil then
    id, n = field_text(id), n - 1
    if id == nil then return message(data, opts, "sluice.message") end
  end
  if ev ~= nil then
    ev, n = field_text(ev), n - 1
    if ev == nil then return message(data, opts, "sluice.message") end
  end
  if retry ~= nil then
    n = n - 1
    if type(retry) ~= "number" or not (retry >= 0 and retry <= MAX_RETRY) or retry ~= floor(retry) then
      return message(data, opts, "sluice.message")
    end
  end
  -- a key that is none of the three
  if n ~= 0 then return message(data, opts, "sluice.message") end
  if ev == nil and retry == nil then return setmetatable({ data = data, id = id }, Message) end
  return setmetatable({ data = data, id = id, event = ev, retry = retry }, Message)
end

function _M.is_message(v) return getmetatable(v) == Message end

return _M
