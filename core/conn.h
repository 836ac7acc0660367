/* conn: one client connection: the read path into the HTTP parser, the write
 * queue of refcounted buffers, the header timeout / heartbeat timer, and the one
 * close path. Uses http (parsing, heads), buf, hub (its subscription), io (the
 * homes and their messages) and server (config, the connection registry); it
 * calls up into the Lua side and the engine only through the server's hooks
 * (dispatch, close hooks, tasks).
 *
 * A connection has two halves. Its I/O half (socket, parser, pipelined bytes,
 * write queue, timers) belongs to its home: the loop thread, or with --workers
 * one of the I/O threads. Its Lua half (state, handler task, subscription,
 * handle, conn.data, what the access line needs) belongs to the loop thread.
 * The functions below are the Lua half's: they run on the loop thread only and
 * reach a connection on another home by message. A request is handed over
 * whole: the home parses it and stops; the loop thread owns it (req, parser)
 * until it answers and lets the home read the next one. */
#ifndef SL_CONN_H
#define SL_CONN_H
#include <llhttp.h>
#include <stdint.h>
#include <sys/types.h>
#include <uv.h>
#include "buf.h"
#include "http.h"
#include "hub.h"
#include "io.h"

struct sl_server;
struct sl_task;
struct sl_vm;

enum sl_conn_state {
  SL_CS_HEAD,      /* reading a request */
  SL_CS_BUSY,      /* a handler runs; no response yet */
  SL_CS_RESPONDED, /* a plain response is queued; the next request waits for the handler to end */
  SL_CS_STREAM     /* an event stream (or raw connection): no more requests on it */
};

/* What a streaming connection was started for (sluice.connections filters on it). */
enum sl_conn_mode { SL_MODE_NONE, SL_MODE_ONCE, SL_MODE_STREAM, SL_MODE_SUBSCRIBE, SL_MODE_RAW };

/* Why a stream ended, for its access line. */
enum sl_conn_end { SL_END_NONE, SL_END_CLIENT, SL_END_HANDLER, SL_END_SCRIPT, SL_END_SLOW, SL_END_ERROR, SL_END_SHUTDOWN,
                   SL_END_EXPIRED };

/* Queued buffers a connection holds in itself (more are allocated). */
#define SL_QIN 1

typedef struct sl_conn {
  /* The Lua half's (loop thread), first: a publish touches only these, far
   * from the lines the home writes, so the two threads do not share lines.
   * What an event sent to it reads and writes is in the first 64 bytes. */
  struct sl_server *srv;
  sl_home *home;             /* where its I/O half lives */
  uint64_t bytes_sent;       /* bytes queued for the current response */
  uint64_t posted;           /* bytes handed to its home by message */
  uint32_t events;           /* events sent on its stream (the access line) */
  int status;                /* status sent for the current request */
  uint8_t mode;              /* enum sl_conn_mode, once it streams */
  uint8_t ended;             /* enum sl_conn_end: why its stream ended, first cause */
  uint8_t state;             /* the Lua half's view */
  uint8_t closing : 1, ending : 1, keepalive : 1, is_head : 1, data_held : 1;
  struct sl_task *task;      /* the handler coroutine, if one runs */
  sl_hub_sub *sub;           /* its subscription, if it subscribed */
  struct sl_vm *vm;          /* the Lua state that holds it (the Lua side's to manage) */
  struct sl_conn *prev, *next;
  uint64_t id;
  uv_timer_t *expiry;        /* ends the stream at opts.expires_at, if set (allocated then) */
  const char *route;         /* the pattern of the route it streams for (interned), NULL if none */
  union {
    char *data;              /* conn.data as lcopy bytes of a table (NULL if none)... */
    struct sl_vm *data_vm;   /* ...or, with data_held, the Lua state that holds it as a table */
  };
  int ud_ref;                /* registry ref of the Lua handle in c->vm, 0 if none */
  uint32_t data_len;
  /* Handed over with a request: the home writes them while it reads one, the
   * Lua half reads them while it serves it. */
  llhttp_t parser;
  sl_req *req;               /* the request being read or served */
  uint64_t started;          /* uv_hrtime() when the current request began */
  char peer[48];             /* set before the home starts */
  /* The home's. First what its write path reads and writes for every event,
   * together (72 bytes, the queue's first entry in it): an event written to
   * an idle subscriber touches these and not the handle's memory (the socket
   * is kept in fd) nor an array of its own. */
  sl_buf **q;                /* write queue; the first `inflight` entries are in a uv_write */
  unsigned qlen, qcap, inflight;
  uint32_t dirty;            /* its place (+1) in its home's list of connections to flush, 0 if none */
  size_t queued;             /* bytes in q not yet written (atomic stores: read by the loop thread) */
  size_t qoff;               /* bytes of q[0] already written */
  size_t hwm;                /* high-water mark for generators and replays (set before the home starts) */
  int fd;                    /* tcp's socket, -1 before it is open and from when it closes */
  uint8_t io_state;          /* SL_CS_HEAD, SL_CS_BUSY (handed over) or SL_CS_STREAM */
  uint8_t io_closing : 1, io_ending : 1, msg_done : 1, reading : 1, wrote : 1, processing : 1,
      was_full : 1;          /* its queue reached hwm since the Lua half last heard it drained (the home's) */
  uint8_t io_why;            /* why the home closed it (enum sl_conn_end), for the loop thread */
  uint8_t want_drain;        /* the loop thread waits to hear it went below hwm (atomic) */
  sl_buf *qin[SL_QIN];       /* q while it holds no more than this (most of the time) */
  size_t inflight_bytes;     /* bytes handed to the uv_write in flight */
  uv_tcp_t tcp;
  uv_timer_t timer;          /* header timeout, then heartbeats */
  uv_write_t wreq;
  char *in;                  /* bytes received while a request is served */
  size_t inlen, incap;
  uint64_t received;         /* bytes of those posted it has taken (atomic stores) */
  uint64_t framed_extra;     /* bytes its framing of OP_EVENTs added to what was posted (atomic stores) */
  int err_status;            /* set by a parser callback that rejects the request */
  uint8_t pending_closes;
  uint8_t crlf_next;         /* after a chunk's data: 1 = its CR, 2 = its LF is owed next (http.c) */
  uint8_t fold;              /* where http.c's scan for folded header lines is */
} sl_conn;

