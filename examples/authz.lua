-- authz.lua: subscriptions an auth service allows. Before a client may read a
-- channel, the gateway asks the auth service over HTTP, passing on the
-- client's Cookie and Authorization headers; its answers are cached for a few
-- seconds, so a crowd reconnecting at once costs one question per user and
-- channel, not one per connection.
--
-- GET  /events/:channel    subscribes if the auth service says yes: the gateway asks
--                          GET $AUTHZ_URL?channel=NAME with the caller's Cookie and
--                          Authorization; 200 is yes, 401 and 403 are passed on,
--                          anything else (or no answer in 2 s) is 503
-- POST /events/:channel    publishes the body (from 127.0.0.1 only: a stand-in for
--                          your own publisher's authentication)
-- GET  /                   a page that asks for a token and reads a channel
--
-- AUTHZ_URL is the auth service; AUTHZ_CACHE the seconds an answer is kept (10).
-- With no AUTHZ_URL, a demo service served by this script at /demo-auth stands
-- in, reached at AUTHZ_SELF (http://127.0.0.1:8080): it lets the token
-- "reader" read any channel and "news-only" read "news".
--
-- Run:   ./build/sluice examples/authz.lua
-- Try:   curl -N -H 'Authorization: Bearer reader' http://127.0.0.1:8080/events/news
--        curl -d 'hello' http://127.0.0.1:8080/events/news
--        curl -i -H 'Authorization: Bearer news-only' http://127.0.0.1:8080/events/sports   (403)
local sluice = require "sluice"

local SELF = os.getenv("AUTHZ_SELF") or "http://127.0.0.1:8080"
local AUTH_URL = os.getenv("AUTHZ_URL") or (SELF .. "/demo-auth")
local TTL = tonumber(os.getenv("AUTHZ_CACHE") or "10")
local MAX_CACHED = 10000

sluice.configure { history = 100, heartbeat = 15 }

-- (credentials, channel) -> { status =, expires = }; emptied when it grows past MAX_CACHED.
local cache, cached = {}, 0

local function pct(s) return (s:gsub("[^%w%-%._~]", function(c) return ("%%%02X"):format(c:byte()) end)) end

--- The auth service's word on this request reading channel: 200, 401, 403, or 503.
local function allowed(req, channel)
  local cookie, auth = req.headers.cookie or "", req.headers.authorization or ""
  local key = sluice.sha256(cookie .. "\0" .. auth .. "\0" .. channel)
  local hit = cache[key]
  local now = sluice.now()
  if hit and hit.expires > now then return hit.status end
  local res, err, detail = sluice.http.get(AUTH_URL .. "?channel=" .. pct(channel), {
    headers = { Cookie = req.headers.cookie, Authorization = req.headers.authorization }, timeout = 2,
  })
  local status = 503
  if res and (res.status == 200 or res.status == 401 or res.status == 403) then
    status = res.status
  elseif not res then
    sluice.log.warn("authz: the auth service did not answer: " .. err .. ": " .. detail)
  end
  if status ~= 503 then -- failures are not remembered: the next request asks again
    if cached >= MAX_CACHED then cache, cached = {}, 0 end
    if not hit then cached = cached + 1 end
    cache[key] = { status = status, expires = now + TTL }
  end
  return status
end

local function channel_ok(c) return #c <= 64 and c:match("^[%w_-]+$") ~= nil end

sluice.get("/events/:channel", function(req)
  local channel = req.params.channel
  if not channel_ok(channel) then return sluice.response(400, "bad channel name\n") end
  local status = allowed(req, channel)
  if status == 401 then return sluice.response(401, "unauthorized\n", { ["WWW-Authenticate"] = "Bearer" }) end
  if status ~= 200 then return sluice.response(status, status == 403 and "forbidden\n" or "auth service unavailable\n") end
  return sluice.subscribe("authz-" .. channel)
end)

sluice.post("/events/:channel", function(req)
  if req.remote_addr ~= "127.0.0.1" then return sluice.response(403, "publish from 127.0.0.1\n") end
  if not channel_ok(req.params.channel) then return sluice.response(400, "bad channel name\n") end
  return sluice.response(202, sluice.publish("authz-" .. req.params.channel, req.body))
end)

-- The demo auth service: Bearer tokens, and how many questions it was asked.
local asked = 0
local TOKENS = { reader = "*", ["news-only"] = "news" }
sluice.get("/demo-auth", function(req)
  asked = asked + 1
  local token = (req.headers.authorization or ""):match("^Bearer%s+(%S+)$")
    or (req.cookies and req.cookies.token)
  local may = token and TOKENS[token]
  if not may then return sluice.response(401, "") end
  if may ~= "*" and may ~= req.query.channel then return sluice.response(403, "") end
  return sluice.response(200, "")
end)
sluice.get("/demo-auth/asked", function() return sluice.response(200, tostring(asked)) end)

sluice.static("/assets", "pages/assets")
sluice.static("/", "pages/authz")
