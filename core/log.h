/* log: leveled log lines on stderr with a timestamp, as text or as one JSON
 * object per line (--log-format json), and the access line of each request.
 * Uses libc only. The level and format are process-wide. */
#ifndef SL_LOG_H
#define SL_LOG_H
#include <stddef.h>

enum { SL_LOG_ERROR = 0, SL_LOG_WARN, SL_LOG_INFO, SL_LOG_DEBUG };

/* Parses "error", "warn", "info" or "debug"; -1 if none of them. */
int sl_log_parse_level(const char *name);
void sl_log_set_level(int level);
/* "text" or "json"; 0, or -1 for anything else. */
int sl_log_set_format(const char *name);
int sl_log_enabled(int level);
void sl_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* One request, logged at info when it is done (a stream: when it ends). */
typedef struct sl_access {
  const char *remote, *method, *path;
  size_t path_len;
  int status;
  unsigned long long bytes;
  double seconds;
  const char *mode;         /* a stream's mode (once, stream, subscribe, raw), NULL for a plain response */
  unsigned long long events; /* events sent on a stream */
  const char *ended;        /* how a stream ended: client, handler, script, slow, error, shutdown */
} sl_access;
void sl_log_access(const sl_access *a);

#define sl_error(...) sl_log(SL_LOG_ERROR, __VA_ARGS__)
#define sl_warn(...) sl_log(SL_LOG_WARN, __VA_ARGS__)
#define sl_info(...) sl_log(SL_LOG_INFO, __VA_ARGS__)
#define sl_debug(...) sl_log(SL_LOG_DEBUG, __VA_ARGS__)

#endif
