-- mercure.lua: a Mercure hub (the protocol of draft-dunglas-mercure-08) as a route script.
--
-- GET  /.well-known/mercure?match=TOPIC            subscribe (Server-Sent Events); also
--      matchExact=, matchURLPattern= (":id" and "*") and the older topic= (URI templates)
-- POST /.well-known/mercure                        publish: a form with topic, data, and
--      optionally private, id, type, retry; answers the event's id
-- GET  /.well-known/mercure/subscriptions[/{matchType}[/{match}[/{subscriber}]]]
--      the active subscriptions (JSON-LD); each one's start and end is also
--      published as a private update on /.well-known/mercure/subscriptions/...
-- GET  /                                           a page that subscribes and publishes
--
-- Tokens are JWTs signed with HS256 (or RS256 when the key is a PEM public key),
-- read from the Authorization header ("Bearer ..."), then the access_token query
-- parameter, then the mercureAuthorization (or mercureAccessToken) cookie. Both
-- kinds of claims are understood: draft-08's authorization_details (typ at+jwt,
-- aud = the resource identifier, exp required) and the older "mercure" claim
-- ({ publish = {...}, subscribe = {...}, payload = ... }). Anonymous subscribers
-- get public updates; a subscriber's token grants private ones, and its expiry
-- ends the stream. Last-Event-ID (header, lastEventID or last_event_id query)
-- replays what was missed, filtered the same way; "earliest" replays everything kept.
--
-- Environment (Mercure's names):
--   MERCURE_PUBLISHER_JWT_KEY, MERCURE_SUBSCRIBER_JWT_KEY   keys (MERCURE_JWT_KEY sets both;
--       default: the development key "!ChangeThisMercureHubJWTSecretKey!", with a warning)
--   MERCURE_TRUSTED_ISSUER        the iss a token must carry, if it has one (default https://localhost)
--   MERCURE_RESOURCE_IDENTIFIER   the hub's aud (default https://localhost/.well-known/mercure)
--   MERCURE_ANONYMOUS             "0" refuses subscribers without a token (default: allowed)
--   MERCURE_HISTORY               updates kept for replay (default 1000)
--   MERCURE_CORS_ORIGINS          space-separated origins allowed to subscribe with cookies
--
-- Everything a subscription needs lives in the gateway (the hub's filter, the
-- connection's conn.data), so editing this file while subscribers are connected
-- (--watch or SIGHUP) drops none of them, and the subscriptions API still lists them.
--
-- Run:   ./build/sluice --watch examples/mercure.lua
-- Try:   curl -N 'http://127.0.0.1:8080/.well-known/mercure?match=https://example.com/books/1'
--        open http://127.0.0.1:8080/ in a browser (it signs development tokens itself)
--        docs/guides/mercure.md shows publishing with curl and a token
local sluice = require "sluice"

local DEV_KEY = "!ChangeThisMercureHubJWTSecretKey!"
local function env(name, default)
  local v = os.getenv(name)
  if v == nil or v == "" then return default end
  return v
end
local PUBLISHER_KEY = env("MERCURE_PUBLISHER_JWT_KEY", env("MERCURE_JWT_KEY", DEV_KEY))
local SUBSCRIBER_KEY = env("MERCURE_SUBSCRIBER_JWT_KEY", env("MERCURE_JWT_KEY", DEV_KEY))
local ISSUER = env("MERCURE_TRUSTED_ISSUER", "https://localhost")
local RESOURCE = env("MERCURE_RESOURCE_IDENTIFIER", "https://localhost/.well-known/mercure")
local ANONYMOUS = env("MERCURE_ANONYMOUS", "1") ~= "0"
local ORIGIN = RESOURCE:match("^(%a[%w+.-]*://[^/]+)") or "https://localhost" -- relative topics resolve here
local HUB = "/.well-known/mercure"
local CHANNEL = "mercure" -- every update goes here; subscribers select by topic
local MAX_MATCHERS, MAX_LEN = 64, 2048

if PUBLISHER_KEY == DEV_KEY or SUBSCRIBER_KEY == DEV_KEY then
  sluice.log.warn("mercure: using the development JWT key; set MERCURE_PUBLISHER_JWT_KEY and MERCURE_SUBSCRIBER_JWT_KEY")
end

local origins = {}
for o in env("MERCURE_CORS_ORIGINS", ""):gmatch("%S+") do origins[#origins + 1] = o end
sluice.configure {
  history = tonumber(env("MERCURE_HISTORY", "1000")),
  heartbeat = 40,
  cors = #origins > 0 and { origins = origins, credentials = true } or nil,
}

-- ---------------------------------------------------------------- helpers

local function plain(status, text, headers)
  return sluice.response(status, text .. "\n", headers)
end

-- 401 / 403 / 400 in the form of RFC 6750.
local function challenge(status, err, text)
  local h = 'Bearer resource_metadata="' .. RESOURCE:gsub("/%.well%-known/mercure$", "") ..
    '/.well-known/oauth-protected-resource/.well-known/mercure"'
  if err then h = h .. ', error="' .. err .. '"' end
  return plain(status, text, { ["WWW-Authenticate"] = h })
end

-- One value of a query or form field (nil if absent, false if given twice).
local function one(v)
  if type(v) == "table" then return false end
  return v
end
local function list(v)
  if v == nil then return {} end
  if type(v) == "table" then return v end
  return { v }
end

-- Valid UTF-8.
local function utf8_ok(s)
  local i, n = 1, #s
  while i <= n do
    local c = s:byte(i)
    local len = c < 0x80 and 1 or (c >= 0xC2 and c < 0xE0) and 2 or (c >= 0xE0 and c < 0xF0) and 3 or
      (c >= 0xF0 and c < 0xF5) and 4 or 0
    if len == 0 or i + len - 1 > n then return false end
    for k = i + 1, i + len - 1 do
      local b = s:byte(k)
      if b < 0x80 or b > 0xBF then return false end
    end
    i = i + len
  end
  return true
end

-- A topic or matcher: UTF-8 without C0, DEL or C1 control characters, not too long.
local function clean(s)
  if type(s) ~= "string" or s == "" or #s > MAX_LEN then return false end
  if s:find("[%z\1-\31\127]") or s:find("\194[\128-\159]") then return false end
  return utf8_ok(s)
end

-- RFC 3986 percent-encoding of everything but the unreserved characters.
local function pct(s)
  return (s:gsub("[^%w%-%._~]", function(c) return ("%%%02X"):format(c:byte()) end))
end

local function absolute(topic)
  if topic:sub(1, 1) == "/" and topic:sub(2, 2) ~= "/" then return ORIGIN .. topic end
  return topic
end

-- A topic matcher (matchType, text) as a selector for sluice.subscribe, or nil
-- if the gateway cannot take it (a malformed template, an unsupported URL pattern).
local function selector(match_type, text)
  if text == "*" then return "*" end
  if match_type == "Exact" then return { exact = text } end
  local sel = text -- the older topic= and "mercure" claim: URI templates (or exact topics)
  if match_type == "URLPattern" then sel = { urlpattern = absolute(text) } end -- relative ones resolve against the hub's origin
  return pcall(sluice.topic_matches, sel, "") and sel or nil
end

local function selects(sels, topic)
  if not sels then return false end
  local abs = absolute(topic)
  for _, s in ipairs(sels) do
    if sluice.topic_matches(s, topic) or (abs ~= topic and sluice.topic_matches(s, abs)) then return true end
  end
  return false
end

-- ---------------------------------------------------------------- tokens

local function token_of(req)
  local auth = req.headers.authorization
  if auth then return auth:match("^[Bb]earer +([%w%-_%.]+) *$") or false end
  local q = req.query.access_token
  if q ~= nil then return one(q) end
  local c = req.cookies
  return c and (c.mercureAuthorization or c.mercureAccessToken) or nil
end

local function audience_ok(aud)
  if type(aud) == "string" then return aud == RESOURCE end
  if type(aud) == "table" then
    for _, a in ipairs(aud) do if a == RESOURCE then return true end end
  end
  return false
end

-- The rights a token gives: { publish = selectors, subscribe = selectors,
-- payloads = { { selectors, payload } ... }, sub = , exp = }, or nil and why.
local function rights_of(token, key)
  local alg = key:find("-----BEGIN", 1, true) and "RS256" or "HS256"
  local claims, header = sluice.jwt.verify(token, key, { alg = alg, leeway = 1 })
  if not claims then return nil, header end
  if claims.iss ~= nil and claims.iss ~= ISSUER then return nil, "untrusted issuer" end
  if claims.aud ~= nil and not audience_ok(claims.aud) then return nil, "wrong audience" end
  local r = { publish = {}, subscribe = {}, payloads = {}, exp = claims.exp,
    sub = type(claims.sub) == "string" and claims.sub ~= "" and claims.sub or nil }
  local details = claims.authorization_details
  if details ~= nil then
    if header.typ ~= "at+jwt" and header.typ ~= "application/at+jwt" then return nil, "typ is not at+jwt" end
    if type(claims.exp) ~= "number" then return nil, "no exp" end
    if not audience_ok(claims.aud) then return nil, "wrong audience" end
    if type(details) ~= "table" or #details > 64 then return nil, "bad authorization_details" end
    for _, d in ipairs(details) do
      if type(d) ~= "table" then return nil, "bad authorization detail" end
      if d.type == "mercure" then
        if type(d.actions) ~= "table" or #d.actions == 0 or type(d.topics) ~= "table" or #d.topics == 0
          or #d.topics > MAX_MATCHERS then
          return nil, "bad mercure authorization detail"
        end
        local sels = {}
        for _, t in ipairs(d.topics) do
          local mt = type(t) == "table" and (t.matchType == nil and "Exact" or t.matchType)
          if not (mt == "Exact" or mt == "URLPattern") or not clean(t.match) then return nil, "bad topic matcher" end
          local s = selector(mt, t.match)
          if not s then return nil, "unsupported URL pattern" end
          sels[#sels + 1] = s
        end
        for _, a in ipairs(d.actions) do
          if a ~= "publish" and a ~= "subscribe" then return nil, "bad action" end
          for _, s in ipairs(sels) do table.insert(r[a], s) end
        end
        if d.payload ~= nil then
          if type(d.payload) ~= "table" then return nil, "bad payload" end
          r.payloads[#r.payloads + 1] = { sels, d.payload }
        end
      end
    end
  elseif type(claims.mercure) == "table" then
    local m = claims.mercure
    r.legacy = true
    for _, a in ipairs { "publish", "subscribe" } do
      if m[a] ~= nil and type(m[a]) ~= "table" then return nil, "bad mercure." .. a end
      for _, s in ipairs(m[a] or {}) do
        if type(s) ~= "string" or not clean(s) then return nil, "bad mercure." .. a end
        local sel = selector("URITemplate", s)
        if not sel then return nil, "bad selector" end
        table.insert(r[a], sel)
      end
    end
    if m.payload ~= nil then r.payloads[1] = { { "*" }, m.payload } end
  end
  return r
end

-- Reads the request's token with key: rights, or nil (anonymous), or a response.
local function authenticate(req, key, required)
  local token = token_of(req)
  if token == false then return nil, challenge(400, "invalid_request", "malformed token") end
  if token == nil then
    if required then return nil, challenge(401, nil, "a token is required") end
    return nil
  end
  local r, why = rights_of(token, key)
  if not r then
    sluice.log.debug("mercure: token refused:", why)
    return nil, challenge(401, "invalid_token", "invalid token")
  end
  return r
end

-- ---------------------------------------------------------------- subscriptions

local function subscription_id(match_type, match, subscriber)
  return HUB .. "/subscriptions/" .. match_type .. "/" .. pct(match) .. "/" .. pct(subscriber)
end

local function document(s, subscriber, active)
  local doc = {
    ["@context"] = "https://mercure.rocks/",
    id = subscription_id(s.matchType, s.match, subscriber),
    type = "Subscription",
    matchType = s.matchType,
    match = s.match,
    subscriber = subscriber,
    active = active,
  }
  if s.payload ~= nil then doc.payload = s.payload end
  return doc
end

-- Publishes a subscription's start or end as a private update about itself.
local function announce(data, active)
  if type(data) ~= "table" or type(data.subs) ~= "table" then return end
  for _, s in ipairs(data.subs) do
    local doc = document(s, data.subscriber, active)
    sluice.publish(CHANNEL, sluice.json.encode(doc), { topics = { doc.id, absolute(doc.id) }, private = true })
  end
end

local function uuid()
  local b = { sluice.random_bytes(16):byte(1, 16) }
  b[7] = b[7] % 16 + 0x40
  b[9] = b[9] % 64 + 0x80
  local h = ("%02x"):rep(16):format(unpack(b))
  return ("urn:uuid:%s-%s-%s-%s-%s"):format(h:sub(1, 8), h:sub(9, 12), h:sub(13, 16), h:sub(17, 20), h:sub(21))
end

local MATCH_TYPES = { match = "Exact", matchExact = "Exact", matchURLPattern = "URLPattern" }

sluice.get(HUB, function(req)
  local rights, res = authenticate(req, SUBSCRIBER_KEY, not ANONYMOUS)
  if res then return res end
  local subs, match = {}, {}
  for name, values in pairs(req.query) do
    local mt
    if name:lower():sub(1, 5) == "match" then
      mt = MATCH_TYPES[name]
      if not mt then return challenge(400, "invalid_request", "unknown topic matcher type " .. name) end
    elseif name == "topic" then
      mt = "URITemplate" -- the older protocol's topic selectors
    end
    if mt then
      for _, v in ipairs(list(values)) do
        if not clean(v) then return challenge(400, "invalid_request", "bad topic matcher") end
        local sel = selector(mt, v)
        if not sel then
          return challenge(400, "invalid_request", "unsupported topic matcher " .. v)
        end
        match[#match + 1] = sel
        subs[#subs + 1] = { matchType = mt, match = v }
      end
    end
  end
  if #subs == 0 then return challenge(400, "invalid_request", "missing topic matcher (match=...)") end
  if #subs > MAX_MATCHERS then return challenge(400, "invalid_request", "too many topic matchers") end
  if rights and rights.exp and rights.exp <= os.time() then return challenge(401, "invalid_token", "invalid token") end

  -- The token's payloads: the first whose topics select the subscription's own matcher.
  for _, s in ipairs(subs) do
    for _, p in ipairs(rights and rights.payloads or {}) do
      if selects(p[1], s.match) then
        s.payload = p[2]
        break
      end
    end
  end

  local lid = req.headers["last-event-id"] or one(req.query.lastEventID) or one(req.query.last_event_id) or nil
  local headers = { ["Cache-Control"] = "private, no-cache, no-store" }
  if lid then headers["Last-Event-ID"] = (lid ~= "earliest" and sluice.kept(CHANNEL, lid)) and lid or "earliest" end
  local data = { subscriber = rights and rights.sub or uuid(), subs = subs }
  announce(data, true)
  return sluice.subscribe(CHANNEL, {
    match = match,
    grants = rights and rights.subscribe or nil,
    last_event_id = lid,
    expires_at = rights and rights.exp or nil,
    headers = headers,
    data = data,
    on_close = function(conn) announce(conn.data, false) end,
  })
end)

-- ---------------------------------------------------------------- publishing

local function reserved(topic)
  local path = absolute(topic):match("^%a[%w+.-]*://[^/]*(/[^?#]*)") or topic:match("^(/[^?#]*)")
  return path ~= nil and (path == HUB or path:sub(1, #HUB + 1) == HUB .. "/")
end

sluice.post(HUB, function(req)
  local rights, res = authenticate(req, PUBLISHER_KEY, true)
  if res then return res end
  local form = sluice.form.decode(req.body)
  if not form then return challenge(400, "invalid_request", "the body is not a form") end
  local topics = list(form.topic)
  if #topics == 0 then return challenge(400, "invalid_request", "missing topic") end
  -- draft-08: exactly one topic; a token with the older "mercure" claim may name several
  if #topics > 1 and not rights.legacy then return challenge(400, "invalid_request", "more than one topic") end
  for _, t in ipairs(topics) do
    if not clean(t) then return challenge(400, "invalid_request", "bad topic") end
    if reserved(t) then return challenge(403, "insufficient_scope", "the hub's own topics are reserved") end
    if not selects(rights.publish, t) then return challenge(403, "insufficient_scope", "not allowed to publish to " .. t) end
  end
  local data, id, typ, retry = one(form.data), one(form.id), one(form.type), one(form.retry)
  if data == false or id == false or typ == false or retry == false then
    return challenge(400, "invalid_request", "a field is given twice")
  end
  if data and not utf8_ok(data) then return challenge(400, "invalid_request", "data is not UTF-8") end
  if id and (id == "" or id:sub(1, 1) == "#" or id:find("[%z\r\n]") or id == "earliest") then
    return challenge(400, "invalid_request", "bad id")
  end
  if typ and typ:find("[\r\n]") then return challenge(400, "invalid_request", "bad type") end
  if retry and not retry:find("^%d+$") or retry and #retry > 10 then
    return challenge(400, "invalid_request", "bad retry")
  end
  local all = {}
  for _, t in ipairs(topics) do
    all[#all + 1] = t
    if absolute(t) ~= t then all[#all + 1] = absolute(t) end
  end
  local published, err = sluice.publish(CHANNEL, sluice.message(data or "", {
    id = id, event = typ ~= "" and typ or nil, retry = retry and tonumber(retry) or nil,
  }), { topics = all, private = form.private ~= nil })
  if not published then return plain(503, "not published: " .. tostring(err)) end
  return plain(200, published, { ["Content-Type"] = "text/plain" })
end)

-- ---------------------------------------------------------------- subscriptions API

local function active()
  local out = {}
  for _, conn in ipairs(sluice.connections { route = HUB }) do
    local data = conn.data
    if type(data.subs) == "table" then
      for _, s in ipairs(data.subs) do out[#out + 1] = document(s, data.subscriber, true) end
    end
  end
  return out
end

local function api(req, pick)
  local rights, res = authenticate(req, SUBSCRIBER_KEY, true)
  if res then return res end
  if not selects(rights.subscribe, req.raw_path) then
    return challenge(403, "insufficient_scope", "not allowed to read " .. req.raw_path)
  end
  local list_ = {}
  for _, doc in ipairs(active()) do
    if pick(doc) then list_[#list_ + 1] = doc end
  end
  local last = sluice.last_event_id() or "earliest"
  local body
  if req.params.subscriber then
    if #list_ == 0 then return plain(404, "no such subscription") end
    body = list_[1]
    body.lastEventID = last
  else
    for _, doc in ipairs(list_) do doc["@context"] = nil end
    body = { ["@context"] = "https://mercure.rocks/", id = req.raw_path, type = "Subscriptions", lastEventID = last,
      subscriptions = sluice.json.array(list_) }
  end
  return sluice.response(200, sluice.json.encode(body), {
    ["Content-Type"] = "application/ld+json",
    ["Link"] = "<" .. HUB .. '>; rel="mercure"',
    ["Cache-Control"] = "must-revalidate",
  })
end

sluice.get(HUB .. "/subscriptions", function(req) return api(req, function() return true end) end)
sluice.get(HUB .. "/subscriptions/:type/:match", function(req)
  return api(req, function(d) return d.matchType == req.params.type and d.match == req.params.match end)
end)
sluice.get(HUB .. "/subscriptions/:type/:match/:subscriber", function(req)
  local p = req.params
  return api(req, function(d) return d.matchType == p.type and d.match == p.match and d.subscriber == p.subscriber end)
end)

-- Protected resource metadata (RFC 9728): where clients learn the hub's audience.
sluice.get("/.well-known/oauth-protected-resource" .. HUB, function()
  return sluice.response(200, {
    resource = RESOURCE,
    bearer_methods_supported = { "header", "query" },
    mercure_cookie = true,
    mercure_version = 8,
  })
end)

sluice.get("/health", function() return sluice.response(200, "ok") end)

-- The web page (examples/pages/mercure) and the stylesheet the pages share.
sluice.static("/assets", "pages/assets")
sluice.static("/", "pages/mercure")
