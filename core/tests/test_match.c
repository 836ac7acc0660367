/* Unit tests for match: exact topics, "*", globs and URI templates (RFC 6570
 * operators as Mercure subscriptions use them), and malformed templates. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "../match.h"
#include "check.h"
#include "ref_match.h"

/* Random templates and topics from a small alphabet that makes matches likely. */
static void random_agreement(void) {
  static const char *const exprs[] = {"{a}", "{+a}", "{#a}", "{.a}", "{/a}", "{/a*}", "{;a}", "{?a}", "{&a}", "{a,b}"};
  static const char alpha[] = "ab/.?&;=#,x";
  unsigned seed = 12345;
  int matched = 0;
  for (int round = 0; round < 20000; round++) {
    char t[128], s[32];
    size_t tn = 0, n = 0;
    int parts = 1 + (int)((seed = seed * 1103515245u + 12345u) >> 16) % 6;
    for (int k = 0; k < parts; k++) {
      unsigned r = (seed = seed * 1103515245u + 12345u) >> 16;
      if (r % 2) {
        const char *e = exprs[(r / 2) % (sizeof exprs / sizeof *exprs)];
        memcpy(t + tn, e, strlen(e));
        tn += strlen(e);
      } else {
        for (unsigned i = 0; i < 1 + (r / 2) % 3; i++) t[tn++] = alpha[((r >> 4) + i * 7) % (sizeof alpha - 1)];
      }
    }
    unsigned r = (seed = seed * 1103515245u + 12345u) >> 16;
    n = r % 12;
    for (size_t i = 0; i < n; i++) s[i] = alpha[((seed = seed * 1103515245u + 12345u) >> 16) % (sizeof alpha - 1)];
    sl_matcher *x = sl_match_compile(t, tn);
    CHECK(x != NULL);
    if (!x) continue;
    int got = sl_match(x, s, n), want = ref(t, tn, s, n);
    if (got != want) fprintf(stderr, "disagree on %.*s against %.*s: %d, want %d\n", (int)tn, t, (int)n, s, got, want);
    CHECK(got == want);
    matched += got;
    sl_match_free(x);
  }
  /* The inputs are only worth it if both answers come up often. */
  CHECK(matched > 1000 && matched < 19000);
}

static int m(const char *sel, const char *topic) {
  sl_matcher *x = sl_match_compile(sel, strlen(sel));
  if (!x) return -1;
  int r = sl_match(x, topic, strlen(topic));
  sl_match_free(x);
  return r;
}

