/* match: see match.h.
 *
 * A URI template is compiled into literal parts and expressions. An
 * expression matches what its expansion could have produced: for "{x}" the
 * characters simple expansion leaves unencoded (unreserved, "%" and the ","
 * that joins list values), for "{+x}" and "{#x}" reserved characters too, and
 * for "{.x}", "{/x}", "{;x}", "{?x}", "{&x}" the operator's prefix and
 * separators; an expression with an operator may also expand to nothing
 * (undefined variables).
 *
 * Selectors can come from clients (Mercure's topic= parameters), so matching
 * never backtracks: a template runs over the topic once per part, keeping the
 * set of offsets the parts so far can end at (dynamic programming over part
 * and offset), and a glob keeps one star to return to. Both cost at most
 * O(selector length x topic length) steps, and selectors are capped at
 * SL_MATCH_MAX_LEN bytes and SL_MATCH_SL_MATCH_MAX_PARTS parts. */
#include "match.h"
#include <stdlib.h>
#include <string.h>

enum { M_EXACT, M_ALL, M_GLOB, M_TEMPLATE };
enum { P_LIT, P_EXPR };

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
  part parts[SL_MATCH_MAX_PARTS];
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
      if (m->nparts == SL_MATCH_MAX_PARTS) return -1;
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
    if (m->nparts == SL_MATCH_MAX_PARTS) return -1;
    m->parts[m->nparts++] = p;
    i = lit = end + 1;
  }
  if (i > lit) {
    if (m->nparts == SL_MATCH_MAX_PARTS) return -1;
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
  if ((m->kind == M_GLOB || m->kind == M_TEMPLATE) && len > SL_MATCH_MAX_LEN) {
    free(m);
    return NULL;
  }
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

/* Whether c can begin an expression with operator op ('?' may continue a query with '&'). */
static int prefix_char(const part *p, unsigned char c) { return c == (unsigned char)p->op || (p->op == '?' && c == '&'); }

/* One part over the topic s[0..n): from the offsets set in cur (all within
 * [*lo, *hi]), sets in next the offsets the part can end at and narrows
 * [*lo, *hi] to them. O(n + literal length x offsets) steps. Returns whether
 * any offset is left. */
static int step(const sl_matcher *m, const part *p, const char *s, size_t n, const unsigned char *cur,
                unsigned char *next, size_t *lo, size_t *hi) {
  size_t a = *lo, b = *hi, nlo = (size_t)-1, nhi = 0;
  memset(next + a, 0, n + 1 - a);
  if (p->type == P_LIT) {
    const char *lit = m->text + p->off;
    for (size_t j = a; j <= b && j + p->len <= n; j++) {
      if (cur[j] && memcmp(s + j, lit, p->len) == 0) {
        next[j + p->len] = 1;
        if (nlo == (size_t)-1) nlo = j + p->len;
        nhi = j + p->len;
      }
    }
  } else {
    /* A value is a run of value characters; it starts where a part before
     * ended (after the operator's prefix, for an operator that has one), and
     * an operator's expression may also be left out. */
    int optional = p->op && p->op != '+', run = 0;
    for (size_t j = a; j <= n; j++) {
      int starts = optional ? j > a && cur[j - 1] && prefix_char(p, (unsigned char)s[j - 1]) : cur[j];
      run = starts || (run && value_char(p, (unsigned char)s[j - 1]));
      if (run || (optional && cur[j])) {
        next[j] = 1;
        if (nlo == (size_t)-1) nlo = j;
        nhi = j;
      } else if (j > b) {
        break; /* nothing started past the last offset, and no run goes on */
      }
    }
  }
  *lo = nlo;
  *hi = nhi;
  return nlo != (size_t)-1;
}

static int match_template(const sl_matcher *m, const char *s, size_t n) {
  unsigned char small[2][256];
  unsigned char *set = n + 1 <= sizeof small[0] ? &small[0][0] : malloc(2 * (n + 1));
  if (!set) return 0;
  unsigned char *cur = set, *next = n + 1 <= sizeof small[0] ? &small[1][0] : set + n + 1;
  memset(cur, 0, n + 1);
  cur[0] = 1;
  size_t lo = 0, hi = 0;
  int ok = 1;
  for (int k = 0; k < m->nparts && ok; k++) {
    ok = step(m, &m->parts[k], s, n, cur, next, &lo, &hi);
    unsigned char *t = cur;
    cur = next;
    next = t;
  }
  ok = ok && cur[n];
  if (set != &small[0][0]) free(set);
  return ok;
}

int sl_match(const sl_matcher *m, const char *topic, size_t len) {
  switch (m->kind) {
    case M_ALL: return 1;
    case M_EXACT: return len == m->len && memcmp(topic, m->text, len) == 0;
    case M_GLOB: return glob(m->text, m->len, topic, len);
    default: return match_template(m, topic, len);
  }
}
