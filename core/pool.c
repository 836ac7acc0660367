/* pool: the I/O threads of --workers N. See pool.h. */
#include "pool.h"
#include <signal.h>
#include <pthread.h>
#include <stdlib.h>
#include <uv.h>

typedef struct worker {
  sl_pool *pool;
  uv_thread_t thread;
  uv_sem_t go;        /* posted once per slice handed to this thread */
  size_t lo, hi;
} worker;

struct sl_pool {
  int n;
  int quit;
  sl_pool_fn fn;
  void *ctx;
  uv_sem_t done;      /* posted once per slice a thread finished */
  worker w[];
};

static void run(void *arg) {
  worker *w = arg;
  sl_pool *p = w->pool;
  for (;;) {
    uv_sem_wait(&w->go);
    if (p->quit) return;
    p->fn(p->ctx, w->lo, w->hi);
    uv_sem_post(&p->done);
  }
}

sl_pool *sl_pool_new(int nthreads) {
  if (nthreads < 0) nthreads = 0;
  sl_pool *p = calloc(1, sizeof *p + (size_t)nthreads * sizeof(worker));
  if (!p || uv_sem_init(&p->done, 0)) {
    free(p);
    return NULL;
  }
  /* The threads must not take the signals the loop and the watchdog handle. */
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &old);
  for (; p->n < nthreads; p->n++) {
    worker *w = &p->w[p->n];
    w->pool = p;
    if (uv_sem_init(&w->go, 0)) break;
    if (uv_thread_create(&w->thread, run, w)) {
      uv_sem_destroy(&w->go);
      break;
    }
  }
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (p->n < nthreads) {
    sl_pool_free(p);
    return NULL;
  }
  return p;
}

int sl_pool_threads(const sl_pool *p) { return p ? p->n : 0; }

void sl_pool_for(sl_pool *p, sl_pool_fn fn, void *ctx, size_t n, size_t min) {
  if (min < 1) min = 1;
  size_t parts = p ? (size_t)p->n + 1 : 1;
  if (parts > n / min) parts = n / min;
  if (parts <= 1) {
    if (n) fn(ctx, 0, n);
    return;
  }
  p->fn = fn;
  p->ctx = ctx;
  size_t per = n / parts, extra = n % parts;
  size_t lo = per + (extra ? 1 : 0); /* the caller's slice is [0, lo) */
  for (size_t i = 1; i < parts; i++) {
    worker *w = &p->w[i - 1];
    w->lo = lo;
    w->hi = lo + per + (i < extra ? 1 : 0);
    lo = w->hi;
    uv_sem_post(&w->go);
  }
  fn(ctx, 0, per + (extra ? 1 : 0));
  for (size_t i = 1; i < parts; i++) uv_sem_wait(&p->done);
}

void sl_pool_free(sl_pool *p) {
  if (!p) return;
  p->quit = 1;
  for (int i = 0; i < p->n; i++) {
    uv_sem_post(&p->w[i].go);
    uv_thread_join(&p->w[i].thread);
    uv_sem_destroy(&p->w[i].go);
  }
  uv_sem_destroy(&p->done);
  free(p);
}
