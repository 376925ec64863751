/*
 * lchat_proc.c: the luachat.Process userdata (a child process on the loop).
 *
 * Owns: the Lua face of a struct proc (src/proc.h): core.process{...}, its
 * methods, and the engine's process registry: a userdata kept in the
 * engine's pin table that lists the live processes (for core.poll's ready
 * list and core.live) and maps each one back to its Lua object (weakly: a
 * process nobody references is collected, and its __gc ends the child).
 * The child's pipes and pidfd are watched by the engine (http_watch); the
 * watch callback only does the non-blocking I/O in proc.c, never Lua.
 *
 * Lua API (see also lua/luachat/process.lua for waiting in tasks):
 *   core.process{ argv = {"cmd", "arg", ...}, env = {K = "v", GONE = false}, cwd = "/dir",
 *                 env_only = true }   (env_only: env is the child's whole environment, not added to ours)
 *     -> Process | nil, err (err.kind "process": "cannot start 'cmd': No such file or directory")
 *   p:write(data)      -> true | nil, err   queues for stdin, never blocks
 *   p:read()           -> stdout bytes so far ("" if none yet) | nil at end of file
 *   p:close_stdin()    closes stdin once the queue is written
 *   p:pending()        -> bytes queued for stdin, not yet written
 *   p:stderr_tail([n]) -> the last n (default 20) lines of stderr kept (8 KiB at most)
 *   p:done()           -> reaped and stdout at end of file (nothing more will come)
 *   p:exit_status()    -> "exit", code | "signal", n | nil while running
 *   p:kill([sig])      -> true | nil, err   signal ("TERM", "KILL", "INT", "HUP" or a number) to its group
 *   p:pid()            -> the child's pid (its process group id too)
 *   p:close([grace])   close stdin, wait up to grace s (default 1) for an exit, SIGTERM the group,
 *                      wait grace s, SIGKILL; reaped, descriptors closed. Blocks at most 2 * grace.
 *                      Idempotent; __gc and __close do the same. Returns what exit_status returns.
 *   core.poll() lists a process when it has new output, reached EOF, exited or a write failed,
 *   so sched.wait_transfer(p) wakes a task waiting on it.
 * Never: calls Lua from the watch callback, keeps malloc'ed memory across a
 * call that can raise (argv/env arrays are Lua-owned), or keeps C globals.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "lchat.h"
#include "proc.h"

#define LCHAT_PROCESS_MT "luachat.Process"
#define REGISTRY_KEY "luachat.processes" /* in the engine's pin table */
#define DEFAULT_GRACE 1.0
#define MAX_GRACE 3600.0

/* User value of a Process: 1 = the engine userdata. */
#define UV_ENGINE 1

struct lchat_proc_reg;

struct lchat_proc {
	struct proc *p;                  /* NULL until started and once collected; closed: proc_closed */
	struct lchat_engine *eng;        /* the engine context (kept alive by user value 1) */
	struct lchat_proc_reg *reg;
	struct lchat_proc *prev, *next;  /* reg->live */
	unsigned long reads;             /* read() calls that took bytes (detects a finalizer's read) */
};

/* One per engine; its user value is the weak map lightuserdata(lp) -> Process. */
struct lchat_proc_reg {
	struct lchat_proc *live;
	size_t n;
};

static struct lchat_proc *check_proc(lua_State *L, int i)
{
	return luaL_checkudata(L, i, LCHAT_PROCESS_MT);
}

static void proc_methods(lua_State *L);

static struct lchat_proc *check_open_proc(lua_State *L, int i)
{
	struct lchat_proc *lp = check_proc(L, i);
	if (lp->p == NULL || proc_closed(lp->p))
		luaL_error(L, "attempt to use a closed process");
	return lp;
}

/* The engine's registry (created on first use) on top of the stack, or NULL and nil if none and !create. */
static struct lchat_proc_reg *get_registry(lua_State *L, int engine_idx, int create)
{
	struct lchat_proc_reg *reg;
	engine_idx = lua_absindex(L, engine_idx);
	if (lua_getiuservalue(L, engine_idx, LCHAT_UV_PINS) != LUA_TTABLE) {
		lua_pop(L, 1);
		lua_pushnil(L);
		return NULL;
	}
	if (lua_getfield(L, -1, REGISTRY_KEY) == LUA_TUSERDATA || !create) {
		reg = lua_touserdata(L, -1);
		lua_remove(L, -2);
		return reg;
	}
	lua_pop(L, 1);
	reg = lua_newuserdatauv(L, sizeof *reg, 1);
	reg->live = NULL;
	reg->n = 0;
	lua_newtable(L); /* the weak map */
	lua_createtable(L, 0, 1);
	lua_pushliteral(L, "v");
	lua_setfield(L, -2, "__mode");
	lua_setmetatable(L, -2);
	lua_setiuservalue(L, -2, 1);
	lua_pushvalue(L, -1);
	lua_setfield(L, -3, REGISTRY_KEY);
	lua_remove(L, -2);
	return reg;
}

