--- sluice.jwt: verifies JSON Web Tokens (RFC 7519) signed with HS256 or RS256,
-- through libcrypto (sluice.crypto). The algorithm is the caller's to choose:
-- a token whose header names another (or "none") is refused.
local crypto = require "sluice.crypto"
local json = require "sluice.json"
local event = require "sluice.event"

local type, error, ipairs, tostring, time = type, error, ipairs, tostring, os.time
local b64d = crypto.base64url_decode

local _M = {}
local OPTS = { alg = true, leeway = true, now = true }
local ALGS = { HS256 = true, RS256 = true }

local function decode_json(part)
  local text = b64d(part)
  if not text then return nil end
  local v = json.decode(text)
  return type(v) == "table" and v or nil
end

--- jwt.verify(token, keys, opts): the token's claims and its header, or nil and why.
-- keys: a secret (HS256) or a PEM public key (RS256), or a list of them (any may
-- match: key rotation). opts: alg ("HS256", the default, or "RS256"), leeway
-- (seconds allowed on exp and nbf, default 0).
function _M.verify(token, keys, opts)
  opts = opts or {}
  if type(opts) ~= "table" then error("jwt.verify: options must be a table", 2) end
  event.check_keys(opts, OPTS, "jwt.verify", 2)
  local alg = opts.alg or "HS256"
  if not ALGS[alg] then error("jwt.verify: alg must be HS256 or RS256", 2) end
  if type(keys) == "string" then keys = { keys } end
  if type(keys) ~= "table" or #keys == 0 then error("jwt.verify: keys must be a key or a list of keys", 2) end
  for _, k in ipairs(keys) do
    if type(k) ~= "string" or k == "" then error("jwt.verify: keys must be non-empty strings", 2) end
  end
  local leeway = opts.leeway or 0
  if type(leeway) ~= "number" or leeway < 0 then error("jwt.verify: leeway must be a number of seconds", 2) end
  if type(token) ~= "string" then return nil, "no token" end

  local h, p, s = token:match("^([%w_%-]+)%.([%w_%-]+)%.([%w_%-]+)$")
  if not h then return nil, "malformed token" end
  local header = decode_json(h)
  if not header then return nil, "malformed header" end
  if header.alg ~= alg then return nil, "unexpected alg " .. tostring(header.alg) end
  local sig = b64d(s)
  if not sig then return nil, "malformed signature" end
  local signed, ok = h .. "." .. p, false
  for _, k in ipairs(keys) do
    if alg == "HS256" then ok = crypto.equal(crypto.hmac_sha256(k, signed), sig)
    else ok = crypto.rsa_sha256_verify(k, signed, sig) end
    if ok then break end
  end
  if not ok then return nil, "bad signature" end
  local claims = decode_json(p)
  if not claims then return nil, "malformed claims" end
  local now = opts.now or time()
  if claims.exp ~= nil and (type(claims.exp) ~= "number" or now > claims.exp + leeway) then
    return nil, "token expired"
  end
  if claims.nbf ~= nil and (type(claims.nbf) ~= "number" or now + leeway < claims.nbf) then
    return nil, "token not yet valid"
  end
  return claims, header
end

return _M
