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
struct sl_server;
struct sl_wake;

/* Something a task owns that must go when the task ends (an outbound
 * stream): release runs then, unless it was dropped before. */
typedef struct sl_owned {
  struct sl_owned *next, **pprev;
  void (*release)(struct sl_owned *o);
} sl_owned;

struct sl_task;

/* A stream whose generator coroutine the scheduler steps itself
 * (sl_task_drive): what it does with what the generator gives. */
typedef struct sl_drive {
  /* The generator gave the value on co's top (yielded, or returned last): 0 go
   * on, 1 its connection's queue is full, -1 the stream is over (closed), -2
   * the value cannot be sent (the error message replaces it on co's top). */
  int (*value)(struct sl_task *t, lua_State *co);
  /* The stream ends: the generator returned or gave nil (failed 0), or it
   * raised (failed 1; the error on co's top, co is the generator). */
  void (*done)(struct sl_task *t, lua_State *co, int failed);
} sl_drive;

typedef struct sl_task {
  /* What a sleeper's wake-up and a generator's step read, first (64 bytes). */
  struct sl_vm *vm;
  struct sl_conn *conn;      /* the connection the task serves, NULL once it is gone */
  lua_State *co;
  struct sl_task *wnext, *wprev; /* the other sleepers that wake in the same millisecond */
  struct sl_wake *wake;      /* the millisecond it sleeps until, if it sleeps */
  const sl_drive *drive;     /* set by sl_task_drive: the generator the task steps once its coroutine returns */
  int co_ref;
  unsigned running : 1, cancelled : 1, waiting : 1, ended : 1, awaiting : 1, driving : 1;
  struct sl_task *prev, *next; /* the VM's task list */
  void **await_slot;         /* where a pending reply (sl_task_current) points at this task */
  void (*await_cancel)(void **slot); /* runs if the task ends while the slot points at it */
  sl_owned *owned;           /* released when it ends */
  const char *label;         /* the route, for the log (kept for the server's life) */
  int gen_ref;               /* the generator coroutine, until the task steps it */
  uv_timer_t timer;          /* wakes a sleep of its own, a poke, a wait that found room */
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
/* The running task t hands its stream to the generator coroutine at L's idx:
 * once t's own coroutine returns (dropped then), the scheduler resumes the
 * generator directly, sends what it yields through drive->value and handles
 * its sleeps and waits, with no Lua loop between; label names the route in
 * the log. 0, or -1 (not a task that can: the caller steps it itself). */
int sl_task_drive(sl_task *t, lua_State *L, int idx, const sl_drive *drive, const char *label);
/* The connection left: the coroutine is never resumed again. */
void sl_task_cancel(sl_task *t);
/* The connection's queue went below its high-water mark. */
void sl_task_drained(sl_task *t);

/* Shutting down: the sleepers' timer closes (tasks that sleep after it use one of their own). */
void sl_sched_close(struct sl_server *srv);

/* Starts a timer for the function on L's top (popped) and the handle below it (left). */
sl_timer *sl_timer_start(struct sl_vm *vm, lua_State *L, double after, double repeat);
/* Stops the timer; its memory and references go in the close callback. Safe to call twice. */
void sl_timer_stop(sl_timer *t);

#endif
