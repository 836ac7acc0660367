-- examples/mercure.lua against the Mercure protocol (draft-dunglas-mercure-08),
-- with tokens made here as the spec describes them. An update that must not
-- arrive is checked by publishing a marker after it: the marker must be next.
local gw = require "spec.helpers.gateway"
local json = require "cjson"

package.cpath = (gw.BIN:match("^(.*)/[^/]+$") or "build") .. "/lua/?.so;" .. package.cpath
local crypto = require "sluice.crypto"

local HUB = "/.well-known/mercure"
local DEV_KEY = "!ChangeThisMercureHubJWTSecretKey!"
local RESOURCE = "https://localhost/.well-known/mercure"

local function b64(s) return crypto.base64url_encode(s) end
local function jwt(claims, key, typ)
  local h = b64(json.encode({ alg = "HS256", typ = typ or "at+jwt" }))
  local p = b64(json.encode(claims))
  return h .. "." .. p .. "." .. b64(crypto.hmac_sha256(key or DEV_KEY, h .. "." .. p))
end
-- A draft-08 access token for actions on topic matchers ({ match =, matchType = }).
local function token(actions, topics, extra, key)
  local claims = { aud = RESOURCE, exp = os.time() + 3600,
    authorization_details = { { type = "mercure", actions = actions, topics = topics } } }
  for k, v in pairs(extra or {}) do claims[k] = v end
  return jwt(claims, key)
end
local PUBLISHER = token({ "publish" }, { { match = "*" } })

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
  return (r.body:gsub("%s+$", ""))
end
local function sub(srv, query, headers)
  local c = srv:sse(HUB .. "?" .. query, headers)
  assert.equal(200, c.status)
  return c
end
local function next_data(c)
  local ev = assert(c:read_event())
  return ev.data, ev
end

