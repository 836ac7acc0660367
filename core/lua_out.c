/* lua_out: see lua_out.h. */
#include "lua_out.h"
#include <errno.h>
#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <hiredis/hiredis.h>
#include "fetch.h"
#include "log.h"
#include "lua_vm.h"
#include "metrics.h"
#include "redis.h"
#include "sched.h"
#include "server.h"

static sl_vm *vm_of(lua_State *L) { return lua_touserdata(L, lua_upvalueindex(1)); }

/* One call a task waits on. task comes first: it is the await slot, and the
 * cancel hook finds the wait from it. */
typedef struct out_wait {
  sl_task *task;         /* NULL once the task has ended */
  sl_fetch_req *req;     /* an HTTP request's transfer */
  sl_server *srv;
} out_wait;

/* The task ended first (its client left, a shutdown): the transfer goes too. */
static void cancel_fetch(void **slot) {
  out_wait *w = (out_wait *)slot;
  sl_fetch_cancel(w->req);
  free(w);
}

/* Pushes the header lines of head (status line first) as a table: lower-case
 * names; a repeated header is a list of its values in order. */
static void push_head(lua_State *L, const char *head, size_t len) {
  lua_newtable(L);
  const char *p = head, *end = head + len;
  const char *lf = memchr(p, '\n', len);
  p = lf ? lf + 1 : end; /* the status line */
  char name[256];
  while (p < end) {
    lf = memchr(p, '\n', (size_t)(end - p));
    const char *eol = lf ? lf : end, *next = lf ? lf + 1 : end;
    if (eol > p && eol[-1] == '\r') eol--;
    const char *colon = memchr(p, ':', (size_t)(eol - p));
    if (colon && colon > p && (size_t)(colon - p) < sizeof name) {
      size_t n = (size_t)(colon - p);
      for (size_t i = 0; i < n; i++) name[i] = (p[i] >= 'A' && p[i] <= 'Z') ? (char)(p[i] + 32) : p[i];
      const char *v = colon + 1, *ve = eol;
      while (v < ve && (*v == ' ' || *v == '\t')) v++;
      while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t')) ve--;
      lua_pushlstring(L, name, n);
      lua_pushvalue(L, -1);
      lua_rawget(L, -3);
      if (lua_isnil(L, -1)) {
        lua_pop(L, 1);
        lua_pushlstring(L, v, (size_t)(ve - v));
      } else {
        if (!lua_istable(L, -1)) { /* the second value: a list from now on */
          lua_createtable(L, 2, 0);
          lua_insert(L, -2);
          lua_rawseti(L, -2, 1);
        }
        lua_pushlstring(L, v, (size_t)(ve - v));
        lua_rawseti(L, -2, (int)lua_objlen(L, -2) + 1);
      }
      lua_rawset(L, -3);
    }
    p = next;
  }
}

static void on_fetched(void *arg, const sl_fetch_res *res) {
  out_wait *w = arg;
  sl_task *t = w->task;
  sl_hist_observe(&w->srv->metrics.fetch_duration, res->seconds);
  free(w);
  if (!t) return;
  lua_State *co = t->co;
  if (res->kind) {
    lua_pushnil(co);
    lua_pushstring(co, res->kind);
    lua_pushstring(co, res->detail);
    sl_task_wake(t, 3);
    return;
  }
  lua_createtable(co, 0, 3);
  lua_pushinteger(co, res->status);
  lua_setfield(co, -2, "status");
  push_head(co, res->head, res->head_len);
  lua_setfield(co, -2, "headers");
  lua_pushlstring(co, res->body, res->body_len);
  lua_setfield(co, -2, "body");
  sl_task_wake(t, 1);
}

/* A header line's bytes: no CR, LF or NUL (they would make another header). */
static int clean(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (s[i] == '\r' || s[i] == '\n' || s[i] == '\0') return 0;
  return 1;
}

/* http_request(url, method, header_lines, body, timeout, connect_timeout,
 * max_body, follow, insecure, cainfo) -> the await tag (the caller yields it
 * and is resumed with res, or nil, kind, detail); nil, kind, detail when it
 * cannot start; false, why for a bad argument (the library raises it where the
 * script called). Arguments were checked by the library; the bytes that could
 * change the request's meaning are checked again here. */
