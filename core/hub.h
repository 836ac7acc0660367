/* hub: pub/sub channels in a hash map, subscriber sets with O(1) add and
 * remove, history rings with a TTL, gateway-wide increasing ids and replay
 * after Last-Event-ID. An event is framed once (sse) into a refcounted buffer
 * (buf) that every subscriber's queue shares. Pure C: no loop, no Lua. */
#ifndef SL_HUB_H
#define SL_HUB_H
#include <stddef.h>
#include <stdint.h>
#include "buf.h"
#include "match.h"

typedef struct sl_hub_str {
  const char *p;
  size_t len;
} sl_hub_str;

/* What a publish can say about an event beyond its channels: the topics it is
 * about, and whether it is private (only for subscribers granted one of them). */
typedef struct sl_hub_attrs {
  unsigned ntopics;
  int priv;
  sl_hub_str topics[]; /* their bytes follow the array */
} sl_hub_attrs;

/* What a subscriber wants of its channels' events: those with a topic that one
 * of match selects (none: every event that is not private), and, for private
 * ones, a topic that one of grants selects too. */
typedef struct sl_hub_filter {
  unsigned nmatch, ngrants;
  sl_matcher **m; /* nmatch selectors, then ngrants grants */
} sl_hub_filter;

typedef struct sl_hub_event {
  unsigned refs;
  uint64_t seq;   /* publish order, gateway-wide */
  double time;    /* when it was published, for history_ttl */
  sl_buf *frame;  /* the event as it goes on the wire */
  sl_hub_attrs *attrs; /* topics and privacy, NULL if none */
  size_t idlen;
  char id[];
} sl_hub_event;

struct sl_hub_sub;
struct sl_hub_chan;

typedef struct sl_hub_link {
  struct sl_hub_chan *chan;
  struct sl_hub_sub *sub;
  struct sl_hub_link *prev, *next;
} sl_hub_link;

/* Events still to give a subscriber, in order: its replay, then the live
 * events that arrived while the replay was fetched (Redis) or paused for queue
 * room. ev[pos..n) are pending; the first replay_end entries are the replay.
 * Allocated only while a subscriber replays, so an idle one does not pay for it. */
typedef struct sl_hub_held {
  struct sl_hub_event **ev;
  unsigned n, cap, pos, replay_end;
  size_t bytes;       /* bytes of live events held */
} sl_hub_held;

/* A subscriber: deliver() queues a frame for it and returns 0, or 1 when its
 * queue is now above its high-water mark (a replay pauses there); -ENOBUFS
 * when it could not take it (a slow consumer, now disconnected) or another
 * negative errno when it is already going away. After a negative return the
 * subscriber may be freed. The links are the hub's to manage. */
typedef struct sl_hub_sub {
  int (*deliver)(struct sl_hub_sub *sub, sl_buf *frame);
  void *data;
  uint64_t last_seq; /* the newest event it was given: nothing is given twice */
  sl_hub_link *links;
  unsigned nlinks;
  /* While replaying or waiting for a replay: what is still to give it. */
  struct sl_hub_held *h;
  unsigned replayed;  /* replay events given so far */
  uint8_t holding;    /* 1 holding; 2 held more than hold_limit: dropped as slow */
  uint8_t paused;     /* its queue filled during the replay: sl_hub_pump once it drains */
  uint8_t counted;    /* in hub->nsubs */
  uint8_t indexed;    /* found through its channels' topic index (by topic or pattern prefix), not by a scan */
  uint8_t mark;       /* scratch for a walk over the index (sl_hub_subs) */
  uint8_t gateway;    /* set before subscribing: replay from the gateway-wide history */
  void *pending;      /* the engine's replay request for it, if one is under way */
  sl_hub_filter *filter; /* which events it wants, NULL: all but private ones (the caller owns it) */
} sl_hub_sub;

typedef struct sl_hub_chan {
  struct sl_hub_chan *hnext;            /* hash chain */
  struct sl_hub_chan *pprev, *pnext;    /* channels with history, by last publish */
  sl_hub_link *subs;
  unsigned nsubs;
  sl_hub_event **ring;
  unsigned cap, head, count;            /* ring[head] is the oldest kept event */
  double last_pub;
  uint32_t hash;
  uint32_t namelen;
  unsigned busy;                        /* a publish is walking its subscribers: keep it */
  struct sl_hub_topics *ix;             /* subscribers that select exact topics only, by topic */
  char name[];
} sl_hub_chan;

typedef struct sl_hub {
  sl_hub_chan **buckets;
  size_t nbuckets, nchans;
  uint64_t next_seq;
  sl_hub_chan *phead, *ptail;           /* least recently published first */
  unsigned history;                     /* events kept per channel */
  unsigned gw_history;                  /* events kept gateway-wide (0: none) */
  struct sl_hub_chan *all;              /* the gateway-wide history: a ring of no channel */
  double ttl;                           /* seconds an event is kept */
  size_t hold_limit;                    /* bytes held for one subscriber awaiting its replay */
  uint64_t published, delivered, dropped_slow;
  uint64_t replays, replayed;           /* replays given, and the events in them */
  uint64_t nsubs;                       /* subscribers now */
  sl_hub_event *last;                   /* the newest event dispatched (a reference), NULL if none */
} sl_hub;

/* first_seq: the first id the hub hands out (ids keep increasing across restarts
 * when it is taken from the clock). */
