/* server: the gateway-wide state (config, listeners, connection list and
 * registry, the current Lua VM), listening sockets, accept and the connection
 * limit, signals, and the hooks through which the units below the Lua side
 * call up into it. Uses conn (for each accepted client) and hub (pub/sub,
 * which outlives any one script). */
#ifndef SL_SERVER_H
#define SL_SERVER_H
#include <stdint.h>
#include <uv.h>
#include "hub.h"
#include "metrics.h"

struct sl_conn;
struct sl_vm;
struct sl_redis;
struct sl_task;
struct sl_server;
struct sl_sleepers;
struct sl_home;

/* How the units below the Lua side (conn, server) call up into it and into
 * the engine, as libuv and Redis do it: through a small table of functions
 * that the upper units fill in at start-up (sl_vm_bind, sl_redis_bind). The
 * lower units include nothing above them; an empty slot means "nothing to do". */
typedef struct sl_hooks {
  void (*dispatch)(struct sl_conn *c);   /* a request was read: serve it */
  void (*closed)(struct sl_conn *c);     /* it is gone: its close hooks run */
  void (*release)(struct sl_conn *c);    /* between two requests: the Lua side lets go of it */
  int (*drained)(struct sl_conn *c);     /* below its high-water mark: 1 if a task waiting for that went on */
  void (*cancel)(struct sl_task *t);     /* its task must never run again */
  /* Fetch the replay of a held subscriber elsewhere (the engine); 0 or -errno. */
  int (*replay)(struct sl_server *srv, sl_hub_sub *sub, const char *last_id, size_t len);
  void (*replay_cancel)(struct sl_server *srv, sl_hub_sub *sub);
  void (*stop)(struct sl_server *srv);   /* shutting down: timers, watchers, the engine */
  void (*drain_done)(struct sl_server *srv); /* every connection is gone: outbound transfers end */
  void (*trim)(struct sl_server *srv);   /* a crowd left: give memory back */
  void (*id_block)(struct sl_server *srv); /* a block of ids was taken into use: claim a spare one */
} sl_hooks;

/* A span in seconds as loop milliseconds, rounded: 0 for zero, negatives and
 * NaN (callers refuse NaN before), SL_NEVER for spans past any real uptime
 * (math.huge included), which callers treat as "never". */
#define SL_NEVER UINT64_MAX
static inline uint64_t sl_secs_ms(double secs) {
  if (!(secs > 0)) return 0;
  if (secs >= 1e15) return SL_NEVER;
  return (uint64_t)(secs * 1000 + 0.5);
}

typedef struct sl_config {
  double heartbeat;        /* seconds between ':' comments on idle streams, 0 = off */
  long long retry;         /* ms sent as retry: at stream start, -1 = none */
  double history;          /* events kept per channel */
  double history_ttl;      /* seconds an event stays in history */
  double gateway_history;  /* events kept across all channels (replay = "gateway"), 0 = none */
  size_t queue_limit;      /* bytes queued for one connection before it counts as slow */
  unsigned max_connections;
  size_t max_header;
  size_t max_body;
  double header_timeout;   /* seconds to send a complete request (head and body) */
  double watchdog;         /* seconds a script may keep the loop busy, 0 = no limit */
  char redis[512];         /* the engine's URL from the script, "" = none */
  unsigned http_max_concurrent; /* outbound requests in flight at most (sluice.http) */
  unsigned http_max_per_host;
} sl_config;

#define SL_MAX_LISTENERS 16
#define SL_GRACE 5.0 /* seconds the drain at shutdown may take, by default */

