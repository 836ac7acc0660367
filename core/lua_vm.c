/* lua_vm: the Lua state, script loading, dispatch and protected calls. See lua_vm.h. */
#include "lua_vm.h"
#include <lauxlib.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "conn.h"
#include "json.h"
#include "log.h"
#include "lcopy.h"
#include "lua_api.h"
#include "sched.h"
#include "server.h"
#include "watchdog.h"

static char lua_dir[8192];

const char *sl_vm_lua_dir(void) {
  if (lua_dir[0]) return lua_dir;
  /* Installed: <prefix>/bin/sluice finds <prefix>/share/sluice/lua. Else the source tree. */
  char exe[4096];
  size_t n = sizeof exe;
  if (uv_exepath(exe, &n) == 0) {
    char *slash = strrchr(exe, '/');
    if (slash) {
      *slash = '\0';
      char probe[8192];
      snprintf(probe, sizeof probe, "%s/../%s/sluice/init.lua", exe, SLUICE_INSTALL_LUA_REL);
      if (access(probe, R_OK) == 0) {
        snprintf(lua_dir, sizeof lua_dir, "%s/../%s", exe, SLUICE_INSTALL_LUA_REL);
        return lua_dir;
      }
    }
  }
  snprintf(lua_dir, sizeof lua_dir, "%s", SLUICE_SOURCE_LUA_DIR);
  return lua_dir;
}

/* The text of the error value at idx: a string, what __tostring makes of it,
 * or its type. Values other than strings are replaced by their text. */
static const char *error_text(lua_State *L, int idx) {
  if (lua_type(L, idx) == LUA_TSTRING) return lua_tostring(L, idx);
  if (idx < 0) idx = lua_gettop(L) + idx + 1;
  if (luaL_callmeta(L, idx, "__tostring") && lua_isstring(L, -1)) {
    lua_replace(L, idx);
    return lua_tostring(L, idx);
  }
  lua_pushfstring(L, "error object of type %s (not a string)", luaL_typename(L, idx));
  lua_replace(L, idx);
  return lua_tostring(L, idx);
}

static int traceback(lua_State *L) {
  luaL_traceback(L, L, error_text(L, 1), 1);
  return 1;
}

int sl_vm_pcall(lua_State *L, int nargs, const char *what) {
  int base = lua_gettop(L) - nargs;
  lua_pushcfunction(L, traceback);
  lua_insert(L, base);
  sl_watchdog_enter(L);
  int r = lua_pcall(L, nargs, 0, base);
  sl_watchdog_leave();
  if (r) {
    sl_error("%s: %s", what, error_text(L, -1));
    lua_pop(L, 1);
  }
  lua_remove(L, base);
  return r ? -1 : 0;
}

void sl_vm_log_error(lua_State *co, const char *what) {
  luaL_traceback(co, co, error_text(co, -1), 0);
  sl_error("%s error: %s", what, lua_tostring(co, -1));
  lua_pop(co, 1);
}

/* Runs what is on L's top protected; on failure copies the message into err. */
static int load_call(lua_State *L, int nargs, int nres, char *err, size_t errlen) {
  int base = lua_gettop(L) - nargs;
  lua_pushcfunction(L, traceback);
  lua_insert(L, base);
  sl_watchdog_enter(L);
  int r = lua_pcall(L, nargs, nres, base);
  sl_watchdog_leave();
  if (r) {
    snprintf(err, errlen, "%s", error_text(L, -1));
    lua_pop(L, 1);
  }
  lua_remove(L, base);
  return r;
}

