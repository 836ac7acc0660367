/* http: llhttp callbacks that fill a request struct within the configured
 * size limits, and the heads of responses. Uses llhttp and buf; conn owns the parser. */
#ifndef SL_HTTP_H
#define SL_HTTP_H
#include <llhttp.h>
#include <stddef.h>
#include <stdint.h>
#include "buf.h"

typedef struct sl_hdr {
  uint32_t name, name_len, value, value_len; /* offsets into sl_req.head */
} sl_hdr;

typedef struct sl_req {
  char *head;          /* url, then header names and values, in arrival order */
  size_t head_len, head_cap;
  uint32_t url_len;
  sl_hdr *hdrs;
  unsigned nhdrs, hdr_cap;
  int in_value;
  int content_lengths; /* Content-Length headers seen */
  char *body;
  size_t body_len, body_cap;
} sl_req;

extern const llhttp_settings_t sl_http_settings;

struct sl_conn;
/* llhttp_execute on the connection's parser, with the checks llhttp 8 leaves
 * out (the CRLF after a chunk's data). */
llhttp_errno_t sl_http_execute(struct sl_conn *c, const char *data, size_t len);

sl_req *sl_req_new(void);
void sl_req_free(sl_req *r);

const char *sl_http_reason(int status);
/* Appends "HTTP/1.1 status reason\r\n" and the Date and Server headers,
 * each unless the header block own (the script's, may be NULL) has its own. */
int sl_http_status_line(sl_sb *sb, int status, const sl_buf *own);
/* A complete canned response (plain text body), e.g. for 400 or 503; Connection: close. */
sl_buf *sl_http_error(int status);

#endif
