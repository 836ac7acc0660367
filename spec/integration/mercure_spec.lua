-- examples/mercure.lua against the Mercure protocol (draft-dunglas-mercure-08
-- as written at dunglas/mercure 192faaa), one spec per requirement of a hub,
-- named by the text's section. Tokens are made here as the text describes
-- them. An update that must not arrive is checked by publishing a marker
-- after it: the marker must be next.
local gw = require "spec.helpers.gateway"
local json = require "cjson"

package.cpath = (gw.BIN:match("^(.*)/[^/]+$") or "build") .. "/lua/?.so;" .. package.cpath
local crypto = require "sluice.crypto"

local HUB = "/.well-known/mercure"
local DEV_KEY = "!ChangeThisMercureHubJWTSecretKey!"
local RESOURCE = "https://localhost/.well-known/mercure"
local ISSUER = "https://localhost"
local DETAIL = "https://mercure.rocks/authorization-detail"
local METADATA_URL = "https://localhost/.well-known/oauth-protected-resource/.well-known/mercure"

local function b64(s) return crypto.base64url_encode(s) end
local function jwt(claims, key, typ)
  local h = b64(json.encode({ alg = "HS256", typ = typ or "at+jwt" }))
  local p = b64(json.encode(claims))
  return h .. "." .. p .. "." .. b64(crypto.hmac_sha256(key or DEV_KEY, h .. "." .. p))
end
-- An access token (RFC 9068) with the given authorization details.
local function token_with(details, extra, key)
  local now = os.time()
  local claims = { iss = ISSUER, aud = RESOURCE, sub = "urn:example:user", client_id = ISSUER, iat = now,
    exp = now + 3600, jti = tostring(math.random()), authorization_details = details }
  for k, v in pairs(extra or {}) do
    if v == json.null then claims[k] = nil else claims[k] = v end
  end
  return jwt(claims, key)
end
-- An access token granting actions on topic matchers ({ match =, match_type = }).
local function token(actions, topics, extra, key)
  return token_with({ { type = DETAIL, actions = actions, topics = topics } }, extra, key)
end
local PUBLISHER = token({ "publish" }, { { match = "*" } })
local ALL = token({ "subscribe" }, { { match = "*" } })