/* Accepts one connection from a listener. */
void sl_conn_accept(struct sl_server *srv, uv_stream_t *listener);

/* Queues b (taking a reference of its own). 0, -EPIPE if the connection is closing,
 * or -ENOBUFS if it would pass queue_limit (the connection is then closed as slow). */
int sl_conn_write(sl_conn *c, sl_buf *b);
/* The same, but written with whatever else is queued for it this turn of the
 * loop (one writev at the end of the turn): for published events. */
int sl_conn_queue(sl_conn *c, sl_buf *b);
/* Queues one event for the connection, framed (sl_sse_event) by its home:
 * with I/O threads, its fields travel to the connection's thread, which frames
 * them. Results as sl_conn_write. */
int sl_conn_event(sl_conn *c, const char *data, size_t len, const char *id, size_t idlen, const char *ev,
                  size_t evlen, long long retry);
/* Queues a plain response with Content-Length; the request is done. */
int sl_conn_respond(sl_conn *c, int status, sl_sb *headers, const char *body, size_t len);
/* Sends an event-stream (or raw) response head, with a retry: line when retry
 * >= 0; starts heartbeats if heartbeat > 0. */
int sl_conn_start_stream(sl_conn *c, int status, sl_sb *headers, double heartbeat, long long retry);
/* Subscribes the connection (already streaming) to n channels, replaying after
 * last_id (from the gateway-wide history when gateway is 1, else from the
 * channels'), with filter (NULL: none; the connection owns it from here, failure included).
 * Returns the number of events replayed, or a negative errno (-EPIPE: it was closed). */
int sl_conn_subscribe(sl_conn *c, const sl_hub_str *chans, int n, const char *last_id, size_t lidlen,
                      sl_hub_filter *filter, int gateway);
/* Adds (add = 1) or removes channels of the connection's subscription. 0,
 * -ENOENT (not subscribed), -EPIPE (closing), or what sl_hub_change returns. */
int sl_conn_change(sl_conn *c, const sl_hub_str *chans, int n, int add);
/* Ends every connection subscribed to the channel (once what is queued is
 * written); returns how many, or -ENOMEM. */
int sl_conn_kick(struct sl_server *srv, const char *name, size_t len);
/* Writes out what was queued during this turn of the loop (see mark_dirty)
 * and hands the turn's messages to the I/O threads. */
void sl_conn_flush_all(struct sl_server *srv);
/* Starts the homes: the loop thread and n-1 I/O threads. 0 or a negative errno. */
int sl_conn_homes(struct sl_server *srv, int n);
/* Stops the I/O threads (once every connection is gone) and frees the homes. */
void sl_conn_stop_homes(struct sl_server *srv);
/* Gives every home the limits of srv->cfg (after a (re)load). */
void sl_conn_config(struct sl_server *srv);
/* Whether the connection has hwm bytes or more waiting to be written; when it
 * is on another home and has, the Lua side hears (hooks.drained) once it is below. */
int sl_conn_backlogged(sl_conn *c);
/* The home's own write (a 100 Continue while parsing): runs on its home. */
int sl_conn_io_write(sl_conn *c, sl_buf *b);
/* Counters the homes keep, summed. */
void sl_conn_totals(struct sl_server *srv, uint64_t *bytes_sent, uint64_t *heartbeats, uint64_t *slow);
/* Ends the stream in ms milliseconds (a token's expiry). 0 or -ENOMEM. */
int sl_conn_expire_in(sl_conn *c, uint64_t ms);
/* Notes why the connection's stream ends (the first cause given is kept). */
void sl_conn_ended(sl_conn *c, int why);
/* Closes once everything queued is written. */
void sl_conn_end(sl_conn *c);
/* The one close path: stops everything, cancels the task; memory goes in the close callbacks. */
void sl_conn_close(sl_conn *c);
/* A handler failed: a 500 if nothing was sent yet, else the stream ends. */
void sl_conn_fail(sl_conn *c);
/* Called by sched when the connection's handler task ended; ok is 0 after an error. */
void sl_conn_task_done(sl_conn *c, int ok);

#endif