static int api_http_request(lua_State *L) {
  sl_vm *vm = vm_of(L);
  sl_server *srv = vm->srv;
  sl_fetch_opts o = {0};
  size_t ulen;
  o.url = luaL_checklstring(L, 1, &ulen);
  o.method = luaL_checkstring(L, 2);
  luaL_checktype(L, 3, LUA_TTABLE);
  o.body = luaL_optlstring(L, 4, NULL, &o.body_len);
  o.timeout_ms = (long)(luaL_optnumber(L, 5, 0) * 1000);
  o.connect_timeout_ms = (long)(luaL_optnumber(L, 6, 0) * 1000);
  o.max_body = (size_t)luaL_checknumber(L, 7);
  o.follow = (long)luaL_optinteger(L, 8, 0);
  o.insecure = lua_toboolean(L, 9);
  o.cainfo = luaL_optstring(L, 10, NULL);
  if (!clean(o.url, ulen) || strlen(o.url) != ulen) {
    lua_pushboolean(L, 0);
    lua_pushstring(L, "the URL may not contain CR, LF or NUL");
    return 2;
  }
  int main_thread = lua_pushthread(L);
  lua_pop(L, 1);
  if (main_thread || !vm->current) {
    lua_pushboolean(L, 0);
    lua_pushstring(L, "it waits for the answer, so it runs in a handler, a generator, a timer or a raw callback");
    return 2;
  }
  size_t nh = lua_objlen(L, 3);
  const char **lines = lua_newuserdata(L, (nh ? nh : 1) * sizeof *lines); /* freed by the GC: nothing leaks on an error */
  for (size_t i = 0; i < nh; i++) {
    lua_rawgeti(L, 3, (int)i + 1);
    size_t n;
    lines[i] = lua_tolstring(L, -1, &n);
    lua_pop(L, 1); /* the table keeps the string */
    if (!lines[i] || !clean(lines[i], n)) {
      lua_pushboolean(L, 0);
      lua_pushstring(L, "header names and values may not contain CR, LF or NUL");
      return 2;
    }
  }
  o.headers = lines;
  o.nheaders = nh;
  if (!srv->fetch && !(srv->fetch = sl_fetch_new(srv->loop))) {
    lua_pushnil(L);
    lua_pushliteral(L, "error");
    lua_pushliteral(L, "out of memory");
    return 3;
  }
  sl_fetch_limits(srv->fetch, srv->cfg.http_max_concurrent, srv->cfg.http_max_per_host);
  out_wait *w = calloc(1, sizeof *w);
  if (!w) return luaL_error(L, "out of memory");
  w->srv = srv;
  int r = sl_fetch_start(srv->fetch, &o, on_fetched, w, &w->req);
  if (r) {
    free(w);
    if (r == -EINVAL) {
      lua_pushboolean(L, 0);
      lua_pushfstring(L, "malformed URL or not http(s): %s", o.url);
      return 2;
    }
    lua_pushnil(L);
    if (r == -EBUSY || r == -EAGAIN) {
      lua_pushliteral(L, "busy");
      lua_pushfstring(L, "%d requests in flight%s (configure { http = { %s } })",
                      (int)(r == -EBUSY ? srv->cfg.http_max_concurrent : srv->cfg.http_max_per_host),
                      r == -EBUSY ? "" : " to this host", r == -EBUSY ? "max_concurrent" : "max_per_host");
    } else {
      lua_pushliteral(L, "error");
      lua_pushliteral(L, "out of memory");
    }
    return 3;
  }
  sl_task_current_cancel(vm, (void **)&w->task, cancel_fetch);
  sl_sched_push_tag(vm, L, SL_TAG_AWAIT);
  return 1;
}

/* ---- Redis commands ---- */

typedef struct redis_wait {
  sl_task *task; /* the await slot; NULL once the task has ended */
} redis_wait;

