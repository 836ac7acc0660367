/* io: the homes of connections and their mailboxes. See io.h. */
#include "io.h"
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include "buf.h"
#include "log.h"

#define SL_IO_STOP UINT32_MAX

typedef struct home_x {
  sl_home h;
  sl_mbox spare;            /* the inbox being handled: swapped with inbox under the lock */
  uv_loop_t own;            /* a thread's loop */
  uv_sem_t ready;
} home_x;

/* A batch array is kept for the next batch only while it is small: after a
 * burst (thousands of connections at once) the arrays would otherwise stay at
 * its size. Under load they grow again each turn, a few reallocations per
 * thousands of messages. */
#define SL_MBOX_KEEP 256

static void mbox_trim(sl_mbox *b) {
  if (b->cap <= SL_MBOX_KEEP) return;
  free(b->v);
  b->v = NULL;
  b->cap = 0;
}

/* Room for need messages in b, doubling from 64. 0 or -ENOMEM (b unchanged). */
static int reserve(sl_mbox *b, size_t need) {
  if (need <= b->cap) return 0;
  size_t cap = b->cap ? b->cap : 64;
  while (cap < need) cap *= 2;
  sl_msg *v = realloc(b->v, cap * sizeof *v);
  if (!v) return -ENOMEM;
  b->v = v;
  b->cap = cap;
  return 0;
}

static int push(sl_mbox *b, const sl_msg *m) {
  if (reserve(b, b->n + 1)) return -ENOMEM;
  b->v[b->n++] = *m;
  return 0;
}

int sl_io_post(sl_home *from, int to, sl_msg m) { return push(&from->out[to], &m); }

void sl_io_flush(sl_home *from) {
  for (int i = 0; i < from->nhomes; i++) {
    sl_mbox *o = &from->out[i];
    if (!o->n || i == from->index) continue;
    sl_home *to = from->all[i];
    uv_mutex_lock(&to->lock);
    if (!to->inbox.n) {
      /* The common case: swap the arrays, no copy. */
      sl_mbox t = to->inbox;
      to->inbox = *o;
      *o = t;
    } else {
      if (reserve(&to->inbox, to->inbox.n + o->n)) {
        uv_mutex_unlock(&to->lock);
        sl_error("io: out of memory handing messages to thread %d: retried next turn", i);
        continue;
      }
      memcpy(to->inbox.v + to->inbox.n, o->v, o->n * sizeof *o->v);
      to->inbox.n += o->n;
    }
    uv_mutex_unlock(&to->lock);
    o->n = 0;
    mbox_trim(o);
    uv_async_send(&to->wake);
  }
}

static void on_wake(uv_async_t *a) {
  home_x *x = a->data;
  sl_home *h = &x->h;
  uv_mutex_lock(&h->lock);
  sl_mbox t = h->inbox;
  h->inbox = x->spare;
  x->spare = t;
  uv_mutex_unlock(&h->lock);
  for (size_t i = 0; i < x->spare.n; i++) {
    sl_msg *m = &x->spare.v[i];
    if (m->op == SL_IO_STOP) {
      h->stopping = 1;
      continue;
    }
    h->handle(h, m);
  }
  x->spare.n = 0;
  mbox_trim(&x->spare);
  if (h->stopping && h->index) {
    /* Posted last by home 0: nothing of this home's is left but its own handles. */
    sl_io_end_turn(h);
    uv_close((uv_handle_t *)&h->wake, NULL);
    uv_close((uv_handle_t *)&h->end_turn, NULL);
  }
}

void sl_io_end_turn(sl_home *h) {
  /* What the turn gave other homes goes first (a publish read here, a batch
   * for a thread), so they work while this one writes; then what the writes
   * gave rise to (a generator resumed, a drained connection). */
  sl_io_flush(h);
  h->turn(h);
  sl_io_flush(h);
}

static void on_end_turn(uv_prepare_t *p) { sl_io_end_turn(p->data); }

