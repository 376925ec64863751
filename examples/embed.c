/*
 * embed.c: a C program that embeds luachat and streams one completion.
 *
 *   cc examples/embed.c $(pkg-config --cflags --libs luachat) -o embed
 *   OPENAI_BASE_URL=http://127.0.0.1:8080/v1 ./embed "Why is the sky blue?"
 *   ./embed --file script.lua        (runs a Lua file instead, with `luachat` set)
 *
 * Owns: only the example. It shows the C API of include/luachat.h: a
 * lua_State with the standard libraries, luachat_openlibs, luaopen_luachat
 * through luaL_requiref, and luachat_dostring / luachat_dofile, which
 * report errors (message and traceback) on stderr. LUACHAT_MODEL picks the
 * model. Never: calls the Lua API outside a protected call.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

#include <luachat.h>

/* The chunk: `prompt` is a global set by setup(); the text goes to stdout as it arrives. */
static const char chat_chunk[] =
	"local luachat = require 'luachat'\n"
	"local client = luachat.client()  -- OPENAI_BASE_URL, OPENAI_API_KEY\n"
	"local final, err = client:stream({\n"
	"  model = os.getenv('LUACHAT_MODEL') or 'gpt-4o-mini',\n"
	"  messages = { { role = 'user', content = prompt } },\n"
	"}, function(chunk)\n"
	"  io.write(luachat.delta_text(chunk))\n"
	"  io.stdout:flush()\n"
	"end)\n"
	"print()\n"
	"if not final then error(err, 0) end  -- nothing arrived\n"
	"if err then io.stderr:write(tostring(err), '\\n') end  -- cut short: final holds what came\n";

/* Under lua_pcall: the libraries, luachat, and the `prompt` global (all pushes in here). */
static int setup(lua_State *L)
{
	const char *prompt = lua_touserdata(L, 1);
	luaL_openlibs(L);
	luachat_openlibs(L);
	luaL_requiref(L, "luachat", luaopen_luachat, 1); /* also the global `luachat` */
	lua_pop(L, 1);
	lua_pushstring(L, prompt);
	lua_setglobal(L, "prompt");
	return 0;
}

int main(int argc, char **argv)
{
	const char *prompt = "Say hello in five words.";
	const char *file = NULL;
	lua_State *L;
	int status;
	if (argc > 2 && strcmp(argv[1], "--file") == 0)
		file = argv[2];
	else if (argc > 1)
		prompt = argv[1];
	L = luaL_newstate();
	if (L == NULL) {
		fputs("embed: cannot create a Lua state\n", stderr);
		return EXIT_FAILURE;
	}
	lua_pushcfunction(L, setup);
	lua_pushlightuserdata(L, (void *)prompt);
	if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
		fprintf(stderr, "embed: %s\n", lua_tostring(L, -1));
		lua_close(L);
		return EXIT_FAILURE;
	}
	if (file)
		status = luachat_dofile(L, file);
	else
		status = luachat_dostring(L, chat_chunk, "=embed");
	lua_close(L); /* closes any transfer still open */
	return status == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
