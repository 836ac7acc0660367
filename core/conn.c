/* conn: one client connection. See conn.h.
 *
 * Reads go into the server's one read buffer and are parsed at once; a request
 * that completes pauses the parser, so pipelined requests wait (in c->in) until
 * the handler of the one before has answered. Writes queue refcounted buffers
 * and go out as one uv_write of everything queued. */
#include "conn.h"
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include "log.h"
#include "pool.h"
#include "server.h"
#include "sse.h"

#define SL_MAX_IOV 64
#define SL_MAX_PENDING_IN (4u << 20)

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf);
static void conn_process(sl_conn *c);

static const char *const mode_names[] = {"none", "once", "stream", "subscribe", "raw"};
static const char *const end_names[] = {NULL, "client", "handler", "script", "slow", "error", "shutdown", "expired"};

static void access_log(sl_conn *c) {
  if (!c->req) return;
  int stream = c->state == SL_CS_STREAM;
  sl_access a = {c->peer, llhttp_method_name((llhttp_method_t)c->parser.method), c->req->head, c->req->url_len,
                 c->status, (unsigned long long)c->bytes_sent, (double)(uv_hrtime() - c->started) / 1e9,
                 stream ? mode_names[c->mode] : NULL, c->events, stream ? end_names[c->ended] : NULL};
  sl_log_access(&a);
  int cls = c->status >= 100 && c->status < 600 ? c->status / 100 : 0;
  c->srv->metrics.requests[sl_metrics_method(a.method)][cls]++;
}

static void on_expiry_closed(uv_handle_t *h) { free(h); }

static void on_expired(uv_timer_t *t) {
  sl_conn *c = t->data;
  sl_conn_ended(c, SL_END_EXPIRED);
  sl_conn_end(c);
}

int sl_conn_expire_in(sl_conn *c, uint64_t ms) {
  if (!c->expiry) {
    c->expiry = malloc(sizeof *c->expiry);
    if (!c->expiry) return -ENOMEM;
    uv_timer_init(c->srv->loop, c->expiry);
    c->expiry->data = c;
  }
  uv_timer_start(c->expiry, on_expired, ms, 0);
  return 0;
}

void sl_conn_ended(sl_conn *c, int why) {
  if (!c->ended) c->ended = (uint8_t)why;
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  sl_conn *c = h->data;
  buf->base = c->srv->readbuf;
  buf->len = sizeof c->srv->readbuf;
}

static void on_header_timeout(uv_timer_t *t) {
  sl_conn *c = t->data;
  sl_debug("conn %llu: request not complete in time", (unsigned long long)c->id);
  sl_conn_close(c);
}

static void on_heartbeat(uv_timer_t *t) {
  static const char beat[] = ":\n\n";
  sl_conn *c = t->data;
  if (c->wrote) {
    c->wrote = 0;
    return;
  }
  sl_buf *b = sl_buf_from(beat, sizeof beat - 1);
  if (!b) return;
  if (sl_conn_write(c, b) == 0) c->srv->metrics.heartbeats++;
  sl_buf_unref(b);
  c->wrote = 0;
}

static void start_header_timer(sl_conn *c) {
  uint64_t ms = sl_secs_ms(c->srv->cfg.header_timeout);
  if (ms != SL_NEVER) uv_timer_start(&c->timer, on_header_timeout, ms ? ms : 1, 0);
}