static void unlink_proc(struct lchat_proc *lp)
{
	struct lchat_proc_reg *reg = lp->reg;
	if (reg == NULL)
		return;
	if (lp->prev)
		lp->prev->next = lp->next;
	else
		reg->live = lp->next;
	if (lp->next)
		lp->next->prev = lp->prev;
	reg->n--;
	lp->prev = lp->next = NULL;
	lp->reg = NULL;
}

/* http_watch callback: runs inside http_poll. No Lua here. */
static void on_fd(void *ud, int fd, int events)
{
	struct lchat_proc *lp = ud;
	if (lp->p)
		proc_on_ready(lp->p, fd, events);
}

/* proc.c's watch hook: (un)register one of its descriptors with the engine. */
static int watch_fd(void *ud, int fd, int events)
{
	struct lchat_proc *lp = ud;
	int ev = ((events & PROC_WATCH_READ) ? HTTP_WATCH_READ : 0) |
	         ((events & PROC_WATCH_WRITE) ? HTTP_WATCH_WRITE : 0);
	if (lp->eng->http == NULL) /* the engine is gone (lua_close order): nothing to tell */
		return events ? -1 : 0;
	return http_watch(lp->eng->http, fd, ev, on_fd, lp);
}

/* End the child (bounded wait); its status and stderr tail stay readable until __gc. */
static void close_proc(struct lchat_proc *lp, long grace_ms)
{
	if (lp->p == NULL || proc_closed(lp->p))
		return;
	proc_close(lp->p, grace_ms);
	unlink_proc(lp);
}

/* A list of strings from field `name` of the table at t into a Lua-owned NULL-terminated array. */
static const char **string_list(lua_State *L, int t, const char *name, size_t *count)
{
	const char **arr;
	size_t i, n;
	int list;
	if (lua_getfield(L, t, name) != LUA_TTABLE)
		luaL_error(L, "field '%s' must be a list of strings", name);
	list = lua_gettop(L);
	n = lua_rawlen(L, list);
	if (n == 0)
		luaL_error(L, "field '%s' must not be empty (the command to run comes first)", name);
	arr = lua_newuserdatauv(L, (n + 1) * sizeof *arr, 0);
	for (i = 0; i < n; i++) {
		if (lua_rawgeti(L, list, (lua_Integer)i + 1) != LUA_TSTRING)
			luaL_error(L, "field '%s' item %d must be a string", name, (int)i + 1);
		arr[i] = lua_tostring(L, -1);
		if (strlen(arr[i]) != lua_rawlen(L, -1))
			luaL_error(L, "field '%s' item %d must not contain a zero byte", name, (int)i + 1);
		lua_pop(L, 1); /* the list keeps it */
	}
	arr[n] = NULL;
	lua_remove(L, list); /* the array stays on top; the list is still referenced by the spec */
	*count = n;
	return arr;
}

