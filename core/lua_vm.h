/* lua_vm: one Lua state: loading the script with the sluice library on the
 * path, dispatching requests into handler tasks, connection handles and their
 * close hooks, and protected calls that log a traceback. Uses lua_api and sched. */
#ifndef SL_LUA_VM_H
#define SL_LUA_VM_H
#include <lua.h>
#include "server.h"

struct sl_server;
struct sl_conn;
struct sl_task;
struct sl_timer;

typedef struct sl_vm {
  lua_State *L;
  struct sl_server *srv;
  sl_config cfg;           /* what this script configured; the gateway's once it is loaded */
  unsigned users;          /* connections whose Lua objects live in this state */
  int retired;             /* replaced by a reload: closed once its last user is gone */
  struct sl_vm *next_retired;
  int dispatch_ref, gone_ref;
  struct sl_task *tasks;   /* every live task of this state */
  struct sl_timer *timers; /* every running timer of this state */
  struct sl_task *current; /* the task being resumed, if any */
  void *tags[3];           /* the scheduler's tags (sched.h), anchored by tag_refs */
  int tag_refs[3];
  char *script;
} sl_vm;

typedef struct sl_conn_ud {
  struct sl_conn *c;       /* NULL once the connection is gone */
  double id;
} sl_conn_ud;

/* Loads script into a new state. NULL on failure with err filled (file:line first). */
sl_vm *sl_vm_open(struct sl_server *srv, const char *script, char *err, size_t errlen);
void sl_vm_close(sl_vm *vm);
/* Stops the state's timers and cancels its tasks (shutdown, or the state was replaced). */
void sl_vm_stop(sl_vm *vm);
/* Makes vm the one new requests go to: applies its configuration, stops the
 * timers of the state it replaces and retires that state. */
void sl_vm_activate(sl_vm *vm);
/* Closes a retired state if nobody uses it any more. */
void sl_vm_maybe_close(sl_vm *vm);
/* Serves the request that c has read: runs the dispatcher in a new task. */
void sl_vm_dispatch(sl_vm *vm, struct sl_conn *c);
/* Pushes c's handle on L (made on first use). */
void sl_vm_push_conn(sl_vm *vm, lua_State *L, struct sl_conn *c);
/* The connection is gone, or no longer needs its handle: run its close hooks,
 * release the handle and the connection's hold on the state. */
void sl_vm_conn_gone(sl_vm *vm, struct sl_conn *c);
/* Calls the function under nargs arguments on L's top, protected; logs the error and
 * its traceback under what. Leaves nothing on the stack. 0 or -1. */
int sl_vm_pcall(lua_State *L, int nargs, const char *what);
/* Logs msg with the traceback of co. */
void sl_vm_log_error(lua_State *co, const char *what);
/* The directory of the sluice Lua library. */
const char *sl_vm_lua_dir(void);

#endif
