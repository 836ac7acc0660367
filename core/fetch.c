/* fetch: see fetch.h.
 *
 * libcurl's multi-socket interface tells us which sockets to watch
 * (on_socket: a uv_poll_t each) and when to call it back for its own timeouts
 * (on_curl_timer: one uv_timer_t); both hand control back with
 * curl_multi_socket_action, after which finished transfers are collected
 * (collect). Callbacks into the caller run only from collect, never from
 * inside a libcurl callback, so they may start or cancel requests. */
#include "fetch.h"
#include <curl/curl.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#define HOST_BUCKETS 64
/* Easy handles kept for reuse: making one per request is a good part of a
 * request's cost (curl_easy_reset keeps the caches, the connections are the multi's). */
#define SPARE_EASY 64
/* A response's header lines are kept up to this (libcurl refuses one line over 100 KiB itself). */
#define MAX_HEAD (256 * 1024)
/* Transfers in flight on one multi handle before the next one takes new
 * transfers. libcurl looks for a connection to reuse by walking every
 * connection to the host, busy ones included: with a thousand transfers in
 * flight on one handle that walk was a third of a request's instructions. */
#define LANE_LOAD 64

/* A URL parsed once and shared by the transfers to it: libcurl only reads
 * the handle it is given (CURLOPT_CURLU; each transfer works on its own copy),
 * and parsing it again for every request cost 5,000 instructions. The last
 * URL_CACHE URLs are kept. */
#define URL_CACHE 16
typedef struct url_ref {
  CURLU *u;
  char *host;
  unsigned refs;               /* the cache's own while it keeps it, and each request's */
  size_t len;
  char text[];                 /* the URL as the script gave it */
} url_ref;

typedef struct host_count {
  struct host_count *next;
  unsigned n;
  char name[];
} host_count;

/* One multi handle, with its timer and its own kept connections. */
typedef struct lane {
  struct sl_fetch *f;
  CURLM *multi;
  uv_timer_t timer;
  unsigned in_flight;
  struct lane *next_due;       /* the other lanes with transfers to collect (f->due) */
  unsigned due : 1;            /* on that list */
} lane;

struct sl_fetch {
  uv_loop_t *loop;
  lane **lanes;                /* made as the transfers in flight need them, the first with the fetcher */
  unsigned nlanes;
  lane *due;                   /* lanes whose finished transfers are to be collected */
  sl_fetch_req *reqs;          /* every request in flight */
  sl_fetch_req *notify;        /* streams with something new for their callers */
  host_count *hosts[HOST_BUCKETS];
  unsigned max_concurrent, max_per_host;
  unsigned closing : 1, collecting : 1, no_proxy_env : 1;
  unsigned open_handles;       /* the timers and the polls still to close */
  struct sock_ctx *socks;      /* every poll handle open */
  struct sock_ctx **by_fd;     /* the polls, by descriptor */
  size_t nby_fd;
  CURL *spare[SPARE_EASY];
  unsigned nspare;
  url_ref *urls[URL_CACHE];    /* the URLs parsed last (NULL: a free slot) */
  unsigned next_url;           /* the slot the next new URL takes */
  sl_fetch_stats st;
};

struct sl_fetch_req {
  sl_fetch *f;
  lane *lane;
  CURL *easy;
  struct curl_slist *headers;
  url_ref *url;                /* parsed once: libcurl is given it (CURLOPT_CURLU) instead of parsing the text again */
  sl_fetch_cb cb;
  void *arg;
  host_count *host;
  sl_fetch_req *prev, *next;
  uint64_t started;
  size_t max_body;
  int too_large;
  /* streams */
  size_t hwm;                  /* 0: not a stream */
  unsigned head_done : 1, paused : 1, ended : 1, notifying : 1, in_flight : 1, follow : 1;
  const char *end_kind;
  sl_fetch_req *next_notify;
  char *head, *body;
  size_t head_len, head_cap, body_len, body_cap;
  char err[CURL_ERROR_SIZE];
};

/* A socket libcurl has us watch. A connection's socket that we opened
 * (on_open) keeps its poll handle, and its place in by_fd, from one transfer
 * to the next until libcurl closes it (on_close): a kept connection reused
 * costs no poll set-up (libuv's check of the descriptor, an ioctl) and no
 * epoll add and delete. Between transfers (idle) the poll watches for
 * reading only; what comes then (the server closing) stops it, and libcurl
 * finds the connection dead when it next looks.
 * Only a connected socket idles so: libcurl 7.88 closes a socket whose
 * connect did not finish without calling on_close, and a poll left on it
 * would outlive it (and meet the next descriptor of that number). libcurl
 * asks to read a socket only once it is connected (before, it waits to
 * write), so that is the mark. */
