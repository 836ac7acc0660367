/* http: request parsing callbacks and response heads. See http.h. */
#include "http.h"
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include "conn.h"
#include "server.h"

sl_req *sl_req_new(void) { return calloc(1, sizeof(sl_req)); }

void sl_req_free(sl_req *r) {
  if (!r) return;
  free(r->head);
  free(r->hdrs);
  free(r->body);
  free(r);
}

static sl_conn *conn_of(llhttp_t *p) { return p->data; }

static int reject(llhttp_t *p, int status) {
  conn_of(p)->err_status = status;
  return -1;
}

/* Appends to the request head, counting against max_header. */
static int head_add(llhttp_t *p, const char *at, size_t len) {
  sl_conn *c = conn_of(p);
  sl_req *r = c->req;
  if (r->head_len + len > c->home->lim.max_header) return reject(p, 431);
  return sl_append(&r->head, &r->head_len, &r->head_cap, at, len, 512) ? reject(p, 503) : 0;
}

static int on_message_begin(llhttp_t *p) {
  sl_conn *c = conn_of(p);
  if (!c->req && !(c->req = sl_req_new())) return reject(p, 503);
  c->started = uv_hrtime();
  return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t len) {
  int r = head_add(p, at, len);
  if (!r) conn_of(p)->req->url_len += (uint32_t)len;
  return r;
}

/* Whether a header name holds a byte that is no token character: llhttp 8
 * lets the whitespace of "Host : x" through, which RFC 9112 says to refuse
 * (a front end may read the name otherwise). */
static int bad_name(const char *at, size_t len) {
  for (size_t i = 0; i < len; i++)
    if (at[i] == ' ' || at[i] == '\t') return 1;
  return 0;
}

/* Obs-fold ("Name: a\r\n b", or "Name:\r\n b"): a header line that starts
 * with a space or tab continues the one before. RFC 9112 lets a server refuse
 * it, and it must here: llhttp 8 reads "Transfer-Encoding:\r\n chunked" as
 * chunked, where a front end may not. A small scanner follows the bytes after
 * each header name and value, across inputs, until the next line has begun:
 * O(1) a byte. */
enum { F_NONE, F_NAME, F_EOL, F_LF, F_VALUE };

/* Scans p..end from state c->fold; -1 at a fold. */
static int fold_scan(sl_conn *c, const char *p, const char *end) {
  for (; c->fold != F_NONE && p < end; p++) {
    char ch = *p;
    switch (c->fold) {
      case F_NAME: /* the name may go on, or end at its colon */
        c->fold = ch == ':' ? F_EOL : F_NONE;
        break;
      case F_VALUE: /* the value may go on, or end at its line end */
        c->fold = ch == '\r' || ch == ' ' || ch == '\t' ? F_EOL : ch == '\n' ? F_LF : F_NONE;
        break;
      case F_EOL: /* whitespace and CR up to the LF; anything else is a value */
        if (ch == '\n') c->fold = F_LF;
        else if (ch != ' ' && ch != '\t' && ch != '\r' && ch != ':') c->fold = F_NONE;
        break;
      case F_LF: /* the next line: a space or tab there is a fold */
        if (ch == ' ' || ch == '\t') return -1;
        c->fold = F_NONE;
        break;
    }
  }
  return 0;
}

/* After a name or value span: scans what follows it in this input; what
 * the input ends before, sl_http_execute scans in the next one. */
static int fold_after(llhttp_t *p, const char *at, size_t len, int state) {
  sl_conn *c = conn_of(p);
  c->fold = (uint8_t)state;
  return fold_scan(c, at + len, c->home->parse_end) ? reject(p, 400) : 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len) {
  sl_req *r = conn_of(p)->req;
  if (bad_name(at, len)) return reject(p, 400);
  if (fold_after(p, at, len, F_NAME)) return -1;
  if (r->nhdrs == 0 || r->in_value) {
    if (r->nhdrs == r->hdr_cap) {
      unsigned cap = r->hdr_cap ? r->hdr_cap * 2 : 16;
      sl_hdr *nh = realloc(r->hdrs, cap * sizeof(*nh));
      if (!nh) return reject(p, 503);
      r->hdrs = nh;
      r->hdr_cap = cap;
    }
    sl_hdr *h = &r->hdrs[r->nhdrs++];
    h->name = (uint32_t)r->head_len;
    h->name_len = 0;
    h->value = (uint32_t)r->head_len;
    h->value_len = 0;
    r->in_value = 0;
  }
  if (head_add(p, at, len)) return -1;
  r->hdrs[r->nhdrs - 1].name_len += (uint32_t)len;
  return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len) {
  sl_req *r = conn_of(p)->req;
  if (fold_after(p, at, len, F_VALUE)) return -1;
  sl_hdr *h = &r->hdrs[r->nhdrs - 1];
  if (!r->in_value) {
    r->in_value = 1;
    h->value = (uint32_t)r->head_len;
  }
  if (head_add(p, at, len)) return -1;
  h->value_len += (uint32_t)len;
  return 0;
}

static int on_header_value_complete(llhttp_t *p) {
  sl_req *r = conn_of(p)->req;
  sl_hdr *h = &r->hdrs[r->nhdrs - 1];
  if (h->name_len == 14 && strncasecmp(r->head + h->name, "content-length", 14) == 0) {
    /* Two Content-Length headers are a smuggling vector even when they agree. */
    if (++r->content_lengths > 1) return reject(p, 400);
  }
  return 0;
}