void sl_conn_accept(sl_server *srv, uv_stream_t *listener) {
  sl_conn *c = calloc(1, sizeof *c);
  if (!c) return;
  c->srv = srv;
  uv_tcp_init(srv->loop, &c->tcp);
  uv_timer_init(srv->loop, &c->timer);
  c->tcp.data = c->timer.data = c->wreq.data = c;
  c->pending_closes = 0;
  c->id = ++srv->next_conn_id;
  srv->metrics.accepted++;
  c->next = srv->conns;
  if (srv->conns) srv->conns->prev = c;
  srv->conns = c;
  srv->nconns++;
  if (sl_server_track(srv, c) || uv_accept(listener, (uv_stream_t *)&c->tcp)) {
    sl_conn_close(c);
    return;
  }
  size_t q = srv->cfg.queue_limit / 2;
  c->hwm = q < 65536 ? q : 65536;
  struct sockaddr_storage ss;
  int sl = sizeof ss;
  strcpy(c->peer, "-");
  if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &sl) == 0) {
    if (ss.ss_family == AF_INET6) uv_ip6_name((struct sockaddr_in6 *)&ss, c->peer, sizeof c->peer);
    else uv_ip4_name((struct sockaddr_in *)&ss, c->peer, sizeof c->peer);
  }
  uv_tcp_nodelay(&c->tcp, 1);
  if (srv->nconns > srv->cfg.max_connections) {
    srv->refused++;
    sl_warn("refusing %s: max_connections (%u) reached", c->peer, srv->cfg.max_connections);
    sl_buf *b = sl_http_error(503);
    if (b) sl_conn_write(c, b);
    sl_buf_unref(b);
    sl_conn_end(c);
    return;
  }
  llhttp_init(&c->parser, HTTP_REQUEST, &sl_http_settings);
  c->parser.data = c;
  c->reading = 1;
  uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
  start_header_timer(c);
}

/* ---- write path ---- */

static void flush(sl_conn *c);
static void pump(sl_conn *c);
static void after_write(sl_conn *c);

static void on_written(uv_write_t *req, int status) {
  sl_conn *c = req->data;
  for (unsigned i = 0; i < c->inflight; i++) sl_buf_unref(c->q[i]);
  if (status >= 0) c->srv->metrics.bytes_sent += c->inflight_bytes;
  c->queued -= c->inflight_bytes;
  c->qlen -= c->inflight;
  memmove(c->q, c->q + c->inflight, c->qlen * sizeof *c->q);
  c->inflight = 0;
  c->inflight_bytes = 0;
  c->qoff = 0;
  if (c->closing) return;
  if (status < 0) {
    sl_debug("conn %llu: write failed: %s", (unsigned long long)c->id, uv_strerror(status));
    sl_conn_ended(c, SL_END_CLIENT);
    sl_conn_close(c);
    return;
  }
  if (c->qlen) flush(c);
  after_write(c);
}

/* What a write that went out allows: an ended connection with nothing left
 * closes; below the high-water mark a waiting generator or a paused replay goes on. */
static void after_write(sl_conn *c) {
  if (c->closing) return;
  if (!c->qlen && c->ending) {
    sl_conn_close(c);
    return;
  }
  if (c->queued >= c->hwm) return;
  sl_hooks *h = &c->srv->hooks;
  if (h->drained && h->drained(c)) return;
  if (c->sub && c->sub->paused) pump(c);
}

/* Published events are coalesced (sl_conn_queue): what the hub queues for a
 * connection during one turn of the loop goes out in one writev just before
 * the loop waits again (the server's prepare handle calls sl_conn_flush_all).
 * A connection already over its high-water mark is written at once, so a burst
 * never waits in user space. Everything else (heads, a stream's own events,
 * raw writes) is made for one connection and goes out at once: held to the end
 * of a turn, such buffers of many new connections would be freed as holes
 * between long-lived allocations. */
static void mark_dirty(sl_conn *c) {
  sl_server *srv = c->srv;
  if (c->dirty) return;
  if (srv->ndirty == srv->capdirty) {
    size_t cap = srv->capdirty ? srv->capdirty * 2 : 256;
    sl_conn **d = realloc(srv->dirty, cap * sizeof *d);
    if (!d) {
      flush(c);
      return;
    }
    srv->dirty = d;
    srv->capdirty = cap;
  }
  srv->dirty[srv->ndirty++] = c;
  c->dirty = (uint32_t)srv->ndirty;
}

