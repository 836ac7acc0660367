/* conn: one client connection. See conn.h.
 *
 * Reads go into the home's one read buffer and are parsed at once; a request
 * that completes pauses the parser, so pipelined requests wait (in c->in) until
 * the handler of the one before has answered. Writes queue refcounted buffers
 * and go out as one writev of everything queued.
 *
 * The functions named io_* (and the callbacks of the socket and timer) are the
 * I/O half's and run on the connection's home; the rest are the Lua half's and
 * run on the loop thread. Each half reaches the other through to_home() and
 * to_lua(): a direct call when the home is the loop thread (one worker: no
 * message at all), else a message in the turn's batch (see io.h). */
#include "conn.h"
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>
#include "log.h"
#include "server.h"
#include "sse.h"

#define SL_MAX_IOV 64
#define SL_MAX_PENDING_IN (4u << 20)

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf);
static void conn_process(sl_conn *c);

/* What one half asks of the other. */
enum {
  OP_ACCEPT = 1, /* home: take the socket n */
  OP_WRITE,      /* home: queue p (a buffer, one reference) for the end of its turn */
  OP_MORE,       /* home: queue the buffer of the OP_WRITE before it too (a fan-out: no reference of its own) */
  OP_STREAM,     /* home: queue the stream head p; heartbeats every n ms (0: none) */
  OP_EVENT,      /* home: frame the event p (a raw_event and its bytes) and queue it */
  OP_NEXT,       /* home: the request is done, read the next */
  OP_END,        /* home: close once everything queued is written */
  OP_CLOSE,      /* home: close now */
  OP_FREE,       /* home: the Lua half is done with it: free it */
  OP_CONFIG,     /* home: new limits p (an sl_io_limits to free) */
  OP_DISPATCH,   /* Lua: a request was read */
  OP_BAD,        /* Lua: a bad request was answered with status n (p: the bytes) */
  OP_GONE,       /* Lua: the home closed it (n: why), its handles are closed */
  OP_DRAINED     /* Lua: it went below its high-water mark */
};

static inline int local(const sl_conn *c) { return c->home->index == 0; }

static void on_message(sl_home *h, sl_msg *m);

/* A message that must get there: out of memory, it waits for memory. */
static void must_post(sl_home *from, int to, sl_msg m) {
  while (sl_io_post(from, to, m)) {
    sl_error("io: out of memory for a message: retrying");
    uv_sleep(1);
  }
}

/* From the Lua half to the I/O half. */
static void to_home(sl_conn *c, uint32_t op, void *p, uint64_t n) {
  sl_msg m = {c, p, n, op};
  if (local(c)) on_message(c->home, &m);
  else must_post(c->srv->homes[0], c->home->index, m);
}

/* From the I/O half to the Lua half. */
static void to_lua(sl_conn *c, uint32_t op, void *p, uint64_t n) {
  sl_msg m = {c, p, n, op};
  if (local(c)) on_message(c->home, &m);
  else must_post(c->home, 0, m);
}

static void set_queued(sl_conn *c, size_t v) {
  if (v >= c->hwm) c->was_full = 1;
  __atomic_store_n(&c->queued, v, __ATOMIC_RELAXED);
}

/* Closes from the home's side: on the loop thread the whole connection at
 * once, as it always was; on an I/O thread its handles, and the Lua half
 * hears of it (OP_GONE) once they are closed. */
static void io_close(sl_conn *c, int why);
static void io_lost(sl_conn *c, int why) {
  if (local(c)) {
    if (why) sl_conn_ended(c, why);
    sl_conn_close(c);
  } else {
    io_close(c, why);
  }
}

static const char *const mode_names[] = {"none", "once", "stream", "subscribe", "raw"};
static const char *const end_names[] = {NULL, "client", "handler", "script", "slow", "error", "shutdown", "expired"};