typedef struct sl_server {
  uv_loop_t *loop;
  sl_config cfg;
  uv_tcp_t listeners[SL_MAX_LISTENERS];
  int nlisteners;
  uv_signal_t sigint, sigterm;
  struct sl_conn *conns;   /* every live connection, for shutdown */
  unsigned nconns;
  unsigned peak_conns;     /* the most connections since memory was last trimmed */
  uint64_t next_conn_id;   /* the last id given (sl_server_new_id) */
  uint64_t id_block_end;   /* the first id past its block */
  uint32_t spare_block;    /* the block to go on with, 0 if none is claimed yet */
  int id_block_drawn;      /* the block in use was drawn at random (no claim from the engine yet) */
  unsigned char token_key[32]; /* signs conn.token (random, per process) */
  uint64_t refused;        /* connections refused over max_connections */
  uint64_t refused_logged; /* how many of them the log has told of (once a second, as a count) */
  char refused_peer[48];   /* the latest one's address */
  struct sl_vm *vm;        /* the VM new requests go to */
  struct sl_vm *retired;   /* VMs replaced by a reload that still serve connections */
  uint64_t reloads;
  struct sl_reloader *reloader;
  sl_hub hub;
  struct sl_redis *redis;   /* the Redis engine, when --redis (or configure) gave one */
  struct sl_fetch *fetch;   /* outbound HTTP (sluice.http), made on first use */
  struct sl_sleepers *sleepers; /* sleeping tasks by the millisecond they wake at (sched), made on first use */
  sl_hooks hooks;
  sl_metrics metrics;
  uv_timer_t lag;          /* measures how late the loop runs a timer */
  uint64_t lag_due;
  uv_timer_t sweep;        /* expires history */
  uv_timer_t drain;        /* the deadline for writing out what is queued at shutdown */
  uv_prepare_t flusher;    /* writes out each turn's queued bytes before the loop waits */
  struct sl_home **homes;  /* where connections live: [0] the loop thread, then the I/O threads (--workers) */
  unsigned next_home;      /* the home of the next connection, round robin */
  unsigned io_pending;     /* connections on I/O threads not yet gone from them */
  int stopping;
  double grace;            /* seconds the drain at shutdown may take (--grace) */
  struct sl_conn **byid;   /* live connections by id (sl_server_conn) */
  size_t byid_len, byid_cap;
  char **routes;           /* route patterns of connections, each kept once */
  size_t nroutes;
} sl_server;

void sl_config_defaults(sl_config *cfg);
int sl_server_init(sl_server *srv, uv_loop_t *loop);
/* Called as a connection closes: during shutdown, the last one ends the drain. */
void sl_server_drained(sl_server *srv);
/* Frees what outlives the loop (the hub). */
void sl_server_free(sl_server *srv);
/* Listens on "host:port" or "[v6]:port". 0, or a negative libuv code with err filled. */
int sl_server_listen(sl_server *srv, const char *addr, char *err, size_t errlen);
/* Starts the signal handlers that stop the server. */
void sl_server_signals(sl_server *srv);
/* Stops accepting and closes every connection once what is queued for it is
 * written (srv->grace seconds at most; a second SIGTERM/SIGINT ends the wait);
 * the loop then ends. */
void sl_server_stop(sl_server *srv);
/* Connections by id: what a script's handle (from any Lua state) finds its
 * connection by. track: 0 or -1 (out of memory). */
int sl_server_track(sl_server *srv, struct sl_conn *c);
void sl_server_untrack(sl_server *srv, struct sl_conn *c);
struct sl_conn *sl_server_conn(sl_server *srv, uint64_t id);
/* Connection ids: blocks of 2^20 ids; block b gives b * 2^20 + 1 onwards. The
 * engine (Redis) claims blocks from 2^25 up from a counter all nodes share;
 * blocks below 2^25 are drawn at random (no engine, or before it answers).
 * Every id stays below 2^46, exact as a Lua number and printed whole. */
#define SL_ID_BLOCK_BITS 20
#define SL_ID_CLAIMED 0x2000000u /* the first block the engine hands out; 2^25 of them */
/* The next connection id. */
uint64_t sl_server_new_id(sl_server *srv);
/* Goes on from block b at once (0: one drawn at random), and asks for a spare. */
void sl_server_id_block(sl_server *srv, uint32_t b);
/* s kept once for the server's life (route patterns: few); NULL if out of memory. */
const char *sl_server_intern(sl_server *srv, const char *s);

#endif
