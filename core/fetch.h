/* fetch: outbound HTTP(S) requests on the gateway's own loop, through
 * libcurl's multi-socket interface driven by libuv poll and timer handles:
 * nothing waits on a socket, connections are kept alive and reused per host,
 * HTTP/2 is used where a TLS server offers it. Knows nothing of Lua: a
 * request ends in a callback (lua_out turns it into a script's answer).
 * Uses libcurl and libuv; metrics reads its counters. */
#ifndef SL_FETCH_H
#define SL_FETCH_H
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct sl_fetch sl_fetch;
typedef struct sl_fetch_req sl_fetch_req;

typedef struct sl_fetch_opts {
  const char *url;
  const char *method;            /* "GET", "POST", ... */
  const char *const *headers;    /* "Name: value" lines (checked: no CR, LF or NUL) */
  size_t nheaders;
  const char *body;              /* NULL: no body */
  size_t body_len;
  long timeout_ms;               /* the whole transfer; 0: none */
  long connect_timeout_ms;
  size_t max_body;               /* past it the transfer fails with "too large" */
  long follow;                   /* redirects to follow at most; 0: none */
  int insecure;                  /* no TLS verification */
  const char *cainfo;            /* a CA bundle instead of the system's, or NULL */
  size_t stream_hwm;             /* > 0: a stream (below); the body bytes held before the transfer pauses */
} sl_fetch_opts;

/* How a request ended: kind NULL with a response, or one of "timeout",
 * "connect", "dns", "tls", "too large", "redirects", "closed", "protocol",
 * "cancelled", "error" with detail saying more. head holds the final
 * response's header lines ("Name: value\r\n" each, the status line first). */
typedef struct sl_fetch_res {
  const char *kind;
  const char *detail;
  int status;
  const char *head;
  size_t head_len;
  const char *body;
  size_t body_len;
  double seconds;       /* how long it took */
} sl_fetch_res;

typedef void (*sl_fetch_cb)(void *arg, const sl_fetch_res *res);

/* Counters for the metrics (the loop thread writes them). */
typedef struct sl_fetch_stats {
  uint64_t done[6];     /* by status class (1..5), [0]: no response */
  unsigned in_flight;
  uint64_t bytes_in, bytes_out;
} sl_fetch_stats;

/* The fetcher of loop, made on first use; NULL if out of memory. */
sl_fetch *sl_fetch_new(uv_loop_t *loop);
/* Bounds on what may be in flight: past them sl_fetch_start refuses (never a queue). */
void sl_fetch_limits(sl_fetch *f, unsigned max_concurrent, unsigned max_per_host);
/* Starts a request; cb(arg, res) runs once when it ends, from the loop (never
 * from within this call). 0; -EINVAL for a URL that is not http(s) or does
 * not parse; -EBUSY over max_concurrent, -EAGAIN over max_per_host; -ENOMEM.
 * *out lets the caller cancel it. */
int sl_fetch_start(sl_fetch *f, const sl_fetch_opts *o, sl_fetch_cb cb, void *arg, sl_fetch_req **out);
/* Ends a request that has not ended: its connection is dropped, cb never runs. */
void sl_fetch_cancel(sl_fetch_req *r);

/* Streams (opts.stream_hwm > 0): the body is read as it comes. cb(arg, NULL)
 * runs, from the loop, each time there is something new to look at (the
 * head, body bytes, the end); the request stays until sl_fetch_release,
 * however it ended. Past stream_hwm bytes held the transfer pauses until
 * they are taken. */
/* 0 and the head in *res once it is in (status, head; kind set if the
 * transfer failed first); -EAGAIN before. */
int sl_fetch_head(sl_fetch_req *r, sl_fetch_res *res);
/* The body bytes held (*len of them; NULL if none); sl_fetch_taken says they
 * were copied, which lets a paused transfer go on. */
const char *sl_fetch_peek(sl_fetch_req *r, size_t *len);
void sl_fetch_taken(sl_fetch_req *r);
/* Whether the stream has ended: 0 still running, 1 ended (all bytes
 * delivered, *kind NULL) or failed (*kind and *detail say why). */
int sl_fetch_ended(sl_fetch_req *r, const char **kind, const char **detail);
/* Cancels the stream if it runs and frees it. */
void sl_fetch_release(sl_fetch_req *r);
/* Ends every request (cb runs with "cancelled") and closes the handles; the
 * memory goes once they are closed. */
void sl_fetch_close(sl_fetch *f);
const sl_fetch_stats *sl_fetch_get_stats(const sl_fetch *f);

#endif