typedef struct sock_ctx {
  uv_poll_t poll;
  sl_fetch *f;
  lane *lane;                  /* whose connection it is */
  curl_socket_t fd;
  struct sock_ctx *prev, *next;
  int events;                  /* what the poll watches, 0 if stopped */
  unsigned kept : 1, idle : 1, connected : 1;
} sock_ctx;

static void maybe_free(sl_fetch *f) {
  if (f->closing && f->open_handles == 0) free(f);
}

static void on_poll_closed(uv_handle_t *h) {
  sock_ctx *ctx = h->data;
  sl_fetch *f = ctx->f;
  free(ctx);
  f->open_handles--;
  maybe_free(f);
}

static void on_timer_closed(uv_handle_t *h) {
  lane *l = h->data;
  sl_fetch *f = l->f;
  free(l);
  f->open_handles--;
  maybe_free(f);
}

/* ---- hosts: how many requests each has in flight ---- */

static unsigned host_hash(const char *s) {
  unsigned h = 2166136261u;
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 16777619u;
  return h % HOST_BUCKETS;
}

static void url_unref(url_ref *ur) {
  if (!ur || --ur->refs) return;
  curl_url_cleanup(ur->u);
  curl_free(ur->host);
  free(ur);
}

/* The parsed URL of text (a reference the caller drops with url_unref), or
 * NULL with *bad set if it is malformed or not http(s) (else out of memory). */
