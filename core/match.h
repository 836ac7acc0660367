/* match: topic selectors, compiled once and matched against event topics:
 * an exact topic, "*" (every topic), a glob ("*" in it: any run of
 * characters) or a URI template (RFC 6570, as Mercure's subscriptions use
 * them: "{" in it). Pure C: no loop, no Lua. */
#ifndef SL_MATCH_H
#define SL_MATCH_H
#include <stddef.h>

typedef struct sl_matcher sl_matcher;

/* The bounds that keep matching cheap whatever a client chooses: a glob or a
 * template has at most SL_MATCH_MAX_LEN bytes, a template at most
 * SL_MATCH_MAX_PARTS parts (literals and expressions). sl_match then takes
 * O(selector length x topic length) steps at most; it never backtracks. */
#define SL_MATCH_MAX_LEN 4096
#define SL_MATCH_MAX_PARTS 32

/* Compiles a selector; NULL if out of memory, the template is malformed
 * (an unclosed "{", an unknown operator) or a pattern is over the bounds. A
 * selector whose first byte is NUL is the exact topic after it, whatever
 * characters it holds. */
sl_matcher *sl_match_compile(const char *sel, size_t len);
void sl_match_free(sl_matcher *m);
/* Whether the topic matches. */
int sl_match(const sl_matcher *m, const char *topic, size_t len);
/* Whether the selector is a plain topic (matched by equality). */
int sl_match_is_exact(const sl_matcher *m);
/* The selector's text (for an exact one: the topic). */
const char *sl_match_text(const sl_matcher *m, size_t *len);
/* The literal start every topic it selects begins with (an exact one: the
 * whole topic; "*" and patterns that start with a wildcard: none, *len = 0). */
const char *sl_match_prefix(const sl_matcher *m, size_t *len);

#endif
