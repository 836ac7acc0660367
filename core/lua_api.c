/* lua_api: the sluice.core module. See lua_api.h.
 * Every function gets the VM as upvalue 1. Functions on a connection return
 * true (plus whether its queue is above the high-water mark) or nil and
 * "closed" / "overflow"; they raise only for bad arguments. */
#include "lua_api.h"
#include <errno.h>
#include <lauxlib.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include "conn.h"
#include "crypto.h"
#include "json.h"
#include "lcopy.h"
#include "listen.h"
#include "log.h"
#include "lua_out.h"
#include "shared.h"
#include "lua_vm.h"
#include "redis.h"
#include "rproto.h"
#include "sched.h"
#include "server.h"
#include "sse.h"
#include "watchdog.h"

static sl_vm *vm_of(lua_State *L) { return lua_touserdata(L, lua_upvalueindex(1)); }

static sl_conn_ud *check_ud(lua_State *L, int idx) { return luaL_checkudata(L, idx, SL_CONN_MT); }

/* The connection of the handle at idx, NULL once it is gone. */
static sl_conn *conn_of(lua_State *L, int idx) {
  sl_conn_ud *ud = check_ud(L, idx);
  return sl_server_conn(ud->srv, ud->id);
}

/* The live connection at idx, or NULL when it is closed or closing. */
static int is_live(const sl_conn *c) { return c && !c->closing && !c->ending; }

static sl_conn *live_conn(lua_State *L, int idx) {
  sl_conn *c = conn_of(L, idx);
  return is_live(c) ? c : NULL;
}

/* Ends the stream once everything queued is written; why: enum sl_conn_end. */
static void finish_conn(sl_conn *c, int why) {
  sl_conn_ended(c, why);
  sl_conn_end(c);
}

static int fail(lua_State *L, const char *why) {
  lua_pushnil(L);
  lua_pushstring(L, why);
  return 2;
}

static int write_result(lua_State *L, sl_conn *c, int r) {
  if (r == -ENOBUFS) return fail(L, "overflow");
  if (r == -ENOMEM) return fail(L, "out of memory");
  if (r) return fail(L, "closed");
  lua_pushboolean(L, 1);
  lua_pushboolean(L, sl_conn_backlogged(c));
  return 2;
}

/* A header value may hold no control character but HTAB (RFC 9110 field-value):
 * CR, LF and NUL would split or end the head, and the other CTLs (VT, FF, DEL,
 * ...) are read differently by different proxies. */
static int check_header_text(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)s[i];
    if ((ch < 0x20 && ch != '\t') || ch == 0x7f) return -1;
  }
  return 0;
}

/* A header name is a token (RFC 9110): no separators, spaces or controls. */
static int check_header_name(const char *s, size_t n) {
  if (!n) return -1;
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)s[i];
    if (ch <= 0x20 || ch >= 0x7f || strchr("\"(),/:;<=>?@[\\]{}", ch)) return -1;
  }
  return 0;
}

/* The headers that delimit a response on the wire belong to the gateway: a
 * second Content-Length or Transfer-Encoding is a request-smuggling vector
 * behind a proxy, and Connection decides whether the next request is read. */
static int framing_header(const char *name, size_t n) {
  static const char *const names[] = {"content-length", "transfer-encoding", "connection"};
  for (size_t i = 0; i < sizeof names / sizeof *names; i++)
    if (strlen(names[i]) == n && strncasecmp(name, names[i], n) == 0) return 1;
  return 0;
}

/* Calls fn(name, value) for every header of the table at idx (name -> string or
 * list of strings). With check set it raises for a bad name or value; without,
 * it skips them (the table was checked before). */
static void each_header(lua_State *L, int idx, int check, sl_sb *sb) {
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    size_t nl = 0;
    const char *name = lua_type(L, -2) == LUA_TSTRING ? lua_tolstring(L, -2, &nl) : NULL;
    int bad_name = !name || check_header_name(name, nl);
    if (bad_name && check) luaL_error(L, "bad header name '%s'", name ? name : "(not a string)");
    if (check && framing_header(name, nl)) luaL_error(L, "header '%s' is set by the gateway", name);
    int n = lua_istable(L, -1) ? (int)lua_objlen(L, -1) : 1;
    for (int i = 1; i <= n && !bad_name; i++) {
      if (lua_istable(L, -1)) lua_rawgeti(L, -1, i);
      else lua_pushvalue(L, -1);
      if (lua_type(L, -1) == LUA_TNUMBER) { /* whole numbers in full */
        char t[SL_NUMBER_MAX];
        int tl = sl_number_text(lua_tonumber(L, -1), t);
        lua_pop(L, 1);
        lua_pushlstring(L, t, (size_t)tl);
      }
      size_t vl;
      const char *v = lua_type(L, -1) == LUA_TSTRING || lua_type(L, -1) == LUA_TNUMBER ? lua_tolstring(L, -1, &vl) : NULL;
      if (check && !v) luaL_error(L, "header '%s' must be a string", name);
      if (check && check_header_text(v, vl))
        luaL_error(L, "header '%s' may not contain CR, LF, NUL or another control character but tab", name);
      if (sb && v) {
        sl_sb_add(sb, name, nl);
        sl_sb_add(sb, ": ", 2);
        sl_sb_add(sb, v, vl);
        sl_sb_add(sb, "\r\n", 2);
      }
      lua_pop(L, 1);
    }
    lua_pop(L, 1);
  }
}

/* Builds the headers of the table at idx into sb. Everything that can raise is
 * checked before sb allocates, so an error never leaks it. */
static void add_headers(lua_State *L, int idx, sl_sb *sb) {
  if (!lua_isnoneornil(L, idx)) {
    luaL_checktype(L, idx, LUA_TTABLE);
    each_header(L, idx, 1, NULL);
  }
  sl_sb_init(sb, 256);
  if (!lua_isnoneornil(L, idx)) each_header(L, idx, 0, sb);
}

/* respond(conn, status, body, headers, close): close ends the connection after it */
static int api_respond(lua_State *L) {
  check_ud(L, 1);
  int status = (int)luaL_checkinteger(L, 2);
  size_t len = 0;
  const char *body = luaL_optlstring(L, 3, "", &len);
  if (status < 200 || status > 999) return luaL_error(L, "bad status %d", status);
  sl_sb sb;
  add_headers(L, 4, &sb);
  sl_conn *c = live_conn(L, 1);
  if (c && lua_toboolean(L, 5)) c->keepalive = 0;
  int r = c ? sl_conn_respond(c, status, &sb, body, len) : -EPIPE;
  sl_sb_free(&sb);
  if (r == -EALREADY) return luaL_error(L, "the response was already sent");
  return r ? fail(L, "closed") : (lua_pushboolean(L, 1), 1);
}

