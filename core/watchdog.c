/* watchdog: see watchdog.h.
 *
 * The main thread counts when it enters and leaves Lua (sl_watchdog_enter /
 * leave: a store each, no clock read: every resume of every coroutine comes
 * through here). A second thread looks every 50 ms and times an entry from
 * the first look that finds it still running (so it can be up to one look
 * late); when Lua has been running longer than the limit it signals the main
 * thread, whose handler sets
 * a count hook, as luajit's own REPL does on Ctrl-C: the next Lua instruction
 * interpreted raises an error in the script, where its handler's error path
 * reports and ends it. Code the JIT compiled runs no hooks; the Lua states run
 * with the JIT off unless a script turns it on (configure { jit = true }), and
 * a loop that still cannot be stopped after a second period ends the process
 * (status 70) so that its supervisor starts it again, instead of a gateway that
 * hangs for good. The same goes for C work outside any script that the gateway
 * marks (sl_watchdog_enter_c: a Redis message's fan-out), which no hook can
 * reach; its cost is bounded (SECURITY.md), so this is the last line only.
 * The message says what was seen: Lua that did not stop while interpreted
 * (then it was in C called from the script), Lua or C while some state runs
 * with the JIT on, or the marked C work. */
#define _GNU_SOURCE
#include "watchdog.h"
#include <lauxlib.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "log.h"

static struct {
  pthread_t main, thread;
  int started;
  _Atomic uint64_t episode;  /* counts entries into Lua and exits from it: odd while inside */
  _Atomic uint64_t fired;    /* the episode the watchdog fired for */
  _Atomic uint64_t limit_ns; /* 0: off */
  _Atomic int stop;
  lua_State *_Atomic L;      /* the state running now; NULL in marked C work */
  const char *_Atomic what;  /* the marked C work running now */
  _Atomic int jit_states;    /* Lua states with the JIT on */
  int depth;                 /* main thread only: nested entries */
} wd;

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Only the main thread writes the episode. Release stores (plain moves on
 * x86, where sequentially consistent ones are locked instructions): the
 * watchdog thread reads the episode first, with acquire, and then sees what
 * was stored before it. */
static void bump(void) {
  atomic_store_explicit(&wd.episode, atomic_load_explicit(&wd.episode, memory_order_relaxed) + 1,
                        memory_order_release);
}

static int inside(uint64_t episode) { return episode & 1; }

static void enter(lua_State *L, const char *what) {
  if (wd.depth++) return;
  atomic_store_explicit(&wd.L, L, memory_order_relaxed);
  atomic_store_explicit(&wd.what, what, memory_order_relaxed);
  bump();
}

void sl_watchdog_enter(lua_State *L) { enter(L, NULL); }

void sl_watchdog_enter_c(const char *what) { enter(NULL, what); }

void sl_watchdog_jit(int delta) { atomic_fetch_add(&wd.jit_states, delta); }

void sl_watchdog_leave(void) {
  if (--wd.depth) return;
  bump();
}

void sl_watchdog_limit(double seconds) {
  atomic_store(&wd.limit_ns, seconds > 0 && seconds < 1e9 ? (uint64_t)(seconds * 1e9) : 0);
}

static void hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  lua_sethook(L, NULL, 0, 0);
  /* A hook set for an episode that has ended since is not for this code. */
  uint64_t ep = atomic_load(&wd.episode);
  if (atomic_load(&wd.fired) != ep || !inside(ep)) return;
  /* Where the script was (level 0: the function running, the hook adds no frame). */
  luaL_where(L, 0);
  lua_pushfstring(L, "watchdog: the script kept the gateway busy for more than %f s (a loop that never ends?)",
                  (double)atomic_load(&wd.limit_ns) / 1e9);
  lua_concat(L, 2);
  lua_error(L);
}

static void on_signal(int sig) {
  (void)sig;
  lua_State *L = atomic_load(&wd.L);
  if (L && inside(atomic_load(&wd.episode))) lua_sethook(L, hook, LUA_MASKCALL | LUA_MASKRET | LUA_MASKCOUNT, 1);
}

/* Says why the gateway could not be stopped, and exits with status 70. */
static void give_up(uint64_t late_ns) {
  double late = (double)late_ns / 1e9;
  const char *what = atomic_load(&wd.what);
  if (!atomic_load(&wd.L))
    sl_error("watchdog: the gateway has been busy in C work outside any script (%s) for %.1f s past the limit; "
             "C work cannot be interrupted: exiting (status 70) so the service manager restarts the gateway",
             what ? what : "unnamed", late);
  else if (atomic_load(&wd.jit_states) == 0)
    sl_error("watchdog: a script is still busy %.1f s after it was told to stop, in C work it called (the JIT is "
             "off, so no Lua loop escapes the watchdog): C work cannot be interrupted: exiting (status 70) so the "
             "service manager restarts the gateway",
             late);
  else
    sl_error("watchdog: a script is still busy %.1f s after it was told to stop: either it loops in code the JIT "
             "compiled or it is in C work it called, neither of which can be interrupted; exiting (status 70) so "
             "the service manager restarts the gateway (leave configure { jit } off to make every Lua loop "
             "stoppable)",
             late);
  _exit(70);
}

static void *run(void *arg) {
  (void)arg;
  uint64_t fired_at = 0, seen = 0, since = 0; /* seen: the episode timed from since */
  while (!atomic_load(&wd.stop)) {
    usleep(50000);
    uint64_t ep = atomic_load_explicit(&wd.episode, memory_order_acquire);
    uint64_t limit = atomic_load(&wd.limit_ns);
    if (!inside(ep) || !limit) continue;
    uint64_t now = now_ns();
    if (ep != seen) {
      seen = ep;
      since = now;
      continue;
    }
    if (now - since <= limit) continue;
    if (atomic_load(&wd.fired) != ep) {
      atomic_store(&wd.fired, ep);
      fired_at = now;
      /* Marked C work has no hook to set: it gets the second period too. */
      if (atomic_load(&wd.L)) pthread_kill(wd.main, SL_WATCHDOG_SIGNAL);
    } else if (now - fired_at > limit + 1000000000u) {
      give_up(now - since - limit);
    }
  }
  return NULL;
}

int sl_watchdog_start(double seconds) {
  sl_watchdog_limit(seconds);
  wd.main = pthread_self();
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SL_WATCHDOG_SIGNAL, &sa, NULL)) return -1;
  /* The thread must not take the signals the loop handles. */
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &old);
  int r = pthread_create(&wd.thread, NULL, run, NULL);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (r) return -1;
  wd.started = 1;
  return 0;
}

void sl_watchdog_stop(void) {
  if (!wd.started) return;
  atomic_store(&wd.stop, 1);
  pthread_join(wd.thread, NULL);
  wd.started = 0;
}