static void access_log(sl_conn *c) {
  if (!c->req) return;
  int stream = c->state == SL_CS_STREAM;
  sl_access a = {c->peer, llhttp_method_name((llhttp_method_t)c->parser.method), c->req->head, c->req->url_len,
                 c->status, (unsigned long long)(c->bytes_sent + __atomic_load_n(&c->framed_extra, __ATOMIC_RELAXED)),
                 (double)(uv_hrtime() - c->started) / 1e9,
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
  buf->base = c->home->readbuf;
  buf->len = sizeof c->home->readbuf;
}

static void on_header_timeout(uv_timer_t *t) {
  sl_conn *c = t->data;
  sl_debug("conn %llu: request not complete in time", (unsigned long long)c->id);
  io_lost(c, 0);
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
  if (sl_conn_io_write(c, b) == 0) sl_io_count(&c->home->heartbeats, 1);
  sl_buf_unref(b);
  c->wrote = 0;
}

static void start_header_timer(sl_conn *c) {
  uint64_t ms = sl_secs_ms(c->home->lim.header_timeout);
  if (ms != SL_NEVER) uv_timer_start(&c->timer, on_header_timeout, ms ? ms : 1, 0);
}

/* The home's start of a connection whose socket it owns. */
static void io_begin(sl_conn *c) {
  uv_tcp_nodelay(&c->tcp, 1);
  llhttp_init(&c->parser, HTTP_REQUEST, &sl_http_settings);
  c->parser.data = c;
  c->reading = 1;
  uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
  start_header_timer(c);
}

/* The Lua half of a new connection: its id, on the server's list (the caller tracks it). NULL if out of memory. */
static sl_conn *conn_new(sl_server *srv, sl_home *home) {
  sl_conn *c = calloc(1, sizeof *c);
  if (!c) return NULL;
  c->srv = srv;
  c->home = home;
  c->fd = -1;
  c->id = sl_server_new_id(srv);
  srv->metrics.accepted++;
  c->next = srv->conns;
  if (srv->conns) srv->conns->prev = c;
  srv->conns = c;
  srv->nconns++;
  size_t q = srv->cfg.queue_limit / 2;
  c->hwm = q < 65536 ? q : 65536;
  strcpy(c->peer, "-");
  return c;
}

/* Takes it off the server's list of connections. */
static void unlist(sl_conn *c) {
  sl_server *srv = c->srv;
  if (c->prev) c->prev->next = c->next;
  else srv->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  srv->nconns--;
}

static void peer_name(sl_conn *c, const struct sockaddr_storage *ss) {
  if (ss->ss_family == AF_INET6) uv_ip6_name((const struct sockaddr_in6 *)ss, c->peer, sizeof c->peer);
  else if (ss->ss_family == AF_INET) uv_ip4_name((const struct sockaddr_in *)ss, c->peer, sizeof c->peer);
}

/* The handles that take a socket from the listener for a thread are kept for
 * the next accept rather than freed: a burst of accepts would leave them as
 * holes between the connections' own memory. */
static uv_tcp_t **spare_tcp;
static size_t nspare, capspare;

static void on_tmp_closed(uv_handle_t *h) {
  if (nspare == 256) { /* enough for the bursts that matter */
    free(h);
    return;
  }
  if (nspare == capspare) {
    size_t cap = capspare ? capspare * 2 : 64;
    uv_tcp_t **v = realloc(spare_tcp, cap * sizeof *v);
    if (!v) {
      free(h);
      return;
    }
    spare_tcp = v;
    capspare = cap;
  }
  spare_tcp[nspare++] = (uv_tcp_t *)h;
}

/* Accepts a connection for an I/O thread: the loop thread takes it from the
 * listener, and the thread's own loop gets (a duplicate of) its socket.
 * 1 when nothing was accepted (the caller takes it), 0 when handed over or dropped. */
static int accept_remote(sl_server *srv, uv_stream_t *listener, sl_home *home) {
  uv_tcp_t *tmp = nspare ? spare_tcp[--nspare] : malloc(sizeof *tmp);
  if (!tmp) return 1;
  uv_tcp_init(srv->loop, tmp);
  if (uv_accept(listener, (uv_stream_t *)tmp)) {
    uv_close((uv_handle_t *)tmp, on_tmp_closed);
    return 1;
  }
  uv_os_fd_t fd;
  int dup_fd = uv_fileno((uv_handle_t *)tmp, &fd) ? -1 : fcntl(fd, F_DUPFD_CLOEXEC, 0);
  uv_close((uv_handle_t *)tmp, on_tmp_closed);
  if (dup_fd < 0) return 0;
  sl_conn *c = conn_new(srv, home);
  if (!c || sl_server_track(srv, c)) {
    if (c) unlist(c);
    free(c);
    close(dup_fd);
    return 0;
  }
  struct sockaddr_storage ss;
  socklen_t sl = sizeof ss;
  if (getpeername(dup_fd, (struct sockaddr *)&ss, &sl) == 0) peer_name(c, &ss);
  srv->io_pending++;
  to_home(c, OP_ACCEPT, NULL, (uint64_t)dup_fd);
  return 0;
}

static void io_accept(sl_conn *c, int fd) {
  uv_tcp_init(c->home->loop, &c->tcp);
  uv_timer_init(c->home->loop, &c->timer);
  c->tcp.data = c->timer.data = c->wreq.data = c;
  if (uv_tcp_open(&c->tcp, fd)) {
    close(fd);
    io_close(c, SL_END_ERROR);
    return;
  }
  c->fd = fd;
  io_begin(c);
}

void sl_conn_accept(sl_server *srv, uv_stream_t *listener) {
  sl_home **homes = srv->homes;
  /* With I/O threads, the connections are theirs, round robin: the loop
   * thread keeps Lua, the hub and the framing of published events. */
  if (homes[0]->nhomes > 1 && srv->nconns < srv->cfg.max_connections) {
    unsigned i = 1 + srv->next_home++ % (unsigned)(homes[0]->nhomes - 1);
    if (accept_remote(srv, listener, homes[i]) == 0) return;
  }
  sl_conn *c = conn_new(srv, homes[0]);
  if (!c) return;
  uv_tcp_init(srv->loop, &c->tcp);
  uv_timer_init(srv->loop, &c->timer);
  c->tcp.data = c->timer.data = c->wreq.data = c;
  if (sl_server_track(srv, c) || uv_accept(listener, (uv_stream_t *)&c->tcp)) {
    sl_conn_close(c);
    return;
  }
  uv_os_fd_t fd;
  if (uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0) c->fd = fd;
  struct sockaddr_storage ss;
  int sl = sizeof ss;
  if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &sl) == 0) peer_name(c, &ss);
  if (srv->nconns > srv->cfg.max_connections) {
    srv->refused++; /* logged as a count, once a second (server.c) */
    memcpy(srv->refused_peer, c->peer, sizeof srv->refused_peer);
    sl_buf *b = sl_http_error(503);
    if (b) sl_conn_write(c, b);
    sl_buf_unref(b);
    sl_conn_end(c);
    return;
  }
  io_begin(c);
}