static long long opt_retry(lua_State *L, int idx, long long dflt) {
  if (lua_isnoneornil(L, idx)) return dflt;
  lua_Number n = luaL_checknumber(L, idx);
  /* The range test comes first: converting a double out of range is undefined. */
  if (!(n >= 0 && n <= 9007199254740991.0) || n != (lua_Number)(long long)n)
    luaL_error(L, "retry must be a whole number of milliseconds (0 to 2^53 - 1)");
  return (long long)n;
}

/* Remembers what the connection streams for (mode, route pattern), for
 * sluice.connections and the handle's fields in any state. Its captures are
 * found again from the pattern and the target (kept for the access log) when
 * asked for: nothing more to keep per connection. */
static void note_route(lua_State *L, sl_conn *c, int idx) {
  static const char *const modes[] = {"none", "once", "stream", "subscribe", "raw", NULL};
  c->mode = (uint8_t)luaL_checkoption(L, idx, "none", modes);
  if (lua_isstring(L, idx + 1)) c->route = sl_server_intern(c->srv, lua_tostring(L, idx + 1));
}

/* start(conn, status, headers, retry, heartbeat, mode, route): the head of an
 * event stream or raw response. */
static int api_start(lua_State *L) {
  sl_vm *vm = vm_of(L);
  check_ud(L, 1);
  int status = (int)luaL_optinteger(L, 2, 200);
  if (status < 200 || status > 999) return luaL_error(L, "bad status %d", status);
  long long retry = opt_retry(L, 4, vm->srv->cfg.retry);
  double heartbeat = luaL_optnumber(L, 5, vm->srv->cfg.heartbeat);
  sl_sb sb;
  add_headers(L, 3, &sb);
  sl_conn *c = live_conn(L, 1);
  int r = c ? sl_conn_start_stream(c, status, &sb, heartbeat, retry) : -EPIPE;
  sl_sb_free(&sb);
  if (r == 0) note_route(L, c, 6);
  if (r == -EALREADY) return luaL_error(L, "the response was already sent");
  return c ? write_result(L, c, r) : fail(L, "closed");
}

/* The event of args (data, id, event, retry) at idx..; raises on bad fields. */
typedef struct ev_args {
  const char *data, *id, *ev;
  size_t len, idlen, evlen;
  long long retry;
} ev_args;

static void event_args(lua_State *L, int idx, ev_args *a) {
  a->idlen = a->evlen = 0;
  a->data = luaL_checklstring(L, idx, &a->len);
  a->id = lua_isnoneornil(L, idx + 1) ? NULL : luaL_checklstring(L, idx + 1, &a->idlen);
  a->ev = lua_isnoneornil(L, idx + 2) ? NULL : luaL_checklstring(L, idx + 2, &a->evlen);
  a->retry = opt_retry(L, idx + 3, -1);
  if (a->id && sl_sse_check_field(a->id, a->idlen)) luaL_error(L, "event id may not contain CR, LF or NUL");
  if (a->ev && sl_sse_check_field(a->ev, a->evlen)) luaL_error(L, "event name may not contain CR, LF or NUL");
}

/* encode(data, id, event, retry) -> the framed event as a string */
static int api_encode(lua_State *L) {
  ev_args a;
  event_args(L, 1, &a);
  sl_buf *b = sl_sse_frame(a.data, a.len, a.id, a.idlen, a.ev, a.evlen, a.retry);
  if (!b) return luaL_error(L, "out of memory");
  lua_pushlstring(L, b->data, b->len);
  sl_buf_unref(b);
  return 1;
}

/* send(conn, data, id, event, retry): framed by the connection's home. */
static int api_send(lua_State *L) {
  check_ud(L, 1);
  ev_args a;
  event_args(L, 2, &a);
  sl_conn *c = live_conn(L, 1);
  int r = c ? sl_conn_event(c, a.data, a.len, a.id, a.idlen, a.ev, a.evlen, a.retry) : -EPIPE;
  if (r == 0) {
    c->events++;
    c->srv->metrics.events_sent++;
  }
  return c ? write_result(L, c, r) : fail(L, "closed");
}

/* ---- streams the scheduler steps (sl_task_drive) ---- */

/* Registry keys: the library's Message metatable (anchored), and its to_data(v). */
static char message_key, to_data_key;
/* What lua_tocfunction says of a function made by coroutine.wrap (LuaJIT:
 * NULL, a built-in fast function), once known; its coroutine is its upvalue. */
static lua_CFunction wrap_aux;
static int wrap_known;

/* Queues one event; 0 sent, 1 sent and the queue is full, -1 closed. */
static int drive_send(sl_conn *c, const ev_args *a) {
  int r = sl_conn_event(c, a->data, a->len, a->id, a->idlen, a->ev, a->evlen, a->retry);
  if (r) return -1;
  c->events++;
  c->srv->metrics.events_sent++;
  return sl_conn_backlogged(c) ? 1 : 0;
}

/* A Message's field (key, enum sl_key), pushed on co (the message at 1); as text, or NULL if nil. */
static const char *message_field(lua_State *co, const sl_vm *vm, int key, size_t *len) {
  sl_vm_pushkey(vm, co, key);
  lua_rawget(co, 1);
  return lua_type(co, -1) == LUA_TNIL ? NULL : lua_tolstring(co, -1, len);
}

static int drive_value(sl_task *t, lua_State *co) {
  sl_conn *c = t->conn;
  if (!is_live(c)) return -1;
  ev_args a = {0};
  a.retry = -1;
  char num[SL_NUMBER_MAX];
  int type = lua_type(co, 1);
  if (type == LUA_TSTRING) {
    a.data = lua_tolstring(co, 1, &a.len);
  } else if (type == LUA_TNUMBER && sl_number_text(lua_tonumber(co, 1), num) > 0) {
    a.data = num;
    a.len = strlen(num);
  } else if (type == LUA_TTABLE && lua_getmetatable(co, 1)) {
    const sl_vm *vm = t->vm;
    int message = lua_topointer(co, -1) == vm->message_mt;
    lua_pop(co, 1);
    if (message) {
      /* checked when it was made (sluice.message) */
      a.data = message_field(co, vm, SL_K_DATA, &a.len);
      a.id = message_field(co, vm, SL_K_ID, &a.idlen);
      a.ev = message_field(co, vm, SL_K_EVENT, &a.evlen);
      sl_vm_pushkey(vm, co, SL_K_RETRY);
      lua_rawget(co, 1);
      if (lua_isnumber(co, -1)) a.retry = (long long)lua_tonumber(co, -1);
      if (!a.data) a.data = "", a.len = 0;
    }
  }
  if (a.data) return drive_send(c, &a);
  /* Anything else: the library's rules (a table as JSON), in the state's main thread. */
  lua_State *L = t->vm->L;
  lua_pushlightuserdata(L, &to_data_key);
  lua_rawget(L, LUA_REGISTRYINDEX);
  lua_pushvalue(co, 1);
  lua_xmove(co, L, 1);
  if (lua_pcall(L, 1, 2, 0) || !lua_isstring(L, -2)) {
    const char *why = lua_isstring(L, -1) ? lua_tostring(L, -1) : "a value that is no event";
    lua_settop(co, 0);
    lua_pushfstring(co, "cannot send %s as an event (send a string, number, table or sluice.message)", why);
    lua_pop(L, 2);
    return -2;
  }
  a.data = lua_tolstring(L, -2, &a.len);
  int r = drive_send(c, &a);
  lua_pop(L, 2);
  return r;
}

