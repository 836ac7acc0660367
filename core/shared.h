/* shared: sluice.shared's dictionaries. Each is a hash map of string keys to
 * Lua data (lcopy bytes) kept in C for the server's life, so every Lua state
 * (old and new loads of the script) sees the same entries at once. A
 * dictionary holds at most its size in bytes (keys, values and a fixed
 * overhead per entry); past it, the least recently used entries are evicted.
 * Entries may expire (loop time, milliseconds). Scripts run on the loop
 * thread only, so nothing here is locked. Uses lcopy and server. */
#ifndef SL_SHARED_H
#define SL_SHARED_H
#include <lua.h>

struct sl_server;
struct sl_vm;

#define SL_SHARED_DEFAULT_SIZE (1u << 20) /* bytes of a dictionary no configure sized */
#define SL_SHARED_MAX_KEY 65535           /* bytes of a key at most */
#define SL_SHARED_ENTRY_OVERHEAD 64       /* bytes counted for each entry besides its key and value */

/* Adds core.shared(name, size) -> the dictionary's handle. */
void sl_shared_open(lua_State *L, struct sl_vm *vm);
/* Frees every dictionary (at exit). */
void sl_shared_free(struct sl_server *srv);

#endif
