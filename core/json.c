/* json: JSON text of Lua values, and exact number text. See json.h. */
#include "json.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int sl_number_text(double v, char out[SL_NUMBER_MAX]) {
  if (v != v) return snprintf(out, SL_NUMBER_MAX, "nan");
  if (isinf(v)) return snprintf(out, SL_NUMBER_MAX, v > 0 ? "inf" : "-inf");
  /* Whole numbers in the int64 range are written in full: ids of 16 digits
   * (microsecond clocks) must survive a round trip through text. */
  if (v == floor(v) && v > -9.2e18 && v < 9.2e18) {
    /* the digits by hand: ids and counters go through here for every event */
    long long n = (long long)v;
    unsigned long long u = n < 0 ? 0ull - (unsigned long long)n : (unsigned long long)n;
    int len = n < 0;
    if (n < 0) out[0] = '-';
    len += (int)sl_u64_digits(u, out + len);
    out[len] = '\0';
    return len;
  }
  /* Otherwise the shortest of %.14g .. %.17g that reads back as the same double. */
  int n = 0;
  for (int prec = 14; prec <= 17; prec++) {
    n = snprintf(out, SL_NUMBER_MAX, "%.*g", prec, v);
    if (strtod(out, NULL) == v) break;
  }
  return n;
}

typedef struct enc {
  lua_State *L;
  sl_sb *sb;
  int array_mt;          /* stack index of the array metatable */
  void *empty_array;     /* the marker for [] */
  const char *err;       /* what went wrong (a static string), NULL if nothing */
  char errbuf[96];
} enc;

static int fail(enc *e, const char *what) {
  if (!e->err) e->err = what;
  return -1;
}

static void add_string(sl_sb *sb, const char *s, size_t n) {
  static const char hex[] = "0123456789abcdef";
  sl_sb_addc(sb, '"');
  size_t run = 0; /* bytes copied as they are since the last escape */
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)s[i];
    if (ch >= 0x20 && ch != '"' && ch != '\\') continue;
    sl_sb_add(sb, s + run, i - run);
    run = i + 1;
    char esc[6] = {'\\', 0};
    switch (ch) {
      case '"': esc[1] = '"'; break;
      case '\\': esc[1] = '\\'; break;
      case '\n': esc[1] = 'n'; break;
      case '\r': esc[1] = 'r'; break;
      case '\t': esc[1] = 't'; break;
      case '\b': esc[1] = 'b'; break;
      case '\f': esc[1] = 'f'; break;
      default:
        memcpy(esc, "\\u00", 4);
        esc[4] = hex[ch >> 4];
        esc[5] = hex[ch & 15];
        sl_sb_add(sb, esc, 6);
        continue;
    }
    sl_sb_add(sb, esc, 2);
  }
  sl_sb_add(sb, s + run, n - run);
  sl_sb_addc(sb, '"');
}

static int add_number(enc *e, double v) {
  if (v != v || isinf(v)) return fail(e, "cannot encode NaN or infinity as JSON");
  char t[SL_NUMBER_MAX];
  int n = sl_number_text(v, t);
  sl_sb_add(e->sb, t, (size_t)n);
  return 0;
}

static int add_value(enc *e, int idx, int depth);

/* The length of the table at idx if it is an array (keys 1..n, holes allowed
 * while not too sparse), else -1. */
static long array_length(lua_State *L, int idx) {
  double max = 0;
  long count = 0;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    double k;
    if (lua_type(L, -1) != LUA_TNUMBER || (k = lua_tonumber(L, -1)) < 1 || k != floor(k) || k > 1e9) {
      lua_pop(L, 1);
      return -1;
    }
    if (k > max) max = k;
    count++;
  }
  /* As lua-cjson: a few holes become nulls; a sparse table is an object. */
  if (max > 10 && max > 2.0 * (double)count) return -1;
  return (long)max;
}