sl_vm *sl_vm_open(sl_server *srv, const char *script, sl_buf *handover, char *err, size_t errlen) {
  sl_vm *vm = calloc(1, sizeof *vm);
  if (!vm) {
    sl_buf_unref(handover);
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  vm->srv = srv;
  vm->handover = handover;
  vm->script = strdup(script);
  sl_config_defaults(&vm->cfg);
  vm->dispatch_ref = vm->gone_ref = vm->reloading_ref = LUA_NOREF;
  lua_State *L = vm->L = luaL_newstate();
  if (!L) {
    snprintf(err, errlen, "cannot create a Lua state");
    sl_vm_close(vm);
    return NULL;
  }
  luaL_openlibs(L);
  static const char *const keys[SL_NKEYS] = {"data",   "id",           "event",   "retry",       "method",
                                             "target", "query_string", "headers", "body",        "remote_addr",
                                             "http_version", "status"};
  for (int k = 0; k < SL_NKEYS; k++) {
    lua_pushstring(L, keys[k]);
    vm->key_refs[k] = luaL_ref(L, LUA_REGISTRYINDEX);
  }

  char dir[4096];
  snprintf(dir, sizeof dir, "%s", script);
  char *slash = strrchr(dir, '/');
  if (slash) *slash = '\0';
  else strcpy(dir, ".");
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "path");
  lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;%s/?.lua;%s/?/init.lua;%s", sl_vm_lua_dir(), sl_vm_lua_dir(), dir,
                  dir, lua_tostring(L, -1));
  lua_setfield(L, -3, "path");
  lua_pop(L, 2);
  sl_api_open(L, vm, dir);

  lua_getglobal(L, "require");
  lua_pushliteral(L, "sluice");
  if (load_call(L, 1, 1, err, errlen)) goto fail;
  lua_getfield(L, -1, "_dispatch");
  vm->dispatch_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_getfield(L, -1, "_gone");
  vm->gone_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_getfield(L, -1, "_reloading");
  vm->reloading_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pop(L, 1);

  if (luaL_loadfile(L, script)) {
    snprintf(err, errlen, "%s", error_text(L, -1));
    lua_pop(L, 1);
    goto fail;
  }
  if (load_call(L, 0, 0, err, errlen)) goto fail;
  return vm;
fail:
  /* Whatever the script started before it failed (timers) goes with it. */
  sl_vm_stop(vm);
  sl_vm_close(vm);
  return NULL;
}

void sl_vm_activate(sl_vm *vm) {
  sl_server *srv = vm->srv;
  sl_vm *old = srv->vm;
  srv->cfg = vm->cfg;
  /* With Redis, history lives there: the hub keeps none. */
  srv->hub.history = srv->redis ? 0 : (unsigned)vm->cfg.history;
  srv->hub.gw_history = srv->redis ? 0 : (unsigned)vm->cfg.gateway_history;
  srv->hub.hold_limit = vm->cfg.queue_limit;
  srv->hub.ttl = vm->cfg.history_ttl;
  sl_watchdog_limit(vm->cfg.watchdog);
  if (srv->homes) sl_conn_config(srv);
  srv->vm = vm;
  if (!old || old == vm) return;
  if (strcmp(old->cfg.redis, vm->cfg.redis) != 0)
    sl_warn("redis: the engine is chosen at start-up: restart to use '%s'", vm->cfg.redis[0] ? vm->cfg.redis : "none");
  /* Pending timers stop (the new script starts its own); bodies already
   * running finish in the old state, as streams do. */
  unsigned stopped = 0, running = 0;
  while (old->timers) {
    sl_timer_stop(old->timers);
    stopped++;
  }
  for (sl_task *t = old->tasks; t; t = t->next) running += !t->conn;
  if (stopped || running)
    sl_info("reload: stopped %u timer%s of the previous state; %u running timer bod%s finish%s there", stopped,
            stopped == 1 ? "" : "s", running, running == 1 ? "y" : "ies", running == 1 ? "es" : "");
  old->retired = 1;
  old->next_retired = srv->retired;
  srv->retired = old;
  sl_vm_maybe_close(old);
}