/* ---- write path (the home's) ---- */

static void flush(sl_conn *c);
static void pump(sl_conn *c);
static void after_write(sl_conn *c, sl_home *h);

static void on_written(uv_write_t *req, int status) {
  sl_conn *c = req->data;
  for (unsigned i = 0; i < c->inflight; i++) sl_buf_unref(c->q[i]);
  if (status >= 0) sl_io_count(&c->home->bytes_sent, c->inflight_bytes);
  set_queued(c, c->queued - c->inflight_bytes);
  c->qlen -= c->inflight;
  memmove(c->q, c->q + c->inflight, c->qlen * sizeof *c->q);
  c->inflight = 0;
  c->inflight_bytes = 0;
  c->qoff = 0;
  if (c->io_closing) return;
  if (status < 0) {
    sl_debug("conn %llu: write failed: %s", (unsigned long long)c->id, uv_strerror(status));
    io_lost(c, SL_END_CLIENT);
    return;
  }
  if (c->qlen) flush(c);
  after_write(c, c->home);
}

/* The Lua half's part of a write that went out: a waiting generator or a
 * paused replay goes on. */
static void lua_drained(sl_conn *c) {
  sl_hooks *h = &c->srv->hooks;
  if (h->drained && h->drained(c)) return;
  if (c->sub && c->sub->paused) pump(c);
}

/* What a write that went out allows: an ended connection with nothing left
 * closes; below the high-water mark the Lua half may go on (told at once on
 * the loop thread; from an I/O thread only when it asked, see sl_conn_backlogged).
 * h is c's home, passed: c->home is on a line the write path does not read. */
static void after_write(sl_conn *c, sl_home *h) {
  if (c->io_closing) return;
  if (!c->qlen && c->io_ending) {
    io_lost(c, 0);
    return;
  }
  if (c->queued >= c->hwm) return;
  if (h->index == 0) {
    /* Only a queue that was full can have a generator waiting or a replay
     * paused on it: an idle subscriber's every write skips the Lua half. */
    if (!c->was_full) return;
    c->was_full = 0;
    lua_drained(c);
    return;
  }
  __atomic_thread_fence(__ATOMIC_SEQ_CST); /* pairs with the one in sl_conn_backlogged */
  if (__atomic_load_n(&c->want_drain, __ATOMIC_RELAXED) && __atomic_exchange_n(&c->want_drain, 0, __ATOMIC_RELAXED))
    to_lua(c, OP_DRAINED, NULL, 0);
}

/* The loop thread's view of what waits for a connection on an I/O thread: in
 * flight to it, then queued there. received is read first, so a message the
 * home has taken is counted at least once, never missed. */
static uint64_t backlog(sl_conn *c) {
  uint64_t rcv = __atomic_load_n(&c->received, __ATOMIC_ACQUIRE);
  return c->posted - rcv + __atomic_load_n(&c->queued, __ATOMIC_RELAXED);
}