static void drive_done(sl_task *t, lua_State *co, int failed) {
  sl_conn *c = t->conn;
  if (!failed) {
    if (is_live(c)) finish_conn(c, SL_END_HANDLER);
    return;
  }
  lua_State *L = t->vm->L;
  const char *msg = lua_isstring(co, -1) ? lua_tostring(co, -1) : "(an error that is not a string)";
  luaL_traceback(L, co, msg, 0);
  sl_error("handler error in route %s: %s", t->label ? t->label : "?", lua_tostring(L, -1));
  lua_pop(L, 1);
  t->vm->srv->metrics.lua_errors[SL_ERR_GENERATOR]++;
  if (c) sl_conn_fail(c);
}

static const sl_drive stream_drive = {drive_value, drive_done};

/* drive(conn, gen, label) -> true if the scheduler steps the generator (a
 * coroutine, or a function coroutine.wrap made) from now on; false: the
 * library's own loop does. */
static int api_drive(lua_State *L) {
  sl_vm *vm = vm_of(L);
  sl_conn *c = live_conn(L, 1);
  if (wrap_known && lua_iscfunction(L, 2) && lua_tocfunction(L, 2) == wrap_aux && lua_getupvalue(L, 2, 1)) {
    if (lua_type(L, -1) == LUA_TTHREAD) lua_replace(L, 2);
    else lua_pop(L, 1);
  }
  const char *label = sl_server_intern(vm->srv, luaL_optstring(L, 3, "?"));
  sl_task *t = vm->current;
  lua_pushboolean(L, c && t && t->conn == c && label && lua_type(L, 2) == LUA_TTHREAD &&
                         sl_task_drive(t, L, 2, &stream_drive, label) == 0);
  return 1;
}

/* stream_helpers(Message, to_data): what drive needs of the library. */
static int api_stream_helpers(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  luaL_checktype(L, 2, LUA_TFUNCTION);
  lua_pushlightuserdata(L, &message_key);
  lua_pushvalue(L, 1);
  lua_rawset(L, LUA_REGISTRYINDEX);
  lua_pushlightuserdata(L, &to_data_key);
  lua_pushvalue(L, 2);
  lua_rawset(L, LUA_REGISTRYINDEX);
  sl_vm *vm = vm_of(L);
  vm->message_mt = lua_topointer(L, 1);
  if (!wrap_known) {
    lua_getglobal(L, "coroutine");
    lua_getfield(L, -1, "wrap");
    luaL_loadstring(L, "");
    lua_call(L, 1, 1);
    wrap_aux = lua_tocfunction(L, -1);
    wrap_known = 1;
    lua_pop(L, 2);
  }
  return 0;
}

/* write(conn, bytes) */
static int api_write(lua_State *L) {
  check_ud(L, 1);
  size_t len;
  const char *p = luaL_checklstring(L, 2, &len);
  sl_conn *c = live_conn(L, 1);
  if (!c) return fail(L, "closed");
  if (len == 0) return write_result(L, c, 0);
  sl_buf *b = sl_buf_from(p, len);
  int r = b ? sl_conn_write(c, b) : -ENOMEM;
  sl_buf_unref(b);
  return write_result(L, c, r);
}

/* comment(conn, text) */
static int api_comment(lua_State *L) {
  check_ud(L, 1);
  size_t len = 0;
  const char *text = luaL_optlstring(L, 2, "", &len);
  sl_conn *c = live_conn(L, 1);
  if (!c) return fail(L, "closed");
  sl_sb sb;
  sl_sb_init(&sb, len + 8);
  sl_sse_comment(&sb, text, len);
  sl_buf *b = sl_sb_finish(&sb);
  int r = b ? sl_conn_write(c, b) : -ENOMEM;
  sl_buf_unref(b);
  return write_result(L, c, r);
}

/* end_stream(conn): finish_conn for a handle; true if it was live. */
static int end_stream(lua_State *L, int why) {
  sl_conn *c = live_conn(L, 1);
  if (c) finish_conn(c, why);
  lua_pushboolean(L, c != NULL);
  return 1;
}

/* finish(conn): the handler or generator is done */
static int api_finish(lua_State *L) { return end_stream(L, SL_END_HANDLER); }

/* fail(conn): the handler failed (logged already): 500, or the stream ends */
static int api_fail(lua_State *L) {
  sl_conn *c = live_conn(L, 1);
  if (c) sl_conn_fail(c);
  return 0;
}

/* close(conn): close now-ish: what is queued is still written first */
static int api_close(lua_State *L) { return end_stream(L, SL_END_SCRIPT); }

/* expire(conn, seconds): ends the stream that many seconds from now */
static int api_expire(lua_State *L) {
  sl_conn *c = live_conn(L, 1);
  double secs = luaL_checknumber(L, 2);
  if (c && sl_secs_ms(secs) != SL_NEVER && sl_conn_expire_in(c, sl_secs_ms(secs))) return luaL_error(L, "out of memory");
  return 0;
}

/* time() -> wall-clock seconds since the epoch (with fractions), for expiry times */
static int api_time(lua_State *L) {
  uv_timeval64_t tv;
  uv_gettimeofday(&tv);
  lua_pushnumber(L, (double)tv.tv_sec + tv.tv_usec / 1e6);
  return 1;
}

/* closed(conn) */
static int api_closed(lua_State *L) {
  lua_pushboolean(L, live_conn(L, 1) == NULL);
  return 1;
}

static int api_now(lua_State *L) {
  lua_pushnumber(L, (double)uv_hrtime() / 1e9);
  return 1;
}

/* log(level, message) with level 0..3 */
static int api_log(lua_State *L) {
  int level = (int)luaL_checkinteger(L, 1);
  size_t len;
  const char *msg = luaL_checklstring(L, 2, &len);
  if (level < SL_LOG_ERROR || level > SL_LOG_DEBUG) return luaL_error(L, "bad log level");
  if (memchr(msg, '\0', len)) {
    /* A NUL would end the line there: it is written as \0. */
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    for (size_t i = 0; i < len; i++) {
      if (msg[i]) luaL_addchar(&b, msg[i]);
      else luaL_addlstring(&b, "\\0", 2);
    }
    luaL_pushresult(&b);
    msg = lua_tostring(L, -1);
  }
  sl_log(level, "%s", msg);
  return 0;
}

static int api_log_enabled(lua_State *L) {
  lua_pushboolean(L, sl_log_enabled((int)luaL_checkinteger(L, 1)));
  return 1;
}

