/* listen: sluice.listen's channel listeners. See listen.h.
 *
 * A listener is a hub subscriber whose deliver() queues the framed event and
 * pokes the task waiting for it; the task is resumed from the loop, never
 * from inside a publish. The Lua side reads events back out of the frames. */
#include "listen.h"
#include <errno.h>
#include <stddef.h>
#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>
#include "lua_vm.h"
#include "sched.h"
#include "server.h"

#define SL_LISTENER_MT "sluice.listener"

typedef struct sl_listener {
  sl_hub_sub sub;     /* first: the hub hands this back to deliver() */
  sl_server *srv;
  sl_buf **q;         /* frames not read yet: q[head .. head+len) */
  unsigned head, len, cap;
  size_t bytes;
  sl_task *waiter;    /* the task waiting for the next event (cleared if it ends) */
  sl_owned own;       /* owned by the task that made it: its channels go when that task ends */
  uint8_t linked, overflow;
} sl_listener;

static int listener_deliver(sl_hub_sub *s, sl_buf *frame) {
  sl_listener *l = (sl_listener *)s;
  if (l->overflow) return 0;
  size_t limit = l->srv->cfg.queue_limit;
  if (limit && l->bytes + frame->len > limit && l->len) {
    /* Nobody reads: stop queueing; the reader hears of it at its next event. */
    l->overflow = 1;
    return 0;
  }
  if (l->head + l->len == l->cap) {
    if (l->head) {
      memmove(l->q, l->q + l->head, l->len * sizeof *l->q);
      l->head = 0;
    } else {
      unsigned cap = l->cap ? l->cap * 2 : 8;
      sl_buf **q = realloc(l->q, cap * sizeof *q);
      if (!q) {
        l->overflow = 1;
        return 0;
      }
      l->q = q;
      l->cap = cap;
    }
  }
  l->q[l->head + l->len++] = sl_buf_ref(frame);
  l->bytes += frame->len;
  if (l->waiter) sl_task_poke(l->waiter);
  return 0;
}

static void unlink_listener(sl_listener *l) {
  if (!l->linked) return;
  l->linked = 0;
  sl_hub_unsubscribe(&l->srv->hub, &l->sub);
}

/* The task that made it ended (its client left): the channels go now, not
 * when the garbage collector gets to the listener. */
static void on_owner_gone(sl_owned *o) {
  sl_listener *l = (sl_listener *)((char *)o - offsetof(sl_listener, own));
  unlink_listener(l);
}

static int listener_gc(lua_State *L) {
  sl_listener *l = luaL_checkudata(L, 1, SL_LISTENER_MT);
  sl_owned_drop(&l->own);
  unlink_listener(l);
  for (unsigned i = 0; i < l->len; i++) sl_buf_unref(l->q[l->head + i]);
  free(l->q);
  l->q = NULL;
  l->len = l->head = l->cap = 0;
  if (l->waiter && l->waiter->await_slot == (void **)&l->waiter) l->waiter->await_slot = NULL;
  l->waiter = NULL;
  return 0;
}

/* Pushes the event of an SSE frame as { data =, id =, event = } (retry too if set). */
static void push_event(lua_State *L, const sl_buf *f) {
  static const char *const fields[] = {"id", "event", "retry"};
  lua_createtable(L, 0, 3);
  const char *end = f->data + f->len;
  /* The fields first; then the data lines, joined, through a buffer that may
   * use the stack as it likes. */
  for (const char *p = f->data, *nl; p < end; p = nl + 1) {
    nl = memchr(p, '\n', (size_t)(end - p));
    if (!nl) nl = end;
    size_t n = (size_t)(nl - p);
    for (int i = 0; i < 3; i++) {
      size_t k = strlen(fields[i]);
      if (n > k + 1 && memcmp(p, fields[i], k) == 0 && p[k] == ':' && p[k + 1] == ' ') {
        if (i == 2) lua_pushnumber(L, strtod(p + k + 2, NULL));
        else lua_pushlstring(L, p + k + 2, n - k - 2);
        lua_setfield(L, -2, fields[i]);
      }
    }
  }
  luaL_Buffer data;
  int have_data = 0;
  luaL_buffinit(L, &data);
  for (const char *p = f->data, *nl; p < end; p = nl + 1) {
    nl = memchr(p, '\n', (size_t)(end - p));
    if (!nl) nl = end;
    size_t n = (size_t)(nl - p);
    if (n < 5 || memcmp(p, "data:", 5) != 0) continue;
    if (have_data) luaL_addchar(&data, '\n');
    if (n > 6) luaL_addlstring(&data, p + 6, n - 6);
    have_data = 1;
  }
  luaL_pushresult(&data);
  lua_setfield(L, -2, "data");
}

