/* buf: refcounted byte buffers and a growable builder that finishes into one.
 * An event is encoded once into an sl_buf and shared by every queue that holds it.
 * Uses nothing but libc. */
#ifndef SL_BUF_H
#define SL_BUF_H
#include <stddef.h>
#include <stdint.h>

typedef struct sl_buf {
  unsigned refs;
  size_t len;
  char data[];
} sl_buf;

/* A new buffer with one reference and len bytes of undefined content; NULL if out of memory. */
sl_buf *sl_buf_new(size_t len);
/* A new buffer holding a copy of p[0..len). */
sl_buf *sl_buf_from(const void *p, size_t len);
/* Set once, before any thread starts, when buffers are shared between threads
 * (--workers): references are then counted with atomic operations. */
extern int sl_buf_shared;
static inline sl_buf *sl_buf_ref(sl_buf *b) {
  if (sl_buf_shared) __atomic_add_fetch(&b->refs, 1, __ATOMIC_RELAXED);
  else b->refs++;
  return b;
}
void sl_buf_unref(sl_buf *b);

/* Appends p[0..n) to the growable byte array *data (len used, cap allocated),
 * doubling from `first` bytes as needed. 0 or -ENOMEM (nothing changed). */
int sl_append(char **data, size_t *len, size_t *cap, const void *p, size_t n, size_t first);

/* A builder appends into a heap sl_buf that grows by doubling. Once an append
 * fails (out of memory) every later append fails too and finish returns NULL. */
typedef struct sl_sb {
  sl_buf *b;
  size_t cap;
  int failed;
} sl_sb;

void sl_sb_init(sl_sb *sb, size_t hint);
int sl_sb_add(sl_sb *sb, const void *p, size_t len);
int sl_sb_adds(sl_sb *sb, const char *s);
int sl_sb_addc(sl_sb *sb, char c);
int sl_sb_addf(sl_sb *sb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* v in decimal. */
int sl_sb_addu(sl_sb *sb, uint64_t v);
/* The decimal digits of v written at out (no NUL); how many. */
size_t sl_u64_digits(uint64_t v, char out[20]);
/* The built buffer (one reference, owned by the caller); the builder is empty afterwards. */
sl_buf *sl_sb_finish(sl_sb *sb);
void sl_sb_free(sl_sb *sb);

/* The length of the valid UTF-8 sequence at s[0..n) (1 to 4), or 0 if the
 * bytes there are not one (s[0] must be 0x80 or more). */
size_t sl_utf8_len(const unsigned char *s, size_t n);

#endif
