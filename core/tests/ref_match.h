/* A reference matcher for URI-template selectors, shared by test_match and
 * fuzz_match: plain recursion that the gateway's matcher must agree with. */
#ifndef SL_REF_MATCH_H
#define SL_REF_MATCH_H
#include <string.h>

/* A reference matcher for templates, written for clarity: it tries every way
 * of splitting the topic among the parts (exponential in the worst case, so
 * it only sees short random inputs). The gateway's matcher must agree. */
static inline int ref_value_char(char op, int explode, unsigned char c) {
  int unres = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
              c == '_' || c == '~' || c == '%' || c >= 0x80;
  int res = c && strchr(":/?#[]@!$&'()*+,;=", c) != NULL;
  switch (op) {
    case '+':
    case '#': return unres || res;
    case '.': return unres || c == ',';
    case '/': return unres || c == ',' || (explode && c == '/');
    case ';': return unres || c == ',' || c == '=' || c == ';';
    case '?':
    case '&': return unres || c == ',' || c == '=' || c == '&';
    default: return unres || c == ',';
  }
}

static inline int ref(const char *t, size_t tn, const char *s, size_t n) {
  if (tn == 0) return n == 0;
  if (t[0] != '{') {
    const char *brace = memchr(t, '{', tn);
    size_t lit = brace ? (size_t)(brace - t) : tn;
    return n >= lit && memcmp(t, s, lit) == 0 && ref(t + lit, tn - lit, s + lit, n - lit);
  }
  const char *close = memchr(t, '}', tn);
  size_t el = (size_t)(close - t) + 1;
  char op = strchr("+#./;?&", t[1]) ? t[1] : 0;
  int explode = memchr(t, '*', el) || memchr(t, ',', el);
  size_t start = 0;
  if (op && op != '+') {
    if (ref(t + el, tn - el, s, n)) return 1;
    if (!n || !(s[0] == op || (op == '?' && s[0] == '&'))) return 0;
    start = 1;
  }
  for (size_t len = start;; len++) {
    if (ref(t + el, tn - el, s + len, n - len)) return 1;
    if (len == n || !ref_value_char(op, explode, (unsigned char)s[len])) return 0;
  }
}

#endif