static void run(void *arg) {
  home_x *x = arg;
  sl_home *h = &x->h;
  int r = uv_loop_init(&x->own);
  if (!r) {
    h->loop = &x->own;
    h->loop->data = h->srv;
    uv_async_init(h->loop, &h->wake, on_wake);
    h->wake.data = x;
    uv_prepare_init(h->loop, &h->end_turn);
    h->end_turn.data = h;
    uv_prepare_start(&h->end_turn, on_end_turn);
    uv_unref((uv_handle_t *)&h->end_turn);
    h->started = 1;
  }
  uv_sem_post(&x->ready);
  if (r) return;
  uv_run(h->loop, UV_RUN_DEFAULT);
  uv_loop_close(h->loop);
}

static void free_home(sl_home *h) {
  home_x *x = (home_x *)h;
  for (int i = 0; h->out && i < h->nhomes; i++) free(h->out[i].v);
  free(h->out);
  free(h->inbox.v);
  free(x->spare.v);
  free(h->dirty);
  uv_mutex_destroy(&h->lock);
  free(x);
}

int sl_io_start(struct sl_server *srv, uv_loop_t *loop, int n, sl_io_handler handle, sl_io_turn turn, sl_home ***out) {
  if (n < 1) n = 1;
  sl_home **all = calloc((size_t)n, sizeof *all);
  if (!all) return -ENOMEM;
  int made = 0, r = 0;
  for (; made < n; made++) {
    home_x *x = calloc(1, sizeof *x);
    if (!x) break;
    sl_home *h = &x->h;
    h->srv = srv;
    h->index = made;
    h->nhomes = n;
    h->all = all;
    h->handle = handle;
    h->turn = turn;
    h->out = calloc((size_t)n, sizeof *h->out);
    uv_mutex_init(&h->lock);
    all[made] = h;
    if (!h->out) break;
  }
  if (made < n) r = -ENOMEM;
  /* Home 0 is the caller's loop; it is woken only when there are threads. */
  if (!r) {
    sl_home *h0 = all[0];
    h0->loop = loop;
    h0->started = 1;
    if (n > 1) {
      uv_async_init(loop, &h0->wake, on_wake);
      h0->wake.data = h0;
    }
  }
  if (n > 1) sl_buf_shared = 1;
  /* The threads must not take the signals the loop and the watchdog handle. */
  sigset_t sigs, old;
  sigfillset(&sigs);
  pthread_sigmask(SIG_BLOCK, &sigs, &old);
  int threads = 1;
  for (; !r && threads < n; threads++) {
    home_x *x = (home_x *)all[threads];
    if (uv_sem_init(&x->ready, 0)) {
      r = -ENOMEM;
      break;
    }
    if (uv_thread_create(&x->h.thread, run, x)) {
      uv_sem_destroy(&x->ready);
      r = -EAGAIN;
      break;
    }
    uv_sem_wait(&x->ready);
    uv_sem_destroy(&x->ready);
    if (!x->h.started) {
      uv_thread_join(&x->h.thread);
      r = -ENOMEM;
      break;
    }
  }
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (r) {
    for (int i = 1; i < threads && i < made; i++) {
      sl_msg stop = {.op = SL_IO_STOP};
      sl_io_post(all[0], i, stop);
    }
    if (made == n) {
      sl_io_flush(all[0]);
      for (int i = 1; i < threads; i++) uv_thread_join(&all[i]->thread);
    }
    for (int i = 0; i < made; i++) free_home(all[i]);
    free(all);
    return r;
  }
  *out = all;
  return 0;
}

void sl_io_close(sl_home **all) {
  if (all && all[0]->nhomes > 1 && !uv_is_closing((uv_handle_t *)&all[0]->wake))
    uv_close((uv_handle_t *)&all[0]->wake, NULL);
}

void sl_io_stop(sl_home **all) {
  if (!all) return;
  sl_home *h0 = all[0];
  int n = h0->nhomes;
  for (int i = 1; i < n; i++) {
    sl_msg stop = {.op = SL_IO_STOP};
    while (sl_io_post(h0, i, stop)) uv_sleep(1); /* out of memory: the stop must get there */
  }
  sl_io_flush(h0);
  for (int i = 1; i < n; i++) uv_thread_join(&all[i]->thread);
  for (int i = 0; i < n; i++) free_home(all[i]);
  free(all);
}
