/* libFuzzer target: topic selectors. The first two bytes give the selector's
 * length; the rest of the input is the topic. Any selector either compiles or
 * is refused, matching never crashes, and a template agrees with the
 * reference matcher on inputs small enough for it. The run's -timeout bounds
 * the time one input may take: a matcher that backtracks fails it. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "../match.h"
#include "ref_match.h"

int LLVMFuzzerTestOneInput(const uint8_t *in, size_t size) {
  if (size < 2) return 0;
  size_t sl = ((size_t)in[0] << 8 | in[1]) % (size - 1);
  const char *sel = (const char *)in + 2, *topic = sel + sl;
  size_t tn = size - 2 - sl;
  sl_matcher *m = sl_match_compile(sel, sl);
  if (!m) return 0;
  int got = sl_match(m, topic, tn);
  size_t pl;
  const char *prefix = sl_match_prefix(m, &pl);
  /* Every topic selected begins with the selector's literal start. */
  if (got && (pl > tn || memcmp(prefix, topic, pl) != 0)) abort();
  /* The reference is exponential: only short templates and topics. */
  if (sl && sel[0] != '\0' && tn <= 12 && sl <= 40 && (memchr(sel, '{', sl) || memchr(sel, '}', sl)) &&
      !memchr(sel, '\0', sl) && got != ref(sel, sl, topic, tn))
    abort();
  sl_match_free(m);
  return 0;
}
