/* Unit tests for hub: ids, ring wrap-around, replay boundaries, multi-channel
 * merge order, delivery once, slow subscribers, expiry and freeing. */
#include <errno.h>
#include <stdlib.h>
#include "../hub.h"
#include "check.h"

typedef struct rec {
  sl_hub_sub sub;
  char got[64][32]; /* the ids received, in order */
  int n;
  int fail_after;   /* deliver fails once n reaches this (0 = never) */
  int fail_code;    /* with this (default -ENOBUFS, a slow consumer) */
  int full_every;   /* deliver says "full" after every this many (0 = never) */
} rec;

static int deliver(sl_hub_sub *s, sl_buf *frame) {
  rec *r = (rec *)s;
  if (r->fail_after && r->n >= r->fail_after) return r->fail_code ? r->fail_code : -ENOBUFS;
  /* frames start with "id: X\n" */
  const char *p = frame->data + 4, *nl = memchr(p, '\n', frame->len - 4);
  snprintf(r->got[r->n++], 32, "%.*s", (int)(nl - p), p);
  return r->full_every && r->n % r->full_every == 0;
}

static void rec_init(rec *r) {
  memset(r, 0, sizeof *r);
  r->sub.deliver = deliver;
}

static sl_hub_str S(const char *s) { return (sl_hub_str){s, strlen(s)}; }

static void pub(sl_hub *h, const char *chan, const char *id, double now, char *out) {
  sl_hub_str c = S(chan);
  char tmp[32];
  CHECK(sl_hub_publish(h, &c, 1, "d", 1, id, id ? strlen(id) : 0, NULL, 0, -1, NULL, 0, 0, now, out ? out : tmp, 32) == 0);
}

static int sub(sl_hub *h, rec *r, const char *a, const char *b, const char *last, double now) {
  sl_hub_str cs[2] = {S(a), b ? S(b) : S("")};
  return sl_hub_subscribe(h, &r->sub, cs, b ? 2 : 1, last, last ? strlen(last) : 0, now);
}

static int got_is(rec *r, const char *const *want, int n) {
  if (r->n != n) return 0;
  for (int i = 0; i < n; i++)
    if (strcmp(r->got[i], want[i])) return 0;
  return 1;
}

