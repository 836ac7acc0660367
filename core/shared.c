/* shared: sluice.shared's dictionaries. See shared.h. */
#include "shared.h"
#include <lauxlib.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "lcopy.h"
#include "lua_vm.h"
#include "server.h"

#define SL_SHARED_MT "sluice.shared"

typedef struct shent {
  struct shent *hnext;       /* hash chain */
  struct shent *prev, *next; /* use order: prev is more recent */
  uint64_t expires;          /* loop milliseconds, 0 = never */
  uint32_t hash, klen, vlen;
  char kv[];                 /* the key, then the value's lcopy bytes */
} shent;

typedef struct sl_shdict {
  struct sl_shdict *next;
  sl_server *srv;
  size_t size, used;         /* bytes allowed, bytes counted */
  shent **buckets;
  size_t nbuckets, count;
  shent *head, *tail;        /* most and least recently used */
  uint32_t seed;
  char name[];
} sl_shdict;

/* The dictionaries, for the process's life (one server per process). */
static sl_shdict *dicts;

static uint32_t hash_of(uint32_t seed, const char *p, size_t len) {
  uint32_t h = 2166136261u ^ seed;
  for (size_t i = 0; i < len; i++) h = (h ^ (uint8_t)p[i]) * 16777619u;
  return h;
}

static size_t cost(const shent *e) { return SL_SHARED_ENTRY_OVERHEAD + e->klen + e->vlen; }

static uint64_t now_ms(sl_shdict *d) { return uv_now(d->srv->loop); }

static void unuse(sl_shdict *d, shent *e) {
  if (e->prev) e->prev->next = e->next;
  else d->head = e->next;
  if (e->next) e->next->prev = e->prev;
  else d->tail = e->prev;
}

static void use(sl_shdict *d, shent *e) {
  e->prev = NULL;
  e->next = d->head;
  if (d->head) d->head->prev = e;
  d->head = e;
  if (!d->tail) d->tail = e;
}

static void drop(sl_shdict *d, shent *e) {
  shent **pp = &d->buckets[e->hash & (d->nbuckets - 1)];
  while (*pp != e) pp = &(*pp)->hnext;
  *pp = e->hnext;
  unuse(d, e);
  d->used -= cost(e);
  d->count--;
  free(e);
}

static int expired(sl_shdict *d, const shent *e) { return e->expires && e->expires <= now_ms(d); }

/* The live entry for key (an expired one is dropped on the way), or NULL. */
static shent *find(sl_shdict *d, const char *k, size_t klen, uint32_t h) {
  for (shent *e = d->buckets[h & (d->nbuckets - 1)]; e; e = e->hnext) {
    if (e->hash != h || e->klen != klen || memcmp(e->kv, k, klen) != 0) continue;
    if (expired(d, e)) {
      drop(d, e);
      return NULL;
    }
    return e;
  }
  return NULL;
}

static void grow(sl_shdict *d) {
  size_t n = d->nbuckets * 2;
  shent **b = calloc(n, sizeof *b);
  if (!b) return; /* longer chains, still correct */
  for (size_t i = 0; i < d->nbuckets; i++) {
    for (shent *e = d->buckets[i], *next; e; e = next) {
      next = e->hnext;
      e->hnext = b[e->hash & (n - 1)];
      b[e->hash & (n - 1)] = e;
    }
  }
  free(d->buckets);
  d->buckets = b;
  d->nbuckets = n;
}

/* Evicts from the least recently used end until need more bytes fit; 1 if a
 * live entry had to go. */
static int make_room(sl_shdict *d, size_t need) {
  int forced = 0;
  while (d->tail && d->used + need > d->size) {
    if (!expired(d, d->tail)) forced = 1;
    drop(d, d->tail);
  }
  return forced;
}

enum { STORE_SET, STORE_ADD, STORE_REPLACE };
enum { STORED = 0, ERR_EXISTS = -1, ERR_NOT_FOUND = -2, ERR_NO_MEMORY = -3 };