/* Whether the request asks for "100 Continue" before it sends its body. */
static int expects_continue(sl_req *r) {
  for (unsigned i = 0; i < r->nhdrs; i++) {
    sl_hdr *h = &r->hdrs[i];
    if (h->name_len == 6 && strncasecmp(r->head + h->name, "expect", 6) == 0 && h->value_len == 12 &&
        strncasecmp(r->head + h->value, "100-continue", 12) == 0)
      return 1;
  }
  return 0;
}

static int on_headers_complete(llhttp_t *p) {
  sl_conn *c = conn_of(p);
  if ((p->flags & F_CONTENT_LENGTH) && (p->flags & F_TRANSFER_ENCODING)) return reject(p, 400);
  if ((p->flags & F_CONTENT_LENGTH) && p->content_length > c->home->lim.max_body) return reject(p, 413);
  /* The header timer goes on until the body is in too: a body sent a byte at a
   * time would otherwise hold its connection (and up to max_body) for ever. */
  int has_body = (p->flags & F_TRANSFER_ENCODING) || ((p->flags & F_CONTENT_LENGTH) && p->content_length > 0);
  if (has_body && p->http_minor >= 1 && expects_continue(c->req)) {
    /* Tell the client to send the body now rather than after its own wait (curl waits a second). */
    static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
    sl_buf *b = sl_buf_from(cont, sizeof cont - 1);
    if (b) sl_conn_io_write(c, b);
    sl_buf_unref(b);
  }
  return 0;
}

/* Checks the bytes at p (up to end) against the CRLF owed after a chunk's
 * data; what the input ends before is owed by the next input. llhttp 8 skips
 * those two bytes whatever they are: "3\r\nabcXX" would be taken as "abc", and
 * a front end that reads a bare LF there sees another request. -1 if wrong. */
static int owed_crlf(sl_conn *c, const char *p, const char *end) {
  while (c->crlf_next && p < end) {
    if (*p++ != "\r\n"[c->crlf_next - 1]) return -1;
    c->crlf_next = c->crlf_next == 1 ? 2 : 0;
  }
  return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len) {
  sl_conn *c = conn_of(p);
  sl_req *r = c->req;
  if (r->body_len + len > c->home->lim.max_body) return reject(p, 413);
  if ((p->flags & F_CHUNKED) && p->content_length == 0) {
    /* This chunk's data is all in: its CRLF comes next. */
    c->crlf_next = 1;
    if (owed_crlf(c, at + len, c->home->parse_end)) return reject(p, 400);
  }
  return sl_append(&r->body, &r->body_len, &r->body_cap, at, len, 1024) ? reject(p, 503) : 0;
}

llhttp_errno_t sl_http_execute(sl_conn *c, const char *data, size_t len) {
  if (owed_crlf(c, data, data + len) || fold_scan(c, data, data + len)) {
    c->err_status = 400;
    return HPE_INVALID_CHUNK_SIZE;
  }
  c->home->parse_end = data + len;
  return llhttp_execute(&c->parser, data, len);
}

static int on_message_complete(llhttp_t *p) {
  uv_timer_stop(&conn_of(p)->timer);
  conn_of(p)->msg_done = 1;
  /* Pause so pipelined requests wait until this one is answered. */
  return HPE_PAUSED;
}

const llhttp_settings_t sl_http_settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_header_value_complete = on_header_value_complete,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

const char *sl_http_reason(int status) {
  switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 206: return "Partial Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 410: return "Gone";
    case 413: return "Content Too Large";
    case 415: return "Unsupported Media Type";
    case 422: return "Unprocessable Content";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return status < 300 ? "OK" : status < 400 ? "Redirect" : status < 500 ? "Client Error" : "Server Error";
  }
}

/* Whether the header block h (lines "Name: value\r\n") has a header called name. */
static int has_header(const sl_buf *h, const char *name, size_t n) {
  if (!h) return 0;
  for (const char *p = h->data, *end = h->data + h->len; p && end - p > (ptrdiff_t)n;) {
    if (p[n] == ':' && strncasecmp(p, name, n) == 0) return 1;
    const char *lf = memchr(p, '\n', (size_t)(end - p));
    p = lf ? lf + 1 : NULL;
  }
  return 0;
}

/* The Date header's value for now: made once a second (per thread: I/O threads answer too). */
static const char *http_date(size_t *len) {
  static _Thread_local time_t made;
  static _Thread_local char date[40];
  static _Thread_local size_t n;
  time_t now = time(NULL);
  if (now != made || !n) {
    struct tm tm;
    gmtime_r(&now, &tm);
    n = strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    made = now;
  }
  *len = n;
  return date;
}

int sl_http_status_line(sl_sb *sb, int status, const sl_buf *own) {
  sl_sb_add(sb, "HTTP/1.1 ", 9);
  sl_sb_addu(sb, (uint64_t)(status > 0 ? status : 0));
  sl_sb_addc(sb, ' ');
  sl_sb_adds(sb, sl_http_reason(status));
  if (sl_sb_add(sb, "\r\n", 2)) return -1;
  /* A script's own Server or Date replaces the gateway's: never two of them. */
  if (!has_header(own, "server", 6) && sl_sb_adds(sb, "Server: sluice\r\n")) return -1;
  if (has_header(own, "date", 4)) return 0;
  size_t n;
  const char *date = http_date(&n);
  sl_sb_add(sb, "Date: ", 6);
  sl_sb_add(sb, date, n);
  return sl_sb_add(sb, "\r\n", 2);
}

sl_buf *sl_http_error(int status) {
  sl_sb sb;
  const char *reason = sl_http_reason(status);
  sl_sb_init(&sb, 256);
  sl_http_status_line(&sb, status, NULL);
  sl_sb_addf(&sb, "Content-Type: text/plain; charset=utf-8\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n%s\n",
             strlen(reason) + 1, reason);
  return sl_sb_finish(&sb);
}
