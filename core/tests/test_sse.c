/* Unit tests for sse: framing edge cases against the WHATWG event-stream rules. */
#include <errno.h>
#include <stdlib.h>
#include "../sse.h"
#include "whatwg.h"
#include "check.h"

static sl_buf *event(const char *data, size_t len, const char *id, const char *ev, long long retry, int *rc) {
  sl_sb sb;
  sl_sb_init(&sb, 16);
  *rc = sl_sse_event(&sb, data, len, id, id ? strlen(id) : 0, ev, ev ? strlen(ev) : 0, retry);
  return sl_sb_finish(&sb);
}

#define EXPECT_EVENT(d_, id, ev, retry, want)                      \
  do {                                                               \
    int rc_;                                                         \
    sl_buf *b_ = event(d_, sizeof(d_) - 1, id, ev, retry, &rc_); \
    CHECK(rc_ == 0);                                                 \
    CHECK_STR(b_->data, b_->len, want);                              \
    sl_buf_unref(b_);                                                \
  } while (0)

int main(void) {
  int rc;
  EXPECT_EVENT("hello", NULL, NULL, -1, "data: hello\n\n");
  EXPECT_EVENT("", NULL, NULL, -1, "data: \n\n");
  EXPECT_EVENT("a\nb", NULL, NULL, -1, "data: a\ndata: b\n\n");
  EXPECT_EVENT("a\rb", NULL, NULL, -1, "data: a\ndata: b\n\n");
  EXPECT_EVENT("a\r\nb", NULL, NULL, -1, "data: a\ndata: b\n\n");
  EXPECT_EVENT("a\n", NULL, NULL, -1, "data: a\ndata: \n\n");
  EXPECT_EVENT("\r", NULL, NULL, -1, "data: \ndata: \n\n");
  EXPECT_EVENT("a\r\r\nb", NULL, NULL, -1, "data: a\ndata: \ndata: b\n\n");
  EXPECT_EVENT(" lead", NULL, NULL, -1, "data:  lead\n\n");
  EXPECT_EVENT("x", "42", "tick", 5000, "id: 42\nevent: tick\nretry: 5000\ndata: x\n\n");
  EXPECT_EVENT("x", "", NULL, -1, "id: \ndata: x\n\n");
  EXPECT_EVENT("h\xc3\xa9llo \xe2\x9c\x93 \xf0\x9f\x98\x80", "\xc3\xa9", NULL, -1,
               "id: \xc3\xa9\ndata: h\xc3\xa9llo \xe2\x9c\x93 \xf0\x9f\x98\x80\n\n");

  /* Data keeps NUL bytes; ids and event names refuse CR, LF and NUL. */
  sl_buf *b = event("a\0b", 3, NULL, NULL, -1, &rc);
  CHECK(rc == 0);
  CHECK_MEM(b->data, b->len, "data: a\0b\n\n", 11);
  sl_buf_unref(b);
  const char *bad[] = {"a\nb", "a\rb", "\n"};
  for (int i = 0; i < 3; i++) {
    b = event("x", 1, bad[i], NULL, -1, &rc);
    CHECK(rc == -EINVAL);
    sl_buf_unref(b);
    b = event("x", 1, NULL, bad[i], -1, &rc);
    CHECK(rc == -EINVAL);
    sl_buf_unref(b);
  }
  sl_sb sb;
  sl_sb_init(&sb, 16);
  CHECK(sl_sse_event(&sb, "x", 1, "a\0b", 3, NULL, 0, -1) == -EINVAL);
  CHECK(sl_sse_check_field("ok", 2) == 0);
  CHECK(sl_sse_check_field("n\0", 2) == -EINVAL);
  sl_sb_free(&sb);

  /* Comments and retry. */
  sl_sb_init(&sb, 16);
  sl_sse_comment(&sb, "", 0);
  sl_sse_comment(&sb, "one\ntwo", 7);
  sl_sse_retry(&sb, 3000);
  b = sl_sb_finish(&sb);
  CHECK_STR(b->data, b->len, ":\n\n: one\n: two\n\nretry: 3000\n\n");
  sl_buf_unref(b);

  /* A 1 MB payload of many lines round-trips through a WHATWG parser. */
  size_t n = 1 << 20;
  char *big = malloc(n), *back = malloc(2 * n);
  for (size_t i = 0; i < n; i++) big[i] = (i % 100 == 99) ? '\n' : (i % 1000 == 500) ? '\r' : (char)('a' + i % 26);
  b = event(big, n, "big", NULL, -1, &rc);
  CHECK(rc == 0 && b->len > n);
  CHECK(b->data[b->len - 1] == '\n' && b->data[b->len - 2] == '\n');
  int events;
  size_t m = whatwg_data(b->data, b->len, back, &events);
  CHECK(events == 1);
  CHECK(m == n);
  int same = m == n;
  for (size_t i = 0; same && i < n; i++) same = back[i] == (big[i] == '\r' ? '\n' : big[i]);
  CHECK(same);
  sl_buf_unref(b);
  free(big);
  free(back);
  /* sl_sse_frame: the same bytes in a buffer of their own; NULL for a bad field. */
  sl_buf *f = sl_sse_frame("a\nb", 3, "7", 1, "tick", 4, -1);
  CHECK(f != NULL);
  if (f) CHECK_STR(f->data, f->len, "id: 7\nevent: tick\ndata: a\ndata: b\n\n");
  sl_buf_unref(f);
  CHECK(sl_sse_frame("x", 1, "a\nb", 3, NULL, 0, -1) == NULL);
  CHECK(sl_sse_frame("x", 1, NULL, 0, "e\r", 2, -1) == NULL);

  return check_done("test_sse");
}