/* listen(channels, last_event_id) -> a listener */
static int api_listen(lua_State *L) {
  sl_vm *vm = lua_touserdata(L, lua_upvalueindex(1));
  luaL_checktype(L, 1, LUA_TTABLE);
  int n = (int)lua_objlen(L, 1);
  if (n < 1 || n > SL_HUB_MAX_LINKS) return luaL_error(L, "give 1 to %d channels", SL_HUB_MAX_LINKS);
  sl_hub_str chans[SL_HUB_MAX_LINKS];
  for (int i = 0; i < n; i++) {
    lua_rawgeti(L, 1, i + 1);
    chans[i].p = lua_tolstring(L, -1, &chans[i].len);
    if (!chans[i].p || !chans[i].len) return luaL_error(L, "channel names must be non-empty strings");
    lua_pop(L, 1);
  }
  size_t lidlen = 0;
  const char *lid = luaL_optlstring(L, 2, NULL, &lidlen);
  /* With Redis, history is in Redis: a listener gets live events only. */
  if (vm->srv->redis) lid = NULL;
  sl_listener *l = lua_newuserdata(L, sizeof *l);
  memset(l, 0, sizeof *l);
  l->srv = vm->srv;
  l->sub.deliver = listener_deliver;
  l->sub.data = l;
  luaL_getmetatable(L, SL_LISTENER_MT);
  lua_setmetatable(L, -2);
  int r = sl_hub_subscribe(&vm->srv->hub, &l->sub, chans, n, lid, lidlen, (double)uv_hrtime() / 1e9);
  if (r < 0) return luaL_error(L, "out of memory");
  l->linked = 1;
  l->own.release = on_owner_gone;
  if (vm->current) sl_task_own(vm->current, &l->own);
  return 1;
}

/* listen_next(listener) -> the next event; the await tag when there is none yet
 * (the caller yields it and asks again when resumed); nil, why when it fell behind. */
static int api_listen_next(lua_State *L) {
  sl_vm *vm = lua_touserdata(L, lua_upvalueindex(1));
  sl_listener *l = luaL_checkudata(L, 1, SL_LISTENER_MT);
  if (l->len) {
    sl_buf *f = l->q[l->head];
    l->head++;
    l->len--;
    l->bytes -= f->len;
    if (!l->len) l->head = 0;
    push_event(L, f);
    sl_buf_unref(f);
    return 1;
  }
  if (l->overflow) {
    unlink_listener(l);
    lua_pushnil(L);
    lua_pushliteral(L, "it fell behind: more than queue_limit bytes of events were not read");
    return 2;
  }
  if (!l->linked) return 0; /* closed, or its task ended: no more events */
  int main_thread = lua_pushthread(L);
  lua_pop(L, 1);
  if (main_thread || !sl_task_current(vm, (void **)&l->waiter))
    return luaL_error(L, "sluice.listen works in a handler, generator, raw callback or timer body");
  sl_sched_push_tag(vm, L, SL_TAG_AWAIT);
  return 1;
}

/* close(listener): no more events */
static int api_listen_close(lua_State *L) {
  sl_listener *l = luaL_checkudata(L, 1, SL_LISTENER_MT);
  sl_owned_drop(&l->own);
  unlink_listener(l);
  return 0;
}

void sl_listen_open(lua_State *L, sl_vm *vm) {
  luaL_newmetatable(L, SL_LISTENER_MT);
  lua_pushcfunction(L, listener_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
  lua_pushlightuserdata(L, vm);
  lua_pushcclosure(L, api_listen, 1);
  lua_setfield(L, -2, "listen");
  lua_pushlightuserdata(L, vm);
  lua_pushcclosure(L, api_listen_next, 1);
  lua_setfield(L, -2, "listen_next");
  lua_pushcfunction(L, api_listen_close);
  lua_setfield(L, -2, "listen_close");
}
