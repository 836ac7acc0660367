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


/* ---- sleepers ----
 * Sleeping tasks are kept by the loop millisecond they wake at: one bucket per
 * millisecond in use (found by a hash of it), buckets in a min-heap, and one
 * libuv timer for the earliest. Ten thousand streams that sleep a second each
 * wake about ten to a millisecond: one heap step and one timer per bucket
 * instead of one of each per sleep. The precision is libuv's, a millisecond. */

typedef struct sl_wake {
  uint64_t due;               /* the loop time it wakes at */
  sl_task *first;             /* its sleepers (t->wnext, t->wprev) */
  struct sl_wake *hnext;      /* the hash chain */
} sl_wake;

typedef struct sl_sleepers {
  uv_timer_t timer;
  uint64_t armed;             /* the due time the timer is set for, 0 if none */
  sl_wake **heap;             /* by due, earliest first */
  unsigned n, cap;
  sl_wake **hash;             /* by due */
  unsigned hcap, hn;
  int closed;
} sl_sleepers;

static void on_sleepers(uv_timer_t *h);

static sl_sleepers *sleepers_of(sl_server *srv) {
  if (srv->sleepers) return srv->sleepers->closed ? NULL : srv->sleepers;
  sl_sleepers *sp = calloc(1, sizeof *sp);
  if (!sp) return NULL;
  sp->hcap = 256;
  sp->hash = calloc(sp->hcap, sizeof *sp->hash);
  if (!sp->hash) {
    free(sp);
    return NULL;
  }
  uv_timer_init(srv->loop, &sp->timer);
  sp->timer.data = srv;
  uv_unref((uv_handle_t *)&sp->timer);
  srv->sleepers = sp;
  return sp;
}

/* The hash slot of due in a table of cap slots (a power of two). */
static unsigned hslot(uint64_t due, unsigned cap) {
  return (unsigned)((due * 0x9E3779B97F4A7C15ull) >> 40) & (cap - 1);
}

static void heap_up(sl_sleepers *sp, unsigned i) {
  sl_wake *w = sp->heap[i];
  while (i > 0 && sp->heap[(i - 1) / 2]->due > w->due) {
    sp->heap[i] = sp->heap[(i - 1) / 2];
    i = (i - 1) / 2;
  }
  sp->heap[i] = w;
}

static sl_wake *heap_pop(sl_sleepers *sp) {
  sl_wake *top = sp->heap[0];
  sl_wake *w = sp->heap[--sp->n];
  unsigned i = 0;
  for (;;) {
    unsigned c = 2 * i + 1;
    if (c >= sp->n) break;
    if (c + 1 < sp->n && sp->heap[c + 1]->due < sp->heap[c]->due) c++;
    if (sp->heap[c]->due >= w->due) break;
    sp->heap[i] = sp->heap[c];
    i = c;
  }
  if (sp->n) sp->heap[i] = w;
  /* out of the hash too */
  sl_wake **pp = &sp->hash[hslot(top->due, sp->hcap)];
  while (*pp != top) pp = &(*pp)->hnext;
  *pp = top->hnext;
  sp->hn--;
  return top;
}

static void rehash(sl_sleepers *sp) {
  unsigned cap = sp->hcap * 2;
  sl_wake **h = calloc(cap, sizeof *h);
  if (!h) return; /* longer chains */
  for (unsigned i = 0; i < sp->hcap; i++) {
    for (sl_wake *w = sp->hash[i], *next; w; w = next) {
      next = w->hnext;
      unsigned k = hslot(w->due, cap);
      w->hnext = h[k];
      h[k] = w;
    }
  }
  free(sp->hash);
  sp->hash = h;
  sp->hcap = cap;
}