int sl_hub_init(sl_hub *hub, uint64_t first_seq, unsigned history, double ttl);
void sl_hub_free(sl_hub *hub);

/* Publishes one event to n channels, with ntopics topics and privacy (both
 * may be none: filtered subscriptions, sl_hub_wants). id may be NULL: the hub assigns the next
 * sequence number as the id. Writes the id used into idout (NUL-terminated,
 * cut at idcap). Returns 0, -EINVAL (bad id/event, or no channel) or -ENOMEM. */
int sl_hub_publish(sl_hub *hub, const sl_hub_str *chans, int n, const char *data, size_t len, const char *id,
                   size_t idlen, const char *event, size_t evlen, long long retry, const sl_hub_str *topics,
                   unsigned ntopics, int priv, double now, char *idout, size_t idcap);

/* A new event (one reference) with sequence number seq, framed once; id NULL
 * means the decimal seq is its id. 0, -EINVAL (bad id/event) or -ENOMEM. */
int sl_hub_event_new(uint64_t seq, const char *data, size_t len, const char *id, size_t idlen, const char *event,
                     size_t evlen, long long retry, double now, sl_hub_event **out);
void sl_hub_event_unref(sl_hub_event *e);
/* Gives e topics (copied) and privacy. 0 or -ENOMEM. */
int sl_hub_event_attrs(sl_hub_event *e, const sl_hub_str *topics, unsigned n, int priv);
/* Whether a subscriber with filter f (NULL: none) is to get e. */
int sl_hub_wants(const sl_hub_filter *f, const sl_hub_event *e);
/* A filter from selectors and grants; NULL if out of memory or a selector is
 * malformed (*bad, if given, is then its index: match first, then grants). */
sl_hub_filter *sl_hub_filter_new(const sl_hub_str *match, unsigned nmatch, const sl_hub_str *grants, unsigned ngrants,
                                 int *bad);
void sl_hub_filter_free(sl_hub_filter *f);
/* Keeps e in the channels' history and gives it to their subscribers, once
 * each; ids after it are numbered from e->seq + 1. For events numbered
 * elsewhere (the Redis engine), in increasing seq order. */
void sl_hub_dispatch(sl_hub *hub, const sl_hub_str *chans, int n, sl_hub_event *e, double now);

/* Subscribes sub to n channels. With last_id, first gives it every kept event
 * after it on those channels, in publish order, once each, then live events
 * with no gap; the replay pauses whenever deliver() says the queue is full
 * (sub->paused: call sl_hub_pump when it drains), and live events wait behind
 * it. Returns the number replayed so far; -ENOMEM, or -EPIPE when a delivery
 * failed (it is then not subscribed). */
int sl_hub_subscribe(sl_hub *hub, sl_hub_sub *sub, const sl_hub_str *chans, int n, const char *last_id,
                     size_t lidlen, double now);
/* Subscribes sub to n channels and holds their live events until
 * sl_hub_release gives it its replay (fetched elsewhere). 0 or -ENOMEM. */
int sl_hub_subscribe_held(sl_hub *hub, sl_hub_sub *sub, const sl_hub_str *chans, int n, double now);
/* Gives a held subscriber the n replayed events (in seq order), then what was
 * held after them, each once, pausing as sl_hub_subscribe does. Returns the
 * number replayed so far; -EPIPE when a delivery failed (the subscriber was
 * closed, and may be freed already); -ENOBUFS when more than hold_limit bytes
 * arrived while it was held (it is left to the caller to close as slow);
 * -ENOMEM. */
int sl_hub_release(sl_hub *hub, sl_hub_sub *sub, sl_hub_event **replay, int n);
/* Goes on with a paused replay: returns 0 once everything is given (live from
 * now), 1 when it paused again, or a negative errno as sl_hub_release. */
int sl_hub_pump(sl_hub *hub, sl_hub_sub *sub);
/* Removes sub from all its channels (O(1) each); channels left with neither
 * subscribers nor history are freed. */
void sl_hub_unsubscribe(sl_hub *hub, sl_hub_sub *sub);

/* Adds the n channels to a live subscriber's (add = 1: live events from now on,
 * no replay) or removes them (add = 0). 0, -ENOMEM or -E2BIG (more than
 * SL_HUB_MAX_LINKS channels); on failure nothing changed. */
#define SL_HUB_MAX_LINKS 64
/* What a client may make a publish cost: selectors per subscription (match
 * and grants together) and topics per event, each matched at most once per
 * pair (see match.h for the cost of one match). */
#define SL_HUB_MAX_SELECTORS 128
#define SL_HUB_MAX_TOPICS 256
int sl_hub_change(sl_hub *hub, sl_hub_sub *sub, const sl_hub_str *chans, int n, int add, double now);
/* The subscribers of a channel now, as a new array (*out, free it); their count or -ENOMEM. */
int sl_hub_subs(sl_hub *hub, const char *name, size_t len, sl_hub_sub ***out);
unsigned sl_hub_subscribers(sl_hub *hub, const char *name, size_t len);
/* Whether the channel's history (this process's) still keeps the event of that id. */
int sl_hub_kept(sl_hub *hub, const char *name, size_t len, const char *id, size_t idlen);
/* Drops history older than ttl from channels not published to since; frees empty channels. */
void sl_hub_sweep(sl_hub *hub, double now);

#endif