/* Pushes a reply as a Lua value: nil as json.null inside arrays (the
 * library's null), errors inside arrays as { error = message }. */
static void push_reply(lua_State *L, const redisReply *r, int nested) {
  switch (r->type) {
    case REDIS_REPLY_INTEGER: lua_pushnumber(L, (lua_Number)r->integer); break;
    case REDIS_REPLY_NIL:
      if (nested) lua_pushlightuserdata(L, NULL); /* sluice.json.null (lua-cjson's null) */
      else lua_pushnil(L);
      break;
    case REDIS_REPLY_ERROR:
      lua_createtable(L, 0, 1);
      lua_pushlstring(L, r->str, r->len);
      lua_setfield(L, -2, "error");
      break;
    case REDIS_REPLY_ARRAY:
      lua_createtable(L, (int)r->elements, 0);
      for (size_t i = 0; i < r->elements; i++) {
        push_reply(L, r->element[i], 1);
        lua_rawseti(L, -2, (int)i + 1);
      }
      break;
    default: lua_pushlstring(L, r->str ? r->str : "", r->str ? r->len : 0); /* strings and statuses (RESP2) */
  }
}

static void on_redis_reply(void *arg, void *reply_) {
  redis_wait *w = arg;
  sl_task *t = w->task;
  free(w);
  if (!t) return;
  const redisReply *reply = reply_;
  lua_State *co = t->co;
  if (!reply || reply->type == REDIS_REPLY_ERROR) {
    lua_pushnil(co);
    if (reply) lua_pushlstring(co, reply->str, reply->len);
    else lua_pushliteral(co, "redis: connection lost");
    sl_task_wake(t, 2);
    return;
  }
  push_reply(co, reply, 0);
  sl_task_wake(t, 1);
}

/* redis_call(words) -> the await tag (resumed with the value, or nil, err);
 * nil, err when Redis is not connected; false, why for a bad argument. */
static int api_redis_call(lua_State *L) {
  sl_vm *vm = vm_of(L);
  sl_server *srv = vm->srv;
  luaL_checktype(L, 1, LUA_TTABLE);
  int n = (int)lua_objlen(L, 1);
  if (!srv->redis) {
    lua_pushboolean(L, 0);
    lua_pushliteral(L, "the gateway has no Redis (start it with --redis URL or configure { redis = URL })");
    return 2;
  }
  int main_thread = lua_pushthread(L);
  lua_pop(L, 1);
  if (main_thread || !vm->current) {
    lua_pushboolean(L, 0);
    lua_pushstring(L, "it waits for the answer, so it runs in a handler, a generator, a timer or a raw callback");
    return 2;
  }
  const char **argv = lua_newuserdata(L, (size_t)(n ? n : 1) * (sizeof *argv + sizeof(size_t)));
  size_t *lens = (size_t *)(argv + (n ? n : 1));
  for (int i = 0; i < n; i++) {
    lua_rawgeti(L, 1, i + 1);
    argv[i] = lua_tolstring(L, -1, &lens[i]); /* the library made each a string */
    lua_pop(L, 1);
  }
  redis_wait *w = calloc(1, sizeof *w);
  if (!w) return luaL_error(L, "out of memory");
  int r = sl_redis_command(srv->redis, n, argv, lens, on_redis_reply, w);
  if (r) {
    free(w);
    lua_pushnil(L);
    lua_pushstring(L, r == -ENOTCONN ? "redis unavailable" : "out of memory");
    return 2;
  }
  /* A reply that comes after the task ended finds no task: nothing to cancel on the wire. */
  sl_task_current(vm, (void **)&w->task);
  sl_sched_push_tag(vm, L, SL_TAG_AWAIT);
  return 1;
}

void sl_out_open(lua_State *L, sl_vm *vm) {
  static const luaL_Reg fns[] = {{"http_request", api_http_request}, {"redis_call", api_redis_call}, {NULL, NULL}};
  lua_pushlightuserdata(L, vm);
  luaL_setfuncs(L, fns, 1);
}

void sl_out_stop(sl_server *srv) {
  sl_fetch_close(srv->fetch);
  srv->fetch = NULL;
}