sl_buf *sl_vm_handover(sl_vm *vm) {
  lua_State *L = vm->L;
  int top = lua_gettop(L);
  lua_pushcfunction(L, traceback);
  lua_rawgeti(L, LUA_REGISTRYINDEX, vm->reloading_ref);
  sl_buf *b = NULL;
  sl_watchdog_enter(L);
  int failed = lua_pcall(L, 0, 2, top + 1);
  sl_watchdog_leave();
  if (failed) {
    sl_error("on_reload: %s", error_text(L, -1));
  } else if (lua_toboolean(L, -2)) { /* (true, state): on_reload was called */
    sl_sb sb;
    char err[160];
    sl_sb_init(&sb, 256);
    if (sl_copy_dump(L, -1, &sb, err, sizeof err) == 0) b = sl_sb_finish(&sb);
    else sl_error("on_reload: its state cannot be handed over: %s", err);
    sl_sb_free(&sb);
  }
  lua_settop(L, top);
  return b;
}

/* ---- conn.data ----
 * A connection's data is a plain table in the state that used it last (held in
 * its registry by id, the connection marked data_held), so a script changes it
 * as any table; when another state asks for it, the holder's table is written
 * back to lcopy bytes and the asking state makes its own table from them. */

#define SL_DATA_LIVE "sluice.data"

/* Pushes L's registry table of the data tables its state holds, by id. */
static void push_live(lua_State *L) {
  lua_getfield(L, LUA_REGISTRYINDEX, SL_DATA_LIVE);
  if (lua_istable(L, -1)) return;
  lua_pop(L, 1);
  lua_newtable(L);
  lua_pushvalue(L, -1);
  lua_setfield(L, LUA_REGISTRYINDEX, SL_DATA_LIVE);
}

/* The holding state writes c's table back into bytes (and forgets it if forget). */
static void data_flush(sl_conn *c, int forget) {
  lua_State *L = c->data_vm->L;
  c->data_held = 0;
  c->data = NULL;
  c->data_len = 0;
  lua_checkstack(L, 8);
  push_live(L);
  lua_pushnumber(L, (double)c->id);
  lua_rawget(L, -2);
  sl_sb sb;
  char err[160];
  sl_sb_init(&sb, 64);
  if (lua_istable(L, -1)) {
    if (sl_copy_dump(L, -1, &sb, err, sizeof err)) {
      char id[SL_NUMBER_MAX];
      sl_number_text((double)c->id, id);
      sl_error("conn.data of connection %s is lost: it came to hold %s", id, err);
    } else if (!sb.failed && (c->data = malloc(sb.b->len))) {
      memcpy(c->data, sb.b->data, sb.b->len);
      c->data_len = (uint32_t)sb.b->len;
    }
  }
  sl_sb_free(&sb);
  lua_pop(L, 1);
  if (forget) {
    lua_pushnumber(L, (double)c->id);
    lua_pushnil(L);
    lua_rawset(L, -3);
  }
  lua_pop(L, 1);
}

/* c's data is nobody's any more: the holder's table or the bytes are dropped. */
static void data_drop(sl_conn *c) {
  if (c->data_held) {
    lua_State *L = c->data_vm->L;
    push_live(L);
    lua_pushnumber(L, (double)c->id);
    lua_pushnil(L);
    lua_rawset(L, -3);
    lua_pop(L, 1);
    c->data_held = 0;
  } else {
    free(c->data);
  }
  c->data = NULL;
  c->data_len = 0;
}

void sl_vm_data_push(sl_vm *vm, lua_State *L, sl_conn *c) {
  if (c->data_held && c->data_vm != vm) data_flush(c, 1);
  push_live(L);
  if (c->data_held) {
    lua_pushnumber(L, (double)c->id);
    lua_rawget(L, -2);
  } else {
    if (!c->data || sl_copy_load(L, c->data, c->data_len)) lua_newtable(L);
    free(c->data);
    c->data_vm = vm;
    c->data_held = 1;
    lua_pushnumber(L, (double)c->id);
    lua_pushvalue(L, -2);
    lua_rawset(L, -4);
  }
  lua_remove(L, -2);
}