/* The first n queued buffers as iovecs (the first one from its offset); returns their bytes. */
static size_t iov(sl_conn *c, uv_buf_t *bufs, unsigned n) {
  size_t total = 0;
  for (unsigned i = 0; i < n; i++) {
    size_t off = i == 0 ? c->qoff : 0;
    bufs[i] = uv_buf_init(c->q[i]->data + off, (unsigned)(c->q[i]->len - off));
    total += bufs[i].len;
  }
  return total;
}

/* Writes what is queued straight to the socket, as much as the kernel takes:
 * an idle subscriber's socket takes a whole event at once, and no write
 * request, callback or epoll change is needed. Returns the bytes written or a
 * negative error. It only reads the connection, so it may run on an I/O thread
 * (see sl_conn_flush_all); apply() books the result on the loop thread. */
static ssize_t write_out(sl_conn *c) {
  uv_os_fd_t fd;
  if (uv_fileno((uv_handle_t *)&c->tcp, &fd)) return UV_EBADF;
  struct iovec v[SL_MAX_IOV];
  size_t total = 0, off = c->qoff;
  for (unsigned i = 0; i < c->qlen;) {
    unsigned n = 0;
    size_t want = 0;
    for (; n < SL_MAX_IOV && i + n < c->qlen; n++) {
      sl_buf *b = c->q[i + n];
      size_t o = n == 0 ? off : 0;
      v[n].iov_base = b->data + o;
      v[n].iov_len = b->len - o;
      want += b->len - o;
    }
    ssize_t w;
    do w = writev(fd, v, (int)n);
    while (w < 0 && errno == EINTR);
    if (w < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      return -errno;
    }
    total += (size_t)w;
    if ((size_t)w < want) break; /* the kernel's buffer is full */
    i += n;
    off = 0;
  }
  return (ssize_t)total;
}

/* Books w bytes written by write_out (or its error), then hands what the
 * kernel did not take to one uv_write of every buffer left. */
static void apply(sl_conn *c, ssize_t w) {
  if (w < 0) {
    sl_debug("conn %llu: write failed: %s", (unsigned long long)c->id, uv_strerror((int)w));
    sl_conn_ended(c, SL_END_CLIENT);
    sl_conn_close(c);
    return;
  }
  c->queued -= (size_t)w;
  c->srv->metrics.bytes_sent += (uint64_t)w;
  size_t rem = (size_t)w + c->qoff;
  unsigned k = 0;
  while (k < c->qlen && rem >= c->q[k]->len) {
    rem -= c->q[k]->len;
    sl_buf_unref(c->q[k++]);
  }
  c->qlen -= k;
  memmove(c->q, c->q + k, c->qlen * sizeof *c->q);
  c->qoff = rem;
  if (!c->qlen) return;
  uv_buf_t bufs[SL_MAX_IOV];
  unsigned n = c->qlen < SL_MAX_IOV ? c->qlen : SL_MAX_IOV;
  c->inflight_bytes = iov(c, bufs, n);
  c->inflight = n;
  int r = uv_write(&c->wreq, (uv_stream_t *)&c->tcp, bufs, n, on_written);
  if (r < 0) {
    c->inflight = 0;
    c->inflight_bytes = 0;
    sl_debug("conn %llu: write failed: %s", (unsigned long long)c->id, uv_strerror(r));
    sl_conn_close(c);
  }
}

static void flush(sl_conn *c) { apply(c, write_out(c)); }

/* The write phase of the I/O threads (--workers): each writes its slice of
 * the turn's connections while the loop thread waits. */
static void write_slice(void *ctx, size_t lo, size_t hi) {
  sl_conn **d = ctx;
  for (size_t i = lo; i < hi; i++) {
    sl_conn *c = d[i];
    if (c && !c->closing && !c->inflight && c->qlen) c->wres = write_out(c);
  }
}