int sl_conn_backlogged(sl_conn *c) {
  if (local(c)) return c->queued >= c->hwm;
  if (backlog(c) < c->hwm) return 0;
  __atomic_store_n(&c->want_drain, 1, __ATOMIC_RELAXED);
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
  /* Asked; if the home wrote in between, it may not have seen the ask: look again. */
  return backlog(c) >= c->hwm;
}

/* Published events are coalesced (sl_conn_queue): what a home queues for a
 * connection during one turn of its loop goes out in one writev just before
 * the loop waits again (its end of turn calls flush_home). A connection
 * already over its high-water mark is written at once, so a burst never waits
 * in user space. On the loop thread, everything else (heads, a stream's own
 * events, raw writes) is made for one connection and goes out at once: held to
 * the end of a turn, such buffers of many new connections would be freed as
 * holes between long-lived allocations. */
static void mark_dirty(sl_conn *c) {
  sl_home *h = c->home;
  if (c->dirty) return;
  if (h->ndirty == h->capdirty) {
    size_t cap = h->capdirty ? h->capdirty * 2 : 256;
    sl_conn **d = realloc(h->dirty, cap * sizeof *d);
    if (!d) {
      flush(c);
      return;
    }
    h->dirty = d;
    h->capdirty = cap;
  }
  h->dirty[h->ndirty++] = c;
  c->dirty = (uint32_t)h->ndirty;
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
 * negative error. */
static ssize_t write_out(sl_conn *c) {
  int fd = c->fd;
  if (fd < 0) return UV_EBADF;
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
static void apply(sl_conn *c, sl_home *h, ssize_t w) {
  if (w < 0) {
    sl_debug("conn %llu: write failed: %s", (unsigned long long)c->id, uv_strerror((int)w));
    io_lost(c, SL_END_CLIENT);
    return;
  }
  set_queued(c, c->queued - (size_t)w);
  sl_io_count(&h->bytes_sent, (uint64_t)w);
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
    io_lost(c, 0);
  }
}

static void flush(sl_conn *c) { apply(c, c->home, write_out(c)); }

/* The reference of the fan-out just handled goes once its last OP_MORE is. */
static void fanout_done(sl_home *h) {
  if (!h->fanout) return;
  sl_buf_unref(h->fanout);
  h->fanout = NULL;
}

/* The end of a home's turn: writes out every connection queued for during it. */
static void flush_home(sl_home *h) {
  fanout_done(h);
  /* Resuming a generator below may queue more (and mark more connections): the
   * count is read again after each one, so they go out in this same call. */
  for (size_t i = 0; i < h->ndirty; i++) {
    sl_conn *c = h->dirty[i];
    if (!c) continue;
    c->dirty = 0;
    if (c->io_closing || c->inflight) continue;
    if (c->qlen) apply(c, h, write_out(c));
    after_write(c, h);
  }
  h->ndirty = 0;
  if (h->capdirty > 1024) { /* not kept at the size of a burst */
    free(h->dirty);
    h->dirty = NULL;
    h->capdirty = 0;
  }
}

void sl_conn_flush_all(sl_server *srv) { sl_io_end_turn(srv->homes[0]); }

static int io_enqueue(sl_conn *c, sl_buf *b, int coalesce) {
  if (c->io_closing || c->io_ending) return -EPIPE;
  size_t limit = c->home->lim.queue_limit;
  /* What waits only for the end of the turn goes out first: the limit is for a client that does not read. */
  if (c->queued > 0 && c->queued + b->len > limit && !c->inflight) {
    flush(c);
    if (c->io_closing) return -EPIPE;
  }
  if (c->queued > 0 && c->queued + b->len > limit) {
    sl_warn("conn %llu: closed as a slow consumer (%zu bytes queued)", (unsigned long long)c->id, c->queued);
    sl_io_count(&c->home->slow_disconnects, 1);
    io_lost(c, SL_END_SLOW);
    return -ENOBUFS;
  }
  if (!c->q) {
    c->q = c->qin;
    c->qcap = SL_QIN;
  } else if (c->qlen == c->qcap) {
    unsigned cap = c->qcap * 2;
    int inner = c->q == c->qin;
    sl_buf **nq = inner ? malloc(cap * sizeof *nq) : realloc(c->q, cap * sizeof *nq);
    if (!nq) return -ENOMEM;
    if (inner) memcpy(nq, c->qin, c->qlen * sizeof *nq);
    c->q = nq;
    c->qcap = cap;
  }
  c->q[c->qlen++] = sl_buf_ref(b);
  set_queued(c, c->queued + b->len);
  c->wrote = 1;
  if (!c->inflight) {
    if (!coalesce || c->queued >= c->hwm) flush(c);
    else mark_dirty(c);
  }
  return c->io_closing ? -EPIPE : 0;
}

int sl_conn_io_write(sl_conn *c, sl_buf *b) { return io_enqueue(c, b, 0); }

/* Bytes the Lua half posted arrive at an I/O thread: b (NULL: nothing to
 * queue) goes in the queue, and `posted` bytes count as received. */
static void io_take(sl_conn *c, sl_buf *b, size_t posted) {
  if (b && io_enqueue(c, b, 1) == -ENOMEM) {
    sl_warn("conn %llu: closed: out of memory for its queue", (unsigned long long)c->id);
    io_lost(c, SL_END_ERROR);
  }
  __atomic_store_n(&c->received, c->received + posted, __ATOMIC_RELEASE);
}

/* ---- write path (the Lua half's) ---- */

/* What the script writes itself to a connection on an I/O thread: a client
 * over queue_limit is told of at once, as on the loop thread (and closed as
 * slow; 1). The thread judges its queue too, exactly, after trying to write it
 * out: here a client counts as slow only when more than its high-water mark
 * waits already. */
static int remote_overflow(sl_conn *c, size_t len) {
  uint64_t waiting = backlog(c);
  if (waiting <= c->hwm || waiting + len <= c->srv->cfg.queue_limit) return 0;
  sl_warn("conn %llu: closed as a slow consumer (%llu bytes queued)", (unsigned long long)c->id,
          (unsigned long long)waiting);
  sl_io_count(&c->srv->homes[0]->slow_disconnects, 1);
  sl_conn_ended(c, SL_END_SLOW);
  sl_conn_close(c);
  return 1;
}

/* Queues b for the connection: at once on the loop thread; by message (and
 * then at the end of the thread's turn) on an I/O thread. */
static int send_buf(sl_conn *c, sl_buf *b, int coalesce) {
  if (c->closing || c->ending) return -EPIPE;
  if (local(c)) {
    c->bytes_sent += b->len;
    return io_enqueue(c, b, coalesce);
  }
  /* A publish is judged by the thread alone (a slow subscriber is closed there). */
  if (!coalesce && remote_overflow(c, b->len)) return -ENOBUFS;
  c->bytes_sent += b->len;
  c->posted += b->len;
  /* The subscribers of one thread share one reference and one run of
   * messages: no atomic operation per subscriber here. */
  sl_home *h0 = c->srv->homes[0];
  sl_msg *last = sl_io_last(h0, c->home->index);
  if (coalesce && last && last->p == b && (last->op == OP_WRITE || last->op == OP_MORE))
    must_post(h0, c->home->index, (sl_msg){c, b, 0, OP_MORE});
  else
    to_home(c, OP_WRITE, sl_buf_ref(b), 0);
  return 0;
}

/* An event's fields on their way to the thread that frames them. */
typedef struct raw_event {
  size_t len, idlen, evlen;
  long long retry;
  uint8_t has_id, has_ev;
} raw_event;

int sl_conn_event(sl_conn *c, const char *data, size_t len, const char *id, size_t idlen, const char *ev,
                  size_t evlen, long long retry) {
  if (c->closing || c->ending) return -EPIPE;
  if (local(c)) {
    sl_buf *b = sl_sse_frame(data, len, id, idlen, ev, evlen, retry);
    int r = b ? sl_conn_write(c, b) : -ENOMEM;
    sl_buf_unref(b);
    return r;
  }
  raw_event h = {len, id ? idlen : 0, ev ? evlen : 0, retry, id != NULL, ev != NULL};
  sl_buf *p = sl_buf_new(sizeof h + h.len + h.idlen + h.evlen);
  if (!p) return -ENOMEM;
  memcpy(p->data, &h, sizeof h);
  memcpy(p->data + sizeof h, data, h.len);
  if (h.idlen) memcpy(p->data + sizeof h + h.len, id, h.idlen);
  if (h.evlen) memcpy(p->data + sizeof h + h.len + h.idlen, ev, h.evlen);
  if (remote_overflow(c, p->len)) {
    sl_buf_unref(p);
    return -ENOBUFS;
  }
  /* Counted as posted; the thread adds what framing added (framed_extra). */
  c->bytes_sent += p->len;
  c->posted += p->len;
  to_home(c, OP_EVENT, p, 0);
  return 0;
}

/* The thread frames an event from the loop thread and queues it. */
static void io_event(sl_conn *c, sl_buf *p) {
  raw_event h;
  memcpy(&h, p->data, sizeof h);
  const char *data = p->data + sizeof h;
  sl_buf *b = c->io_closing || c->io_ending
                  ? NULL
                  : sl_sse_frame(data, h.len, h.has_id ? data + h.len : NULL, h.idlen,
                                 h.has_ev ? data + h.len + h.idlen : NULL, h.evlen, h.retry);
  if (b) {
    __atomic_store_n(&c->framed_extra, c->framed_extra + b->len - p->len, __ATOMIC_RELAXED);
  } else if (!c->io_closing && !c->io_ending) {
    sl_warn("conn %llu: closed: out of memory for an event", (unsigned long long)c->id);
    io_lost(c, SL_END_ERROR);
  }
  /* The queue grows by the framed bytes, received by what was posted: the
   * loop thread's view of the backlog stays whole. */
  io_take(c, b, p->len);
  sl_buf_unref(b);
  sl_buf_unref(p);
}

int sl_conn_write(sl_conn *c, sl_buf *b) { return send_buf(c, b, 0); }
int sl_conn_queue(sl_conn *c, sl_buf *b) { return send_buf(c, b, 1); }

int sl_conn_respond(sl_conn *c, int status, sl_sb *headers, const char *body, size_t len) {
  if (c->closing || c->ending) return -EPIPE;
  if (c->state != SL_CS_BUSY) return -EALREADY;
  sl_sb sb;
  sl_sb_init(&sb, 256 + (c->is_head ? 0 : len));
  sl_http_status_line(&sb, status, headers ? headers->b : NULL);
  if (headers && headers->b) sl_sb_add(&sb, headers->b->data, headers->b->len);
  int no_body = status == 204 || status == 304 || (status >= 100 && status < 200);
  if (!no_body) {
    sl_sb_add(&sb, "Content-Length: ", 16);
    sl_sb_addu(&sb, len);
    sl_sb_add(&sb, "\r\n", 2);
  }
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
  /* Sized to fit (status line, headers, the close, a retry: line): a stream's
   * head lives until its home writes it, and a larger block would leave a
   * larger hole between the blocks that live on. */
  sl_sb_init(&sb, 64 + (headers && headers->b ? headers->b->len : 0) + 64);
  sl_http_status_line(&sb, status, headers ? headers->b : NULL);
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
    /* A copy, not a shrink in place: the whole buffer goes back for the next
     * request to take (with I/O threads, the thread that parses it), where a
     * shrink would leave its tail as a hole between long-lived blocks. */
    char *h = malloc(q->url_len ? q->url_len : 1);
    if (h) {
      memcpy(h, q->head, q->url_len);
      free(q->head);
      q->head = h;
    }
    q->head_len = q->head_cap = q->url_len;
  }
  uint64_t ms = heartbeat > 0 ? sl_secs_ms(heartbeat) : 0;
  if (ms == SL_NEVER) ms = 0;
  else if (heartbeat > 0 && !ms) ms = 1;
  c->bytes_sent += b->len;
  if (!local(c)) c->posted += b->len;
  to_home(c, OP_STREAM, b, ms);
  return c->closing ? -EPIPE : 0;
}