int main(void) {
  /* exact and all */
  CHECK(m("https://example.com/books/1", "https://example.com/books/1") == 1);
  CHECK(m("https://example.com/books/1", "https://example.com/books/10") == 0);
  CHECK(m("*", "anything at all") == 1);
  sl_matcher *x = sl_match_compile("a/b", 3);
  CHECK(x && sl_match_is_exact(x));
  sl_match_free(x);

  /* globs */
  CHECK(m("https://example.com/books/*", "https://example.com/books/1") == 1);
  CHECK(m("https://example.com/books/*", "https://example.com/books/1/reviews") == 1);
  CHECK(m("https://example.com/*/reviews", "https://example.com/books/1/reviews") == 1);
  CHECK(m("https://example.com/*/reviews", "https://example.com/books/1") == 0);
  CHECK(m("*.json", "a.json") == 1 && m("*.json", "a.xml") == 0);

  /* simple expressions: one segment, no reserved characters */
  CHECK(m("https://example.com/books/{id}", "https://example.com/books/1") == 1);
  CHECK(m("https://example.com/books/{id}", "https://example.com/books/") == 1); /* empty value */
  CHECK(m("https://example.com/books/{id}", "https://example.com/books/1/reviews") == 0);
  CHECK(m("https://example.com/books/{id}.jsonld", "https://example.com/books/42.jsonld") == 1);
  CHECK(m("https://example.com/users/{user}/books/{id}", "https://example.com/users/ann/books/7") == 1);
  CHECK(m("https://example.com/{a,b}", "https://example.com/x,y") == 1);
  /* reserved expansion: across slashes */
  CHECK(m("https://example.com/{+path}", "https://example.com/books/1/reviews") == 1);
  CHECK(m("{+base}/books/{id}", "https://example.com/books/3") == 1);
  CHECK(m("https://example.com/page{#frag}", "https://example.com/page#top") == 1);
  CHECK(m("https://example.com/page{#frag}", "https://example.com/page") == 1);
  /* path, label, parameter and query operators, present or left out */
  CHECK(m("https://example.com/books{/id}", "https://example.com/books/5") == 1);
  CHECK(m("https://example.com/books{/id}", "https://example.com/books") == 1);
  CHECK(m("https://example.com/books{/id}", "https://example.com/books/5/6") == 0);
  CHECK(m("https://example.com/books{/path*}", "https://example.com/books/5/6") == 1);
  CHECK(m("https://example.com/file{.ext}", "https://example.com/file.json") == 1);
  CHECK(m("https://example.com/books{?page,sort}", "https://example.com/books?page=2&sort=asc") == 1);
  CHECK(m("https://example.com/books{?page}", "https://example.com/books") == 1);
  CHECK(m("https://example.com/books{?page}{&sort}", "https://example.com/books?page=2&sort=asc") == 1);
  CHECK(m("https://example.com/m{;x,y}", "https://example.com/m;x=1;y=2") == 1);
  CHECK(m("https://example.com/books/{id}", "https://example.org/books/1") == 0);

  /* malformed templates are refused */
  CHECK(m("https://example.com/{id", "x") == -1);
  CHECK(m("https://example.com/id}", "x") == -1);
  CHECK(m("https://example.com/{}", "x") == -1);
  CHECK(m("https://example.com/{=x}", "x") == -1);
  CHECK(m("https://example.com/{a b}", "x") == -1);
  /* A leading NUL byte makes the rest an exact topic: '*' and '{' are themselves. */
  {
    static const char sel[] = "\0https://example.com/{id}*";
    sl_matcher *x = sl_match_compile(sel, sizeof sel - 1);
    CHECK(x && sl_match_is_exact(x));
    size_t tl;
    const char *t = sl_match_text(x, &tl);
    CHECK(tl == sizeof sel - 2 && memcmp(t, sel + 1, tl) == 0);
    CHECK(sl_match(x, "https://example.com/{id}*", strlen("https://example.com/{id}*")) == 1);
    CHECK(sl_match(x, "https://example.com/1", strlen("https://example.com/1")) == 0);
    sl_match_free(x);
  }
  random_agreement();

  /* Adjacent reserved expressions and a literal that never matches: a matcher
   * that backtracks takes about 1e15 steps here; this one takes a few
   * thousand. */
  {
    char sel[256];
    size_t n = 0;
    for (int i = 0; i < 31; i++) n += (size_t)snprintf(sel + n, sizeof sel - n, "{+a}");
    n += (size_t)snprintf(sel + n, sizeof sel - n, "/never");
    sl_matcher *x = sl_match_compile(sel, n);
    CHECK(x != NULL);
    const char *topic = "https://example.com/books/1";
    CHECK(x && sl_match(x, topic, strlen(topic)) == 0);
    CHECK(x && sl_match(x, "a/never", 7) == 1);
    sl_match_free(x);
  }
  /* The same with globs: one star to return to, O(pattern x topic). */
  {
    char sel[4097], topic[4096];
    memset(sel, '*', 4095);
    sel[4095] = 'b';
    memset(topic, 'a', sizeof topic);
    sl_matcher *x = sl_match_compile(sel, 4096);
    CHECK(x != NULL);
    CHECK(x && sl_match(x, topic, sizeof topic) == 0);
    sl_match_free(x);
  }
  /* Bounds: patterns over SL_MATCH_MAX_LEN bytes or SL_MATCH_MAX_PARTS parts
   * are refused; an exact topic of any length is not a pattern. */
  {
    static char big[SL_MATCH_MAX_LEN + 2];
    memset(big, 'a', sizeof big);
    big[0] = '*';
    CHECK(sl_match_compile(big, SL_MATCH_MAX_LEN + 1) == NULL);
    sl_matcher *x = sl_match_compile(big, SL_MATCH_MAX_LEN);
    CHECK(x != NULL);
    sl_match_free(x);
    x = sl_match_compile(big + 1, SL_MATCH_MAX_LEN + 1);
    CHECK(x && sl_match_is_exact(x));
    sl_match_free(x);
    char t[256];
    size_t n = 0;
    for (int i = 0; i < SL_MATCH_MAX_PARTS + 1; i++) n += (size_t)snprintf(t + n, sizeof t - n, "{a}");
    CHECK(sl_match_compile(t, n) == NULL);
    CHECK((x = sl_match_compile(t, n - 3)) != NULL);
    sl_match_free(x);
  }
  /* A long topic (past the matcher's stack buffer) against a template. */
  {
    static char topic[5000];
    memcpy(topic, "https://example.com/", 20);
    memset(topic + 20, 'x', sizeof topic - 20);
    sl_matcher *x = sl_match_compile("https://example.com/{id}", 24);
    CHECK(x && sl_match(x, topic, sizeof topic) == 1);
    CHECK(x && sl_match(x, topic, 19) == 0);
    sl_match_free(x);
  }
  return check_done("test_match");
}
