/* server: listeners, accept, connection limits, signals, shutdown. See server.h. */
#include "server.h"
#include <stdio.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>
#include <openssl/rand.h>
#include "conn.h"
#include "io.h"
#include "log.h"

void sl_config_defaults(sl_config *cfg) {
  cfg->heartbeat = 15;
  cfg->retry = -1;
  cfg->history = 100;
  cfg->history_ttl = 3600;
  cfg->queue_limit = 1u << 20;
  cfg->max_connections = 100000;
  cfg->max_header = 8u << 10;
  cfg->max_body = 1u << 20;
  cfg->header_timeout = 10;
  cfg->watchdog = 2;
  cfg->http_max_concurrent = 1024;
  cfg->http_max_per_host = 256;
}

static void on_sweep(uv_timer_t *t) {
  sl_server *srv = t->data;
  sl_hub_sweep(&srv->hub, (double)uv_hrtime() / 1e9);
  /* Refusals are told as a count: a flood of them must not set the log's volume. */
  if (srv->refused > srv->refused_logged) {
    sl_warn("refused %llu connection(s) in the last second: max_connections (%u) reached (the latest from %s)",
            (unsigned long long)(srv->refused - srv->refused_logged), srv->cfg.max_connections, srv->refused_peer);
    srv->refused_logged = srv->refused;
  }
  /* After a crowd has left, hand its memory back to the system: the Lua heap
   * first (handles of closed connections), then malloc's free pages. */
  if (srv->nconns > srv->peak_conns) srv->peak_conns = srv->nconns;
  if (srv->peak_conns - srv->nconns >= 1024) {
    if (srv->hooks.trim) srv->hooks.trim(srv);
    malloc_trim(0);
    srv->peak_conns = srv->nconns;
  }
}

static void on_flush(uv_prepare_t *p) {
  sl_server *srv = p->data;
  sl_conn_flush_all(srv);
  if (srv->metrics.npub) sl_metrics_written(&srv->metrics, uv_hrtime());
}

/* Every 100 ms: how much later than asked the loop got round to it. */
static void on_lag(uv_timer_t *t) {
  sl_server *srv = t->data;
  uint64_t now = uv_hrtime();
  if (srv->lag_due) sl_hist_observe(&srv->metrics.loop_lag, now > srv->lag_due ? (double)(now - srv->lag_due) / 1e9 : 0);
  srv->lag_due = now + 100000000u;
}

void sl_server_id_block(sl_server *srv, uint32_t b) {
  srv->id_block_drawn = b == 0;
  if (!b) {
    uint32_t r = 0;
    RAND_bytes((unsigned char *)&r, sizeof r); /* on failure, block 1: ids are still valid */
    b = 1 + r % (SL_ID_CLAIMED - 1);
  }
  srv->next_conn_id = (uint64_t)b << SL_ID_BLOCK_BITS;
  srv->id_block_end = ((uint64_t)b + 1) << SL_ID_BLOCK_BITS;
  srv->spare_block = 0;
  if (srv->hooks.id_block) srv->hooks.id_block(srv);
}

uint64_t sl_server_new_id(sl_server *srv) {
  if (srv->next_conn_id + 1 >= srv->id_block_end) sl_server_id_block(srv, srv->spare_block);
  return ++srv->next_conn_id;
}

int sl_server_init(sl_server *srv, uv_loop_t *loop) {
  memset(srv, 0, sizeof *srv);
  srv->loop = loop;
  /* The key of connection tokens (conn.token): unguessable, the same for every load of the script. */
  if (RAND_bytes(srv->token_key, sizeof srv->token_key) != 1) return -1;
  sl_server_id_block(srv, 0);
  loop->data = srv;
  sl_config_defaults(&srv->cfg);
  srv->grace = SL_GRACE;
  /* Hub ids start from the clock (microseconds) so they keep increasing across restarts. */
  uv_timeval64_t tv;
  uv_gettimeofday(&tv);
  uint64_t first = (uint64_t)tv.tv_sec * 1000000u + (uint64_t)tv.tv_usec;
  if (sl_hub_init(&srv->hub, first, (unsigned)srv->cfg.history, srv->cfg.history_ttl)) return UV_ENOMEM;
  uv_prepare_init(loop, &srv->flusher);
  srv->flusher.data = srv;
  uv_prepare_start(&srv->flusher, on_flush);
  uv_unref((uv_handle_t *)&srv->flusher);
  uv_timer_init(loop, &srv->lag);
  srv->lag.data = srv;
  uv_timer_start(&srv->lag, on_lag, 100, 100);
  uv_unref((uv_handle_t *)&srv->lag);
  uv_timer_init(loop, &srv->sweep);
  srv->sweep.data = srv;
  uv_timer_start(&srv->sweep, on_sweep, 1000, 1000);
  uv_unref((uv_handle_t *)&srv->sweep);
  return 0;
}