/* The home's start of a stream: no more requests; the head, then heartbeats. */
static void io_stream(sl_conn *c, sl_buf *head, uint64_t ms) {
  c->io_state = SL_CS_STREAM;
  free(c->in);
  c->in = NULL;
  c->inlen = c->incap = 0;
  if (local(c)) io_enqueue(c, head, 0);
  else io_take(c, head, head->len);
  sl_buf_unref(head);
  if (c->io_closing || !ms) return;
  uv_timer_start(&c->timer, on_heartbeat, ms, ms);
  /* A peer that vanished without a FIN never acknowledges the heartbeats: let the
   * kernel fail the connection once they go unacknowledged this long. */
  uv_os_fd_t fd;
  double span = (double)ms * 2 + 1000;
  unsigned int uto = span < 4e9 ? (unsigned int)span : 4000000000u;
  if (uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0) setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &uto, sizeof uto);
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
  /* Only a replay (a subscriber with held events) pauses for room. */
  return local(c) ? c->queued >= c->hwm : s->h ? sl_conn_backlogged(c) : 0;
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
  to_home(c, OP_END, NULL, 0);
}

static void io_end(sl_conn *c) {
  if (c->io_closing || c->io_ending) return;
  c->io_ending = 1;
  if (c->qlen == 0) io_lost(c, 0);
}

