/* redis: the Redis engine. See redis.h.
 *
 * Two connections: `cmd` runs the scripts (publish, replay, catch-up) and
 * `sub` is subscribed to the one pub/sub channel every node listens on. The
 * publish script assigns seq = max(last seq + 1, Redis's clock in µs), so ids
 * increase across all nodes and across a Redis that restarts empty, and
 * Redis's execution order is publish order: each node sees events in seq order
 * and drops any it has already seen.
 *
 * Keys: sluice:seq (the last seq), sluice:epoch (changes when Redis lost its
 * data), sluice:id-block (the blocks of connection ids the nodes claimed), sluice:h:CHANNEL (a stream: entry SEQ-0, field m = the event message,
 * field i = a caller's id); channel sluice:DB:ev carries live events.
 *
 * After a lost connection the node catches up: once subscribed again it asks
 * for every kept event after the newest it saw, on every channel it has
 * subscribers for, and holds live events until that answer is in. */
#include "redis.h"
#include <errno.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "conn.h"
#include "log.h"
#include "rproto.h"
#include "server.h"
#include "sse.h"
#include "watchdog.h"

#define SL_REDIS_ALL "sluice:all" /* the gateway-wide history stream */
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define HANDSHAKE_MS 5000

/* KEYS: the channels' history streams, then the gateway-wide one. ARGV: data,
 * id, has id, event, has event, retry, history, history_ttl, the node channel,
 * private, the number of topics, gateway_history, the topics, the channel
 * names. Returns the event's seq. */