static url_ref *url_get(sl_fetch *f, const char *text, int *bad) {
  size_t len = strlen(text);
  *bad = 0;
  for (unsigned i = 0; i < URL_CACHE; i++) {
    url_ref *ur = f->urls[i];
    if (ur && ur->len == len && memcmp(ur->text, text, len) == 0) {
      ur->refs++;
      return ur;
    }
  }
  url_ref *ur = calloc(1, sizeof *ur + len + 1);
  if (!ur || !(ur->u = curl_url())) {
    free(ur);
    return NULL;
  }
  memcpy(ur->text, text, len + 1);
  ur->len = len;
  ur->refs = 1;
  char *scheme = NULL;
  *bad = curl_url_set(ur->u, CURLUPART_URL, text, 0) != CURLUE_OK ||
         curl_url_get(ur->u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
         curl_url_get(ur->u, CURLUPART_HOST, &ur->host, 0) != CURLUE_OK ||
         (strcasecmp(scheme, "http") != 0 && strcasecmp(scheme, "https") != 0);
  curl_free(scheme);
  if (*bad) {
    url_unref(ur);
    return NULL;
  }
  unsigned slot = f->next_url;
  f->next_url = (slot + 1) % URL_CACHE;
  url_unref(f->urls[slot]);
  f->urls[slot] = ur;
  ur->refs++;
  return ur;
}

static host_count *host_get(sl_fetch *f, const char *name) {
  host_count **b = &f->hosts[host_hash(name)];
  for (host_count *h = *b; h; h = h->next)
    if (strcmp(h->name, name) == 0) return h;
  size_t n = strlen(name);
  host_count *h = calloc(1, sizeof *h + n + 1);
  if (!h) return NULL;
  memcpy(h->name, name, n + 1);
  h->next = *b;
  *b = h;
  return h;
}

static void host_put(sl_fetch *f, host_count *hc) {
  if (!hc || --hc->n) return;
  for (host_count **p = &f->hosts[host_hash(hc->name)]; *p; p = &(*p)->next) {
    if (*p == hc) {
      *p = hc->next;
      free(hc);
      return;
    }
  }
}

/* ---- the loop's side of libcurl ---- */

static void collect(lane *l);

static void on_poll(uv_poll_t *p, int status, int events) {
  sock_ctx *ctx = p->data;
  if (ctx->idle) {
    /* No transfer wants it: the server closed it or sent what nobody asked for. */
    uv_poll_stop(&ctx->poll);
    ctx->events = 0;
    return;
  }
  int flags = 0, running;
  if (status < 0) flags = CURL_CSELECT_ERR;
  if (events & UV_READABLE) flags |= CURL_CSELECT_IN;
  if (events & UV_WRITABLE) flags |= CURL_CSELECT_OUT;
  /* ctx may be gone after this: libcurl can remove the socket from inside. */
  lane *l = ctx->lane;
  curl_multi_socket_action(l->multi, ctx->fd, flags, &running);
  collect(l);
}

static void close_sock(sock_ctx *ctx) {
  sl_fetch *f = ctx->f;
  if (ctx->prev) ctx->prev->next = ctx->next;
  else f->socks = ctx->next;
  if (ctx->next) ctx->next->prev = ctx->prev;
  if ((size_t)ctx->fd < f->nby_fd && f->by_fd[ctx->fd] == ctx) f->by_fd[ctx->fd] = NULL;
  uv_poll_stop(&ctx->poll);
  uv_close((uv_handle_t *)&ctx->poll, on_poll_closed);
}

/* A poll for s, found by its descriptor from then on (libcurl is never given
 * it: a socket closed behind our back would leave it in libcurl's hands). */
static sock_ctx *sock_new(lane *l, curl_socket_t s) {
  sl_fetch *f = l->f;
  if (s < 0) return NULL;
  if ((size_t)s >= f->nby_fd) {
    size_t n = f->nby_fd ? f->nby_fd : 64;
    while (n <= (size_t)s) n *= 2;
    sock_ctx **b = realloc(f->by_fd, n * sizeof *b);
    if (!b) return NULL;
    memset(b + f->nby_fd, 0, (n - f->nby_fd) * sizeof *b);
    f->by_fd = b;
    f->nby_fd = n;
  }
  sock_ctx *ctx = calloc(1, sizeof *ctx);
  if (!ctx) return NULL;
  if (uv_poll_init_socket(f->loop, &ctx->poll, s)) {
    free(ctx);
    return NULL;
  }
  ctx->f = f;
  ctx->lane = l;
  ctx->fd = s;
  ctx->poll.data = ctx;
  ctx->next = f->socks;
  if (f->socks) f->socks->prev = ctx;
  f->socks = ctx;
  f->open_handles++;
  f->by_fd[s] = ctx;
  return ctx;
}

/* libuv's uv_poll_start stops and starts the descriptor's epoll entry even
 * for the same events: only a change is passed on. */
static void sock_watch(sock_ctx *ctx, int ev) {
  if (ev == ctx->events) return;
  ctx->events = ev;
  uv_poll_start(&ctx->poll, ev, on_poll);
}

static int on_socket(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp) {
  (void)easy;
  (void)socketp;
  lane *l = userp;
  sl_fetch *f = l->f;
  sock_ctx *ctx = (size_t)s < f->nby_fd ? f->by_fd[s] : NULL;
  if (what == CURL_POLL_REMOVE) {
    if (ctx && ctx->kept && ctx->connected) {
      ctx->idle = 1;
      sock_watch(ctx, UV_READABLE);
    } else if (ctx) {
      close_sock(ctx);
    }
    return 0;
  }
  if (!ctx && !(ctx = sock_new(l, s))) return -1;
  ctx->idle = 0;
  ctx->lane = l;
  int ev = 0;
  if (what & CURL_POLL_IN) {
    ev |= UV_READABLE;
    ctx->connected = 1;
  }
  if (what & CURL_POLL_OUT) ev |= UV_WRITABLE;
  sock_watch(ctx, ev);
  return 0;
}

/* A connection's socket: opened here so that it is known as one (and kept, above). */
static curl_socket_t on_open(void *arg, curlsocktype purpose, struct curl_sockaddr *a) {
  lane *l = arg;
  sl_fetch *f = l->f;
  curl_socket_t s = socket(a->family, a->socktype, a->protocol);
  if (s < 0 || purpose != CURLSOCKTYPE_IPCXN) return s;
  /* One left by a socket closed without on_close (above): that socket is gone. */
  if ((size_t)s < f->nby_fd && f->by_fd[s]) close_sock(f->by_fd[s]);
  sock_ctx *ctx = sock_new(l, s);
  if (ctx) {
    ctx->kept = 1;
    ctx->idle = 1;
  }
  return s;
}

/* libcurl is done with a socket: its poll goes before the descriptor does. */
static int on_close(void *arg, curl_socket_t s) {
  sl_fetch *f = ((lane *)arg)->f;
  sock_ctx *ctx = (size_t)s < f->nby_fd ? f->by_fd[s] : NULL;
  if (ctx) close_sock(ctx);
  return close(s);
}

static void on_timeout(uv_timer_t *t) {
  lane *l = t->data;
  int running;
  curl_multi_socket_action(l->multi, CURL_SOCKET_TIMEOUT, 0, &running);
  collect(l);
}

static int on_curl_timer(CURLM *multi, long ms, void *userp) {
  (void)multi;
  lane *l = userp;
  /* Never call back into libcurl from here: a 0 ms timeout runs from the loop. */
  if (ms < 0) uv_timer_stop(&l->timer);
  else uv_timer_start(&l->timer, on_timeout, (uint64_t)ms, 0);
  return 0;
}

static lane *lane_new(sl_fetch *f) {
  lane **ls = realloc(f->lanes, (f->nlanes + 1) * sizeof *ls);
  if (!ls) return NULL;
  f->lanes = ls;
  lane *l = calloc(1, sizeof *l);
  if (!l) return NULL;
  if (!(l->multi = curl_multi_init())) {
    free(l);
    return NULL;
  }
  l->f = f;
  uv_timer_init(f->loop, &l->timer);
  l->timer.data = l;
  f->open_handles++;
  curl_multi_setopt(l->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
  curl_multi_setopt(l->multi, CURLMOPT_SOCKETDATA, l);
  curl_multi_setopt(l->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer);
  curl_multi_setopt(l->multi, CURLMOPT_TIMERDATA, l);
  /* Several HTTP/2 requests to one host share its connection. */
  curl_multi_setopt(l->multi, CURLMOPT_PIPELINING, CURLPIPE_MULTIPLEX);
  /* As many kept connections as it has transfers: libcurl's own bound (four
   * per transfer in flight now) closes kept connections each time fewer are
   * in flight, and opens new ones when more are again. */
  curl_multi_setopt(l->multi, CURLMOPT_MAXCONNECTS, (long)LANE_LOAD);
  ls[f->nlanes++] = l;
  return l;
}

/* The lane a new transfer goes on: the first with room, so that a few at a
 * time all share the first lane's connections. */
static lane *lane_for(sl_fetch *f) {
  for (unsigned i = 0; i < f->nlanes; i++)
    if (f->lanes[i]->in_flight < LANE_LOAD) return f->lanes[i];
  return lane_new(f);
}

sl_fetch *sl_fetch_new(uv_loop_t *loop) {
  /* Thread-safe in the libcurl Debian ships (its "threadsafe" feature); the first call sets up TLS. */
  if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) return NULL;
  sl_fetch *f = calloc(1, sizeof *f);
  if (!f) return NULL;
  f->loop = loop;
  if (!lane_new(f)) {
    free(f->lanes);
    free(f);
    return NULL;
  }
  sl_fetch_limits(f, 1024, 256);
  /* libcurl reads the proxy variables for each transfer: once here is enough
   * to know that none is set (the environment does not change under us). */
  static const char *const proxy_vars[] = {"http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY",
                                           "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"};
  f->no_proxy_env = 1;
  for (size_t i = 0; i < sizeof proxy_vars / sizeof *proxy_vars; i++)
    if (getenv(proxy_vars[i])) f->no_proxy_env = 0;
  return f;
}

void sl_fetch_limits(sl_fetch *f, unsigned max_concurrent, unsigned max_per_host) {
  f->max_concurrent = max_concurrent;
  f->max_per_host = max_per_host;
}

const sl_fetch_stats *sl_fetch_get_stats(const sl_fetch *f) { return &f->st; }

/* ---- one request ---- */

/* A stream has news for its caller: told from collect, outside libcurl. */
static void notify(sl_fetch_req *r) {
  if (!r->hwm || r->notifying) return;
  r->notifying = 1;
  r->next_notify = r->f->notify;
  r->f->notify = r;
}

/* Whether a blank line ends the head the caller gets: not a 1xx, and not a
 * redirect that will be followed. */
static int final_head(sl_fetch_req *r) {
  long code = 0;
  curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &code);
  if (code < 200) return 0;
  if (r->follow && code >= 300 && code < 400) {
    char *loc = NULL;
    curl_easy_getinfo(r->easy, CURLINFO_REDIRECT_URL, &loc);
    if (loc) return 0;
  }
  return 1;
}