/* config(key, value): values were checked by sluice.configure. */
static int api_config(lua_State *L) {
  sl_vm *vm = vm_of(L);
  sl_config *cfg = &vm->cfg;
  const char *key = luaL_checkstring(L, 1);
  if (strcmp(key, "jit") == 0) {
    /* Only for the watchdog's word on what it could not stop. */
    int on = lua_toboolean(L, 2);
    if (on != vm->jit) sl_watchdog_jit(on ? 1 : -1);
    vm->jit = on;
    return 0;
  }
  if (strcmp(key, "retry") == 0) {
    cfg->retry = opt_retry(L, 2, -1);
    if (vm->srv->vm == vm) sl_vm_activate(vm);
    return 0;
  }
  if (strcmp(key, "redis") == 0) {
    size_t len;
    const char *url = luaL_checklstring(L, 2, &len);
    if (len >= sizeof cfg->redis) return luaL_error(L, "the redis URL is too long");
    memcpy(cfg->redis, url, len + 1);
    if (vm->srv->vm == vm) sl_vm_activate(vm);
    return 0;
  }
  lua_Number v = luaL_checknumber(L, 2);
  if (v < 0) return luaL_error(L, "%s must not be negative", key);
  if (strcmp(key, "heartbeat") == 0) cfg->heartbeat = v;
  else if (strcmp(key, "history") == 0) cfg->history = v;
  else if (strcmp(key, "history_ttl") == 0) cfg->history_ttl = v;
  else if (strcmp(key, "gateway_history") == 0) cfg->gateway_history = v;
  else if (strcmp(key, "queue_limit") == 0) cfg->queue_limit = (size_t)v;
  else if (strcmp(key, "max_connections") == 0) cfg->max_connections = (unsigned)v;
  else if (strcmp(key, "max_header") == 0) cfg->max_header = (size_t)v;
  else if (strcmp(key, "max_body") == 0) cfg->max_body = (size_t)v;
  else if (strcmp(key, "header_timeout") == 0) cfg->header_timeout = v;
  else if (strcmp(key, "watchdog") == 0) cfg->watchdog = v;
  else if (strcmp(key, "http_max_concurrent") == 0) cfg->http_max_concurrent = (unsigned)v;
  else if (strcmp(key, "http_max_per_host") == 0) cfg->http_max_per_host = (unsigned)v;
  else return luaL_error(L, "unknown configuration key '%s'", key);
  /* While loading, the values wait for the load to succeed; afterwards they apply at once. */
  if (vm->srv->vm == vm) sl_vm_activate(vm);
  return 0;
}

#define SL_MAX_CHANNELS 64

/* Reads the list of channel names at idx (checked by the Lua library) into out. */
static int channel_list(lua_State *L, int idx, sl_hub_str *out) {
  luaL_checktype(L, idx, LUA_TTABLE);
  int n = (int)lua_objlen(L, idx);
  if (n < 1 || n > SL_MAX_CHANNELS) luaL_error(L, "give 1 to %d channels", SL_MAX_CHANNELS);
  for (int i = 0; i < n; i++) {
    lua_rawgeti(L, idx, i + 1);
    out[i].p = lua_tolstring(L, -1, &out[i].len);
    if (!out[i].p || out[i].len == 0) luaL_error(L, "channel names must be non-empty strings");
    lua_pop(L, 1); /* the table still holds the string */
  }
  return n;
}

/* release(conn): the script needs no handle for this connection any more (a
 * subscription without close hooks lives on in the hub alone). */
static int api_release(lua_State *L) {
  sl_conn *c = conn_of(L, 1);
  if (c && c->vm) sl_vm_conn_release(c->vm, c);
  return 0;
}

/* change(conn, channels, add) -> true, or nil and "closed" / "not subscribed" / why */
static int api_change(lua_State *L) {
  check_ud(L, 1);
  sl_hub_str chans[SL_MAX_CHANNELS];
  int n = channel_list(L, 2, chans);
  sl_conn *c = live_conn(L, 1);
  if (!c) return fail(L, "closed");
  int r = sl_conn_change(c, chans, n, lua_toboolean(L, 3));
  if (r == -ENOENT) return fail(L, "not subscribed");
  if (r == -E2BIG) return fail(L, "at most 64 channels");
  if (r == -ENOMEM) return fail(L, "out of memory");
  if (r) return fail(L, "closed");
  lua_pushboolean(L, 1);
  return 1;
}

/* kick(channel) -> how many subscribed connections were ended */
static int api_kick(lua_State *L) {
  size_t len;
  const char *name = luaL_checklstring(L, 1, &len);
  int n = sl_conn_kick(vm_of(L)->srv, name, len);
  if (n < 0) return fail(L, "out of memory");
  lua_pushinteger(L, n);
  return 1;
}

/* Whether c streams and matches the filter table at idx (route, mode, channel). */
static int matches(lua_State *L, sl_conn *c, int idx) {
  static const char *const modes[] = {"none", "once", "stream", "subscribe", "raw"};
  if (c->state != SL_CS_STREAM || c->closing || c->ending) return 0;
  if (lua_isnoneornil(L, idx)) return 1;
  lua_getfield(L, idx, "route");
  const char *route = lua_tostring(L, -1);
  int ok = !route || (c->route && strcmp(route, c->route) == 0);
  lua_getfield(L, idx, "mode");
  const char *mode = lua_tostring(L, -1);
  ok = ok && (!mode || strcmp(mode, modes[c->mode]) == 0);
  lua_getfield(L, idx, "channel");
  size_t clen;
  const char *chan = lua_tolstring(L, -1, &clen);
  if (ok && chan) {
    ok = 0;
    for (unsigned i = 0; c->sub && i < c->sub->nlinks && !ok; i++) {
      sl_hub_chan *ch = c->sub->links[i].chan;
      ok = ch->namelen == clen && memcmp(ch->name, chan, clen) == 0;
    }
  }
  lua_pop(L, 3);
  return ok;
}

/* connections(filter) -> the handles of the streaming connections that match */
static int api_connections(lua_State *L) {
  sl_vm *vm = vm_of(L);
  if (!lua_isnoneornil(L, 1)) luaL_checktype(L, 1, LUA_TTABLE);
  lua_newtable(L);
  int n = 0;
  for (sl_conn *c = vm->srv->conns; c; c = c->next) {
    if (!matches(L, c, 1)) continue;
    sl_vm_push_conn(vm, L, c);
    lua_rawseti(L, -2, ++n);
  }
  return 1;
}

/* conn(id) -> the handle of a live connection, or nil */
/* token_key() -> the key that signs connection tokens (for the library's sluice.conn) */
static int api_token_key(lua_State *L) {
  sl_server *srv = vm_of(L)->srv;
  lua_pushlstring(L, (const char *)srv->token_key, sizeof srv->token_key);
  return 1;
}

static int api_conn(lua_State *L) {
  sl_vm *vm = vm_of(L);
  lua_Number id = luaL_checknumber(L, 1);
  sl_conn *c = id >= 1 && id < 9007199254740992.0 ? sl_server_conn(vm->srv, (uint64_t)id) : NULL;
  if (!c || c->closing) return 0;
  sl_vm_push_conn(vm, L, c);
  return 1;
}