int main(void) {
  sl_hub h;
  char id[32];
  uint64_t slow_before;

  /* Ids increase from first_seq across channels; a caller's id is used as given. */
  CHECK(sl_hub_init(&h, 100, 3, 60) == 0);
  pub(&h, "a", NULL, 1, id);
  CHECK(strcmp(id, "100") == 0);
  pub(&h, "b", NULL, 1, id);
  CHECK(strcmp(id, "101") == 0);
  pub(&h, "a", "custom", 1, id);
  CHECK(strcmp(id, "custom") == 0);
  pub(&h, "a", NULL, 1, id);
  CHECK(strcmp(id, "103") == 0);
  {
    sl_hub_str c = S("a");
    CHECK(sl_hub_publish(&h, &c, 1, "d", 1, "bad\nid", 6, NULL, 0, -1, NULL, 0, 0, 1, id, 32) == -EINVAL);
    CHECK(sl_hub_publish(&h, &c, 0, "d", 1, NULL, 0, NULL, 0, -1, NULL, 0, 0, 1, id, 32) == -EINVAL);
  }

  /* Ring wrap-around: history 3 keeps the last three of a. Channel a now holds 100, custom, 103. */
  pub(&h, "a", NULL, 1, id); /* 104: 100 falls out */
  pub(&h, "a", NULL, 1, id); /* 105: custom falls out */
  rec r;
  rec_init(&r);
  CHECK(sub(&h, &r, "a", NULL, "103", 2) == 2);
  const char *w1[] = {"104", "105"};
  CHECK(got_is(&r, w1, 2));
  sl_hub_unsubscribe(&h, &r.sub);

  /* Replay boundaries: the newest id replays nothing; an id that fell out
   * (a hub id) replays everything kept after it; an unknown id replays all kept. */
  rec_init(&r);
  CHECK(sub(&h, &r, "a", NULL, "105", 2) == 0);
  sl_hub_unsubscribe(&h, &r.sub);
  rec_init(&r);
  CHECK(sub(&h, &r, "a", NULL, "100", 2) == 3);
  const char *w2[] = {"103", "104", "105"};
  CHECK(got_is(&r, w2, 3));
  sl_hub_unsubscribe(&h, &r.sub);
  rec_init(&r);
  CHECK(sub(&h, &r, "a", NULL, "custom", 2) == 3); /* custom left history: unknown */
  sl_hub_unsubscribe(&h, &r.sub);
  rec_init(&r);
  CHECK(sub(&h, &r, "a", NULL, "99999999", 2) == 3); /* a hub id never handed out: unknown */
  sl_hub_unsubscribe(&h, &r.sub);
  rec_init(&r);
  CHECK(sub(&h, &r, "a", NULL, NULL, 2) == 0); /* no id: live only */
  pub(&h, "a", NULL, 2, id);
  const char *w3[] = {"106"};
  CHECK(got_is(&r, w3, 1));
  sl_hub_unsubscribe(&h, &r.sub);
  sl_hub_free(&h);

  /* Multi-channel merge: replay across x and y in publish order, an event
   * published to both delivered once, then live events once each. */
  CHECK(sl_hub_init(&h, 1, 10, 60) == 0);
  pub(&h, "x", NULL, 1, NULL);  /* 1 */
  pub(&h, "y", NULL, 1, NULL);  /* 2 */
  {
    sl_hub_str both[2] = {S("x"), S("y")};
    CHECK(sl_hub_publish(&h, both, 2, "d", 1, NULL, 0, NULL, 0, -1, NULL, 0, 0, 1, id, 32) == 0); /* 3 on both */
    CHECK(strcmp(id, "3") == 0);
  }
  pub(&h, "y", NULL, 1, NULL);  /* 4 */
  pub(&h, "x", NULL, 1, NULL);  /* 5 */
  rec_init(&r);
  CHECK(sub(&h, &r, "x", "y", "1", 2) == 4);
  const char *w4[] = {"2", "3", "4", "5"};
  CHECK(got_is(&r, w4, 4));
  {
    sl_hub_str both[2] = {S("y"), S("x")};
    CHECK(sl_hub_publish(&h, both, 2, "d", 1, NULL, 0, NULL, 0, -1, NULL, 0, 0, 2, id, 32) == 0); /* 6 */
  }
  pub(&h, "y", NULL, 2, NULL); /* 7 */
  const char *w5[] = {"2", "3", "4", "5", "6", "7"};
  CHECK(got_is(&r, w5, 6));
  CHECK(sl_hub_subscribers(&h, "x", 1) == 1 && sl_hub_subscribers(&h, "y", 1) == 1);
  CHECK(sl_hub_subscribers(&h, "z", 1) == 0);

  /* A subscriber of the same channel twice is one subscriber. */
  rec r2;
  rec_init(&r2);
  CHECK(sub(&h, &r2, "x", "x", NULL, 2) == 0);
  CHECK(sl_hub_subscribers(&h, "x", 1) == 2);
  pub(&h, "x", NULL, 2, NULL); /* 8 */
  CHECK(r2.n == 1);

  /* A slow subscriber is dropped and counted; others still get the event. */
  r2.fail_after = 1;
  pub(&h, "x", NULL, 2, NULL); /* 9 */
  CHECK(h.dropped_slow == 1);
  CHECK(r.n == 8);
  sl_hub_unsubscribe(&h, &r2.sub);
  sl_hub_unsubscribe(&h, &r.sub);
  CHECK(sl_hub_subscribers(&h, "x", 1) == 0);

  /* A replay the subscriber cannot take leaves it unsubscribed. */
  rec_init(&r2);
  r2.fail_after = 1;
  CHECK(sub(&h, &r2, "x", NULL, "1", 2) == -EPIPE);
  CHECK(sl_hub_subscribers(&h, "x", 1) == 0);

  /* A subscriber that is already going away (EPIPE) is not counted as slow. */
  rec_init(&r2);
  CHECK(sub(&h, &r2, "x", NULL, NULL, 2) == 0);
  pub(&h, "x", NULL, 2, NULL);
  r2.fail_after = 1;
  r2.fail_code = -EPIPE;
  slow_before = h.dropped_slow;
  pub(&h, "x", NULL, 2, NULL);
  CHECK(h.dropped_slow == slow_before && r2.n == 1);
  sl_hub_unsubscribe(&h, &r2.sub);

  /* Expiry: history older than ttl is gone after a sweep; empty channels are freed. */
  size_t before = h.nchans;
  CHECK(before == 2);
  sl_hub_sweep(&h, 61); /* x and y were last published at 2: kept until 62 */
  CHECK(h.nchans == 2);
  sl_hub_sweep(&h, 63);
  CHECK(h.nchans == 0);
  rec_init(&r);
  CHECK(sub(&h, &r, "x", NULL, "1", 63) == 0);
  sl_hub_unsubscribe(&h, &r.sub);
  CHECK(h.nchans == 0);

  /* Expired events of a channel still in use are trimmed when it is touched. */
  pub(&h, "k", NULL, 100, id);
  pub(&h, "k", NULL, 150, NULL);
  rec_init(&r);
  CHECK(sub(&h, &r, "k", NULL, "0", 170) == 1); /* the one at 100 expired at 160 */
  sl_hub_unsubscribe(&h, &r.sub);

  /* A million short-lived channels do not stay. */
  char name[32];
  for (int i = 0; i < 100000; i++) {
    snprintf(name, sizeof name, "user-%d", i);
    pub(&h, name, NULL, 200 + i * 0.001, NULL);
  }
  CHECK(h.nchans >= 100000);
  sl_hub_sweep(&h, 200 + 100 + 61);
  CHECK(h.nchans == 0);

  /* history 0 keeps nothing, and a channel nobody listens to is freed at once. */
  h.history = 0;
  pub(&h, "none", NULL, 400, NULL);
  CHECK(h.nchans == 0);
  sl_hub_free(&h);

  /* A replay pauses whenever the queue is full and goes on when it drains;
   * live events published meanwhile wait behind it: all in order, once. */
  CHECK(sl_hub_init(&h, 1, 10, 60) == 0);
  h.hold_limit = 1 << 20;
  for (int i = 0; i < 5; i++) pub(&h, "p", NULL, 1, NULL); /* 1..5 */
  rec_init(&r);
  r.full_every = 2;
  CHECK(sub(&h, &r, "p", NULL, "1", 1) == 2 && r.sub.paused && r.n == 2); /* 2, 3 */
  pub(&h, "p", NULL, 1, NULL); /* 6: waits behind the replay */
  CHECK(r.n == 2);
  CHECK(sl_hub_pump(&h, &r.sub) == 1 && r.n == 4 && r.sub.paused); /* 4, 5 */
  CHECK(sl_hub_pump(&h, &r.sub) == 0 && r.n == 5 && !r.sub.paused && !r.sub.holding);
  pub(&h, "p", NULL, 1, NULL); /* 7: live */
  const char *w6[] = {"2", "3", "4", "5", "6", "7"};
  CHECK(got_is(&r, w6, 6));
  sl_hub_unsubscribe(&h, &r.sub);
  /* A paused replay that holds more than hold_limit of live events is slow. */
  h.hold_limit = 1;
  rec_init(&r);
  r.full_every = 1;
  CHECK(sub(&h, &r, "p", NULL, "1", 1) == 1 && r.sub.paused);
  pub(&h, "p", NULL, 1, NULL);
  slow_before = h.dropped_slow;
  CHECK(sl_hub_pump(&h, &r.sub) == -ENOBUFS && h.dropped_slow == slow_before + 1 && r.n == 1);
  sl_hub_unsubscribe(&h, &r.sub);
  sl_hub_free(&h);

  /* Filters: selectors and grants against an event's topics; private events
   * only where granted; events without topics only for unfiltered subscribers. */
  {
    sl_hub_event *e;
    CHECK(sl_hub_event_new(7, "d", 1, NULL, 0, NULL, 0, -1, 1, &e) == 0);
    sl_hub_str match[] = {S("https://x/books/{id}")}, grants[] = {S("https://x/books/1")};
    sl_hub_filter *f = sl_hub_filter_new(match, 1, NULL, 0, NULL);
    sl_hub_filter *g = sl_hub_filter_new(match, 1, grants, 1, NULL);
    CHECK(f && g);
    CHECK(sl_hub_wants(NULL, e) && !sl_hub_wants(f, e)); /* no topics */
    sl_hub_str t1[] = {S("https://x/books/1")}, t2[] = {S("https://x/authors/1"), S("https://x/books/2")};
    CHECK(sl_hub_event_attrs(e, t1, 1, 0) == 0);
    CHECK(sl_hub_wants(NULL, e) && sl_hub_wants(f, e) && sl_hub_wants(g, e));
    CHECK(sl_hub_event_attrs(e, t2, 2, 0) == 0);
    CHECK(sl_hub_wants(f, e)); /* the second topic matches */
    CHECK(sl_hub_event_attrs(e, t2, 2, 1) == 0);
    CHECK(!sl_hub_wants(NULL, e) && !sl_hub_wants(f, e) && !sl_hub_wants(g, e)); /* private, books/2 not granted */
    CHECK(sl_hub_event_attrs(e, t1, 1, 1) == 0);
    CHECK(!sl_hub_wants(f, e) && sl_hub_wants(g, e));
    /* Subscribers that select exact topics only are found through the index:
     * an event reaches those of its topics, once each, and they count, list
     * and leave like the others. */
    sl_hub h2;
    CHECK(sl_hub_init(&h2, 1, 10, 60) == 0);
    rec ra, rb, rc;
    rec_init(&ra);
    rec_init(&rb);
    rec_init(&rc);
    sl_hub_str both[] = {S("https://x/books/1"), S("https://x/books/2")};
    ra.sub.filter = sl_hub_filter_new(both, 2, NULL, 0, NULL);        /* indexed, two topics */
    rb.sub.filter = sl_hub_filter_new(both + 1, 1, NULL, 0, NULL);    /* indexed */
    rc.sub.filter = sl_hub_filter_new(match, 1, NULL, 0, NULL);       /* a template: indexed by its literal start */
    sl_hub_str ch = S("c");
    CHECK(sl_hub_subscribe(&h2, &ra.sub, &ch, 1, NULL, 0, 1) == 0 && ra.sub.indexed);
    CHECK(sl_hub_subscribe(&h2, &rb.sub, &ch, 1, NULL, 0, 1) == 0 && rb.sub.indexed);
    CHECK(sl_hub_subscribe(&h2, &rc.sub, &ch, 1, NULL, 0, 1) == 0 && rc.sub.indexed);
    CHECK(sl_hub_subscribers(&h2, "c", 1) == 3);
    sl_hub_event *ev2;
    CHECK(sl_hub_event_new(h2.next_seq, "d", 1, NULL, 0, NULL, 0, -1, 1, &ev2) == 0);
    CHECK(sl_hub_event_attrs(ev2, both, 2, 0) == 0);
    sl_hub_dispatch(&h2, &ch, 1, ev2, 1);
    sl_hub_event_unref(ev2);
    CHECK(ra.n == 1 && rb.n == 1 && rc.n == 1); /* ra once, though both its topics are there */
    CHECK(sl_hub_event_new(h2.next_seq, "d", 1, NULL, 0, NULL, 0, -1, 1, &ev2) == 0);
    CHECK(sl_hub_event_attrs(ev2, both, 1, 0) == 0);
    sl_hub_dispatch(&h2, &ch, 1, ev2, 1);
    sl_hub_event_unref(ev2);
    CHECK(ra.n == 2 && rb.n == 1 && rc.n == 2);
    sl_hub_sub **listed;
    CHECK(sl_hub_subs(&h2, "c", 1, &listed) == 3);
    free(listed);
    sl_hub_unsubscribe(&h2, &ra.sub);
    CHECK(sl_hub_event_new(h2.next_seq, "d", 1, NULL, 0, NULL, 0, -1, 1, &ev2) == 0);
    CHECK(sl_hub_event_attrs(ev2, both, 2, 0) == 0);
    sl_hub_dispatch(&h2, &ch, 1, ev2, 1);
    sl_hub_event_unref(ev2);
    CHECK(ra.n == 2 && rb.n == 2 && rc.n == 3);
    sl_hub_unsubscribe(&h2, &rb.sub);
    sl_hub_unsubscribe(&h2, &rc.sub);
    CHECK(sl_hub_subscribers(&h2, "c", 1) == 0);
    sl_hub_filter_free(ra.sub.filter);
    sl_hub_filter_free(rb.sub.filter);
    sl_hub_filter_free(rc.sub.filter);
    sl_hub_free(&h2);

    int bad = -1;
    sl_hub_str broken[] = {S("ok"), S("https://x/{id")};
    CHECK(sl_hub_filter_new(broken, 2, NULL, 0, &bad) == NULL && bad == 1);
    sl_hub_filter_free(f);
    sl_hub_filter_free(g);
    sl_hub_event_unref(e);
  }

  /* Events numbered elsewhere (the Redis engine): a held subscriber gets its
   * replay, then what arrived meanwhile, each once and in order; later ids
   * continue after the newest dispatched. */
  CHECK(sl_hub_init(&h, 1, 0, 60) == 0);
  h.hold_limit = 1 << 20;
  rec live, held;
  rec_init(&live);
  rec_init(&held);
  sl_hub_str hc[2] = {S("x"), S("y")};
  CHECK(sl_hub_subscribe(&h, &live.sub, hc, 1, NULL, 0, 500) == 0);
  CHECK(sl_hub_subscribe_held(&h, &held.sub, hc, 2, 500) == 0);
  sl_hub_event *ev[6];
  for (int i = 0; i < 6; i++) CHECK(sl_hub_event_new(1000 + (uint64_t)i, "d", 1, NULL, 0, NULL, 0, -1, 500, &ev[i]) == 0);
  sl_hub_dispatch(&h, hc, 2, ev[3], 500); /* live while held: to both channels, held once */
  sl_hub_dispatch(&h, hc, 1, ev[4], 500);
  CHECK(live.n == 2 && held.n == 0);
  CHECK(held.sub.h && held.sub.h->n == 2); /* 1003 (once, though on two channels), 1004 */
  sl_hub_event *replayed[3] = {ev[1], ev[2], ev[3]};
  CHECK(sl_hub_release(&h, &held.sub, replayed, 3) == 3);
  CHECK(held.n == 4);
  CHECK(strcmp(held.got[0], "1001") == 0 && strcmp(held.got[2], "1003") == 0 && strcmp(held.got[3], "1004") == 0);
  sl_hub_dispatch(&h, hc + 1, 1, ev[5], 500);
  CHECK(held.n == 5 && strcmp(held.got[4], "1005") == 0 && live.n == 2);
  CHECK(h.next_seq == 1006);
  pub(&h, "x", NULL, 500, id);
  CHECK(strcmp(id, "1006") == 0);
  sl_hub_unsubscribe(&h, &held.sub);

  /* Past hold_limit a held subscriber is released as slow, with nothing delivered. */
  h.hold_limit = 1;
  rec_init(&held);
  CHECK(sl_hub_subscribe_held(&h, &held.sub, hc, 1, 500) == 0);
  sl_hub_dispatch(&h, hc, 1, ev[0], 500);
  CHECK(sl_hub_release(&h, &held.sub, NULL, 0) == -ENOBUFS && held.n == 0);
  sl_hub_unsubscribe(&h, &held.sub);
  /* A delivery that fails during the release counts as slow. */
  h.hold_limit = 0;
  rec_init(&held);
  held.fail_after = 1;
  CHECK(sl_hub_subscribe_held(&h, &held.sub, hc, 1, 500) == 0);
  CHECK(sl_hub_release(&h, &held.sub, replayed, 3) == -EPIPE && held.n == 1);
  sl_hub_unsubscribe(&h, &held.sub);
  sl_hub_unsubscribe(&h, &live.sub);
  for (int i = 0; i < 6; i++) sl_hub_event_unref(ev[i]);
  sl_hub_free(&h);
  /* The gateway-wide history: the last gw_history events of every channel,
   * each once, for a subscriber that asks for it (sub.gateway); the channels'
   * own histories are unchanged. Expiry and freeing apply to it too. */
  {
    sl_hub g;
    CHECK(sl_hub_init(&g, 1, 2, 60) == 0);
    g.gw_history = 4;
    char first[32];
    pub(&g, "p", NULL, 1, first);        /* 1 */
    pub(&g, "p", NULL, 1, NULL);         /* 2 */
    sl_hub_str both[2] = {S("p"), S("q")};
    CHECK(sl_hub_publish(&g, both, 2, "d", 1, NULL, 0, NULL, 0, -1, NULL, 0, 0, 1, id, 32) == 0); /* 3, on both */
    pub(&g, "q", NULL, 1, NULL);         /* 4 */
    pub(&g, "r", NULL, 1, NULL);         /* 5: 1 leaves the gateway ring */
    rec a, b;
    rec_init(&a);
    rec_init(&b);
    a.sub.gateway = 1;
    CHECK(sub(&g, &a, "z", NULL, "2", 2) == 3); /* 3 (once), 4, 5: from channels z never had */
    const char *want[] = {"3", "4", "5"};
    CHECK(got_is(&a, want, 3));
    CHECK(sub(&g, &b, "z", NULL, "2", 2) == 0); /* its own channels: nothing */
    pub(&g, "z", NULL, 2, NULL);
    CHECK(a.n == 4 && b.n == 1 && strcmp(a.got[3], "6") == 0);
    sl_hub_unsubscribe(&g, &a.sub);
    sl_hub_unsubscribe(&g, &b.sub);
    sl_hub_sweep(&g, 1000); /* past the ttl: the gateway ring empties */
    CHECK(g.all && g.all->count == 0);
    sl_hub_free(&g);
  }

  /* Pattern subscribers are found by the literal start of their selectors:
   * whatever the index, each gets exactly the events its filter wants, once. */
  {
    sl_hub g;
    CHECK(sl_hub_init(&g, 1, 0, 60) == 0);
    static const char *const sels[][2] = {
        {"https://x/books/{id}", NULL}, {"https://x/books/1*", NULL}, {"https://x/b*", "https://x/authors/{a}"},
        {"*", NULL}, {"{+any}", NULL}, {"https://x/books/1", "https://x/{kind}/2"}, {"https://x/books/12", NULL},
        {"https://x/books/{id}/pages{/p}", NULL}, {"h*", NULL}};
    enum { NS = sizeof sels / sizeof sels[0] };
    rec rs[NS];
    sl_hub_str ch = S("p");
    for (int i = 0; i < NS; i++) {
      rec_init(&rs[i]);
      sl_hub_str m[2] = {S(sels[i][0]), sels[i][1] ? S(sels[i][1]) : S("")};
      rs[i].sub.filter = sl_hub_filter_new(m, sels[i][1] ? 2 : 1, NULL, 0, NULL);
      CHECK(rs[i].sub.filter && sl_hub_subscribe(&g, &rs[i].sub, &ch, 1, NULL, 0, 1) == 0);
    }
    CHECK(rs[0].sub.indexed && rs[1].sub.indexed && rs[2].sub.indexed && !rs[3].sub.indexed && !rs[4].sub.indexed);
    static const char *const topics[] = {"https://x/books/1", "https://x/books/12", "https://x/books/2",
                                         "https://x/authors/9", "https://x/b", "h", "https://x/books/1/pages/4",
                                         "other", "https://x/books/"};
    int want[NS] = {0};
    for (unsigned t = 0; t < sizeof topics / sizeof topics[0]; t++) {
      sl_hub_event *ev;
      CHECK(sl_hub_event_new(g.next_seq, "d", 1, NULL, 0, NULL, 0, -1, 1, &ev) == 0);
      sl_hub_str tt = S(topics[t]), two[2] = {S(topics[t]), S("https://x/books/1")};
      CHECK(sl_hub_event_attrs(ev, t % 3 == 2 ? two : &tt, t % 3 == 2 ? 2 : 1, 0) == 0);
      for (int i = 0; i < NS; i++) want[i] += sl_hub_wants(rs[i].sub.filter, ev);
      sl_hub_dispatch(&g, &ch, 1, ev, 1);
      sl_hub_event_unref(ev);
      for (int i = 0; i < NS; i++) CHECK(rs[i].n == want[i]);
    }
    CHECK(want[3] == 9 && want[7] == 1 && want[6] >= 1);
    sl_hub_sub **listed;
    CHECK(sl_hub_subs(&g, "p", 1, &listed) == NS);
    free(listed);
    for (int i = 0; i < NS; i++) {
      sl_hub_unsubscribe(&g, &rs[i].sub);
      sl_hub_filter_free(rs[i].sub.filter);
    }
    CHECK(sl_hub_subscribers(&g, "p", 1) == 0);
    sl_hub_free(&g);
  }

  return check_done("test_hub");
}
