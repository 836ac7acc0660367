/* Unit tests for rproto: Redis URLs, and the event messages the engine's
 * scripts publish and return for replay. */
#include <stdlib.h>
#include "../rproto.h"
#include "check.h"

static int url(const char *u, sl_redis_url *out) {
  char err[256];
  return sl_redis_url_parse(u, out, err, sizeof err);
}

static int parse(const char *m, sl_rmsg *out) { return sl_rmsg_parse(m, strlen(m), out); }

int main(void) {
  sl_redis_url u;
  CHECK(url("redis://127.0.0.1:6390", &u) == 0);
  CHECK(strcmp(u.host, "127.0.0.1") == 0 && u.port == 6390 && u.db == 0 && !u.password[0] && !u.path[0]);
  CHECK(url("redis://localhost", &u) == 0 && u.port == 6379);
  CHECK(url("redis://:s%40cret@h:1/3", &u) == 0);
  CHECK(strcmp(u.password, "s@cret") == 0 && !u.user[0] && u.port == 1 && u.db == 3);
  CHECK(url("redis://ann:pw@h/0", &u) == 0 && strcmp(u.user, "ann") == 0 && strcmp(u.password, "pw") == 0);
  CHECK(url("redis://[::1]:7000/2", &u) == 0 && strcmp(u.host, "::1") == 0 && u.port == 7000 && u.db == 2);
  CHECK(url("unix:///run/redis.sock", &u) == 0 && strcmp(u.path, "/run/redis.sock") == 0 && !u.host[0]);
  CHECK(url("unix:///run/redis.sock?db=4", &u) == 0 && u.db == 4);
  const char *bad[] = {"http://h:1", "redis://", "redis://h:0", "redis://h:70000", "redis://h:12x", "redis://h/x",
                       "redis://pw@h", "unix://relative", "unix:///p?x=1", "redis://:%4@h", "redis://[::1", NULL};
  for (int i = 0; bad[i]; i++) {
    int r = url(bad[i], &u);
    CHECK(r == -1);
    if (r != -1) fprintf(stderr, "  accepted %s\n", bad[i]);
  }

  sl_rmsg m;
  /* seq, no retry, the id is the seq, no event name, one channel */
  CHECK(parse("1795553552928042,-1,-1,-1,4\nnewshello", &m) == 0);
  CHECK(m.seq == 1795553552928042ull && m.retry == -1 && !m.id.p && !m.event.p && m.nchans == 1);
  CHECK_STR(m.chans[0].p, m.chans[0].len, "news");
  CHECK_STR(m.data.p, m.data.len, "hello");
  /* a caller's id, an event name, retry, two channels, data with newlines and commas */
  CHECK(parse("7,900,5,4,1,2\nmy-idnoteabx\n,y\n", &m) == 0);
  CHECK(m.seq == 7 && m.retry == 900 && m.nchans == 2);
  CHECK_STR(m.id.p, m.id.len, "my-id");
  CHECK_STR(m.event.p, m.event.len, "note");
  CHECK_STR(m.chans[0].p, m.chans[0].len, "a");
  CHECK_STR(m.chans[1].p, m.chans[1].len, "bx");
  CHECK_STR(m.data.p, m.data.len, "\n,y\n");
  /* an empty id and empty data are kept as such */
  CHECK(parse("9,-1,0,-1,1\nc", &m) == 0 && m.id.p && m.id.len == 0 && m.data.len == 0);
  /* binary data (a NUL) passes */
  const char bin[] = "3,-1,-1,-1,1\nca\0b";
  CHECK(sl_rmsg_parse(bin, sizeof bin - 1, &m) == 0 && m.data.len == 3 && m.data.p[1] == '\0');
  const char *broken[] = {"", "1,-1,-1,-1\nx", "1,-1,-1,-1,5\nabc", "0,-1,-1,-1,1\nc", "1,-2,-1,-1,1\nc",
                          "1,-1,9,-1,1\nc", "1,-1,-1,-1,0\nc", "1,-1,-1,-1,1,\nc", "x,-1,-1,-1,1\nc",
                          "1,-1,-1,-1,1", "99999999999999999999,-1,-1,-1,1\nc", "1,,-1,-1,1\nc", NULL};
  for (int i = 0; broken[i]; i++) {
    int r = parse(broken[i], &m);
    CHECK(r == -1);
    if (r != -1) fprintf(stderr, "  accepted [%s]\n", broken[i]);
  }
  /* more channels than an event may have */
  char many[8192] = "1,-1,-1,-1";
  for (int i = 0; i < SL_RMSG_MAX_CHANS + 1; i++) strcat(many, ",1");
  strcat(many, "\n");
  for (int i = 0; i < SL_RMSG_MAX_CHANS + 1; i++) strcat(many, "c");
  CHECK(parse(many, &m) == -1);

  /* Version 2: privacy and topics before the channels. */
  CHECK(parse("v2,7,-1,2,-1,1,2,3,4,1,1\nidabcdefgxyDATA", &m) == 0);
  CHECK(m.seq == 7 && m.priv == 1 && m.ntopics == 2 && m.nchans == 2);
  CHECK_STR(m.id.p, m.id.len, "id");
  CHECK_STR(m.topics[0].p, m.topics[0].len, "abc");
  CHECK_STR(m.topics[1].p, m.topics[1].len, "defg");
  CHECK_STR(m.chans[0].p, m.chans[0].len, "x");
  CHECK_STR(m.chans[1].p, m.chans[1].len, "y");
  CHECK_STR(m.data.p, m.data.len, "DATA");
  CHECK(parse("v2,8,-1,-1,-1,0,0,1\ncD", &m) == 0 && m.ntopics == 0 && m.priv == 0 && m.nchans == 1);
  CHECK(parse("3,-1,-1,-1,1\ncD", &m) == 0 && m.ntopics == 0 && m.priv == 0); /* version 1 still parses */
  const char *const broken2[] = {"v2,8,-1,-1,-1,2,0,1\ncD", /* private neither 0 nor 1 */
                                 "v2,8,-1,-1,-1,0,3,1,1\nabcD", /* three topics, no channel */
                                 "v2,8,-1,-1,-1,0,-1,1\ncD", "v2,8,-1,-1,-1,0\ncD", "v2,8,-1,-1,-1,0,1,9,1\nac", NULL};
  for (int i = 0; broken2[i]; i++) CHECK(parse(broken2[i], &m) == -1);
  return check_done("test_rproto");
}
