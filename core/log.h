/* log: leveled log lines on stderr with a timestamp. Uses libc only.
 * The level is process-wide: every worker writes to the same stderr. */
#ifndef SL_LOG_H
#define SL_LOG_H

enum { SL_LOG_ERROR = 0, SL_LOG_WARN, SL_LOG_INFO, SL_LOG_DEBUG };

/* Parses "error", "warn", "info" or "debug"; -1 if none of them. */
int sl_log_parse_level(const char *name);
void sl_log_set_level(int level);
int sl_log_enabled(int level);
void sl_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define sl_error(...) sl_log(SL_LOG_ERROR, __VA_ARGS__)
#define sl_warn(...) sl_log(SL_LOG_WARN, __VA_ARGS__)
#define sl_info(...) sl_log(SL_LOG_INFO, __VA_ARGS__)
#define sl_debug(...) sl_log(SL_LOG_DEBUG, __VA_ARGS__)

#endif
