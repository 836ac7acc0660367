/* check: the few assertions the C unit tests share. Each failed check prints
 * where and what, and the test exits non-zero at the end. */
#ifndef SL_CHECK_H
#define SL_CHECK_H
#include <stdio.h>
#include <string.h>

static int check_failures, check_count;

#define CHECK(cond)                                                        \
  do {                                                                     \
    check_count++;                                                         \
    if (!(cond)) {                                                         \
      check_failures++;                                                    \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
    }                                                                      \
  } while (0)

#define CHECK_MEM(got, glen, want, wlen)                                                         \
  do {                                                                                           \
    check_count++;                                                                               \
    if ((glen) != (wlen) || memcmp((got), (want), (wlen)) != 0) {                                \
      check_failures++;                                                                          \
      fprintf(stderr, "%s:%d: got [%.*s] (%zu bytes), want [%.*s] (%zu bytes)\n", __FILE__, __LINE__, \
              (int)(glen), (const char *)(got), (size_t)(glen), (int)(wlen), (const char *)(want),   \
              (size_t)(wlen));                                                                   \
    }                                                                                            \
  } while (0)

#define CHECK_STR(got, glen, want) CHECK_MEM(got, glen, want, strlen(want))

static int check_done(const char *name) {
  printf("%s: %d checks, %d failed\n", name, check_count, check_failures);
  return check_failures ? 1 : 0;
}

#endif
