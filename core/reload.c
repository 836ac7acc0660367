/* reload: see reload.h.
 *
 * Linux has no recursive inotify watch: every folder under the script's folder
 * gets a watcher of its own, and the set is made again after each reload so
 * new folders are seen. Events are debounced: an editor's save (write, rename,
 * chmod) triggers one reload 100 ms after the last event. */
#include "reload.h"
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include "log.h"
#include "lua_vm.h"
#include "server.h"

#define SL_MAX_WATCHED 256
#define SL_DEBOUNCE_MS 100

typedef struct sl_reloader {
  sl_server *srv;
  char *script;
  char *dir;
  int watch;
  uv_signal_t sighup;
  uv_timer_t debounce;
  uv_fs_event_t *watchers[SL_MAX_WATCHED];
  int nwatchers;
  int stopped;
  int closing; /* handles whose close callback has yet to run */
} sl_reloader;

static void on_debounced(uv_timer_t *t) {
  sl_reloader *r = t->data;
  sl_reload_now(r->srv);
}

static int ends_with(const char *s, const char *suffix) {
  size_t a = strlen(s), b = strlen(suffix);
  return a >= b && strcmp(s + a - b, suffix) == 0;
}

static void on_fs_event(uv_fs_event_t *h, const char *name, int events, int status) {
  sl_reloader *r = h->data;
  if (status < 0 || r->stopped) return;
  /* Lua files, and names without one (some tools report none): anything else is ignored. */
  if (name && !ends_with(name, ".lua")) return;
  uv_timer_start(&r->debounce, on_debounced, SL_DEBOUNCE_MS, 0);
}

static void on_watcher_closed(uv_handle_t *h) { free(h); }

static void unwatch(sl_reloader *r) {
  for (int i = 0; i < r->nwatchers; i++) uv_close((uv_handle_t *)r->watchers[i], on_watcher_closed);
  r->nwatchers = 0;
}

static void watch_dir(sl_reloader *r, const char *dir, int depth) {
  if (r->nwatchers == SL_MAX_WATCHED || depth > 8) return;
  uv_fs_event_t *h = malloc(sizeof *h);
  if (!h) return;
  uv_fs_event_init(r->srv->loop, h);
  h->data = r;
  if (uv_fs_event_start(h, on_fs_event, dir, 0)) {
    uv_close((uv_handle_t *)h, on_watcher_closed);
    return;
  }
  r->watchers[r->nwatchers++] = h;
  DIR *d = opendir(dir);
  if (!d) return;
  struct dirent *e;
  while ((e = readdir(d))) {
    if (e->d_name[0] == '.' || strcmp(e->d_name, "node_modules") == 0) continue;
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
    struct stat st;
    if (lstat(path, &st) == 0 && S_ISDIR(st.st_mode)) watch_dir(r, path, depth + 1);
  }
  closedir(d);
}

static void rewatch(sl_reloader *r) {
  unwatch(r);
  watch_dir(r, r->dir, 0);
}

static void on_sighup(uv_signal_t *s, int signum) {
  sl_info("received SIGHUP, reloading");
  sl_reload_now(((sl_reloader *)s->data)->srv);
}

int sl_reload_now(sl_server *srv) {
  sl_reloader *r = srv->reloader;
  if (!r || r->stopped) return -1;
  uint64_t t0 = uv_hrtime();
  char err[4096];
  /* The old state hands over what it wants kept (sluice.on_reload) before the
   * new script runs, so sluice.previous_state() works while it loads. */
  sl_buf *handover = srv->vm ? sl_vm_handover(srv->vm) : NULL;
  sl_vm *vm = sl_vm_open(srv, r->script, handover, err, sizeof err);
  if (r->watch) rewatch(r);
  if (!vm) {
    sl_error("reload of %s failed; the previous script keeps serving: %s", r->script, err);
    srv->metrics.reloads_failed++;
    return -1;
  }
  sl_vm_activate(vm);
  srv->reloads++;
  srv->metrics.reloads_ok++;
  sl_info("reloaded %s in %.1f ms", r->script, (double)(uv_hrtime() - t0) / 1e6);
  return 0;
}

int sl_reload_init(sl_server *srv, const char *script, int watch) {
  sl_reloader *r = calloc(1, sizeof *r);
  if (!r) return UV_ENOMEM;
  r->srv = srv;
  r->script = strdup(script);
  r->dir = strdup(script);
  char *slash = strrchr(r->dir, '/');
  if (slash) *slash = '\0';
  else strcpy(r->dir, ".");
  r->watch = watch;
  srv->reloader = r;
  uv_signal_init(srv->loop, &r->sighup);
  r->sighup.data = r;
  uv_signal_start(&r->sighup, on_sighup, SIGHUP);
  uv_timer_init(srv->loop, &r->debounce);
  r->debounce.data = r;
  if (watch) {
    rewatch(r);
    if (r->nwatchers == 0) return UV_ENOENT;
    sl_info("watching %s for changes (%d folder%s)", r->dir, r->nwatchers, r->nwatchers == 1 ? "" : "s");
  }
  return 0;
}

static void on_reloader_closed(uv_handle_t *h) {
  sl_reloader *r = h->data;
  if (--r->closing) return;
  free(r->script);
  free(r->dir);
  free(r);
}

void sl_reload_stop(sl_server *srv) {
  sl_reloader *r = srv->reloader;
  if (!r || r->stopped) return;
  r->stopped = 1;
  srv->reloader = NULL;
  unwatch(r);
  r->closing = 2;
  uv_close((uv_handle_t *)&r->sighup, on_reloader_closed);
  uv_close((uv_handle_t *)&r->debounce, on_reloader_closed);
}
