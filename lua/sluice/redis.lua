--- sluice.redis: commands on the gateway's Redis (--redis or configure { redis })
-- from route scripts. A call suspends only its coroutine; many may be in
-- flight at once, pipelined on the engine's command connection. See
-- docs/api.md ("Redis commands").
local core = require "sluice.core"
local number = require("sluice.text").number

local type, error, select, ipairs, yield, lower = type, error, select, ipairs, coroutine.yield, string.lower
local AWAIT = core.AWAIT

local _M = {}

-- Commands that would change the shared connection's state for every other
-- caller (a subscription, a transaction, another database) or block it, and
-- with it the gateway's own publishes: use EVAL for atomic work instead.
local REFUSED = {}
for _, c in ipairs { "subscribe", "psubscribe", "ssubscribe", "unsubscribe", "punsubscribe", "sunsubscribe",
  "monitor", "multi", "exec", "discard", "watch", "unwatch", "select", "swapdb", "auth", "hello", "reset", "quit",
  "client", "blpop", "brpop", "brpoplpush", "blmove", "blmpop", "bzpopmin", "bzpopmax", "bzmpop", "wait",
  "waitaof", "shutdown", "sync", "psync", "replicaof", "slaveof", "debug" } do
  REFUSED[c] = true
end

--- sluice.redis.call(command, ...) -> the reply as a Lua value, or nil, err.
function _M.call(cmd, ...)
  if type(cmd) ~= "string" or cmd == "" then error("sluice.redis.call: the command must be a non-empty string", 2) end
  local name = lower(cmd)
  if REFUSED[name] then
    error("sluice.redis.call: " .. cmd .. " is not allowed on the gateway's shared connection " ..
      "(it would block it or change its state for every caller; use EVAL for atomic work)", 2)
  end
  local words = { cmd }
  for i = 1, select("#", ...) do
    local v = select(i, ...)
    local t = type(v)
    if t == "number" then v = number(v)
    elseif t ~= "string" then
      error("sluice.redis.call: argument " .. i .. " must be a string or a number, not " .. t, 2)
    end
    if (name == "xread" or name == "xreadgroup") and lower(v) == "block" then
      error("sluice.redis.call: " .. cmd .. " with BLOCK would block the gateway's shared connection", 2)
    end
    words[#words + 1] = v
  end
  local r1, r2 = core.redis_call(words)
  if r1 == false then error("sluice.redis.call: " .. r2, 2) end
  if r1 == AWAIT then return yield(AWAIT) end
  return r1, r2
end

return _M
