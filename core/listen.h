/* listen: the listeners behind sluice.listen: a hub subscriber per loop that
 * queues the events of its channels and wakes the task waiting for them. Uses
 * hub, sched and lua_vm. */
#ifndef SL_LISTEN_H
#define SL_LISTEN_H
#include <lua.h>

struct sl_vm;

/* Adds listen, listen_next and listen_close to the table on L's top. */
void sl_listen_open(lua_State *L, struct sl_vm *vm);

#endif
