/* sse: event-stream framing to the WHATWG rules: data lines split on LF, CR and
 * CRLF, id/event/retry fields, comments. Builds into sl_sb from buf.h. */
#ifndef SL_SSE_H
#define SL_SSE_H
#include "buf.h"

/* Checks that an id or event name may go on the wire: no CR, LF or NUL. 0 or -EINVAL. */
int sl_sse_check_field(const char *s, size_t len);

/* Appends one event. id/event may be NULL (absent); retry < 0 means absent.
 * Returns 0, -EINVAL for an id or event with CR, LF or NUL (nothing appended), or -ENOMEM. */
int sl_sse_event(sl_sb *out, const char *data, size_t len, const char *id, size_t idlen,
                 const char *event, size_t evlen, long long retry);

/* One event framed into a new buffer (sized for it), as sl_sse_event; NULL
 * for a bad id or event name or out of memory. */
sl_buf *sl_sse_frame(const char *data, size_t len, const char *id, size_t idlen, const char *event, size_t evlen,
                     long long retry);

/* Appends a comment: every line of text prefixed by ':' and a blank line after it. */
int sl_sse_comment(sl_sb *out, const char *text, size_t len);

/* Appends "retry: N\n\n" on its own. */
int sl_sse_retry(sl_sb *out, long long retry);

#endif
