/* hub: channels, subscribers, history and replay. See hub.h.
 *
 * Delivery once per subscriber: events carry a gateway-wide sequence number
 * that only grows, and each subscriber remembers the newest one it was given.
 * An event published to several channels is skipped by a subscriber that
 * already had it from another of them; replay merges channels by sequence.
 *
 * Expiry: channels with history sit in a list ordered by their last publish.
 * The sweep walks it from the front and empties every channel whose newest
 * event is older than the ttl, so idle channels cost nothing for long. A
 * channel still published to trims its own expired events when it is used. */
#include "hub.h"
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "sse.h"

static uint32_t hash_of(const char *p, size_t len) {
  uint32_t h = 2166136261u;
  for (size_t i = 0; i < len; i++) h = (h ^ (uint8_t)p[i]) * 16777619u;
  return h;
}

int sl_hub_init(sl_hub *hub, uint64_t first_seq, unsigned history, double ttl) {
  memset(hub, 0, sizeof *hub);
  hub->nbuckets = 64;
  hub->buckets = calloc(hub->nbuckets, sizeof *hub->buckets);
  hub->next_seq = first_seq ? first_seq : 1;
  hub->history = history;
  hub->ttl = ttl;
  return hub->buckets ? 0 : -ENOMEM;
}

static void event_unref(sl_hub_event *e) {
  if (--e->refs == 0) {
    sl_buf_unref(e->frame);
    free(e->attrs);
    free(e);
  }
}

int sl_hub_event_attrs(sl_hub_event *e, const sl_hub_str *topics, unsigned n, int priv) {
  size_t bytes = 0;
  for (unsigned i = 0; i < n; i++) bytes += topics[i].len;
  sl_hub_attrs *a = malloc(sizeof *a + n * sizeof *a->topics + bytes);
  if (!a) return -ENOMEM;
  a->ntopics = n;
  a->priv = priv;
  char *p = (char *)(a->topics + n);
  for (unsigned i = 0; i < n; i++) {
    memcpy(p, topics[i].p, topics[i].len);
    a->topics[i] = (sl_hub_str){p, topics[i].len};
    p += topics[i].len;
  }
  free(e->attrs);
  e->attrs = a;
  return 0;
}

/* Whether one of the matchers m[0..n) selects one of the event's topics. */
static int selects(sl_matcher *const *m, unsigned n, const sl_hub_attrs *a) {
  for (unsigned i = 0; i < n; i++)
    for (unsigned k = 0; a && k < a->ntopics; k++)
      if (sl_match(m[i], a->topics[k].p, a->topics[k].len)) return 1;
  return 0;
}

int sl_hub_wants(const sl_hub_filter *f, const sl_hub_event *e) {
  const sl_hub_attrs *a = e->attrs;
  int priv = a && a->priv;
  if (!f) return !priv;
  if (f->nmatch && !selects(f->m, f->nmatch, a)) return 0;
  return !priv || selects(f->m + f->nmatch, f->ngrants, a);
}

sl_hub_filter *sl_hub_filter_new(const sl_hub_str *match, unsigned nmatch, const sl_hub_str *grants, unsigned ngrants,
                                 int *bad) {
  sl_hub_filter *f = calloc(1, sizeof *f);
  unsigned n = nmatch + ngrants;
  if (!f || !(f->m = calloc(n ? n : 1, sizeof *f->m))) {
    free(f);
    return NULL;
  }
  for (unsigned i = 0; i < n; i++) {
    const sl_hub_str *s = i < nmatch ? &match[i] : &grants[i - nmatch];
    if (!(f->m[i] = sl_match_compile(s->p, s->len))) {
      if (bad) *bad = (int)i;
      f->nmatch = i; /* what was compiled goes */
      f->ngrants = 0;
      sl_hub_filter_free(f);
      return NULL;
    }
  }
  f->nmatch = nmatch;
  f->ngrants = ngrants;
  return f;
}

void sl_hub_filter_free(sl_hub_filter *f) {
  if (!f) return;
  for (unsigned i = 0; i < f->nmatch + f->ngrants; i++) sl_match_free(f->m[i]);
  free(f->m);
  free(f);
}

static sl_hub_chan *find(sl_hub *hub, const char *name, size_t len, uint32_t h) {
  for (sl_hub_chan *c = hub->buckets[h & (hub->nbuckets - 1)]; c; c = c->hnext)
    if (c->hash == h && c->namelen == len && memcmp(c->name, name, len) == 0) return c;
  return NULL;
}