/* env = {K = "v" | false}: "K=v" / "K" strings kept in a table on the stack, pointers in an array. */
static const char **env_list(lua_State *L, int t)
{
	const char **arr;
	size_t n = 0, i = 0;
	int env, keep;
	if (lua_getfield(L, t, "env") == LUA_TNIL) {
		lua_pop(L, 1);
		return NULL;
	}
	if (!lua_istable(L, -1))
		luaL_error(L, "field 'env' must be a table of NAME = value");
	env = lua_gettop(L);
	lua_pushnil(L);
	while (lua_next(L, env)) {
		n++;
		lua_pop(L, 1);
	}
	lua_createtable(L, (int)n, 0); /* keep: the built strings */
	keep = lua_gettop(L);
	arr = lua_newuserdatauv(L, (n + 1) * sizeof *arr, 0);
	lua_pushnil(L);
	while (lua_next(L, env)) {
		const char *k;
		size_t kl;
		if (lua_type(L, -2) != LUA_TSTRING)
			luaL_error(L, "field 'env': names must be strings");
		k = lua_tolstring(L, -2, &kl);
		if (kl == 0 || strchr(k, '=') != NULL || strlen(k) != kl)
			luaL_error(L, "field 'env': bad name '%s'", k);
		if (lua_type(L, -1) == LUA_TSTRING) {
			const char *v = lua_tostring(L, -1);
			if (strlen(v) != lua_rawlen(L, -1))
				luaL_error(L, "field 'env': the value of %s must not contain a zero byte", k);
			lua_pushfstring(L, "%s=%s", k, v);
		} else if (lua_type(L, -1) == LUA_TBOOLEAN && !lua_toboolean(L, -1)) {
			lua_pushvalue(L, -2); /* false: unset */
		} else {
			luaL_error(L, "field 'env': the value of %s must be a string (or false to unset it)", k);
		}
		arr[i] = lua_tostring(L, -1);
		lua_rawseti(L, keep, (lua_Integer)++i);
		lua_pop(L, 1);
		if (i > n)
			luaL_error(L, "field 'env' changed while read");
	}
	arr[i] = NULL;
	return arr; /* stack: ..., env, keep, arr */
}

/*
 * core.process(spec) -> Process | nil, err.  Upvalue 1: the engine.
 * Every array handed to proc_spawn is Lua-owned and anchored on the stack.
 */
int lchat_proc_new(lua_State *L)
{
	struct lchat_engine *eng = lua_touserdata(L, lua_upvalueindex(1));
	struct lchat_proc_reg *reg;
	struct lchat_proc *lp;
	struct proc_opts o;
	struct proc *p;
	char err[320];
	size_t argc;
	luaL_checktype(L, 1, LUA_TTABLE);
	lua_settop(L, 1);
	if (eng->http == NULL)
		return luaL_error(L, "attempt to use a closed engine");
	memset(&o, 0, sizeof o);
	o.argv = string_list(L, 1, "argv", &argc);
	o.env = env_list(L, 1);
	lua_getfield(L, 1, "env_only");
	o.env_only = lua_toboolean(L, -1);
	lua_pop(L, 1);
	if (lua_getfield(L, 1, "cwd") != LUA_TNIL) {
		if (lua_type(L, -1) != LUA_TSTRING)
			return luaL_error(L, "field 'cwd' must be a string");
		o.cwd = lua_tostring(L, -1); /* the spec table keeps it */
	}
	lua_pop(L, 1);

	reg = get_registry(L, lua_upvalueindex(1), 1); /* stack top: reg */
	/* Create the object closed, then acquire: a memory error leaves nothing half-made. */
	lp = lua_newuserdatauv(L, sizeof *lp, 1);
	memset(lp, 0, sizeof *lp);
	lp->eng = eng;
	if (luaL_newmetatable(L, LCHAT_PROCESS_MT))
		proc_methods(L); /* first use */
	lua_setmetatable(L, -2);
	lua_pushvalue(L, lua_upvalueindex(1));
	lua_setiuservalue(L, -2, UV_ENGINE);
	/* The weak map entry before the child exists, so nothing after the spawn can raise. */
	lua_getiuservalue(L, -2, 1);
	lua_pushlightuserdata(L, lp);
	lua_pushvalue(L, -3);
	lua_rawset(L, -3);
	lua_pop(L, 1);

	o.watch = watch_fd;
	o.watch_ud = lp;
	p = proc_spawn(&o, err, sizeof err);
	if (p == NULL) {
		lua_pushnil(L);
		lchat_err_push(L, "process", err, 0);
		return 2;
	}
	lp->p = p;
	lp->reg = reg;
	lp->next = reg->live;
	if (reg->live)
		reg->live->prev = lp;
	reg->live = lp;
	reg->n++;
	return 1;
}

/*
 * After http_poll (called by core.poll): append to the list at list_idx
 * every live process with something new; returns the new count. Processes
 * whose loop has no pidfd are reaped here (waitpid WNOHANG on our pids).
 */