void sl_vm_data_set(sl_vm *vm, lua_State *L, int idx, sl_conn *c) {
  idx = idx < 0 ? lua_gettop(L) + idx + 1 : idx;
  data_drop(c);
  if (lua_isnil(L, idx)) return;
  push_live(L);
  lua_pushnumber(L, (double)c->id);
  lua_pushvalue(L, idx);
  lua_rawset(L, -3);
  lua_pop(L, 1);
  c->data_vm = vm;
  c->data_held = 1;
}

/* A state about to close writes back every table it holds. */
static void data_flush_all(sl_vm *vm) {
  lua_State *L = vm->L;
  push_live(L);
  lua_pushnil(L);
  while (lua_next(L, -2)) {
    sl_conn *c = sl_server_conn(vm->srv, (uint64_t)lua_tonumber(L, -2));
    lua_pop(L, 1);
    if (c && c->data_held && c->data_vm == vm) data_flush(c, 0);
  }
  lua_pop(L, 1);
}

void sl_vm_maybe_close(sl_vm *vm) {
  if (!vm->retired || vm->users || vm->tasks || vm->timers) return;
  sl_server *srv = vm->srv;
  sl_vm **pp = &srv->retired;
  while (*pp && *pp != vm) pp = &(*pp)->next_retired;
  if (*pp) *pp = vm->next_retired;
  sl_info("closed the Lua state of a previous load of %s", vm->script);
  sl_vm_close(vm);
}

void sl_vm_close(sl_vm *vm) {
  if (!vm) return;
  if (vm->jit) sl_watchdog_jit(-1);
  if (vm->L) {
    data_flush_all(vm);
    lua_close(vm->L);
  }
  sl_buf_unref(vm->handover);
  free(vm->script);
  free(vm);
}

void sl_vm_stop(sl_vm *vm) {
  while (vm->timers) sl_timer_stop(vm->timers);
  /* Tasks of connections end with their connection; the others (timer bodies) end here. */
  for (sl_task *t = vm->tasks, *next; t; t = next) {
    next = t->next;
    if (!t->conn) sl_task_cancel(t);
  }
}

/* The lower-case name of header h (at most 255 bytes) into name; its length. */
static size_t header_name(const sl_req *r, const sl_hdr *h, char name[256]) {
  size_t n = h->name_len < 256 ? h->name_len : 255;
  for (size_t k = 0; k < n; k++) {
    char ch = r->head[h->name + k];
    name[k] = (ch >= 'A' && ch <= 'Z') ? (char)(ch + 32) : ch;
  }
  return n;
}

/* Pushes the request's headers as a table (lower-case names). Repeated
 * headers are joined with ", " (RFC 9110 5.3) in one pass over them: the
 * first pass links each header to the next of its name, the second builds
 * each joined value once, so many repeats cost linear time, not the
 * square of their count that joining one at a time would. */
static void push_headers(lua_State *L, const sl_req *r) {
  lua_createtable(L, 0, (int)r->nhdrs);
  unsigned small[64];
  unsigned *next = r->nhdrs <= 64 ? small : malloc(r->nhdrs * sizeof *next);
  int join = next != NULL; /* out of memory: each name keeps its first value */
  if (!next) next = small;
  char name[256];
  /* Pass 1: table[name] = the index of the last header of that name, and
   * next[] links each header to the following one of its name (or itself). */
  for (unsigned i = 0; i < r->nhdrs; i++) {
    if (join) next[i] = i;
    lua_pushlstring(L, name, header_name(r, &r->hdrs[i], name));
    lua_pushvalue(L, -1);
    lua_rawget(L, -3);
    int seen = lua_isnumber(L, -1);
    if (seen && join) next[lua_tointeger(L, -1)] = i;
    lua_pop(L, 1);
    if (seen && !join) {
      lua_pop(L, 1);
      continue;
    }
    lua_pushinteger(L, (lua_Integer)i);
    lua_rawset(L, -3);
  }
  /* Pass 2: the first header of each name builds its value, then takes the table's slot. */
  for (unsigned i = 0; i < r->nhdrs; i++) {
    lua_pushlstring(L, name, header_name(r, &r->hdrs[i], name));
    lua_pushvalue(L, -1);
    lua_rawget(L, -3);
    int first = lua_isnumber(L, -1);
    lua_pop(L, 1);
    if (!first) {
      lua_pop(L, 1);
      continue;
    }
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (unsigned k = i;; k = next[k]) {
      if (k != i) luaL_addlstring(&b, ", ", 2);
      luaL_addlstring(&b, r->head + r->hdrs[k].value, r->hdrs[k].value_len);
      if (!join || next[k] == k) break;
    }
    luaL_pushresult(&b);
    lua_rawset(L, -3);
  }
  if (next != small) free(next);
}