static void grow(sl_hub *hub) {
  size_t n = hub->nbuckets * 2;
  sl_hub_chan **b = calloc(n, sizeof *b);
  if (!b) return; /* chains just get longer */
  for (size_t i = 0; i < hub->nbuckets; i++) {
    for (sl_hub_chan *c = hub->buckets[i], *next; c; c = next) {
      next = c->hnext;
      c->hnext = b[c->hash & (n - 1)];
      b[c->hash & (n - 1)] = c;
    }
  }
  free(hub->buckets);
  hub->buckets = b;
  hub->nbuckets = n;
}

static sl_hub_chan *get(sl_hub *hub, const char *name, size_t len) {
  uint32_t h = hash_of(name, len);
  sl_hub_chan *c = find(hub, name, len, h);
  if (c) return c;
  c = calloc(1, sizeof *c + len + 1);
  if (!c) return NULL;
  memcpy(c->name, name, len);
  c->namelen = (uint32_t)len;
  c->hash = h;
  if (hub->nchans + 1 > hub->nbuckets) grow(hub);
  c->hnext = hub->buckets[h & (hub->nbuckets - 1)];
  hub->buckets[h & (hub->nbuckets - 1)] = c;
  hub->nchans++;
  return c;
}

static void publist_remove(sl_hub *hub, sl_hub_chan *c) {
  if (c->pprev) c->pprev->pnext = c->pnext;
  else if (hub->phead == c) hub->phead = c->pnext;
  else return; /* not on the list */
  if (c->pnext) c->pnext->pprev = c->pprev;
  else hub->ptail = c->pprev;
  c->pprev = c->pnext = NULL;
}

static void publist_append(sl_hub *hub, sl_hub_chan *c) {
  publist_remove(hub, c);
  c->pprev = hub->ptail;
  if (hub->ptail) hub->ptail->pnext = c;
  else hub->phead = c;
  hub->ptail = c;
}

static void drop_oldest(sl_hub_chan *c) {
  event_unref(c->ring[c->head]);
  c->ring[c->head] = NULL;
  c->head = (c->head + 1) % c->cap;
  c->count--;
}

static void trim_expired(sl_hub *hub, sl_hub_chan *c, double now) {
  while (c->count && c->ring[c->head]->time + hub->ttl <= now) drop_oldest(c);
}

/* ---- the topic index of a channel: selectors -> their subscribers ----
 * A subscriber whose selectors are all exact topics or patterns with a
 * literal start is found by looking the event's topics (and, for patterns,
 * their prefixes) up, instead of being checked on every publish; it is then
 * not in the channel's list (counts include it; kicks and listings walk the
 * index too). Empty entries are freed when no publish walks the channel. */

typedef struct tnode {
  struct tnode *next;
  uint32_t hash;
  uint8_t prefix;   /* the key is the literal start of pattern selectors, not a topic */
  unsigned n, cap;
  sl_hub_sub **subs;
  size_t len;
  char topic[];
} tnode;

typedef struct sl_hub_topics {
  tnode **b;
  unsigned nb, nodes;
  unsigned prefixes;       /* prefix nodes among them */
  size_t minp, maxp;       /* the shortest and longest prefix added (not shrunk on removal) */
  int empties; /* some entries have no subscriber left */
} sl_hub_topics;

static tnode *ix_find(sl_hub_topics *ix, const char *t, size_t len, uint32_t h, int prefix) {
  if (!ix) return NULL;
  for (tnode *n = ix->b[h & (ix->nb - 1)]; n; n = n->next)
    if (n->hash == h && n->len == len && n->prefix == prefix && memcmp(n->topic, t, len) == 0) return n;
  return NULL;
}

static int ix_add(sl_hub_chan *c, const char *t, size_t len, sl_hub_sub *s, int prefix) {
  if (!c->ix) {
    if (!(c->ix = calloc(1, sizeof *c->ix)) || !(c->ix->b = calloc(16, sizeof *c->ix->b))) {
      free(c->ix);
      c->ix = NULL;
      return -ENOMEM;
    }
    c->ix->nb = 16;
  }
  sl_hub_topics *ix = c->ix;
  uint32_t h = hash_of(t, len);
  tnode *n = ix_find(ix, t, len, h, prefix);
  if (!n) {
    if (ix->nodes >= ix->nb * 2) { /* grow */
      unsigned nb = ix->nb * 2;
      tnode **b = calloc(nb, sizeof *b);
      if (!b) return -ENOMEM;
      for (unsigned i = 0; i < ix->nb; i++)
        for (tnode *x = ix->b[i], *next; x; x = next) {
          next = x->next;
          x->next = b[x->hash & (nb - 1)];
          b[x->hash & (nb - 1)] = x;
        }
      free(ix->b);
      ix->b = b;
      ix->nb = nb;
    }
    if (!(n = calloc(1, sizeof *n + len))) return -ENOMEM;
    n->hash = h;
    n->len = len;
    n->prefix = (uint8_t)prefix;
    memcpy(n->topic, t, len);
    n->next = ix->b[h & (ix->nb - 1)];
    ix->b[h & (ix->nb - 1)] = n;
    ix->nodes++;
    if (prefix) {
      if (!ix->prefixes++ || len < ix->minp) ix->minp = len;
      if (len > ix->maxp) ix->maxp = len;
    }
  }
  if (n->n == n->cap) {
    unsigned cap = n->cap ? n->cap * 2 : 4;
    sl_hub_sub **subs = realloc(n->subs, cap * sizeof *subs);
    if (!subs) return -ENOMEM;
    n->subs = subs;
    n->cap = cap;
  }
  n->subs[n->n++] = s;
  return 0;
}