lua_Integer lchat_proc_push_ready(lua_State *L, int engine_idx, int list_idx, lua_Integer n)
{
	struct lchat_proc_reg *reg;
	struct lchat_proc *lp;
	list_idx = lua_absindex(L, list_idx);
	reg = get_registry(L, engine_idx, 0);
	if (reg == NULL || reg->live == NULL) {
		lua_pop(L, 1);
		return n;
	}
	lua_getiuservalue(L, -1, 1); /* the weak map */
	for (lp = reg->live; lp; lp = lp->next) {
		proc_check(lp->p);
		if (!proc_take_ready(lp->p))
			continue;
		lua_pushlightuserdata(L, lp);
		if (lua_rawget(L, -2) == LUA_TUSERDATA)
			lua_rawseti(L, list_idx, ++n);
		else
			lua_pop(L, 1);
	}
	lua_pop(L, 2);
	return n;
}

/* How many processes are live (started, not closed, not finished): the loop has work while any is. */
lua_Integer lchat_proc_live(lua_State *L, int engine_idx)
{
	struct lchat_proc_reg *reg = get_registry(L, engine_idx, 0);
	struct lchat_proc *lp;
	lua_Integer n = 0;
	lua_pop(L, 1);
	if (reg == NULL)
		return 0;
	for (lp = reg->live; lp; lp = lp->next)
		n += !proc_finished(lp->p);
	return n;
}

static int push_fail(lua_State *L, const char *message)
{
	lua_pushnil(L);
	lchat_err_push(L, "process", message, 0);
	return 2;
}

/* p:write(data) -> true | nil, err */
static int l_process_write(lua_State *L)
{
	struct lchat_proc *lp = check_open_proc(L, 1);
	size_t n;
	const char *data = luaL_checklstring(L, 2, &n);
	char err[320];
	if (proc_write(lp->p, data, n, err, sizeof err) != 0)
		return push_fail(L, err);
	lua_pushboolean(L, 1);
	return 1;
}

/*
 * p:read() -> the stdout bytes read so far ("" if none), nil at end of file.
 * The copy is made first: a GC step in lua_pushlstring may run a finalizer
 * that reads or closes this very process; then the copy is stale or moot.
 */
static int l_process_read(lua_State *L)
{
	struct lchat_proc *lp = check_open_proc(L, 1);
	for (;;) {
		size_t len;
		const char *out = proc_out(lp->p, &len);
		unsigned long reads = lp->reads;
		if (len == 0) {
			if (proc_out_eof(lp->p))
				lua_pushnil(L);
			else
				lua_pushliteral(L, "");
			return 1;
		}
		lua_pushlstring(L, out, len);
		if (lp->p == NULL)
			return luaL_error(L, "attempt to use a closed process");
		if (lp->reads != reads) {
			lua_pop(L, 1);
			continue;
		}
		lp->reads++;
		proc_out_consume(lp->p, len);
		return 1;
	}
}

static int l_process_close_stdin(lua_State *L)
{
	struct lchat_proc *lp = check_open_proc(L, 1);
	proc_close_stdin(lp->p);
	return 0;
}

static int l_process_pending(lua_State *L)
{
	struct lchat_proc *lp = check_open_proc(L, 1);
	lua_pushinteger(L, (lua_Integer)proc_pending_in(lp->p));
	return 1;
}

/* p:stderr_tail([lines]) -> string (also after close) */
static int l_process_stderr_tail(lua_State *L)
{
	struct lchat_proc *lp = check_proc(L, 1);
	lua_Integer lines = luaL_optinteger(L, 2, PROC_DEFAULT_ERR_LINES);
	const char *s;
	size_t len;
	if (lines < 1)
		return luaL_argerror(L, 2, "at least 1 line expected");
	if (lp->p == NULL) {
		lua_pushliteral(L, "");
		return 1;
	}
	s = proc_err_tail(lp->p, lines > 100000 ? 100000 : (int)lines, &len);
	lua_pushlstring(L, s, len);
	return 1;
}

static int l_process_done(lua_State *L)
{
	struct lchat_proc *lp = check_proc(L, 1);
	lua_pushboolean(L, lp->p == NULL || proc_closed(lp->p) || proc_finished(lp->p));
	return 1;
}

static int push_status(lua_State *L, int kind, int value)
{
	switch (kind) {
	case PROC_EXITED:
		lua_pushliteral(L, "exit");
		break;
	case PROC_SIGNALED:
		lua_pushliteral(L, "signal");
		break;
	default:
		lua_pushnil(L);
		return 1;
	}
	lua_pushinteger(L, value);
	return 2;
}