static void on_connection(uv_stream_t *listener, int status) {
  sl_server *srv = listener->data;
  if (status < 0) {
    sl_warn("accept failed: %s", uv_strerror(status));
    return;
  }
  sl_conn_accept(srv, listener);
}

/* Splits "host:port" / "[v6]:port" / ":port" / "port" into a socket address. */
static int parse_addr(const char *addr, struct sockaddr_storage *ss) {
  char host[128];
  const char *port;
  const char *colon = strrchr(addr, ':');
  if (addr[0] == '[') {
    const char *end = strchr(addr, ']');
    if (!end || end[1] != ':' || (size_t)(end - addr - 1) >= sizeof host) return UV_EINVAL;
    memcpy(host, addr + 1, (size_t)(end - addr - 1));
    host[end - addr - 1] = '\0';
    port = end + 2;
  } else if (colon) {
    if ((size_t)(colon - addr) >= sizeof host) return UV_EINVAL;
    memcpy(host, addr, (size_t)(colon - addr));
    host[colon - addr] = '\0';
    port = colon + 1;
    if (!host[0]) strcpy(host, "127.0.0.1");
  } else {
    strcpy(host, "127.0.0.1");
    port = addr;
  }
  char *end;
  long p = strtol(port, &end, 10);
  if (!*port || *end || p < 0 || p > 65535) return UV_EINVAL;
  if (strchr(host, ':')) return uv_ip6_addr(host, (int)p, (struct sockaddr_in6 *)ss);
  return uv_ip4_addr(host, (int)p, (struct sockaddr_in *)ss);
}

int sl_server_listen(sl_server *srv, const char *addr, char *err, size_t errlen) {
  struct sockaddr_storage ss;
  if (srv->nlisteners == SL_MAX_LISTENERS) {
    snprintf(err, errlen, "too many --listen addresses (at most %d)", SL_MAX_LISTENERS);
    return UV_EINVAL;
  }
  int r = parse_addr(addr, &ss);
  if (r) {
    snprintf(err, errlen, "bad listen address '%s' (want HOST:PORT)", addr);
    return r;
  }
  uv_tcp_t *t = &srv->listeners[srv->nlisteners];
  uv_tcp_init(srv->loop, t);
  t->data = srv;
  srv->nlisteners++;
  r = uv_tcp_bind(t, (struct sockaddr *)&ss, 0);
  if (!r) r = uv_listen((uv_stream_t *)t, 1024, on_connection);
  if (r) snprintf(err, errlen, "cannot listen on %s: %s", addr, uv_strerror(r));
  return r;
}

static void close_all(sl_server *srv) {
  while (srv->conns) sl_conn_close(srv->conns);
}

static void on_signal(uv_signal_t *s, int signum) {
  sl_server *srv = s->data;
  const char *name = signum == SIGINT ? "SIGINT" : "SIGTERM";
  if (srv->stopping) {
    /* A second signal: no more waiting for slow readers. */
    sl_warn("received %s again: closing %u connection%s now", name, srv->nconns, srv->nconns == 1 ? "" : "s");
    close_all(srv);
    return;
  }
  sl_info("received %s, shutting down", name);
  sl_server_stop(srv);
}

void sl_server_signals(sl_server *srv) {
  uv_signal_init(srv->loop, &srv->sigint);
  uv_signal_init(srv->loop, &srv->sigterm);
  srv->sigint.data = srv->sigterm.data = srv;
  uv_signal_start(&srv->sigint, on_signal, SIGINT);
  uv_signal_start(&srv->sigterm, on_signal, SIGTERM);
}

static void on_drain_deadline(uv_timer_t *t) {
  sl_server *srv = t->data;
  sl_warn("%u connection%s did not drain in time: closing", srv->nconns, srv->nconns == 1 ? "" : "s");
  close_all(srv);
}

void sl_server_drained(sl_server *srv) {
  /* Connections on I/O threads are gone once their threads have closed them. */
  if (!srv->stopping || srv->conns || srv->io_pending) return;
  if (srv->hooks.drain_done) srv->hooks.drain_done(srv);
  if (!uv_is_closing((uv_handle_t *)&srv->drain)) uv_close((uv_handle_t *)&srv->drain, NULL);
  /* Nothing is left to write; signals go back to their defaults. */
  if (!uv_is_closing((uv_handle_t *)&srv->flusher)) uv_close((uv_handle_t *)&srv->flusher, NULL);
  sl_io_close(srv->homes);
  if (srv->sigint.data && !uv_is_closing((uv_handle_t *)&srv->sigint)) {
    uv_close((uv_handle_t *)&srv->sigint, NULL);
    uv_close((uv_handle_t *)&srv->sigterm, NULL);
  }
}

