/*
 * lchat_core.c: luaopen_luachat_core, the C half of `require "luachat"`.
 *
 * Owns: the engine context userdata (one http_engine per lua_State, an
 * upvalue of every function, its pin table as user value) and the module
 * table: start, poll, live, now, next_timeout, fd, fds, error, json_*, and
 * curl_version, read on first use (it loads libcurl, see curl_dl.h).
 * Never: keeps state in C globals, blocks without a bound, or calls Lua
 * from inside curl (http_poll runs no Lua; ready transfers are pushed after).
 */
#include <math.h>
#include <poll.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include "curl_dl.h"
#include "lchat.h"
#include "lchat_json.h"
#include "luachat.h"

#define MAX_FDS 256

static struct lchat_engine *engine_of(lua_State *L)
{
	return lua_touserdata(L, lua_upvalueindex(1));
}

static void check_interrupt(lua_State *L, struct lchat_engine *eng)
{
	if (eng->interrupted && *eng->interrupted)
		luaL_error(L, "interrupted");
}

/*
 * core.poll(seconds) -> list of ready transfers | nil, err.
 * One turn of the engine's loop (http_poll: what is due, one wait bounded
 * by `seconds`, the ready sockets); finished transfers are unpinned as they
 * are handed back.
 */
static int l_core_poll(lua_State *L)
{
	struct lchat_engine *eng = engine_of(L);
	lua_Number seconds = luaL_optnumber(L, 1, 0);
	struct http_transfer *t;
	char err[256];
	int n, ms;
	lua_Integer i = 0;
	if (eng->http == NULL)
		return luaL_error(L, "attempt to use a closed engine");
	check_interrupt(L, eng);
	if (seconds < 0 || seconds != seconds)
		seconds = 0;
	ms = seconds > 86400.0 ? 86400000 : (int)ceil(seconds * 1000.0);
	n = http_poll(eng->http, ms, err, sizeof err);
	if (n < 0) {
		lua_pushnil(L);
		lchat_err_push(L, "network", err, 0);
		return 2;
	}
	check_interrupt(L, eng);
	lua_createtable(L, n, 0);
	while ((t = http_next_ready(eng->http)) != NULL) {
		lchat_transfer_push_ready(L, lua_upvalueindex(1), t);
		lua_rawseti(L, -2, ++i);
	}
	lchat_proc_push_ready(L, lua_upvalueindex(1), -1, i); /* and child processes with news */
	return 1;
}

static int l_core_live(lua_State *L)
{
	struct lchat_engine *eng = engine_of(L);
	lua_pushinteger(L, eng->http ? (lua_Integer)http_engine_live(eng->http) +
	                                   lchat_proc_live(L, lua_upvalueindex(1)) : 0);
	return 1;
}

static int l_core_now(lua_State *L)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec / 1e9);
	return 1;
}

/* core.next_timeout() -> seconds until a poll is due, or nil when nothing is pending. */
static int l_core_next_timeout(lua_State *L)
{
	struct lchat_engine *eng = engine_of(L);
	long ms = eng->http ? http_next_timeout(eng->http) : -1;
	if (ms < 0)
		lua_pushnil(L);
	else
		lua_pushnumber(L, (lua_Number)ms / 1000.0);
	return 1;
}

/*
 * core.fds() -> { {fd=, events="r"|"w"|"rw"}, ... } for an external poll
 * loop: today the one epoll fd, {{fd = core.fd(), events = "r"}}, which
 * stands for every socket (no curl_multi_fdset: it stops at fd 1023).
 */
static int l_core_fds(lua_State *L)
{
	struct lchat_engine *eng = engine_of(L);
	int fds[MAX_FDS];
	short events[MAX_FDS];
	int i, n = eng->http ? http_fds(eng->http, fds, events, MAX_FDS) : 0;
	lua_createtable(L, n, 0);
	for (i = 0; i < n; i++) {
		const char *ev = (events[i] & POLLIN) && (events[i] & POLLOUT) ? "rw"
		                 : (events[i] & POLLIN) ? "r" : "w";
		lua_createtable(L, 0, 2);
		lua_pushinteger(L, fds[i]);
		lua_setfield(L, -2, "fd");
		lua_pushstring(L, ev);
		lua_setfield(L, -2, "events");
		lua_rawseti(L, -2, i + 1);
	}
	return 1;
}

/*
 * core.fd() -> the engine's one descriptor (epoll): readable when poll has
 * work. A host loop waits on it for at most next_timeout(), then polls.
 */
static int l_core_fd(lua_State *L)
{
	struct lchat_engine *eng = engine_of(L);
	if (eng->http == NULL)
		return luaL_error(L, "attempt to use a closed engine");
	lua_pushinteger(L, http_engine_fd(eng->http));
	return 1;
}

/* core.isatty(fd) -> boolean (0 stdin, 1 stdout, 2 stderr). */
static int l_core_isatty(lua_State *L)
{
	lua_pushboolean(L, isatty((int)luaL_checkinteger(L, 1)));
	return 1;
}

