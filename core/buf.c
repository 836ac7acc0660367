/* buf: refcounted byte buffers and the builder. See buf.h. */
#include "buf.h"
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

sl_buf *sl_buf_new(size_t len) {
  sl_buf *b = malloc(sizeof(*b) + len + 1);
  if (!b) return NULL;
  b->refs = 1;
  b->len = len;
  b->data[len] = '\0';
  return b;
}

sl_buf *sl_buf_from(const void *p, size_t len) {
  sl_buf *b = sl_buf_new(len);
  if (b && len) memcpy(b->data, p, len);
  return b;
}

int sl_buf_shared;

void sl_buf_unref(sl_buf *b) {
  if (!b) return;
  if (sl_buf_shared ? __atomic_sub_fetch(&b->refs, 1, __ATOMIC_ACQ_REL) == 0 : --b->refs == 0) free(b);
}

int sl_append(char **data, size_t *len, size_t *cap, const void *p, size_t n, size_t first) {
  if (*len + n > *cap) {
    size_t c = *cap ? *cap : first;
    while (c < *len + n) c *= 2;
    char *nd = realloc(*data, c);
    if (!nd) return -ENOMEM;
    *data = nd;
    *cap = c;
  }
  if (n) memcpy(*data + *len, p, n);
  *len += n;
  return 0;
}

void sl_sb_init(sl_sb *sb, size_t hint) {
  sb->cap = hint < 64 ? 64 : hint;
  sb->b = sl_buf_new(sb->cap);
  sb->failed = sb->b == NULL;
  if (sb->b) sb->b->len = 0;
}

static int sb_reserve(sl_sb *sb, size_t more) {
  if (sb->failed) return -ENOMEM;
  size_t need = sb->b->len + more;
  if (need <= sb->cap) return 0;
  size_t cap = sb->cap;
  while (cap < need) cap *= 2;
  sl_buf *nb = realloc(sb->b, sizeof(*nb) + cap + 1);
  if (!nb) {
    sb->failed = 1;
    return -ENOMEM;
  }
  sb->b = nb;
  sb->cap = cap;
  return 0;
}

int sl_sb_add(sl_sb *sb, const void *p, size_t len) {
  if (sb_reserve(sb, len)) return -ENOMEM;
  if (len) memcpy(sb->b->data + sb->b->len, p, len);
  sb->b->len += len;
  return 0;
}

int sl_sb_adds(sl_sb *sb, const char *s) { return sl_sb_add(sb, s, strlen(s)); }

int sl_sb_addc(sl_sb *sb, char c) { return sl_sb_add(sb, &c, 1); }

int sl_sb_addf(sl_sb *sb, const char *fmt, ...) {
  /* Most lines fit a small buffer: formatted once, not measured first. */
  char small[256];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(small, sizeof small, fmt, ap);
  va_end(ap);
  if (n < 0) return -ENOMEM;
  if ((size_t)n < sizeof small) return sl_sb_add(sb, small, (size_t)n);
  if (sb_reserve(sb, (size_t)n + 1)) return -ENOMEM;
  va_start(ap, fmt);
  vsnprintf(sb->b->data + sb->b->len, (size_t)n + 1, fmt, ap);
  va_end(ap);
  sb->b->len += (size_t)n;
  return 0;
}

size_t sl_u64_digits(uint64_t v, char out[20]) {
  char t[20];
  size_t i = sizeof t;
  do {
    t[--i] = (char)('0' + v % 10);
    v /= 10;
  } while (v);
  memcpy(out, t + i, sizeof t - i);
  return sizeof t - i;
}

int sl_sb_addu(sl_sb *sb, uint64_t v) {
  char t[20];
  return sl_sb_add(sb, t, sl_u64_digits(v, t));
}

sl_buf *sl_sb_finish(sl_sb *sb) {
  sl_buf *b = sb->failed ? NULL : sb->b;
  if (sb->failed) free(sb->b);
  if (b) b->data[b->len] = '\0';
  sb->b = NULL;
  sb->cap = 0;
  sb->failed = 1;
  return b;
}

void sl_sb_free(sl_sb *sb) {
  free(sb->b);
  sb->b = NULL;
  sb->failed = 1;
}

size_t sl_utf8_len(const unsigned char *s, size_t n) {
  size_t len = s[0] >= 0xf0 && s[0] <= 0xf4 ? 4 : s[0] >= 0xe0 && s[0] < 0xf0 ? 3 : s[0] >= 0xc2 && s[0] < 0xe0 ? 2 : 0;
  if (!len || len > n) return 0;
  for (size_t i = 1; i < len; i++)
    if ((s[i] & 0xc0) != 0x80) return 0;
  if (len == 3 && ((s[0] == 0xe0 && s[1] < 0xa0) || (s[0] == 0xed && s[1] >= 0xa0))) return 0;
  if (len == 4 && ((s[0] == 0xf0 && s[1] < 0x90) || (s[0] == 0xf4 && s[1] >= 0x90))) return 0;
  return len;
}