void sl_conn_flush_all(sl_server *srv) {
  /* Resuming a generator below may queue more (and mark more connections): the
   * count is read again after each pass, so they go out in this same call. */
  for (size_t start = 0; start < srv->ndirty;) {
    size_t end = srv->ndirty;
    if (srv->pool && end - start >= 2) {
      /* Every thread's result is booked before anything can queue again:
       * a write in between would send the bytes the threads already wrote. */
      sl_pool_for(srv->pool, write_slice, srv->dirty + start, end - start, 1);
      for (size_t i = start; i < end; i++) {
        sl_conn *c = srv->dirty[i];
        if (c && !c->closing && !c->inflight && c->qlen) apply(c, c->wres);
      }
    }
    for (size_t i = start; i < end; i++) {
      sl_conn *c = srv->dirty[i];
      if (!c) continue;
      c->dirty = 0;
      if (c->closing || c->inflight) continue;
      if (c->qlen) flush(c);
      after_write(c);
    }
    start = end;
  }
  srv->ndirty = 0;
}

static int enqueue(sl_conn *c, sl_buf *b, int coalesce) {
  if (c->closing || c->ending) return -EPIPE;
  size_t limit = c->srv->cfg.queue_limit;
  /* What waits only for the end of the turn goes out first: the limit is for a client that does not read. */
  if (c->queued > 0 && c->queued + b->len > limit && !c->inflight) {
    flush(c);
    if (c->closing) return -EPIPE;
  }
  if (c->queued > 0 && c->queued + b->len > limit) {
    sl_warn("conn %llu: closed as a slow consumer (%zu bytes queued)", (unsigned long long)c->id, c->queued);
    sl_conn_ended(c, SL_END_SLOW);
    c->srv->metrics.slow_disconnects++;
    sl_conn_close(c);
    return -ENOBUFS;
  }
  if (c->qlen == c->qcap) {
    unsigned cap = c->qcap ? c->qcap * 2 : 4;
    sl_buf **nq = realloc(c->q, cap * sizeof *nq);
    if (!nq) return -ENOMEM;
    c->q = nq;
    c->qcap = cap;
  }
  c->q[c->qlen++] = sl_buf_ref(b);
  c->queued += b->len;
  c->bytes_sent += b->len;
  c->wrote = 1;
  if (!c->inflight) {
    if (!coalesce || c->queued >= c->hwm) flush(c);
    else mark_dirty(c);
  }
  return c->closing ? -EPIPE : 0;
}

int sl_conn_write(sl_conn *c, sl_buf *b) { return enqueue(c, b, 0); }
int sl_conn_queue(sl_conn *c, sl_buf *b) { return enqueue(c, b, 1); }

int sl_conn_respond(sl_conn *c, int status, sl_sb *headers, const char *body, size_t len) {
  if (c->closing || c->ending) return -EPIPE;
  if (c->state != SL_CS_BUSY) return -EALREADY;
  sl_sb sb;
  sl_sb_init(&sb, 256 + (c->is_head ? 0 : len));
  sl_http_status_line(&sb, status);
  if (headers && headers->b) sl_sb_add(&sb, headers->b->data, headers->b->len);
  int no_body = status == 204 || status == 304 || (status >= 100 && status < 200);
  if (!no_body) sl_sb_addf(&sb, "Content-Length: %zu\r\n", len);
  if (!c->keepalive) sl_sb_adds(&sb, "Connection: close\r\n");
  sl_sb_add(&sb, "\r\n", 2);
  if (!no_body && !c->is_head) sl_sb_add(&sb, body, len);
  sl_buf *b = sl_sb_finish(&sb);
  if (!b) return -ENOMEM;
  c->state = SL_CS_RESPONDED;
  c->status = status;
  int r = sl_conn_write(c, b);
  sl_buf_unref(b);
  return r;
}