/* previous_state() -> a copy of what the previous state's on_reload gave, or nil */
static int api_previous_state(lua_State *L) {
  sl_vm *vm = vm_of(L);
  if (!vm->handover || sl_copy_load(L, vm->handover->data, vm->handover->len)) lua_pushnil(L);
  return 1;
}

/* The strings of the list at idx (checked by the Lua library) as a new array
 * (free it); their count in *n. Lua keeps the strings alive. */
static sl_hub_str *string_list(lua_State *L, int idx, unsigned *n) {
  *n = lua_istable(L, idx) ? (unsigned)lua_objlen(L, idx) : 0;
  sl_hub_str *out = malloc((*n ? *n : 1) * sizeof *out);
  if (!out) luaL_error(L, "out of memory");
  for (unsigned i = 0; i < *n; i++) {
    lua_rawgeti(L, idx, (int)i + 1);
    out[i].p = lua_tolstring(L, -1, &out[i].len);
    lua_pop(L, 1);
    if (!out[i].p) out[i].p = "", out[i].len = 0;
  }
  return out;
}

/* selector_ok(s) -> whether s compiles as a topic selector */
static int api_selector_ok(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  sl_matcher *m = sl_match_compile(s, n);
  lua_pushboolean(L, m != NULL);
  sl_match_free(m);
  return 1;
}

/* subscribe(conn, channels, last_event_id, match, grants, gateway) -> replayed count, or nil, "closed" */
static int api_subscribe(lua_State *L) {
  check_ud(L, 1);
  sl_hub_str chans[SL_MAX_CHANNELS];
  int n = channel_list(L, 2, chans);
  size_t lidlen = 0;
  const char *lid = luaL_optlstring(L, 3, NULL, &lidlen);
  sl_hub_filter *filter = NULL;
  if (lua_istable(L, 4) || lua_istable(L, 5)) {
    unsigned nm, ng;
    sl_hub_str *m = string_list(L, 4, &nm), *g = string_list(L, 5, &ng);
    if (nm + ng > SL_HUB_MAX_SELECTORS) {
      free(m);
      free(g);
      return luaL_error(L, "sluice.subscribe: at most %d selectors (match and grants together)", SL_HUB_MAX_SELECTORS);
    }
    int bad = -1;
    filter = sl_hub_filter_new(m, nm, g, ng, &bad);
    sl_hub_str badsel = bad < 0 ? (sl_hub_str){NULL, 0} : bad < (int)nm ? m[bad] : g[bad - (int)nm];
    free(m);
    free(g);
    if (!filter && badsel.p) return luaL_error(L, "bad topic selector '%s' (an unclosed '{'?)", badsel.p);
    if (!filter) return fail(L, "out of memory");
  }
  sl_conn *c = live_conn(L, 1);
  if (!c) {
    sl_hub_filter_free(filter);
    return fail(L, "closed");
  }
  int r = sl_conn_subscribe(c, chans, n, lid, lidlen, filter, lua_toboolean(L, 6));
  if (r == -EALREADY) return luaL_error(L, "the connection is already subscribed");
  if (r == -ENOMEM) return fail(L, "out of memory");
  if (r < 0) return fail(L, "closed");
  lua_pushinteger(L, r);
  return 1;
}

/* A Redis request (a publish, a kept) that a task waits for. */
typedef struct pubwait {
  sl_task *task; /* NULL once the task ended, or when nobody waits */
} pubwait;

/* A waiter for the calling coroutine, with *t its task, or NULL on the main
 * thread (on_close hooks, the main chunk), where nobody can wait. NULL if out of memory. */
static pubwait *waiter_new(lua_State *L, sl_task **t) {
  pubwait *w = calloc(1, sizeof *w);
  int main_thread = lua_pushthread(L);
  lua_pop(L, 1);
  *t = w && !main_thread ? sl_task_current(vm_of(L), (void **)&w->task) : NULL;
  return w;
}

/* The request could not be sent: nobody waits for it. */
static void waiter_drop(pubwait *w, sl_task *t) {
  if (t) t->await_slot = NULL;
  free(w);
}

/* The answer came: the waiting task, if any, with nil, err pushed on an error. */
static sl_task *waiter_done(void *arg, const char *err) {
  pubwait *w = arg;
  sl_task *t = w->task;
  free(w);
  if (t && err) {
    lua_pushnil(t->co);
    lua_pushfstring(t->co, "redis: %s", err);
  }
  return t;
}

static void on_redis_published(void *arg, const char *id, size_t idlen, const char *err) {
  sl_task *t = waiter_done(arg, err);
  if (!t) {
    if (err) sl_warn("redis: a publish failed: %s", err);
    return;
  }
  if (!err) lua_pushlstring(t->co, id, idlen);
  sl_task_wake(t, err ? 2 : 1);
}

/* publish(channels, data, id, event, retry) -> the event id; with Redis, the
 * await tag (the caller yields it and is resumed with the id or nil, err),
 * true where nobody can wait (the main thread: on_close hooks), or nil, err. */
static int api_publish(lua_State *L) {
  /* Any number of channels: the array lives in a userdata, so an error raised
   * below leaks nothing. */
  luaL_checktype(L, 1, LUA_TTABLE);
  int n = (int)lua_objlen(L, 1);
  if (n < 1) return luaL_error(L, "give at least one channel");
  sl_hub_str *chans = lua_newuserdata(L, (size_t)n * sizeof *chans);
  for (int i = 0; i < n; i++) {
    lua_rawgeti(L, 1, i + 1);
    chans[i].p = lua_tolstring(L, -1, &chans[i].len);
    lua_pop(L, 1);
    if (!chans[i].p || !chans[i].len) return luaL_error(L, "channel names must be non-empty strings");
  }
  size_t len, idlen = 0, evlen = 0;
  const char *data = luaL_checklstring(L, 2, &len);
  const char *id = luaL_optlstring(L, 3, NULL, &idlen);
  const char *ev = luaL_optlstring(L, 4, NULL, &evlen);
  long long retry = opt_retry(L, 5, -1);
  sl_server *srv = vm_of(L)->srv;
  if (srv->redis) {
    if (n > SL_RMSG_MAX_CHANS) return luaL_error(L, "sluice.publish: at most %d channels with Redis", SL_RMSG_MAX_CHANS);
    if (id && sl_sse_check_field(id, idlen)) return luaL_error(L, "event id may not contain CR, LF or NUL");
    if (ev && sl_sse_check_field(ev, evlen)) return luaL_error(L, "event name may not contain CR, LF or NUL");
    if (!sl_redis_ready(srv->redis)) return fail(L, "redis unavailable");
    sl_task *t;
    pubwait *w = waiter_new(L, &t);
    if (!w) return fail(L, "out of memory");
    unsigned nt = 0;
    sl_hub_str *topics = lua_istable(L, 6) ? string_list(L, 6, &nt) : NULL;
    int r = sl_redis_publish(srv->redis, chans, n, data, len, id, idlen, ev, evlen, retry, topics, nt,
                             lua_toboolean(L, 7), on_redis_published, w);
    free(topics);
    if (r) {
      waiter_drop(w, t);
      if (r == -E2BIG) return luaL_error(L, "sluice.publish: at most %d topics with Redis", SL_RMSG_MAX_TOPICS);
      return fail(L, r == -ENOMEM ? "out of memory" : "redis unavailable");
    }
    if (!t) {
      lua_pushboolean(L, 1);
      return 1;
    }
    sl_sched_push_tag(vm_of(L), L, SL_TAG_AWAIT);
    return 1;
  }
  char out[256];
  unsigned nt = 0;
  if (lua_istable(L, 6) && lua_objlen(L, 6) > SL_HUB_MAX_TOPICS)
    return luaL_error(L, "sluice.publish: at most %d topics", SL_HUB_MAX_TOPICS);
  sl_hub_str *topics = lua_istable(L, 6) ? string_list(L, 6, &nt) : NULL;
  uint64_t t0 = uv_hrtime();
  int r = sl_hub_publish(&srv->hub, chans, n, data, len, id, idlen, ev, evlen, retry, topics, nt, lua_toboolean(L, 7),
                         (double)t0 / 1e9, out, sizeof out);
  free(topics);
  if (r == 0) sl_metrics_published(&srv->metrics, t0);
  if (r == -EINVAL) return luaL_error(L, "event id and name may not contain CR, LF or NUL");
  if (r) return fail(L, "out of memory");
  if (id) lua_pushlstring(L, id, idlen);
  else lua_pushstring(L, out);
  return 1;
}