static int add_table(enc *e, int idx, int depth) {
  lua_State *L = e->L;
  if (depth > 1000) return fail(e, "cannot encode a table nested more than 1000 deep (a cycle?) as JSON");
  if (!lua_checkstack(L, 4)) return fail(e, "out of Lua stack");
  int is_array_mt = 0;
  if (lua_getmetatable(L, idx)) {
    is_array_mt = lua_rawequal(L, -1, e->array_mt);
    lua_pop(L, 1);
  }
  long n = array_length(L, idx);
  if (is_array_mt && n < 0) return fail(e, "a table with the JSON array metatable has keys other than 1..n");
  if (n > 0 || (n == 0 && is_array_mt)) {
    sl_sb_addc(e->sb, '[');
    for (long i = 1; i <= n; i++) {
      if (i > 1) sl_sb_addc(e->sb, ',');
      lua_rawgeti(L, idx, (int)i);
      int r = add_value(e, lua_gettop(L), depth + 1);
      lua_pop(L, 1);
      if (r) return r;
    }
    sl_sb_addc(e->sb, ']');
    return 0;
  }
  sl_sb_addc(e->sb, '{');
  int first = 1;
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    int kt = lua_type(L, -2);
    if (kt == LUA_TSTRING) {
      size_t kl;
      const char *k = lua_tolstring(L, -2, &kl);
      if (!first) sl_sb_addc(e->sb, ',');
      add_string(e->sb, k, kl);
    } else if (kt == LUA_TNUMBER) {
      char t[SL_NUMBER_MAX];
      int tl = sl_number_text(lua_tonumber(L, -2), t);
      if (!first) sl_sb_addc(e->sb, ',');
      add_string(e->sb, t, (size_t)tl);
    } else {
      lua_pop(L, 2);
      snprintf(e->errbuf, sizeof e->errbuf, "cannot encode a table with a %s key as JSON", lua_typename(L, kt));
      return fail(e, e->errbuf);
    }
    first = 0;
    sl_sb_addc(e->sb, ':');
    int r = add_value(e, lua_gettop(L), depth + 1);
    lua_pop(L, 1);
    if (r) {
      lua_pop(L, 1);
      return r;
    }
  }
  sl_sb_addc(e->sb, '}');
  return 0;
}

static int add_value(enc *e, int idx, int depth) {
  lua_State *L = e->L;
  switch (lua_type(L, idx)) {
    case LUA_TNIL: sl_sb_adds(e->sb, "null"); return 0;
    case LUA_TBOOLEAN: sl_sb_adds(e->sb, lua_toboolean(L, idx) ? "true" : "false"); return 0;
    case LUA_TNUMBER: return add_number(e, lua_tonumber(L, idx));
    case LUA_TSTRING: {
      size_t n;
      const char *s = lua_tolstring(L, idx, &n);
      add_string(e->sb, s, n);
      return 0;
    }
    case LUA_TTABLE: return add_table(e, idx, depth);
    case LUA_TLIGHTUSERDATA:
      if (lua_touserdata(L, idx) == NULL) { /* cjson.null */
        sl_sb_adds(e->sb, "null");
        return 0;
      }
      if (lua_touserdata(L, idx) == e->empty_array) {
        sl_sb_adds(e->sb, "[]");
        return 0;
      }
      break;
    default: break;
  }
  snprintf(e->errbuf, sizeof e->errbuf, "cannot encode a %s as JSON", luaL_typename(L, idx));
  return fail(e, e->errbuf);
}

int sl_json_encode(lua_State *L, int idx, int array_mt, void *empty_array, sl_sb *sb, char *err, size_t errlen) {
  enc e = {L, sb, array_mt, empty_array, NULL, {0}};
  int top = lua_gettop(L);
  int r = add_value(&e, idx, 0);
  lua_settop(L, top);
  if (!r && sb->failed) e.err = "out of memory", r = -1;
  if (r) snprintf(err, errlen, "%s", e.err);
  return r;
}

/* The marker sluice.json.empty_array: encodes as []. */
static char empty_array;

/* encode(value) -> text; raises (at the caller's caller) for what JSON cannot
 * hold. Upvalue 1 is the array metatable. */
static int l_encode(lua_State *L) {
  luaL_checkany(L, 1);
  lua_settop(L, 1);
  sl_sb sb;
  sl_sb_init(&sb, 128);
  char err[128];
  if (sl_json_encode(L, 1, lua_upvalueindex(1), &empty_array, &sb, err, sizeof err)) {
    sl_sb_free(&sb);
    luaL_where(L, 2);
    lua_pushstring(L, err);
    lua_concat(L, 2);
    return lua_error(L);
  }
  lua_pushlstring(L, sb.b->data, sb.b->len);
  sl_sb_free(&sb);
  return 1;
}

/* number(v) -> its text */
static int l_number(lua_State *L) {
  char t[SL_NUMBER_MAX];
  int n = sl_number_text(luaL_checknumber(L, 1), t);
  lua_pushlstring(L, t, (size_t)n);
  return 1;
}

int luaopen_sluice_text(lua_State *L) {
  lua_createtable(L, 0, 4);
  lua_pushcfunction(L, l_number);
  lua_setfield(L, -2, "number");
  lua_createtable(L, 0, 1); /* the array metatable */
  lua_pushliteral(L, "sluice.json.array");
  lua_setfield(L, -2, "__name");
  lua_pushvalue(L, -1);
  lua_setfield(L, -3, "array_mt");
  lua_pushcclosure(L, l_encode, 1);
  lua_setfield(L, -2, "encode");
  lua_pushlightuserdata(L, &empty_array);
  lua_setfield(L, -2, "empty_array");
  return 1;
}