/* core.term_width(fd) -> columns of the terminal on fd | nil (not a terminal, unknown). */
static int l_core_term_width(lua_State *L)
{
	struct winsize ws;
	if (ioctl((int)luaL_checkinteger(L, 1), TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0)
		lua_pushinteger(L, ws.ws_col);
	else
		lua_pushnil(L);
	return 1;
}

int lchat_take_interrupt(volatile sig_atomic_t *flag, int wakeup_fd)
{
	char drain[64];
	if (flag == NULL || !*flag)
		return 0;
	if (*flag == 1) /* SIGINT; a termination (LCHAT_INTERRUPT_TERMINATE) is never taken back */
		*flag = 0;
	/* Empty the self-pipe, or every later poll would wake at once on the stale byte. */
	if (wakeup_fd >= 0)
		while (read(wakeup_fd, drain, sizeof drain) > 0)
			;
	return 1;
}

/*
 * core.take_interrupt() -> true if SIGINT arrived since the last call, and
 * clears it (the chat prompt cancels a reply on Ctrl-C instead of exiting).
 */
static int l_core_take_interrupt(lua_State *L)
{
	struct lchat_engine *eng = engine_of(L);
	lua_pushboolean(L, lchat_take_interrupt(eng->interrupted, eng->wakeup_fd));
	return 1;
}

/*
 * core.interrupted() -> whether a SIGINT is pending, without clearing it (the
 * host's hook and take_interrupt act on it). The agent asks after a tool
 * handler returns, so Ctrl-C during a blocking handler ends the turn.
 */
static int l_core_interrupted(lua_State *L)
{
	struct lchat_engine *eng = engine_of(L);
	lua_pushboolean(L, eng->interrupted != NULL && *eng->interrupted);
	return 1;
}

/* Engine __gc: close every live transfer first, so lua_close order never matters. */
static int l_engine_gc(lua_State *L)
{
	struct lchat_engine *eng = luaL_checkudata(L, 1, LCHAT_ENGINE_MT);
	if (eng->http) {
		http_engine_free(eng->http);
		eng->http = NULL;
	}
	return 0;
}

/*
 * __index of the module table: the first read of curl_version loads
 * libcurl for its runtime version and stores it as a plain field. nil when
 * libcurl cannot be loaded (the first request reports why). [-0, +1]
 */
static int l_core_index(lua_State *L)
{
	char err[320];
	const char *v;
	if (lua_type(L, 2) != LUA_TSTRING || strcmp(lua_tostring(L, 2), "curl_version") != 0)
		return 0;
	v = curl_dl_version(err, sizeof err);
	if (v == NULL) {
		lua_pushnil(L);
		return 1;
	}
	lua_pushstring(L, v);
	lua_pushvalue(L, -1);
	lua_setfield(L, 1, "curl_version"); /* raw: the metatable has no __newindex */
	return 1;
}

int luaopen_luachat_core(lua_State *L)
{
	static const luaL_Reg fns[] = {
		{ "start", lchat_transfer_start },
		{ "process", lchat_proc_new },
		{ "poll", l_core_poll },
		{ "live", l_core_live },
		{ "now", l_core_now },
		{ "next_timeout", l_core_next_timeout },
		{ "fds", l_core_fds },
		{ "fd", l_core_fd },
		{ "isatty", l_core_isatty },
		{ "term_width", l_core_term_width },
		{ "take_interrupt", l_core_take_interrupt },
		{ "interrupted", l_core_interrupted },
		{ NULL, NULL }
	};
	struct lchat_engine *eng;
	char err[256];
	lchat_err_open(L);
	lchat_transfer_open(L);
	lua_newtable(L); /* the module */

	eng = lua_newuserdatauv(L, sizeof *eng, 1);
	eng->http = NULL;
	eng->interrupted = NULL;
	eng->wakeup_fd = -1;
	if (luaL_newmetatable(L, LCHAT_ENGINE_MT)) {
		lua_pushcfunction(L, l_engine_gc);
		lua_setfield(L, -2, "__gc");
	}
	lua_setmetatable(L, -2);
	lua_newtable(L);
	lua_setiuservalue(L, -2, LCHAT_UV_PINS);
	eng->http = http_engine_new(err, sizeof err);
	if (eng->http == NULL)
		return luaL_error(L, "luachat: cannot start the HTTP engine: %s", err);
	if (lua_getfield(L, LUA_REGISTRYINDEX, LCHAT_REG_INTERRUPT_FLAG) == LUA_TLIGHTUSERDATA)
		eng->interrupted = lua_touserdata(L, -1);
	lua_pop(L, 1);
	if (lua_getfield(L, LUA_REGISTRYINDEX, LCHAT_REG_WAKEUP_FD) == LUA_TNUMBER) {
		eng->wakeup_fd = (int)lua_tointeger(L, -1);
		http_engine_set_wakeup_fd(eng->http, eng->wakeup_fd);
	}
	lua_pop(L, 1);

	luaL_setfuncs(L, fns, 1); /* every function gets the engine as upvalue 1 */
	lua_pushcfunction(L, lchat_err_new);
	lua_setfield(L, -2, "error");
	lchat_json_register(L);
	lchat_chunks_register(L, -1);
	lua_pushliteral(L, LUACHAT_VERSION);
	lua_setfield(L, -2, "version");
	lua_newtable(L); /* metatable: curl_version on demand, so require never loads libcurl */
	lua_pushcfunction(L, l_core_index);
	lua_setfield(L, -2, "__index");
	lua_setmetatable(L, -2);
	return 1;
}
