/* main: the command line, start-up and shutdown. Uses server, lua_vm and log. */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <uv.h>
#include "log.h"
#include "lua_vm.h"
#include "redis.h"
#include "reload.h"
#include "conn.h"
#include "server.h"
#include "sched.h"
#include "shared.h"
#include "lua_out.h"
#include "watchdog.h"

static void usage(FILE *out) {
  fprintf(out,
          "usage: sluice [options] app.lua\n"
          "\n"
          "Serves the routes that the Lua script app.lua declares, as HTTP and Server-Sent Events.\n"
          "\n"
          "options:\n"
          "  -l, --listen ADDR:PORT  where to listen (repeatable; default 127.0.0.1:8080)\n"
          "  -w, --watch             reload when the script or a Lua module beside or below it changes\n"
          "      --redis URL         use Redis as the pub/sub engine shared by several nodes:\n"
          "                          redis://[[user]:password@]HOST[:PORT][/DB] or unix:///path[?db=N]\n"
          "      --log-level LEVEL   error, warn, info or debug (default info)\n"
          "      --log-format FMT    text (default) or json (one object per line)\n"
          "      --grace SECONDS     how long the drain at shutdown may take (default 5; 0 = none)\n"
          "      --workers N         threads that write to the clients: 1 to 256, or auto (one per core;\n"
          "                          default 1); scripts still run on one thread\n"
          "  -h, --help              show this help\n"
          "  -V, --version           show the version\n"
          "\n"
          "SIGHUP reloads the script; SIGINT and SIGTERM drain the connections and exit\n"
          "(a second one closes them at once). Exit status: 0 after a signal, 1 when it\n"
          "cannot start (bad option, script that fails to load, address in use), 70 when\n"
          "the watchdog cannot stop a script's loop (JIT-compiled code) or C work.\n");
}

/* The first line of a message: a start-up error is one line on stderr. */
static void die_first_line(const char *what, const char *msg) {
  const char *nl = strchr(msg, '\n');
  int n = nl ? (int)(nl - msg) : (int)strlen(msg);
  fprintf(stderr, "sluice: %s%.*s\n", what, n, msg);
  if (nl && sl_log_enabled(SL_LOG_DEBUG)) fprintf(stderr, "%s\n", nl + 1);
}

/* Shutting down, above the connections: every Lua state's timers and tasks,
 * the script watcher, the engine. */
static void drain_done(sl_server *srv) { sl_out_stop(srv); }

static void stop_all(sl_server *srv) {
  sl_vm_stop_all(srv);
  sl_reload_stop(srv);
  sl_redis_stop(srv->redis);
}

