/* Unit tests for match: exact topics, "*", globs and URI templates (RFC 6570
 * operators as Mercure subscriptions use them), and malformed templates. */
#include <string.h>
#include "../match.h"
#include "check.h"

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
  return check_done("test_match");
}