/* Stores the value bytes under key as mode asks; *forced tells of evictions. */
static int store(sl_shdict *d, const char *k, size_t klen, const char *v, size_t vlen, uint64_t ttl_ms, int mode,
                 int *forced) {
  uint32_t h = hash_of(d->seed, k, klen);
  shent *old = find(d, k, klen, h);
  *forced = 0;
  if (mode == STORE_ADD && old) return ERR_EXISTS;
  if (mode == STORE_REPLACE && !old) return ERR_NOT_FOUND;
  size_t need = SL_SHARED_ENTRY_OVERHEAD + klen + vlen;
  if (need > d->size) return ERR_NO_MEMORY;
  shent *e = malloc(sizeof *e + klen + vlen);
  if (!e) return ERR_NO_MEMORY;
  if (old) drop(d, old);
  *forced = make_room(d, need);
  e->hash = h;
  e->klen = (uint32_t)klen;
  e->vlen = (uint32_t)vlen;
  e->expires = ttl_ms ? now_ms(d) + ttl_ms : 0;
  memcpy(e->kv, k, klen);
  memcpy(e->kv + klen, v, vlen);
  if (d->count >= d->nbuckets) grow(d);
  shent **b = &d->buckets[h & (d->nbuckets - 1)];
  e->hnext = *b;
  *b = e;
  use(d, e);
  d->used += need;
  d->count++;
  return STORED;
}

static sl_shdict *dict_new(sl_server *srv, const char *name, size_t len) {
  sl_shdict *d = calloc(1, sizeof *d + len + 1);
  if (!d) return NULL;
  d->nbuckets = 16;
  d->buckets = calloc(d->nbuckets, sizeof *d->buckets);
  if (!d->buckets) {
    free(d);
    return NULL;
  }
  memcpy(d->name, name, len);
  d->srv = srv;
  d->size = SL_SHARED_DEFAULT_SIZE;
  memcpy(&d->seed, srv->token_key, sizeof d->seed); /* random per process: chains cannot be planned */
  d->next = dicts;
  dicts = d;
  return d;
}

void sl_shared_free(sl_server *srv) {
  (void)srv;
  while (dicts) {
    sl_shdict *d = dicts;
    dicts = d->next;
    while (d->head) drop(d, d->head);
    free(d->buckets);
    free(d);
  }
}

/* ---- the Lua side ---- */

static sl_shdict *check_dict(lua_State *L) {
  sl_shdict **ud = lua_touserdata(L, 1);
  if (ud && lua_getmetatable(L, 1)) {
    luaL_getmetatable(L, SL_SHARED_MT);
    int ok = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    if (ok) return *ud;
  }
  luaL_error(L, "sluice.shared: call its methods with a colon (dict:get(key))");
  return NULL;
}

static const char *check_key(lua_State *L, int idx, size_t *len) {
  if (lua_type(L, idx) != LUA_TSTRING && lua_type(L, idx) != LUA_TNUMBER)
    luaL_error(L, "sluice.shared: a key is a string, not a %s", luaL_typename(L, idx));
  const char *k = lua_tolstring(L, idx, len);
  if (*len == 0 || *len > SL_SHARED_MAX_KEY) luaL_error(L, "sluice.shared: a key is 1 to 65535 bytes");
  return k;
}

/* A ttl argument in seconds (nil or 0: never) as milliseconds, at least 1. */
static uint64_t check_ttl(lua_State *L, int idx) {
  if (lua_isnoneornil(L, idx)) return 0;
  double t = luaL_checknumber(L, idx);
  if (!(t >= 0) || isinf(t)) luaL_error(L, "sluice.shared: a ttl is a number of seconds (0 = never)");
  uint64_t ms = sl_secs_ms(t);
  if (ms == SL_NEVER) return 0;
  return t > 0 && ms == 0 ? 1 : ms;
}

/* The dictionary (argument 1) and the live entry of the key (argument 2), or NULL. */
static shent *lookup(lua_State *L, sl_shdict **dp, const char **kp, size_t *klen) {
  sl_shdict *d = *dp = check_dict(L);
  const char *k = check_key(L, 2, klen);
  if (kp) *kp = k;
  return find(d, k, *klen, hash_of(d->seed, k, *klen));
}

static int push_fail(lua_State *L, const char *why) {
  lua_pushnil(L);
  lua_pushstring(L, why);
  return 2;
}