/* p:exit_status() -> "exit", code | "signal", n | nil while running */
static int l_process_exit_status(lua_State *L)
{
	struct lchat_proc *lp = check_proc(L, 1);
	int v = 0, k;
	if (lp->p == NULL)
		return push_status(L, PROC_RUNNING, 0);
	k = (int)proc_status(lp->p, &v);
	return push_status(L, k, v);
}

static int l_process_pid(lua_State *L)
{
	struct lchat_proc *lp = check_proc(L, 1);
	lua_pushinteger(L, lp->p ? (lua_Integer)proc_pid(lp->p) : 0);
	return 1;
}

/* p:kill([sig]) -> true | nil, err: the signal goes to the child's process group. */
static int l_process_kill(lua_State *L)
{
	static const char *const names[] = { "TERM", "KILL", "INT", "HUP", "QUIT", "USR1", "USR2", NULL };
	static const int sigs[] = { SIGTERM, SIGKILL, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2 };
	struct lchat_proc *lp = check_open_proc(L, 1);
	int sig;
	if (lua_type(L, 2) == LUA_TNUMBER)
		sig = (int)luaL_checkinteger(L, 2);
	else
		sig = sigs[luaL_checkoption(L, 2, "TERM", names)];
	if (proc_status(lp->p, NULL) != PROC_RUNNING && proc_out_eof(lp->p)) {
		lua_pushboolean(L, 1); /* nothing left to signal */
		return 1;
	}
	if (proc_kill(lp->p, sig) != 0) {
		char msg[160];
		snprintf(msg, sizeof msg, "cannot signal process %d: %s", (int)proc_pid(lp->p), strerror(errno));
		return push_fail(L, msg);
	}
	lua_pushboolean(L, 1);
	return 1;
}

/*
 * p:close([grace]), __gc, __close: the polite close (proc_close); idempotent.
 * __close passes the error object as argument 2: only a number is a grace.
 */
static int l_process_close(lua_State *L)
{
	struct lchat_proc *lp = check_proc(L, 1);
	lua_Number grace = DEFAULT_GRACE;
	if (lua_type(L, 2) == LUA_TNUMBER) {
		grace = lua_tonumber(L, 2);
		if (!(grace >= 0 && grace <= MAX_GRACE)) /* NaN fails both */
			return luaL_argerror(L, 2, "grace must be between 0 and 3600 seconds");
	}
	close_proc(lp, (long)(grace * 1000.0));
	return l_process_exit_status(L);
}

/* __gc: the polite close, then the memory. */
static int l_process_gc(lua_State *L)
{
	struct lchat_proc *lp = check_proc(L, 1);
	close_proc(lp, (long)(DEFAULT_GRACE * 1000.0));
	if (lp->p) {
		proc_free(lp->p);
		lp->p = NULL;
	}
	return 0;
}

static int l_process_tostring(lua_State *L)
{
	struct lchat_proc *lp = check_proc(L, 1);
	int v = 0;
	if (lp->p == NULL || proc_closed(lp->p))
		lua_pushliteral(L, "luachat.Process (closed)");
	else if (proc_status(lp->p, &v) == PROC_RUNNING)
		lua_pushfstring(L, "luachat.Process (running, pid %d)", (int)proc_pid(lp->p));
	else
		lua_pushfstring(L, "luachat.Process (%s %d, pid %d)",
		                proc_status(lp->p, NULL) == PROC_EXITED ? "exited" : "killed by signal", v,
		                (int)proc_pid(lp->p));
	return 1;
}

/* [-0, +0] Fill the metatable on top of the stack. */
static void proc_methods(lua_State *L)
{
	static const luaL_Reg methods[] = {
		{ "write", l_process_write },
		{ "read", l_process_read },
		{ "close_stdin", l_process_close_stdin },
		{ "pending", l_process_pending },
		{ "stderr_tail", l_process_stderr_tail },
		{ "done", l_process_done },
		{ "exit_status", l_process_exit_status },
		{ "kill", l_process_kill },
		{ "pid", l_process_pid },
		{ "close", l_process_close },
		{ NULL, NULL }
	};
	static const luaL_Reg meta[] = {
		{ "__gc", l_process_gc },
		{ "__close", l_process_close },
		{ "__tostring", l_process_tostring },
		{ NULL, NULL }
	};
	luaL_setfuncs(L, meta, 0);
	luaL_newlib(L, methods);
	lua_setfield(L, -2, "__index");
}