static size_t on_header(char *p, size_t size, size_t n, void *arg) {
  sl_fetch_req *r = arg;
  size_t len = size * n;
  if (r->hwm && (len == 2 || len == 1) && (p[0] == '\r' || p[0] == '\n') && final_head(r)) {
    r->head_done = 1;
    notify(r);
  }
  /* Each response (redirects, 100 Continue) starts with its status line: keep the last one's. */
  if (len >= 5 && memcmp(p, "HTTP/", 5) == 0) r->head_len = 0;
  if (r->head_len + len > MAX_HEAD) {
    r->too_large = 1;
    return 0;
  }
  if (r->head_len + len > r->head_cap) {
    size_t cap = r->head_cap ? r->head_cap : 1024;
    while (cap < r->head_len + len) cap *= 2;
    char *h = realloc(r->head, cap);
    if (!h) return 0;
    r->head = h;
    r->head_cap = cap;
  }
  memcpy(r->head + r->head_len, p, len);
  r->head_len += len;
  return len;
}

static size_t on_body(char *p, size_t size, size_t n, void *arg) {
  sl_fetch_req *r = arg;
  size_t len = size * n;
  if (r->hwm) {
    /* A stream holds up to hwm bytes its caller has not taken; then it waits. */
    if (r->body_len >= r->hwm) {
      r->paused = 1;
      return CURL_WRITEFUNC_PAUSE;
    }
    r->head_done = 1;
    notify(r);
  } else if (r->body_len + len > r->max_body) {
    r->too_large = 1;
    return 0; /* ends the transfer with CURLE_WRITE_ERROR */
  }
  if (r->body_len + len > r->body_cap) {
    /* The first part's own size: most answers come in one. */
    size_t cap = r->body_cap ? r->body_cap : len;
    while (cap < r->body_len + len) cap *= 2;
    if (!r->hwm && cap > r->max_body) cap = r->max_body;
    char *b = realloc(r->body, cap);
    if (!b) return 0;
    r->body = b;
    r->body_cap = cap;
  }
  memcpy(r->body + r->body_len, p, len);
  r->body_len += len;
  r->f->st.bytes_in += len;
  return len;
}

