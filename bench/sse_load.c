/* sse_load: opens many SSE connections to a gateway on loopback and counts the
 * events they receive. With -L, each event's data must start with the publish
 * time (CLOCK_MONOTONIC nanoseconds) and the delivery latency is reported.
 *
 *   sse_load -p PORT [-P PATH] [-n CONNS] [-d SECONDS] [-c CONCURRENT_CONNECTS] [-L] [-G] [-K SHAPES] [-E EVENTS]
 *
 * With -K, a "%d" in PATH becomes the connection's number modulo SHAPES, so
 * that connections ask for SHAPES different subscriptions.
 *
 * With -G, every event must carry a numeric id one more than the one before on
 * the same connection; each break is counted as a gap.
 *
 * With -E N, it stops as soon as every connection has received N events (-d
 * is then the deadline); connections that got more are counted as over.
 *
 * Prints one summary line per run:
 *   connected=N failed=N events=N events_per_sec=N [id_gaps=N] [complete=N over=N] [p50_us=N p99_us=N]
 * and "ready N" on stderr once all connections have their response head. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uv.h>

typedef struct client {
  uv_tcp_t tcp;
  uv_connect_t creq;
  uv_write_t wreq;
  int state;     /* 0 connecting, 1 head pending, 2 streaming, 3 dead */
  int nl;        /* newlines seen in a row in the head */
  char line[64]; /* the start of the current line */
  int linelen;
  unsigned long long last_id; /* for -G */
  long events;                /* for -E */
  char *req;                  /* its own request, with -K */
} client;

static struct {
  const char *path;
  int port, n, concurrent, latency, gapcheck, shapes;
  long expect;   /* -E */
  int complete, over;
  uint64_t gaps;
  double duration;
  int started, connected, failed, inflight_connects, ready_said;
  uint64_t events, t_start;
  uint64_t *lat;
  size_t nlat, cap;
  char req[512];
  char rbuf[65536];
  uv_loop_t *loop;
  uv_timer_t stop_timer, ramp_timer;
  client *clients;
} g;

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void start_more(void);
static void on_stop(uv_timer_t *t);

static void on_alloc(uv_handle_t *h, size_t s, uv_buf_t *b) {
  b->base = g.rbuf;
  b->len = sizeof g.rbuf;
}

static void record_latency(const char *v) {
  char *end;
  unsigned long long ts = strtoull(v, &end, 10);
  if (end == v) return;
  uint64_t now = now_ns();
  if (g.nlat == g.cap) {
    g.cap = g.cap ? g.cap * 2 : 1 << 16;
    g.lat = realloc(g.lat, g.cap * sizeof *g.lat);
  }
  g.lat[g.nlat++] = now > ts ? now - ts : 0;
}

/* A complete line of the body (its first 63 bytes). */
static void on_line(client *c) {
  c->line[c->linelen] = '\0';
  if (c->linelen == 0) {
    g.events++;
    if (g.expect) {
      c->events++;
      if (c->events == g.expect + 1) g.over++;
      if (c->events == g.expect && ++g.complete == g.n) on_stop(NULL);
    }
    return;
  }
  if (g.latency && strncmp(c->line, "data: ", 6) == 0) record_latency(c->line + 6);
  if (g.gapcheck && strncmp(c->line, "id: ", 4) == 0) {
    unsigned long long id = strtoull(c->line + 4, NULL, 10);
    if (c->last_id && id != c->last_id + 1) g.gaps++;
    c->last_id = id;
  }
}

static void scan(client *c, const char *p, size_t n) {
  for (size_t i = 0; i < n; i++) {
    char ch = p[i];
    if (c->state == 1) {
      /* skip the head: it ends with \r\n\r\n */
      if (ch == '\n') {
        if (++c->nl == 2) {
          c->state = 2;
          c->linelen = 0;
          if (++g.connected == g.n && !g.ready_said) {
            g.ready_said = 1;
            fprintf(stderr, "ready %d\n", g.connected);
          }
        }
      } else if (ch != '\r') c->nl = 0;
      continue;
    }
    if (ch == '\n') {
      on_line(c);
      c->linelen = 0;
    } else if (c->linelen < 63) {
      c->line[c->linelen++] = ch;
    }
  }
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b) {
  client *c = s->data;
  if (n < 0) {
    if (c->state != 3) {
      if (c->state == 2) g.connected--;
      g.failed++;
      c->state = 3;
      uv_close((uv_handle_t *)s, NULL);
    }
    return;
  }
  scan(c, b->base, (size_t)n);
}

