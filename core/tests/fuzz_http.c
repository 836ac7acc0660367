/* libFuzzer target: arbitrary bytes through llhttp and the request callbacks
 * of http.c (size limits, header bookkeeping, smuggling checks, the pause at
 * each message end that pipelining relies on), fed in pieces whose sizes the
 * input chooses. Nothing may crash, overflow or leak. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "../conn.h"
#include "../http.h"
#include "../server.h"

static uv_loop_t loop;
static sl_server srv;

static void on_closed(uv_handle_t *h) { free(h->data); }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static int ready;
  if (!ready) {
    uv_loop_init(&loop);
    sl_server_init(&srv, &loop);
    srv.cfg.max_header = 1024;
    srv.cfg.max_body = 4096;
    if (sl_conn_homes(&srv, 1)) abort();
    ready = 1;
  }
  if (size < 1) return 0;
  size_t piece = (size_t)data[0] % 64 + 1; /* the first byte: how the input is cut */
  data++;
  size--;
  sl_conn *c = calloc(1, sizeof *c);
  c->srv = &srv;
  c->home = srv.homes[0];
  c->io_closing = 1; /* no socket: writes (100 Continue) are refused */
  uv_timer_init(&loop, &c->timer);
  c->timer.data = c;
  llhttp_init(&c->parser, HTTP_REQUEST, &sl_http_settings);
  c->parser.data = c;
  size_t pos = 0;
  while (pos < size) {
    size_t n = size - pos < piece ? size - pos : piece;
    const char *p = (const char *)data + pos;
    llhttp_errno_t e = llhttp_execute(&c->parser, p, n);
    if (e == HPE_PAUSED && c->msg_done) {
      /* a complete request: what the gateway would dispatch */
      size_t used = (size_t)(llhttp_get_error_pos(&c->parser) - p);
      llhttp_resume(&c->parser);
      c->msg_done = 0;
      if (c->req->url_len > c->req->head_len) abort();
      for (unsigned i = 0; i < c->req->nhdrs; i++) {
        sl_hdr *h = &c->req->hdrs[i];
        if (h->name + h->name_len > c->req->head_len || h->value + h->value_len > c->req->head_len) abort();
      }
      if (c->req->body_len > srv.cfg.max_body || c->req->head_len > srv.cfg.max_header) abort();
      sl_req_free(c->req);
      c->req = NULL;
      pos += used;
      continue;
    }
    if (e != HPE_OK) {
      if (c->err_status && c->err_status != 400 && c->err_status != 413 && c->err_status != 431) abort();
      break;
    }
    pos += n;
  }
  sl_req_free(c->req);
  uv_close((uv_handle_t *)&c->timer, on_closed);
  uv_run(&loop, UV_RUN_NOWAIT);
  return 0;
}