/* The bucket for due (made if there is none); NULL if out of memory. */
static sl_wake *bucket(sl_sleepers *sp, uint64_t due) {
  for (sl_wake *w = sp->hash[hslot(due, sp->hcap)]; w; w = w->hnext)
    if (w->due == due) return w;
  if (sp->n == sp->cap) {
    unsigned cap = sp->cap ? sp->cap * 2 : 64;
    sl_wake **h = realloc(sp->heap, cap * sizeof *h);
    if (!h) return NULL;
    sp->heap = h;
    sp->cap = cap;
  }
  sl_wake *w = calloc(1, sizeof *w);
  if (!w) return NULL;
  w->due = due;
  unsigned k = hslot(due, sp->hcap);
  w->hnext = sp->hash[k];
  sp->hash[k] = w;
  if (++sp->hn > sp->hcap / 2) rehash(sp);
  sp->heap[sp->n] = w;
  heap_up(sp, sp->n++);
  return w;
}

static void arm(sl_server *srv, sl_sleepers *sp) {
  if (!sp->n) return;
  uint64_t due = sp->heap[0]->due;
  if (sp->armed && sp->armed <= due) return;
  uint64_t now = uv_now(srv->loop);
  uv_timer_start(&sp->timer, on_sleepers, due > now ? due - now : 0, 0);
  sp->armed = due;
}

static void unsleep(sl_task *t) {
  sl_wake *w = t->wake;
  if (!w) return;
  if (t->wprev) t->wprev->wnext = t->wnext;
  else w->first = t->wnext;
  if (t->wnext) t->wnext->wprev = t->wprev;
  t->wnext = t->wprev = NULL;
  t->wake = NULL;
}

static void on_wake(uv_timer_t *timer);

/* Sleeps the task ms milliseconds (its own timer if the buckets cannot take it). */
static void sleep_ms(sl_task *t, uint64_t ms) {
  sl_server *srv = t->vm->srv;
  sl_sleepers *sp = sleepers_of(srv);
  sl_wake *w = sp ? bucket(sp, uv_now(srv->loop) + ms) : NULL;
  if (!w) {
    uv_timer_start(&t->timer, on_wake, ms, 0);
    return;
  }
  t->wprev = NULL;
  t->wnext = w->first;
  if (w->first) w->first->wprev = t;
  w->first = t;
  t->wake = w;
  arm(srv, sp);
}

static void on_sleepers(uv_timer_t *h) {
  sl_server *srv = h->data;
  sl_sleepers *sp = srv->sleepers;
  sp->armed = 0;
  uint64_t now = uv_now(srv->loop);
  /* Every bucket due now, taken out first: sleepers they wake that sleep
   * again land in new buckets, for a later turn of the loop. */
  sl_wake *due = NULL, **tail = &due;
  while (sp->n && sp->heap[0]->due <= now) {
    sl_wake *w = heap_pop(sp);
    w->hnext = NULL;
    *tail = w;
    tail = &w->hnext;
  }
  while (due) {
    sl_wake *w = due;
    /* one at a time: a resumed task may end another of the same bucket */
    sl_task *t;
    while ((t = w->first)) {
      unsleep(t);
      sl_sched_push_tag(t->vm, t->co, SL_TAG_SLEEP);
      sl_task_resume(t, 1);
    }
    due = w->hnext;
    free(w);
  }
  arm(srv, sp);
}

static sl_sleepers closed_sleepers = {.closed = 1};

static void on_sleepers_closed(uv_handle_t *h) { free(h); }

void sl_sched_close(sl_server *srv) {
  sl_sleepers *sp = srv->sleepers;
  if (!sp || sp->closed) return;
  srv->sleepers = &closed_sleepers;
  while (sp->n) {
    sl_wake *w = heap_pop(sp);
    sl_task *t;
    /* A sleeper left now goes on with a timer of its own. */
    while ((t = w->first)) {
      uint64_t now = uv_now(srv->loop);
      unsleep(t);
      uv_timer_start(&t->timer, on_wake, w->due > now ? w->due - now : 0, 0);
    }
    free(w);
  }
  free(sp->heap);
  free(sp->hash);
  uv_close((uv_handle_t *)&sp->timer, on_sleepers_closed);
}

static void on_task_closed(uv_handle_t *h) { free(h->data); }