/* ---- close path ---- */

static void free_conn(sl_conn *c) {
  for (unsigned i = 0; i < c->qlen; i++) sl_buf_unref(c->q[i]);
  if (c->q != c->qin) free(c->q);
  free(c->in);
  sl_req_free(c->req);
  if (!c->data_held) free(c->data); /* a holding state let go in its close hooks */
  free(c);
}

/* The Lua half hears its I/O half is gone (handles closed): close hooks run,
 * then the home frees it, after every message sent to it before. */
static void lua_gone(sl_conn *c, int why) {
  sl_server *srv = c->srv;
  if (!c->closing) {
    if (why) sl_conn_ended(c, why);
    if (why == SL_END_SLOW && c->sub) srv->hub.dropped_slow++; /* as a refused delivery counts on the loop thread */
    sl_conn_close(c);
  }
  if (c->state == SL_CS_STREAM && !local(c)) access_log(c);
  if (srv->hooks.closed) srv->hooks.closed(c);
  /* Found by id until here, so close hooks can still read conn.data. */
  sl_server_untrack(srv, c);
  if (!local(c)) srv->io_pending--;
  to_home(c, OP_FREE, NULL, 0);
  sl_server_drained(srv);
}

static void on_closed(uv_handle_t *h) {
  sl_conn *c = h->data;
  if (--c->pending_closes) return;
  to_lua(c, OP_GONE, NULL, c->io_why);
}

