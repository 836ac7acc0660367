/* io: the homes of connections. Home 0 is the loop thread (where Lua runs);
 * with --workers N there are N-1 more, each an I/O thread with its own libuv
 * loop. A connection lives on one home for its life: its socket, reads, HTTP
 * parsing, write queue and timers are that home's alone. Homes talk only by
 * messages: each home collects what it has for another during one turn of its
 * loop in an outbox and hands the batch over at the end of the turn (one lock
 * and one wake-up per home and turn, however many connections it concerns),
 * so nothing is locked per connection or per event. Messages between two
 * homes arrive in the order they were posted. Uses nothing but libuv; what a
 * message means is the handler's (conn) business. */
#ifndef SL_IO_H
#define SL_IO_H
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct sl_conn;
struct sl_server;

typedef struct sl_msg {
  struct sl_conn *c;
  void *p;
  uint64_t n;
  uint32_t op;
} sl_msg;

typedef struct sl_mbox {
  sl_msg *v;
  size_t n, cap;
} sl_mbox;

/* Limits a home reads while parsing and queueing: its own copy, so a reload
 * that changes the configuration never races with a read. */
typedef struct sl_io_limits {
  size_t max_header, max_body, queue_limit;
  double header_timeout;
} sl_io_limits;

typedef struct sl_home sl_home;
/* Runs on the receiving home, once per message, in posting order. */
typedef void (*sl_io_handler)(sl_home *h, sl_msg *m);
/* Runs on a home at the end of each turn of its loop (before the batch goes out). */
typedef void (*sl_io_turn)(sl_home *h);

struct sl_home {
  struct sl_server *srv;
  uv_loop_t *loop;
  int index;
  int nhomes;
  sl_home **all;            /* every home, by index (shared, read-only once started) */
  sl_io_handler handle;
  sl_io_turn turn;
  uv_thread_t thread;
  uv_async_t wake;          /* set when another home hands this one a batch */
  uv_prepare_t end_turn;    /* threads only: the turn's writes, then the outboxes */
  uv_mutex_t lock;          /* guards inbox */
  sl_mbox inbox;
  sl_mbox *out;             /* out[i]: what waits for home i until the end of the turn */
  struct sl_conn **dirty;   /* its connections with bytes queued this turn (NULL: closed since) */
  size_t ndirty, capdirty;
  sl_io_limits lim;
  void *fanout;             /* the handler's: the buffer of the fan-out being handled */
  const char *parse_end;    /* the end of the bytes its parser is given now (http.c) */
  /* Counters, written by this home only (atomic stores), read by the metrics. */
  uint64_t bytes_sent, heartbeats, slow_disconnects;
  int started, stopping;
  char readbuf[65536];      /* each read is parsed before the next */
};

/* Sets up home 0 on loop and n-1 I/O threads. 0 or a negative errno. */
int sl_io_start(struct sl_server *srv, uv_loop_t *loop, int n, sl_io_handler handle, sl_io_turn turn, sl_home ***out);
/* Queues m for home `to` (delivered at the end of from's turn). -ENOMEM if it cannot. */
int sl_io_post(sl_home *from, int to, sl_msg m);
/* The message last queued for home `to` in this turn, NULL if none. */
static inline sl_msg *sl_io_last(sl_home *from, int to) {
  sl_mbox *o = &from->out[to];
  return o->n ? &o->v[o->n - 1] : NULL;
}
/* Hands every waiting outbox of from to its home now. */
void sl_io_flush(sl_home *from);
/* The end of a turn of h's loop: its batches out, its turn hook, then what
 * that gave rise to (threads run it themselves; home 0's loop calls it). */
void sl_io_end_turn(sl_home *h);
/* Stops the threads once what was posted to them is handled, joins them and
 * frees every home (home 0's loop handles must be closed first: sl_io_close). */
void sl_io_stop(sl_home **all);
/* Closes home 0's handles (its loop can then end). */
void sl_io_close(sl_home **all);
/* Adds a counter written by its home. */
static inline void sl_io_count(uint64_t *counter, uint64_t n) {
  __atomic_store_n(counter, *counter + n, __ATOMIC_RELAXED);
}
static inline uint64_t sl_io_read(const uint64_t *counter) { return __atomic_load_n(counter, __ATOMIC_RELAXED); }

#endif