/* Releases the coroutine; the task's memory goes in the timer's close callback. */
static void task_end(sl_task *t, int ok) {
  sl_conn *c = t->conn;
  t->ended = 1;
  unsleep(t);
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
  if (t->gen_ref) luaL_unref(t->vm->L, LUA_REGISTRYINDEX, t->gen_ref);
  t->gen_ref = 0;
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

int sl_task_drive(sl_task *t, lua_State *L, int idx, const sl_drive *drive, const char *label) {
  lua_State *gen = lua_tothread(L, idx);
  if (!t || t->drive || t->ended || t->cancelled || !t->conn || !gen || gen == t->co) return -1;
  /* Only a coroutine that can be resumed: started and suspended, or not started yet. */
  if (!(lua_status(gen) == LUA_YIELD || (lua_status(gen) == 0 && lua_gettop(gen) > 0))) return -1;
  lua_pushvalue(L, idx);
  t->gen_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  t->drive = drive;
  t->label = label;
  return 0;
}

/* The task's coroutine returned after sl_task_drive: from now on it steps the generator. */
static void take_generator(sl_task *t) {
  luaL_unref(t->vm->L, LUA_REGISTRYINDEX, t->co_ref);
  t->co_ref = t->gen_ref;
  t->gen_ref = 0;
  lua_rawgeti(t->vm->L, LUA_REGISTRYINDEX, t->co_ref);
  t->co = lua_tothread(t->vm->L, -1);
  lua_pop(t->vm->L, 1);
  t->driving = 1;
}

/* The drive's callbacks run as part of the task: a connection that closes in
 * them cancels the task without ending it under the caller. */
static int drive_value(sl_task *t, lua_State *co) {
  t->running = 1;
  int r = t->drive->value(t, co);
  t->running = 0;
  return r;
}

static void drive_done(sl_task *t, lua_State *co, int failed) {
  t->running = 1;
  t->drive->done(t, co, failed);
  t->running = 0;
}

/* The driven stream ends; r is what its last value gave: 0 sent (or there
 * was none), -1 the connection is gone, -2 it cannot be sent (the error on
 * co's top). */
static void drive_end(sl_task *t, lua_State *co, int r) {
  if (r == -2) {
    drive_done(t, co, 1);
  } else if (r != -1) {
    lua_settop(co, 0);
    drive_done(t, co, 0);
  }
  task_end(t, 1);
}

void sl_task_resume(sl_task *t, int nargs) {
  sl_task *outer = t->vm->current;
  for (;;) {
    lua_State *co = t->co;
    t->vm->current = t;
    t->running = 1;
    sl_watchdog_enter(t->vm->L);
    int rc = lua_resume(co, nargs);
    sl_watchdog_leave();
    t->running = 0;
    t->vm->current = outer;
    nargs = 0;
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
        if (ms != SL_NEVER) sleep_ms(t, ms);
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
      if (t->driving) {
        /* An event, as the library's stream loop would send it; nil ends the stream. */
        lua_settop(co, 1);
        if (lua_isnil(co, 1)) {
          drive_end(t, co, 0);
          return;
        }
        int r = drive_value(t, co);
        if (t->cancelled) {
          task_end(t, 1);
          return;
        }
        if (r < 0) {
          drive_end(t, co, r);
          return;
        }
        lua_settop(co, 0);
        if (r == 0) continue;
        t->waiting = 1; /* the queue is full: resumed when it drains */
        return;
      }
      lua_settop(co, 0);
      lua_pushstring(co, "coroutine.yield called outside a generator (use sluice.sleep to wait)");
      rc = LUA_ERRRUN;
    }
    if (rc != 0) {
      if (t->driving) {
        drive_end(t, co, -2);
        return;
      }
      sl_vm_log_error(co, t->conn ? "handler" : "task");
      t->vm->srv->metrics.lua_errors[t->conn ? SL_ERR_GENERATOR : SL_ERR_TIMER]++;
      task_end(t, 0);
      return;
    }
    if (t->driving) {
      /* The generator returned: what it returned (if not nil) is its last event. */
      lua_settop(co, 1);
      drive_end(t, co, lua_isnil(co, 1) ? 0 : drive_value(t, co));
      return;
    }
    if (t->gen_ref && t->conn) {
      lua_settop(co, 0);
      take_generator(t);
      continue;
    }
    task_end(t, 1);
    return;
  }
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
  unsleep(t);
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
