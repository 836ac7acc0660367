--- sluice.router: route patterns, matching, and the parsers of request text
-- (URL decoding, query strings, cookies). What a client sends costs each
-- parser a bounded number of steps per byte: no pattern here backtracks more
-- than once over its input (SECURITY.md).
-- Patterns are literal segments, `:name` (one segment) and a trailing `*`
-- (the rest of the path). Routes match in the order they were declared.
local type, error, tonumber, char, concat = type, error, tonumber, string.char, table.concat
local setmetatable, upper, byte, sub, find, gsub, match, gmatch =
  setmetatable, string.upper, string.byte, string.sub, string.find, string.gsub, string.match, string.gmatch

local _M = {}
local mt = { __index = _M }

--- Percent-decodes s; with plus = true a '+' is a space (query strings).
-- Returns nil for a malformed escape.
function _M.decode(s, plus)
  if plus and find(s, "+", 1, true) then s = gsub(s, "+", " ") end
  if not find(s, "%", 1, true) then return s end
  if find(s, "%%%X") or find(s, "%%%x%X") or find(s, "%%%x?$") then return nil end
  return (gsub(s, "%%(%x%x)", function(h) return char(tonumber(h, 16)) end))
end

--- Splits a request target into decoded path segments.
-- Returns the segment list and the decoded path, or nil for a target that is
-- not an absolute path or has a malformed escape.
function _M.split(target)
  if byte(target, 1) ~= 47 then -- '/'
    -- absolute-form (http://host/path) is allowed by RFC 9112; keep only the path
    local path = target:match("^[hH][tT][tT][pP][sS]?://[^/]*(/.*)$")
    if not path then return nil end
    target = path
  end
  local segs, n, pos = {}, 0, 2
  while true do
    local slash = find(target, "/", pos, true)
    local raw = sub(target, pos, slash and slash - 1 or -1)
    local seg = _M.decode(raw)
    if not seg then return nil end
    n = n + 1
    segs[n] = seg
    if not slash then break end
    pos = slash + 1
  end
  if n == 1 and segs[1] == "" then segs[1] = nil end
  return segs, "/" .. concat(segs, "/")
end

--- Parses a query string into a table; a key given twice becomes a list.
-- Returns nil for a malformed escape.
function _M.parse_query(qs)
  local q = {}
  if qs == nil or qs == "" then return q end
  for pair in qs:gmatch("[^&]+") do
    local eq = find(pair, "=", 1, true)
    local k = _M.decode(eq and sub(pair, 1, eq - 1) or pair, true)
    local v = ""
    if eq then v = _M.decode(sub(pair, eq + 1), true) end
    if not k or not v then return nil end
    local old = q[k]
    if old == nil then q[k] = v
    elseif type(old) == "table" then old[#old + 1] = v
    else q[k] = { old, v } end
  end
  return q
end

--- s without leading and trailing whitespace, in linear time: "^%s*(.-)%s*$"
-- would try every end of the run of spaces at every length of (.-).
local function trim(s)
  local a = find(s, "%S")
  if not a then return "" end
  return match(s, "^.*%S", a)
end

--- The Cookie header as a table (name -> value as sent, a quoted value without
-- its quotes; the first of a name wins).
function _M.parse_cookies(header)
  local t = {}
  for pair in gmatch(header, "[^;]+") do
    local eq = find(pair, "=", 1, true)
    if eq then
      local k = trim(sub(pair, 1, eq - 1))
      if k ~= "" and not find(k, "%s") and t[k] == nil then
        local v = trim(sub(pair, eq + 1))
        if byte(v, 1) == 34 and byte(v, -1) == 34 and #v >= 2 then v = sub(v, 2, -2) end -- '"'
        t[k] = v
      end
    end
  end
  return t
end

-- level: where errors point, counted from compile's caller (as error() counts from add).
local function compile(pattern, level)
  level = level + 1
  if type(pattern) ~= "string" or byte(pattern, 1) ~= 47 then
    error("route pattern must be a string starting with '/': " .. tostring(pattern), level)
  end
  local segs = {}
  local parts = {}
  for part in (pattern .. "/"):sub(2):gmatch("([^/]*)/") do parts[#parts + 1] = part end
  if #parts == 1 and parts[1] == "" then parts = {} end
  for i, part in ipairs(parts) do
    if part == "*" then
      if i ~= #parts then error("'*' may only end a route pattern: " .. pattern, level) end
      segs[i] = { rest = true }
    elseif byte(part, 1) == 58 then -- ':'
      local name = sub(part, 2)
      if name == "" then error("empty capture name in route pattern: " .. pattern, level) end
      segs[i] = { param = name }
    else
      segs[i] = { lit = part }
    end
  end
  return segs
end

function _M.new()
  return setmetatable({ routes = {}, seen = {} }, mt)
end

--- Whether every path that route segments b match is matched by a too
-- (a declared before b takes them all).
local function covers(a, b)
  for i = 1, #b do
    local x, y = a[i], b[i]
    if x == nil then return false end
    if x.rest then return true end
    if y.rest then return false end
    if x.lit and x.lit ~= y.lit then return false end
  end
  local x = a[#b + 1]
  return x == nil or (x.rest and #a == #b + 1) or false
end

--- The first route declared before the last one that takes every request it
-- would (so it can never be reached), or nil.
function _M:shadowed_by()
  local routes = self.routes
  local last = routes[#routes]
  for i = 1, #routes - 1 do
    local r = routes[i]
    if (r.method == last.method or r.method == "*") and covers(r.segs, last.segs) then return r end
  end
  return nil
end

--- Adds a route; declaring the same method and pattern twice is an error.
-- Errors point at the caller's caller `level` - 1 levels up (2, the default: add's caller).
function _M:add(method, pattern, handler, level)
  level = level or 2
  if type(method) ~= "string" or method == "" then error("route method must be a string", level) end
  if type(handler) ~= "function" and not (type(handler) == "table" and getmetatable(handler) and getmetatable(handler).__call) then
    error("route handler must be a function", level)
  end
  method = upper(method)
  local key = method .. " " .. tostring(pattern)
  local segs = compile(pattern, level)
  if self.seen[key] then error("route declared twice: " .. key, level) end
  self.seen[key] = true
  local routes = self.routes
  routes[#routes + 1] = { method = method, pattern = pattern, segs = segs, handler = handler }
end

local function match_segs(rsegs, segs)
  local params
  local n = #segs
  for i = 1, #rsegs do
    local r = rsegs[i]
    if r.rest then
      params = params or {}
      params["*"] = concat(segs, "/", i, n)
      return params
    end
    local s = segs[i]
    if s == nil then return nil end
    if r.lit then
      if r.lit ~= s then return nil end
    else
      if s == "" then return nil end
      params = params or {}
      params[r.param] = s
    end
  end
  if n ~= #rsegs then return nil end
  return params or {}
end

local compiled = {} -- pattern -> its compiled segments (patterns are few)

--- The captures of a route pattern in a request target (as routing gave them), or nil.
function _M.captures(pattern, target)
  local segs = _M.split((target:match("^[^?]*")))
  if not segs then return nil end
  local rsegs = compiled[pattern]
  if not rsegs then
    rsegs = compile(pattern, 1)
    compiled[pattern] = rsegs
  end
  return match_segs(rsegs, segs)
end

--- Finds the first route for method and path segments.
-- Returns route, params; or nil, allow (a comma list of methods the path has,
-- nil when no route matches the path at all).
function _M:match(method, segs)
  local allow, seen
  for i = 1, #self.routes do
    local r = self.routes[i]
    local params = match_segs(r.segs, segs)
    if params then
      if r.method == method or r.method == "*" or (method == "HEAD" and r.method == "GET") then
        return r, params
      end
      allow, seen = allow or {}, seen or {}
      local m = r.method
      if not seen[m] then seen[m] = true; allow[#allow + 1] = m end
      if m == "GET" and not seen.HEAD then seen.HEAD = true; allow[#allow + 1] = "HEAD" end
    end
  end
  return nil, allow and concat(allow, ", ")
end

return _M