static void ix_sweep(sl_hub_topics *ix) {
  for (unsigned i = 0; i < ix->nb; i++)
    for (tnode **pp = &ix->b[i]; *pp;) {
      tnode *n = *pp;
      if (n->n) {
        pp = &n->next;
        continue;
      }
      *pp = n->next;
      if (n->prefix) ix->prefixes--;
      free(n->subs);
      free(n);
      ix->nodes--;
    }
  ix->empties = 0;
}

static void ix_del(sl_hub_chan *c, const char *t, size_t len, sl_hub_sub *s, int prefix) {
  tnode *n = ix_find(c->ix, t, len, hash_of(t, len), prefix);
  if (!n) return;
  for (unsigned i = 0; i < n->n; i++)
    if (n->subs[i] == s) {
      n->subs[i] = n->subs[--n->n]; /* a walk over it goes backwards: nothing is skipped */
      break;
    }
  if (!n->n) {
    c->ix->empties = 1;
    if (!c->busy) ix_sweep(c->ix);
  }
}

static void ix_free(sl_hub_chan *c) {
  if (!c->ix) return;
  for (unsigned i = 0; i < c->ix->nb; i++)
    for (tnode *n = c->ix->b[i], *next; n; n = next) {
      next = n->next;
      free(n->subs);
      free(n);
    }
  free(c->ix->b);
  free(c->ix);
  c->ix = NULL;
}

/* Whether the subscriber can be found through the index: every selector is
 * an exact topic, or a pattern with a literal start (found by that prefix). */
static int indexable(const sl_hub_sub *s) {
  const sl_hub_filter *f = s->filter;
  if (!f || !f->nmatch) return 0;
  for (unsigned i = 0; i < f->nmatch; i++) {
    size_t len;
    sl_match_prefix(f->m[i], &len);
    if (!len) return 0;
  }
  return 1;
}

/* Adds (add) or removes the subscriber's selectors in the indexes of its
 * channels: exact topics as themselves, patterns by their literal start. */
static int index_sub(sl_hub_sub *s, int add) {
  for (unsigned i = 0; i < s->nlinks; i++)
    for (unsigned k = 0; k < s->filter->nmatch; k++) {
      size_t len;
      const sl_matcher *m = s->filter->m[k];
      int prefix = !sl_match_is_exact(m);
      const char *t = sl_match_prefix(m, &len);
      if (!add) ix_del(s->links[i].chan, t, len, s, prefix);
      else if (ix_add(s->links[i].chan, t, len, s, prefix)) return -ENOMEM;
    }
  return 0;
}

static void offer(sl_hub *hub, sl_hub_sub *s, sl_hub_event *e);

/* Offers e to the indexed subscribers of one of its topics: those of that
 * exact topic, then those whose patterns start with one of its prefixes (the
 * prefix hashes are built a byte at a time, as FNV-1a allows). */
static void offer_indexed(sl_hub *hub, sl_hub_topics *ix, const sl_hub_str *topic, sl_hub_event *e) {
  tnode *node = ix_find(ix, topic->p, topic->len, hash_of(topic->p, topic->len), 0);
  for (unsigned k = node ? node->n : 0; k-- > 0;)
    if (k < node->n) offer(hub, node->subs[k], e);
  if (!ix->prefixes) return;
  size_t top = topic->len < ix->maxp ? topic->len : ix->maxp;
  uint32_t h = 2166136261u;
  for (size_t len = 1; len <= top; len++) {
    h = (h ^ (uint8_t)topic->p[len - 1]) * 16777619u;
    if (len < ix->minp || !(node = ix_find(ix, topic->p, len, h, 1))) continue;
    for (unsigned k = node->n; k-- > 0;)
      if (k < node->n) offer(hub, node->subs[k], e);
  }
}

