-- examples/mercure.lua with sluice.testing: a subscriber, a publisher with an
-- access token, and a private update that only the token holder gets.
local testing = require "sluice.testing"
local json = require "cjson"

-- HMAC and base64url from the gateway's own Lua module (beside the binary).
package.cpath = (testing.binary():match("^(.*)/[^/]+$") or "build") .. "/lua/?.so;" .. package.cpath
local crypto = require "sluice.crypto"

local function token(actions)
  local b64 = crypto.base64url_encode
  local h = b64(json.encode({ alg = "HS256", typ = "at+jwt" }))
  local p = b64(json.encode({ iss = "https://localhost", aud = "https://localhost/.well-known/mercure", sub = "spec",
    client_id = "spec", iat = os.time(), exp = os.time() + 600, jti = tostring(os.time()),
    authorization_details = { { type = "https://mercure.rocks/authorization-detail", actions = actions,
      topics = { { match = "*" } } } } }))
  return h .. "." .. p .. "." .. b64(crypto.hmac_sha256("!ChangeThisMercureHubJWTSecretKey!", h .. "." .. p))
end

describe("examples/mercure.lua", function()
  it("delivers an update to its subscribers, and a private one only to a token holder", function()
    local gw = testing.start("examples/mercure.lua")
    local hub = "/.well-known/mercure?match=" .. "https%3A%2F%2Fexample.com%2Fbooks%2F1"
    local anon = gw:stream(hub)
    local holder = gw:stream(hub, { headers = { Authorization = "Bearer " .. token({ "subscribe" }) } })
    local function publish(fields)
      return gw:request("POST", "/.well-known/mercure", { body = fields,
        headers = { ["Content-Type"] = "application/x-www-form-urlencoded", Authorization = "Bearer " .. token({ "publish" }) } })
    end
    assert.equal(200, publish("topic=https%3A%2F%2Fexample.com%2Fbooks%2F1&data=secret&private=on").status)
    local res = publish("topic=https%3A%2F%2Fexample.com%2Fbooks%2F1&data=public")
    assert.matches("^urn:uuid:", res.body)
    assert.equal("secret", assert(holder:next()).data)
    assert.equal("public", assert(holder:next()).data)
    local ev = assert(anon:next())
    assert.same({ "public", res.body }, { ev.data, ev.id })
    anon:close()
    holder:close()
    gw:stop()
  end)
end)
