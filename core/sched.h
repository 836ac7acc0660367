/* sched: coroutine tasks: one resume path for every Lua coroutine the gateway
 * runs (handlers, generators, raw callbacks), which handles sleeps, waits for
 * queue room, errors and completion. Part of the Lua side with lua_vm (whose
 * states hold the tasks); uses conn below it. */
#ifndef SL_SCHED_H
#define SL_SCHED_H
#include <lua.h>
#include <stdint.h>
#include <uv.h>

struct sl_conn;
struct sl_vm;

/* Something a task owns that must go when the task ends (an outbound
 * stream): release runs then, unless it was dropped before. */
typedef struct sl_owned {
  struct sl_owned *next, **pprev;
  void (*release)(struct sl_owned *o);
} sl_owned;

typedef struct sl_task {
  uv_timer_t timer;          /* wakes a sleep */
  struct sl_vm *vm;
  struct sl_conn *conn;      /* the connection the task serves, NULL once it is gone */
  lua_State *co;
  int co_ref;
  struct sl_task *prev, *next; /* the VM's task list */
  void **await_slot;         /* where a pending reply (sl_task_current) points at this task */
  void (*await_cancel)(void **slot); /* runs if the task ends while the slot points at it */
  sl_owned *owned;           /* released when it ends */
  unsigned running : 1, cancelled : 1, waiting : 1, ended : 1, awaiting : 1;
} sl_task;

/* A timer of sluice.after / sluice.every: each firing runs the function in a task of its own. */
typedef struct sl_timer {
  uv_timer_t h;
  struct sl_vm *vm;
  int fn_ref;                /* the function */
  int ud_ref;                /* the Lua handle, kept while the timer runs */
  struct sl_timer *prev, *next; /* the VM's timer list */
  unsigned stopped : 1;
} sl_timer;

/* What a coroutine yields to ask the scheduler for something: one userdata
 * each per Lua state (core.SLEEP, core.WAIT, core.AWAIT). Turned into text
 * (tostring, ..) they raise: one that reaches a script's own code means a
 * sluice.sleep ran inside a coroutine the script resumes itself. */
enum { SL_TAG_SLEEP, SL_TAG_WAIT, SL_TAG_AWAIT, SL_NTAGS };
/* Makes the state's tags and leaves them on L's top in enum order (3 values). */
void sl_sched_open(struct sl_vm *vm, lua_State *L);
void sl_sched_push_tag(struct sl_vm *vm, lua_State *L, int which);

/* A new task with its coroutine anchored; push the function and its arguments on t->co. */
sl_task *sl_task_new(struct sl_vm *vm, struct sl_conn *c);
void sl_task_resume(sl_task *t, int nargs);
/* The task whose coroutine is running now, if any. A C function that starts
 * something asynchronous for it stores the task in *slot (cleared if the task
 * ends first, or registers another slot) and has the coroutine yield the await
 * tag; sl_task_wake (or sl_task_poke) then resumes it. */
sl_task *sl_task_current(struct sl_vm *vm, void **slot);
/* The same, and cancel(slot) runs if the task ends (its client left, a
 * shutdown, an error) while the slot still points at it: the reply it waited
 * for is not wanted any more, so whatever brings it can stop. */
sl_task *sl_task_current_cancel(struct sl_vm *vm, void **slot, void (*cancel)(void **slot));
/* Resumes an awaiting task with the nargs values pushed on t->co; a task that
 * is not awaiting (it was not yielded to the scheduler) just drops them. */
void sl_task_wake(sl_task *t, int nargs);
/* Something an awaiting task waits for arrived: it is resumed (with nothing)
 * from the loop soon. A task that is not awaiting is left alone. */
void sl_task_poke(sl_task *t);
/* t owns o from now on (o->release set); sl_owned_drop lets go of it. */
void sl_task_own(sl_task *t, sl_owned *o);
void sl_owned_drop(sl_owned *o);
/* The connection left: the coroutine is never resumed again. */
void sl_task_cancel(sl_task *t);
/* The connection's queue went below its high-water mark. */
void sl_task_drained(sl_task *t);

/* Starts a timer for the function on L's top (popped) and the handle below it (left). */
sl_timer *sl_timer_start(struct sl_vm *vm, lua_State *L, double after, double repeat);
/* Stops the timer; its memory and references go in the close callback. Safe to call twice. */
void sl_timer_stop(sl_timer *t);

#endif
