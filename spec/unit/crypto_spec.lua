local crypto = require "sluice.crypto"
local jwt = require "sluice.jwt"

local function hex(s) return (s:gsub(".", function(c) return ("%02x"):format(c:byte()) end)) end

describe("sluice.crypto", function()
  it("hashes and MACs (FIPS 180-2 and RFC 4231 vectors)", function()
    assert.equal("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", hex(crypto.sha256("abc")))
    assert.equal("b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
      hex(crypto.hmac_sha256(("\11"):rep(20), "Hi There")))
  end)
  it("encodes and decodes base64url without padding (RFC 4648 vectors)", function()
    for plain, enc in pairs { [""] = "", f = "Zg", fo = "Zm8", foo = "Zm9v", foob = "Zm9vYg", fooba = "Zm9vYmE",
      foobar = "Zm9vYmFy", ["\251\255"] = "-_8" } do
      assert.equal(enc, crypto.base64url_encode(plain))
      assert.equal(plain, crypto.base64url_decode(enc))
    end
    assert.equal("foob", crypto.base64url_decode("Zm9vYg=="))
    assert.same({ nil, "bad base64url" }, { crypto.base64url_decode("Zm9v+g") })
    assert.same({ nil, "bad base64url" }, { crypto.base64url_decode("Z") })
  end)
  it("gives random bytes and compares in constant time", function()
    local a, b = crypto.random_bytes(32), crypto.random_bytes(32)
    assert.equal(32, #a)
    assert.are_not.equal(a, b)
    assert.is_true(crypto.equal("abc", "abc"))
    assert.is_false(crypto.equal("abc", "abd"))
    assert.is_false(crypto.equal("abc", "ab"))
  end)
end)

describe("sluice.jwt", function()
  -- the example token of jwt.io / RFC 7519 style, HS256 with "your-256-bit-secret"
  local TOKEN = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
  local function sign(claims, key, header)
    local json = require "sluice.json"
    local h = crypto.base64url_encode(json.encode(header or { alg = "HS256", typ = "JWT" }))
    local p = crypto.base64url_encode(json.encode(claims))
    return h .. "." .. p .. "." .. crypto.base64url_encode(crypto.hmac_sha256(key, h .. "." .. p))
  end

  it("verifies an HS256 token and returns its claims", function()
    local claims = assert(jwt.verify(TOKEN, "your-256-bit-secret"))
    assert.same({ "1234567890", "John Doe" }, { claims.sub, claims.name })
    assert.same({ nil, "bad signature" }, { jwt.verify(TOKEN, "another secret") })
    assert.truthy(jwt.verify(TOKEN, { "old secret", "your-256-bit-secret" })) -- rotation
  end)
  it("refuses tokens that are malformed, of another alg, expired or not yet valid", function()
    assert.same({ nil, "malformed token" }, { jwt.verify("a.b", "k") })
    assert.same({ nil, "no token" }, { jwt.verify(nil, "k") })
    local none = sign({ sub = "x" }, "k", { alg = "none" })
    assert.same({ nil, "unexpected alg none" }, { jwt.verify(none, "k") })
    assert.same({ nil, "unexpected alg HS256" }, { jwt.verify(TOKEN, "k", { alg = "RS256" }) })
    assert.same({ nil, "token expired" }, { jwt.verify(sign({ exp = 1000 }, "k"), "k", { now = 1001 }) })
    assert.truthy(jwt.verify(sign({ exp = 1000 }, "k"), "k", { now = 1001, leeway = 5 }))
    assert.same({ nil, "token not yet valid" }, { jwt.verify(sign({ nbf = 2000 }, "k"), "k", { now = 1000 }) })
    assert.has_error(function() jwt.verify(TOKEN, "k", { alg = "none" }) end)
    assert.has_error(function() jwt.verify(TOKEN, "k", { leway = 1 }) end)
  end)
  it("verifies RS256 with a public key, signed by the openssl tool", function()
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -p " .. dir))
    assert(os.execute(("openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out %s/k.pem 2>/dev/null"):format(dir)))
    assert(os.execute(("openssl pkey -in %s/k.pem -pubout -out %s/pub.pem 2>/dev/null"):format(dir, dir)))
    local json = require "sluice.json"
    local signed = crypto.base64url_encode(json.encode({ alg = "RS256" })) .. "." .. crypto.base64url_encode(json.encode({ sub = "rs" }))
    local f = io.open(dir .. "/in", "wb"); f:write(signed); f:close()
    assert(os.execute(("openssl dgst -sha256 -sign %s/k.pem -out %s/sig %s/in"):format(dir, dir, dir)))
    f = io.open(dir .. "/sig", "rb"); local sig = f:read("*a"); f:close()
    f = io.open(dir .. "/pub.pem", "rb"); local pub = f:read("*a"); f:close()
    os.execute("rm -rf " .. dir)
    local token = signed .. "." .. crypto.base64url_encode(sig)
    assert.equal("rs", assert(jwt.verify(token, pub, { alg = "RS256" })).sub)
    assert.same({ nil, "bad signature" }, { jwt.verify(token:sub(1, -3) .. "AA", pub, { alg = "RS256" }) })
    assert.same({ nil, "bad signature" }, { jwt.verify(token, "not a key", { alg = "RS256" }) })
  end)
end)