/* last_event_id() -> the id of the newest event published on this node, or nil */
static int api_last_event_id(lua_State *L) {
  sl_hub_event *e = vm_of(L)->srv->hub.last;
  if (!e) return 0;
  lua_pushlstring(L, e->id, e->idlen);
  return 1;
}

static void on_redis_kept(void *arg, const char *v, size_t len, const char *err) {
  sl_task *t = waiter_done(arg, err);
  if (!t) return;
  if (!err) lua_pushboolean(t->co, v[0] == '1');
  sl_task_wake(t, err ? 2 : 1);
}

/* kept(channel, id) -> whether the channel's history keeps that event; with
 * Redis, the await tag (the caller yields it and is resumed with the answer or
 * nil, err), or nil, err where nobody can wait. */
static int api_kept(lua_State *L) {
  size_t len, idlen;
  const char *name = luaL_checklstring(L, 1, &len);
  const char *id = luaL_checklstring(L, 2, &idlen);
  sl_server *srv = vm_of(L)->srv;
  if (!srv->redis) {
    lua_pushboolean(L, sl_hub_kept(&srv->hub, name, len, id, idlen));
    return 1;
  }
  sl_task *t;
  pubwait *w = waiter_new(L, &t);
  if (!w) return fail(L, "out of memory");
  if (!t) {
    waiter_drop(w, t);
    return fail(L, "with Redis, sluice.kept waits: call it from a handler, stream or timer");
  }
  int r = sl_redis_kept(srv->redis, name, len, id, idlen, on_redis_kept, w);
  if (r) {
    waiter_drop(w, t);
    return fail(L, r == -ENOMEM ? "out of memory" : "redis unavailable");
  }
  sl_sched_push_tag(vm_of(L), L, SL_TAG_AWAIT);
  return 1;
}

/* topic_matches(selector, topic) -> whether the selector selects the topic; error if malformed */
static int api_topic_matches(lua_State *L) {
  size_t sn, tn;
  const char *sel = luaL_checklstring(L, 1, &sn);
  const char *topic = luaL_checklstring(L, 2, &tn);
  sl_matcher *m = sl_match_compile(sel, sn);
  if (!m) return luaL_error(L, "bad topic selector '%s'", sel);
  lua_pushboolean(L, sl_match(m, topic, tn));
  sl_match_free(m);
  return 1;
}

/* subscribers(channel) -> count */
static int api_subscribers(lua_State *L) {
  size_t len;
  const char *name = luaL_checklstring(L, 1, &len);
  lua_pushinteger(L, sl_hub_subscribers(&vm_of(L)->srv->hub, name, len));
  return 1;
}

/* hub_stats() -> { channels, published, delivered, dropped_slow, connections } */
static int api_stats(lua_State *L) {
  sl_server *srv = vm_of(L)->srv;
  lua_createtable(L, 0, 6);
  lua_pushnumber(L, (double)srv->hub.nchans);
  lua_setfield(L, -2, "channels");
  lua_pushnumber(L, (double)srv->hub.published);
  lua_setfield(L, -2, "published");
  lua_pushnumber(L, (double)srv->hub.delivered);
  lua_setfield(L, -2, "delivered");
  lua_pushnumber(L, (double)srv->hub.dropped_slow);
  lua_setfield(L, -2, "dropped_slow");
  lua_pushnumber(L, (double)srv->nconns);
  lua_setfield(L, -2, "connections");
  lua_pushnumber(L, (double)srv->refused);
  lua_setfield(L, -2, "refused");
  int states = srv->vm ? 1 : 0;
  for (sl_vm *v = srv->retired; v; v = v->next_retired) states++;
  lua_pushnumber(L, states);
  lua_setfield(L, -2, "states");
  lua_pushnumber(L, (double)srv->reloads);
  lua_setfield(L, -2, "reloads");
  lua_pushstring(L, srv->redis ? "redis" : "memory");
  lua_setfield(L, -2, "engine");
  if (srv->redis) {
    sl_redis_stats st;
    sl_redis_get_stats(srv->redis, &st);
    lua_createtable(L, 0, 5);
    lua_pushboolean(L, st.connected);
    lua_setfield(L, -2, "connected");
    lua_pushnumber(L, (double)st.reconnects);
    lua_setfield(L, -2, "reconnects");
    lua_pushnumber(L, (double)st.received);
    lua_setfield(L, -2, "received");
    lua_pushnumber(L, (double)st.published);
    lua_setfield(L, -2, "published");
    lua_pushnumber(L, (double)st.replays);
    lua_setfield(L, -2, "replays");
    lua_setfield(L, -2, "redis");
  }
  return 1;
}

/* secure_compare(a, b) -> whether the strings are equal, in time that depends only on their lengths */
static int api_secure_compare(lua_State *L) {
  size_t la, lb;
  const unsigned char *a = (const unsigned char *)luaL_checklstring(L, 1, &la);
  const unsigned char *b = (const unsigned char *)luaL_checklstring(L, 2, &lb);
  size_t n = la > lb ? la : lb;
  unsigned diff = la != lb;
  for (size_t i = 0; i < n; i++) diff |= (unsigned)(a[i < la ? i : 0] ^ b[i < lb ? i : 0]) | (unsigned)(i >= la || i >= lb);
  lua_pushboolean(L, diff == 0 && n == la);
  return 1;
}

