/* pool: the I/O threads of --workers N. A parallel "for" over an array, the way
 * Redis 6 runs its io-threads: the loop thread hands each of the N-1 threads
 * one slice of the work (one wake-up per thread, however many items), does the
 * first slice itself and waits until every slice is done. Nothing else runs
 * meanwhile, so the items need no locks; the hand-over and the wait (POSIX
 * semaphores) order every write made in a slice before the loop thread reads
 * it. Uses nothing but libuv's threads. */
#ifndef SL_POOL_H
#define SL_POOL_H
#include <stddef.h>

typedef struct sl_pool sl_pool;

/* fn(ctx, lo, hi) works on the items [lo, hi). */
typedef void (*sl_pool_fn)(void *ctx, size_t lo, size_t hi);

/* A pool of nthreads threads besides the caller's (0: no threads; every call
 * runs on the caller). NULL if a thread cannot be started. The threads block
 * every signal, so signals keep going to the loop thread. */
sl_pool *sl_pool_new(int nthreads);
/* The threads besides the caller's. */
int sl_pool_threads(const sl_pool *p);
/* Runs fn over [0, n) split into contiguous slices of at least min items
 * (min >= 1), the caller taking the first; returns when every slice is done. */
void sl_pool_for(sl_pool *p, sl_pool_fn fn, void *ctx, size_t n, size_t min);
/* Stops and joins the threads. */
void sl_pool_free(sl_pool *p);

#endif