static int push_stored(lua_State *L, int r, int forced) {
  if (r == ERR_EXISTS) return push_fail(L, "exists");
  if (r == ERR_NOT_FOUND) return push_fail(L, "not found");
  if (r == ERR_NO_MEMORY) return push_fail(L, "no memory");
  lua_pushboolean(L, 1);
  lua_pushnil(L);
  lua_pushboolean(L, forced);
  return 3;
}

static int store_from_lua(lua_State *L, int mode) {
  sl_shdict *d = check_dict(L);
  size_t klen;
  const char *k = check_key(L, 2, &klen);
  uint64_t ttl = check_ttl(L, 4);
  if (lua_isnoneornil(L, 3)) {
    /* set(key, nil) deletes; add and replace of nil are the same as of a deletion */
    uint32_t h = hash_of(d->seed, k, klen);
    shent *e = find(d, k, klen, h);
    if (mode == STORE_REPLACE && !e) return push_fail(L, "not found");
    if (mode == STORE_ADD && e) return push_fail(L, "exists");
    if (e) drop(d, e);
    return push_stored(L, STORED, 0);
  }
  sl_sb sb;
  char err[160];
  sl_sb_init(&sb, 64);
  int bad = sl_copy_dump(L, 3, &sb, err, sizeof err);
  if (bad || sb.failed) {
    sl_sb_free(&sb);
    return luaL_error(L, "sluice.shared '%s' cannot hold %s", d->name, bad ? err : "it: out of memory");
  }
  int forced;
  int r = store(d, k, klen, sb.b->data, sb.b->len, ttl, mode, &forced);
  sl_sb_free(&sb);
  return push_stored(L, r, forced);
}

static int dict_set(lua_State *L) { return store_from_lua(L, STORE_SET); }
static int dict_add(lua_State *L) { return store_from_lua(L, STORE_ADD); }
static int dict_replace(lua_State *L) { return store_from_lua(L, STORE_REPLACE); }

static int dict_get(lua_State *L) {
  sl_shdict *d;
  size_t klen;
  shent *e = lookup(L, &d, NULL, &klen);
  if (!e) {
    lua_pushnil(L);
    return 1;
  }
  unuse(d, e);
  use(d, e);
  if (sl_copy_load(L, e->kv + e->klen, e->vlen)) return luaL_error(L, "sluice.shared: a damaged value");
  return 1;
}

/* incr(key, by, init, init_ttl) -> the new number, or nil and "not found" / "not a number" */
static int dict_incr(lua_State *L) {
  sl_shdict *d;
  const char *k;
  size_t klen;
  shent *e = lookup(L, &d, &k, &klen);
  double by = luaL_optnumber(L, 3, 1);
  if (!e) {
    if (lua_isnoneornil(L, 4)) return push_fail(L, "not found");
    char v[1 + sizeof(double)];
    double n = luaL_checknumber(L, 4) + by;
    v[0] = 'd';
    memcpy(v + 1, &n, sizeof n);
    int forced;
    int r = store(d, k, klen, v, sizeof v, check_ttl(L, 5), STORE_SET, &forced);
    if (r != STORED) return push_stored(L, r, forced);
    lua_pushnumber(L, n);
    return 1;
  }
  char *v = e->kv + e->klen;
  if (e->vlen != 1 + sizeof(double) || v[0] != 'd') return push_fail(L, "not a number");
  double n;
  memcpy(&n, v + 1, sizeof n);
  n += by;
  memcpy(v + 1, &n, sizeof n);
  unuse(d, e);
  use(d, e);
  lua_pushnumber(L, n);
  return 1;
}

static int dict_delete(lua_State *L) {
  sl_shdict *d;
  size_t klen;
  shent *e = lookup(L, &d, NULL, &klen);
  if (e) drop(d, e);
  return 0;
}

/* ttl(key) -> seconds left (0 = never expires), or nil and "not found" */
static int dict_ttl(lua_State *L) {
  sl_shdict *d;
  size_t klen;
  shent *e = lookup(L, &d, NULL, &klen);
  if (!e) return push_fail(L, "not found");
  lua_pushnumber(L, e->expires ? (double)(e->expires - now_ms(d)) / 1000 : 0);
  return 1;
}

