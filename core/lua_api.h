/* lua_api: the C functions of the `sluice.core` module that lua/sluice builds
 * on: responses, stream heads, event framing and writes, close, hooks, config,
 * logging, time. Uses conn, sse, sched and lua_vm. */
#ifndef SL_LUA_API_H
#define SL_LUA_API_H
#include <lua.h>

struct sl_vm;

#define SL_CONN_MT "sluice.conn"
#define SL_TIMER_MT "sluice.timer"

/* Registers sluice.core in package.preload for vm's state. */
void sl_api_open(lua_State *L, struct sl_vm *vm, const char *script_dir);

#endif
