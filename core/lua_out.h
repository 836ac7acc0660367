/* lua_out: what scripts reach outside the gateway with: HTTP(S) requests
 * through fetch, and Redis commands on the engine's connection. Each call
 * suspends only its calling task (sched's await) and is resumed from the loop
 * with the answer; a task that ends first (its client left, a shutdown)
 * cancels what it waited for. Part of the Lua side: uses sched, fetch, redis. */
#ifndef SL_LUA_OUT_H
#define SL_LUA_OUT_H
#include <lua.h>

struct sl_vm;
struct sl_server;

/* Adds core.http_request and core.redis_call to the core table on L's top. */
void sl_out_open(lua_State *L, struct sl_vm *vm);
/* Shutdown: every transfer ends (its task was cancelled already) and the handles close. */
void sl_out_stop(struct sl_server *srv);

#endif