static void io_close(sl_conn *c, int why) {
  if (c->io_closing) return;
  c->io_closing = 1;
  c->io_why = (uint8_t)why;
  if (c->dirty) { /* it will not be flushed: its slot is left empty */
    c->home->dirty[c->dirty - 1] = NULL;
    c->dirty = 0;
  }
  c->pending_closes = 2;
  c->fd = -1; /* its number may be another connection's as soon as it closes */
  uv_close((uv_handle_t *)&c->tcp, on_closed);
  uv_close((uv_handle_t *)&c->timer, on_closed);
}

void sl_conn_close(sl_conn *c) {
  if (c->closing) return;
  c->closing = 1;
  /* On an I/O thread, the line waits until the thread is done with it (lua_gone). */
  if (c->state == SL_CS_STREAM && local(c)) access_log(c);
  /* A request closed before its answer still gets its line: 499 (as nginx
   * logs it) when the client left, a half-close while the handler waits
   * included; 503 when the gateway closed it (a shutdown). */
  if (c->state == SL_CS_BUSY && c->req) {
    c->status = c->ended == SL_END_CLIENT ? 499 : 503;
    c->bytes_sent = 0;
    access_log(c);
  }
  sl_server *srv = c->srv;
  unlist(c);
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
  to_home(c, OP_CLOSE, NULL, 0);
  sl_server_drained(srv);
}

/* ---- read path (the home's) ---- */

static void parse_error(sl_conn *c) {
  int status = c->err_status ? c->err_status : 400;
  sl_debug("conn %llu: bad request (%d): %s", (unsigned long long)c->id, status,
           c->err_status ? "limit" : llhttp_get_error_reason(&c->parser));
  if (c->io_state != SL_CS_HEAD) {
    io_lost(c, 0);
    return;
  }
  c->io_state = SL_CS_BUSY;
  uv_timer_stop(&c->timer);
  sl_buf *b = sl_http_error(status);
  if (b) io_enqueue(c, b, 0);
  to_lua(c, OP_BAD, (void *)(uintptr_t)(b ? b->len : 0), (uint64_t)status);
  sl_buf_unref(b);
  io_end(c);
}