static void maybe_free(sl_hub *hub, sl_hub_chan *c) {
  if (c->nsubs || c->count || c->busy) return;
  ix_free(c);
  publist_remove(hub, c);
  sl_hub_chan **pp = &hub->buckets[c->hash & (hub->nbuckets - 1)];
  while (*pp != c) pp = &(*pp)->hnext;
  *pp = c->hnext;
  hub->nchans--;
  free(c->ring);
  free(c);
}

/* Makes the ring hold hub->history events, keeping the newest. */
static int resize_ring(sl_hub_chan *c, unsigned cap) {
  while (c->count > cap) drop_oldest(c);
  sl_hub_event **r = cap ? calloc(cap, sizeof *r) : NULL;
  if (cap && !r) return -ENOMEM;
  for (unsigned i = 0; i < c->count; i++) r[i] = c->ring[(c->head + i) % c->cap];
  free(c->ring);
  c->ring = r;
  c->cap = cap;
  c->head = 0;
  return 0;
}

/* Keeps e in the ring (cap events), dropping the oldest; 0, or -1 if it did not. */
static int ring_push(sl_hub_chan *c, unsigned cap, sl_hub_event *e) {
  if (c->cap != cap && resize_ring(c, cap)) return -1;
  if (!c->cap) return -1;
  if (c->count == c->cap) drop_oldest(c);
  c->ring[(c->head + c->count) % c->cap] = e;
  e->refs++;
  c->count++;
  return 0;
}

static void push(sl_hub *hub, sl_hub_chan *c, sl_hub_event *e, double now) {
  if (ring_push(c, hub->history, e)) return;
  c->last_pub = now;
  publist_append(hub, c);
}

/* The gateway-wide history: the last gw_history events of every channel, each once. */
static void push_all(sl_hub *hub, sl_hub_event *e, double now) {
  if (!hub->all && !(hub->all = calloc(1, sizeof *hub->all))) return;
  trim_expired(hub, hub->all, now);
  ring_push(hub->all, hub->gw_history, e);
}

int sl_hub_event_new(uint64_t seq, const char *data, size_t len, const char *id, size_t idlen, const char *event,
                     size_t evlen, long long retry, double now, sl_hub_event **out) {
  char seqid[24];
  if (!id) {
    idlen = (size_t)snprintf(seqid, sizeof seqid, "%" PRIu64, seq);
    id = seqid;
  }
  sl_sb sb;
  sl_sb_init(&sb, len + idlen + evlen + 32);
  int r = sl_sse_event(&sb, data, len, id, idlen, event, event ? evlen : 0, retry);
  if (r) {
    sl_sb_free(&sb);
    return r;
  }
  sl_hub_event *e = malloc(sizeof *e + idlen + 1);
  sl_buf *frame = sl_sb_finish(&sb);
  if (!e || !frame) {
    free(e);
    sl_buf_unref(frame);
    return -ENOMEM;
  }
  e->refs = 1;
  e->attrs = NULL;
  e->seq = seq;
  e->time = now;
  e->frame = frame;
  e->idlen = idlen;
  memcpy(e->id, id, idlen);
  e->id[idlen] = '\0';
  *out = e;
  return 0;
}

void sl_hub_event_unref(sl_hub_event *e) { event_unref(e); }

/* Makes room for one more held event, moving the pending ones to the front. 0 or -ENOMEM. */
static int held_room(sl_hub_sub *s) {
  if (!s->h && !(s->h = calloc(1, sizeof *s->h))) return -ENOMEM;
  sl_hub_held *h = s->h;
  if (h->pos && h->pos == h->n) {
    h->n = h->pos = h->replay_end = 0;
  } else if (h->pos > h->n / 2) {
    memmove(h->ev, h->ev + h->pos, (h->n - h->pos) * sizeof *h->ev);
    h->n -= h->pos;
    h->replay_end = h->replay_end > h->pos ? h->replay_end - h->pos : 0;
    h->pos = 0;
  }
  if (h->n < h->cap) return 0;
  unsigned cap = h->cap ? h->cap * 2 : 8;
  sl_hub_event **ev = realloc(h->ev, cap * sizeof *ev);
  if (!ev) return -ENOMEM;
  h->ev = ev;
  h->cap = cap;
  return 0;
}

static void drop_held(sl_hub_sub *s) {
  sl_hub_held *h = s->h;
  if (!h) return;
  for (unsigned i = h->pos; i < h->n; i++) event_unref(h->ev[i]);
  free(h->ev);
  free(h);
  s->h = NULL;
}

/* Holds e for a subscriber whose replay is under way; past hold_limit it is
 * marked to be dropped as a slow consumer, and what it held is let go. */