/* expire(key, ttl) -> true, or nil and "not found" */
static int dict_expire(lua_State *L) {
  sl_shdict *d;
  size_t klen;
  shent *e = lookup(L, &d, NULL, &klen);
  uint64_t ttl = check_ttl(L, 3);
  if (!e) return push_fail(L, "not found");
  e->expires = ttl ? now_ms(d) + ttl : 0;
  lua_pushboolean(L, 1);
  return 1;
}

/* keys(max) -> up to max live keys (default 1024, 0 = all), most recently used first */
static int dict_keys(lua_State *L) {
  sl_shdict *d = check_dict(L);
  lua_Number max = luaL_optnumber(L, 2, 1024);
  if (!(max >= 0)) return luaL_error(L, "sluice.shared: keys(max) takes a count (0 = all)");
  size_t limit = max == 0 || max > (lua_Number)d->count ? d->count : (size_t)max;
  lua_createtable(L, (int)limit, 0);
  size_t n = 0;
  for (shent *e = d->head; e && n < limit; e = e->next) {
    if (expired(d, e)) continue;
    lua_pushlstring(L, e->kv, e->klen);
    lua_rawseti(L, -2, (int)++n);
  }
  return 1;
}

static int dict_flush_all(lua_State *L) {
  sl_shdict *d = check_dict(L);
  while (d->head) drop(d, d->head);
  return 0;
}

static int dict_free_space(lua_State *L) {
  sl_shdict *d = check_dict(L);
  lua_pushnumber(L, (double)(d->size > d->used ? d->size - d->used : 0));
  return 1;
}

static int dict_capacity(lua_State *L) {
  lua_pushnumber(L, (double)check_dict(L)->size);
  return 1;
}

static int dict_count(lua_State *L) {
  lua_pushnumber(L, (double)check_dict(L)->count);
  return 1;
}

static int dict_tostring(lua_State *L) {
  lua_pushfstring(L, "sluice.shared %s", check_dict(L)->name);
  return 1;
}

/* shared(name, size) -> the handle of the dictionary name (made on first use);
 * size, if given, becomes its size in bytes (a smaller one evicts at once). */
static int api_shared(lua_State *L) {
  sl_vm *vm = lua_touserdata(L, lua_upvalueindex(1));
  size_t len;
  const char *name = luaL_checklstring(L, 1, &len);
  if (len == 0 || len > 255) return luaL_argerror(L, 1, "a name of 1 to 255 bytes");
  sl_shdict *d = dicts;
  while (d && strcmp(d->name, name) != 0) d = d->next;
  if (!d && !(d = dict_new(vm->srv, name, len))) return luaL_error(L, "out of memory");
  if (!lua_isnoneornil(L, 2)) {
    lua_Number size = luaL_checknumber(L, 2);
    if (!(size >= 1024) || size > 1e15) return luaL_argerror(L, 2, "a size is at least 1024 bytes");
    d->size = (size_t)size;
    make_room(d, 0);
  }
  sl_shdict **ud = lua_newuserdata(L, sizeof *ud);
  *ud = d;
  luaL_getmetatable(L, SL_SHARED_MT);
  lua_setmetatable(L, -2);
  return 1;
}

void sl_shared_open(lua_State *L, sl_vm *vm) {
  static const luaL_Reg methods[] = {
      {"get", dict_get},         {"set", dict_set},       {"add", dict_add},
      {"replace", dict_replace}, {"incr", dict_incr},     {"delete", dict_delete},
      {"ttl", dict_ttl},         {"expire", dict_expire}, {"keys", dict_keys},
      {"flush_all", dict_flush_all}, {"free_space", dict_free_space}, {"capacity", dict_capacity},
      {"count", dict_count},     {NULL, NULL}};
  luaL_newmetatable(L, SL_SHARED_MT);
  lua_newtable(L);
  luaL_setfuncs(L, methods, 0);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, dict_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pushliteral(L, "sluice.shared");
  lua_setfield(L, -2, "__metatable");
  lua_pop(L, 1);
  lua_pushlightuserdata(L, vm);
  lua_pushcclosure(L, api_shared, 1);
  lua_setfield(L, -2, "shared");
}