int sl_conn_start_stream(sl_conn *c, int status, sl_sb *headers, double heartbeat, long long retry) {
  if (c->closing || c->ending) return -EPIPE;
  if (c->state != SL_CS_BUSY) return -EALREADY;
  sl_sb sb;
  sl_sb_init(&sb, 512);
  sl_http_status_line(&sb, status);
  if (headers && headers->b) sl_sb_add(&sb, headers->b->data, headers->b->len);
  /* The body runs until the connection closes: no length, no chunking. */
  sl_sb_adds(&sb, "Connection: close\r\n\r\n");
  if (retry >= 0) sl_sse_retry(&sb, retry);
  sl_buf *b = sl_sb_finish(&sb);
  if (!b) return -ENOMEM;
  c->state = SL_CS_STREAM;
  c->status = status;
  if (c->req) {
    /* A stream lives long: keep only the target, which the access line needs. */
    sl_req *q = c->req;
    free(q->hdrs);
    free(q->body);
    q->hdrs = NULL;
    q->body = NULL;
    q->nhdrs = q->hdr_cap = 0;
    q->body_len = q->body_cap = 0;
    char *h = realloc(q->head, q->url_len ? q->url_len : 1);
    if (h) q->head = h;
    q->head_len = q->head_cap = q->url_len;
  }
  free(c->in);
  c->in = NULL;
  c->inlen = c->incap = 0;
  int r = sl_conn_write(c, b);
  sl_buf_unref(b);
  if (r == 0 && heartbeat > 0 && sl_secs_ms(heartbeat) != SL_NEVER) {
    uint64_t ms = sl_secs_ms(heartbeat);
    uv_timer_start(&c->timer, on_heartbeat, ms ? ms : 1, ms ? ms : 1);
    /* A peer that vanished without a FIN never acknowledges the heartbeats: let the
     * kernel fail the connection once they go unacknowledged this long. */
    uv_os_fd_t fd;
    double span = heartbeat * 2000 + 1000;
    unsigned int uto = span < 4e9 ? (unsigned int)span : 4000000000u;
    if (uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0) setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &uto, sizeof uto);
  }
  return r;
}

/* The hub's deliver(): 1 when the queue is now above the high-water mark (a
 * replay pauses there); a connection that cannot queue is closed as slow. */
static int sub_deliver(sl_hub_sub *s, sl_buf *frame) {
  sl_conn *c = s->data;
  int r = sl_conn_queue(c, frame);
  if (r == 0) {
    c->events++;
    c->srv->metrics.events_sent++;
  }
  if (r == -ENOMEM) {
    sl_warn("conn %llu: closed: out of memory for its queue", (unsigned long long)c->id);
    sl_conn_close(c);
    return -ENOBUFS;
  }
  if (r) return r;
  return c->queued >= c->hwm;
}

/* Goes on with a subscriber's replay that paused for queue room. */
static void pump(sl_conn *c) {
  int r = sl_hub_pump(&c->srv->hub, c->sub);
  if (r == -ENOBUFS) {
    sl_warn("conn %llu: closed as a slow consumer (too much arrived during its replay)", (unsigned long long)c->id);
    sl_conn_close(c);
  }
}

int sl_conn_subscribe(sl_conn *c, const sl_hub_str *chans, int n, const char *last_id, size_t lidlen,
                      sl_hub_filter *filter, int gateway) {
  if (c->closing || c->ending || c->sub) {
    sl_hub_filter_free(filter);
    return c->sub ? -EALREADY : -EPIPE;
  }
  sl_hub_sub *s = calloc(1, sizeof *s);
  if (!s) {
    sl_hub_filter_free(filter);
    return -ENOMEM;
  }
  s->filter = filter;
  s->gateway = gateway ? 1 : 0;
  s->deliver = sub_deliver;
  s->data = c;
  double now = (double)uv_hrtime() / 1e9;
  int r;
  if (c->srv->hooks.replay && last_id) {
    /* The replay comes from the engine: live events are held until it is in. */
    r = sl_hub_subscribe_held(&c->srv->hub, s, chans, n, now);
    if (r == 0 && c->srv->hooks.replay(c->srv, s, last_id, lidlen)) {
      sl_hub_unsubscribe(&c->srv->hub, s);
      r = -ENOMEM;
    }
  } else {
    r = sl_hub_subscribe(&c->srv->hub, s, chans, n, last_id, lidlen, now);
  }
  if (r < 0) {
    sl_hub_filter_free(s->filter);
    free(s);
    return r;
  }
  c->sub = s;
  return r;
}

