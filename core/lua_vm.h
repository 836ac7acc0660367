/* lua_vm: one Lua state: loading the script with the sluice library on the
 * path, dispatching requests into handler tasks, connection handles and their
 * close hooks, and protected calls that log a traceback; it fills in the
 * server's hooks for the connections (sl_vm_bind). Uses lua_api, sched, conn
 * and server. */
#ifndef SL_LUA_VM_H
#define SL_LUA_VM_H
#include <lua.h>
#include "server.h"

struct sl_server;
struct sl_conn;
struct sl_task;
struct sl_timer;

/* Field names the core reads from and writes into Lua tables for every event
 * or request: kept interned in the registry's array part, so a table's field
 * is a raw get or set with the key at hand (lua_getfield and lua_setfield
 * hash and look up the name each time). */
enum sl_key {
  SL_K_DATA, SL_K_ID, SL_K_EVENT, SL_K_RETRY,             /* a Message */
  SL_K_METHOD, SL_K_TARGET, SL_K_QUERY_STRING, SL_K_HEADERS, SL_K_BODY, SL_K_REMOTE_ADDR, SL_K_HTTP_VERSION, /* a request */
  SL_K_STATUS,                                            /* an outbound response (with headers, body) */
  SL_NKEYS
};

typedef struct sl_vm {
  lua_State *L;
  struct sl_server *srv;
  sl_config cfg;           /* what this script configured; the gateway's once it is loaded */
  unsigned users;          /* connections whose Lua objects live in this state */
  int retired;             /* replaced by a reload: closed once its last user is gone */
  int jit;                 /* the script turned LuaJIT's compiler on */
  struct sl_vm *next_retired;
  int dispatch_ref, gone_ref, reloading_ref;
  sl_buf *handover;        /* what the previous state's on_reload gave (lcopy bytes), if anything */
  struct sl_task *tasks;   /* every live task of this state */
  struct sl_timer *timers; /* every running timer of this state */
  struct sl_task *current; /* the task being resumed, if any */
  void *tags[3];           /* the scheduler's tags (sched.h), anchored by tag_refs */
  int tag_refs[3];
  const void *message_mt;  /* the library's Message metatable (anchored in the registry) */
  int key_refs[SL_NKEYS];  /* the field names the core reads and writes (sl_vm_pushkey), anchored */
  char *script;
} sl_vm;

/* A connection's handle in a Lua state: it finds its connection by id, so a
 * handle of a closed connection, or one made in another state, is safe to use. */
typedef struct sl_conn_ud {
  struct sl_server *srv;
  uint64_t id;
} sl_conn_ud;

/* The registry table of every state that holds its handles by connection id (weak values). */
#define SL_HANDLES "sluice.handles"

/* Pushes the field name key (enum sl_key) of vm's state on L (L is vm->L or one of its coroutines). */
static inline void sl_vm_pushkey(const sl_vm *vm, lua_State *L, int key) {
  lua_rawgeti(L, LUA_REGISTRYINDEX, vm->key_refs[key]);
}

/* Loads script into a new state, which takes handover (sluice.previous_state;
 * may be NULL). NULL on failure with err filled (file:line first). */
sl_vm *sl_vm_open(struct sl_server *srv, const char *script, sl_buf *handover, char *err, size_t errlen);
/* Asks the state's sluice.on_reload function for the state to hand over; its
 * bytes, or NULL (none, or it failed: logged). */
sl_buf *sl_vm_handover(sl_vm *vm);
void sl_vm_close(sl_vm *vm);
/* Stops the state's timers and cancels its tasks (shutdown, a failed load). */
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
/* The state no longer needs to hold the connection (a subscription the hub
 * serves alone, a keep-alive connection between requests): its handle may go,
 * and the connection no longer keeps the state alive. */
void sl_vm_conn_release(sl_vm *vm, struct sl_conn *c);
/* The connection is gone: every state that has a handle for it runs its close
 * hooks; the holding state is released. */
void sl_vm_conn_closed(struct sl_server *srv, struct sl_conn *c);
/* Calls the function under nargs arguments on L's top, protected; logs the error and
 * its traceback under what. Leaves nothing on the stack. 0 or -1. */
int sl_vm_pcall(lua_State *L, int nargs, const char *what);
/* Pushes on L (a thread of vm) the table that is c's conn.data in vm, taking it
 * over from the state that holds it (written back to bytes and read anew). */
void sl_vm_data_push(sl_vm *vm, lua_State *L, struct sl_conn *c);
/* Makes the table at idx (or nil: none) c's conn.data, held by vm. */
void sl_vm_data_set(sl_vm *vm, lua_State *L, int idx, struct sl_conn *c);
/* Logs msg with the traceback of co. */
void sl_vm_log_error(lua_State *co, const char *what);
/* Fills in the server's hooks that the connections call the Lua side through. */
void sl_vm_bind(struct sl_server *srv);
/* Shutting down: stops the timers and cancels the tasks of every state. */
void sl_vm_stop_all(struct sl_server *srv);
/* The directory of the sluice Lua library. */
const char *sl_vm_lua_dir(void);

#endif
