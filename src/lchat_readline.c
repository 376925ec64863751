/*
 * lchat_readline.c: luaopen_luachat_readline, line editing for `luachat -c`.
 *
 * Owns: the GNU readline binding (readline, history files), Ctrl-C at the
 * prompt (discard the line, print "^C", a fresh prompt, like bash; on the
 * host's continuation prompt, readline returns NULL instead so the host drops
 * the unfinished statement), SIGTERM/SIGHUP at the prompt (readline returns
 * NULL, as at end of input), and protect(), a pcall that clears a pending
 * interrupt from C.
 * Never: calls the Lua API from a readline callback (the callbacks touch only
 * C statics), installs signal handlers (the host owns SIGINT), or is linked
 * into core.so (host only: stock lua5.4 has no `luachat.readline`, and
 * lua/luachat/cli.lua falls back to io.read).
 *
 * The interrupt flag pointer and the wake-up pipe are C statics set at
 * luaopen time, not engine state in an upvalue as STYLE.md §2 asks: readline's
 * hooks take no argument, so they cannot reach a lua_State. The host has
 * exactly one lua_State and one SIGINT flag, so one static copy is exact.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <readline/history.h>
#include <readline/readline.h>

#include "lchat.h"

int luaopen_luachat_readline(lua_State *L);

static volatile sig_atomic_t *rl_interrupt_flag; /* the host's SIGINT flag, or NULL */
static int rl_wakeup_fd = -1;                    /* the host's self-pipe read end, or -1 */
static int rl_cancel_on_interrupt;               /* Ctrl-C ends readline (NULL), not just the line */
static int rl_cancel;                            /* readline is to return NULL: the line is emptied */
static int rl_was_cancelled;                     /* the last readline returned NULL for Ctrl-C */

/* Host: while on, Ctrl-C makes readline() return NULL (after "^C"); lchat_readline_cancelled says so. */
void lchat_readline_cancel_on_interrupt(int on);
/* Host: whether the last readline() returned NULL because of Ctrl-C (not end of input). */
int lchat_readline_cancelled(void);

void lchat_readline_cancel_on_interrupt(int on)
{
	rl_cancel_on_interrupt = on;
	rl_cancel = 0;
	if (on)
		rl_was_cancelled = 0;
}

int lchat_readline_cancelled(void)
{
	return rl_was_cancelled;
}

/* Is the host ending (SIGTERM/SIGHUP)? */
static int rl_terminating(void)
{
	return rl_interrupt_flag != NULL && *rl_interrupt_flag == LCHAT_INTERRUPT_TERMINATE;
}

/* Clear a pending SIGINT and empty the self-pipe; returns whether one was pending. */
static int rl_take_interrupt(void)
{
	return lchat_take_interrupt(rl_interrupt_flag, rl_wakeup_fd);
}

/*
 * rl_signal_event_hook: readline calls it when a read was interrupted by a
 * signal (rl_catch_signals = 0, so the host's handler ran). Ctrl-C at the
 * prompt discards the line and redraws the prompt; the session goes on.
 */
static int rl_on_signal_event(void)
{
	int ending = rl_terminating();
	if (!rl_take_interrupt())
		return 0; /* SIGWINCH or another signal: nothing to do */
	rl_replace_line("", 0);
	rl_point = rl_end = 0;
	fputs(ending ? "\n" : "^C\n", rl_outstream ? rl_outstream : stdout);
	fflush(rl_outstream ? rl_outstream : stdout);
	if (ending || rl_cancel_on_interrupt) { /* rl_getc_hook returns EOF on an empty line: NULL */
		rl_cancel = 1;
		rl_was_cancelled = !ending;
		return 0;
	}
	rl_on_new_line();
	rl_redisplay();
	return 0;
}

/*
 * rl_getc_function: readline's own rl_getc retries a read that a signal
 * interrupted without ever returning, so the event hook could not end
 * readline. This one does the same (pending signals such as SIGWINCH
 * handled, then the hook), and returns EOF once the hook has emptied the line
 * to end readline: readline() then returns NULL.
 */
static int rl_getc_hook(FILE *stream)
{
	for (;;) {
		unsigned char c;
		ssize_t r;
		if (rl_cancel)
			return EOF;
		r = read(fileno(stream), &c, 1);
		if (r == 1)
			return c;
		if (r == 0)
			return EOF;
		if (errno == EAGAIN || errno == EWOULDBLOCK) { /* someone made the terminal non-blocking */
			int fl = fcntl(fileno(stream), F_GETFL);
			if (fl >= 0 && fcntl(fileno(stream), F_SETFL, fl & ~O_NONBLOCK) == 0)
				continue;
			return EOF;
		}
		if (errno != EINTR)
			return EOF;
		rl_check_signals();
		rl_on_signal_event();
	}
}

/* Trampoline: push the C string at lightuserdata 1 (may raise a memory error). */
static int rl_push_line(lua_State *L)
{
	lua_pushstring(L, lua_touserdata(L, 1));
	return 1;
}

