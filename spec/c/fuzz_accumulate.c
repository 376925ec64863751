/*
 * fuzz_accumulate.c: libFuzzer target for stream accumulation.
 *
 * Bytes in -> the SSE parser -> each event's data to spec/fuzz/accumulate.lua,
 * which decodes it, feeds luachat's accumulator and raises "invariant: ..."
 * when a property fails (content is the concatenation of the deltas, error
 * chunks are merged and reported with a one-line message, the final
 * always encodes and round-trips; the text path agrees with the full path). An
 * invariant failure aborts (a crash for libFuzzer); other Lua errors are
 * bugs too and abort as well. Built and run by scripts/fuzz.sh.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

#include "luachat.h"
#include "sse.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static lua_State *L;
static int check_ref;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	L = luaL_newstate();
	luaL_openlibs(L);
	luachat_openlibs(L);
	if (luaL_dostring(L, "package.path = 'lua/?.lua;lua/?/init.lua;' .. package.path "
	                     "return dofile('spec/fuzz/accumulate.lua')") != LUA_OK) {
		fprintf(stderr, "fuzz_accumulate: %s (run from the repository root)\n", lua_tostring(L, -1));
		abort();
	}
	check_ref = luaL_ref(L, LUA_REGISTRYINDEX);
	return 0;
}

/* sse_event_fn: append the data to the Lua list on top of the stack. */
static int collect(void *ud, const struct sse_event *ev)
{
	(void)ud;
	lua_pushlstring(L, ev->data, ev->data_len);
	lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct sse_parser p;
	sse_init(&p, 1 << 20);
	lua_rawgeti(L, LUA_REGISTRYINDEX, check_ref);
	lua_newtable(L);
	if (sse_feed(&p, (const char *)data, size, collect, NULL) == SSE_OK)
		sse_finish(&p, collect, NULL);
	sse_free(&p);
	if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
		fprintf(stderr, "fuzz_accumulate: %s\n", lua_tostring(L, -1));
		abort();
	}
	lua_gc(L, LUA_GCSTEP, 0);
	return 0;
}