static void push_request(const sl_vm *vm, lua_State *L, sl_conn *c) {
  sl_req *r = c->req;
  lua_createtable(L, 0, 12);
  sl_vm_pushkey(vm, L, SL_K_METHOD);
  lua_pushstring(L, llhttp_method_name((llhttp_method_t)c->parser.method));
  lua_rawset(L, -3);
  const char *url = r->head;
  size_t ulen = r->url_len;
  const char *q = memchr(url, '?', ulen);
  size_t plen = q ? (size_t)(q - url) : ulen;
  sl_vm_pushkey(vm, L, SL_K_TARGET);
  lua_pushlstring(L, url, plen);
  lua_rawset(L, -3);
  sl_vm_pushkey(vm, L, SL_K_QUERY_STRING);
  lua_pushlstring(L, q ? q + 1 : "", q ? ulen - plen - 1 : 0);
  lua_rawset(L, -3);
  sl_vm_pushkey(vm, L, SL_K_HEADERS);
  push_headers(L, r);
  lua_rawset(L, -3);
  sl_vm_pushkey(vm, L, SL_K_BODY);
  lua_pushlstring(L, r->body ? r->body : "", r->body_len);
  lua_rawset(L, -3);
  sl_vm_pushkey(vm, L, SL_K_REMOTE_ADDR);
  lua_pushstring(L, c->peer);
  lua_rawset(L, -3);
  sl_vm_pushkey(vm, L, SL_K_HTTP_VERSION);
  char version[8] = {(char)('0' + c->parser.http_major % 10), '.', (char)('0' + c->parser.http_minor % 10)};
  if (c->parser.http_major > 9 || c->parser.http_minor > 9)
    lua_pushfstring(L, "%d.%d", (int)c->parser.http_major, (int)c->parser.http_minor);
  else
    lua_pushlstring(L, version, 3);
  lua_rawset(L, -3);
}

static void new_handle(sl_vm *vm, lua_State *L, sl_conn *c) {
  sl_conn_ud *ud = lua_newuserdata(L, sizeof *ud);
  ud->srv = vm->srv;
  ud->id = c->id;
  luaL_getmetatable(L, SL_CONN_MT);
  lua_setmetatable(L, -2);
}

void sl_vm_push_conn(sl_vm *vm, lua_State *L, sl_conn *c) {
  if (c->vm == vm && c->ud_ref > 0) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, c->ud_ref);
    return;
  }
  /* The state that holds the connection (its request's) keeps its handle by
   * reference: the common case, with no table to grow per connection. */
  if (c->vm == vm) {
    new_handle(vm, L, c);
    lua_pushvalue(L, -1);
    c->ud_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    return;
  }
  /* Other states (a later load listing connections) keep one handle per
   * connection while anything holds it (a weak table), so a connection is the
   * same key in their tables every time; they do not hold the connection, so a
   * subscription the hub serves alone never keeps a state alive. */
  lua_getfield(L, LUA_REGISTRYINDEX, SL_HANDLES);
  lua_pushnumber(L, (double)c->id);
  lua_rawget(L, -2);
  if (!lua_isuserdata(L, -1)) {
    lua_pop(L, 1);
    new_handle(vm, L, c);
    lua_pushnumber(L, (double)c->id);
    lua_pushvalue(L, -2);
    lua_rawset(L, -4);
  }
  lua_remove(L, -2);
}

