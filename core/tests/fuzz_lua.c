/* libFuzzer targets for the parsers in Lua that read what clients send: the
 * query string and form decoder with the path splitter (fuzz_form), the
 * cookie parser (fuzz_cookies) and the JSON decoder as sluice.json.decode
 * runs it (lua-cjson's safe decoder: fuzz_json). One source, built once per
 * target: SL_FUZZ_LUA names a Lua file (core/tests/fuzz_lua/) that returns the
 * function to call with each input, which must never raise. Lua code gives libFuzzer no coverage of its
 * own, so a line hook counts (previous line, line) pairs into libFuzzer's
 * extra counters: inputs that take new paths through the Lua code are kept.
 * The run's -timeout is each input's budget (parsers are linear: SECURITY.md). */
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define NCOUNTERS 8192
__attribute__((section("__libfuzzer_extra_counters"))) static uint8_t counters[NCOUNTERS];

static lua_State *L;
static int fn_ref;
static uint32_t prev;

static void on_line(lua_State *l, lua_Debug *ar) {
  (void)l;
  uint32_t cur = (uint32_t)ar->currentline * 2654435761u;
  counters[(cur ^ (prev >> 1)) % NCOUNTERS]++;
  prev = cur;
}

static void must(int failed) {
  if (!failed) return;
  fprintf(stderr, "fuzz_lua: %s\n", lua_tostring(L, -1));
  abort();
}

/* LuaJIT keeps its objects where LeakSanitizer does not look: what C modules
 * hang off them (cjson's buffers) is freed by closing the state at exit. */
static void close_state(void) { lua_close(L); }

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  L = luaL_newstate();
  atexit(close_state);
  luaL_openlibs(L);
  /* Interpreted, as the gateway runs scripts: every line is seen by the hook. */
  must(luaL_dostring(L, "package.path = '" SL_LUA_DIR "/?.lua;' .. package.path; if jit then jit.off() end"));
  must(luaL_loadfile(L, SL_FUZZ_LUA) || lua_pcall(L, 0, 1, 0));
  fn_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_sethook(L, on_line, LUA_MASKLINE, 0);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *in, size_t size) {
  prev = 0;
  lua_rawgeti(L, LUA_REGISTRYINDEX, fn_ref);
  lua_pushlstring(L, (const char *)in, size);
  must(lua_pcall(L, 1, 0, 0));
  lua_settop(L, 0);
  lua_gc(L, LUA_GCSTEP, 0);
  return 0;
}
