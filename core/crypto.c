/* crypto (module sluice.crypto): hashing, HMAC, base64url, random bytes and
 * RSA signature checks through OpenSSL's libcrypto. See crypto.h. */
#include "crypto.h"
#include <lauxlib.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <string.h>

/* sha256(s) -> the 32-byte digest */
static int l_sha256(lua_State *L) {
  size_t n;
  const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &n);
  unsigned char md[SHA256_DIGEST_LENGTH];
  SHA256(s, n, md);
  lua_pushlstring(L, (const char *)md, sizeof md);
  return 1;
}

/* hmac_sha256(key, message) -> the 32-byte MAC */
static int l_hmac_sha256(lua_State *L) {
  size_t kn, n;
  const char *key = luaL_checklstring(L, 1, &kn);
  const unsigned char *msg = (const unsigned char *)luaL_checklstring(L, 2, &n);
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int mdlen = 0;
  if (!HMAC(EVP_sha256(), key, (int)kn, msg, n, md, &mdlen)) return luaL_error(L, "HMAC failed");
  lua_pushlstring(L, (const char *)md, mdlen);
  return 1;
}

/* random_bytes(n) -> n bytes from the system's CSPRNG */
static int l_random_bytes(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  if (n < 0 || n > 65536) return luaL_error(L, "random_bytes: 0 to 65536 bytes");
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  unsigned char chunk[256];
  for (lua_Integer left = n; left > 0;) {
    int k = left > (lua_Integer)sizeof chunk ? (int)sizeof chunk : (int)left;
    if (RAND_bytes(chunk, k) != 1) return luaL_error(L, "random_bytes: no randomness available");
    luaL_addlstring(&b, (const char *)chunk, (size_t)k);
    left -= k;
  }
  luaL_pushresult(&b);
  return 1;
}

static const char b64url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* base64url_encode(s) -> text without padding (RFC 4648 section 5) */
static int l_b64url_encode(lua_State *L) {
  size_t n;
  const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &n);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  for (size_t i = 0; i < n; i += 3) {
    uint32_t v = (uint32_t)s[i] << 16 | (i + 1 < n ? (uint32_t)s[i + 1] << 8 : 0) | (i + 2 < n ? s[i + 2] : 0);
    luaL_addchar(&b, b64url[v >> 18 & 63]);
    luaL_addchar(&b, b64url[v >> 12 & 63]);
    if (i + 1 < n) luaL_addchar(&b, b64url[v >> 6 & 63]);
    if (i + 2 < n) luaL_addchar(&b, b64url[v & 63]);
  }
  luaL_pushresult(&b);
  return 1;
}

/* base64url_decode(text) -> bytes, or nil, "bad base64url" (padding allowed, nothing else) */
static int l_b64url_decode(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  while (n && s[n - 1] == '=') n--;
  if (n % 4 == 1) goto bad;
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  uint32_t acc = 0;
  int bits = 0;
  for (size_t i = 0; i < n; i++) {
    const char *p = memchr(b64url, s[i], 64);
    if (!p || !s[i]) goto bad_buf;
    acc = acc << 6 | (uint32_t)(p - b64url);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      luaL_addchar(&b, (char)(acc >> bits & 0xff));
    }
  }
  luaL_pushresult(&b);
  return 1;
bad_buf:
  luaL_pushresult(&b);
  lua_pop(L, 1);
bad:
  lua_pushnil(L);
  lua_pushliteral(L, "bad base64url");
  return 2;
}

/* equal(a, b) -> whether two strings are equal, in time that depends only on their length */
static int l_equal(lua_State *L) {
  size_t an, bn;
  const char *a = luaL_checklstring(L, 1, &an), *b = luaL_checklstring(L, 2, &bn);
  lua_pushboolean(L, an == bn && CRYPTO_memcmp(a, b, an) == 0);
  return 1;
}

/* rsa_sha256_verify(pem_public_key, data, signature) -> true, or false and why */
static int l_rsa_verify(lua_State *L) {
  size_t kn, dn, sn;
  const char *pem = luaL_checklstring(L, 1, &kn);
  const unsigned char *data = (const unsigned char *)luaL_checklstring(L, 2, &dn);
  const unsigned char *sig = (const unsigned char *)luaL_checklstring(L, 3, &sn);
  BIO *bio = BIO_new_mem_buf(pem, (int)kn);
  EVP_PKEY *key = bio ? PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL) : NULL;
  BIO_free(bio);
  if (!key || EVP_PKEY_base_id(key) != EVP_PKEY_RSA) {
    EVP_PKEY_free(key);
    lua_pushboolean(L, 0);
    lua_pushliteral(L, "not an RSA public key in PEM");
    return 2;
  }
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  int ok = ctx && EVP_DigestVerifyInit(ctx, NULL, EVP_sha256(), NULL, key) == 1 &&
           EVP_DigestVerify(ctx, sig, sn, data, dn) == 1;
  EVP_MD_CTX_free(ctx);
  EVP_PKEY_free(key);
  lua_pushboolean(L, ok);
  if (ok) return 1;
  lua_pushliteral(L, "bad signature");
  return 2;
}

int luaopen_sluice_crypto(lua_State *L) {
  static const luaL_Reg fns[] = {{"sha256", l_sha256},
                                 {"hmac_sha256", l_hmac_sha256},
                                 {"random_bytes", l_random_bytes},
                                 {"base64url_encode", l_b64url_encode},
                                 {"base64url_decode", l_b64url_decode},
                                 {"equal", l_equal},
                                 {"rsa_sha256_verify", l_rsa_verify},
                                 {NULL, NULL}};
  lua_newtable(L);
  luaL_setfuncs(L, fns, 0);
  return 1;
}