int main(int argc, char **argv) {
  static const struct option longopts[] = {{"listen", required_argument, NULL, 'l'},
                                           {"log-level", required_argument, NULL, 'L'},
                                           {"log-format", required_argument, NULL, 'F'},
                                           {"watch", no_argument, NULL, 'w'},
                                           {"redis", required_argument, NULL, 'R'},
                                           {"grace", required_argument, NULL, 'G'},
                                           {"workers", required_argument, NULL, 'W'},
                                           {"help", no_argument, NULL, 'h'},
                                           {"version", no_argument, NULL, 'V'},
                                           {NULL, 0, NULL, 0}};
  const char *listen[SL_MAX_LISTENERS];
  int nlisten = 0, ch, watch = 0;
  const char *redis = NULL;
  double grace = SL_GRACE;
  long workers = 1;
  while ((ch = getopt_long(argc, argv, "l:whV", longopts, NULL)) != -1) {
    switch (ch) {
      case 'l':
        if (nlisten == SL_MAX_LISTENERS) {
          fprintf(stderr, "sluice: too many --listen addresses (at most %d)\n", SL_MAX_LISTENERS);
          return 1;
        }
        listen[nlisten++] = optarg;
        break;
      case 'L': {
        int level = sl_log_parse_level(optarg);
        if (level < 0) {
          fprintf(stderr, "sluice: bad --log-level '%s' (want error, warn, info or debug)\n", optarg);
          return 1;
        }
        sl_log_set_level(level);
        break;
      }
      case 'F':
        if (sl_log_set_format(optarg)) {
          fprintf(stderr, "sluice: bad --log-format '%s' (want text or json)\n", optarg);
          return 1;
        }
        break;
      case 'w': watch = 1; break;
      case 'R': redis = optarg; break;
      case 'G': {
        char *end;
        grace = strtod(optarg, &end);
        if (end == optarg || *end || !(grace >= 0)) {
          fprintf(stderr, "sluice: bad --grace '%s' (want seconds, 0 or more)\n", optarg);
          return 1;
        }
        break;
      }
      case 'W': {
        char *end;
        workers = strcmp(optarg, "auto") == 0 ? (long)uv_available_parallelism() : strtol(optarg, &end, 10);
        if (strcmp(optarg, "auto") != 0 && (end == optarg || *end || workers < 1 || workers > 256)) {
          fprintf(stderr, "sluice: bad --workers '%s' (want 1 to 256, or auto)\n", optarg);
          return 1;
        }
        if (workers > 256) workers = 256;
        break;
      }
      case 'h': usage(stdout); return 0;
      case 'V': printf("sluice %s\n", SLUICE_VERSION); return 0;
      default: usage(stderr); return 1;
    }
  }
  if (optind != argc - 1) {
    fprintf(stderr, "sluice: %s\n", optind >= argc ? "no script given" : "give exactly one script");
    usage(stderr);
    return 1;
  }
  const char *script = argv[optind];
  struct stat st;
  if (stat(script, &st) != 0 || !S_ISREG(st.st_mode)) {
    fprintf(stderr, "sluice: cannot open script '%s': %s\n", script,
            stat(script, &st) != 0 ? strerror(errno) : "not a regular file");
    return 1;
  }
  if (nlisten == 0) listen[nlisten++] = "127.0.0.1:8080";

  signal(SIGPIPE, SIG_IGN);
  if (workers > 1) {
    /* One malloc arena for every thread (set before any thread starts): an
     * I/O thread's own arena would keep the holes its requests leave (parsed
     * there, trimmed on the loop thread) apart from what could fill them,
     * about 180 bytes a connection. The threads allocate little once their
     * connections are up, so the shared lock costs next to nothing. */
    mallopt(M_ARENA_MAX, 1);
  }
  uv_loop_t loop;
  uv_loop_init(&loop);
  static sl_server srv;
  if (sl_server_init(&srv, &loop)) {
    fprintf(stderr, "sluice: out of memory\n");
    return 1;
  }
  sl_vm_bind(&srv);
  srv.grace = grace;
  if (sl_watchdog_start(srv.cfg.watchdog)) {
    fprintf(stderr, "sluice: cannot start the watchdog thread\n");
    return 1;
  }
  srv.hooks.stop = stop_all;
  srv.hooks.drain_done = drain_done;
  if (sl_conn_homes(&srv, (int)workers)) {
    fprintf(stderr, "sluice: cannot start %ld I/O threads\n", workers - 1);
    return 1;
  }

  char err[4096];
  sl_vm *vm = sl_vm_open(&srv, script, NULL, err, sizeof err);
  int status = 0;
  if (!vm) {
    die_first_line("", err);
    status = 1;
    goto out;
  }
  sl_vm_activate(vm);
  if (!redis && srv.cfg.redis[0]) redis = srv.cfg.redis;
  if (redis) {
    /* Redis need not be up: the engine connects (and reconnects) in the background. */
    if (sl_redis_start(&srv, redis, err, sizeof err)) {
      fprintf(stderr, "sluice: %s\n", err);
      status = 1;
      goto out;
    }
    sl_vm_activate(vm); /* the hub now leaves history to Redis */
  }
  for (int i = 0; i < nlisten; i++) {
    if (sl_server_listen(&srv, listen[i], err, sizeof err)) {
      fprintf(stderr, "sluice: %s\n", err);
      status = 1;
      goto out;
    }
    sl_info("listening on http://%s", listen[i]);
  }
  sl_server_signals(&srv);
  if (sl_reload_init(&srv, script, watch)) {
    fprintf(stderr, "sluice: cannot watch the folder of %s\n", script);
    status = 1;
    goto out;
  }
  sl_info("sluice %s serving %s", SLUICE_VERSION, script);
  if (workers > 1) sl_info("%ld workers: %ld I/O threads serve the clients, scripts run on the loop thread", workers, workers - 1);
  uv_run(&loop, UV_RUN_DEFAULT);
out:
  sl_server_stop(&srv);
  uv_run(&loop, UV_RUN_DEFAULT);
  sl_vm_close(srv.vm);
  srv.vm = NULL;
  while (srv.retired) {
    sl_vm *old = srv.retired;
    srv.retired = old->next_retired;
    sl_vm_close(old);
  }
  sl_shared_free(&srv);
  sl_sched_close(&srv);
  /* Lua's close may have closed handles of its own. */
  uv_run(&loop, UV_RUN_DEFAULT);
  sl_watchdog_stop();
  sl_conn_stop_homes(&srv); /* after the drain, nothing is left on the I/O threads */
  sl_server_free(&srv);
  if (uv_loop_close(&loop)) sl_warn("event loop closed with handles still open");
  return status;
}
