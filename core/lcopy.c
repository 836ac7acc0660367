/* lcopy: Lua data copied between states through bytes. See lcopy.h.
 *
 * The bytes: a tag, then its payload. 'n' nil, 't' true, 'f' false, 'd' a
 * double (8 bytes), 's' a length (4 bytes) and the bytes, 'T' a count of pairs
 * (4 bytes) then each key and value, 'A' the same for a table with the JSON
 * array metatable. Only this process reads them: native byte order. */
#include "lcopy.h"
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define MAX_DEPTH 100

typedef struct dumper {
  lua_State *L;
  sl_sb *sb;
  int seen;          /* stack index of the table of tables on the way down */
  const char *err;
  char errbuf[96];
} dumper;

static int dump_value(dumper *d, int idx, int depth);

static int dump_table(dumper *d, int idx, int depth) {
  lua_State *L = d->L;
  if (depth > MAX_DEPTH) return d->err = "nested more than 100 deep", -1;
  if (!lua_checkstack(L, 6)) return d->err = "out of Lua stack", -1;
  lua_pushvalue(L, idx);
  lua_rawget(L, d->seen);
  int cycle = !lua_isnil(L, -1);
  lua_pop(L, 1);
  if (cycle) return d->err = "a table that contains itself (a cycle)", -1;
  lua_pushvalue(L, idx);
  lua_pushboolean(L, 1);
  lua_rawset(L, d->seen);
  char tag = 'T';
  if (lua_getmetatable(L, idx)) {
    lua_getfield(L, -1, "__name");
    if (lua_isstring(L, -1) && strcmp(lua_tostring(L, -1), "sluice.json.array") == 0) tag = 'A';
    lua_pop(L, 2);
  }
  uint32_t count = 0;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    count++;
    lua_pop(L, 1);
  }
  sl_sb_addc(d->sb, tag);
  sl_sb_add(d->sb, &count, sizeof count);
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    int top = lua_gettop(L);
    int kt = lua_type(L, top - 1);
    if (kt != LUA_TSTRING && kt != LUA_TNUMBER && kt != LUA_TBOOLEAN) {
      snprintf(d->errbuf, sizeof d->errbuf, "a table key that is a %s", lua_typename(L, kt));
      lua_pop(L, 2);
      return d->err = d->errbuf, -1;
    }
    if (dump_value(d, top - 1, depth + 1) || dump_value(d, top, depth + 1)) {
      lua_pop(L, 2);
      return -1;
    }
    lua_pop(L, 1);
  }
  /* Off the path again: the same table may appear twice side by side (copied twice). */
  lua_pushvalue(L, idx);
  lua_pushnil(L);
  lua_rawset(L, d->seen);
  return 0;
}

static int dump_value(dumper *d, int idx, int depth) {
  lua_State *L = d->L;
  switch (lua_type(L, idx)) {
    case LUA_TNIL: sl_sb_addc(d->sb, 'n'); return 0;
    case LUA_TBOOLEAN: sl_sb_addc(d->sb, lua_toboolean(L, idx) ? 't' : 'f'); return 0;
    case LUA_TNUMBER: {
      double v = lua_tonumber(L, idx);
      sl_sb_addc(d->sb, 'd');
      sl_sb_add(d->sb, &v, sizeof v);
      return 0;
    }
    case LUA_TSTRING: {
      size_t n;
      const char *s = lua_tolstring(L, idx, &n);
      if (n > UINT32_MAX) return d->err = "a string over 4 GiB", -1;
      uint32_t n32 = (uint32_t)n;
      sl_sb_addc(d->sb, 's');
      sl_sb_add(d->sb, &n32, sizeof n32);
      sl_sb_add(d->sb, s, n);
      return 0;
    }
    case LUA_TTABLE: return dump_table(d, idx, depth);
    case LUA_TLIGHTUSERDATA:
      if (lua_touserdata(L, idx) == NULL) { /* json.null */
        sl_sb_addc(d->sb, 'n');
        return 0;
      }
      break;
    default: break;
  }
  snprintf(d->errbuf, sizeof d->errbuf, "a %s (only nil, booleans, numbers, strings and tables cross)",
           luaL_typename(L, idx));
  return d->err = d->errbuf, -1;
}

int sl_copy_dump(lua_State *L, int idx, sl_sb *sb, char *err, size_t errlen) {
  int top = lua_gettop(L);
  if (idx < 0) idx = top + idx + 1;
  lua_newtable(L);
  dumper d = {L, sb, lua_gettop(L), NULL, {0}};
  int r = dump_value(&d, idx, 0);
  lua_settop(L, top);
  if (!r && sb->failed) d.err = "out of memory", r = -1;
  if (r) snprintf(err, errlen, "%s", d.err);
  return r;
}

typedef struct loader {
  lua_State *L;
  const char *p, *end;
} loader;

static int take(loader *l, void *out, size_t n) {
  if ((size_t)(l->end - l->p) < n) return -1;
  memcpy(out, l->p, n);
  l->p += n;
  return 0;
}

static int load_value(loader *l, int depth) {
  lua_State *L = l->L;
  char tag;
  if (take(l, &tag, 1) || depth > MAX_DEPTH + 1 || !lua_checkstack(L, 4)) return -1;
  switch (tag) {
    case 'n': lua_pushnil(L); return 0;
    case 't': lua_pushboolean(L, 1); return 0;
    case 'f': lua_pushboolean(L, 0); return 0;
    case 'd': {
      double v;
      if (take(l, &v, sizeof v)) return -1;
      lua_pushnumber(L, v);
      return 0;
    }
    case 's': {
      uint32_t n;
      if (take(l, &n, sizeof n) || (size_t)(l->end - l->p) < n) return -1;
      lua_pushlstring(L, l->p, n);
      l->p += n;
      return 0;
    }
    case 'T':
    case 'A': {
      uint32_t n;
      if (take(l, &n, sizeof n)) return -1;
      lua_createtable(L, 0, 0);
      for (uint32_t i = 0; i < n; i++) {
        if (load_value(l, depth + 1)) return -1;
        if (load_value(l, depth + 1)) return -1;
        if (lua_isnil(L, -2)) return -1;
        lua_rawset(L, -3);
      }
      if (tag == 'A') {
        lua_getglobal(L, "require");
        lua_pushliteral(L, "sluice.text");
        if (lua_pcall(L, 1, 1, 0) == 0 && lua_istable(L, -1)) {
          lua_getfield(L, -1, "array_mt");
          lua_setmetatable(L, -3);
        }
        lua_pop(L, 1);
      }
      return 0;
    }
    default: return -1;
  }
}

int sl_copy_load(lua_State *L, const char *data, size_t len) {
  int top = lua_gettop(L);
  loader l = {L, data, data + len};
  if (load_value(&l, 0) || l.p != l.end) {
    lua_settop(L, top);
    return -1;
  }
  return 0;
}