/* readline.readline(prompt) -> line | nil at end of input (Ctrl-D). */
static int l_readline_readline(lua_State *L)
{
	const char *prompt = luaL_optstring(L, 1, "");
	char *line;
	int status;
	if (rl_terminating()) { /* SIGTERM/SIGHUP came: no more input (the wake-up is spent) */
		lua_pushliteral(L, "interrupted");
		return lua_error(L);
	}
	/* The prompt string stays anchored at stack index 1 during the call. */
	rl_cancel = 0;
	line = readline(prompt);
	rl_cancel = 0;
	if (line == NULL) {
		lua_pushnil(L);
		return 1;
	}
	/* Copy under pcall so a memory error cannot leak the malloc'ed line. */
	lua_pushcfunction(L, rl_push_line);
	lua_pushlightuserdata(L, line);
	status = lua_pcall(L, 1, 1, 0);
	free(line);
	if (status != LUA_OK)
		return lua_error(L);
	return 1;
}

/* readline.add_history(line): skip empty lines and repeats of the last one. */
static int l_readline_add_history(lua_State *L)
{
	const char *line = luaL_checkstring(L, 1);
	HIST_ENTRY *last;
	if (line[0] == '\0')
		return 0;
	last = history_length > 0 ? history_get(history_base + history_length - 1) : NULL;
	if (last && last->line && strcmp(last->line, line) == 0)
		return 0;
	add_history(line);
	return 0;
}

/* Push the fileresult of a history call: true | nil, "path: message". */
static int rl_history_result(lua_State *L, int rc, const char *path)
{
	if (rc == 0) {
		lua_pushboolean(L, 1);
		return 1;
	}
	lua_pushnil(L);
	lua_pushfstring(L, "%s: %s", path, strerror(rc));
	return 2;
}

/* readline.read_history(path) -> true | nil, err. */
static int l_readline_read_history(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	return rl_history_result(L, read_history(path), path);
}

/* readline.write_history(path [, max]) -> true | nil, err; keeps the last `max` lines. */
static int l_readline_write_history(lua_State *L)
{
	const char *path = luaL_checkstring(L, 1);
	lua_Integer max = luaL_optinteger(L, 2, 1000);
	int rc = write_history(path);
	if (rc == 0 && max > 0 && max < 1000000)
		rc = history_truncate_file(path, (int)max);
	return rl_history_result(L, rc, path);
}

/*
 * readline.protect(f, ...) -> ok, interrupted, results... | false, interrupted, err.
 * A pcall that, once f returns or raises, takes a pending SIGINT from C. A Lua
 * caller could not do that safely: the host's count hook raises "interrupted"
 * at any Lua instruction while the flag is set, even between pcall and
 * take_interrupt. No message handler: errors come back as raised. A
 * termination (SIGTERM/SIGHUP) is not taken: protect raises "interrupted"
 * again, so the chat loop that keeps going after Ctrl-C ends.
 */
static int l_readline_protect(lua_State *L)
{
	int nargs = lua_gettop(L) - 1;
	int status, intr;
	luaL_checktype(L, 1, LUA_TFUNCTION);
	status = lua_pcall(L, nargs, LUA_MULTRET, 0);
	if (rl_terminating()) {
		lua_pushliteral(L, "interrupted");
		return lua_error(L);
	}
	intr = rl_take_interrupt();
	luaL_checkstack(L, 2, "protect");
	lua_pushboolean(L, status == LUA_OK);
	lua_insert(L, 1);
	lua_pushboolean(L, intr);
	lua_insert(L, 2);
	return lua_gettop(L);
}

/* readline.take_interrupt() -> whether a SIGINT was pending (and clears it). */
static int l_readline_take_interrupt(lua_State *L)
{
	lua_pushboolean(L, rl_take_interrupt());
	return 1;
}

int luaopen_luachat_readline(lua_State *L)
{
	static const luaL_Reg fns[] = {
		{ "readline", l_readline_readline },
		{ "add_history", l_readline_add_history },
		{ "read_history", l_readline_read_history },
		{ "write_history", l_readline_write_history },
		{ "protect", l_readline_protect },
		{ "take_interrupt", l_readline_take_interrupt },
		{ NULL, NULL }
	};
	if (lua_getfield(L, LUA_REGISTRYINDEX, LCHAT_REG_INTERRUPT_FLAG) == LUA_TLIGHTUSERDATA)
		rl_interrupt_flag = lua_touserdata(L, -1);
	lua_pop(L, 1);
	if (lua_getfield(L, LUA_REGISTRYINDEX, LCHAT_REG_WAKEUP_FD) == LUA_TNUMBER)
		rl_wakeup_fd = (int)lua_tointeger(L, -1);
	lua_pop(L, 1);

	rl_readline_name = "luachat"; /* for $if luachat in ~/.inputrc */
	rl_catch_signals = 0;         /* the host's SIGINT handler stays in charge */
	rl_signal_event_hook = rl_on_signal_event;
	rl_getc_function = rl_getc_hook;
	rl_bind_key('\t', rl_insert); /* a chat has no file names to complete */
	using_history();
	/*
	 * One history entry per input, even a multi-line prompt: the file marks
	 * each entry with a "#<time>" line, and readline reads the lines up to the
	 * next mark back as one entry, by itself, when a file starts with a mark
	 * (history_multiline_entries stays 0: set, it would join an older file's
	 * unmarked lines into one entry).
	 */
	history_comment_char = '#';
	history_write_timestamps = 1;

	luaL_newlib(L, fns);
	return 1;
}
