/* redis: Redis as the engine behind the hub, for several gateway nodes (--redis).
 * A publish runs one Redis script that numbers the event gateway-wide, keeps it
 * in a stream per channel (the history) and publishes it once to every node;
 * each node reads each event once, from one pub/sub connection, and hands it to
 * its hub, which frames it once for all local subscribers. Replays after
 * Last-Event-ID come from the streams. Nothing here blocks the loop; a lost
 * connection is retried with backoff and followed by a catch-up from history.
 * Uses hub, rproto, conn (to close a subscriber that could not take its
 * replay) and hiredis with its libuv adapter. */
#ifndef SL_REDIS_H
#define SL_REDIS_H
#include <stddef.h>
#include <stdint.h>
#include "hub.h"

struct sl_server;
typedef struct sl_redis sl_redis;

/* Called once per publish: with the id the event got (err NULL), or err. */
typedef void (*sl_redis_published)(void *arg, const char *id, size_t idlen, const char *err);

/* Starts the engine for url (connecting in the background) as srv->redis.
 * 0, or -1 with err filled for a bad URL. */
int sl_redis_start(struct sl_server *srv, const char *url, char *err, size_t errlen);
/* Disconnects; the memory goes once both connections and the timer are closed. */
void sl_redis_stop(sl_redis *r);
const char *sl_redis_addr(sl_redis *r);
/* Whether publishes can go out now (connected and subscribed). */
int sl_redis_ready(sl_redis *r);

/* Publishes one event to n channels, with its topics and privacy (filtered
 * subscriptions); done is called exactly once (also when the connection is
 * lost meanwhile). 0, -ENOTCONN, -E2BIG (over SL_RMSG_MAX_TOPICS topics) or
 * -ENOMEM (done not called). */
int sl_redis_publish(sl_redis *r, const sl_hub_str *chans, int n, const char *data, size_t len, const char *id,
                     size_t idlen, const char *event, size_t evlen, long long retry, const sl_hub_str *topics,
                     unsigned ntopics, int priv, sl_redis_published done,
                     void *arg);

/* Whether Redis history of the channel still keeps the event of that id;
 * done gets "1" or "0" (or the error), exactly once. 0, -ENOTCONN or -ENOMEM
 * (done not called). */
int sl_redis_kept(sl_redis *r, const char *chan, size_t len, const char *id, size_t idlen, sl_redis_published done,
                  void *arg);

/* Fetches the replay of a held subscriber (sl_hub_subscribe_held) after last_id
 * and releases it; while Redis is away, as soon as it is back. 0 or -ENOMEM. */
int sl_redis_replay(sl_redis *r, sl_hub_sub *sub, const char *last_id, size_t lidlen);
/* The subscriber is going away: forget its replay, if one is under way. */
void sl_redis_replay_cancel(sl_redis *r, sl_hub_sub *sub);

typedef struct sl_redis_stats {
  int connected;
  uint64_t reconnects, received, published, replays;
} sl_redis_stats;
void sl_redis_get_stats(sl_redis *r, sl_redis_stats *out);
/* Runs one command (argc words) on the engine's command connection, pipelined
 * with its other commands; done(arg, reply) gets hiredis's redisReply (NULL if
 * the connection was lost), valid only during the call. 0, -ENOTCONN (not
 * connected: done never runs) or -ENOMEM. */
typedef void (*sl_redis_reply)(void *arg, void *reply);
int sl_redis_command(sl_redis *r, int argc, const char **argv, const size_t *lens, sl_redis_reply done, void *arg);

#endif