/* stat(path) -> "file" | "dir" | "other", size, mtime (seconds); or nil, message */
static int api_stat(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  struct stat st;
  if (stat(path, &st) != 0) return fail(L, strerror(errno));
  lua_pushstring(L, S_ISREG(st.st_mode) ? "file" : S_ISDIR(st.st_mode) ? "dir" : "other");
  lua_pushnumber(L, (double)st.st_size);
  lua_pushnumber(L, (double)st.st_mtime);
  return 3;
}

/* realpath(path) -> the canonical absolute path (symlinks resolved), or nil, message */
static int api_realpath(lua_State *L) {
  char *r = realpath(luaL_checkstring(L, 1), NULL);
  if (!r) return fail(L, strerror(errno));
  lua_pushstring(L, r);
  free(r);
  return 1;
}

/* read_file(path, max) -> contents, or nil, message. For small static files:
 * the read is synchronous, and files over max bytes are refused. */
static int api_read_file(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  lua_Number max = luaL_checknumber(L, 2);
  FILE *f = fopen(path, "rb");
  if (!f) return fail(L, strerror(errno));
  struct stat st;
  if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode) || (lua_Number)st.st_size > max) {
    fclose(f);
    return fail(L, "not a regular file of allowed size");
  }
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  char chunk[16384];
  size_t n;
  while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) luaL_addlstring(&b, chunk, n);
  int err = ferror(f);
  fclose(f);
  if (err) return fail(L, "read error");
  luaL_pushresult(&b);
  return 1;
}

/* timer(after, repeat, fn) -> a timer handle with :stop() */
static int api_timer(lua_State *L) {
  double after = luaL_checknumber(L, 1), repeat = luaL_checknumber(L, 2);
  luaL_checktype(L, 3, LUA_TFUNCTION);
  if (!(after >= 0) || !(repeat >= 0)) return luaL_error(L, "timer intervals must be numbers of seconds, not negative or NaN");
  sl_timer **ud = lua_newuserdata(L, sizeof *ud);
  *ud = NULL;
  luaL_getmetatable(L, SL_TIMER_MT);
  lua_setmetatable(L, -2);
  lua_pushvalue(L, 3);
  *ud = sl_timer_start(vm_of(L), L, after, repeat);
  if (!*ud) return luaL_error(L, "out of memory");
  return 1;
}

static int timer_stop(lua_State *L) {
  sl_timer **ud = luaL_checkudata(L, 1, SL_TIMER_MT);
  if (*ud) sl_timer_stop(*ud);
  return 0;
}

static int timer_active(lua_State *L) {
  sl_timer **ud = luaL_checkudata(L, 1, SL_TIMER_MT);
  lua_pushboolean(L, *ud != NULL);
  return 1;
}

/* conn.data is a plain table of the state that uses it (lua_vm's sl_vm_data_push). */
static int gone_data_write(lua_State *L) {
  return luaL_error(L, "%s", lua_tostring(L, lua_upvalueindex(1)));
}

/* copyable(v) -> true, or false and why conn.data could not hold it */
static int api_copyable(lua_State *L) {
  luaL_checkany(L, 1);
  sl_sb sb;
  char err[160];
  sl_sb_init(&sb, 64);
  int r = sl_copy_dump(L, 1, &sb, err, sizeof err);
  sl_sb_free(&sb);
  lua_pushboolean(L, r == 0);
  if (r) lua_pushstring(L, err);
  return r ? 2 : 1;
}

/* A read-only empty table: the data of a connection that is gone. */
static void push_gone_data(lua_State *L) {
  lua_newtable(L);
  lua_createtable(L, 0, 1);
  lua_pushliteral(L, "conn.data: the connection is gone");
  lua_pushcclosure(L, gone_data_write, 1);
  lua_setfield(L, -2, "__newindex");
  lua_setmetatable(L, -2);
}

/* conn.data = t: t becomes the connection's data table (nil empties it). */
static int conn_newindex(lua_State *L) {
  sl_conn_ud *ud = check_ud(L, 1);
  const char *k = lua_tostring(L, 2);
  if (!k || strcmp(k, "data") != 0)
    return luaL_error(L, "conn.%s cannot be set (conn.data is the connection's own table)", k ? k : "?");
  if (!lua_isnil(L, 3) && !lua_istable(L, 3))
    return luaL_error(L, "conn.data must be a table or nil, not a %s", luaL_typename(L, 3));
  sl_conn *c = sl_server_conn(ud->srv, ud->id);
  if (!c) return luaL_error(L, "conn.data: the connection is gone");
  if (lua_istable(L, 3)) {
    sl_sb sb;
    char err[160];
    sl_sb_init(&sb, 64);
    int r = sl_copy_dump(L, 3, &sb, err, sizeof err);
    sl_sb_free(&sb);
    if (r) return luaL_error(L, "conn.data cannot hold %s", err);
  }
  sl_vm_data_set(vm_of(L), L, 3, c);
  return 0;
}

/* The handle's fields: id, closed, replayed, data, route, params, mode, channels;
 * everything else comes from core.conn_methods. */
static int conn_index(lua_State *L) {
  static const char *const modes[] = {"none", "once", "stream", "subscribe", "raw"};
  sl_conn_ud *ud = check_ud(L, 1);
  const char *k = lua_tostring(L, 2);
  sl_conn *c;
  if (!k) return 0;
  if (strcmp(k, "token") == 0) {
    /* methods.__token(id, key), from the Lua library: an unguessable name for URLs */
    lua_getfield(L, lua_upvalueindex(2), "__token");
    lua_pushnumber(L, (double)ud->id);
    lua_pushlstring(L, (const char *)ud->srv->token_key, sizeof ud->srv->token_key);
    lua_call(L, 2, 1);
    return 1;
  }
  if (strcmp(k, "id") == 0) {
    lua_pushnumber(L, (double)ud->id);
    return 1;
  }
  if (strcmp(k, "closed") == 0) {
    lua_pushboolean(L, live_conn(L, 1) == NULL);
    return 1;
  }
  if (strcmp(k, "replayed") == 0) {
    /* events its subscription has been given from history so far */
    if (!(c = live_conn(L, 1)) || !c->sub) return 0;
    lua_pushinteger(L, (lua_Integer)c->sub->replayed);
    return 1;
  }
  if (strcmp(k, "data") == 0) {
    /* A closed connection keeps its data until its close hooks have run. */
    if ((c = sl_server_conn(ud->srv, ud->id))) sl_vm_data_push(vm_of(L), L, c);
    else push_gone_data(L);
    return 1;
  }
  if (strcmp(k, "route") == 0 || strcmp(k, "params") == 0 || strcmp(k, "mode") == 0 || strcmp(k, "channels") == 0) {
    if (!(c = conn_of(L, 1))) return 0;
    if (k[0] == 'r') {
      if (c->route) lua_pushstring(L, c->route);
      else lua_pushnil(L);
    } else if (k[0] == 'p') {
      /* methods.__captures(pattern, target), from the Lua library's router */
      lua_getfield(L, lua_upvalueindex(2), "__captures");
      if (c->route && c->req && lua_isfunction(L, -1)) {
        lua_pushstring(L, c->route);
        lua_pushlstring(L, c->req->head, c->req->url_len);
        lua_call(L, 2, 1);
      }
      if (!lua_istable(L, -1)) {
        lua_pop(L, 1);
        lua_newtable(L);
      }
    } else if (k[0] == 'm') {
      lua_pushstring(L, modes[c->mode]);
    } else {
      lua_createtable(L, c->sub ? (int)c->sub->nlinks : 0, 0);
      for (unsigned i = 0; c->sub && i < c->sub->nlinks; i++) {
        lua_pushlstring(L, c->sub->links[i].chan->name, c->sub->links[i].chan->namelen);
        lua_rawseti(L, -2, (int)i + 1);
      }
    }
    return 1;
  }
  lua_pushvalue(L, 2);
  lua_rawget(L, lua_upvalueindex(2));
  return 1;
}

