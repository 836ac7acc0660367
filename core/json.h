/* json (module sluice.text): the JSON text of a Lua value (what sluice.json.encode and events with
 * table data send), and the exact text of a number. Slashes are not escaped,
 * whole numbers are written in full, empty tables are objects unless marked.
 * Uses buf. */
#ifndef SL_JSON_H
#define SL_JSON_H
#include <lauxlib.h>
#include <lua.h>
#include "buf.h"

#define SL_NUMBER_MAX 32

/* The text of v: whole numbers (up to 2^63) digit for digit, others the
 * shortest form that reads back as v; "nan", "inf", "-inf". Returns its length. */
int sl_number_text(double v, char out[SL_NUMBER_MAX]);

/* Appends the JSON text of the value at idx to sb. Tables whose metatable is
 * the one at stack index array_mt are arrays (also when empty); the light
 * userdata empty_array is [], NULL (cjson.null) is null. 0, or -1 with err
 * filled (a function, NaN, a cycle...); L's stack is left as it was. */
int sl_json_encode(lua_State *L, int idx, int array_mt, void *empty_array, sl_sb *sb, char *err, size_t errlen);

/* The sluice.text module: number(v), encode(v), array_mt, empty_array. The
 * gateway preloads it; it also builds as a Lua module for the unit specs. */
int luaopen_sluice_text(lua_State *L);

#endif