static void req_free(sl_fetch_req *r) {
  sl_fetch *f = r->f;
  if (r->easy && f && !f->closing && f->nspare < SPARE_EASY) {
    curl_easy_reset(r->easy);
    f->spare[f->nspare++] = r->easy;
  } else {
    curl_easy_cleanup(r->easy);
  }
  curl_slist_free_all(r->headers);
  url_unref(r->url);
  free(r->head);
  free(r->body);
  free(r);
}

/* Takes r out of the transfers in flight (its easy handle leaves the multi). */
static void unlink_req(sl_fetch_req *r) {
  sl_fetch *f = r->f;
  if (!r->in_flight) return;
  r->in_flight = 0;
  if (r->notifying) {
    for (sl_fetch_req **p = &f->notify; *p; p = &(*p)->next_notify)
      if (*p == r) {
        *p = r->next_notify;
        break;
      }
    r->notifying = 0;
  }
  curl_multi_remove_handle(r->lane->multi, r->easy);
  r->lane->in_flight--;
  if (r->prev) r->prev->next = r->next;
  else f->reqs = r->next;
  if (r->next) r->next->prev = r->prev;
  host_put(f, r->host);
  f->st.in_flight--;
}

/* The small set of reasons a script sees for a libcurl result. */
static const char *kind_of(const sl_fetch_req *r, CURLcode code) {
  if (r->too_large) return "too large";
  switch (code) {
    case CURLE_OPERATION_TIMEDOUT: return "timeout";
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY: return "dns";
    case CURLE_COULDNT_CONNECT: return "connect";
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_SSL_SHUTDOWN_FAILED:
    case CURLE_SSL_ENGINE_NOTFOUND:
    case CURLE_SSL_ENGINE_SETFAILED:
    case CURLE_SSL_ENGINE_INITFAILED:
    case CURLE_USE_SSL_FAILED: return "tls";
    case CURLE_TOO_MANY_REDIRECTS: return "redirects";
    case CURLE_GOT_NOTHING:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_PARTIAL_FILE: return "closed";
    case CURLE_WEIRD_SERVER_REPLY:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
    case CURLE_BAD_CONTENT_ENCODING:
    case CURLE_UNSUPPORTED_PROTOCOL: return "protocol";
    default: return "error";
  }
}

