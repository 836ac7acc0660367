/* watchdog: stops a script that keeps the event loop busy too long (a handler,
 * generator, timer or hook that never yields), from a thread of its own that
 * watches when Lua was entered. Uses log. */
#ifndef SL_WATCHDOG_H
#define SL_WATCHDOG_H
#include <lua.h>
#include <signal.h>

/* The signal the watchdog thread sends the main thread to set its hook. */
#define SL_WATCHDOG_SIGNAL (SIGRTMIN + 2)

/* Starts the thread with a limit in seconds (0 = off). 0 or -1. */
int sl_watchdog_start(double seconds);
void sl_watchdog_stop(void);
/* Changes the limit (configure { watchdog }). */
void sl_watchdog_limit(double seconds);
/* The main thread runs Lua code of L from now / no longer (nesting allowed). */
void sl_watchdog_enter(lua_State *L);
/* The main thread does C work outside Lua that a client's input could make
 * long (what names it in the log; a static string); sl_watchdog_leave ends it. */
void sl_watchdog_enter_c(const char *what);
void sl_watchdog_leave(void);
/* A Lua state turned the JIT on (+1) or off, or closed with it on (-1). */
void sl_watchdog_jit(int delta);

#endif