static void hold(sl_hub *hub, sl_hub_sub *s, sl_hub_event *e) {
  if (s->holding != 1) return;
  if (s->h && s->h->n > s->h->pos && s->h->ev[s->h->n - 1] == e) return; /* the same event via a second channel */
  if (held_room(s)) {
    s->holding = 2;
    drop_held(s);
    return;
  }
  sl_hub_held *h = s->h;
  h->ev[h->n++] = e;
  e->refs++;
  h->bytes += e->frame->len;
  if (hub->hold_limit && h->bytes > hub->hold_limit) {
    s->holding = 2;
    drop_held(s);
  }
}

/* Gives e to one subscriber if it wants it and has not had it (held while its replay is under way). */
static void offer(sl_hub *hub, sl_hub_sub *s, sl_hub_event *e) {
  if (s->holding) {
    hold(hub, s, e);
    return;
  }
  if (s->last_seq >= e->seq) return;
  if ((s->filter || e->attrs) && !sl_hub_wants(s->filter, e)) return;
  s->last_seq = e->seq;
  int r = s->deliver(s, e->frame);
  if (r >= 0) hub->delivered++;
  else if (r == -ENOBUFS) hub->dropped_slow++; /* a closing one is not slow */
}

void sl_hub_dispatch(sl_hub *hub, const sl_hub_str *chans, int n, sl_hub_event *e, double now) {
  uint64_t seq = e->seq;
  if (seq >= hub->next_seq) hub->next_seq = seq + 1;
  hub->published++;
  e->refs++;
  if (hub->last) event_unref(hub->last);
  hub->last = e;
  if (hub->gw_history) push_all(hub, e, now); /* turned off: the sweep empties it */
  for (int i = 0; i < n; i++) {
    sl_hub_chan *c = get(hub, chans[i].p, chans[i].len);
    if (!c) continue;
    trim_expired(hub, c, now);
    push(hub, c, e, now);
    c->busy++;
    /* Take the next link first: a slow subscriber that is dropped removes only its own links. */
    for (sl_hub_link *l = c->subs, *next; l; l = next) {
      next = l->next;
      offer(hub, l->sub, e);
    }
    /* The indexed subscribers: those of the event's topics and their prefixes. */
    for (unsigned t = 0; c->ix && e->attrs && t < e->attrs->ntopics; t++)
      offer_indexed(hub, c->ix, &e->attrs->topics[t], e);
    c->busy--;
    if (!c->busy && c->ix && c->ix->empties) ix_sweep(c->ix);
    maybe_free(hub, c);
  }
}

int sl_hub_publish(sl_hub *hub, const sl_hub_str *chans, int n, const char *data, size_t len, const char *id,
                   size_t idlen, const char *event, size_t evlen, long long retry, const sl_hub_str *topics,
                   unsigned ntopics, int priv, double now, char *idout, size_t idcap) {
  if (n <= 0) return -EINVAL;
  sl_hub_event *e;
  int r = sl_hub_event_new(hub->next_seq, data, len, id, idlen, event, evlen, retry, now, &e);
  if (r) return r;
  if ((ntopics || priv) && sl_hub_event_attrs(e, topics, ntopics, priv)) {
    event_unref(e);
    return -ENOMEM;
  }
  sl_hub_dispatch(hub, chans, n, e, now);
  if (idout && idcap) snprintf(idout, idcap, "%.*s", (int)e->idlen, e->id);
  event_unref(e);
  return 0;
}

/* The sequence number after which a subscriber with last_id should be replayed:
 * an id that several kept events share names the earliest of them, so what
 * came after it is not lost. */
static uint64_t replay_after(sl_hub *hub, sl_hub_chan **cs, int n, const char *last_id, size_t lidlen) {
  uint64_t found = 0;
  for (int i = 0; i < n; i++) {
    sl_hub_chan *c = cs[i];
    if (!c) continue;
    for (unsigned k = 0; k < c->count; k++) {
      sl_hub_event *e = c->ring[(c->head + k) % c->cap];
      if (e->idlen == lidlen && memcmp(e->id, last_id, lidlen) == 0) {
        if (!found || e->seq < found) found = e->seq;
        break;
      }
    }
  }
  if (found) return found;
  /* Not kept: a hub id that has left history means "everything kept after it". */
  char buf[24];
  if (lidlen > 0 && lidlen < sizeof buf) {
    memcpy(buf, last_id, lidlen);
    buf[lidlen] = '\0';
    char *end;
    unsigned long long v = strtoull(buf, &end, 10);
    if (*end == '\0' && buf[0] >= '0' && buf[0] <= '9' && v < hub->next_seq) return v;
  }
  /* Unknown (e.g. from before a restart): replay the whole kept history. */
  return 0;
}

