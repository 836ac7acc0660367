/* sse: event-stream framing. See sse.h. */
#include "sse.h"
#include <errno.h>
#include <string.h>

int sl_sse_check_field(const char *s, size_t len) {
  for (size_t i = 0; i < len; i++)
    if (s[i] == '\r' || s[i] == '\n' || s[i] == '\0') return -EINVAL;
  return 0;
}

/* Appends each line of p as prefix + line + LF; CRLF, lone CR and LF all end a line.
 * An empty p is one empty line, so the field is still present on the wire. */
static int add_lines(sl_sb *out, const char *prefix, size_t plen, const char *p, size_t len) {
  size_t start = 0;
  for (size_t i = 0;; i++) {
    if (i == len || p[i] == '\n' || p[i] == '\r') {
      sl_sb_add(out, prefix, plen);
      sl_sb_add(out, p + start, i - start);
      sl_sb_addc(out, '\n');
      if (i == len) break;
      if (p[i] == '\r' && i + 1 < len && p[i + 1] == '\n') i++;
      start = i + 1;
    }
  }
  return out->failed ? -ENOMEM : 0;
}

int sl_sse_event(sl_sb *out, const char *data, size_t len, const char *id, size_t idlen,
                 const char *event, size_t evlen, long long retry) {
  if (id && sl_sse_check_field(id, idlen)) return -EINVAL;
  if (event && sl_sse_check_field(event, evlen)) return -EINVAL;
  if (id) {
    sl_sb_add(out, "id: ", 4);
    sl_sb_add(out, id, idlen);
    sl_sb_addc(out, '\n');
  }
  if (event) {
    sl_sb_add(out, "event: ", 7);
    sl_sb_add(out, event, evlen);
    sl_sb_addc(out, '\n');
  }
  if (retry >= 0) sl_sb_addf(out, "retry: %lld\n", retry);
  add_lines(out, "data: ", 6, data ? data : "", data ? len : 0);
  sl_sb_addc(out, '\n');
  return out->failed ? -ENOMEM : 0;
}

sl_buf *sl_sse_frame(const char *data, size_t len, const char *id, size_t idlen, const char *event, size_t evlen,
                     long long retry) {
  sl_sb sb;
  sl_sb_init(&sb, len + idlen + evlen + 32);
  if (sl_sse_event(&sb, data, len, id, idlen, event, evlen, retry)) {
    sl_sb_free(&sb);
    return NULL;
  }
  return sl_sb_finish(&sb);
}

int sl_sse_comment(sl_sb *out, const char *text, size_t len) {
  if (len == 0) sl_sb_add(out, ":\n", 2);
  else add_lines(out, ": ", 2, text, len);
  sl_sb_addc(out, '\n');
  return out->failed ? -ENOMEM : 0;
}

int sl_sse_retry(sl_sb *out, long long retry) {
  sl_sb_addf(out, "retry: %lld\n\n", retry);
  return out->failed ? -ENOMEM : 0;
}
