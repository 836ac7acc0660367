/* metrics: the gateway's counters and histograms, kept in C where things
 * happen (a few increments, no locks, no allocation), and their rendering in
 * the Prometheus text format (sluice.metrics_handler) or as a Lua table
 * (sluice.metrics). Uses buf; reads server, hub, conn and lua_vm to render. */
#ifndef SL_METRICS_H
#define SL_METRICS_H
#include <stdint.h>
#include "buf.h"

#define SL_HIST_BUCKETS 12

typedef struct sl_hist {
  uint64_t counts[SL_HIST_BUCKETS + 1]; /* the last: +Inf */
  double sum;
  uint64_t n;
} sl_hist;

/* Where a Lua error happened. */
enum { SL_ERR_HANDLER, SL_ERR_GENERATOR, SL_ERR_TIMER, SL_ERR_ON_CLOSE, SL_ERR_N };
/* Request methods counted by name; the rest are "other". */
enum { SL_M_GET, SL_M_HEAD, SL_M_POST, SL_M_PUT, SL_M_DELETE, SL_M_PATCH, SL_M_OPTIONS, SL_M_OTHER, SL_M_N };

typedef struct sl_metrics {
  uint64_t accepted;
  uint64_t refused_limit;          /* over max_connections */
  uint64_t requests[SL_M_N][6];    /* by method and status class (1xx..5xx; 0 = none) */
  uint64_t events_sent;
  uint64_t reloads_ok, reloads_failed;
  uint64_t lua_errors[SL_ERR_N];
  sl_hist fanout;                  /* seconds from a publish until it was written to every local subscriber */
  uint64_t pub_t0[256];            /* publishes of this loop turn, not yet written out (uv_hrtime) */
  unsigned npub;
  sl_hist loop_lag;                /* seconds a 100 ms timer fired late */
  sl_hist fetch_duration;          /* seconds outbound HTTP requests took (sluice.http) */
} sl_metrics;

void sl_hist_observe(sl_hist *h, double seconds);
/* A publish starts now (t0, uv_hrtime ns); sl_metrics_written ends it once
 * its writes went out at the end of the loop turn. */
void sl_metrics_published(sl_metrics *m, uint64_t t0);
void sl_metrics_written(sl_metrics *m, uint64_t now);
/* The method index for a method name. */
int sl_metrics_method(const char *name);

struct sl_server;
struct lua_State;
/* Appends the Prometheus text exposition of everything to sb. */
void sl_metrics_text(struct sl_server *srv, sl_sb *sb);
/* Pushes the same as a Lua table. */
void sl_metrics_push(struct sl_server *srv, struct lua_State *L);

#endif
