/* metrics: see metrics.h. */
#include "metrics.h"
#include <lauxlib.h>
#include <lua.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include "conn.h"
#include "hub.h"
#include "lua_vm.h"
#include "fetch.h"
#include "redis.h"
#include "server.h"

static const double bounds[SL_HIST_BUCKETS] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                               0.01,   0.025,   0.05,   0.1,   0.5,    1};

void sl_hist_observe(sl_hist *h, double s) {
  int i = 0;
  while (i < SL_HIST_BUCKETS && s > bounds[i]) i++;
  h->counts[i]++;
  h->sum += s;
  h->n++;
}

void sl_metrics_published(sl_metrics *m, uint64_t t0) {
  /* Past 256 in one turn, the newest stands for the rest (they end together). */
  if (m->npub < sizeof m->pub_t0 / sizeof *m->pub_t0) m->pub_t0[m->npub++] = t0;
  else m->pub_t0[m->npub - 1] = t0;
}

void sl_metrics_written(sl_metrics *m, uint64_t now) {
  for (unsigned i = 0; i < m->npub; i++) sl_hist_observe(&m->fanout, (double)(now - m->pub_t0[i]) / 1e9);
  m->npub = 0;
}

static const char *const method_names[SL_M_N] = {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "other"};

int sl_metrics_method(const char *name) {
  for (int i = 0; i < SL_M_OTHER; i++)
    if (strcmp(name, method_names[i]) == 0) return i;
  return SL_M_OTHER;
}

/* ---- one walk over the samples, for either output ---- */

typedef struct emitter {
  void (*family)(struct emitter *e, const char *name, const char *type, const char *help);
  /* labels: pairs of name and value, NULL-terminated */
  void (*sample)(struct emitter *e, const char *name, const char *const *labels, double value);
  sl_sb *sb;
  lua_State *L;
} emitter;

static void one(emitter *e, const char *name, const char *type, const char *help, double v) {
  e->family(e, name, type, help);
  e->sample(e, name, NULL, v);
}

static void hist(emitter *e, const char *name, const char *help, const sl_hist *h) {
  char bname[96], le[32];
  e->family(e, name, "histogram", help);
  snprintf(bname, sizeof bname, "%s_bucket", name);
  uint64_t cum = 0;
  for (int i = 0; i <= SL_HIST_BUCKETS; i++) {
    cum += h->counts[i];
    if (i < SL_HIST_BUCKETS) snprintf(le, sizeof le, "%g", bounds[i]);
    else snprintf(le, sizeof le, "+Inf");
    const char *labels[] = {"le", le, NULL};
    e->sample(e, bname, labels, (double)cum);
  }
  snprintf(bname, sizeof bname, "%s_sum", name);
  e->sample(e, bname, NULL, h->sum);
  snprintf(bname, sizeof bname, "%s_count", name);
  e->sample(e, bname, NULL, (double)h->n);
}

/* The channels with the most subscribers (at most 10, most first). */
static int top_channels(sl_hub *hub, sl_hub_chan **top) {
  int n = 0;
  for (size_t b = 0; b < hub->nbuckets; b++) {
    for (sl_hub_chan *c = hub->buckets[b]; c; c = c->hnext) {
      if (!c->nsubs) continue;
      int i = n < 10 ? n++ : 10;
      if (i == 10 && c->nsubs <= top[9]->nsubs) continue;
      if (i == 10) i = 9;
      while (i > 0 && top[i - 1]->nsubs < c->nsubs) {
        top[i] = top[i - 1];
        i--;
      }
      top[i] = c;
    }
  }
  return n;
}

