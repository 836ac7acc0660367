/* rproto: URL and message parsing for the Redis engine. See rproto.h. */
#include "rproto.h"
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(char *err, size_t errlen, const char *msg, const char *url) {
  snprintf(err, errlen, "bad Redis URL '%s': %s", url, msg);
  return -1;
}

/* Copies p[0..n) into out (cap bytes), percent-decoding; -1 if it does not fit or is malformed. */
static int copy_decoded(char *out, size_t cap, const char *p, size_t n) {
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    char ch = p[i];
    if (ch == '%') {
      if (i + 2 >= n) return -1;
      char hex[3] = {p[i + 1], p[i + 2], 0};
      char *end;
      long v = strtol(hex, &end, 16);
      if (*end || !hex[0] || !hex[1]) return -1;
      ch = (char)v;
      i += 2;
    }
    if (o + 1 >= cap) return -1;
    out[o++] = ch;
  }
  out[o] = '\0';
  return 0;
}

static int parse_db(const char *s, int *db) {
  if (!*s) return 0;
  char *end;
  long v = strtol(s, &end, 10);
  if (*end || v < 0 || v > 65535 || s[0] < '0' || s[0] > '9') return -1;
  *db = (int)v;
  return 0;
}

int sl_redis_url_parse(const char *url, sl_redis_url *out, char *err, size_t errlen) {
  memset(out, 0, sizeof *out);
  out->port = 6379;
  if (strncmp(url, "unix://", 7) == 0) {
    const char *path = url + 7;
    const char *q = strchr(path, '?');
    size_t n = q ? (size_t)(q - path) : strlen(path);
    if (n == 0 || path[0] != '/') return fail(err, errlen, "want unix:///absolute/path", url);
    if (n >= sizeof out->path) return fail(err, errlen, "path too long", url);
    memcpy(out->path, path, n);
    if (q && (strncmp(q, "?db=", 4) != 0 || parse_db(q + 4, &out->db)))
      return fail(err, errlen, "the only query is ?db=N", url);
    return 0;
  }
  if (strncmp(url, "redis://", 8) != 0) return fail(err, errlen, "want redis://HOST:PORT or unix:///path", url);
  const char *p = url + 8;
  const char *at = strrchr(p, '@');
  if (at) {
    const char *colon = memchr(p, ':', (size_t)(at - p));
    if (!colon) return fail(err, errlen, "credentials are [user]:password@", url);
    if (copy_decoded(out->user, sizeof out->user, p, (size_t)(colon - p)) ||
        copy_decoded(out->password, sizeof out->password, colon + 1, (size_t)(at - colon - 1)))
      return fail(err, errlen, "bad user or password", url);
    p = at + 1;
  }
  const char *slash = strchr(p, '/');
  size_t hl = slash ? (size_t)(slash - p) : strlen(p);
  const char *hostend = p + hl;
  const char *portp = NULL;
  if (p[0] == '[') {
    const char *close = memchr(p, ']', hl);
    if (!close) return fail(err, errlen, "unclosed [", url);
    if (close + 1 < hostend) {
      if (close[1] != ':') return fail(err, errlen, "bad port", url);
      portp = close + 2;
    }
    if ((size_t)(close - p - 1) >= sizeof out->host) return fail(err, errlen, "host too long", url);
    memcpy(out->host, p + 1, (size_t)(close - p - 1));
  } else {
    const char *colon = memchr(p, ':', hl);
    size_t n = colon ? (size_t)(colon - p) : hl;
    if (n >= sizeof out->host) return fail(err, errlen, "host too long", url);
    memcpy(out->host, p, n);
    if (colon) portp = colon + 1;
  }
  if (!out->host[0]) return fail(err, errlen, "no host", url);
  if (portp) {
    char *end;
    long v = strtol(portp, &end, 10);
    if (end != hostend || portp == hostend || v < 1 || v > 65535) return fail(err, errlen, "bad port", url);
    out->port = (int)v;
  }
  if (slash && parse_db(slash + 1, &out->db)) return fail(err, errlen, "bad database number", url);
  return 0;
}

/* Reads a decimal (optionally negative) number ended by one of the stop characters. */
static int num(const char **p, const char *end, long long *v) {
  const char *s = *p;
  int neg = 0;
  if (s < end && *s == '-') neg = 1, s++;
  if (s >= end || *s < '0' || *s > '9') return -1;
  unsigned long long x = 0;
  int digits = 0;
  while (s < end && *s >= '0' && *s <= '9') {
    if (++digits > 19) return -1;
    x = x * 10 + (unsigned)(*s++ - '0');
  }
  if (x > (unsigned long long)9223372036854775807LL) return -1;
  *v = neg ? -(long long)x : (long long)x;
  *p = s;
  return 0;
}

int sl_rmsg_parse(const char *p, size_t len, sl_rmsg *out) {
  const char *s = p, *end = p + len;
  const char *nl = memchr(p, '\n', len);
  if (!nl) return -1;
  int v2 = nl - s > 3 && memcmp(s, "v2,", 3) == 0;
  if (v2) s += 3;
  long long f[6 + SL_RMSG_MAX_TOPICS + SL_RMSG_MAX_CHANS];
  int nf = 0;
  while (s < nl) {
    if (nf == (int)(sizeof f / sizeof f[0])) return -1;
    if (num(&s, nl, &f[nf])) return -1;
    nf++;
    if (s < nl && *s++ != ',') return -1;
    if (s == nl && s[-1] == ',') return -1;
  }
  if (nf < 5) return -1; /* an event has at least one channel */
  if (f[0] <= 0 || f[1] < -1 || f[2] < -1 || f[3] < -1) return -1;
  int first = 4, nt = 0;
  if (v2) {
    if (nf < 7 || (f[4] != 0 && f[4] != 1) || f[5] < 0 || f[5] > SL_RMSG_MAX_TOPICS || nf < 7 + f[5]) return -1;
    nt = (int)f[5];
    first = 6;
  }
  if (nf - first - nt < 1 || nf - first - nt > SL_RMSG_MAX_CHANS) return -1;
  memset(out, 0, offsetof(sl_rmsg, chans));
  out->seq = (uint64_t)f[0];
  out->retry = f[1];
  out->priv = v2 && f[4] == 1;
  out->ntopics = nt;
  out->nchans = nf - first - nt;
  s = nl + 1;
  size_t left = (size_t)(end - s);
  if (f[2] >= 0) {
    if ((size_t)f[2] > left) return -1;
    out->id.p = s, out->id.len = (size_t)f[2], s += f[2], left -= (size_t)f[2];
  }
  if (f[3] >= 0) {
    if ((size_t)f[3] > left) return -1;
    out->event.p = s, out->event.len = (size_t)f[3], s += f[3], left -= (size_t)f[3];
  }
  for (int i = 0; i < nt; i++) {
    long long n = f[first + i];
    if (n < 0 || (size_t)n > left) return -1;
    out->topics[i].p = s, out->topics[i].len = (size_t)n, s += n, left -= (size_t)n;
  }
  for (int i = 0; i < out->nchans; i++) {
    long long n = f[first + nt + i];
    if (n <= 0 || (size_t)n > left) return -1;
    out->chans[i].p = s, out->chans[i].len = (size_t)n, s += n, left -= (size_t)n;
  }
  out->data.p = s;
  out->data.len = left;
  return 0;
}