static int conn_tostring(lua_State *L) {
  sl_conn_ud *ud = check_ud(L, 1);
  char t[SL_NUMBER_MAX];
  sl_number_text((double)ud->id, t);
  lua_pushfstring(L, "sluice.conn %s%s", t, live_conn(L, 1) ? "" : " (closed)");
  return 1;
}

/* metrics() -> the table of sluice.metrics() */
static int api_metrics(lua_State *L) {
  sl_metrics_push(vm_of(L)->srv, L);
  return 1;
}

/* metrics_text() -> the Prometheus text exposition */
static int api_metrics_text(lua_State *L) {
  sl_sb sb;
  sl_sb_init(&sb, 8192);
  sl_metrics_text(vm_of(L)->srv, &sb);
  if (sb.failed) {
    sl_sb_free(&sb);
    return luaL_error(L, "out of memory");
  }
  lua_pushlstring(L, sb.b->data, sb.b->len);
  sl_sb_free(&sb);
  return 1;
}

/* count_error(where): a Lua error the library logged itself */
static int api_count_error(lua_State *L) {
  static const char *const wheres[] = {"handler", "generator", "timer", "on_close", NULL};
  vm_of(L)->srv->metrics.lua_errors[luaL_checkoption(L, 1, NULL, wheres)]++;
  return 0;
}

static int open_core(lua_State *L) {
  sl_vm *vm = lua_touserdata(L, lua_upvalueindex(1));
  static const luaL_Reg fns[] = {
      {"respond", api_respond}, {"start", api_start},     {"encode", api_encode}, {"send", api_send},
      {"write", api_write},     {"comment", api_comment}, {"finish", api_finish}, {"close", api_close},
      {"closed", api_closed},   {"fail", api_fail},       {"expire", api_expire}, {"time", api_time},       {"now", api_now},         {"log", api_log},       {"log_enabled", api_log_enabled},
      {"config", api_config},   {"timer", api_timer},
      {"subscribe", api_subscribe}, {"release", api_release}, {"change", api_change}, {"kick", api_kick}, {"selector_ok", api_selector_ok},
      {"copyable", api_copyable}, {"drive", api_drive}, {"stream_helpers", api_stream_helpers}, {"last_event_id", api_last_event_id},
      {"kept", api_kept}, {"topic_matches", api_topic_matches},
      {"connections", api_connections}, {"conn", api_conn}, {"token_key", api_token_key}, {"previous_state", api_previous_state}, {"publish", api_publish}, {"subscribers", api_subscribers},
      {"stats", api_stats},     {"secure_compare", api_secure_compare},
      {"metrics", api_metrics}, {"metrics_text", api_metrics_text}, {"count_error", api_count_error},
      {"stat", api_stat},       {"realpath", api_realpath}, {"read_file", api_read_file}, {NULL, NULL}};
  lua_newtable(L);
  lua_pushlightuserdata(L, vm);
  luaL_setfuncs(L, fns, 1);
  /* The methods the HTTP parser accepts: a route for any other is never reached. */
  lua_newtable(L);
#define SL_METHOD(num, name, string) \
  lua_pushboolean(L, 1);             \
  lua_setfield(L, -2, #string);
  HTTP_METHOD_MAP(SL_METHOD)
#undef SL_METHOD
  lua_setfield(L, -2, "methods");
  sl_listen_open(L, vm);
  sl_out_open(L, vm);
  sl_shared_open(L, vm);
  sl_sched_open(vm, L);
  lua_setfield(L, -4, "AWAIT");
  lua_setfield(L, -3, "WAIT");
  lua_setfield(L, -2, "SLEEP");
  lua_pushstring(L, SLUICE_VERSION);
  lua_setfield(L, -2, "version");
  lua_pushinteger(L, SL_HUB_MAX_SELECTORS);
  lua_setfield(L, -2, "max_selectors");
  lua_pushinteger(L, SL_HUB_MAX_TOPICS);
  lua_setfield(L, -2, "max_topics");

  lua_pushvalue(L, lua_upvalueindex(2));
  lua_setfield(L, -2, "script_dir");

  /* Handles by connection id (weak values) and conn.data by id. */
  lua_newtable(L);
  lua_createtable(L, 0, 1);
  lua_pushliteral(L, "v");
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, -2);
  lua_setfield(L, LUA_REGISTRYINDEX, SL_HANDLES);

  /* The connection handle's metatable; its methods are filled in by the Lua library. */
  lua_newtable(L); /* methods */
  luaL_newmetatable(L, SL_CONN_MT);
  lua_pushlightuserdata(L, vm);
  lua_pushvalue(L, -3);
  lua_pushcclosure(L, conn_index, 2);
  lua_setfield(L, -2, "__index");
  lua_pushlightuserdata(L, vm);
  lua_pushcclosure(L, conn_newindex, 1);
  lua_setfield(L, -2, "__newindex");
  lua_pushcfunction(L, conn_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pushliteral(L, "sluice.conn");
  lua_setfield(L, -2, "__metatable");
  lua_pop(L, 1);
  lua_setfield(L, -2, "conn_methods");

  luaL_newmetatable(L, SL_TIMER_MT);
  lua_newtable(L);
  lua_pushcfunction(L, timer_stop);
  lua_setfield(L, -2, "stop");
  lua_pushcfunction(L, timer_active);
  lua_setfield(L, -2, "active");
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
  return 1;
}

void sl_api_open(lua_State *L, sl_vm *vm, const char *script_dir) {
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "preload");
  lua_pushlightuserdata(L, vm);
  lua_pushstring(L, script_dir);
  lua_pushcclosure(L, open_core, 2);
  lua_setfield(L, -2, "sluice.core");
  lua_pushcfunction(L, luaopen_sluice_text);
  lua_setfield(L, -2, "sluice.text");
  lua_pushcfunction(L, luaopen_sluice_crypto);
  lua_setfield(L, -2, "sluice.crypto");
  lua_pop(L, 2);
}