static void walk(sl_server *srv, emitter *e) {
  sl_metrics *m = &srv->metrics;
  e->family(e, "sluice_build_info", "gauge", "The gateway's version.");
  const char *v[] = {"version", SLUICE_VERSION, NULL};
  e->sample(e, "sluice_build_info", v, 1);

  one(e, "sluice_connections", "gauge", "Open client connections.", srv->nconns);
  one(e, "sluice_connections_accepted_total", "counter", "Client connections accepted.", (double)m->accepted);
  e->family(e, "sluice_connections_refused_total", "counter", "Client connections refused, by reason.");
  const char *rl[] = {"reason", "max_connections", NULL};
  e->sample(e, "sluice_connections_refused_total", rl, (double)srv->refused);

  e->family(e, "sluice_requests_total", "counter", "Requests served, by method and status class.");
  static const char *const classes[] = {"none", "1xx", "2xx", "3xx", "4xx", "5xx"};
  for (int i = 0; i < SL_M_N; i++)
    for (int k = 0; k < 6; k++) {
      if (!m->requests[i][k]) continue;
      const char *l[] = {"method", method_names[i], "code", classes[k], NULL};
      e->sample(e, "sluice_requests_total", l, (double)m->requests[i][k]);
    }

  double modes[5] = {0};
  for (sl_conn *c = srv->conns; c; c = c->next)
    if (c->state == SL_CS_STREAM && c->mode < 5) modes[c->mode]++;
  e->family(e, "sluice_streams", "gauge", "Open event streams, by mode.");
  static const char *const mode_names[] = {"none", "once", "stream", "subscribe", "raw"};
  for (int i = 1; i < 5; i++) {
    const char *l[] = {"mode", mode_names[i], NULL};
    e->sample(e, "sluice_streams", l, modes[i]);
  }

  one(e, "sluice_events_sent_total", "counter", "Events queued to clients (published and sent).",
      (double)m->events_sent);
  uint64_t sent, beats, slow;
  sl_conn_totals(srv, &sent, &beats, &slow);
  one(e, "sluice_sent_bytes_total", "counter", "Bytes written to client sockets.", (double)sent);
  one(e, "sluice_heartbeats_total", "counter", "Heartbeat comments sent.", (double)beats);
  one(e, "sluice_published_total", "counter", "Events published to the hub (from this node or, with Redis, read from it).",
      (double)srv->hub.published);
  one(e, "sluice_delivered_total", "counter", "Events given to subscribers.", (double)srv->hub.delivered);
  one(e, "sluice_replays_total", "counter", "Replays after Last-Event-ID.", (double)srv->hub.replays);
  one(e, "sluice_replayed_events_total", "counter", "Events given in replays.", (double)srv->hub.replayed);
  one(e, "sluice_slow_disconnects_total", "counter", "Clients disconnected as slow consumers (over queue_limit).",
      (double)slow);

  e->family(e, "sluice_reloads_total", "counter", "Script reloads, by result.");
  const char *ok[] = {"result", "ok", NULL}, *failed[] = {"result", "failed", NULL};
  e->sample(e, "sluice_reloads_total", ok, (double)m->reloads_ok);
  e->sample(e, "sluice_reloads_total", failed, (double)m->reloads_failed);

  e->family(e, "sluice_lua_errors_total", "counter", "Lua errors logged, by where they happened.");
  static const char *const wheres[SL_ERR_N] = {"handler", "generator", "timer", "on_close"};
  for (int i = 0; i < SL_ERR_N; i++) {
    const char *l[] = {"where", wheres[i], NULL};
    e->sample(e, "sluice_lua_errors_total", l, (double)m->lua_errors[i]);
  }

  e->family(e, "sluice_lua_memory_bytes", "gauge", "Memory of each live Lua state (current: the newest load).");
  int k = 0;
  for (sl_vm *vm = srv->vm; vm; vm = vm == srv->vm ? srv->retired : vm->next_retired, k++) {
    char name[32];
    if (k == 0) snprintf(name, sizeof name, "current");
    else snprintf(name, sizeof name, "previous-%d", k);
    const char *l[] = {"state", name, NULL};
    e->sample(e, "sluice_lua_memory_bytes", l,
              (double)lua_gc(vm->L, LUA_GCCOUNT, 0) * 1024 + lua_gc(vm->L, LUA_GCCOUNTB, 0));
  }

  one(e, "sluice_channels", "gauge", "Channels with subscribers or history.", (double)srv->hub.nchans);
  one(e, "sluice_subscribers", "gauge", "Subscriptions (connections and listeners).", (double)srv->hub.nsubs);
  sl_hub_chan *top[10];
  int nt = top_channels(&srv->hub, top);
  e->family(e, "sluice_channel_subscribers", "gauge", "Subscribers of the ten largest channels.");
  for (int i = 0; i < nt; i++) {
    char name[256];
    snprintf(name, sizeof name, "%.*s", (int)top[i]->namelen, top[i]->name);
    const char *l[] = {"channel", name, NULL};
    e->sample(e, "sluice_channel_subscribers", l, top[i]->nsubs);
  }

  hist(e, "sluice_fanout_seconds", "Time from a publish until it was written to every local subscriber.", &m->fanout);
  hist(e, "sluice_loop_lag_seconds", "How late a 100 ms timer fires: time the loop was kept busy.", &m->loop_lag);

  if (srv->fetch) {
    const sl_fetch_stats *fs = sl_fetch_get_stats(srv->fetch);
    e->family(e, "sluice_http_client_requests_total", "counter",
              "Outbound HTTP requests done (sluice.http), by status class (none: no response).");
    for (int k = 0; k < 6; k++) {
      const char *l[] = {"code", classes[k], NULL};
      e->sample(e, "sluice_http_client_requests_total", l, (double)fs->done[k]);
    }
    one(e, "sluice_http_client_in_flight", "gauge", "Outbound HTTP requests in flight.", fs->in_flight);
    one(e, "sluice_http_client_received_bytes_total", "counter", "Response body bytes received.",
        (double)fs->bytes_in);
    one(e, "sluice_http_client_sent_bytes_total", "counter", "Request body bytes sent.", (double)fs->bytes_out);
    hist(e, "sluice_http_client_duration_seconds", "How long outbound HTTP requests took.", &m->fetch_duration);
  }

  if (srv->redis) {
    sl_redis_stats st;
    sl_redis_get_stats(srv->redis, &st);
    one(e, "sluice_redis_connected", "gauge", "Whether the Redis engine can publish now.", st.connected);
    one(e, "sluice_redis_reconnects_total", "counter", "Reconnections to Redis.", (double)st.reconnects);
    one(e, "sluice_redis_received_total", "counter", "Events read from Redis.", (double)st.received);
  }
}