int sl_conn_change(sl_conn *c, const sl_hub_str *chans, int n, int add) {
  if (c->closing || c->ending) return -EPIPE;
  if (!c->sub) return -ENOENT;
  return sl_hub_change(&c->srv->hub, c->sub, chans, n, add, (double)uv_hrtime() / 1e9);
}

int sl_conn_kick(sl_server *srv, const char *name, size_t len) {
  sl_hub_sub **subs;
  int n = sl_hub_subs(&srv->hub, name, len, &subs);
  int kicked = 0;
  /* Listeners (sluice.listen) are subscribers too, but not connections. */
  for (int i = 0; i < n; i++) {
    if (subs[i]->deliver != sub_deliver) continue;
    sl_conn *c = subs[i]->data;
    if (c->closing || c->ending) continue;
    sl_conn_ended(c, SL_END_SCRIPT);
    sl_conn_end(c);
    kicked++;
  }
  free(subs);
  return n < 0 ? n : kicked;
}

void sl_conn_end(sl_conn *c) {
  if (c->closing || c->ending) return;
  c->ending = 1;
  if (c->qlen == 0) sl_conn_close(c);
}

/* ---- close path ---- */

static void on_closed(uv_handle_t *h) {
  sl_conn *c = h->data;
  if (--c->pending_closes) return;
  if (c->srv->hooks.closed) c->srv->hooks.closed(c);
  /* Found by id until here, so close hooks can still read conn.data. */
  sl_server_untrack(c->srv, c);
  for (unsigned i = 0; i < c->qlen; i++) sl_buf_unref(c->q[i]);
  free(c->q);
  free(c->in);
  sl_req_free(c->req);
  free(c->data);
  free(c);
}

void sl_conn_close(sl_conn *c) {
  if (c->closing) return;
  c->closing = 1;
  if (c->state == SL_CS_STREAM) access_log(c);
  sl_server *srv = c->srv;
  if (c->prev) c->prev->next = c->next;
  else srv->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  srv->nconns--;
  if (c->dirty) { /* it will not be flushed: its slot is left empty */
    srv->dirty[c->dirty - 1] = NULL;
    c->dirty = 0;
  }
  if (c->sub) {
    if (srv->hooks.replay_cancel) srv->hooks.replay_cancel(srv, c->sub);
    sl_hub_unsubscribe(&srv->hub, c->sub);
    sl_hub_filter_free(c->sub->filter);
    free(c->sub);
    c->sub = NULL;
  }
  if (c->task) {
    struct sl_task *t = c->task;
    c->task = NULL;
    if (srv->hooks.cancel) srv->hooks.cancel(t);
  }
  if (c->expiry) {
    uv_close((uv_handle_t *)c->expiry, on_expiry_closed);
    c->expiry = NULL;
  }
  c->pending_closes = 2;
  uv_close((uv_handle_t *)&c->tcp, on_closed);
  uv_close((uv_handle_t *)&c->timer, on_closed);
  sl_server_drained(srv);
}

/* ---- read path ---- */

static void parse_error(sl_conn *c) {
  int status = c->err_status ? c->err_status : 400;
  sl_debug("conn %llu: bad request (%d): %s", (unsigned long long)c->id, status,
           c->err_status ? "limit" : llhttp_get_error_reason(&c->parser));
  if (c->state != SL_CS_HEAD) {
    sl_conn_close(c);
    return;
  }
  c->state = SL_CS_RESPONDED;
  c->status = status;
  uv_timer_stop(&c->timer);
  sl_buf *b = sl_http_error(status);
  if (b) sl_conn_write(c, b);
  sl_buf_unref(b);
  if (c->req) access_log(c);
  sl_conn_end(c);
}

/* Parses p; returns the bytes used, or -1 after a parse error (the connection is ending). */
static ssize_t feed(sl_conn *c, const char *p, size_t n) {
  llhttp_errno_t e = llhttp_execute(&c->parser, p, n);
  if (e == HPE_OK) return (ssize_t)n;
  if (e == HPE_PAUSED && c->msg_done) {
    llhttp_resume(&c->parser);
    return (ssize_t)(llhttp_get_error_pos(&c->parser) - p);
  }
  parse_error(c);
  return -1;
}