void sl_server_stop(sl_server *srv) {
  if (srv->stopping) return;
  srv->stopping = 1;
  uv_timer_init(srv->loop, &srv->drain); /* before any connection can close and end the drain */
  srv->drain.data = srv;
  for (int i = 0; i < srv->nlisteners; i++)
    if (!uv_is_closing((uv_handle_t *)&srv->listeners[i])) uv_close((uv_handle_t *)&srv->listeners[i], NULL);
  if (!uv_is_closing((uv_handle_t *)&srv->sweep)) uv_close((uv_handle_t *)&srv->sweep, NULL);
  if (!uv_is_closing((uv_handle_t *)&srv->lag)) uv_close((uv_handle_t *)&srv->lag, NULL);
  /* The signal handlers stay until the drain ends: a second signal cuts it short. */
  /* Drain: each connection closes once what is queued for it is written; streams take
   * no more events. Clients that do not read by the deadline are closed anyway. */
  for (sl_conn *c = srv->conns, *next; c; c = next) {
    next = c->next;
    sl_conn_ended(c, SL_END_SHUTDOWN);
    sl_conn_end(c);
  }
  if (srv->hooks.stop) srv->hooks.stop(srv); /* timers, tasks, watchers, the engine */
  if (srv->conns) {
    sl_info("draining %u connection%s", srv->nconns, srv->nconns == 1 ? "" : "s");
    if (srv->grace > 0 && sl_secs_ms(srv->grace) != SL_NEVER)
      uv_timer_start(&srv->drain, on_drain_deadline, sl_secs_ms(srv->grace), 0);
    else if (srv->grace <= 0)
      close_all(srv); /* --grace 0: no drain */
  } else {
    sl_server_drained(srv);
  }
}

void sl_server_free(sl_server *srv) {
  sl_hub_free(&srv->hub);
  free(srv->byid);
  for (size_t i = 0; i < srv->nroutes; i++) free(srv->routes[i]);
  free(srv->routes);
}

/* ---- connections by id: open addressing, linear probing, backward-shift delete ---- */

static size_t id_slot(const sl_server *srv, uint64_t id) {
  return (size_t)((id * 0x9E3779B97F4A7C15ull) >> 17) & (srv->byid_cap - 1);
}

static void id_put(sl_server *srv, struct sl_conn *c) {
  size_t i = id_slot(srv, c->id);
  while (srv->byid[i]) i = (i + 1) & (srv->byid_cap - 1);
  srv->byid[i] = c;
}

int sl_server_track(sl_server *srv, struct sl_conn *c) {
  if ((srv->byid_len + 1) * 2 > srv->byid_cap) {
    size_t cap = srv->byid_cap ? srv->byid_cap * 2 : 1024;
    struct sl_conn **old = srv->byid;
    size_t oldcap = srv->byid_cap;
    srv->byid = calloc(cap, sizeof *srv->byid);
    if (!srv->byid) {
      srv->byid = old;
      return -1;
    }
    srv->byid_cap = cap;
    for (size_t i = 0; i < oldcap; i++)
      if (old[i]) id_put(srv, old[i]);
    free(old);
  }
  id_put(srv, c);
  srv->byid_len++;
  return 0;
}

void sl_server_untrack(sl_server *srv, struct sl_conn *c) {
  if (!srv->byid_cap) return;
  size_t mask = srv->byid_cap - 1, i = id_slot(srv, c->id);
  while (srv->byid[i] && srv->byid[i] != c) i = (i + 1) & mask;
  if (!srv->byid[i]) return;
  srv->byid[i] = NULL;
  srv->byid_len--;
  /* Move later entries of the run back so lookups never stop at the hole. */
  for (size_t j = (i + 1) & mask; srv->byid[j]; j = (j + 1) & mask) {
    size_t home = id_slot(srv, srv->byid[j]->id);
    if (((j - home) & mask) >= ((j - i) & mask)) {
      srv->byid[i] = srv->byid[j];
      srv->byid[j] = NULL;
      i = j;
    }
  }
}

struct sl_conn *sl_server_conn(sl_server *srv, uint64_t id) {
  if (!srv->byid_cap) return NULL;
  for (size_t i = id_slot(srv, id);; i = (i + 1) & (srv->byid_cap - 1)) {
    struct sl_conn *c = srv->byid[i];
    if (!c || c->id == id) return c;
  }
}

const char *sl_server_intern(sl_server *srv, const char *s) {
  for (size_t i = 0; i < srv->nroutes; i++)
    if (strcmp(srv->routes[i], s) == 0) return srv->routes[i];
  char **r = realloc(srv->routes, (srv->nroutes + 1) * sizeof *r);
  if (!r) return NULL;
  srv->routes = r;
  char *copy = strdup(s);
  if (!copy) return NULL;
  srv->routes[srv->nroutes++] = copy;
  return copy;
}