/* ---- the text format ---- */

static void text_family(emitter *e, const char *name, const char *type, const char *help) {
  sl_sb_addf(e->sb, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void text_sample(emitter *e, const char *name, const char *const *labels, double value) {
  sl_sb_adds(e->sb, name);
  if (labels && labels[0]) {
    sl_sb_addc(e->sb, '{');
    for (int i = 0; labels[i]; i += 2) {
      if (i) sl_sb_addc(e->sb, ',');
      sl_sb_adds(e->sb, labels[i]);
      sl_sb_adds(e->sb, "=\"");
      /* Label values are UTF-8 with \\, " and newline escaped; a channel name
       * is whatever a client sent, so other bytes become U+FFFD. */
      for (const unsigned char *p = (const unsigned char *)labels[i + 1]; *p; p++) {
        if (*p >= 0x80) {
          size_t k = sl_utf8_len(p, strlen((const char *)p));
          if (k) sl_sb_add(e->sb, p, k), p += k - 1;
          else sl_sb_adds(e->sb, "\xef\xbf\xbd");
          continue;
        }
        if (*p == '\\' || *p == '"') sl_sb_addc(e->sb, '\\');
        if (*p == '\n') sl_sb_adds(e->sb, "\\n");
        else sl_sb_addc(e->sb, (char)*p);
      }
      sl_sb_addc(e->sb, '"');
    }
    sl_sb_addc(e->sb, '}');
  }
  if (value == floor(value) && fabs(value) < 1e15) sl_sb_addf(e->sb, " %.0f\n", value);
  else sl_sb_addf(e->sb, " %.9g\n", value);
}

void sl_metrics_text(sl_server *srv, sl_sb *sb) {
  emitter e = {text_family, text_sample, sb, NULL};
  walk(srv, &e);
}

/* ---- the Lua table: name -> number, or name -> list of { labels..., value = } ---- */

static void lua_family(emitter *e, const char *name, const char *type, const char *help) {
  (void)e, (void)name, (void)type, (void)help;
}

static void lua_sample(emitter *e, const char *name, const char *const *labels, double value) {
  lua_State *L = e->L;
  if (!labels || !labels[0]) {
    lua_pushnumber(L, value);
    lua_setfield(L, -2, name);
    return;
  }
  lua_getfield(L, -1, name);
  if (!lua_istable(L, -1)) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushvalue(L, -1);
    lua_setfield(L, -3, name);
  }
  lua_createtable(L, 0, 3);
  for (int i = 0; labels[i]; i += 2) {
    lua_pushstring(L, labels[i + 1]);
    lua_setfield(L, -2, labels[i]);
  }
  lua_pushnumber(L, value);
  lua_setfield(L, -2, "value");
  lua_rawseti(L, -2, (int)lua_objlen(L, -2) + 1);
  lua_pop(L, 1);
}

void sl_metrics_push(sl_server *srv, lua_State *L) {
  lua_newtable(L);
  emitter e = {lua_family, lua_sample, NULL, L};
  walk(srv, &e);
}