static void on_write(uv_write_t *w, int status) {}

static void on_connect(uv_connect_t *r, int status) {
  client *c = r->data;
  g.inflight_connects--;
  if (status < 0) {
    g.failed++;
    c->state = 3;
    uv_close((uv_handle_t *)&c->tcp, NULL);
  } else {
    c->state = 1;
    if (g.shapes && !c->req) {
      char path[400];
      snprintf(path, sizeof path, g.path, (int)((c - g.clients) % g.shapes));
      c->req = malloc(512);
      snprintf(c->req, 512, "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n", path);
    }
    char *req = c->req ? c->req : g.req;
    uv_buf_t b = uv_buf_init(req, (unsigned)strlen(req));
    uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, on_write);
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
  }
  start_more();
}

static void start_more(void) {
  struct sockaddr_in addr;
  uv_ip4_addr("127.0.0.1", g.port, &addr);
  while (g.started < g.n && g.inflight_connects < g.concurrent) {
    client *c = &g.clients[g.started++];
    uv_tcp_init(g.loop, &c->tcp);
    c->tcp.data = c->creq.data = c;
    g.inflight_connects++;
    if (uv_tcp_connect(&c->creq, &c->tcp, (struct sockaddr *)&addr, on_connect)) {
      g.inflight_connects--;
      g.failed++;
      c->state = 3;
      uv_close((uv_handle_t *)&c->tcp, NULL);
    }
  }
}

static int cmp(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

static void on_sigint(uv_signal_t *s, int sig) { on_stop(NULL); }

static void on_stop(uv_timer_t *t) {
  double secs = (double)(now_ns() - g.t_start) / 1e9;
  printf("connected=%d failed=%d events=%llu events_per_sec=%.0f", g.connected, g.failed,
         (unsigned long long)g.events, (double)g.events / secs);
  if (g.gapcheck) printf(" id_gaps=%llu", (unsigned long long)g.gaps);
  if (g.expect) printf(" complete=%d over=%d", g.complete, g.over);
  if (g.latency && g.nlat) {
    qsort(g.lat, g.nlat, sizeof *g.lat, cmp);
    printf(" samples=%zu p50_us=%.0f p99_us=%.0f max_us=%.0f", g.nlat, g.lat[g.nlat / 2] / 1e3,
           g.lat[(size_t)(g.nlat * 0.99)] / 1e3, g.lat[g.nlat - 1] / 1e3);
  }
  printf("\n");
  fflush(stdout);
  exit(0);
}

int main(int argc, char **argv) {
  g.path = "/";
  g.n = 100;
  g.duration = 10;
  g.concurrent = 200;
  int ch;
  while ((ch = getopt(argc, argv, "p:P:n:d:c:LGK:E:")) != -1) {
    switch (ch) {
      case 'p': g.port = atoi(optarg); break;
      case 'P': g.path = optarg; break;
      case 'n': g.n = atoi(optarg); break;
      case 'd': g.duration = atof(optarg); break;
      case 'c': g.concurrent = atoi(optarg); break;
      case 'L': g.latency = 1; break;
      case 'G': g.gapcheck = 1; break;
      case 'K': g.shapes = atoi(optarg); break;
      case 'E': g.expect = atol(optarg); break;
      default:
        fprintf(stderr, "usage: sse_load -p PORT [-P PATH] [-n N] [-d SECS] [-c CONCURRENT] [-L] [-G] [-K SHAPES] [-E EVENTS]\n");
        return 2;
    }
  }
  if (!g.port) {
    fprintf(stderr, "sse_load: -p PORT is required\n");
    return 2;
  }
  snprintf(g.req, sizeof g.req, "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n", g.path);
  g.clients = calloc((size_t)g.n, sizeof *g.clients);
  g.loop = uv_default_loop();
  g.t_start = now_ns();
  uv_timer_init(g.loop, &g.stop_timer);
  uv_timer_start(&g.stop_timer, on_stop, (uint64_t)(g.duration * 1000), 0);
  static uv_signal_t sig;
  uv_signal_init(g.loop, &sig);
  uv_signal_start(&sig, on_sigint, SIGINT);
  start_more();
  return uv_run(g.loop, UV_RUN_DEFAULT);
}
