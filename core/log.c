/* log: see log.h. */
#include "log.h"
#include "buf.h"
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static int log_level = SL_LOG_INFO;
static int log_json;
static const char *const names[] = {"error", "warn", "info", "debug"};

int sl_log_parse_level(const char *name) {
  for (int i = 0; i < 4; i++)
    if (strcmp(name, names[i]) == 0) return i;
  return -1;
}

void sl_log_set_level(int level) { log_level = level; }

int sl_log_set_format(const char *name) {
  if (strcmp(name, "text") == 0) log_json = 0;
  else if (strcmp(name, "json") == 0) log_json = 1;
  else return -1;
  return 0;
}

int sl_log_enabled(int level) { return level <= log_level; }

/* A line being built: at most 8 KiB, cut (never overflowed) beyond. */
typedef struct line {
  char b[8192];
  size_t n;
} line;

static void add(line *l, const char *s, size_t n) {
  if (n > sizeof l->b - 2 - l->n) n = sizeof l->b - 2 - l->n;
  memcpy(l->b + l->n, s, n);
  l->n += n;
}

static void adds(line *l, const char *s) { add(l, s, strlen(s)); }

static void addf(line *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void addf(line *l, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int m = vsnprintf(l->b + l->n, sizeof l->b - 1 - l->n, fmt, ap);
  va_end(ap);
  if (m > 0) l->n += (size_t)m < sizeof l->b - 2 - l->n ? (size_t)m : sizeof l->b - 2 - l->n;
}

/* Appends s as a JSON string: quotes, backslashes and control bytes escaped,
 * bytes that are not UTF-8 replaced by U+FFFD (a log shipper must parse it). */
static void add_json(line *l, const char *s, size_t n) {
  static const char hex[] = "0123456789abcdef";
  add(l, "\"", 1);
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)s[i];
    if (ch >= 0x80) {
      size_t k = sl_utf8_len((const unsigned char *)s + i, n - i);
      if (k) {
        add(l, s + i, k);
        i += k - 1;
      } else {
        add(l, "\\ufffd", 6);
      }
      continue;
    }
    if (ch == '"' || ch == '\\') {
      char e[2] = {'\\', (char)ch};
      add(l, e, 2);
    } else if (ch < 0x20 || ch == 0x7f) {
      char e[6] = {'\\', 'u', '0', '0', hex[ch >> 4], hex[ch & 15]};
      add(l, e, 6);
    } else {
      add(l, s + i, 1);
    }
  }
  add(l, "\"", 1);
}

static void start(line *l, int level) {
  struct timespec ts;
  struct tm tm;
  clock_gettime(CLOCK_REALTIME, &ts);
  gmtime_r(&ts.tv_sec, &tm);
  l->n = 0;
  addf(l, log_json ? "{\"time\":\"%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ\",\"level\":\"%s\"" : "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ [%s] ",
       tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000,
       names[level]);
}

static void finish(line *l) {
  if (log_json) adds(l, "}");
  l->b[l->n++] = '\n';
  fwrite(l->b, 1, l->n, stderr);
}

void sl_log(int level, const char *fmt, ...) {
  if (level > log_level) return;
  line l;
  start(&l, level);
  char msg[8000];
  va_list ap;
  va_start(ap, fmt);
  int m = vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  size_t mlen = m < 0 ? 0 : (size_t)m < sizeof msg ? (size_t)m : sizeof msg - 1;
  if (log_json) {
    adds(&l, ",\"msg\":");
    add_json(&l, msg, mlen);
  } else {
    add(&l, msg, mlen);
  }
  finish(&l);
}

void sl_log_access(const sl_access *a) {
  if (!sl_log_enabled(SL_LOG_INFO)) return;
  line l;
  start(&l, SL_LOG_INFO);
  if (log_json) {
    adds(&l, ",\"msg\":\"access\",\"remote\":");
    add_json(&l, a->remote, strlen(a->remote));
    adds(&l, ",\"method\":");
    add_json(&l, a->method, strlen(a->method));
    adds(&l, ",\"path\":");
    add_json(&l, a->path, a->path_len);
    addf(&l, ",\"status\":%d,\"bytes\":%llu,\"duration\":%.6f", a->status, a->bytes, a->seconds);
    if (a->mode) {
      addf(&l, ",\"mode\":\"%s\",\"events\":%llu", a->mode, a->events);
      if (a->ended) addf(&l, ",\"ended\":\"%s\"", a->ended);
    }
  } else {
    addf(&l, "%s %s %.*s %d %llu %.1fms", a->remote, a->method, (int)a->path_len, a->path, a->status, a->bytes,
         a->seconds * 1e3);
    if (a->mode) {
      addf(&l, " mode=%s events=%llu", a->mode, a->events);
      if (a->ended) addf(&l, " ended=%s", a->ended);
    }
  }
  finish(&l);
}