static void finish(sl_fetch_req *r, CURLcode code, const char *kind) {
  sl_fetch *f = r->f;
  if (r->hwm) {
    /* A stream stays for its caller to read to the end: it is told. */
    long status = 0;
    curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &status);
    int failed = kind || code != CURLE_OK;
    r->end_kind = failed ? (kind ? kind : kind_of(r, code)) : NULL;
    if (failed && !r->err[0]) snprintf(r->err, sizeof r->err, "%s", kind ? kind : curl_easy_strerror(code));
    f->st.done[failed ? 0 : status >= 100 && status < 600 ? status / 100 : 0]++;
    unlink_req(r);
    r->ended = 1;
    r->head_done = 1;
    r->cb(r->arg, NULL);
    return;
  }
  unlink_req(r);
  sl_fetch_res res = {0};
  long status = 0;
  curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &status);
  res.seconds = (double)(uv_hrtime() - r->started) / 1e9;
  if (kind || code != CURLE_OK) {
    res.kind = kind ? kind : kind_of(r, code);
    res.detail = kind ? kind : r->err[0] ? r->err : curl_easy_strerror(code);
    if (res.kind[0] == 't' && strcmp(res.kind, "too large") == 0) res.detail = "the response is over max_body";
    f->st.done[0]++;
  } else {
    res.status = (int)status;
    res.head = r->head;
    res.head_len = r->head_len;
    res.body = r->body ? r->body : "";
    res.body_len = r->body_len;
    f->st.done[status >= 100 && status < 600 ? status / 100 : 0]++;
  }
  r->cb(r->arg, &res);
  req_free(r);
}

/* Tells streams of their news, then hands each finished transfer of l (and
 * of any lane that had some while this ran) to its caller. */
static void collect(lane *l) {
  sl_fetch *f = l->f;
  if (!l->due) {
    l->due = 1;
    l->next_due = f->due;
    f->due = l;
  }
  if (f->collecting) return; /* a callback that starts a request does not collect again */
  f->collecting = 1;
  do {
    while (f->notify) {
      sl_fetch_req *r = f->notify;
      f->notify = r->next_notify;
      r->notifying = 0;
      r->cb(r->arg, NULL);
    }
    lane *x = f->due;
    if (!x) break;
    f->due = x->next_due;
    x->due = 0;
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(x->multi, &left)) != NULL) {
      if (m->msg != CURLMSG_DONE) continue;
      sl_fetch_req *r;
      curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&r);
      finish(r, m->data.result, NULL);
    }
  } while (f->notify || f->due);
  f->collecting = 0;
}

int sl_fetch_start(sl_fetch *f, const sl_fetch_opts *o, sl_fetch_cb cb, void *arg, sl_fetch_req **out) {
  if (f->closing) return -ECANCELED;
  int bad;
  url_ref *u = url_get(f, o->url, &bad);
  int busy = u && f->st.in_flight >= f->max_concurrent;
  host_count *hc = !u || busy ? NULL : host_get(f, u->host);
  if (!hc) {
    url_unref(u);
    return bad ? -EINVAL : busy ? -EBUSY : -ENOMEM;
  }
  hc->n++; /* host_put undoes it on every way out */
  if (hc->n > f->max_per_host) {
    host_put(f, hc);
    url_unref(u);
    return -EAGAIN;
  }
  lane *ln = lane_for(f);
  sl_fetch_req *r = ln ? calloc(1, sizeof *r) : NULL;
  if (r) r->easy = f->nspare ? f->spare[--f->nspare] : curl_easy_init();
  if (!r || !r->easy) {
    free(r);
    host_put(f, hc);
    url_unref(u);
    return -ENOMEM;
  }
  r->url = u;
  r->f = f;
  r->lane = ln;
  r->cb = cb;
  r->arg = arg;
  r->max_body = o->max_body;
  r->hwm = o->stream_hwm;
  CURL *e = r->easy;
  int fail = 0;
  for (size_t i = 0; i < o->nheaders && !fail; i++) {
    struct curl_slist *l = curl_slist_append(r->headers, o->headers[i]);
    if (!l) fail = 1;
    else r->headers = l;
  }
  /* No "Expect: 100-continue" round trip before a body: the answer comes at once. */
  if (o->body && !fail) {
    struct curl_slist *l = curl_slist_append(r->headers, "Expect:");
    if (!l) fail = 1;
    else r->headers = l;
  }
  fail = fail || curl_easy_setopt(e, CURLOPT_CURLU, u->u) != CURLE_OK;
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_PRIVATE, r);
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r->err);
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, r->headers);
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, r);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
  if (f->no_proxy_env) {
    curl_easy_setopt(e, CURLOPT_PROXY, "");
    curl_easy_setopt(e, CURLOPT_NOPROXY, "");
  }
  curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, on_open);
  curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, ln);
  curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, on_close);
  curl_easy_setopt(e, CURLOPT_CLOSESOCKETDATA, ln);
  curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, o->timeout_ms);
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, o->connect_timeout_ms);
  if (o->follow > 0) {
    r->follow = 1;
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(e, CURLOPT_MAXREDIRS, o->follow);
  }
  if (o->insecure) {
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
  }
  if (o->cainfo) curl_easy_setopt(e, CURLOPT_CAINFO, o->cainfo);
  if (o->body) {
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)o->body_len);
    fail = fail || curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, o->body) != CURLE_OK;
    f->st.bytes_out += o->body_len;
  }
  if (strcmp(o->method, "HEAD") == 0) curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
  else if (strcmp(o->method, "GET") != 0 || o->body) curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, o->method);
  if (fail) {
    host_put(f, hc);
    req_free(r);
    return -ENOMEM;
  }
  r->host = hc;
  r->started = uv_hrtime();
  r->next = f->reqs;
  if (f->reqs) f->reqs->prev = r;
  f->reqs = r;
  f->st.in_flight++;
  r->in_flight = 1;
  ln->in_flight++;
  if (curl_multi_add_handle(ln->multi, e) != CURLM_OK) {
    ln->in_flight--;
    if (r->next) r->next->prev = NULL;
    f->reqs = r->next;
    host_put(f, hc);
    f->st.in_flight--;
    req_free(r);
    return -ENOMEM;
  }
  if (out) *out = r;
  return 0;
}