int sl_hub_kept(sl_hub *hub, const char *name, size_t len, const char *id, size_t idlen) {
  sl_hub_chan *c = find(hub, name, len, hash_of(name, len));
  if (!c) return 0;
  for (unsigned k = c->count; k-- > 0;) {
    sl_hub_event *e = c->ring[(c->head + k) % c->cap];
    if (e->idlen == idlen && memcmp(e->id, id, idlen) == 0) return 1;
  }
  return 0;
}

/* Finds (or makes) the channels of a subscription, without duplicates, into cs. */
static int resolve(sl_hub *hub, const sl_hub_str *chans, int n, double now, sl_hub_chan **cs) {
  int ncs = 0;
  for (int i = 0; i < n; i++) {
    sl_hub_chan *c = get(hub, chans[i].p, chans[i].len);
    if (!c) {
      for (int k = 0; k < ncs; k++) maybe_free(hub, cs[k]);
      return -ENOMEM;
    }
    int dup = 0;
    for (int k = 0; k < ncs; k++) dup |= cs[k] == c;
    if (dup) continue;
    trim_expired(hub, c, now);
    cs[ncs++] = c;
  }
  return ncs;
}

static void link_all(sl_hub_sub *sub, sl_hub_link *links, sl_hub_chan **cs, int ncs) {
  for (int i = 0; i < ncs; i++) {
    links[i].chan = cs[i];
    links[i].sub = sub;
    cs[i]->nsubs++;
  }
  sub->links = links;
  sub->nlinks = (unsigned)ncs;
  /* One that selects exact topics only is found through the topic index (a
   * publish never walks past it); the others are in the channels' lists. */
  sub->indexed = 0;
  if (indexable(sub)) {
    if (index_sub(sub, 1) == 0) {
      sub->indexed = 1;
      return;
    }
    index_sub(sub, 0); /* out of memory: in the lists, checked on every publish instead */
  }
  for (int i = 0; i < ncs; i++) {
    sl_hub_link *l = &links[i];
    l->prev = NULL;
    l->next = cs[i]->subs;
    if (cs[i]->subs) cs[i]->subs->prev = l;
    cs[i]->subs = l;
  }
}

/* The kept events of the channels after last_id, merged by sequence and each
 * once, into a new array (*out, with references); returns how many, or -ENOMEM. */
static int replay_list(sl_hub *hub, sl_hub_chan **cs, int ncs, const char *last_id, size_t lidlen,
                       sl_hub_event ***out) {
  uint64_t after = replay_after(hub, cs, ncs, last_id, lidlen);
  unsigned pos[ncs > 0 ? ncs : 1];
  size_t total = 0;
  for (int i = 0; i < ncs; i++) {
    pos[i] = 0;
    while (pos[i] < cs[i]->count && cs[i]->ring[(cs[i]->head + pos[i]) % cs[i]->cap]->seq <= after) pos[i]++;
    total += cs[i]->count - pos[i];
  }
  *out = NULL;
  if (!total) return 0;
  sl_hub_event **es = malloc(total * sizeof *es);
  if (!es) return -ENOMEM;
  int n = 0;
  uint64_t last = after;
  /* Repeatedly take the smallest next event. */
  for (;;) {
    sl_hub_event *best = NULL;
    int bi = -1;
    for (int i = 0; i < ncs; i++) {
      if (pos[i] >= cs[i]->count) continue;
      sl_hub_event *e = cs[i]->ring[(cs[i]->head + pos[i]) % cs[i]->cap];
      if (!best || e->seq < best->seq) best = e, bi = i;
    }
    if (!best) break;
    pos[bi]++;
    if (best->seq <= last) continue; /* the same event kept by two channels */
    last = best->seq;
    best->refs++;
    es[n++] = best;
  }
  *out = es;
  return n;
}

int sl_hub_pump(sl_hub *hub, sl_hub_sub *sub) {
  if (sub->holding == 2) {
    drop_held(sub);
    hub->dropped_slow++;
    return -ENOBUFS;
  }
  sub->paused = 0;
  for (sl_hub_held *h; (h = sub->h) != NULL && h->pos < h->n;) {
    unsigned i = h->pos++;
    sl_hub_event *e = h->ev[i];
    int from_replay = i < h->replay_end;
    if (!from_replay) h->bytes -= e->frame->len;
    if (e->seq <= sub->last_seq || ((sub->filter || e->attrs) && !sl_hub_wants(sub->filter, e))) {
      /* given already (a held event the replay had too), or not for it */
      event_unref(e);
      continue;
    }
    sub->last_seq = e->seq;
    if (from_replay) {
      sub->replayed++;
      hub->replayed++;
    }
    /* The held reference goes first, so a subscriber closed by its delivery
     * (and freed) leaves nothing behind; the frame lives on in its queue. */
    sl_buf *frame = sl_buf_ref(e->frame);
    event_unref(e);
    int r = sub->deliver(sub, frame);
    sl_buf_unref(frame);
    if (r < 0) {
      if (r == -ENOBUFS) hub->dropped_slow++;
      return -EPIPE;
    }
    hub->delivered++;
    if (r > 0 && h->pos < h->n) {
      sub->paused = 1;
      return 1;
    }
  }
  drop_held(sub);
  sub->holding = 0;
  return 0;
}