/* Parses p; returns the bytes used, or -1 after a parse error (the connection is ending). */
static ssize_t feed(sl_conn *c, const char *p, size_t n) {
  llhttp_errno_t e = sl_http_execute(c, p, n);
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

/* A whole request was read: the Lua half has it until it lets the home read on (OP_NEXT). */
static void io_dispatch(sl_conn *c) {
  c->msg_done = 0;
  c->io_state = SL_CS_BUSY;
  uv_timer_stop(&c->timer);
  to_lua(c, OP_DISPATCH, NULL, 0);
}

/* Serves the requests waiting in c->in, one at a time. */
static void conn_process(sl_conn *c) {
  if (c->processing) return;
  c->processing = 1;
  while (!c->io_closing && !c->io_ending && c->io_state == SL_CS_HEAD) {
    if (c->msg_done) {
      io_dispatch(c);
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
  if (!c->reading && !c->io_closing && c->inlen < SL_MAX_PENDING_IN / 2) {
    c->reading = 1;
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
  }
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  sl_conn *c = s->data;
  if (n == 0) return;
  if (n < 0) {
    /* The client left (or the socket failed): nothing more can be sent. */
    io_lost(c, SL_END_CLIENT);
    return;
  }
  if (c->io_closing || c->io_ending) return;
  if (c->io_state == SL_CS_STREAM) return; /* a stream takes no more requests: read only to see EOF */
  size_t len = (size_t)n;
  const char *p = buf->base;
  if (c->io_state == SL_CS_HEAD && c->inlen == 0 && !c->msg_done) {
    ssize_t used = feed(c, p, len);
    if (used < 0) return;
    p += used;
    len -= (size_t)used;
  }
  if (len && keep(c, p, len)) {
    io_lost(c, 0);
    return;
  }
  conn_process(c);
}

/* The Lua half let go of the request: read the next one. */
static void io_next(sl_conn *c) {
  if (c->io_closing || c->io_ending) return;
  c->io_state = SL_CS_HEAD;
  start_header_timer(c);
  conn_process(c);
}

/* ---- the Lua half's side of a request ---- */

static void lua_dispatch(sl_conn *c) {
  if (c->closing || c->ending) return;
  c->state = SL_CS_BUSY;
  c->keepalive = llhttp_should_keep_alive(&c->parser) ? 1 : 0;
  c->is_head = c->parser.method == HTTP_HEAD;
  c->bytes_sent = 0;
  c->status = 0;
  if (!c->srv->vm || c->srv->stopping) {
    c->keepalive = 0;
    sl_conn_respond(c, 503, NULL, "Service Unavailable\n", 20);
    sl_conn_task_done(c, 1);
    return;
  }
  if (c->srv->hooks.dispatch) c->srv->hooks.dispatch(c);
  else sl_conn_task_done(c, 0); /* nothing to serve it: 500 */
}

/* The home answered a bad request itself (and closes once it is written). */
static void lua_bad(sl_conn *c, int status, size_t bytes) {
  if (c->closing) return;
  c->state = SL_CS_RESPONDED;
  c->status = status;
  c->bytes_sent = bytes;
  if (c->req) access_log(c);
  c->ending = 1;
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
  to_home(c, OP_NEXT, NULL, 0);
}

/* ---- messages, homes ---- */

static void on_message(sl_home *h, sl_msg *m) {
  sl_conn *c = m->c;
  sl_buf *fan = h->fanout;
  if (m->op == OP_MORE) {
    io_take(c, fan, fan->len);
    return;
  }
  fanout_done(h);
  switch (m->op) {
  case OP_ACCEPT: io_accept(c, (int)m->n); break;
  case OP_WRITE:
    h->fanout = fan = m->p;
    io_take(c, fan, fan->len);
    break;
  case OP_STREAM: io_stream(c, m->p, m->n); break;
  case OP_EVENT: io_event(c, m->p); break;
  case OP_NEXT: io_next(c); break;
  case OP_END: io_end(c); break;
  case OP_CLOSE: io_close(c, 0); break;
  case OP_FREE: free_conn(c); break;
  case OP_CONFIG:
    h->lim = *(sl_io_limits *)m->p;
    free(m->p);
    break;
  case OP_DISPATCH: lua_dispatch(c); break;
  case OP_BAD: lua_bad(c, (int)m->n, (size_t)(uintptr_t)m->p); break;
  case OP_GONE: lua_gone(c, (int)m->n); break;
  case OP_DRAINED:
    if (!c->closing && !sl_conn_backlogged(c)) lua_drained(c);
    break;
  }
}

int sl_conn_homes(sl_server *srv, int n) {
  int r = sl_io_start(srv, srv->loop, n, on_message, flush_home, &srv->homes);
  if (!r) sl_conn_config(srv);
  return r;
}

void sl_conn_config(sl_server *srv) {
  sl_io_limits lim = {srv->cfg.max_header, srv->cfg.max_body, srv->cfg.queue_limit, srv->cfg.header_timeout};
  sl_home *h0 = srv->homes[0];
  h0->lim = lim;
  for (int i = 1; i < h0->nhomes; i++) {
    sl_io_limits *copy = malloc(sizeof *copy);
    if (!copy) {
      sl_error("io: out of memory: thread %d keeps its limits", i);
      continue;
    }
    *copy = lim;
    must_post(h0, i, (sl_msg){NULL, copy, 0, OP_CONFIG});
  }
}

void sl_conn_stop_homes(sl_server *srv) {
  sl_io_stop(srv->homes);
  srv->homes = NULL;
  while (nspare) free(spare_tcp[--nspare]);
  free(spare_tcp);
  spare_tcp = NULL;
  capspare = 0;
}

void sl_conn_totals(sl_server *srv, uint64_t *bytes_sent, uint64_t *heartbeats, uint64_t *slow) {
  *bytes_sent = *heartbeats = *slow = 0;
  sl_home **all = srv->homes;
  for (int i = 0; all && i < all[0]->nhomes; i++) {
    *bytes_sent += sl_io_read(&all[i]->bytes_sent);
    *heartbeats += sl_io_read(&all[i]->heartbeats);
    *slow += sl_io_read(&all[i]->slow_disconnects);
  }
}