static int keep(sl_conn *c, const char *p, size_t n) {
  if (c->inlen + n > SL_MAX_PENDING_IN) {
    /* A client that pipelines this much waits for its answers before we read on. */
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->reading = 0;
  }
  return sl_append(&c->in, &c->inlen, &c->incap, p, n, 1024);
}

static void dispatch(sl_conn *c) {
  c->msg_done = 0;
  c->state = SL_CS_BUSY;
  c->keepalive = llhttp_should_keep_alive(&c->parser) ? 1 : 0;
  c->is_head = c->parser.method == HTTP_HEAD;
  c->bytes_sent = 0;
  c->status = 0;
  uv_timer_stop(&c->timer);
  if (!c->srv->vm || c->srv->stopping) {
    c->keepalive = 0;
    sl_conn_respond(c, 503, NULL, "Service Unavailable\n", 20);
    sl_conn_task_done(c, 1);
    return;
  }
  if (c->srv->hooks.dispatch) c->srv->hooks.dispatch(c);
  else sl_conn_task_done(c, 0); /* nothing to serve it: 500 */
}

/* Serves the requests waiting in c->in, one at a time. */
static void conn_process(sl_conn *c) {
  if (c->processing) return;
  c->processing = 1;
  while (!c->closing && !c->ending && c->state == SL_CS_HEAD) {
    if (c->msg_done) {
      dispatch(c);
      continue;
    }
    if (c->inlen == 0) break;
    ssize_t used = feed(c, c->in, c->inlen);
    if (used < 0) break;
    c->inlen -= (size_t)used;
    memmove(c->in, c->in + used, c->inlen);
    if (!c->msg_done) break;
  }
  c->processing = 0;
  if (!c->reading && !c->closing && c->inlen < SL_MAX_PENDING_IN / 2) {
    c->reading = 1;
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
  }
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  sl_conn *c = s->data;
  if (n == 0) return;
  if (n < 0) {
    /* The client left (or the socket failed): nothing more can be sent. */
    sl_conn_ended(c, SL_END_CLIENT);
    sl_conn_close(c);
    return;
  }
  if (c->closing || c->ending) return;
  if (c->state == SL_CS_STREAM) return; /* a stream takes no more requests: read only to see EOF */
  size_t len = (size_t)n;
  const char *p = buf->base;
  if (c->state == SL_CS_HEAD && c->inlen == 0 && !c->msg_done) {
    ssize_t used = feed(c, p, len);
    if (used < 0) return;
    p += used;
    len -= (size_t)used;
  }
  if (len && keep(c, p, len)) {
    sl_conn_close(c);
    return;
  }
  conn_process(c);
}

void sl_conn_fail(sl_conn *c) {
  if (c->closing || c->ending) return;
  if (c->state == SL_CS_BUSY) {
    c->keepalive = 0;
    sl_conn_respond(c, 500, NULL, "Internal Server Error\n", 22);
  } else if (c->state == SL_CS_STREAM) {
    sl_conn_ended(c, SL_END_ERROR);
    sl_conn_end(c);
  }
}

void sl_conn_task_done(sl_conn *c, int ok) {
  if (c->closing) return;
  if (c->state == SL_CS_BUSY) {
    /* The handler ended without answering: only an error gets here. */
    sl_conn_fail(c);
  } else if (c->state == SL_CS_STREAM) {
    if (!ok) {
      sl_conn_ended(c, SL_END_ERROR);
      sl_conn_end(c);
    }
    return;
  }
  access_log(c);
  if (!c->keepalive || c->srv->stopping) {
    sl_conn_end(c);
    return;
  }
  /* The next request may be served by another state (after a reload): drop this one's handle. */
  if (c->srv->hooks.release) c->srv->hooks.release(c);
  sl_req_free(c->req);
  c->req = NULL;
  c->state = SL_CS_HEAD;
  start_header_timer(c);
  conn_process(c);
}
