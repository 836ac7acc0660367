/* match: see match.h.
 *
 * A URI template is compiled into literal parts and expressions. An
 * expression matches what its expansion could have produced: for "{x}" the
 * characters simple expansion leaves unencoded (unreserved, "%" and the ","
 * that joins list values), for "{+x}" and "{#x}" reserved characters too, and
 * for "{.x}", "{/x}", "{;x}", "{?x}", "{&x}" the operator's prefix and
 * separators; an expression with an operator may also expand to nothing
 * (undefined variables). Matching backtracks over the parts; templates have a
 * handful of expressions, topics a few hundred bytes. */
#include "match.h"
#include <stdlib.h>
#include <string.h>

enum { M_EXACT, M_ALL, M_GLOB, M_TEMPLATE };
enum { P_LIT, P_EXPR };
#define MAX_PARTS 32

typedef struct part {
  int type;
  char op;              /* 0, '+', '#', '.', '/', ';', '?', '&' */
  int explode;          /* a "*" varspec or several variables: separators may repeat */
  size_t off, len;      /* the literal in m->text */
} part;

struct sl_matcher {
  int kind;
  size_t len;
  int nparts;
  part parts[MAX_PARTS];
  char text[];
};

static int unreserved(unsigned char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
         c == '_' || c == '~' || c == '%' || c >= 0x80;
}

static int reserved(unsigned char c) { return c && strchr(":/?#[]@!$&'()*+,;=", c) != NULL; }

/* Whether c can stand in the value of an expression with operator op. */
static int value_char(const part *p, unsigned char c) {
  switch (p->op) {
    case '+':
    case '#': return unreserved(c) || reserved(c);
    case '.': return unreserved(c) || c == ',';
    case '/': return unreserved(c) || c == ',' || (p->explode && c == '/');
    case ';': return unreserved(c) || c == ',' || c == '=' || c == ';';
    case '?':
    case '&': return unreserved(c) || c == ',' || c == '=' || c == '&';
    default: return unreserved(c) || c == ',';
  }
}

static int compile_template(sl_matcher *m) {
  const char *t = m->text;
  size_t i = 0, lit = 0;
  while (i < m->len) {
    if (t[i] == '}') return -1;
    if (t[i] != '{') {
      i++;
      continue;
    }
    if (i > lit) {
      if (m->nparts == MAX_PARTS) return -1;
      m->parts[m->nparts++] = (part){P_LIT, 0, 0, lit, i - lit};
    }
    const char *close = memchr(t + i, '}', m->len - i);
    if (!close) return -1;
    size_t j = i + 1, end = (size_t)(close - t);
    part p = {P_EXPR, 0, 0, 0, 0};
    if (j < end && strchr("+#./;?&", t[j])) p.op = t[j++];
    else if (j < end && strchr("=,!@|", t[j])) return -1; /* reserved for future operators */
    if (j == end) return -1;
    for (size_t k = j; k < end; k++) {
      unsigned char c = (unsigned char)t[k];
      if (c == '*' || c == ',') p.explode = 1;
      else if (!(c == '_' || c == '.' || c == ':' || c == '%' || (c >= '0' && c <= '9') ||
                 (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z')))
        return -1;
    }
    if (m->nparts == MAX_PARTS) return -1;
    m->parts[m->nparts++] = p;
    i = lit = end + 1;
  }
  if (i > lit) {
    if (m->nparts == MAX_PARTS) return -1;
    m->parts[m->nparts++] = (part){P_LIT, 0, 0, lit, i - lit};
  }
  return 0;
}

sl_matcher *sl_match_compile(const char *sel, size_t len) {
  int exact = len > 0 && sel[0] == '\0';
  if (exact) sel++, len--;
  sl_matcher *m = calloc(1, sizeof *m + len + 1);
  if (!m) return NULL;
  memcpy(m->text, sel, len);
  m->len = len;
  if (exact) m->kind = M_EXACT;
  else if (len == 1 && sel[0] == '*') m->kind = M_ALL;
  else if (memchr(sel, '{', len) || memchr(sel, '}', len)) m->kind = M_TEMPLATE;
  else if (memchr(sel, '*', len)) m->kind = M_GLOB;
  else m->kind = M_EXACT;
  if (m->kind == M_TEMPLATE && compile_template(m)) {
    free(m);
    return NULL;
  }
  return m;
}

void sl_match_free(sl_matcher *m) { free(m); }

int sl_match_is_exact(const sl_matcher *m) { return m->kind == M_EXACT; }

const char *sl_match_text(const sl_matcher *m, size_t *len) {
  *len = m->len;
  return m->text;
}

const char *sl_match_prefix(const sl_matcher *m, size_t *len) {
  const char *stop = NULL;
  if (m->kind == M_ALL) stop = m->text;
  else if (m->kind == M_GLOB) stop = memchr(m->text, '*', m->len);
  else if (m->kind == M_TEMPLATE) stop = memchr(m->text, '{', m->len);
  *len = stop ? (size_t)(stop - m->text) : m->len;
  return m->text;
}

/* '*' matches any run of characters; everything else itself. */
static int glob(const char *p, size_t pn, const char *s, size_t sn) {
  size_t pi = 0, si = 0, star = (size_t)-1, mark = 0;
  while (si < sn) {
    if (pi < pn && p[pi] == '*') {
      star = pi++;
      mark = si;
    } else if (pi < pn && p[pi] == s[si]) {
      pi++;
      si++;
    } else if (star != (size_t)-1) {
      pi = star + 1;
      si = ++mark;
    } else {
      return 0;
    }
  }
  while (pi < pn && p[pi] == '*') pi++;
  return pi == pn;
}

static int match_parts(const sl_matcher *m, int k, const char *s, size_t n) {
  if (k == m->nparts) return n == 0;
  const part *p = &m->parts[k];
  if (p->type == P_LIT) {
    return n >= p->len && memcmp(s, m->text + p->off, p->len) == 0 &&
           match_parts(m, k + 1, s + p->len, n - p->len);
  }
  size_t start = 0;
  if (p->op && p->op != '+') {
    /* An operator's expression may be left out entirely... */
    if (match_parts(m, k + 1, s, n)) return 1;
    /* ...or starts with its prefix ('?' may continue a query with '&'). */
    if (!n || !(s[0] == p->op || (p->op == '?' && s[0] == '&'))) return 0;
    start = 1;
  }
  for (size_t len = start;; len++) {
    if (match_parts(m, k + 1, s + len, n - len)) return 1;
    if (len == n || !value_char(p, (unsigned char)s[len])) return 0;
  }
}

int sl_match(const sl_matcher *m, const char *topic, size_t len) {
  switch (m->kind) {
    case M_ALL: return 1;
    case M_EXACT: return len == m->len && memcmp(topic, m->text, len) == 0;
    case M_GLOB: return glob(m->text, m->len, topic, len);
    default: return match_parts(m, 0, topic, len);
  }
}
