/* reload: SIGHUP and --watch (libuv fs events on the script's folder and the
 * folders below it, debounced) load the script into a new Lua state; the new
 * state takes new requests, the old one serves its connections until they end.
 * Uses server and lua_vm. */
#ifndef SL_RELOAD_H
#define SL_RELOAD_H

struct sl_server;

/* Starts the SIGHUP handler, and the file watchers when watch is set. 0 or a libuv error. */
int sl_reload_init(struct sl_server *srv, const char *script, int watch);
/* Loads the script again now. 0, or -1 when it failed (the previous script keeps serving). */
int sl_reload_now(struct sl_server *srv);
/* Closes the handles (shutdown). */
void sl_reload_stop(struct sl_server *srv);

#endif