void sl_fetch_cancel(sl_fetch_req *r) {
  unlink_req(r);
  req_free(r);
}

int sl_fetch_head(sl_fetch_req *r, sl_fetch_res *res) {
  if (!r->head_done) return -EAGAIN;
  memset(res, 0, sizeof *res);
  long status = 0;
  curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &status);
  res->status = (int)status;
  res->head = r->head;
  res->head_len = r->head_len;
  if (r->ended && r->end_kind && !status) {
    res->kind = r->end_kind;
    res->detail = r->err;
  }
  return 0;
}

const char *sl_fetch_peek(sl_fetch_req *r, size_t *len) {
  *len = r->body_len;
  return r->body_len ? r->body : NULL;
}

void sl_fetch_taken(sl_fetch_req *r) {
  r->body_len = 0;
  if (r->paused && r->in_flight) {
    r->paused = 0;
    /* libcurl delivers what it held back (perhaps at once, into the emptied buffer). */
    curl_easy_pause(r->easy, CURLPAUSE_CONT);
  }
}

int sl_fetch_ended(sl_fetch_req *r, const char **kind, const char **detail) {
  if (!r->ended) return 0;
  *kind = r->end_kind;
  *detail = r->end_kind ? r->err : NULL;
  return 1;
}

void sl_fetch_release(sl_fetch_req *r) {
  unlink_req(r);
  req_free(r);
}

void sl_fetch_close(sl_fetch *f) {
  if (!f || f->closing) return;
  while (f->reqs) {
    sl_fetch_req *r = f->reqs;
    int stream = r->hwm != 0;
    finish(r, CURLE_OK, "cancelled");
    /* A stream stays its caller's, and may be released after the fetcher is gone. */
    if (stream) r->f = NULL;
  }
  f->closing = 1;
  /* The cached connections close here (libcurl lets go of their sockets);
   * the polls it did not let go of close after it. */
  for (unsigned i = 0; i < f->nlanes; i++) {
    lane *l = f->lanes[i];
    uv_timer_stop(&l->timer);
    uv_close((uv_handle_t *)&l->timer, on_timer_closed);
    curl_multi_cleanup(l->multi);
    l->multi = NULL;
  }
  free(f->lanes);
  f->lanes = NULL;
  f->nlanes = 0;
  while (f->nspare) curl_easy_cleanup(f->spare[--f->nspare]);
  for (unsigned i = 0; i < URL_CACHE; i++) {
    url_unref(f->urls[i]);
    f->urls[i] = NULL;
  }
  while (f->socks) close_sock(f->socks);
  free(f->by_fd);
  f->by_fd = NULL;
  f->nby_fd = 0;
}
