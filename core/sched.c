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
#include "watchdog.h"

static int tag_misused(lua_State *L) {
  return luaL_error(L, "sluice.sleep (or a publish waiting for Redis) ran inside a coroutine the script "
                       "resumes itself, and its pause reached the script instead of the gateway: call it "
                       "in the handler, generator, raw callback or timer body, or yield what that "
                       "coroutine yields on unchanged");
}

void sl_sched_open(sl_vm *vm, lua_State *L) {
  static const char *const names[SL_NTAGS] = {"sluice.SLEEP", "sluice.WAIT", "sluice.AWAIT"};
  for (int i = 0; i < SL_NTAGS; i++) {
    vm->tags[i] = lua_newuserdata(L, 1);
    static const luaL_Reg misuse[] = {
        {"__tostring", tag_misused}, {"__concat", tag_misused}, {"__index", tag_misused}, {NULL, NULL}};
    lua_createtable(L, 0, 4);
    lua_pushstring(L, names[i]);
    lua_setfield(L, -2, "__name");
    luaL_setfuncs(L, misuse, 0);
    lua_setmetatable(L, -2);
    lua_pushvalue(L, -1);
    vm->tag_refs[i] = luaL_ref(L, LUA_REGISTRYINDEX);
  }
}

void sl_sched_push_tag(sl_vm *vm, lua_State *L, int which) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, vm->tag_refs[which]);
}

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
  void **slot = t->await_slot;
  void (*cancel)(void **) = t->await_cancel;
  t->await_slot = NULL;
  t->await_cancel = NULL;
  if (slot) {
    *slot = NULL;
    if (cancel) cancel(slot);
  }
  while (t->owned) {
    sl_owned *o = t->owned;
    sl_owned_drop(o);
    o->release(o);
  }
  luaL_unref(t->vm->L, LUA_REGISTRYINDEX, t->co_ref);
  t->co = NULL;
  uv_close((uv_handle_t *)&t->timer, on_task_closed);
  /* The connection may let go of the state (its last user, after a reload),
   * which would close it: held until this function is done with it. */
  sl_vm *vm = t->vm;
  vm->users++;
  if (c && c->task == t) {
    c->task = NULL;
    sl_conn_task_done(c, ok);
  }
  vm->users--;
  sl_vm_maybe_close(vm);
}

/* A sleep (or a wait that found room) is over: the coroutine gets the sleep tag
 * back, which tells sluice.sleep that the gateway, not the script, resumed it. */
static void on_poked(uv_timer_t *timer);

static void on_wake(uv_timer_t *timer) {
  sl_task *t = timer->data;
  sl_sched_push_tag(t->vm, t->co, SL_TAG_SLEEP);
  sl_task_resume(t, 1);
}

void sl_task_resume(sl_task *t, int nargs) {
  lua_State *co = t->co;
  sl_task *outer = t->vm->current;
  t->vm->current = t;
  t->running = 1;
  sl_watchdog_enter(t->vm->L);
  int rc = lua_resume(co, nargs);
  sl_watchdog_leave();
  t->running = 0;
  t->vm->current = outer;
  if (t->cancelled) {
    task_end(t, 1);
    return;
  }
  if (rc == LUA_YIELD) {
    void *tag = lua_type(co, 1) == LUA_TUSERDATA ? lua_touserdata(co, 1) : NULL;
    void **tags = t->vm->tags;
    if (tag && tag == tags[SL_TAG_SLEEP]) {
      double secs = lua_tonumber(co, 2);
      lua_settop(co, 0);
      uint64_t ms = sl_secs_ms(secs);
      /* A sleep of forever ends only with the connection (or the state). */
      if (ms != SL_NEVER) uv_timer_start(&t->timer, on_wake, ms, 0);
      return;
    }
    if (tag && tag == tags[SL_TAG_WAIT]) {
      lua_settop(co, 0);
      if (t->conn && sl_conn_backlogged(t->conn)) {
        t->waiting = 1;
        return;
      }
      /* Room already: go on from the loop, not from here, to keep the C stack flat. */
      uv_timer_start(&t->timer, on_wake, 0, 0);
      return;
    }
    if (tag && tag == tags[SL_TAG_AWAIT]) {
      /* An optional span: resumed (with nothing) after it if nothing came. */
      uint64_t ms = lua_isnumber(co, 2) ? sl_secs_ms(lua_tonumber(co, 2)) : SL_NEVER;
      lua_settop(co, 0);
      t->awaiting = 1;
      if (ms != SL_NEVER) uv_timer_start(&t->timer, on_poked, ms, 0);
      return;
    }
    lua_settop(co, 0);
    lua_pushstring(co, "coroutine.yield called outside a generator (use sluice.sleep to wait)");
    rc = LUA_ERRRUN;
  }
  if (rc != 0) {
    sl_vm_log_error(co, t->conn ? "handler" : "task");
    t->vm->srv->metrics.lua_errors[t->conn ? SL_ERR_GENERATOR : SL_ERR_TIMER]++;
    task_end(t, 0);
    return;
  }
  task_end(t, 1);
}

/* An awaited thing happened (or the wait timed out): resume with nothing. */
static void on_poked(uv_timer_t *timer) {
  sl_task *t = timer->data;
  if (!t->awaiting || t->running) return;
  t->awaiting = 0;
  /* The slot stays: a listener keeps pointing at its reader until the reader
   * ends or waits on something else. */
  sl_task_resume(t, 0);
}

void sl_task_poke(sl_task *t) {
  if (!t->awaiting || t->ended || t->cancelled) return;
  /* From the loop, not from here: the caller may be in the middle of a publish. */
  uv_timer_start(&t->timer, on_poked, 0, 0);
}

sl_task *sl_task_current_cancel(sl_vm *vm, void **slot, void (*cancel)(void **slot)) {
  sl_task *t = vm->current;
  if (!t || t->ended || t->cancelled) return NULL;
  /* One slot at a time points at a task: the one it waited on before lets go. */
  if (t->await_slot && t->await_slot != slot) *t->await_slot = NULL;
  t->await_slot = slot;
  t->await_cancel = cancel;
  *slot = t;
  return t;
}

sl_task *sl_task_current(sl_vm *vm, void **slot) { return sl_task_current_cancel(vm, slot, NULL); }

void sl_task_own(sl_task *t, sl_owned *o) {
  o->next = t->owned;
  if (o->next) o->next->pprev = &o->next;
  o->pprev = &t->owned;
  t->owned = o;
}

void sl_owned_drop(sl_owned *o) {
  if (!o->pprev) return;
  *o->pprev = o->next;
  if (o->next) o->next->pprev = o->pprev;
  o->next = NULL;
  o->pprev = NULL;
}

void sl_task_wake(sl_task *t, int nargs) {
  t->await_slot = NULL;
  t->await_cancel = NULL;
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
  uint64_t first = sl_secs_ms(after), every = sl_secs_ms(repeat);
  /* A first firing of never: the timer exists (active, stoppable) but never runs.
   * A period of never after a finite first firing makes it fire once. */
  if (first != SL_NEVER)
    uv_timer_start(&tm->h, on_timer, first, repeat > 0 && every != SL_NEVER ? (every ? every : 1) : 0);
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