local function q(s) return (s:gsub("[^%w%-%._~]", function(c) return ("%%%02X"):format(c:byte()) end)) end
local function form(t)
  local out = {}
  for _, kv in ipairs(t) do out[#out + 1] = q(kv[1]) .. "=" .. q(kv[2]) end
  return table.concat(out, "&")
end

local function publish(srv, fields, tok)
  return srv:request("POST", HUB, form(fields), {
    ["Content-Type"] = "application/x-www-form-urlencoded",
    ["Authorization"] = tok ~= false and ("Bearer " .. (tok or PUBLISHER)) or nil,
  })
end
local function publish_ok(srv, topic, data, more)
  local fields = { { "topic", topic }, { "data", data } }
  for _, kv in ipairs(more or {}) do fields[#fields + 1] = kv end
  local r = publish(srv, fields)
  assert.equal(200, r.status, r.body)
  return r.body
end
local function sub(srv, query, headers)
  local c = srv:sse(HUB .. "?" .. query, headers)
  assert.equal(200, c.status)
  return c
end
local function bearer(t) return { Authorization = "Bearer " .. t } end
local function next_data(c)
  local ev = assert(c:read_event())
  return ev.data, ev
end
local function status(srv, fields, tok) return publish(srv, fields, tok).status end
local function challenge_of(r) return r.headers["www-authenticate"] or "" end

describe("examples/mercure.lua", function()
  local srv
  before_each(function() srv = gw.start("examples/mercure.lua") end)
  after_each(function() if srv then srv:stop() end end)

  describe("Subscription", function()
    it("selects with match (exact), match_exact, match_urlpattern and the older topic= URI templates", function()
      local exact = sub(srv, "match=" .. q("https://example.com/books/1"))
      local explicit = sub(srv, "match_exact=" .. q("https://example.com/books/1"))
      local pattern = sub(srv, "match_urlpattern=" .. q("https://example.com/books/:id"))
      local legacy = sub(srv, "topic=" .. q("https://example.com/{kind}/2"))
      publish_ok(srv, "https://example.com/books/2", "two")
      publish_ok(srv, "https://example.com/books/1", "one")
      assert.equal("one", next_data(exact))
      assert.equal("one", next_data(explicit))
      assert.equal("two", next_data(pattern))
      assert.equal("one", next_data(pattern))
      assert.equal("two", next_data(legacy))
      exact:close(); explicit:close(); pattern:close(); legacy:close()
    end)

    it("compares exact matchers byte for byte, never resolved; URL patterns resolve against the hub's URL", function()
      local braces = sub(srv, "match=" .. q("https://example.com/{id}"))
      local absolute = sub(srv, "match=" .. q("https://localhost/books/1"))
      local relative = sub(srv, "match_urlpattern=" .. q("/books/:id"))
      publish_ok(srv, "https://example.com/7", "not this")
      publish_ok(srv, "https://example.com/{id}", "braces")
      publish_ok(srv, "/books/1", "relative topic")
      publish_ok(srv, "https://localhost/books/2", "absolute topic")
      publish_ok(srv, "https://localhost/books/1", "marker")
      assert.equal("braces", next_data(braces))
      assert.equal("marker", next_data(absolute)) -- not "relative topic": exact matchers do not resolve
      assert.equal("relative topic", next_data(relative))
      assert.equal("absolute topic", next_data(relative))
      braces:close(); absolute:close(); relative:close()
    end)

    it("refuses with 400: no matcher, a name in the match namespace it does not know, bad values, past its limits", function()
      assert.equal(400, srv:request("GET", HUB).status)
      assert.equal(400, srv:request("GET", HUB .. "?matchRegex=x").status)
      assert.equal(400, srv:request("GET", HUB .. "?Match=x").status) -- the namespace is case-insensitive
      assert.equal(400, srv:request("GET", HUB .. "?match_URLPattern=x").status) -- names are case-sensitive
      assert.equal(400, srv:request("GET", HUB .. "?match=a%01b").status) -- C0
      assert.equal(400, srv:request("GET", HUB .. "?match=a%C2%85b").status) -- C1
      assert.equal(400, srv:request("GET", HUB .. "?match=a%E2%80%8Bb").status) -- a format character (U+200B)
      assert.equal(400, srv:request("GET", HUB .. "?match=a%FFb").status) -- not UTF-8
      assert.equal(400, srv:request("GET", HUB .. "?match_urlpattern=" .. q("/books/(\\d+)")).status)
      assert.equal(400, srv:request("GET", HUB .. "?match=" .. ("a"):rep(2049)).status)
      assert.equal(400, srv:request("GET", HUB .. "?" .. ("match=a&"):rep(65)).status)
      -- other parameters are not matchers, and are ignored
      local c = sub(srv, "match=ok&foo=bar")
      c:close()
    end)
  end)

  describe("Publication", function()
    it("answers exactly the update's id as text/plain; charset=utf-8, a given one or a UUIDv7 IRI in time order", function()
      local c = sub(srv, "match=t")
      local r = publish(srv, { { "topic", "t" }, { "data", "line 1\nline 2" }, { "type", "greeting" },
        { "id", "urn:example:1" }, { "retry", "3000" } })
      assert.equal(200, r.status)
      assert.equal("text/plain; charset=utf-8", r.headers["content-type"])
      assert.equal("urn:example:1", r.body)
      local data, ev = next_data(c)
      assert.same({ "line 1\nline 2", "greeting", "urn:example:1", 3000 }, { data, ev.event, ev.id, ev.retry })
      local ids = {}
      for i = 1, 3 do ids[i] = publish_ok(srv, "t", "x" .. i) end
      for i = 1, 3 do
        assert.matches("^urn:uuid:%x%x%x%x%x%x%x%x%-%x%x%x%x%-7%x%x%x%-[89ab]%x%x%x%-%x%x%x%x%x%x%x%x%x%x%x%x$", ids[i])
        assert.equal(ids[i], select(2, next_data(c)).id)
      end
      assert.is_true(ids[1] < ids[2] and ids[2] < ids[3])
      c:close()
    end)

    it("dispatches an update to subscribers of its canonical or an alternate topic, once", function()
      local canonical = sub(srv, "match=" .. q("https://example.com/books/1"))
      local alternate = sub(srv, "match=" .. q("https://example.com/users/42/books/1"))
      local both = sub(srv, "match=" .. q("https://example.com/books/1") .. "&match=" .. q("https://example.com/users/42/books/1"))
      publish(srv, { { "topic", "https://example.com/books/1" }, { "topic", "https://example.com/users/42/books/1" },
        { "data", "both topics" } })
      publish_ok(srv, "https://example.com/books/1", "marker")
      assert.equal("both topics", next_data(canonical))
      assert.equal("both topics", next_data(alternate))
      assert.equal("both topics", next_data(both))
      assert.equal("marker", next_data(both)) -- once, not once per topic
      canonical:close(); alternate:close(); both:close()
    end)

    it("publishes only with publish granted on every topic, canonical and alternate (403 otherwise, nothing sent)", function()
      local c = sub(srv, "match=" .. q("https://example.com/a"))
      local only_a = token({ "publish" }, { { match = "https://example.com/a" } })
      local r = publish(srv, { { "topic", "https://example.com/a" }, { "topic", "https://example.com/b" },
        { "data", "not sent" } }, only_a)
      assert.equal(403, r.status)
      assert.truthy(challenge_of(r):find('error="insufficient_scope"', 1, true))
      local pattern = token({ "publish" }, { { match = "https://example.com/:x", match_type = "urlpattern" } })
      assert.equal(200, publish(srv, { { "topic", "https://example.com/a" }, { "topic", "https://example.com/b" },
        { "data", "sent" } }, pattern).status)
      assert.equal("sent", next_data(c))
      c:close()
    end)

    it("refuses with 400 a topic in the hub's namespace after resolution, '*', type=mercure and bad fields", function()
      for _, t in ipairs {
        "/.well-known/mercure", "/.well-known/mercure/subscriptions/exact/x/y", "https://other.example/.well-known/mercure/x",
        "/.well-known/%6Dercure/subscriptions", "/.well-known/mercure/../mercure/x", "/a/../.well-known/mercure",
        "mercure/x", "//h.example/.well-known/mercure", "?q", "https:mercure/x", "HTTPS://h.example\\.well-known\\mercure",
        "urn:x:/.well-known/mercure",
      } do
        if t == "urn:x:/.well-known/mercure" then
          assert.equal(200, status(srv, { { "topic", t } }), t) -- an opaque path names no hub resource
        else
          assert.equal(400, status(srv, { { "topic", "ok" }, { "topic", t } }), t)
        end
      end
      assert.equal(200, status(srv, { { "topic", "/.well-known/mercurey" } }))
      assert.equal(400, status(srv, { { "topic", "*" } }))
      assert.equal(400, status(srv, { { "topic", "t" }, { "type", "mercure" } }))
      assert.equal(400, status(srv, { { "data", "x" } })) -- no topic
      for _, bad in ipairs {
        { "topic", "a\1b" }, { "topic", "a\226\128\174b" }, { "topic", "a\194\133" }, { "topic", "\255" },
        { "id", "#1" }, { "id", "earliest" }, { "id", "a\nb" }, { "id", "a\226\128\139" },
        { "type", "a\nb" }, { "type", "a\127" }, { "retry", "soon" }, { "retry", "-1" },
      } do
        local fields = bad[1] == "topic" and { bad } or { { "topic", "t" }, bad }
        assert.equal(400, status(srv, fields), bad[1] .. " " .. bad[2])
      end
    end)

    it("refuses with 413 what passes its limits: topics, a topic's length, an id's", function()
      local many = {}
      for i = 1, 65 do many[i] = { "topic", "t" .. i } end
      assert.equal(413, status(srv, many))
      assert.equal(413, status(srv, { { "topic", ("a"):rep(2049) } }))
      assert.equal(413, status(srv, { { "topic", "t" }, { "id", ("i"):rep(1025) } }))
      assert.equal(200, status(srv, { { "topic", ("a"):rep(2048) } }))
    end)
  end)

  describe("Authorization", function()
    it("answers RFC 6750's errors, each with a challenge that points at the metadata", function()
      local function check(r, want_status, want_error)
        assert.equal(want_status, r.status, r.body)
        local ch = challenge_of(r)
        assert.truthy(ch:find("^Bearer "), ch)
        assert.truthy(ch:find('resource_metadata="' .. METADATA_URL .. '"', 1, true), ch)
        if want_error then assert.truthy(ch:find('error="' .. want_error .. '"', 1, true), ch)
        else assert.falsy(ch:find("error=", 1, true), ch) end
      end
      check(publish(srv, { { "topic", "t" } }, false), 401)
      for why, tok in pairs {
        signature = token({ "publish" }, { { match = "*" } }, nil, "another key"),
        typ = token_with({ { type = DETAIL, actions = { "publish" }, topics = { { match = "*" } } } }, nil, nil):gsub("^[^.]+",
          b64(json.encode({ alg = "HS256", typ = "JWT" }))),
        no_exp = token({ "publish" }, { { match = "*" } }, { exp = json.null }),
        expired = token({ "publish" }, { { match = "*" } }, { exp = os.time() - 60 }),
        audience = token({ "publish" }, { { match = "*" } }, { aud = "https://elsewhere" }),
        no_issuer = token({ "publish" }, { { match = "*" } }, { iss = json.null }),
        issuer = token({ "publish" }, { { match = "*" } }, { iss = "https://evil.example" }),
        match_type = token({ "publish" }, { { match = "t", match_type = "regex" } }),
        action = token({ "publish", 7 }, { { match = "*" } }),
        topic = token({ "publish" }, { "t" }),
        pattern = token({ "publish" }, { { match = "/a/(\\d+)", match_type = "urlpattern" } }),
      } do
        check(publish(srv, { { "topic", "t" } }, tok), 401, "invalid_token")
      end
      check(publish(srv, { { "topic", "https://example.com/b" } }, token({ "publish" }, { { match = "https://example.com/a" } })),
        403, "insufficient_scope")
      local r = srv:request("POST", HUB, "topic=t", { Authorization = "Basic eDp5" })
      assert.equal(400, r.status)
      assert.truthy(challenge_of(r):find('error="invalid_request"', 1, true))
      -- a token grants nothing for actions it does not know, and is not refused for them
      assert.equal(200, status(srv, { { "topic", "t" } }, token({ "read", "publish" }, { { match = "*" } })))
      -- "application/at+jwt" is at+jwt, in any case
      local mixed = token({ "publish" }, { { match = "*" } }):gsub("^[^.]+", b64(json.encode({ alg = "HS256", typ = "Application/AT+JWT" })))
      local parts = {}
      for p in mixed:gmatch("[^.]+") do parts[#parts + 1] = p end
      mixed = parts[1] .. "." .. parts[2] .. "." .. b64(crypto.hmac_sha256(DEV_KEY, parts[1] .. "." .. parts[2]))
      assert.equal(200, status(srv, { { "topic", "t" } }, mixed))
    end)

    it("reads the token from the Authorization header, else the cookie; never from the URL", function()
      local grant = token({ "subscribe" }, { { match = "t" } })
      local none = token({ "subscribe" }, { { match = "other" } })
      local header = sub(srv, "match=t", bearer(grant))
      local cookie = sub(srv, "match=t", { Cookie = "__Secure-mercure_access_token=" .. grant })
      local older = sub(srv, "match=t", { Cookie = "mercureAuthorization=" .. grant })
      local header_wins = sub(srv, "match=t", { Authorization = "Bearer " .. none, Cookie = "__Secure-mercure_access_token=" .. grant })
      local url = sub(srv, "match=t&access_token=" .. grant .. "&authorization=" .. grant)
      publish_ok(srv, "t", "private", { { "private", "on" } })
      publish_ok(srv, "t", "marker")
      for _, c in ipairs { header, cookie, older } do assert.equal("private", next_data(c)) end
      for _, c in ipairs { header_wins, url } do assert.equal("marker", next_data(c)) end
      for _, c in ipairs { header, cookie, older, header_wins, url } do c:close() end
    end)

    it("publishes with a cookie's token only from the hub's own origin (cross-site request forgery)", function()
      local cookie = { ["Content-Type"] = "application/x-www-form-urlencoded", Cookie = "mercureAuthorization=" .. PUBLISHER }
      assert.equal(403, srv:request("POST", HUB, "topic=t", cookie).status)
      cookie.Origin = "https://evil.example"
      assert.equal(403, srv:request("POST", HUB, "topic=t", cookie).status)
      cookie.Origin = "http://127.0.0.1" -- the request's Host
      assert.equal(200, srv:request("POST", HUB, "topic=t", cookie).status)
    end)

    it("delivers a private update to a subscriber whose token grants subscribe on any of its topics", function()
      local books = "match_urlpattern=" .. q("https://example.com/books/:id")
      local own = sub(srv, books, bearer(token({ "subscribe" },
        { { match = "https://example.com/users/42/*", match_type = "urlpattern" } })))
      local narrow = sub(srv, books, bearer(token({ "subscribe" }, { { match = "https://example.com/books/7" } })))
      local anon = sub(srv, books)
      publish(srv, { { "topic", "https://example.com/books/1" }, { "topic", "https://example.com/users/42/books/1" },
        { "private", "on" }, { "data", "for user 42" } })
      publish_ok(srv, "https://example.com/books/7", "seven", { { "private", "" } }) -- private whatever its value
      publish_ok(srv, "https://example.com/books/8", "marker")
      assert.equal("for user 42", next_data(own))
      assert.equal("marker", next_data(own))
      assert.equal("seven", next_data(narrow))
      assert.equal("marker", next_data(narrow))
      assert.equal("marker", next_data(anon))
      own:close(); narrow:close(); anon:close()
    end)

    it("refuses an invalid subscriber token, and anonymous subscribers when MERCURE_ANONYMOUS=0", function()
      assert.equal(401, srv:request("GET", HUB .. "?match=t", nil, bearer("x.y.z")).status)
      srv:stop()
      srv = gw.start("examples/mercure.lua", { prefix = { "env", "MERCURE_ANONYMOUS=0" } })
      local r = srv:request("GET", HUB .. "?match=t")
      assert.equal(401, r.status)
      assert.falsy(challenge_of(r):find("error=", 1, true))
      sub(srv, "match=t", bearer(token({ "subscribe" }, { { match = "t" } }))):close()
    end)

    it("ends a subscriber's stream when its token expires", function()
      local c = sub(srv, "match=t", bearer(token({ "subscribe" }, { { match = "*" } }, { exp = os.time() + 2 })))
      assert.is_true(c:closed_by_peer(10))
    end)
  end)

  describe("Reconnection", function()
    it("replays after Last-Event-ID or last_event_id (the header wins), and says where in Mercure-Last-Event-ID", function()
      local first = publish_ok(srv, "r", "one")
      publish_ok(srv, "other", "not for r")
      local second = publish_ok(srv, "r", "two")
      publish_ok(srv, "r", "three")
      local function check(c, from, want)
        assert.equal(from, c.headers["mercure-last-event-id"])
        assert.equal(want, next_data(c))
        c:close()
      end
      check(sub(srv, "match=r", { ["Last-Event-ID"] = first }), first, "two")
      check(sub(srv, "match=r&last_event_id=" .. q(first)), first, "two")
      check(sub(srv, "match=r&lastEventID=" .. q(first)), first, "two") -- the older name
      check(sub(srv, "match=r&last_event_id=" .. q(first), { ["Last-Event-ID"] = second }), second, "three")
      check(sub(srv, "match=r&last_event_id=earliest"), "earliest", "one")
      check(sub(srv, "match=r&last_event_id=" .. q("urn:uuid:unknown")), "earliest", "one")
      local live = sub(srv, "match=r")
      assert.is_nil(live.headers["mercure-last-event-id"]) -- only when a last event id was given
      live:close()
    end)

    it("resolves an id that several updates share to the earliest of them", function()
      publish_ok(srv, "d", "a", { { "id", "urn:example:dup" } })
      publish_ok(srv, "d", "b")
      publish_ok(srv, "d", "c", { { "id", "urn:example:dup" } })
      local c = sub(srv, "match=d&last_event_id=urn:example:dup")
      assert.equal("b", next_data(c))
      assert.equal("c", next_data(c))
      c:close()
    end)

    it("says earliest when the history is empty", function()
      local c = sub(srv, "match=r&last_event_id=anything")
      assert.equal("earliest", c.headers["mercure-last-event-id"])
      c:close()
    end)

    it("re-evaluates a replayed private update against the token presented now", function()
      local from = publish_ok(srv, "p", "start")
      publish_ok(srv, "p", "secret", { { "private", "on" } })
      publish_ok(srv, "p", "public")
      local with = sub(srv, "match=p&last_event_id=" .. q(from), bearer(token({ "subscribe" }, { { match = "p" } })))
      local without = sub(srv, "match=p&last_event_id=" .. q(from), bearer(token({ "subscribe" }, { { match = "q" } })))
      assert.equal("secret", next_data(with))
      assert.equal("public", next_data(with))
      assert.equal("public", next_data(without))
      with:close(); without:close()
    end)
  end)

  describe("Active Subscriptions", function()
    local WATCH = { { match = "/.well-known/mercure/subscriptions/:type/:match/:subscriber", match_type = "urlpattern" },
      { match = "/.well-known/mercure/subscriptions", match_type = "exact" },
      { match = "/.well-known/mercure/subscriptions/:type/:match", match_type = "urlpattern" } }
    local watcher = token({ "subscribe" }, WATCH)
    local EVENTS = "match_urlpattern=" .. q("/.well-known/mercure/subscriptions/:type/:match/:subscriber")

    it("publishes each start and end as a private update of type mercure, one subscriber id per connection", function()
      local anon = sub(srv, EVENTS .. "&match=marker")
      local w = sub(srv, EVENTS, bearer(watcher))
      local payload = token_with({
        { type = DETAIL, actions = { "subscribe" }, topics = { { match = "https://example.com/other" } }, payload = { no = 1 } },
        { type = DETAIL, actions = { "subscribe" }, topics = { { match = "https://example.com/:x", match_type = "urlpattern" } },
          payload = { tenant = "t1" } },
        { type = DETAIL, actions = { "subscribe" }, topics = { { match = "*" } }, payload = { default = true } } })
      local s1 = sub(srv, "match=" .. q("https://example.com/x"), bearer(payload))
      local s2 = sub(srv, "match=" .. q("https://example.com/x"), bearer(payload)) -- the same token again
      local data, ev = next_data(w)
      local doc = json.decode(data)
      assert.equal("mercure", ev.event)
      assert.equal("subscription", doc.type)
      assert.equal("exact", doc.match_type)
      assert.equal("https://example.com/x", doc.match)
      assert.matches("^urn:uuid:", doc.subscriber)
      assert.is_true(doc.active)
      assert.same({ tenant = "t1" }, doc.payload)
      assert.equal("/.well-known/mercure/subscriptions/exact/https%3A%2F%2Fexample.com%2Fx/" .. q(doc.subscriber), doc.id)
      local doc2 = json.decode((next_data(w)))
      assert.are_not.equal(doc.subscriber, doc2.subscriber)
      s1:close()
      local gone = json.decode((next_data(w)))
      assert.same({ doc.id, false }, { gone.id, gone.active })
      -- an anonymous subscriber of the same topics sees none of it
      publish_ok(srv, "marker", "marker")
      assert.equal("marker", next_data(anon))
      w:close(); anon:close(); s2:close()
    end)

    it("lists them as JSON, for tokens granted the requested path, with the cursor in the Link header", function()
      local s = sub(srv, "match_urlpattern=" .. q("https://example.com/:x"), bearer(ALL))
      local id = publish_ok(srv, "t", "x")
      assert.equal(401, srv:request("GET", HUB .. "/subscriptions").status)
      local other = token({ "subscribe" }, { { match = "https://example.com/x" } })
      local r = srv:request("GET", HUB .. "/subscriptions", nil, bearer(other))
      assert.equal(403, r.status)
      assert.truthy(challenge_of(r):find('error="insufficient_scope"', 1, true))
      r = srv:request("GET", HUB .. "/subscriptions", nil, bearer(watcher))
      assert.equal(200, r.status, r.body)
      assert.equal("application/json", r.headers["content-type"])
      assert.equal('<' .. RESOURCE .. '>; rel="mercure"; last-event-id="' .. id .. '"; type="mercure"; content-type="application/json"',
        r.headers["link"])
      local body = json.decode(r.body)
      assert.same({ "/.well-known/mercure/subscriptions", "subscriptions", 1 }, { body.id, body.type, #body.subscriptions })
      local doc = body.subscriptions[1]
      assert.same({ "urlpattern", "https://example.com/:x", true }, { doc.match_type, doc.match, doc.active })
      local by_matcher = HUB .. "/subscriptions/urlpattern/" .. q("https://example.com/:x")
      r = srv:request("GET", by_matcher, nil, bearer(watcher))
      assert.equal(200, r.status, r.body)
      assert.same({ by_matcher, 1 }, { json.decode(r.body).id, #json.decode(r.body).subscriptions })
      r = srv:request("GET", doc.id, nil, bearer(watcher))
      assert.equal(200, r.status, r.body)
      assert.same(doc, json.decode(r.body))
      assert.equal(404, srv:request("GET", HUB .. "/subscriptions/exact/nope/nobody", nil, bearer(watcher)).status)
      s:close()
    end)
  end)

  describe("Discovery", function()
    it("advertises the hub in a Link header and serves its protected resource metadata", function()
      local r = srv:request("GET", "/")
      assert.equal(200, r.status)
      assert.matches("<title>Sluice · Mercure hub</title>", r.body, 1, true)
      assert.equal('<' .. RESOURCE .. '>; rel="mercure"; last-event-id="earliest"', r.headers["link"])
      r = srv:request("GET", "/.well-known/oauth-protected-resource/.well-known/mercure")
      assert.equal(200, r.status)
      assert.same({
        resource = RESOURCE,
        authorization_details_types_supported = { DETAIL },
        bearer_methods_supported = { "header" },
        mercure_cookie = "__Secure-mercure_access_token",
        mercure_subscriptions = true,
      }, json.decode(r.body))
    end)
  end)

  describe("the protocol before its standardization", function()
    it("takes the 'mercure' claim in any signed JWT, with URI templates", function()
      local legacy = jwt({ mercure = { publish = { "https://example.com/{x}" }, subscribe = { "https://example.com/{x}" } } },
        nil, "JWT")
      local c = sub(srv, "topic=" .. q("https://example.com/{x}"), { Cookie = "mercureAuthorization=" .. legacy })
      local r = publish(srv, { { "topic", "https://example.com/a" }, { "data", "private" }, { "private", "on" } }, legacy)
      assert.equal(200, r.status, r.body)
      assert.equal("private", next_data(c))
      assert.equal(403, publish(srv, { { "topic", "https://other.example/a" } }, legacy).status)
      local from = r.body
      publish_ok(srv, "https://example.com/b", "after")
      local again = sub(srv, "topic=" .. q("https://example.com/{x}") .. "&lastEventID=" .. q(from))
      assert.equal(from, again.headers["last-event-id"])
      assert.equal("after", next_data(again))
      c:close(); again:close()
    end)
  end)

  it("takes its keys, issuer and resource identifier from the environment", function()
    srv:stop()
    srv = gw.start("examples/mercure.lua", { prefix = { "env", "MERCURE_PUBLISHER_JWT_KEY=pub-secret",
      "MERCURE_TRUSTED_ISSUER=https://issuer.example" } })
    assert.equal(401, status(srv, { { "topic", "t" } }, PUBLISHER)) -- the development key no longer works
    assert.equal(200, status(srv, { { "topic", "t" } },
      token({ "publish" }, { { match = "*" } }, { iss = "https://issuer.example" }, "pub-secret")))
    assert.equal(401, status(srv, { { "topic", "t" } }, token({ "publish" }, { { match = "*" } }, nil, "pub-secret")))
    srv:stop()
    srv = gw.start("examples/mercure.lua", { prefix = { "env", "MERCURE_SUBSCRIBER_JWT_KEY=sub-secret",
      "MERCURE_RESOURCE_IDENTIFIER=https://hub.example/.well-known/mercure" } })
    local function sub_status(tok) return srv:request("GET", HUB .. "?match=t", nil, bearer(tok)).status end
    local other = { aud = "https://hub.example/.well-known/mercure" }
    assert.equal(401, sub_status(token({ "subscribe" }, { { match = "*" } }, nil, "sub-secret"))) -- aud: the default
    assert.equal(401, sub_status(token({ "subscribe" }, { { match = "*" } }, other))) -- the development key
    sub(srv, "match=t", bearer(token({ "subscribe" }, { { match = "*" } }, other, "sub-secret"))):close()
    local meta = json.decode(srv:request("GET", "/.well-known/oauth-protected-resource/.well-known/mercure").body)
    assert.equal("https://hub.example/.well-known/mercure", meta.resource)
    -- publishers' tokens name it too
    assert.equal(401, status(srv, { { "topic", "t" } }, PUBLISHER))
    assert.equal(200, status(srv, { { "topic", "t" } }, token({ "publish" }, { { match = "*" } }, other)))
  end)

  it("runs on several gateways sharing Redis: updates, private filtering and replay from a UUID cross nodes", function()
    srv:stop()
    local redis = gw.redis()
    local a = gw.start("examples/mercure.lua", { args = { "--redis", redis.url } })
    local b = gw.start("examples/mercure.lua", { args = { "--redis", redis.url } })
    for _, n in ipairs { a, b } do
      gw.wait_for(function() return n:logs():find("redis: connected to", 1, true) end, 10, "redis")
    end
    local sub_b = sub(b, "match=t")
    local private_b = sub(b, "match=t", bearer(token({ "subscribe" }, { { match = "t" } })))
    local first
    gw.wait_for(function()
      -- the first publish may go out before node b is subscribed to Redis: publish until it arrives
      first = publish_ok(a, "t", "hello")
      local ev = sub_b:read_event(0.5)
      return ev and ev.data == "hello"
    end, 10, "an update across nodes")
    assert.matches("^urn:uuid:", first)
    publish_ok(a, "t", "secret", { { "private", "on" } })
    publish_ok(a, "t", "public")
    local seen = {}
    repeat local d = next_data(private_b); seen[#seen + 1] = d until d == "public"
    assert.equal("secret", seen[#seen - 1])
    local d
    repeat d = next_data(sub_b) until d ~= "hello"
    assert.equal("public", d) -- after the hellos, the anonymous subscriber gets the public one, not the secret
    -- replay on the other node, from Redis history; the response field says where it started
    local late = sub(b, "match=t&last_event_id=" .. q(first))
    assert.equal(first, late.headers["mercure-last-event-id"])
    repeat d = next_data(late) until d ~= "hello"
    assert.equal("public", d)
    sub_b:close(); private_b:close(); late:close()
    a:stop(); b:stop()
    redis:stop()
    srv = nil
  end)

  it("keeps its subscribers across a hot reload", function()
    local auth = bearer(token({ "subscribe" }, {
      { match = "/.well-known/mercure/subscriptions", match_type = "exact" },
      { match = "/.well-known/mercure/subscriptions/:type/:match/:subscriber", match_type = "urlpattern" } }))
    local w = sub(srv, "match_urlpattern=" .. q("/.well-known/mercure/subscriptions/:type/:match/:subscriber"), auth)
    local c = sub(srv, "match=k")
    local joined = json.decode((next_data(w)))
    assert.is_true(joined.active)
    srv:signal(require("posix.signal").SIGHUP)
    gw.wait_for(function() return srv:logs():find("reload") end, 10, "the reload")
    publish_ok(srv, "k", "after the reload")
    assert.equal("after the reload", next_data(c))
    local list = json.decode(srv:request("GET", HUB .. "/subscriptions", nil, auth).body)
    assert.equal(2, #list.subscriptions) -- the watcher and c
    c:close()
    local left = json.decode((next_data(w)))
    assert.is_false(left.active)
    assert.equal(joined.id, left.id)
    w:close()
  end)
end)
