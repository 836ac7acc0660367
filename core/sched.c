/* sched: coroutine tasks and their one resume path. See sched.h.
 *
 * A coroutine talks to the scheduler by yielding a tag: (sleep_tag, seconds)
 * suspends it on its task's timer; (wait_tag) suspends it until its
 * connection's queue drains below the high-water mark. Anything else yielded
 * to the scheduler is a misuse and ends the task as an error. */
#include "sched.h"
#include <lauxlib.h>
#include <stdlib.h>
#include "conn.h"
#include "log.h"
#include "lua_vm.h"
#include "server.h"

char sl_sched_sleep_tag, sl_sched_wait_tag, sl_sched_await_tag;

sl_task *sl_task_new(sl_vm *vm, sl_conn *c) {
  sl_task *t = calloc(1, sizeof *t);
  if (!t) return NULL;
  t->vm = vm;
  t->conn = c;
  t->co = lua_newthread(vm->L);
  t->co_ref = luaL_ref(vm->L, LUA_REGISTRYINDEX);
  uv_timer_init(vm->srv->loop, &t->timer);
  t->timer.data = t;
  t->next = vm->tasks;
  if (vm->tasks) vm->tasks->prev = t;
  vm->tasks = t;
  if (c) c->task = t;
  return t;
}

static void on_task_closed(uv_handle_t *h) { free(h->data); }

/* Releases the coroutine; the task's memory goes in the timer's close callback. */
static void task_end(sl_task *t, int ok) {
  sl_conn *c = t->conn;
  t->ended = 1;
  if (t->prev) t->prev->next = t->next;
  else t->vm->tasks = t->next;
  if (t->next) t->next->prev = t->prev;
  if (t->await_slot) *t->await_slot = NULL;
  t->await_slot = NULL;
  luaL_unref(t->vm->L, LUA_REGISTRYINDEX, t->co_ref);
  t->co = NULL;
  uv_close((uv_handle_t *)&t->timer, on_task_closed);
  if (c && c->task == t) {
    c->task = NULL;
    sl_conn_task_done(c, ok);
  }
  sl_vm_maybe_close(t->vm);
}

static void on_wake(uv_timer_t *timer) { sl_task_resume(timer->data, 0); }

void sl_task_resume(sl_task *t, int nargs) {
  lua_State *co = t->co;
  sl_task *outer = t->vm->current;
  t->vm->current = t;
  t->running = 1;
  int rc = lua_resume(co, nargs);
  t->running = 0;
  t->vm->current = outer;
  if (t->cancelled) {
    task_end(t, 1);
    return;
  }
  if (rc == LUA_YIELD) {
    void *tag = lua_touserdata(co, 1);
    if (tag == &sl_sched_sleep_tag) {
      double secs = lua_tonumber(co, 2);
      lua_settop(co, 0);
      uint64_t ms = secs > 0 ? (uint64_t)(secs * 1000 + 0.5) : 0;
      uv_timer_start(&t->timer, on_wake, ms, 0);
      return;
    }
    if (tag == &sl_sched_wait_tag) {
      lua_settop(co, 0);
      if (t->conn && t->conn->queued >= t->conn->hwm) {
        t->waiting = 1;
        return;
      }
      /* Room already: go on from the loop, not from here, to keep the C stack flat. */
      uv_timer_start(&t->timer, on_wake, 0, 0);
      return;
    }
    if (tag == &sl_sched_await_tag) {
      lua_settop(co, 0);
      t->awaiting = 1;
      return;
    }
    lua_settop(co, 0);
    lua_pushstring(co, "coroutine.yield called outside a generator (use sluice.sleep to wait)");
    rc = LUA_ERRRUN;
  }
  if (rc != 0) {
    sl_vm_log_error(co, t->conn ? "handler" : "task");
    task_end(t, 0);
    return;
  }
  task_end(t, 1);
}

sl_task *sl_task_current(sl_vm *vm, void **slot) {
  sl_task *t = vm->current;
  if (!t || t->ended || t->cancelled) return NULL;
  t->await_slot = slot;
  *slot = t;
  return t;
}

void sl_task_wake(sl_task *t, int nargs) {
  t->await_slot = NULL;
  if (!t->awaiting || t->running) {
    lua_pop(t->co, nargs);
    return;
  }
  t->awaiting = 0;
  sl_task_resume(t, nargs);
}

void sl_task_cancel(sl_task *t) {
  t->conn = NULL;
  if (t->cancelled || t->ended) return;
  t->cancelled = 1;
  uv_timer_stop(&t->timer);
  /* A running task ends when its resume returns. */
  if (!t->running) task_end(t, 1);
}

void sl_task_drained(sl_task *t) {
  if (!t->waiting) return;
  t->waiting = 0;
  sl_task_resume(t, 0);
}

/* ---- timers ---- */

static void on_timer_closed(uv_handle_t *h) { free(h->data); }

static void on_timer(uv_timer_t *h) {
  sl_timer *tm = h->data;
  int once = uv_timer_get_repeat(h) == 0;
  sl_task *t = sl_task_new(tm->vm, NULL);
  if (t) {
    lua_rawgeti(t->co, LUA_REGISTRYINDEX, tm->fn_ref);
    sl_task_resume(t, 0);
  }
  if (once) sl_timer_stop(tm);
}

sl_timer *sl_timer_start(sl_vm *vm, lua_State *L, double after, double repeat) {
  sl_timer *tm = calloc(1, sizeof *tm);
  if (!tm) return NULL;
  tm->vm = vm;
  tm->fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pushvalue(L, -1);
  tm->ud_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  uv_timer_init(vm->srv->loop, &tm->h);
  tm->h.data = tm;
  tm->next = vm->timers;
  if (vm->timers) vm->timers->prev = tm;
  vm->timers = tm;
  uint64_t first = (uint64_t)(after * 1000 + 0.5), every = (uint64_t)(repeat * 1000 + 0.5);
  uv_timer_start(&tm->h, on_timer, first, repeat > 0 ? (every ? every : 1) : 0);
  return tm;
}

void sl_timer_stop(sl_timer *tm) {
  if (tm->stopped) return;
  tm->stopped = 1;
  sl_vm *vm = tm->vm;
  if (tm->prev) tm->prev->next = tm->next;
  else vm->timers = tm->next;
  if (tm->next) tm->next->prev = tm->prev;
  luaL_unref(vm->L, LUA_REGISTRYINDEX, tm->fn_ref);
  /* The handle stays valid for Lua (a stopped timer) once it no longer points here. */
  lua_rawgeti(vm->L, LUA_REGISTRYINDEX, tm->ud_ref);
  *(sl_timer **)lua_touserdata(vm->L, -1) = NULL;
  lua_pop(vm->L, 1);
  luaL_unref(vm->L, LUA_REGISTRYINDEX, tm->ud_ref);
  uv_close((uv_handle_t *)&tm->h, on_timer_closed);
  sl_vm_maybe_close(vm);
}
