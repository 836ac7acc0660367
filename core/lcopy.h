/* lcopy: copies Lua data (nil, booleans, numbers, strings and tables of them)
 * out of one Lua state into bytes and from bytes into another: what crosses a
 * reload (sluice.on_reload's state, conn.data, a connection's params). Tables
 * are copied, never shared; cycles, functions, coroutines and userdata are
 * refused. Uses buf. */
#ifndef SL_LCOPY_H
#define SL_LCOPY_H
#include <lauxlib.h>
#include <lua.h>
#include "buf.h"

/* Appends the bytes of the value at idx to sb. 0, or -1 with err filled; L's
 * stack is left as it was. */
int sl_copy_dump(lua_State *L, int idx, sl_sb *sb, char *err, size_t errlen);
/* Pushes the value the bytes hold. 0, or -1 (bad bytes; nothing pushed). */
int sl_copy_load(lua_State *L, const char *data, size_t len);

#endif
