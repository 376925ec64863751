/*
 * luachat.h: the public C API of the luachat engine.
 *
 * Link with `pkg-config --cflags --libs luachat` (libluachat.so or .a).
 * The engine is a Lua 5.4 library: open it into any lua_State and use the
 * Lua API (`require "luachat"`); docs/EMBEDDING.md has the details.
 *
 *   lua_State *L = luaL_newstate();
 *   luaL_openlibs(L);
 *   luachat_openlibs(L);
 *   status = luachat_dostring(L, "local luachat = require 'luachat' ...", "=app");
 *
 * The Lua files are not embedded in the library: they are found on
 * package.path (LUA_PATH, or the install tree, see luachat_openlibs).
 * Every function here takes the lua_State's main thread or a coroutine
 * that is not running luachat code; none is safe to call from inside a
 * running luachat.step/poll.
 */
#ifndef LUACHAT_H
#define LUACHAT_H

#include <lua.h>

#define LUACHAT_VERSION "0.1.0"

#ifdef __cplusplus
extern "C" {
#endif

/* The C half of the engine: `require "luachat.core"`. A lua_CFunction. */
int luaopen_luachat_core(lua_State *L);

/*
 * The whole library, the table `require "luachat"` returns; a
 * lua_CFunction: luaL_requiref(L, "luachat", luaopen_luachat, 1) sets the
 * global `luachat`. Does what luachat_openlibs does, then loads
 * luachat/init.lua from package.path and records it in package.loaded.
 * Raises "module 'luachat' not found: ..." when the Lua files are not
 * reachable.
 */
int luaopen_luachat(lua_State *L);

/*
 * Make `require "luachat"` work in L (after luaL_openlibs): puts
 * luaopen_luachat_core in package.preload["luachat.core"], and, when
 * package.path does not reach luachat/init.lua, appends the first of:
 * DIR/lua beside the program (a build tree), PREFIX/share/lua/5.4 found
 * beside this library (or beside the program when libluachat.a is linked
 * in), then the install directory compiled in (`make PREFIX=...`). Not run under a Lua error handler of yours: on an
 * error (out of memory) it prints a line on stderr and `require` will then
 * fail with its own message.
 */
void luachat_openlibs(lua_State *L);

/* Flags of luachat_openlibsx. */
#define LUACHAT_LUA_FIRST 1 /* put the Lua files found beside the program first on package.path */

/*
 * luachat_openlibs with flags (0: the same). LUACHAT_LUA_FIRST: always put
 * the first directory found (DIR/lua beside the program, as in a build
 * tree; PREFIX/share/lua/X.Y beside it or this library; the install
 * directory) at the front of package.path, so a program's own Lua files
 * win over another luachat reachable through LUA_PATH. The luachat host
 * opens the library this way.
 */
void luachat_openlibsx(lua_State *L, int flags);

/*
 * Run the Lua file at path (NULL: standard input) as the luachat host
 * does: on a syntax or runtime error, print "luachat: message" plus a
 * traceback (runtime errors) on stderr. Returns 0 on success, 1 on error.
 * The stack is left as it was.
 */
int luachat_dofile(lua_State *L, const char *path);

/* The same for a string chunk; name is its chunkname ("=app"), NULL for a default. */
int luachat_dostring(lua_State *L, const char *code, const char *name);

/*
 * lua_pcall of the function below nargs arguments, as luachat_dofile runs
 * a chunk: under the host's message handler (a traceback for a string
 * error; an error object with __tostring, such as luachat.Error, described
 * by it), then luachat_report. Returns the lua_pcall status; on success
 * the nres results are on the stack, on an error nothing is.
 */
int luachat_pcall(lua_State *L, int nargs, int nres);

/*
 * When status is not LUA_OK: print the error value at the top of the stack
 * on stderr as "luachat: message" (a message that already starts with
 * "luachat: " is printed as it is; "luachat: interrupted" when a host's
 * SIGINT flag is set, see src/lchat.h) and pop it. Returns status.
 */
int luachat_report(lua_State *L, int status);

/*
 * For an application that owns its event loop (docs/EMBEDDING.md): wait
 * until luachat_fd is readable or luachat_next_timeout passes, whichever
 * is first, then luachat_step. Each runs `require "luachat"` and one of
 * its functions under luachat_pcall (an error is printed, see
 * luachat_report); the stack is left as it was.
 */
/* The one descriptor to wait on for reading (luachat's epoll fd, luachat.fd()); -1 on an error. */
int luachat_fd(lua_State *L);
/* Milliseconds until luachat must be stepped anyway (luachat.next_timeout(), task timers too); -1: no deadline, or an error. */
long luachat_next_timeout(lua_State *L);
/* luachat.step(0): read what is ready, resume tasks; how many things are pending, or -1 on an error. */
long luachat_step(lua_State *L);

#ifdef __cplusplus
}
#endif

#endif