void sl_vm_dispatch(sl_vm *vm, sl_conn *c) {
  if (!c->vm) {
    c->vm = vm;
    vm->users++;
  }
  sl_task *t = sl_task_new(vm, c);
  if (!t) {
    sl_conn_task_done(c, 0);
    return;
  }
  lua_State *co = t->co;
  lua_rawgeti(co, LUA_REGISTRYINDEX, vm->dispatch_ref);
  sl_vm_push_conn(vm, co, c);
  push_request(vm, co, c);
  sl_task_resume(t, 2);
}

void sl_vm_conn_release(sl_vm *vm, sl_conn *c) {
  if (c->vm != vm) return;
  if (c->ud_ref > 0) luaL_unref(vm->L, LUA_REGISTRYINDEX, c->ud_ref);
  c->ud_ref = 0;
  c->vm = NULL;
  vm->users--;
  sl_vm_maybe_close(vm);
}

/* Whether vm has a handle for connection id (it may have close hooks for it). */
static int knows(sl_vm *vm, uint64_t id) {
  lua_State *L = vm->L;
  lua_getfield(L, LUA_REGISTRYINDEX, SL_HANDLES);
  lua_pushnumber(L, (double)id);
  lua_rawget(L, -2);
  int found = !lua_isnil(L, -1);
  lua_pop(L, 2);
  return found;
}

/* Runs the state's _gone(handle): its close hooks for the connection. */
static void gone_in(sl_vm *vm, sl_conn *c) {
  lua_State *L = vm->L;
  lua_rawgeti(L, LUA_REGISTRYINDEX, vm->gone_ref);
  if (c->vm == vm) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, c->ud_ref);
  } else {
    lua_getfield(L, LUA_REGISTRYINDEX, SL_HANDLES);
    lua_pushnumber(L, (double)c->id);
    lua_rawget(L, -2);
    lua_remove(L, -2);
  }
  if (sl_vm_pcall(L, 1, "on_close hook")) vm->srv->metrics.lua_errors[SL_ERR_ON_CLOSE]++;
}

void sl_vm_conn_closed(sl_server *srv, sl_conn *c) {
  sl_vm *owner = c->vm;
  if (owner && c->ud_ref > 0) gone_in(owner, c);
  if (srv->vm && srv->vm != owner && knows(srv->vm, c->id)) gone_in(srv->vm, c);
  for (sl_vm *v = srv->retired; v; v = v->next_retired)
    if (v != owner && knows(v, c->id)) gone_in(v, c);
  data_drop(c);
  if (owner) sl_vm_conn_release(owner, c);
}

/* ---- the hooks the connections call up through (server.h) ---- */

static void hook_dispatch(sl_conn *c) {
  if (c->srv->vm) sl_vm_dispatch(c->srv->vm, c);
  else sl_conn_task_done(c, 0);
}

static void hook_closed(sl_conn *c) { sl_vm_conn_closed(c->srv, c); }

static void hook_release(sl_conn *c) {
  if (c->vm) sl_vm_conn_release(c->vm, c);
}

static int hook_drained(sl_conn *c) {
  if (!c->task || !c->task->waiting) return 0;
  sl_task_drained(c->task);
  return 1;
}

static void hook_trim(sl_server *srv) {
  if (srv->vm) lua_gc(srv->vm->L, LUA_GCCOLLECT, 0);
}

void sl_vm_bind(sl_server *srv) {
  srv->hooks.dispatch = hook_dispatch;
  srv->hooks.closed = hook_closed;
  srv->hooks.release = hook_release;
  srv->hooks.drained = hook_drained;
  srv->hooks.cancel = sl_task_cancel;
  srv->hooks.trim = hook_trim;
}

void sl_vm_stop_all(sl_server *srv) {
  if (srv->vm) sl_vm_stop(srv->vm);
  for (sl_vm *v = srv->retired, *next; v; v = next) {
    next = v->next_retired;
    sl_vm_stop(v); /* timer bodies still running there (it may close at once) */
  }
}
