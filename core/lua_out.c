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
  const char *p = head, *end = head + len;
  int lines = 0;
  for (const char *q = p; (q = memchr(q, '\n', (size_t)(end - q))) != NULL; q++) lines++;
  lua_createtable(L, 0, lines > 2 ? lines - 2 : 0); /* sized once: no status line, no blank line */
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
  const sl_vm *vm = t->vm;
  lua_createtable(co, 0, 3);
  sl_vm_pushkey(vm, co, SL_K_STATUS);
  lua_pushinteger(co, res->status);
  lua_rawset(co, -3);
  sl_vm_pushkey(vm, co, SL_K_HEADERS);
  push_head(co, res->head, res->head_len);
  lua_rawset(co, -3);
  sl_vm_pushkey(vm, co, SL_K_BODY);
  lua_pushlstring(co, res->body, res->body_len);
  lua_rawset(co, -3);
  sl_task_wake(t, 1);
}

/* A header line's bytes: no CR, LF or NUL (they would make another header). */
static int clean(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (s[i] == '\r' || s[i] == '\n' || s[i] == '\0') return 0;
  return 1;
}

/* Reads the request's arguments at 1..10 (url, method, header_lines, body,
 * timeout, connect_timeout, max_body, follow, insecure, cainfo) into o; the
 * header lines live in a userdata left on the stack. NULL, or why they are
 * wrong. Arguments were checked by the library; the bytes that could change
 * the request's meaning are checked again here. */
static const char *read_opts(lua_State *L, sl_fetch_opts *o) {
  size_t ulen;
  memset(o, 0, sizeof *o);
  o->url = luaL_checklstring(L, 1, &ulen);
  o->method = luaL_checkstring(L, 2);
  if (!lua_isnil(L, 3)) luaL_checktype(L, 3, LUA_TTABLE);
  o->body = luaL_optlstring(L, 4, NULL, &o->body_len);
  o->timeout_ms = (long)(luaL_optnumber(L, 5, 0) * 1000);
  o->connect_timeout_ms = (long)(luaL_optnumber(L, 6, 0) * 1000);
  o->max_body = (size_t)luaL_checknumber(L, 7);
  o->follow = (long)luaL_optinteger(L, 8, 0);
  o->insecure = lua_toboolean(L, 9);
  o->cainfo = luaL_optstring(L, 10, NULL);
  if (!clean(o->url, ulen) || strlen(o->url) != ulen) return "the URL may not contain CR, LF or NUL";
  size_t nh = lua_isnil(L, 3) ? 0 : lua_objlen(L, 3);
  if (!nh) return NULL;
  const char **lines = lua_newuserdata(L, nh * sizeof *lines); /* freed by the GC: nothing leaks on an error */
  for (size_t i = 0; i < nh; i++) {
    lua_rawgeti(L, 3, (int)i + 1);
    size_t n;
    lines[i] = lua_tolstring(L, -1, &n);
    lua_pop(L, 1); /* the table keeps the string */
    if (!lines[i] || !clean(lines[i], n)) return "header names and values may not contain CR, LF or NUL";
  }
  o->headers = lines;
  o->nheaders = nh;
  return NULL;
}

/* Whether the running coroutine can wait (a task's, not the main thread). */
static int can_wait(lua_State *L, sl_vm *vm) {
  int main_thread = lua_pushthread(L);
  lua_pop(L, 1);
  return !main_thread && vm->current;
}

#define CANNOT_WAIT "it waits for the answer, so it runs in a handler, a generator, a timer or a raw callback"

/* A misuse the library raises where the script called: pushes false, why. */
static int misuse(lua_State *L, const char *why) {
  lua_pushboolean(L, 0);
  lua_pushstring(L, why);
  return 2;
}

/* read_opts, and whether the caller can wait: 0, or misuse's values pushed. */
static int read_request(lua_State *L, sl_vm *vm, sl_fetch_opts *o) {
  const char *bad = read_opts(L, o);
  if (!bad && !can_wait(L, vm)) bad = CANNOT_WAIT;
  return bad ? misuse(L, bad) : 0;
}