/* Puts the n replay events (references taken) in front of what sub holds. 0 or -ENOMEM. */
static int queue_replay(sl_hub_sub *sub, sl_hub_event **es, int n) {
  if (!sub->h && !(sub->h = calloc(1, sizeof *sub->h))) return -ENOMEM;
  sl_hub_held *h = sub->h;
  unsigned pending = h->n - h->pos;
  size_t cap = (size_t)n + pending;
  sl_hub_event **ev = malloc((cap ? cap : 1) * sizeof *ev);
  if (!ev) return -ENOMEM;
  for (int i = 0; i < n; i++) {
    es[i]->refs++;
    ev[i] = es[i];
  }
  if (pending) memcpy(ev + n, h->ev + h->pos, pending * sizeof *ev);
  free(h->ev);
  h->ev = ev;
  h->cap = h->n = (unsigned)cap;
  h->pos = 0;
  h->replay_end = (unsigned)n;
  return 0;
}

static int subscribe(sl_hub *hub, sl_hub_sub *sub, const sl_hub_str *chans, int n, const char *last_id,
                     size_t lidlen, double now, int held) {
  if (n <= 0) return -EINVAL;
  sl_hub_link *links = calloc((size_t)n, sizeof *links);
  sl_hub_chan **cs = calloc((size_t)n, sizeof *cs);
  int ncs = links && cs ? resolve(hub, chans, n, now, cs) : -ENOMEM;
  if (ncs < 0) {
    free(links);
    free(cs);
    return ncs;
  }
  sl_hub_event **es = NULL;
  /* The gateway-wide history holds every channel's events (the filter picks). */
  int nes = !last_id || held ? 0
            : sub->gateway ? (hub->all ? replay_list(hub, &hub->all, 1, last_id, lidlen, &es) : 0)
                           : replay_list(hub, cs, ncs, last_id, lidlen, &es);
  if (nes < 0) {
    for (int i = 0; i < ncs; i++) maybe_free(hub, cs[i]);
    free(links);
    free(cs);
    return nes;
  }
  /* Live events only, unless replaying (a held one is told by its replay where to start). */
  sub->last_seq = held ? 0 : hub->next_seq - 1;
  if (nes) sub->last_seq = es[0]->seq - 1;
  sub->holding = held || nes ? 1 : 0;
  link_all(sub, links, cs, ncs);
  free(cs);
  sub->counted = 1;
  hub->nsubs++;
  if (!nes) return 0;
  int r = sl_hub_release(hub, sub, es, nes);
  for (int i = 0; i < nes; i++) event_unref(es[i]);
  free(es);
  /* A failed delivery closed the subscriber's connection, which did not know
   * of the subscription yet: it is undone here, and the caller frees sub. */
  if (r < 0) sl_hub_unsubscribe(hub, sub);
  return r;
}

int sl_hub_subscribe(sl_hub *hub, sl_hub_sub *sub, const sl_hub_str *chans, int n, const char *last_id,
                     size_t lidlen, double now) {
  return subscribe(hub, sub, chans, n, last_id, lidlen, now, 0);
}

int sl_hub_subscribe_held(sl_hub *hub, sl_hub_sub *sub, const sl_hub_str *chans, int n, double now) {
  return subscribe(hub, sub, chans, n, NULL, 0, now, 1);
}

int sl_hub_release(sl_hub *hub, sl_hub_sub *sub, sl_hub_event **events, int n) {
  hub->replays++;
  if (sub->holding == 2) return sl_hub_pump(hub, sub);
  if (n > 0 && queue_replay(sub, events, n)) return -ENOMEM;
  sub->holding = 1;
  int r = sl_hub_pump(hub, sub);
  return r < 0 ? r : (int)sub->replayed;
}

static void unlink_all(sl_hub *hub, sl_hub_sub *sub);

void sl_hub_unsubscribe(sl_hub *hub, sl_hub_sub *sub) {
  if (sub->counted) hub->nsubs--;
  sub->counted = 0;
  unlink_all(hub, sub);
  drop_held(sub);
}

