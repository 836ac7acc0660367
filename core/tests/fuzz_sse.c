/* libFuzzer target: the SSE encoder. Any data round-trips through a WHATWG
 * event-stream parser (with CR, LF and CRLF all read as line ends); an id or
 * event name with CR, LF or NUL is refused and nothing is appended. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "../sse.h"
#include "whatwg.h"

int LLVMFuzzerTestOneInput(const uint8_t *in, size_t size) {
  if (size < 2) return 0;
  size_t idlen = in[0] % 8, evlen = in[1] % 8;
  in += 2;
  size -= 2;
  if (idlen + evlen > size) return 0;
  const char *id = (const char *)in, *ev = id + idlen, *data = ev + evlen;
  size_t len = size - idlen - evlen;
  sl_sb sb;
  sl_sb_init(&sb, 16);
  int r = sl_sse_event(&sb, data, len, idlen ? id : NULL, idlen, evlen ? ev : NULL, evlen, -1);
  int bad = (idlen && sl_sse_check_field(id, idlen)) || (evlen && sl_sse_check_field(ev, evlen));
  if (bad) {
    if (r != -EINVAL || sb.b->len != 0) abort();
    sl_sb_free(&sb);
    return 0;
  }
  if (r != 0) abort();
  sl_buf *b = sl_sb_finish(&sb);
  /* The event is the only one in the buffer, and its data comes back with every line end as LF. */
  char *back = malloc(b->len + 1);
  int events;
  size_t m = whatwg_data(b->data, b->len, back, &events);
  if (events != 1) abort();
  size_t k = 0;
  for (size_t i = 0; i < len; i++) {
    if (data[i] == '\r' && i + 1 < len && data[i + 1] == '\n') continue;
    char want = data[i] == '\r' ? '\n' : data[i];
    if (k >= m || back[k++] != want) abort();
  }
  if (k != m) abort();
  free(back);
  sl_buf_unref(b);
  return 0;
}