/* Starts o; 0, or the number of values pushed for the caller to return. */
static int start(lua_State *L, sl_server *srv, const sl_fetch_opts *o, sl_fetch_cb cb, void *arg,
                 sl_fetch_req **req) {
  if (!srv->fetch && !(srv->fetch = sl_fetch_new(srv->loop))) {
    lua_pushnil(L);
    lua_pushliteral(L, "error");
    lua_pushliteral(L, "out of memory");
    return 3;
  }
  sl_fetch_limits(srv->fetch, srv->cfg.http_max_concurrent, srv->cfg.http_max_per_host);
  int r = sl_fetch_start(srv->fetch, o, cb, arg, req);
  if (!r) return 0;
  if (r == -EINVAL) return misuse(L, lua_pushfstring(L, "malformed URL or not http(s): %s", o->url));
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

/* http_request(url, method, header_lines (nil: none), body, timeout, connect_timeout,
 * max_body, follow, insecure, cainfo) -> the await tag (the caller yields it
 * and is resumed with res, or nil, kind, detail); nil, kind, detail when it
 * cannot start; false, why for a bad argument (the library raises it where the
 * script called). */
static int api_http_request(lua_State *L) {
  sl_vm *vm = vm_of(L);
  sl_fetch_opts o;
  int n = read_request(L, vm, &o);
  if (n) return n;
  out_wait *w = calloc(1, sizeof *w);
  if (!w) return luaL_error(L, "out of memory");
  w->srv = vm->srv;
  n = start(L, vm->srv, &o, on_fetched, w, &w->req);
  if (n) {
    free(w);
    return n;
  }
  sl_task_current_cancel(vm, (void **)&w->task, cancel_fetch);
  sl_sched_push_tag(vm, L, SL_TAG_AWAIT);
  return 1;
}

/* ---- streamed responses ---- */

#define SL_STREAM_MT "sluice.http_stream"
#define STREAM_HWM (64 * 1024) /* body bytes held for a script that does not read before the transfer pauses */

/* A streamed response: the Lua userdata itself, owned by the task that
 * opened it (the transfer goes when the task ends or the userdata is
 * collected, whichever is first). */
typedef struct out_stream {
  sl_owned own;
  sl_fetch_req *req;     /* NULL once released */
  sl_task *waiter;       /* the task waiting for news (the await slot) */
  sl_vm *vm;
} out_stream;

static void stream_release(out_stream *s) {
  if (s->req) sl_fetch_release(s->req);
  s->req = NULL;
}

static void on_owner_gone(sl_owned *o) { stream_release((out_stream *)o); }

static void on_stream_news(void *arg, const sl_fetch_res *res) {
  (void)res;
  out_stream *s = arg;
  if (s->waiter) sl_task_poke(s->waiter);
}

static int stream_gc(lua_State *L) {
  out_stream *s = luaL_checkudata(L, 1, SL_STREAM_MT);
  sl_owned_drop(&s->own);
  if (s->waiter && s->waiter->await_slot == (void **)&s->waiter) s->waiter->await_slot = NULL;
  s->waiter = NULL;
  stream_release(s);
  return 0;
}

/* http_stream(same arguments as http_request) -> a stream handle; nil, kind,
 * detail; false, why for a bad argument. It does not wait: http_stream_head does. */
static int api_http_stream(lua_State *L) {
  sl_vm *vm = vm_of(L);
  sl_fetch_opts o;
  int n = read_request(L, vm, &o);
  if (n) return n;
  o.stream_hwm = STREAM_HWM;
  out_stream *s = lua_newuserdata(L, sizeof *s);
  memset(s, 0, sizeof *s);
  s->vm = vm;
  s->own.release = on_owner_gone;
  luaL_getmetatable(L, SL_STREAM_MT);
  lua_setmetatable(L, -2);
  n = start(L, vm->srv, &o, on_stream_news, s, &s->req);
  if (n) {
    s->req = NULL;
    return n;
  }
  sl_task_own(vm->current, &s->own);
  return 1;
}

/* Has the running task wait for the stream's news: pushes the await tag. */
static int stream_wait(lua_State *L, out_stream *s) {
  sl_task_current(s->vm, (void **)&s->waiter);
  sl_sched_push_tag(s->vm, L, SL_TAG_AWAIT);
  return 1;
}

/* http_stream_head(s) -> status, headers; the await tag; nil, kind, detail */
static int api_http_stream_head(lua_State *L) {
  out_stream *s = luaL_checkudata(L, 1, SL_STREAM_MT);
  sl_fetch_res res;
  if (!s->req) {
    lua_pushnil(L);
    lua_pushliteral(L, "cancelled");
    lua_pushliteral(L, "the stream was closed");
    return 3;
  }
  if (sl_fetch_head(s->req, &res)) return stream_wait(L, s);
  if (res.kind) {
    lua_pushnil(L);
    lua_pushstring(L, res.kind);
    lua_pushstring(L, res.detail);
    return 3;
  }
  lua_pushinteger(L, res.status);
  push_head(L, res.head, res.head_len);
  return 2;
}

/* http_stream_read(s) -> the next bytes; the await tag; nil at the end; nil, kind, detail */
static int api_http_stream_read(lua_State *L) {
  out_stream *s = luaL_checkudata(L, 1, SL_STREAM_MT);
  if (!s->req) return 0;
  size_t len;
  const char *p = sl_fetch_peek(s->req, &len);
  if (p) {
    lua_pushlstring(L, p, len);
    sl_fetch_taken(s->req);
    return 1;
  }
  const char *kind, *detail;
  if (!sl_fetch_ended(s->req, &kind, &detail)) return stream_wait(L, s);
  if (!kind) return 0;
  lua_pushnil(L);
  lua_pushstring(L, kind);
  lua_pushstring(L, detail);
  return 3;
}

/* http_stream_close(s): ends the transfer now; a task that waits on it (from
 * another coroutine) is woken to find it ended. */
static int api_http_stream_close(lua_State *L) {
  out_stream *s = luaL_checkudata(L, 1, SL_STREAM_MT);
  sl_owned_drop(&s->own);
  stream_release(s);
  if (s->waiter) sl_task_poke(s->waiter);
  return 0;
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
  if (!srv->redis) return misuse(L, "the gateway has no Redis (start it with --redis URL or configure { redis = URL })");
  if (!can_wait(L, vm)) return misuse(L, CANNOT_WAIT);
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
  static const luaL_Reg fns[] = {{"http_request", api_http_request},
                                 {"http_stream", api_http_stream},
                                 {"http_stream_head", api_http_stream_head},
                                 {"http_stream_read", api_http_stream_read},
                                 {"http_stream_close", api_http_stream_close},
                                 {"redis_call", api_redis_call},
                                 {NULL, NULL}};
  if (luaL_newmetatable(L, SL_STREAM_MT)) {
    lua_pushcfunction(L, stream_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  lua_pushlightuserdata(L, vm);
  luaL_setfuncs(L, fns, 1);
}

void sl_out_stop(sl_server *srv) {
  sl_fetch_close(srv->fetch);
  srv->fetch = NULL;
}