describe("examples/mercure.lua", function()
  local srv
  before_each(function() srv = gw.start("examples/mercure.lua") end)
  after_each(function() if srv then srv:stop() end end)

  describe("subscribing", function()
    it("by match (exact), matchURLPattern and the older topic= URI templates", function()
      local exact = sub(srv, "match=" .. q("https://example.com/books/1"))
      local pattern = sub(srv, "matchURLPattern=" .. q("https://example.com/books/:id"))
      local legacy = sub(srv, "topic=" .. q("https://example.com/{kind}/2"))
      publish_ok(srv, "https://example.com/books/2", "two")
      publish_ok(srv, "https://example.com/books/1", "one")
      assert.equal("one", next_data(exact))
      assert.equal("two", next_data(pattern))
      assert.equal("one", next_data(pattern))
      assert.equal("two", next_data(legacy))
      exact:close(); pattern:close(); legacy:close()
    end)

    it("matches exactly: '{' and '*' in an exact matcher are themselves", function()
      local c = sub(srv, "match=" .. q("https://example.com/{id}"))
      publish_ok(srv, "https://example.com/7", "not this")
      publish_ok(srv, "https://example.com/{id}", "this")
      assert.equal("this", next_data(c))
      c:close()
    end)

    it("refuses a request without matchers, an unknown matcher type and control characters", function()
      assert.equal(400, srv:request("GET", HUB).status)
      local r = srv:request("GET", HUB .. "?matchRegex=x")
      assert.equal(400, r.status)
      assert.truthy(r.headers["www-authenticate"]:find('error="invalid_request"', 1, true))
      assert.equal(400, srv:request("GET", HUB .. "?match=a%01b").status)
      assert.equal(400, srv:request("GET", HUB .. "?matchURLPattern=" .. q("/books/(\\d+)")).status)
    end)
  end)

  describe("publishing", function()
    it("takes a form with an HS256 token and answers the update's id", function()
      local c = sub(srv, "match=t")
      local id = publish_ok(srv, "t", "payload", { { "type", "greeting" }, { "id", "urn:x:1" }, { "retry", "3000" } })
      assert.equal("urn:x:1", id)
      local data, ev = next_data(c)
      assert.equal("payload", data)
      assert.equal("greeting", ev.event)
      assert.equal("urn:x:1", ev.id)
      assert.equal(3000, ev.retry)
      c:close()
    end)

    it("refuses missing, bad and insufficient tokens as RFC 6750 says", function()
      local r = publish(srv, { { "topic", "t" } }, false)
      assert.equal(401, r.status)
      assert.truthy(r.headers["www-authenticate"]:find("^Bearer"))
      r = publish(srv, { { "topic", "t" } }, token({ "publish" }, { { match = "*" } }, nil, "another key"))
      assert.equal(401, r.status)
      assert.truthy(r.headers["www-authenticate"]:find('error="invalid_token"', 1, true))
      r = publish(srv, { { "topic", "t" } }, token({ "publish" }, { { match = "*" } }, { aud = "https://elsewhere" }))
      assert.equal(401, r.status)
      r = publish(srv, { { "topic", "t" } }, token({ "publish" }, { { match = "*" } }, { iss = "https://evil" }))
      assert.equal(401, r.status)
      r = publish(srv, { { "topic", "t" } }, token({ "publish" }, { { match = "*" } }, { exp = os.time() - 60 }))
      assert.equal(401, r.status)
      r = publish(srv, { { "topic", "t" } }, jwt({ aud = RESOURCE, exp = os.time() + 60,
        authorization_details = { { type = "mercure", actions = { "publish" }, topics = { { match = "*" } } } } },
        nil, "JWT"))
      assert.equal(401, r.status) -- typ must be at+jwt
      r = publish(srv, { { "topic", "https://example.com/b" } },
        token({ "publish" }, { { match = "https://example.com/a" } }))
      assert.equal(403, r.status)
      assert.truthy(r.headers["www-authenticate"]:find('error="insufficient_scope"', 1, true))
      r = publish(srv, { { "topic", "https://example.com/books/9" } },
        token({ "publish" }, { { match = "https://example.com/books/:id", matchType = "URLPattern" } }))
      assert.equal(200, r.status)
    end)

    it("refuses bad forms: no topic, two topics, the hub's own namespace, bad fields", function()
      assert.equal(400, publish(srv, { { "data", "x" } }).status)
      assert.equal(400, publish(srv, { { "topic", "a" }, { "topic", "b" } }).status)
      assert.equal(403, publish(srv, { { "topic", "/.well-known/mercure/subscriptions/x" } }).status)
      assert.equal(403, publish(srv, { { "topic", "https://other.example/.well-known/mercure" } }).status)
      assert.equal(400, publish(srv, { { "topic", "t" }, { "id", "#1" } }).status)
      assert.equal(400, publish(srv, { { "topic", "t" }, { "retry", "soon" } }).status)
      assert.equal(400, publish(srv, { { "topic", "t" }, { "retry", ("9"):rep(40) } }).status)
      assert.equal(400, publish(srv, { { "topic", "t" }, { "type", "a\nb" } }).status)
    end)

    it("accepts the older 'mercure' claim, with several topics", function()
      local legacy = jwt({ mercure = { publish = { "https://example.com/{x}" } } }, nil, "JWT")
      local c = sub(srv, "match=" .. q("https://example.com/b"))
      local r = publish(srv, { { "topic", "https://example.com/a" }, { "topic", "https://example.com/b" },
        { "data", "both" } }, legacy)
      assert.equal(200, r.status, r.body)
      assert.equal("both", next_data(c))
      assert.equal(403, publish(srv, { { "topic", "https://other.example/a" } }, legacy).status)
      c:close()
    end)
  end)

  describe("private updates", function()
    it("reach only subscribers whose token grants the topic (header or cookie)", function()
      local grant = token({ "subscribe" }, { { match = "https://example.com/secret/:id", matchType = "URLPattern" } })
      local other = token({ "subscribe" }, { { match = "https://example.com/else" } })
      local topic = "https://example.com/secret/1"
      local anon = sub(srv, "match=" .. q(topic))
      local header = sub(srv, "match=" .. q(topic), { Authorization = "Bearer " .. grant })
      local cookie = sub(srv, "match=" .. q(topic), { Cookie = "mercureAuthorization=" .. grant })
      local wrong = sub(srv, "match=" .. q(topic), { Cookie = "mercureAuthorization=" .. other })
      publish_ok(srv, topic, "private one", { { "private", "on" } })
      publish_ok(srv, topic, "public marker")
      assert.equal("private one", next_data(header))
      assert.equal("private one", next_data(cookie))
      assert.equal("public marker", next_data(anon))
      assert.equal("public marker", next_data(wrong))
      anon:close(); header:close(); cookie:close(); wrong:close()
    end)

    it("refuses a subscriber with an invalid token, and anonymous ones when MERCURE_ANONYMOUS=0", function()
      local r = srv:request("GET", HUB .. "?match=t", nil, { Authorization = "Bearer x.y.z" })
      assert.equal(401, r.status)
      srv:stop()
      srv = gw.start("examples/mercure.lua", { prefix = { "env", "MERCURE_ANONYMOUS=0" } })
      assert.equal(401, srv:request("GET", HUB .. "?match=t").status)
      local c = sub(srv, "match=t", { Authorization = "Bearer " .. token({ "subscribe" }, { { match = "t" } }) })
      c:close()
    end)

    it("ends the stream when the subscriber's token expires", function()
      local t = token({ "subscribe" }, { { match = "*" } }, { exp = os.time() + 2 })
      local c = sub(srv, "match=t", { Authorization = "Bearer " .. t })
      assert.is_true(c:closed_by_peer(10))
    end)
  end)

  describe("Last-Event-ID", function()
    it("replays from the header, lastEventID or last_event_id, filtered, and says where it started", function()
      local first = publish_ok(srv, "r", "one")
      publish_ok(srv, "other", "not for r")
      publish_ok(srv, "r", "secret", { { "private", "on" } })
      publish_ok(srv, "r", "two")
      for _, how in ipairs { "header", "lastEventID", "last_event_id" } do
        local c = how == "header" and sub(srv, "match=r", { ["Last-Event-ID"] = first })
          or sub(srv, "match=r&" .. how .. "=" .. q(first))
        assert.equal(first, c.headers["last-event-id"])
        assert.equal("two", next_data(c))
        c:close()
      end
      local c = sub(srv, "match=r&lastEventID=earliest")
      assert.equal("earliest", c.headers["last-event-id"])
      assert.equal("one", next_data(c))
      assert.equal("two", next_data(c))
      c:close()
      c = sub(srv, "match=r&lastEventID=urn:unknown")
      assert.equal("earliest", c.headers["last-event-id"])
      c:close()
    end)

    it("the header wins over the query parameter", function()
      local a = publish_ok(srv, "r", "a")
      local b = publish_ok(srv, "r", "b")
      publish_ok(srv, "r", "c")
      local c = sub(srv, "match=r&lastEventID=" .. q(a), { ["Last-Event-ID"] = b })
      assert.equal(b, c.headers["last-event-id"])
      assert.equal("c", next_data(c))
      c:close()
    end)
  end)

  describe("active subscriptions", function()
    local watcher_token = token({ "subscribe" }, {
      { match = "/.well-known/mercure/subscriptions/:type/:match/:subscriber", matchType = "URLPattern" },
      { match = "/.well-known/mercure/subscriptions", matchType = "URLPattern" },
    })

    it("publishes a private update when a subscription starts and ends", function()
      local anon = sub(srv, "matchURLPattern=" .. q("/.well-known/mercure/subscriptions/:type/:match/:subscriber") ..
        "&match=marker")
      local w = sub(srv, "matchURLPattern=" .. q("/.well-known/mercure/subscriptions/:type/:match/:subscriber"),
        { Authorization = "Bearer " .. watcher_token })
      local s = sub(srv, "match=" .. q("https://example.com/x"), {
        Authorization = "Bearer " .. token({ "subscribe" }, { { match = "*" } }, { sub = "user-1" }) })
      local doc = json.decode((next_data(w)))
      assert.equal("Subscription", doc.type)
      assert.equal("Exact", doc.matchType)
      assert.equal("https://example.com/x", doc.match)
      assert.equal("user-1", doc.subscriber)
      assert.is_true(doc.active)
      assert.equal("/.well-known/mercure/subscriptions/Exact/https%3A%2F%2Fexample.com%2Fx/user-1", doc.id)
      s:close()
      doc = json.decode((next_data(w)))
      assert.is_false(doc.active)
      -- an anonymous subscriber of the same topics sees none of it
      publish_ok(srv, "marker", "marker")
      assert.equal("marker", next_data(anon))
      w:close(); anon:close()
    end)

    it("lists them through the subscriptions API, for authorised clients only", function()
      local s = sub(srv, "match=" .. q("https://example.com/x"), {
        Authorization = "Bearer " .. token({ "subscribe" }, { { match = "*" } }, { sub = "user-2" }) })
      assert.equal(401, srv:request("GET", HUB .. "/subscriptions").status)
      local none = token({ "subscribe" }, { { match = "https://example.com/x" } })
      assert.equal(403, srv:request("GET", HUB .. "/subscriptions", nil, { Authorization = "Bearer " .. none }).status)
      local auth = { Authorization = "Bearer " .. watcher_token }
      local r = srv:request("GET", HUB .. "/subscriptions", nil, auth)
      assert.equal(200, r.status)
      assert.equal("application/ld+json", r.headers["content-type"])
      local body = json.decode(r.body)
      assert.equal("Subscriptions", body.type)
      assert.equal("https://mercure.rocks/", body["@context"])
      assert.equal(1, #body.subscriptions)
      assert.equal("user-2", body.subscriptions[1].subscriber)
      assert.truthy(body.lastEventID)
      local one_url = HUB .. "/subscriptions/Exact/" .. q("https://example.com/x") .. "/user-2"
      r = srv:request("GET", one_url, nil, auth)
      assert.equal(200, r.status, r.body)
      assert.equal("user-2", json.decode(r.body).subscriber)
      assert.equal(404, srv:request("GET", HUB .. "/subscriptions/Exact/nope/nobody", nil, auth).status)
      s:close()
    end)
  end)

  it("serves its page at / and its protected resource metadata", function()
    local r = srv:request("GET", "/")
    assert.equal(200, r.status)
    assert.matches("<title>Sluice · Mercure hub</title>", r.body)
    r = srv:request("GET", "/.well-known/oauth-protected-resource/.well-known/mercure")
    assert.equal(200, r.status)
    local meta = json.decode(r.body)
    assert.equal(RESOURCE, meta.resource)
    assert.equal(8, meta.mercure_version)
  end)

  it("takes its keys and issuer from the environment", function()
    srv:stop()
    srv = gw.start("examples/mercure.lua", { prefix = { "env", "MERCURE_PUBLISHER_JWT_KEY=pub-secret",
      "MERCURE_TRUSTED_ISSUER=https://issuer.example" } })
    assert.equal(401, publish(srv, { { "topic", "t" } }, PUBLISHER).status) -- the development key no longer works
    local t = token({ "publish" }, { { match = "*" } }, { iss = "https://issuer.example" }, "pub-secret")
    assert.equal(200, publish(srv, { { "topic", "t" } }, t).status)
    t = token({ "publish" }, { { match = "*" } }, { iss = "https://localhost" }, "pub-secret")
    assert.equal(401, publish(srv, { { "topic", "t" } }, t).status)
    srv:stop()
    srv = gw.start("examples/mercure.lua", { prefix = { "env", "MERCURE_SUBSCRIBER_JWT_KEY=sub-secret",
      "MERCURE_RESOURCE_IDENTIFIER=https://hub.example/.well-known/mercure" } })
    local function sub_status(tok)
      return srv:request("GET", HUB .. "?match=t", nil, { Authorization = "Bearer " .. tok }).status
    end
    local other = { aud = "https://hub.example/.well-known/mercure" }
    assert.equal(401, sub_status(token({ "subscribe" }, { { match = "*" } }, nil, "sub-secret"))) -- aud: the default
    assert.equal(401, sub_status(token({ "subscribe" }, { { match = "*" } }, other))) -- the development key
    local c = sub(srv, "match=t", { Authorization = "Bearer " .. token({ "subscribe" }, { { match = "*" } }, other, "sub-secret") })
    c:close()
    local meta = json.decode(srv:request("GET", "/.well-known/oauth-protected-resource/.well-known/mercure").body)
    assert.equal("https://hub.example/.well-known/mercure", meta.resource)
  end)

  it("runs on several gateways sharing Redis: updates, private filtering and replay cross nodes", function()
    srv:stop()
    local redis = gw.redis()
    local a = gw.start("examples/mercure.lua", { args = { "--redis", redis.url } })
    local b = gw.start("examples/mercure.lua", { args = { "--redis", redis.url } })
    for _, n in ipairs { a, b } do
      gw.wait_for(function() return n:logs():find("redis: connected to", 1, true) end, 10, "redis")
    end
    local sub_b = sub(b, "match=t")
    local private_b = sub(b, "match=t", { Authorization = "Bearer " .. token({ "subscribe" }, { { match = "t" } }) })
    local first
    gw.wait_for(function()
      -- the first publish may go out before node b is subscribed to Redis: publish until it arrives
      first = publish_ok(a, "t", "hello")
      local ev = sub_b:read_event(0.5)
      return ev and ev.data == "hello"
    end, 10, "an update across nodes")
    publish_ok(a, "t", "secret", { { "private", "on" } })
    publish_ok(a, "t", "public")
    local seen = {}
    repeat local d = next_data(private_b); seen[#seen + 1] = d until d == "public"
    assert.equal("secret", seen[#seen - 1])
    local d
    repeat d = next_data(sub_b) until d ~= "hello"
    assert.equal("public", d) -- after the hellos, the anonymous subscriber gets the public one, not the secret
    -- replay on the other node, from Redis history; the response header says where it started
    local late = sub(b, "match=t&lastEventID=" .. q(first))
    assert.equal(first, late.headers["last-event-id"])
    assert.equal("public", next_data(late))
    sub_b:close(); private_b:close(); late:close()
    a:stop(); b:stop()
    redis:stop()
    srv = nil
  end)

  it("keeps its subscribers across a hot reload", function()
    local auth = { Authorization = "Bearer " .. token({ "subscribe" }, {
      { match = "/.well-known/mercure/subscriptions", matchType = "URLPattern" },
      { match = "/.well-known/mercure/subscriptions/:type/:match/:subscriber", matchType = "URLPattern" } }) }
    local w = sub(srv, "matchURLPattern=" .. q("/.well-known/mercure/subscriptions/:type/:match/:subscriber"), auth)
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