static void unlink_all(sl_hub *hub, sl_hub_sub *sub) {
  int listed = !sub->indexed;
  if (sub->indexed) index_sub(sub, 0);
  sub->indexed = 0;
  for (unsigned i = 0; i < sub->nlinks; i++) {
    sl_hub_link *l = &sub->links[i];
    sl_hub_chan *c = l->chan;
    if (listed) {
      if (l->prev) l->prev->next = l->next;
      else c->subs = l->next;
      if (l->next) l->next->prev = l->prev;
    }
    c->nsubs--;
    maybe_free(hub, c);
  }
  free(sub->links);
  sub->links = NULL;
  sub->nlinks = 0;
}

static int named(const sl_hub_str *chans, int n, const sl_hub_chan *c) {
  for (int i = 0; i < n; i++)
    if (chans[i].len == c->namelen && memcmp(chans[i].p, c->name, c->namelen) == 0) return 1;
  return 0;
}

int sl_hub_change(sl_hub *hub, sl_hub_sub *sub, const sl_hub_str *chans, int n, int add, double now) {
  unsigned max = sub->nlinks + (add ? (unsigned)n : 0);
  sl_hub_chan **cs = calloc(max ? max : 1, sizeof *cs);
  if (!cs) return -ENOMEM;
  unsigned ncs = 0;
  for (unsigned i = 0; i < sub->nlinks; i++)
    if (add || !named(chans, n, sub->links[i].chan)) cs[ncs++] = sub->links[i].chan;
  /* Kept channels must outlive the unlinking below: busy holds them. */
  for (unsigned i = 0; i < ncs; i++) cs[i]->busy++;
  int r = 0;
  for (int i = 0; add && i < n && !r; i++) {
    sl_hub_chan *c = get(hub, chans[i].p, chans[i].len);
    if (!c) {
      r = -ENOMEM;
      break;
    }
    int dup = 0;
    for (unsigned k = 0; k < ncs; k++) dup |= cs[k] == c;
    if (dup) continue;
    trim_expired(hub, c, now);
    c->busy++;
    cs[ncs++] = c;
  }
  if (ncs > SL_HUB_MAX_LINKS) r = -E2BIG;
  sl_hub_link *links = r ? NULL : calloc(ncs ? ncs : 1, sizeof *links);
  if (!r && !links) r = -ENOMEM;
  if (!r) {
    unlink_all(hub, sub);
    link_all(sub, links, cs, (int)ncs);
  }
  for (unsigned i = 0; i < ncs; i++) {
    cs[i]->busy--;
    maybe_free(hub, cs[i]);
  }
  free(cs);
  return r;
}

int sl_hub_subs(sl_hub *hub, const char *name, size_t len, sl_hub_sub ***out) {
  *out = NULL;
  sl_hub_chan *c = find(hub, name, len, hash_of(name, len));
  if (!c || !c->nsubs) return 0;
  sl_hub_sub **subs = malloc(c->nsubs * sizeof *subs);
  if (!subs) return -ENOMEM;
  int n = 0;
  for (sl_hub_link *l = c->subs; l; l = l->next) subs[n++] = l->sub;
  /* Indexed ones, once each though they may be under several topics. */
  for (unsigned b = 0; c->ix && b < c->ix->nb; b++)
    for (tnode *t = c->ix->b[b]; t; t = t->next)
      for (unsigned k = 0; k < t->n; k++)
        if (!t->subs[k]->mark && n < (int)c->nsubs) {
          t->subs[k]->mark = 1;
          subs[n++] = t->subs[k];
        }
  for (int j = 0; j < n; j++) subs[j]->mark = 0;
  *out = subs;
  return n;
}

unsigned sl_hub_subscribers(sl_hub *hub, const char *name, size_t len) {
  sl_hub_chan *c = find(hub, name, len, hash_of(name, len));
  return c ? c->nsubs : 0;
}

void sl_hub_sweep(sl_hub *hub, double now) {
  if (hub->all) {
    trim_expired(hub, hub->all, now);
    while (hub->all->count > hub->gw_history) drop_oldest(hub->all);
  }
  while (hub->phead && hub->phead->last_pub + hub->ttl <= now) {
    sl_hub_chan *c = hub->phead;
    while (c->count) drop_oldest(c);
    publist_remove(hub, c);
    maybe_free(hub, c);
  }
}

void sl_hub_free(sl_hub *hub) {
  if (hub->last) event_unref(hub->last);
  hub->last = NULL;
  if (hub->all) {
    while (hub->all->count) drop_oldest(hub->all);
    free(hub->all->ring);
    free(hub->all);
    hub->all = NULL;
  }
  for (size_t i = 0; i < hub->nbuckets; i++) {
    for (sl_hub_chan *c = hub->buckets[i], *next; c; c = next) {
      next = c->hnext;
      while (c->count) drop_oldest(c);
      ix_free(c);
      free(c->ring);
      free(c);
    }
  }
  free(hub->buckets);
  memset(hub, 0, sizeof *hub);
}
