/* Unit tests for buf: references, builder growth and formatting. */
#include <stdlib.h>
#include "../buf.h"
#include "check.h"

int main(void) {
  sl_buf *b = sl_buf_from("hello", 5);
  CHECK(b && b->refs == 1 && b->len == 5);
  CHECK_STR(b->data, b->len, "hello");
  CHECK(b->data[5] == '\0');
  sl_buf_ref(b);
  CHECK(b->refs == 2);
  sl_buf_unref(b);
  CHECK(b->refs == 1);
  sl_buf_unref(b);
  sl_buf_unref(NULL);

  sl_buf *e = sl_buf_from("", 0);
  CHECK(e && e->len == 0);
  sl_buf_unref(e);

  /* Growth well past the initial capacity keeps every byte in order. */
  sl_sb sb;
  sl_sb_init(&sb, 1);
  for (int i = 0; i < 10000; i++) sl_sb_addc(&sb, (char)('a' + i % 26));
  sl_sb_addf(&sb, "[%d:%s]", 42, "x");
  sl_sb_adds(&sb, "end");
  sl_buf *g = sl_sb_finish(&sb);
  CHECK(g && g->len == 10000 + 6 + 3);
  int ordered = 1;
  for (int i = 0; i < 10000; i++) ordered &= g->data[i] == (char)('a' + i % 26);
  CHECK(ordered);
  CHECK_STR(g->data + 10000, g->len - 10000, "[42:x]end");
  CHECK(sb.b == NULL);
  sl_buf_unref(g);

  /* A finished builder stays failed: appends after finish are refused. */
  CHECK(sl_sb_adds(&sb, "late") != 0);
  CHECK(sl_sb_finish(&sb) == NULL);

  /* A long formatted string forces a reserve inside addf. */
  sl_sb_init(&sb, 8);
  char big[5000];
  memset(big, 'z', sizeof big - 1);
  big[sizeof big - 1] = '\0';
  sl_sb_addf(&sb, "<%s>", big);
  sl_buf *f = sl_sb_finish(&sb);
  CHECK(f && f->len == sizeof big + 1 && f->data[0] == '<' && f->data[f->len - 1] == '>');
  sl_buf_unref(f);
  /* Decimal numbers, and a formatted line just under and just over the small buffer addf tries first. */
  sl_sb_init(&sb, 4);
  sl_sb_addu(&sb, 0);
  sl_sb_addc(&sb, ' ');
  sl_sb_addu(&sb, 18446744073709551615ull);
  sl_sb_addc(&sb, ' ');
  sl_sb_addu(&sb, 1000);
  sl_buf *u = sl_sb_finish(&sb);
  CHECK(u != NULL);
  CHECK_STR(u->data, u->len, "0 18446744073709551615 1000");
  sl_buf_unref(u);
  for (int w = 250; w <= 260; w++) {
    sl_sb_init(&sb, 8);
    sl_sb_addf(&sb, "%0*d", w, 7);
    sl_buf *p = sl_sb_finish(&sb);
    CHECK(p && p->len == (size_t)w && p->data[0] == '0' && p->data[w - 1] == '7' && p->data[w] == '\0');
    sl_buf_unref(p);
  }
  /* sl_append grows from `first` by doubling and keeps what was there. */
  char *data = NULL;
  size_t len = 0, cap = 0;
  CHECK(sl_append(&data, &len, &cap, "abc", 3, 2) == 0 && cap == 4 && len == 3);
  CHECK(sl_append(&data, &len, &cap, "defgh", 5, 2) == 0 && cap == 8 && len == 8);
  CHECK(sl_append(&data, &len, &cap, "", 0, 2) == 0 && len == 8);
  CHECK_STR(data, len, "abcdefgh");
  free(data);
  return check_done("test_buf");
}
