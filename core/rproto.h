/* rproto: the parts of the Redis engine that need no connection: parsing a
 * redis:// or unix:// URL, and parsing the event messages that the engine's
 * Redis scripts publish and return for replay. Pure C: uses nothing but libc. */
#ifndef SL_RPROTO_H
#define SL_RPROTO_H
#include <stddef.h>
#include <stdint.h>

typedef struct sl_redis_url {
  char host[256];      /* empty for a unix socket */
  int port;
  char path[256];      /* the unix socket, or empty */
  char user[128];      /* ACL user, or empty */
  char password[256];  /* empty: no AUTH */
  int db;
} sl_redis_url;

/* Parses redis://[[user]:password@]HOST[:PORT][/DB] or unix:///path[?db=N].
 * 0, or -1 with err filled. */
int sl_redis_url_parse(const char *url, sl_redis_url *out, char *err, size_t errlen);

#define SL_RMSG_MAX_CHANS 1024
#define SL_RMSG_MAX_TOPICS 256

typedef struct sl_rmsg_str {
  const char *p;
  size_t len;
} sl_rmsg_str;

/* One event as the engine carries it:
 *   v2,SEQ,RETRY,IDLEN,EVLEN,PRIVATE,NTOPICS,TOPICLEN...,CHANLEN...\n ID EVENT TOPIC... CHAN... DATA
 * in decimal; RETRY -1 for none, IDLEN -1 when the id is SEQ, EVLEN -1 for no
 * event name, PRIVATE 0 or 1. Messages of the first version (no "v2,", no
 * PRIVATE, NTOPICS and topics), still in a stream's history, parse too. The
 * strings point into the parsed buffer. */
typedef struct sl_rmsg {
  uint64_t seq;
  long long retry;
  sl_rmsg_str id;      /* p NULL: the id is seq */
  sl_rmsg_str event;   /* p NULL: none */
  sl_rmsg_str data;
  sl_rmsg_str chans[SL_RMSG_MAX_CHANS];
  int nchans;
  sl_rmsg_str topics[SL_RMSG_MAX_TOPICS];
  int ntopics;
  int priv;
} sl_rmsg;

/* 0, or -1 when p[0..len) is not a well-formed message. */
int sl_rmsg_parse(const char *p, size_t len, sl_rmsg *out);

#endif
