/* whatwg: a minimal event-stream reader for the tests, after WHATWG HTML 9.2.6:
 * the data buffer a browser builds from a stream, and how many events it ends.
 * CR, LF and CRLF all end a line; "data:" lines lose one leading space. */
#ifndef SL_TEST_WHATWG_H
#define SL_TEST_WHATWG_H
#include <stddef.h>
#include <string.h>

/* Writes the data of s[0..n) into out (room for n bytes); returns its length.
 * *events counts the blank lines, each the end of one event. */
static size_t whatwg_data(const char *s, size_t n, char *out, int *events) {
  size_t o = 0, i = 0;
  *events = 0;
  while (i < n) {
    size_t j = i;
    while (j < n && s[j] != '\n' && s[j] != '\r') j++;
    if (j == i) (*events)++;
    else if (j - i >= 5 && memcmp(s + i, "data:", 5) == 0) {
      size_t v = i + 5;
      if (v < j && s[v] == ' ') v++;
      memcpy(out + o, s + v, j - v);
      o += j - v;
      out[o++] = '\n';
    }
    if (j < n && s[j] == '\r' && j + 1 < n && s[j + 1] == '\n') j++;
    i = j + 1;
  }
  if (o && out[o - 1] == '\n') o--;
  return o;
}

#endif