static const char PUBLISH_LUA[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000000 + tonumber(t[2])\n"
    "local seq = tonumber(redis.call('GET', 'sluice:seq') or '0')\n"
    "if now > seq then seq = now else seq = seq + 1 end\n"
    "local s = string.format('%.0f', seq)\n"
    "redis.call('SET', 'sluice:seq', s)\n"
    "local hasid, hasev = ARGV[3] == '1', ARGV[5] == '1'\n"
    "local head = { 'v2', s, ARGV[6], hasid and #ARGV[2] or -1, hasev and #ARGV[4] or -1, ARGV[10], ARGV[11] }\n"
    "local names = {}\n"
    "for i = 13, #ARGV do head[#head + 1] = #ARGV[i]; names[#names + 1] = ARGV[i] end\n"
    "local msg = table.concat(head, ',') .. '\\n' .. (hasid and ARGV[2] or '') .. (hasev and ARGV[4] or '')\n"
    "  .. table.concat(names) .. ARGV[1]\n"
    "local hist, ttl, gw = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[12])\n"
    "for i = 1, #KEYS do\n"
    "  local k, max = KEYS[i], i < #KEYS and hist or gw\n"
    "  if max > 0 then\n"
    "    if hasid then redis.call('XADD', k, 'MAXLEN', max, s .. '-0', 'm', msg, 'i', ARGV[2])\n"
    "    else redis.call('XADD', k, 'MAXLEN', max, s .. '-0', 'm', msg) end\n"
    "    if ttl > 0 then\n"
    "      redis.call('XTRIM', k, 'MINID', string.format('%.0f', math.max(0, now - ttl * 1000000)))\n"
    "      redis.call('PEXPIRE', k, math.ceil(ttl * 1000))\n"
    "    end\n"
    "  end\n"
    "end\n"
    "redis.call('PUBLISH', ARGV[9], msg)\n"
    "return s\n";

/* KEYS: a channel's history stream. ARGV: an event id, history_ttl. Returns 1
 * when the stream keeps that event (by its own id, else by its seq), else 0. */
static const char KEPT_LUA[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000000 + tonumber(t[2])\n"
    "local ttl, min = tonumber(ARGV[2]), '-'\n"
    "if ttl > 0 then min = string.format('%.0f', math.max(0, now - ttl * 1000000)) end\n"
    "for _, e in ipairs(redis.call('XRANGE', KEYS[1], min, '+')) do\n"
    "  local f, id = e[2]\n"
    "  for j = 1, #f, 2 do if f[j] == 'i' then id = f[j + 1] end end\n"
    "  if id == ARGV[1] or (not id and string.match(e[1], '^(%d+)') == ARGV[1]) then return 1 end\n"
    "end\n"
    "return 0\n";

/* ARGV: mode ('id': replay after a Last-Event-ID, 'seq': after a seq), the id
 * or seq, history_ttl, a fresh epoch. Returns { seq now, epoch, messages... }
 * in seq order, each once. The replay rules are the embedded hub's (an id
 * several events share names the earliest of them). */
static const char REPLAY_LUA[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000000 + tonumber(t[2])\n"
    "local cur = tonumber(redis.call('GET', 'sluice:seq') or '0')\n"
    "local ep = redis.call('GET', 'sluice:epoch')\n"
    "if not ep then ep = ARGV[4]; redis.call('SET', 'sluice:epoch', ep) end\n"
    "local out = { string.format('%.0f', cur), ep }\n"
    "if ARGV[1] == 'seq' and tonumber(ARGV[2]) == 0 then return out end\n"
    "local ttl = tonumber(ARGV[3])\n"
    "local min = '-'\n"
    "if ttl > 0 then min = string.format('%.0f', math.max(0, now - ttl * 1000000)) end\n"
    "local entries = {}\n"
    "for i = 1, #KEYS do\n"
    "  for _, e in ipairs(redis.call('XRANGE', KEYS[i], min, '+')) do\n"
    "    local f, m, id = e[2]\n"
    "    for j = 1, #f, 2 do if f[j] == 'm' then m = f[j + 1] elseif f[j] == 'i' then id = f[j + 1] end end\n"
    "    entries[#entries + 1] = { tonumber(string.match(e[1], '^(%d+)')), m, id }\n"
    "  end\n"
    "end\n"
    "local after = 0\n"
    "if ARGV[1] == 'seq' then after = tonumber(ARGV[2])\n"
    "else\n"
    "  local L, found = ARGV[2]\n"
    "  for _, e in ipairs(entries) do\n"
    "    if e[3] == L or (not e[3] and string.format('%.0f', e[1]) == L) then\n"
    "      if not found or e[1] < found then found = e[1] end\n"
    "    end\n"
    "  end\n"
    "  if found then after = found\n"
    "  elseif string.match(L, '^%d+$') and #L <= 16 and tonumber(L) <= cur then after = tonumber(L) end\n"
    "end\n"
    "table.sort(entries, function(a, b) return a[1] < b[1] end)\n"
    "local last = after\n"
    "for _, e in ipairs(entries) do\n"
    "  if e[1] > last then out[#out + 1] = e[2]; last = e[1] end\n"
    "end\n"
    "return out\n";

typedef struct rreplay {
  sl_redis *r;
  sl_hub_sub *sub;      /* NULL once the subscriber left */
  struct rreplay *prev, *next;
  int sent;             /* a request is under way on the current connection */
  size_t lidlen;
  char lid[];
} rreplay;

/* A live message received while catching up. */
typedef struct rheld {
  struct rheld *next;
  size_t len;
  char data[];
} rheld;

struct sl_redis {
  sl_server *srv;
  char *url;
  sl_redis_url u;
  char evchan[64];
  redisAsyncContext *cmd, *sub;
  int cmd_ok, sub_ok;         /* authenticated; subscribed */
  int up;                     /* both ok: publishes go out */
  int was_up, down_logged, stopping;
  int claiming;               /* an INCR of sluice:id-block is under way */
  int catching;               /* a catch-up is under way: live events are held */
  rheld *held, **held_tail;
  uint64_t last_seq;          /* the newest event handed to the hub */
  uint64_t floor;             /* Redis's seq when the node first connected: nothing before it is owed */
  char epoch[40];
  uv_timer_t retry;
  unsigned backoff;
  int closes;                 /* what must close before the memory goes */
  int bad_id_logged, bad_event_logged; /* events dropped for a CR, LF or NUL in their id / name */
  rreplay *replays;
  sl_redis_stats st;
};

static void connect_all(sl_redis *r);
static void on_retry(uv_timer_t *t);
static void lost(sl_redis *r, const char *why);

static double now_s(void) { return (double)uv_hrtime() / 1e9; }

const char *sl_redis_addr(sl_redis *r) { return r->url; }
int sl_redis_ready(sl_redis *r) { return r && r->up; }

void sl_redis_get_stats(sl_redis *r, sl_redis_stats *out) {
  *out = r->st;
  out->connected = r->up;
}

/* ---- hiredis on the loop ----
 * hiredis's own libuv adapter (0.14) ignores a poll error, and libuv reports
 * a refused connect as one (UV_EBADF, poll stopped), so a reconnect would hang.
 * This one hands an error to hiredis as the events it waits for, and hiredis
 * then finds the socket's error itself. */

typedef struct rpoll {
  uv_poll_t h;
  redisAsyncContext *ac; /* NULL once hiredis let go */
  int events;
} rpoll;

static void rpoll_cb(uv_poll_t *h, int status, int events) {
  rpoll *p = h->data;
  int ev = status < 0 ? p->events : events;
  if (p->ac && (ev & UV_READABLE)) redisAsyncHandleRead(p->ac);
  if (p->ac && (ev & UV_WRITABLE)) redisAsyncHandleWrite(p->ac);
}

static void rpoll_update(rpoll *p, int add, int del) {
  p->events = (p->events | add) & ~del;
  if (p->events) uv_poll_start(&p->h, p->events, rpoll_cb);
  else uv_poll_stop(&p->h);
}

static void rpoll_add_read(void *d) { rpoll_update(d, UV_READABLE, 0); }
static void rpoll_del_read(void *d) { rpoll_update(d, 0, UV_READABLE); }
static void rpoll_add_write(void *d) { rpoll_update(d, UV_WRITABLE, 0); }
static void rpoll_del_write(void *d) { rpoll_update(d, 0, UV_WRITABLE); }
static void rpoll_closed(uv_handle_t *h) { free(h->data); }
static void rpoll_cleanup(void *d) {
  rpoll *p = d;
  p->ac = NULL;
  uv_close((uv_handle_t *)&p->h, rpoll_closed);
}

static int rpoll_attach(redisAsyncContext *ac, uv_loop_t *loop) {
  rpoll *p = calloc(1, sizeof *p);
  if (!p) return -1;
  if (uv_poll_init(loop, &p->h, ac->c.fd)) {
    free(p);
    return -1;
  }
  p->h.data = p;
  p->ac = ac;
  ac->ev.data = p;
  ac->ev.addRead = rpoll_add_read;
  ac->ev.delRead = rpoll_del_read;
  ac->ev.addWrite = rpoll_add_write;
  ac->ev.delWrite = rpoll_del_write;
  ac->ev.cleanup = rpoll_cleanup;
  return 0;
}

/* ---- connection state ---- */

static void maybe_free(sl_redis *r) {
  if (r->closes) return;
  free(r->url);
  free(r);
}

static void on_retry_closed(uv_handle_t *h) {
  sl_redis *r = h->data;
  r->closes--;
  maybe_free(r);
}

static void drop_held(sl_redis *r) {
  while (r->held) {
    rheld *h = r->held;
    r->held = h->next;
    free(h);
  }
  r->held_tail = &r->held;
  r->catching = 0;
}

/* Lets go of one connection; its pending callbacks get NULL replies. A context
 * that never connected gets no disconnect callback, so it is counted here. */
static void drop_ctx(sl_redis *r, redisAsyncContext *ac) {
  if (!(ac->c.flags & REDIS_CONNECTED)) r->closes--;
  if (r->stopping || !(ac->c.flags & REDIS_CONNECTED)) redisAsyncFree(ac);
  else redisAsyncDisconnect(ac);
}

static void on_retry(uv_timer_t *t) {
  sl_redis *r = t->data;
  if (r->cmd || r->sub) lost(r, "no answer in time"); /* the handshake's deadline passed */
  else connect_all(r);
}

/* Drops both connections and schedules the next attempt. */
static void lost(sl_redis *r, const char *why) {
  redisAsyncContext *cmd = r->cmd, *sub = r->sub;
  r->cmd = r->sub = NULL;
  int was = r->up;
  r->up = r->cmd_ok = r->sub_ok = 0;
  drop_held(r);
  for (rreplay *p = r->replays; p; p = p->next) p->sent = 0;
  if (cmd) drop_ctx(r, cmd);
  if (sub) drop_ctx(r, sub);
  if (r->stopping) return;
  if (was) sl_warn("redis: connection to %s lost (%s): publishes fail until it is back", r->url, why);
  else if (!r->down_logged) sl_warn("redis: %s unreachable (%s): retrying with backoff", r->url, why);
  else sl_debug("redis: %s still unreachable (%s)", r->url, why);
  r->down_logged = 1;
  uv_timer_start(&r->retry, on_retry, r->backoff, 0);
  r->backoff = r->backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : r->backoff * 2;
}

static void on_disconnect(const redisAsyncContext *ac, int status) {
  sl_redis *r = ac->data;
  if (ac == r->cmd || ac == r->sub) {
    /* The context is freed by hiredis after this returns: forget it first. */
    if (ac == r->cmd) r->cmd = NULL;
    else r->sub = NULL;
    lost(r, ac->errstr[0] ? ac->errstr : "closed by the server");
  }
  r->closes--;
  maybe_free(r);
}

static void on_connect(const redisAsyncContext *ac, int status) {
  sl_redis *r = ac->data;
  if (status == REDIS_OK) return;
  /* hiredis frees a context that failed to connect, with no disconnect callback. */
  if (ac == r->cmd) r->cmd = NULL;
  if (ac == r->sub) r->sub = NULL;
  r->closes--;
  lost(r, ac->errstr[0] ? ac->errstr : "cannot connect");
  maybe_free(r);
}

static int reply_error(redisReply *reply, const char **why) {
  if (!reply) {
    *why = "connection lost";
    return 1;
  }
  if (reply->type == REDIS_REPLY_ERROR) {
    *why = reply->str;
    return 1;
  }
  return 0;
}

static void handshake_step(redisAsyncContext *ac, void *reply, void *priv) {
  sl_redis *r = ac->data;
  const char *why;
  if (reply_error(reply, &why) && reply) {
    sl_error("redis: %s refused the connection set-up: %s", r->url, why);
    if (ac == r->cmd || ac == r->sub) lost(r, why);
  }
}

static void process_message(sl_redis *r, const char *p, size_t len);
static void catch_up(sl_redis *r);

static void on_sub_message(redisAsyncContext *ac, void *reply_, void *priv) {
  sl_redis *r = ac->data;
  redisReply *reply = reply_;
  if (!reply || ac != r->sub) return;
  if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 3 || reply->element[0]->type != REDIS_REPLY_STRING)
    return;
  const char *kind = reply->element[0]->str;
  if (strcmp(kind, "subscribe") == 0) {
    r->sub_ok = 1;
    if (r->cmd_ok) catch_up(r);
    return;
  }
  if (strcmp(kind, "message") != 0 || reply->element[2]->type != REDIS_REPLY_STRING) return;
  r->st.received++;
  redisReply *m = reply->element[2];
  if (!r->catching) {
    process_message(r, m->str, m->len);
    return;
  }
  rheld *h = malloc(sizeof *h + m->len);
  if (!h) return; /* the catch-up's successor (the next reconnect) cannot fix this either: log it */
  h->next = NULL;
  h->len = m->len;
  memcpy(h->data, m->str, m->len);
  *r->held_tail = h;
  r->held_tail = &h->next;
}

static void on_cmd_ready(redisAsyncContext *ac, void *reply, void *priv) {
  sl_redis *r = ac->data;
  const char *why;
  if (ac != r->cmd) return;
  if (reply_error(reply, &why)) return; /* handshake_step or the disconnect says why */
  r->cmd_ok = 1;
  if (r->sub_ok) catch_up(r);
}

static redisAsyncContext *open_one(sl_redis *r) {
  redisAsyncContext *ac = r->u.path[0] ? redisAsyncConnectUnix(r->u.path) : redisAsyncConnect(r->u.host, r->u.port);
  if (!ac) return NULL;
  if (ac->err) {
    sl_debug("redis: cannot connect to %s: %s", r->url, ac->errstr);
    redisAsyncFree(ac);
    return NULL;
  }
  ac->data = r;
  if (rpoll_attach(ac, r->srv->loop)) {
    redisAsyncFree(ac);
    return NULL;
  }
  /* The disconnect callback (or the failed connect's) balances this. */
  redisAsyncSetConnectCallback(ac, on_connect);
  redisAsyncSetDisconnectCallback(ac, on_disconnect);
  r->closes++;
  if (r->u.password[0]) {
    if (r->u.user[0]) redisAsyncCommand(ac, handshake_step, NULL, "AUTH %s %s", r->u.user, r->u.password);
    else redisAsyncCommand(ac, handshake_step, NULL, "AUTH %s", r->u.password);
  }
  return ac;
}

static void connect_all(sl_redis *r) {
  if (r->stopping || r->cmd || r->sub) return;
  if (r->was_up) r->st.reconnects++;
  /* Live events wait for the catch-up from the moment the node subscribes. */
  r->catching = 1;
  r->cmd = open_one(r);
  r->sub = r->cmd ? open_one(r) : NULL;
  if (!r->cmd || !r->sub) {
    lost(r, "cannot connect");
    return;
  }
  /* Named, so an operator can tell the nodes apart in CLIENT LIST. */
  redisAsyncCommand(r->cmd, handshake_step, NULL, "CLIENT SETNAME sluice-%d", (int)getpid());
  redisAsyncCommand(r->sub, handshake_step, NULL, "CLIENT SETNAME sluice-%d", (int)getpid());
  if (r->u.db) redisAsyncCommand(r->cmd, handshake_step, NULL, "SELECT %d", r->u.db);
  redisAsyncCommand(r->cmd, on_cmd_ready, NULL, "PING");
  redisAsyncCommand(r->sub, on_sub_message, NULL, "SUBSCRIBE %s", r->evchan);
  /* A Redis that takes the connection but does not answer counts as down. */
  uv_timer_start(&r->retry, on_retry, HANDSHAKE_MS, 0);
}

/* The connections' way to the engine (server.h's hooks). */
static int hook_replay(sl_server *srv, sl_hub_sub *sub, const char *last_id, size_t len) {
  return sl_redis_replay(srv->redis, sub, last_id, len);
}
static void hook_replay_cancel(sl_server *srv, sl_hub_sub *sub) { sl_redis_replay_cancel(srv->redis, sub); }

/* ---- connection ids: blocks claimed from a counter every node shares ---- */

static void on_id_block(void *arg, void *reply_) {
  sl_redis *r = arg;
  redisReply *reply = reply_;
  r->claiming = 0;
  if (!reply || reply->type != REDIS_REPLY_INTEGER || reply->integer < 1) {
    if (reply) sl_warn("redis: claiming a block of connection ids failed; ids go on from a random block");
    return;
  }
  uint32_t b = SL_ID_CLAIMED + (uint32_t)((uint64_t)(reply->integer - 1) % SL_ID_CLAIMED);
  if (r->srv->id_block_drawn) sl_server_id_block(r->srv, b);
  else r->srv->spare_block = b;
}

/* Claims a block of ids: to go on with at once while the one in use was drawn
 * at random, else as the spare for when it runs out. */
static void claim_ids(sl_redis *r) {
  sl_server *srv = r->srv;
  if (r->claiming || !r->up || r->stopping || (!srv->id_block_drawn && srv->spare_block)) return;
  /* A counter that starts (or, in a Redis that lost its data, starts again)
   * from Redis's clock in hundredths of a second (2^25 of them: 3.9 days), so
   * not from blocks that nodes still use unless they claimed over 100 a second. */
  static const char script[] =
      "local n = redis.call('INCR', KEYS[1])\n"
      "if n == 1 then\n"
      "  local t = redis.call('TIME')\n"
      "  n = (tonumber(t[1]) * 100 + math.floor(tonumber(t[2]) / 10000)) % 33554432 + 1\n"
      "  redis.call('SET', KEYS[1], n)\n"
      "end\n"
      "return n\n";
  const char *argv[] = {"EVAL", script, "1", "sluice:id-block"};
  const size_t lens[] = {4, sizeof script - 1, 1, 15};
  if (sl_redis_command(r, 4, argv, lens, on_id_block, r) == 0) r->claiming = 1;
}

static void hook_id_block(sl_server *srv) {
  if (srv->redis) claim_ids(srv->redis);
}

int sl_redis_start(sl_server *srv, const char *url, char *err, size_t errlen) {
  sl_redis *r = calloc(1, sizeof *r);
  if (!r || !(r->url = strdup(url))) {
    free(r);
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  if (sl_redis_url_parse(url, &r->u, err, errlen)) {
    free(r->url);
    free(r);
    return -1;
  }
  r->srv = srv;
  r->held_tail = &r->held;
  r->backoff = BACKOFF_MIN_MS;
  snprintf(r->evchan, sizeof r->evchan, "sluice:%d:ev", r->u.db);
  uv_timer_init(srv->loop, &r->retry);
  r->retry.data = r;
  r->closes = 1;
  srv->redis = r;
  srv->hooks.replay = hook_replay;
  srv->hooks.replay_cancel = hook_replay_cancel;
  srv->hooks.id_block = hook_id_block;
  /* History lives in Redis; the hub numbers nothing itself. */
  srv->hub.history = 0;
  srv->hub.next_seq = 1;
  connect_all(r);
  return 0;
}

void sl_redis_stop(sl_redis *r) {
  if (!r || r->stopping) return;
  r->stopping = 1;
  r->srv->redis = NULL;
  r->srv->hooks.replay = NULL;
  r->srv->hooks.replay_cancel = NULL;
  r->srv->hooks.id_block = NULL;
  while (r->replays) {
    rreplay *p = r->replays;
    r->replays = p->next;
    if (p->sub) p->sub->pending = NULL;
    if (p->sent) p->sub = NULL, p->prev = p->next = NULL, p->r = NULL; /* its callback frees it */
    else free(p);
  }
  lost(r, "stopping");
  uv_close((uv_handle_t *)&r->retry, on_retry_closed);
}

/* ---- events in ---- */

/* The hub event of a parsed message, topics and privacy included; NULL if out
 * of memory, or if its id or name cannot be framed (another node's bug, or a
 * writer other than Sluice: logged once for each). */
static sl_hub_event *event_of(sl_redis *r, const sl_rmsg *m, double now) {
  int bad_id = m->id.p && sl_sse_check_field(m->id.p, m->id.len);
  if (bad_id || (m->event.p && sl_sse_check_field(m->event.p, m->event.len))) {
    int *logged = bad_id ? &r->bad_id_logged : &r->bad_event_logged;
    if (!*logged)
      sl_warn("redis: dropping event %" PRIu64 " (and, from now on silently, any other) whose %s holds CR, LF or "
              "NUL: it cannot be framed as an event",
              m->seq, bad_id ? "id" : "event name");
    *logged = 1;
    return NULL;
  }
  sl_hub_event *e;
  if (sl_hub_event_new(m->seq, m->data.p, m->data.len, m->id.p, m->id.len, m->event.p, m->event.len, m->retry, now,
                       &e))
    return NULL;
  if (m->ntopics || m->priv) {
    sl_hub_str topics[SL_RMSG_MAX_TOPICS];
    for (int i = 0; i < m->ntopics; i++) topics[i].p = m->topics[i].p, topics[i].len = m->topics[i].len;
    if (sl_hub_event_attrs(e, topics, (unsigned)m->ntopics, m->priv)) {
      sl_hub_event_unref(e);
      return NULL;
    }
  }
  return e;
}

/* Frames the message once and gives it to the hub's local subscribers. */
static void process_message(sl_redis *r, const char *p, size_t len) {
  sl_rmsg m;
  if (sl_rmsg_parse(p, len, &m)) {
    sl_warn("redis: ignoring a malformed event message (%zu bytes)", len);
    return;
  }
  if (m.seq <= r->last_seq) return; /* seen already (the catch-up had it) */
  r->last_seq = m.seq;
  double now = now_s();
  sl_hub_event *e = event_of(r, &m, now);
  if (!e) return;
  sl_hub_str chans[SL_RMSG_MAX_CHANS];
  for (int i = 0; i < m.nchans; i++) chans[i].p = m.chans[i].p, chans[i].len = m.chans[i].len;
  sl_metrics_published(&r->srv->metrics, uv_hrtime());
  sl_watchdog_enter_c("the fan-out of an event from Redis");
  sl_hub_dispatch(&r->srv->hub, chans, m.nchans, e, now);
  sl_watchdog_leave();
  sl_hub_event_unref(e);
}

/* Checks the { seq, epoch, messages... } header of a replay answer; notes a
 * Redis that lost its data. NULL when the reply is not one. */
static redisReply *replay_reply(sl_redis *r, redisReply *reply, const char **why) {
  if (reply_error(reply, why)) return NULL;
  if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 2 || reply->element[1]->type != REDIS_REPLY_STRING) {
    *why = "unexpected reply";
    return NULL;
  }
  const char *ep = reply->element[1]->str;
  if (r->epoch[0] && strcmp(r->epoch, ep) != 0)
    sl_warn("redis: %s lost its data since this node last saw it (restarted empty?): events published before "
            "that are gone; subscribers get what it keeps now",
            r->url);
  snprintf(r->epoch, sizeof r->epoch, "%s", ep);
  return reply;
}

static void on_catch_up(redisAsyncContext *ac, void *reply_, void *priv) {
  sl_redis *r = ac->data;
  const char *why;
  if (ac != r->cmd || !r->catching) return;
  redisReply *reply = replay_reply(r, reply_, &why);
  if (!reply) {
    if (reply_) sl_error("redis: catch-up failed: %s", why);
    return; /* a lost connection starts over */
  }
  uint64_t cur = strtoull(reply->element[0]->str ? reply->element[0]->str : "0", NULL, 10);
  size_t n = reply->elements - 2;
  if (n) sl_info("redis: caught up %zu event%s published while this node was away", n, n == 1 ? "" : "s");
  for (size_t i = 2; i < reply->elements; i++)
    if (reply->element[i]->type == REDIS_REPLY_STRING) process_message(r, reply->element[i]->str, reply->element[i]->len);
  if (!r->was_up) r->floor = cur;
  r->catching = 0;
  while (r->held) {
    rheld *h = r->held;
    r->held = h->next;
    process_message(r, h->data, h->len);
    free(h);
  }
  r->held_tail = &r->held;
  if (!r->was_up || r->down_logged) sl_info("redis: connected to %s", r->url);
  claim_ids(r);
  r->was_up = 1;
  r->down_logged = 0;
  r->backoff = BACKOFF_MIN_MS;
}

static void send_replay(sl_redis *r, rreplay *p);


/* Connected and subscribed: catch up from history, then go on live. */
static void catch_up(sl_redis *r) {
  if (r->up) return;
  r->up = 1;
  uv_timer_stop(&r->retry);
  sl_hub *hub = &r->srv->hub;
  size_t n = 0;
  for (size_t i = 0; i < hub->nbuckets; i++)
    for (sl_hub_chan *c = hub->buckets[i]; c; c = c->hnext) n += c->nsubs > 0;
  const char **argv = malloc((n + 7) * sizeof *argv);
  size_t *lens = malloc((n + 7) * sizeof *lens);
  char **keys = calloc(n + 1, sizeof *keys);
  char nk[24], after[24], ttl[32], epoch[40];
  snprintf(nk, sizeof nk, "%zu", n);
  snprintf(after, sizeof after, "%" PRIu64, !r->was_up ? 0 : r->last_seq > r->floor ? r->last_seq : r->floor);
  snprintf(ttl, sizeof ttl, "%.3f", r->srv->cfg.history_ttl);
  snprintf(epoch, sizeof epoch, "%016" PRIx64 "%08x", uv_hrtime(), (unsigned)rand());
  if (!argv || !lens || !keys) {
    lost(r, "out of memory");
    goto out;
  }
  int a = 0;
  argv[a++] = "EVAL", argv[a++] = REPLAY_LUA, argv[a++] = nk;
  size_t k = 0;
  for (size_t i = 0; i < hub->nbuckets; i++)
    for (sl_hub_chan *c = hub->buckets[i]; c; c = c->hnext) {
      if (!c->nsubs) continue;
      keys[k] = malloc(c->namelen + 10);
      if (!keys[k]) continue;
      memcpy(keys[k], "sluice:h:", 9);
      memcpy(keys[k] + 9, c->name, c->namelen);
      lens[a] = c->namelen + 9;
      argv[a++] = keys[k++];
    }
  snprintf(nk, sizeof nk, "%zu", k);
  argv[a++] = "seq", argv[a++] = after, argv[a++] = ttl, argv[a++] = epoch;
  for (int i = 0; i < a; i++)
    if (i < 3 || i >= 3 + (int)k) lens[i] = strlen(argv[i]);
  redisAsyncCommandArgv(r->cmd, on_catch_up, NULL, a, argv, lens);
  /* Replays that waited for Redis go after it, in order. */
  for (rreplay *p = r->replays; p; p = p->next)
    if (!p->sent) send_replay(r, p);
out:
  for (size_t i = 0; keys && i < n; i++) free(keys[i]);
  free(keys);
  free(argv);
  free(lens);
}

/* ---- replay of one subscriber ---- */

static void unlink_replay(sl_redis *r, rreplay *p) {
  if (!r) return;
  if (p->prev) p->prev->next = p->next;
  else if (r->replays == p) r->replays = p->next;
  if (p->next) p->next->prev = p->prev;
  p->prev = p->next = NULL;
}

static void on_replay(redisAsyncContext *ac, void *reply_, void *priv) {
  rreplay *p = priv;
  sl_redis *r = p->r;
  if (!p->sub || !r) {
    free(p);
    return;
  }
  if (!reply_ || ac != r->cmd) {
    p->sent = 0; /* sent again once Redis is back */
    return;
  }
  const char *why;
  redisReply *reply = replay_reply(r, reply_, &why);
  sl_hub_sub *sub = p->sub;
  unlink_replay(r, p);
  free(p);
  sub->pending = NULL;
  sl_conn *c = sub->data;
  if (!reply) {
    sl_error("redis: replay failed: %s", why);
    sl_conn_close(c);
    return;
  }
  size_t n = reply->elements - 2;
  sl_hub_event **es = calloc(n ? n : 1, sizeof *es);
  size_t got = 0;
  double now = now_s();
  for (size_t i = 0; es && i < n; i++) {
    redisReply *m = reply->element[i + 2];
    sl_rmsg msg;
    if (m->type != REDIS_REPLY_STRING || sl_rmsg_parse(m->str, m->len, &msg)) continue;
    if ((es[got] = event_of(r, &msg, now)) != NULL) got++;
  }
  r->st.replays++;
  int rc = es ? sl_hub_release(&r->srv->hub, sub, es, (int)got) : -ENOMEM;
  for (size_t i = 0; i < got; i++) sl_hub_event_unref(es[i]);
  free(es);
  if (rc == -ENOBUFS || rc == -ENOMEM) {
    sl_warn("conn %llu: closed as a slow consumer (too much arrived during its replay)", (unsigned long long)c->id);
    sl_conn_close(c);
  }
}

static void send_replay(sl_redis *r, rreplay *p) {
  sl_hub_sub *sub = p->sub;
  /* From the gateway-wide stream, or from the channels' own. */
  int n = sub->gateway ? 1 : (int)sub->nlinks;
  const char **argv = malloc((size_t)(n + 7) * sizeof *argv);
  size_t *lens = malloc((size_t)(n + 7) * sizeof *lens);
  char **keys = calloc((size_t)n + 1, sizeof *keys);
  char nk[16], ttl[32], epoch[40];
  int a = 0, ok = argv && lens && keys;
  snprintf(nk, sizeof nk, "%d", n);
  snprintf(ttl, sizeof ttl, "%.3f", r->srv->cfg.history_ttl);
  snprintf(epoch, sizeof epoch, "%016" PRIx64 "%08x", uv_hrtime(), (unsigned)rand());
  if (ok) {
    argv[a] = "EVAL", lens[a++] = 4;
    argv[a] = REPLAY_LUA, lens[a++] = sizeof REPLAY_LUA - 1;
    argv[a] = nk, lens[a++] = strlen(nk);
    if (sub->gateway) argv[a] = SL_REDIS_ALL, lens[a++] = sizeof SL_REDIS_ALL - 1;
    for (int i = 0; i < n && ok && !sub->gateway; i++) {
      sl_hub_chan *c = sub->links[i].chan;
      ok = (keys[i] = malloc(c->namelen + 9)) != NULL;
      if (!ok) break;
      memcpy(keys[i], "sluice:h:", 9);
      memcpy(keys[i] + 9, c->name, c->namelen);
      argv[a] = keys[i], lens[a++] = c->namelen + 9;
    }
    argv[a] = "id", lens[a++] = 2;
    argv[a] = p->lid, lens[a++] = p->lidlen;
    argv[a] = ttl, lens[a++] = strlen(ttl);
    argv[a] = epoch, lens[a++] = strlen(epoch);
  }
  if (ok && redisAsyncCommandArgv(r->cmd, on_replay, p, a, argv, lens) == REDIS_OK) p->sent = 1;
  for (int i = 0; keys && i < n; i++) free(keys[i]);
  free(keys);
  free(argv);
  free(lens);
}

int sl_redis_replay(sl_redis *r, sl_hub_sub *sub, const char *last_id, size_t lidlen) {
  rreplay *p = calloc(1, sizeof *p + lidlen + 1);
  if (!p) return -ENOMEM;
  p->r = r;
  p->sub = sub;
  p->lidlen = lidlen;
  memcpy(p->lid, last_id, lidlen);
  p->next = r->replays;
  if (r->replays) r->replays->prev = p;
  r->replays = p;
  sub->pending = p;
  /* Before the node is caught up, the catch-up sends it, after its own. */
  if (r->up) send_replay(r, p);
  return 0;
}

void sl_redis_replay_cancel(sl_redis *r, sl_hub_sub *sub) {
  rreplay *p = sub->pending;
  if (!p) return;
  sub->pending = NULL;
  unlink_replay(p->r, p);
  if (p->sent) p->sub = NULL; /* the callback frees it */
  else free(p);
}

/* ---- publish ---- */

typedef struct rpub {
  sl_redis_published done;
  void *arg;
  size_t idlen;   /* the caller's id, returned as given */
  int hasid;
  char id[];
} rpub;

static void on_published(redisAsyncContext *ac, void *reply_, void *priv) {
  rpub *p = priv;
  redisReply *reply = reply_;
  const char *why;
  if (reply_error(reply, &why)) p->done(p->arg, NULL, 0, why);
  else if (p->hasid) p->done(p->arg, p->id, p->idlen, NULL);
  else if (reply->type == REDIS_REPLY_STRING) p->done(p->arg, reply->str, reply->len, NULL);
  else p->done(p->arg, NULL, 0, "unexpected reply");
  free(p);
}

typedef struct rkept {
  sl_redis_published done;
  void *arg;
} rkept;

static void on_kept(redisAsyncContext *ac, void *reply_, void *priv) {
  rkept *k = priv;
  redisReply *reply = reply_;
  const char *why;
  if (reply_error(reply, &why)) k->done(k->arg, NULL, 0, why);
  else if (reply->type == REDIS_REPLY_INTEGER) k->done(k->arg, reply->integer ? "1" : "0", 1, NULL);
  else k->done(k->arg, NULL, 0, "unexpected reply");
  free(k);
}

typedef struct rusercmd {
  sl_redis_reply done;
  void *arg;
} rusercmd;

static void on_command(redisAsyncContext *ac, void *reply, void *priv) {
  (void)ac;
  rusercmd *c = priv;
  c->done(c->arg, reply);
  free(c);
}

int sl_redis_command(sl_redis *r, int argc, const char **argv, const size_t *lens, sl_redis_reply done, void *arg) {
  if (!r->up) return -ENOTCONN;
  rusercmd *c = malloc(sizeof *c);
  if (!c) return -ENOMEM;
  c->done = done;
  c->arg = arg;
  if (redisAsyncCommandArgv(r->cmd, on_command, c, argc, argv, lens) != REDIS_OK) {
    free(c);
    return -ENOTCONN;
  }
  return 0;
}

int sl_redis_kept(sl_redis *r, const char *chan, size_t len, const char *id, size_t idlen, sl_redis_published done,
                  void *arg) {
  if (!r->up) return -ENOTCONN;
  rkept *k = malloc(sizeof *k);
  char *key = malloc(len + 9);
  char ttl[32];
  int rc = -ENOMEM;
  if (k && key) {
    memcpy(key, "sluice:h:", 9);
    memcpy(key + 9, chan, len);
    snprintf(ttl, sizeof ttl, "%.3f", r->srv->cfg.history_ttl);
    const char *argv[] = {"EVAL", KEPT_LUA, "1", key, id, ttl};
    size_t lens[] = {4, sizeof KEPT_LUA - 1, 1, len + 9, idlen, strlen(ttl)};
    k->done = done;
    k->arg = arg;
    rc = redisAsyncCommandArgv(r->cmd, on_kept, k, 6, argv, lens) == REDIS_OK ? 0 : -ENOTCONN;
  }
  if (rc) free(k);
  free(key);
  return rc;
}

int sl_redis_publish(sl_redis *r, const sl_hub_str *chans, int n, const char *data, size_t len, const char *id,
                     size_t idlen, const char *event, size_t evlen, long long retry, const sl_hub_str *topics,
                     unsigned ntopics, int priv, sl_redis_published done, void *arg) {
  if (!r->up) return -ENOTCONN;
  if (ntopics > SL_RMSG_MAX_TOPICS) return -E2BIG;
  rpub *p = malloc(sizeof *p + (id ? idlen : 0) + 1);
  const char **argv = malloc((size_t)(2 * n + ntopics + 16) * sizeof *argv);
  size_t *lens = malloc((size_t)(2 * n + ntopics + 16) * sizeof *lens);
  char **keys = calloc((size_t)n + 1, sizeof *keys);
  int ok = p && argv && lens && keys, a = 0;
  char nk[16], rs[24], hist[24], ttl[32], nt[16], gw[24];
  snprintf(nt, sizeof nt, "%u", ntopics);
  snprintf(nk, sizeof nk, "%d", n + 1);
  snprintf(gw, sizeof gw, "%u", (unsigned)r->srv->cfg.gateway_history);
  snprintf(rs, sizeof rs, "%lld", retry < 0 ? -1 : retry);
  snprintf(hist, sizeof hist, "%u", (unsigned)r->srv->cfg.history);
  snprintf(ttl, sizeof ttl, "%.3f", r->srv->cfg.history_ttl);
  if (ok) {
    argv[a] = "EVAL", lens[a++] = 4;
    argv[a] = PUBLISH_LUA, lens[a++] = sizeof PUBLISH_LUA - 1;
    argv[a] = nk, lens[a++] = strlen(nk);
    for (int i = 0; i < n && ok; i++) {
      ok = (keys[i] = malloc(chans[i].len + 9)) != NULL;
      if (!ok) break;
      memcpy(keys[i], "sluice:h:", 9);
      memcpy(keys[i] + 9, chans[i].p, chans[i].len);
      argv[a] = keys[i], lens[a++] = chans[i].len + 9;
    }
    argv[a] = SL_REDIS_ALL, lens[a++] = sizeof SL_REDIS_ALL - 1;
    argv[a] = data, lens[a++] = len;
    argv[a] = id ? id : "", lens[a++] = id ? idlen : 0;
    argv[a] = id ? "1" : "0", lens[a++] = 1;
    argv[a] = event ? event : "", lens[a++] = event ? evlen : 0;
    argv[a] = event ? "1" : "0", lens[a++] = 1;
    argv[a] = rs, lens[a++] = strlen(rs);
    argv[a] = hist, lens[a++] = strlen(hist);
    argv[a] = ttl, lens[a++] = strlen(ttl);
    argv[a] = r->evchan, lens[a++] = strlen(r->evchan);
    argv[a] = priv ? "1" : "0", lens[a++] = 1;
    argv[a] = nt, lens[a++] = strlen(nt);
    argv[a] = gw, lens[a++] = strlen(gw);
    for (unsigned i = 0; i < ntopics; i++) argv[a] = topics[i].p, lens[a++] = topics[i].len;
    for (int i = 0; i < n; i++) argv[a] = chans[i].p, lens[a++] = chans[i].len;
  }
  int rc = -ENOMEM;
  if (ok) {
    p->done = done;
    p->arg = arg;
    p->hasid = id != NULL;
    p->idlen = id ? idlen : 0;
    if (id) memcpy(p->id, id, idlen);
    p->id[p->idlen] = '\0';
    if (redisAsyncCommandArgv(r->cmd, on_published, p, a, argv, lens) == REDIS_OK) {
      r->st.published++;
      rc = 0;
    } else {
      rc = -ENOTCONN;
    }
  }
  if (rc) free(p);
  for (int i = 0; keys && i < n; i++) free(keys[i]);
  free(keys);
  free(argv);
  free(lens);
  return rc;
}
