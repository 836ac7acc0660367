/* crypto (module sluice.crypto): SHA-256, HMAC-SHA256, base64url, random
 * bytes, constant-time equality and RS256 signature checks, all from OpenSSL's
 * libcrypto (no hand-written crypto); the Lua library builds sluice.jwt on it.
 * The gateway preloads it; it also builds as a Lua module for the unit specs. */
#ifndef SL_CRYPTO_H
#define SL_CRYPTO_H
#include <lua.h>

int luaopen_sluice_crypto(lua_State *L);

#endif
