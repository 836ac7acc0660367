-- mercure.lua: a Mercure hub (the Mercure protocol, draft-dunglas-mercure-08) as a route script.
--
-- GET  /.well-known/mercure?match=TOPIC            subscribe (Server-Sent Events); also
--      match_exact= (the same) and match_urlpattern= (URL patterns: ":id" and "*")
-- POST /.well-known/mercure                        publish: a form with one or more topic
--      (the first canonical, the others alternate), data, and optionally private, id,
--      type, retry; answers the update's id (text/plain)
-- GET  /.well-known/mercure/subscriptions[/{match_type}[/{match}[/{subscriber}]]]
--      the active subscriptions (JSON); each one's start and end is also
--      published as a private update (event type "mercure") on the same path
-- GET  /.well-known/oauth-protected-resource/.well-known/mercure
--      the hub's protected resource metadata (RFC 9728)
-- GET  /                                           a page that subscribes and publishes
--
-- Tokens are JWT access tokens (typ at+jwt) signed with HS256 (or RS256 when the
-- key is a PEM public key), with iss, aud (the resource identifier) and exp, whose
-- authorization_details of type https://mercure.rocks/authorization-detail grant
-- "publish" and "subscribe" on topic matchers. They are read from the
-- Authorization header ("Bearer ..."), else from the cookie MERCURE_COOKIE.
-- Anonymous subscribers get public updates; a subscriber's token grants private
-- ones, replays are filtered by the token presented now, and the token's expiry
-- ends the stream. Last-Event-ID (the header, else the last_event_id query
-- parameter) replays what was missed; "earliest" replays everything kept; the
-- answer's Mercure-Last-Event-ID says where the replay started. Ids the hub
-- gives are urn:uuid: UUIDv7s (they sort by time).
--
-- Forms of the protocol from before its standardization are still accepted:
-- the topic= query parameter (URI templates), the "mercure" claim in any signed
-- JWT ({ publish = {...}, subscribe = {...}, payload = ... }), the lastEventID
-- query parameter and the mercureAuthorization cookie; the Last-Event-ID
-- response header is sent beside Mercure-Last-Event-ID. A token in the URL is not.
--
-- Environment (Mercure's names):
--   MERCURE_PUBLISHER_JWT_KEY, MERCURE_SUBSCRIBER_JWT_KEY   keys (MERCURE_JWT_KEY sets both;
--       default: the development key "!ChangeThisMercureHubJWTSecretKey!", with a warning)
--   MERCURE_TRUSTED_ISSUER        the iss a token must carry (default https://localhost)
--   MERCURE_RESOURCE_IDENTIFIER   the hub's aud and URL (default https://localhost/.well-known/mercure):
--                                 relative topics resolve against it
--   MERCURE_COOKIE                the cookie that may carry the token (default __Secure-mercure_access_token)
--   MERCURE_ANONYMOUS             "0" refuses subscribers without a token (default: allowed)
--   MERCURE_HISTORY               updates kept for replay (default 1000)
--   MERCURE_CORS_ORIGINS          space-separated origins allowed to subscribe with cookies
--
-- Limits: 64 topic matchers a subscription and 2,048 bytes a matcher (400 past
-- them); 64 topics an update, 2,048 bytes a topic, 1,024 an id or a type (413
-- past them); a token of 32 authorization details with 64 matchers each.
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
local COOKIE = env("MERCURE_COOKIE", "__Secure-mercure_access_token")
local ANONYMOUS = env("MERCURE_ANONYMOUS", "1") ~= "0"
local HUB = "/.well-known/mercure"
local METADATA = "/.well-known/oauth-protected-resource" .. HUB
local DETAIL_TYPE = "https://mercure.rocks/authorization-detail"
local CHANNEL = "mercure" -- every update goes here; subscribers select by topic
local MAX_MATCHERS, MAX_LEN, MAX_TOPICS, MAX_FIELD, MAX_DETAILS = 64, 2048, 64, 1024, 32
local ORIGIN = RESOURCE:match("^(%a[%w+.-]*://[^/?#]*)") or "https://localhost"
-- Topics as URL patterns see them: resolved against the hub's URL, and marked
-- with a byte no topic may hold, so that exact matchers never see them.
local RESOLVED = "\1"

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

-- ---------------------------------------------------------------- text

local function plain(status, text, headers)
  headers = headers or {}
  headers["Content-Type"] = headers["Content-Type"] or "text/plain; charset=utf-8"
  return sluice.response(status, text, headers)
end

-- 401 / 403 / 400 in the form of RFC 6750, pointing at the metadata (RFC 9728).
local function challenge(status, err, text)
  local h = 'Bearer resource_metadata="' .. ORIGIN .. METADATA .. '"'
  if err then h = h .. ', error="' .. err .. '"' end
  return plain(status, text .. "\n", { ["WWW-Authenticate"] = h })
end
local function bad(text) return plain(400, text .. "\n") end
local function too_large(text) return plain(413, text .. "\n") end

-- The first value of a query or form field (nil if absent).
local function first(v)
  if type(v) == "table" then return v[1] end
  return v
end
local function list(v)
  if v == nil then return {} end
  if type(v) == "table" then return v end
  return { v }
end

-- Unicode's format characters (general category Cf), as code point ranges.
local FORMAT = { { 0xAD, 0xAD }, { 0x600, 0x605 }, { 0x61C, 0x61C }, { 0x6DD, 0x6DD }, { 0x70F, 0x70F },
  { 0x890, 0x891 }, { 0x8E2, 0x8E2 }, { 0x180E, 0x180E }, { 0x200B, 0x200F }, { 0x202A, 0x202E },
  { 0x2060, 0x2064 }, { 0x2066, 0x206F }, { 0xFEFF, 0xFEFF }, { 0xFFF9, 0xFFFB }, { 0x110BD, 0x110BD },
  { 0x110CD, 0x110CD }, { 0x13430, 0x1343F }, { 0x1BCA0, 0x1BCA3 }, { 0x1D173, 0x1D17A }, { 0xE0001, 0xE0001 },
  { 0xE0020, 0xE007F } }
local function format_char(cp)
  for _, r in ipairs(FORMAT) do
    if cp >= r[1] and cp <= r[2] then return true end
  end
  return false
end

-- Valid UTF-8; with controls false, also without C0, DEL, C1 and format characters.
local function text_ok(s, controls)
  local i, n = 1, #s
  while i <= n do
    local c = s:byte(i)
    local len, cp = 1, c
    if c >= 0xC2 and c < 0xE0 then len, cp = 2, c % 0x20
    elseif c >= 0xE0 and c < 0xF0 then len, cp = 3, c % 0x10
    elseif c >= 0xF0 and c < 0xF5 then len, cp = 4, c % 0x08
    elseif c >= 0x80 then return false end
    if i + len - 1 > n then return false end
    for k = i + 1, i + len - 1 do
      local b = s:byte(k)
      if b < 0x80 or b > 0xBF then return false end
      cp = cp * 64 + b % 64
    end
    if (len == 3 and (cp < 0x800 or (cp >= 0xD800 and cp <= 0xDFFF))) or (len == 4 and (cp < 0x10000 or cp > 0x10FFFF)) then
      return false
    end
    if not controls and (cp < 0x20 or (cp >= 0x7F and cp <= 0x9F) or format_char(cp)) then return false end
    i = i + len
  end
  return true
end

-- A topic or a matcher: not empty, UTF-8 without control or format characters.
local function clean(s) return type(s) == "string" and s ~= "" and text_ok(s, false) end

-- RFC 3986 percent-encoding of everything but the unreserved characters (RFC 6570's {var}).
local function pct(s)
  return (s:gsub("[^%w%-%._~]", function(c) return ("%%%02X"):format(c:byte()) end))
end

-- ---------------------------------------------------------------- URLs

local SPECIAL = { http = true, https = true, ws = true, wss = true, ftp = true, file = true }
local HUB_DIR = HUB:match("^(.*/)") -- what a relative path resolves under
local BASE_SCHEME = ORIGIN:match("^[^:]+"):lower()

-- Dot-segments removed and percent-encoded unreserved characters decoded (RFC 3986).
local function normal_path(path)
  path = path:gsub("%%(%x%x)", function(h)
    local c = string.char(tonumber(h, 16))
    return c:find("^[%w%-%._~]$") and c or "%" .. h
  end)
  local out = {}
  local segs = {}
  for seg in (path .. "/"):gmatch("([^/]*)/") do segs[#segs + 1] = seg end
  for k, seg in ipairs(segs) do
    local last = k == #segs
    if seg == "." then
      if last then out[#out + 1] = "" end
    elseif seg == ".." then
      if #out > 1 then out[#out] = nil end
      if last then out[#out + 1] = "" end
    else
      out[#out + 1] = seg
    end
  end
  local p = table.concat(out, "/")
  return p:sub(1, 1) == "/" and p or "/" .. p
end

-- The topic resolved against the hub's URL, as the URL parser does it: the
-- absolute URL (its scheme, authority and path; query and fragment kept) and
-- its path, or nil for a path that cannot name a hub resource (an opaque one).
local function resolve(t)
  t = t:gsub("^ +", ""):gsub(" +$", "")
  local scheme, rest = t:match("^(%a[%w+.-]*):(.*)$")
  if scheme and scheme:lower() == BASE_SCHEME and not rest:find("^[/\\]") then
    t, scheme, rest = rest, nil, nil -- "https:path" against an https base is a relative reference
  end
  local special = scheme == nil or SPECIAL[scheme:lower()]
  if special then rest = (rest or t):gsub("\\", "/") end
  local auth, tail
  if scheme and special then
    auth, tail = rest:match("^/*([^/?#]*)(.*)$")
  elseif scheme then
    auth, tail = rest:match("^//([^/?#]*)(.*)$")
    if not auth then
      if rest:sub(1, 1) ~= "/" then return t, nil end -- an opaque path (urn:..., mailto:...)
      auth, tail = "", rest
    end
  elseif rest:sub(1, 2) == "//" then
    auth, tail = rest:match("^//([^/?#]*)(.*)$")
  else
    local path, after = rest:match("^([^?#]*)(.*)$")
    if path == "" then
      path = HUB
    elseif path:sub(1, 1) ~= "/" then
      path = HUB_DIR .. path
    end
    path = normal_path(path)
    return ORIGIN .. path .. after, path
  end
  local path, after = tail:match("^([^?#]*)(.*)$")
  path = normal_path(path)
  return (scheme and scheme:lower() or BASE_SCHEME) .. "://" .. auth .. path .. after, path
end

-- Whether a resolved topic's path names a resource of the hub's own (its URL's path or below).
local function reserved(path)
  return path ~= nil and (path == HUB or path:sub(1, #HUB + 1) == HUB .. "/")
end

-- The topics of an update as the hub matches them: each as it is (for exact
-- matchers and older URI templates) and resolved (for URL patterns; the
-- resolved URLs given, or made here).
local function hub_topics(topics, urls)
  local all = {}
  for i, t in ipairs(topics) do
    all[#all + 1] = t
    all[#all + 1] = RESOLVED .. (urls and urls[i] or (resolve(t)))
  end
  return all
end

-- A topic matcher (match_type, text) as a selector for sluice.subscribe, or nil
-- if it is malformed.
local function selector(match_type, text)
  if text == "*" then return "*" end
  local sel
  if match_type == "exact" then sel = { exact = text }
  elseif match_type == "urlpattern" then sel = { urlpattern = RESOLVED .. (resolve(text)) }
  else sel = text end -- the older topic= and "mercure" claim: URI templates (or exact topics)
  return pcall(sluice.topic_matches, sel, "") and sel or nil
end

-- Whether one of the selectors selects one of all[from..to] (topics as hub_topics gives them).
local function selects_any(sels, all, from, to)
  for _, s in ipairs(sels or {}) do
    for i = from, to do
      if sluice.topic_matches(s, all[i]) then return true end
    end
  end
  return false
end

-- Whether one of the selectors selects one of the topics.
local function selects(sels, topics)
  local all = hub_topics(topics)
  return selects_any(sels, all, 1, #all)
end

-- ---------------------------------------------------------------- ids

-- A urn:uuid: UUIDv7: 48 bits of milliseconds, then a counter within the
-- millisecond and random bits, so ids sort by time.
local clock_offset = os.time() - sluice.now()
local last_ms, count = 0, 0
local function uuid7()
  local ms = math.floor((sluice.now() + clock_offset) * 1000)
  if ms <= last_ms then
    count = count + 1
    if count > 0xFFF then last_ms, count = last_ms + 1, 0 end
    ms = last_ms
  else
    last_ms, count = ms, 0
  end
  local r = { sluice.random_bytes(8):byte(1, 8) }
  local hex = ("%012x"):format(ms)
  return ("urn:uuid:%s-%s-7%03x-%02x%02x-%02x%02x%02x%02x%02x%02x"):format(hex:sub(1, 8), hex:sub(9, 12), count,
    0x80 + r[1] % 64, r[2], r[3], r[4], r[5], r[6], r[7], r[8])
end

-- A random subscriber identifier (UUIDv4), one per connection.
local function uuid4()
  local b = { sluice.random_bytes(16):byte(1, 16) }
  b[7] = b[7] % 16 + 0x40
  b[9] = b[9] % 64 + 0x80
  local h = ("%02x"):rep(16):format(unpack(b))
  return ("urn:uuid:%s-%s-%s-%s-%s"):format(h:sub(1, 8), h:sub(9, 12), h:sub(13, 16), h:sub(17, 20), h:sub(21))
end

-- ---------------------------------------------------------------- tokens

-- The token and where it came from ("header", "cookie"), nil if none, or false if malformed.
local function token_of(req)
  local auth = req.headers.authorization
  if auth then
    local scheme, tok = auth:match("^(%a+) +([%w%-_%.~+/]+=*) *$")
    if not scheme or scheme:lower() ~= "bearer" then return false end
    return tok, "header"
  end
  local c = req.cookies
  local tok = c and (c[COOKIE] or c.mercureAuthorization)
  if tok then return tok, "cookie" end
  return nil
end

local function audience_ok(aud)
  if type(aud) == "string" then return aud == RESOURCE end
  if type(aud) == "table" then
    for _, a in ipairs(aud) do if a == RESOURCE then return true end end
  end
  return false
end

-- The selectors of a Mercure authorization detail's topics, or nil and why.
local function detail_selectors(topics)
  if type(topics) ~= "table" or #topics == 0 or #topics > MAX_MATCHERS then return nil, "bad topics" end
  local sels = {}
  for _, t in ipairs(topics) do
    if type(t) ~= "table" or not clean(t.match) or #t.match > MAX_LEN then return nil, "bad topic matcher" end
    local mt = t.match_type == nil and "exact" or t.match_type
    if mt ~= "exact" and mt ~= "urlpattern" then return nil, "unsupported match_type" end
    local s = selector(mt, t.match)
    if not s then return nil, "malformed " .. mt .. " matcher" end
    sels[#sels + 1] = s
  end
  return sels
end

-- The rights a current token gives, from its authorization_details.
local function detail_rights(r, details)
  if type(details) ~= "table" or #details > MAX_DETAILS then return nil, "bad authorization_details" end
  for _, d in ipairs(details) do
    if type(d) ~= "table" then return nil, "bad authorization detail" end
    if d.type == DETAIL_TYPE then
      if type(d.actions) ~= "table" or #d.actions == 0 then return nil, "bad actions" end
      local sels, why = detail_selectors(d.topics)
      if not sels then return nil, why end
      local subscribe = false
      for _, a in ipairs(d.actions) do
        if type(a) ~= "string" then return nil, "bad action" end
        if r[a] then -- publish or subscribe; other actions grant nothing
          for _, s in ipairs(sels) do table.insert(r[a], s) end
          subscribe = subscribe or a == "subscribe"
        end
      end
      if d.payload ~= nil and type(d.payload) ~= "table" then return nil, "bad payload" end
      if subscribe then r.payloads[#r.payloads + 1] = { sels, d.payload } end
    end
  end
  return r
end

-- The rights the older "mercure" claim gives (URI templates, any signed JWT).
local function legacy_rights(r, m)
  for _, a in ipairs { "publish", "subscribe" } do
    if m[a] ~= nil and type(m[a]) ~= "table" then return nil, "bad mercure." .. a end
    for _, s in ipairs(m[a] or {}) do
      local sel = clean(s) and #s <= MAX_LEN and selector("template", s)
      if not sel then return nil, "bad mercure." .. a end
      table.insert(r[a], sel)
    end
  end
  if m.payload ~= nil then r.payloads[1] = { { "*" }, m.payload } end
  return r
end

-- The rights a token gives: { publish = selectors, subscribe = selectors,
-- payloads = { { selectors, payload or nil } ... }, exp = }, or nil and why.
local function rights_of(token, key)
  local alg = key:find("-----BEGIN", 1, true) and "RS256" or "HS256"
  local claims, header = sluice.jwt.verify(token, key, { alg = alg, leeway = 1 })
  if not claims then return nil, header end
  local r = { publish = {}, subscribe = {}, payloads = {}, exp = claims.exp }
  if claims.authorization_details == nil and type(claims.mercure) == "table" then
    -- a token of the protocol before its standardization: iss and aud are checked when present
    if claims.iss ~= nil and claims.iss ~= ISSUER then return nil, "untrusted issuer" end
    if claims.aud ~= nil and not audience_ok(claims.aud) then return nil, "wrong audience" end
    return legacy_rights(r, claims.mercure)
  end
  local typ = type(header.typ) == "string" and header.typ:lower():gsub("^application/", "") or nil
  if typ ~= "at+jwt" then return nil, "typ is not at+jwt" end
  if type(claims.exp) ~= "number" then return nil, "no exp" end
  if claims.iss ~= ISSUER then return nil, "untrusted issuer" end
  if not audience_ok(claims.aud) then return nil, "wrong audience" end
  if claims.authorization_details == nil then return r end -- valid, and grants nothing
  return detail_rights(r, claims.authorization_details)
end

-- Reads the request's token with key: rights, or nil (anonymous), or a response.
local function authenticate(req, key, required)
  local token, from = token_of(req)
  if token == false then return nil, challenge(400, "invalid_request", "malformed Authorization header") end
  if token == nil then
    if required then return nil, challenge(401, nil, "a token is required") end
    return nil
  end
  local r, why = rights_of(token, key)
  if not r then
    sluice.log.debug("mercure: token refused:", why)
    return nil, challenge(401, "invalid_token", "invalid token")
  end
  r.from = from
  return r
end

-- ---------------------------------------------------------------- subscriptions

local function subscription_topic(match_type, match, subscriber)
  return HUB .. "/subscriptions/" .. match_type .. "/" .. pct(match) .. "/" .. pct(subscriber)
end

local function document(s, subscriber, active)
  local doc = {
    id = subscription_topic(s.match_type, s.match, subscriber),
    type = "subscription",
    match_type = s.match_type,
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
    sluice.publish(CHANNEL, sluice.message(sluice.json.encode(doc), { id = uuid7(), event = "mercure" }),
      { topics = hub_topics { doc.id }, private = true })
  end
end

-- The Link header of discovery: the hub, and the cursor to subscribe from.
local function hub_link(extra)
  return "<" .. RESOURCE .. '>; rel="mercure"; last-event-id="' .. (sluice.last_event_id() or "earliest") .. '"'
    .. (extra or "")
end

local MATCH_TYPES = { match = "exact", match_exact = "exact", match_urlpattern = "urlpattern" }

sluice.get(HUB, function(req)
  local rights, res = authenticate(req, SUBSCRIBER_KEY, not ANONYMOUS)
  if res then return res end
  local subs, match = {}, {}
  for name, values in pairs(req.query) do
    local mt
    if name:lower():sub(1, 5) == "match" then
      mt = MATCH_TYPES[name]
      if not mt then return bad("unsupported topic matcher type: " .. name) end
    elseif name == "topic" then
      mt = "template" -- the protocol before its standardization: URI templates
    end
    for _, v in ipairs(mt and list(values) or {}) do
      if #v > MAX_LEN then return bad("a topic matcher is longer than " .. MAX_LEN .. " bytes") end
      if not clean(v) then return bad("a topic matcher holds a control or format character, or is not UTF-8") end
      local sel = selector(mt, v)
      if not sel then return bad("malformed " .. mt .. " matcher: " .. v) end
      match[#match + 1] = sel
      subs[#subs + 1] = { match_type = mt == "template" and "exact" or mt, match = v }
    end
  end
  if #subs == 0 then return bad("missing topic matcher (match=...)") end
  if #subs > MAX_MATCHERS then return bad("more than " .. MAX_MATCHERS .. " topic matchers") end
  if rights and rights.exp and rights.exp <= os.time() then return challenge(401, "invalid_token", "invalid token") end

  -- The token's payloads: the first subscribe grant whose topics select the subscription's own matcher.
  for _, s in ipairs(subs) do
    for _, p in ipairs(rights and rights.payloads or {}) do
      if selects(p[1], { s.match }) then
        s.payload = p[2]
        break
      end
    end
  end

  local lid = req.headers["last-event-id"] or first(req.query.last_event_id) or first(req.query.lastEventID)
  local headers = { ["Cache-Control"] = "private, no-cache, no-store", ["Link"] = hub_link() }
  if lid then
    local from = (lid ~= "earliest" and sluice.kept(CHANNEL, lid)) and lid or "earliest"
    headers["Mercure-Last-Event-ID"] = from
    headers["Last-Event-ID"] = from -- the response field of the protocol before its standardization
  end
  local data = { subscriber = uuid4(), subs = subs }
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

-- An origin a cookie-authenticated publish may come from (against cross-site request forgery).
local function same_origin(req)
  local o = req.headers.origin or (req.headers.referer or ""):match("^(%a[%w+.-]*://[^/?#]*)")
  if not o then return false end
  if o == "http://" .. (req.headers.host or "") or o == "https://" .. (req.headers.host or "") then return true end
  for _, allowed in ipairs(origins) do if o == allowed then return true end end
  return false
end

sluice.post(HUB, function(req)
  local rights, res = authenticate(req, PUBLISHER_KEY, true)
  if res then return res end
  if rights.from == "cookie" and not same_origin(req) then
    return challenge(403, "insufficient_scope", "a cookie's token publishes only from the hub's own origin")
  end
  local form = sluice.form.decode(req.body)
  if not form then return bad("the body is not a form") end
  local topics = list(form.topic)
  if #topics == 0 then return bad("missing topic") end
  if #topics > MAX_TOPICS then return too_large("more than " .. MAX_TOPICS .. " topics") end
  local data, id, typ, retry = first(form.data), first(form.id), first(form.type), first(form.retry)
  local urls = {} -- each topic resolved once
  for i, t in ipairs(topics) do
    if #t > MAX_LEN then return too_large("a topic is longer than " .. MAX_LEN .. " bytes") end
    if not clean(t) then return bad("a topic holds a control or format character, or is not UTF-8") end
    if t == "*" then return bad("the topic * is the wildcard, not a topic") end
    local url, path = resolve(t)
    if reserved(path) then return bad("the hub's own namespace is reserved: " .. t) end
    urls[i] = url
  end
  if (id and #id > MAX_FIELD) or (typ and #typ > MAX_FIELD) then return too_large("id or type longer than " .. MAX_FIELD) end
  if data and not text_ok(data, true) then return bad("data is not UTF-8") end
  if id == "" then id = nil end
  if id and (id:sub(1, 1) == "#" or id == "earliest" or not text_ok(id, false)) then return bad("bad id") end
  if typ == "" then typ = nil end
  if typ and (typ == "mercure" or not text_ok(typ, false)) then return bad("bad type") end
  if retry and (not retry:find("^%d+$") or #retry > 15) then return bad("bad retry") end
  local all = hub_topics(topics, urls)
  for i, t in ipairs(topics) do
    if not selects_any(rights.publish, all, 2 * i - 1, 2 * i) then
      return challenge(403, "insufficient_scope", "not allowed to publish to " .. t)
    end
  end
  id = id or uuid7()
  local published, err = sluice.publish(CHANNEL, sluice.message(data or "", {
    id = id, event = typ, retry = retry and tonumber(retry) or nil,
  }), { topics = all, private = form.private ~= nil })
  if not published then return plain(503, "not published: " .. tostring(err) .. "\n") end
  return plain(200, id)
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
  if not selects(rights.subscribe, { req.raw_path }) then
    return challenge(403, "insufficient_scope", "not allowed to read " .. req.raw_path)
  end
  local found = {}
  for _, doc in ipairs(active()) do
    if pick(doc) then found[#found + 1] = doc end
  end
  local body
  if req.params.subscriber then
    if #found == 0 then return plain(404, "no such subscription\n") end
    body = found[1]
  else
    body = { id = req.raw_path, type = "subscriptions", subscriptions = sluice.json.array(found) }
  end
  local last = sluice.last_event_id() or "earliest"
  return sluice.response(200, sluice.json.encode(body), {
    ["Content-Type"] = "application/json",
    ["Link"] = hub_link('; type="mercure"; content-type="application/json"'),
    ["ETag"] = '"' .. last .. '"',
    ["Cache-Control"] = "must-revalidate",
    ["Access-Control-Expose-Headers"] = "Link",
  })
end

sluice.get(HUB .. "/subscriptions", function(req) return api(req, function() return true end) end)
sluice.get(HUB .. "/subscriptions/:type/:match", function(req)
  return api(req, function(d) return d.match_type == req.params.type and d.match == req.params.match end)
end)
sluice.get(HUB .. "/subscriptions/:type/:match/:subscriber", function(req)
  local p = req.params
  return api(req, function(d) return d.match_type == p.type and d.match == p.match and d.subscriber == p.subscriber end)
end)

-- Protected resource metadata (RFC 9728): where clients learn the hub's audience.
sluice.get(METADATA, function()
  return sluice.response(200, {
    resource = RESOURCE,
    authorization_details_types_supported = { DETAIL_TYPE },
    bearer_methods_supported = { "header" },
    mercure_cookie = COOKIE,
    mercure_subscriptions = true,
  })
end)

sluice.get("/health", function() return sluice.response(200, "ok") end)

-- The web page (examples/pages/mercure, read at load), with the Link header of
-- discovery, and the stylesheet the pages share.
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
local f = assert(io.open(here .. "pages/mercure/index.html", "rb"))
local page = f:read("*a")
f:close()
sluice.get("/", function()
  return sluice.response(200, page, { ["Content-Type"] = "text/html; charset=utf-8", ["Link"] = hub_link() })
end)
sluice.static("/assets", "pages/assets")
