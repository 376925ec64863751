/*
 * main.c: the luachat host.
 *
 * Owns: command-line options, building the lua_State through the C API
 * of include/luachat.h (luachat_openlibsx: the preloaded engine and the
 * library search path, set up once, in src/lchat_api.c), LUA_INIT, running
 * a script, -e chunks, stdin or the interactive prompt, exit codes,
 * SIGINT, SIGTERM and SIGHUP, and the descriptor limit (raised to the hard one at start).
 * Never: touches the engine's internals, keeps its own message handler or
 * path set-up; Lua-side work (the chat command line) lives in
 * lua/luachat/cli.lua. Every Lua call runs under luachat_pcall (the one
 * lchat_pcall and its message handler), so an error never escapes.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>
#include <readline/history.h>
#include <readline/readline.h>

#include "curl_dl.h"
#include "lchat.h"
#include "luachat.h"
#include "proc.h"

/* src/lchat_readline.c: line editing for the prompts (host only). */
int luaopen_luachat_readline(lua_State *L);
void lchat_readline_cancel_on_interrupt(int on);
int lchat_readline_cancelled(void);

#define PROGNAME "luachat"
#define EXIT_USAGE 2
#define EXIT_INTERRUPTED 130
#define HOOK_COUNT 1000 /* instructions between interrupt checks */

static volatile sig_atomic_t interrupted;  /* 0, 1 (SIGINT) or LCHAT_INTERRUPT_TERMINATE */
static volatile sig_atomic_t term_signal;  /* SIGTERM or SIGHUP once one came, else 0 */
static int wakeup_pipe[2] = { -1, -1 };

static const char usage_text[] =
	"usage: " PROGNAME " [options] [script [args...]]\n"
	"Run a Lua 5.4 script with the luachat chat-completions engine (the global `luachat`).\n"
	"\n"
	"Scripts:\n"
	"  script [args]     run a Lua file; arg[0] is the script, arg[1..n] and ... the args\n"
	"  -                 read the script from standard input\n"
	"  -e CODE           run CODE (repeatable, runs before the script)\n"
	"  -l NAME           require NAME into the global NAME before the script\n"
	"  -i                interactive Lua prompt after the script\n"
	"  (nothing)         interactive Lua prompt on a terminal, else read stdin\n"
	"\n"
	"Chat from the command line (see `" PROGNAME " -p --help`):\n"
	"  -p PROMPT         one-shot answer streamed to stdout (stdin text is appended)\n"
	"  -c                interactive chat with streaming and slash commands\n"
	"  -m MODEL, -s SYSTEM, -P PROFILE, --base-url URL, --tools FILE, --max-turns N,\n"
	"  --json, --no-stream, --mcp 'CMD ARGS' (an MCP server's tools); any option that\n"
	"  is not one of the host's goes to the chat command line, and long ones take\n"
	"  --name=VALUE too\n"
	"  batch FILE -o OUT run a file of requests (OpenAI Batch format), resumable,\n"
	"                    rate-limited, sharded or remote (see `" PROGNAME " batch --help`)\n"
	"\n"
	"Other:\n"
	"  -v, --version     print luachat, Lua and libcurl versions\n"
	"  -h, --help        print this help\n"
	"  --                stop handling options\n"
	"\n"
	"Environment: OPENAI_BASE_URL, OPENAI_API_KEY, LUACHAT_LOG=debug, LUA_PATH, LUA_CPATH,\n"
	"LUA_INIT (run before -e, -l, the script and the prompt, as in lua5.4).\n"
	"Exit status: 0 ok, 1 error, 2 usage, 130 interrupted. SIGTERM or SIGHUP ends the\n"
	"run as Ctrl-C does (children stopped), then kills luachat with that signal; a second\n"
	"one kills the children and luachat at once.\n";

static void print_usage_line(const char *why)
{
	fprintf(stderr, "%s: %s\nusage: %s [options] [script [args...]]  (try '%s --help')\n",
	        PROGNAME, why, PROGNAME, PROGNAME);
}

/* SIGINT: set the flag and wake the engine's epoll wait (the pipe is in its set); nothing else is safe here. */
static void on_sigint(int sig)
{
	(void)sig;
	if (interrupted != LCHAT_INTERRUPT_TERMINATE)
		interrupted = 1;
	if (wakeup_pipe[1] >= 0) {
		ssize_t w = write(wakeup_pipe[1], "!", 1);
		(void)w;
	}
}

/* Die of sig as if it had not been caught (the parent sees "killed by signal"). Async-signal-safe. */
static void die_of_signal(int sig)
{
	struct sigaction sa;
	sigset_t set;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = SIG_DFL;
	sigemptyset(&sa.sa_mask);
	sigaction(sig, &sa, NULL);
	sigemptyset(&set);
	sigaddset(&set, sig);
	sigprocmask(SIG_UNBLOCK, &set, NULL);
	raise(sig);
	_exit(128 + sig); /* not reached */
}

/*
 * SIGTERM, SIGHUP: the first is an interrupt that is never taken back (the
 * flag's LCHAT_INTERRUPT_TERMINATE): the count hook and the engine's poll
 * raise "interrupted" until the stack has unwound, every <close> and
 * finaliser runs (they stop the children), and main dies of the signal. A
 * script that keeps catching the error cannot hold the host: a second
 * SIGTERM or SIGHUP kills every child's process group and then the host, at once.
 */
static void on_sigterm(int sig)
{
	if (term_signal) {
		proc_kill_all(SIGKILL);
		die_of_signal(term_signal);
	}
	term_signal = sig;
	interrupted = LCHAT_INTERRUPT_TERMINATE;
	if (wakeup_pipe[1] >= 0) {
		ssize_t w = write(wakeup_pipe[1], "!", 1);
		(void)w;
	}
}

/* Forget a handled SIGINT: reset the flag and empty the self-pipe (else every poll wakes at once). */
static void clear_interrupt(void)
{
	lchat_take_interrupt(&interrupted, wakeup_pipe[0]);
}

/* Count hook on the main thread (coroutines inherit it): raise once interrupted. */
static void interrupt_hook(lua_State *L, lua_Debug *ar)
{
	(void)ar;
	if (interrupted)
		luaL_error(L, "interrupted");
}

struct options {
	int argc;
	char **argv;
	int script;        /* index of the script in argv, 0 if none */
	int interactive;   /* -i */
	int stdin_script;  /* "-" */
	int version;
	int chat_cli;      /* a chat option (-p, -c, ...) was given: hand argv to luachat.cli */
};

/* Parse options; returns -1 after printing help/usage (exit code in *code). */
static int parse_options(struct options *o, int *code)
{
	int i;
	for (i = 1; i < o->argc; i++) {
		const char *a = o->argv[i];
		/* `luachat batch ...`: lua/luachat/batch_cli.lua (a script named batch: ./batch) */
		int batch = i == 1 && strcmp(a, "batch") == 0;
		if (batch) {
			o->chat_cli = batch;
			return 0;
		}
		if (a[0] != '-') {
			o->script = i;
			return 0;
		}
		if (strcmp(a, "-") == 0) {
			o->script = i;
			o->stdin_script = 1;
			return 0;
		}
		if (strcmp(a, "--") == 0) {
			if (i + 1 < o->argc)
				o->script = i + 1;
			return 0;
		}
		if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
			fputs(usage_text, stdout);
			*code = EXIT_SUCCESS;
			return -1;
		}
		if (strcmp(a, "-v") == 0 || strcmp(a, "--version") == 0) {
			o->version = 1;
		} else if (strcmp(a, "-i") == 0) {
			o->interactive = 1;
		} else if (strcmp(a, "-e") == 0 || strcmp(a, "-l") == 0) {
			if (++i >= o->argc) {
				char why[64];
				snprintf(why, sizeof why, "'%s' needs an argument", a);
				print_usage_line(why);
				*code = EXIT_USAGE;
				return -1;
			}
		} else {
			/*
			 * Not a host option: the chat command line's (-p, -c, -m, --model=x,
			 * ...). luachat.cli parses them all, so the two never disagree, and
			 * reports anything it does not know as a usage error.
			 */
			o->chat_cli = 1;
			return 0;
		}
	}
	return 0;
}

/* Could s be a file name someone meant to run? A slash or a .lua ending says so. */
static int looks_like_path(const char *s)
{
	size_t n = strlen(s);
	return strchr(s, '/') != NULL || (n > 4 && strcmp(s + n - 4, ".lua") == 0);
}

/*
 * `luachat "What is the capital of France?"`: no such script, and the word
 * looks like a question rather than a path. Say what was probably meant,
 * quoted for the shell. Returns 1 when it printed the hint.
 */
static int suggest_prompt(const char *script)
{
	const char *p;
	if (script[0] == '-' || access(script, F_OK) == 0 || errno != ENOENT || looks_like_path(script))
		return 0; /* `luachat -- -x`: a name, whatever it looks like */
	fprintf(stderr, "%s: cannot open %s (no such file); did you mean: %s -p ", PROGNAME, script,
	        PROGNAME);
	if (strpbrk(script, "\"$`\\!") == NULL) {
		fprintf(stderr, "\"%s\"\n", script);
		return 1;
	}
	fputc('\'', stderr);
	for (p = script; *p; p++) {
		if (*p == '\'')
			fputs("'\\''", stderr);
		else
			fputc(*p, stderr);
	}
	fputs("'\n", stderr);
	return 1;
}

/* The global `arg`: arg[0] the script, negatives the interpreter and options. */
static void create_arg_table(lua_State *L, const struct options *o)
{
	int base = o->script ? o->script : o->argc;
	int i;
	lua_createtable(L, o->argc - base, base + 1);
	for (i = 0; i < o->argc; i++) {
		lua_pushstring(L, o->argv[i]);
		lua_rawseti(L, -2, i - base);
	}
	lua_setglobal(L, "arg");
}

/* -l NAME: require it and set the global NAME. */
static int run_require(lua_State *L, const char *name)
{
	int status;
	lua_getglobal(L, "require");
	lua_pushstring(L, name);
	status = luachat_pcall(L, 1, 1);
	if (status == LUA_OK)
		lua_setglobal(L, name);
	return status;
}

static int run_script(lua_State *L, const struct options *o)
{
	const char *fname = o->stdin_script ? NULL : o->argv[o->script];
	int status = luaL_loadfile(L, fname), i, n;
	if (status != LUA_OK)
		return luachat_report(L, status);
	n = o->argc - o->script - 1;
	luaL_checkstack(L, n, "too many arguments to script");
	for (i = 0; i < n; i++)
		lua_pushstring(L, o->argv[o->script + 1 + i]);
	return luachat_pcall(L, n, 0);
}

/*
 * libcurl's version for the banners, which loads libcurl (curl_dl.h); when
 * it cannot be loaded, why, in parentheses. Returns buf.
 */
static const char *curl_version_text(char *buf, size_t len)
{
	char err[320];
	const char *v = curl_dl_version(err, sizeof err);
	if (v)
		snprintf(buf, len, "%s", v);
	else
		snprintf(buf, len, "(%s)", err);
	return buf;
}

/*
 * os.execute for the host: Lua's, but through fork/exec instead of system(),
 * which ignores SIGINT while the command runs. Here Ctrl-C reaches the
 * host's flag as well as the command, so a tool handler blocked in
 * os.execute("sleep 5") ends its turn once the command returns. The child
 * gets SIGPIPE's default back (the host ignores it).
 */
static int host_execute(lua_State *L)
{
	const char *cmd = luaL_optstring(L, 1, NULL);
	pid_t pid;
	int status;
	if (cmd == NULL) { /* is a shell available? */
		lua_pushboolean(L, access("/bin/sh", X_OK) == 0);
		return 1;
	}
	fflush(NULL);
	pid = fork();
	if (pid < 0)
		return luaL_fileresult(L, 0, NULL);
	if (pid == 0) {
		signal(SIGPIPE, SIG_DFL);
		execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
		_exit(127);
	}
	while (waitpid(pid, &status, 0) < 0) {
		if (errno != EINTR)
			return luaL_fileresult(L, 0, NULL);
		if (term_signal) /* the command is in our process group, but `kill PID` reached only us */
			kill(pid, term_signal);
	}
	errno = 0; /* luaL_execresult reads a non-zero errno as a failure to run */
	return luaL_execresult(L, status);
}

/*
 * The interactive prompt, split as lua.c splits it: repl_pushline reads a
 * line, repl_addreturn tries it as `return line;` (so `1+1` prints 2),
 * repl_multiline reads more lines while a statement is incomplete,
 * repl_print prints what the chunk returned.
 */

/*
 * [-0, +(0|1), m] Read a line (prompt "> " or ">> ") and push it; 0 at end
 * of input or once SIGTERM/SIGHUP came, -1 when Ctrl-C discarded a
 * continuation line (the statement is dropped, as bash drops an unfinished loop).
 */
static int repl_pushline(lua_State *L, int firstline)
{
	char *line;
	if (term_signal) /* came while a chunk ran: read nothing more */
		return 0;
	lchat_readline_cancel_on_interrupt(!firstline);
	line = readline(firstline ? "> " : ">> ");
	lchat_readline_cancel_on_interrupt(0);
	if (term_signal) {
		free(line);
		return 0;
	}
	if (line == NULL)
		return lchat_readline_cancelled() ? -1 : 0;
	lua_pushstring(L, line);
	free(line);
	return 1;
}

/* [-0, +(0|1), m] A chunk returning the line at the top (replaced on success), or pop the attempt. */
static int repl_addreturn(lua_State *L)
{
	const char *line = lua_tostring(L, -1);
	const char *retline = lua_pushfstring(L, "return %s;", line);
	int status = luaL_loadbuffer(L, retline, strlen(retline), "=stdin");
	if (status == LUA_OK) {
		lua_remove(L, -2); /* the modified line */
		if (line[0] != '\0')
			add_history(line);
	} else {
		lua_pop(L, 2); /* the error and the modified line */
	}
	return status;
}

/* Did the chunk fail only because its input ended too soon ("... near <eof>")? Pops that error. */
static int repl_incomplete(lua_State *L, int status)
{
	size_t len;
	const char *msg;
	if (status != LUA_ERRSYNTAX)
		return 0;
	msg = lua_tolstring(L, -1, &len);
	if (len < 5 || strcmp(msg + len - 5, "<eof>") != 0)
		return 0;
	lua_pop(L, 1);
	return 1;
}

/*
 * [-0, +1, m] Load the text at index 1 as a statement, reading more lines
 * while it is incomplete; the whole statement is one history entry. At end
 * of input mid-statement, the error says so.
 */
static int repl_multiline(lua_State *L)
{
	for (;;) {
		size_t len;
		const char *text = lua_tolstring(L, 1, &len);
		int status = luaL_loadbuffer(L, text, len, "=stdin");
		if (!repl_incomplete(L, status)) {
			add_history(text);
			return status;
		}
		switch (repl_pushline(L, 0)) {
		case -1: /* Ctrl-C: drop the statement (not kept in history either, as in bash), a fresh "> " */
			return -1;
		case 0:
			add_history(text);
			lua_pushliteral(L, "unfinished statement at end of input");
			return LUA_ERRSYNTAX;
		}
		lua_pushliteral(L, "\n");
		lua_insert(L, -2);
		lua_concat(L, 3); /* text, "\n", line */
	}
}

/*
 * [-0, +1, m] Read and load one chunk: its function (or error) alone on the
 * stack; -1 at end of input; -2 (nothing on the stack) when Ctrl-C dropped
 * an unfinished statement.
 */
static int repl_loadline(lua_State *L)
{
	int status;
	lua_settop(L, 0);
	if (repl_pushline(L, 1) <= 0)
		return -1;
	if ((status = repl_addreturn(L)) != LUA_OK)
		status = repl_multiline(L);
	if (status == -1) {
		lua_settop(L, 0);
		return -2;
	}
	lua_remove(L, 1); /* the source text */
	return status;
}

/* Print whatever is on the stack (a chunk's results) with the global print. */
static void repl_print(lua_State *L)
{
	int n = lua_gettop(L);
	if (n > 0) {
		luaL_checkstack(L, LUA_MINSTACK, "too many results to print");
		lua_getglobal(L, "print");
		lua_insert(L, 1);
		luachat_pcall(L, n, 0);
	}
}

/* The interactive prompt: readline with history, `=`-less expressions printed. */
static void repl(lua_State *L)
{
	char curl_ver[340];
	int status;
	/* Its setup makes Ctrl-C at the prompt discard the line instead of interrupting the next chunk. */
	luaL_requiref(L, "luachat.readline", luaopen_luachat_readline, 0);
	lua_pop(L, 1);
	printf("luachat %s (%s, libcurl %s)  Ctrl-D to leave\n", LUACHAT_VERSION, LUA_RELEASE,
	       curl_version_text(curl_ver, sizeof curl_ver));
	while ((status = repl_loadline(L)) != -1) {
		if (status == -2) {
			clear_interrupt();
			continue;
		}
		if (status == LUA_OK)
			status = luachat_pcall(L, 0, LUA_MULTRET);
		else
			luachat_report(L, status);
		if (status == LUA_OK)
			repl_print(L);
		clear_interrupt(); /* Ctrl-C ends the evaluation, not the session */
	}
	lua_settop(L, 0);
	putchar('\n');
}

/*
 * LUA_INIT_5_4, else LUA_INIT, as lua5.4 reads them: "@file" runs the
 * file, anything else is Lua code (chunk name "=LUA_INIT"). Returns 0 on
 * success, or 1 after reporting the error.
 */
static int run_lua_init(lua_State *L)
{
	const char *name = "=LUA_INIT_" LUA_VERSION_MAJOR "_" LUA_VERSION_MINOR;
	const char *init = getenv(name + 1);
	if (init == NULL) {
		name = "=LUA_INIT";
		init = getenv(name + 1);
	}
	if (init == NULL)
		return 0;
	if (init[0] == '@')
		return luachat_dofile(L, init + 1);
	return luachat_dostring(L, init, name);
}

/* Hand everything to lua/luachat/cli.lua: `luachat -p ...`, `luachat -c`. */
static int run_chat_cli(lua_State *L, const struct options *o)
{
	int i, status;
	lua_getglobal(L, "require");
	lua_pushliteral(L, "luachat.cli");
	status = luachat_pcall(L, 1, 1);
	if (status != LUA_OK)
		return EXIT_FAILURE;
	lua_getfield(L, -1, "main");
	lua_remove(L, -2);
	lua_createtable(L, o->argc, 0);
	for (i = 1; i < o->argc; i++) {
		lua_pushstring(L, o->argv[i]);
		lua_rawseti(L, -2, i);
	}
	status = luachat_pcall(L, 1, 1);
	if (status != LUA_OK)
		return EXIT_FAILURE;
	return lua_isinteger(L, -1) ? (int)lua_tointeger(L, -1) : 0;
}

struct host {
	struct options opts;
	int exit_code;
};

/* Everything that touches Lua, run under lua_pcall (the pmain pattern). */
static int pmain(lua_State *L)
{
	struct host *h = lua_touserdata(L, 1);
	struct options *o = &h->opts;
	int i;
	luaL_checkversion(L);
	luaL_openlibs(L);
	lua_pushlightuserdata(L, (void *)&interrupted);
	lua_setfield(L, LUA_REGISTRYINDEX, LCHAT_REG_INTERRUPT_FLAG);
	if (wakeup_pipe[0] >= 0) {
		lua_pushinteger(L, wakeup_pipe[0]);
		lua_setfield(L, LUA_REGISTRYINDEX, LCHAT_REG_WAKEUP_FD);
	}
	/* The engine preloaded and the Lua files first on package.path (lchat_api.c). */
	luachat_openlibsx(L, LUACHAT_LUA_FIRST);
	luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
	lua_pushcfunction(L, luaopen_luachat_readline); /* the host's own module */
	lua_setfield(L, -2, "luachat.readline");
	lua_pop(L, 1);
	lua_getglobal(L, "os");
	lua_pushcfunction(L, host_execute);
	lua_setfield(L, -2, "execute");
	lua_pop(L, 1);
	create_arg_table(L, o);
	lua_sethook(L, interrupt_hook, LUA_MASKCOUNT, HOOK_COUNT);
	h->exit_code = EXIT_FAILURE;
	if (o->version) {
		char curl_ver[340];
		printf("luachat %s\n%s\nlibcurl %s\n", LUACHAT_VERSION, LUA_RELEASE,
		       curl_version_text(curl_ver, sizeof curl_ver));
		if (!o->script && !o->interactive && o->argc == 2) {
			h->exit_code = EXIT_SUCCESS;
			return 0;
		}
	}
	/* Scripts, -e, the prompt and --tools files see the library as the global
	 * `luachat`, as the man page says; when it cannot be loaded, `require
	 * "luachat"` says why. */
	lua_getglobal(L, "require");
	lua_pushliteral(L, "luachat");
	if (lchat_pcall(L, 1, 1) == LUA_OK)
		lua_setglobal(L, "luachat");
	else
		lua_pop(L, 1);
	if (o->chat_cli) {
		h->exit_code = run_chat_cli(L, o);
		return 0;
	}
	/* As lua5.4: before -e, -l, the script and the prompt (not for the chat command line). */
	if (run_lua_init(L) != 0)
		return 0;
	for (i = 1; i < o->argc && (o->script == 0 || i < o->script); i++) {
		const char *a = o->argv[i];
		if (strcmp(a, "-e") == 0 && luachat_dostring(L, o->argv[++i], "=(command line)") != 0)
			return 0;
		if (strcmp(a, "-l") == 0 && run_require(L, o->argv[++i]) != LUA_OK)
			return 0;
	}
	if (o->script && run_script(L, o) != LUA_OK)
		return 0;
	if (o->interactive) {
		repl(L);
	} else if (o->script == 0) {
		int ran_e = 0;
		for (i = 1; i < o->argc; i++)
			if (strcmp(o->argv[i], "-e") == 0)
				ran_e = 1;
		if (!ran_e && !o->version) {
			if (isatty(STDIN_FILENO)) {
				repl(L);
			} else {
				o->stdin_script = 1;
				o->script = o->argc; /* no args */
				if (luachat_dofile(L, NULL) != 0)
					return 0;
			}
		}
	}
	h->exit_code = EXIT_SUCCESS;
	return 0;
}

static void setup_signals(void)
{
	struct sigaction sa;
	int i;
	if (pipe(wakeup_pipe) != 0) {
		wakeup_pipe[0] = wakeup_pipe[1] = -1;
	} else {
		/* Never block: the handler writes, take_interrupt drains. */
		fcntl(wakeup_pipe[0], F_SETFL, O_NONBLOCK);
		fcntl(wakeup_pipe[1], F_SETFL, O_NONBLOCK);
		fcntl(wakeup_pipe[0], F_SETFD, FD_CLOEXEC); /* not for os.execute's children */
		fcntl(wakeup_pipe[1], F_SETFD, FD_CLOEXEC);
	}
	memset(&sa, 0, sizeof sa);
	/* One handler at a time: a TERM inside the INT handler's check-then-write
	 * would be overwritten with a plain interrupt; a second TERM sees term_signal. */
	sigemptyset(&sa.sa_mask);
	sigaddset(&sa.sa_mask, SIGINT);
	sigaddset(&sa.sa_mask, SIGTERM);
	sigaddset(&sa.sa_mask, SIGHUP);
	sa.sa_handler = on_sigint;
	sigaction(SIGINT, &sa, NULL);
	sa.sa_handler = on_sigterm;
	for (i = 0; i < 2; i++) {
		int sig = i == 0 ? SIGTERM : SIGHUP;
		struct sigaction old;
		/* An ignored one stays ignored (nohup luachat ...). */
		if (sigaction(sig, NULL, &old) == 0 && old.sa_handler == SIG_IGN)
			continue;
		sigaction(sig, &sa, NULL);
	}
	signal(SIGPIPE, SIG_IGN); /* a closed stdout is an error result, not a kill */
	/* Inherited as ignored, children would be reaped by the kernel: no exit
	 * status for process:wait or os.execute, and a reaped pid left in proc.c's
	 * list for the last-resort kill. */
	signal(SIGCHLD, SIG_DFL);
}

/*
 * The host's Lua allocator: blocks up to HOST_POOL_MAX bytes come from
 * per-size free lists carved out of 64 KiB slabs (Lua passes each block's
 * size back, so blocks carry no header); bigger ones from malloc. Thousands
 * of concurrent streams make glibc's malloc walk and merge its free lists
 * (a third of the CPU at 10,000 streams); a free list pop is O(1). Small
 * blocks are reused, never handed back to the system, and all freed with
 * the pool after lua_close. Under AddressSanitizer the host keeps malloc, so
 * ASan still sees every Lua block.
 */
#define HOST_POOL_STEP 16
#define HOST_POOL_MAX 512
#define HOST_POOL_CLASSES (HOST_POOL_MAX / HOST_POOL_STEP)
#define HOST_POOL_SLAB ((size_t)64 << 10)

struct host_pool {
	void *free[HOST_POOL_CLASSES]; /* free blocks of each size, linked through their first word */
	char *cur, *end;               /* the rest of the newest slab */
	void *slabs;                   /* every slab, linked through its first word */
};

static size_t pool_class(size_t n)
{
	return (n + HOST_POOL_STEP - 1) / HOST_POOL_STEP - 1;
}

static void *pool_get(struct host_pool *p, size_t n)
{
	size_t c, size;
	void *b;
	if (n > HOST_POOL_MAX)
		return malloc(n);
	c = pool_class(n);
	if ((b = p->free[c]) != NULL) {
		p->free[c] = *(void **)b;
		return b;
	}
	size = (c + 1) * HOST_POOL_STEP;
	if (p->cur == NULL || (size_t)(p->end - p->cur) < size) {
		char *slab = malloc(HOST_POOL_SLAB);
		if (slab == NULL)
			return NULL;
		*(void **)slab = p->slabs;
		p->slabs = slab;
		p->cur = slab + HOST_POOL_STEP; /* the link, kept 16-byte aligned */
		p->end = slab + HOST_POOL_SLAB;
	}
	b = p->cur;
	p->cur += size;
	return b;
}

static void pool_put(struct host_pool *p, void *b, size_t n)
{
	size_t c;
	if (n > HOST_POOL_MAX) {
		free(b);
		return;
	}
	c = pool_class(n);
	*(void **)b = p->free[c];
	p->free[c] = b;
}

/* lua_Alloc over the pool: Lua states that a shrink never fails, so a failed move keeps the block. */
static void *host_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
	struct host_pool *p = ud;
	void *b;
	if (ptr == NULL)
		return nsize ? pool_get(p, nsize) : NULL; /* osize is a type tag here */
	if (nsize == 0) {
		pool_put(p, ptr, osize);
		return NULL;
	}
	if (osize > HOST_POOL_MAX && nsize > HOST_POOL_MAX)
		return realloc(ptr, nsize);
	if (osize <= HOST_POOL_MAX && nsize <= HOST_POOL_MAX && pool_class(osize) == pool_class(nsize))
		return ptr;
	b = pool_get(p, nsize);
	if (b == NULL)
		return nsize <= osize && osize <= HOST_POOL_MAX ? ptr : NULL;
	memcpy(b, ptr, osize < nsize ? osize : nsize);
	pool_put(p, ptr, osize);
	return b;
}

static void pool_free_all(struct host_pool *p)
{
	while (p->slabs) {
		void *next = *(void **)p->slabs;
		free(p->slabs);
		p->slabs = next;
	}
}

/* What lauxlib's luaL_newstate sets besides the allocator: a panic message, warnings off until "@on". */
static int host_panic(lua_State *L)
{
	const char *msg = lua_tostring(L, -1);
	fprintf(stderr, "PANIC: unprotected error in call to Lua API (%s)\n",
	        msg ? msg : "error object is not a string");
	return 0;
}

static void host_warn_on(void *ud, const char *message, int tocont);
static void host_warn_off(void *ud, const char *message, int tocont);

/* "@on" / "@off" switch warnings (as lauxlib does); 1 if message was one. */
static int host_warn_control(lua_State *L, const char *message, int tocont)
{
	if (tocont || *message != '@')
		return 0;
	if (strcmp(message + 1, "off") == 0)
		lua_setwarnf(L, host_warn_off, L);
	else if (strcmp(message + 1, "on") == 0)
		lua_setwarnf(L, host_warn_on, L);
	return 1;
}

static void host_warn_off(void *ud, const char *message, int tocont)
{
	host_warn_control(ud, message, tocont);
}

static void host_warn_cont(void *ud, const char *message, int tocont)
{
	fprintf(stderr, "%s", message);
	if (tocont) {
		lua_setwarnf(ud, host_warn_cont, ud);
	} else {
		fprintf(stderr, "\n");
		lua_setwarnf(ud, host_warn_on, ud);
	}
	fflush(stderr);
}

static void host_warn_on(void *ud, const char *message, int tocont)
{
	if (host_warn_control(ud, message, tocont))
		return;
	fprintf(stderr, "Lua warning: ");
	host_warn_cont(ud, message, tocont);
}

/* luaL_newstate with the pool allocator (plain luaL_newstate under ASan). */
static lua_State *host_newstate(struct host_pool *pool)
{
#if defined(__SANITIZE_ADDRESS__)
	(void)pool;
	(void)host_alloc; /* unused here: ASan must see each block */
	(void)host_panic;
	(void)host_warn_off;
	return luaL_newstate();
#else
	lua_State *L = lua_newstate(host_alloc, pool);
	if (L) {
		lua_atpanic(L, host_panic);
		lua_setwarnf(L, host_warn_off, L);
	}
	return L;
#endif
}

/*
 * Thousands of concurrent transfers need thousands of descriptors: raise the
 * soft RLIMIT_NOFILE to the hard limit, as node and Go do (the soft default,
 * 1024, exists for select(), which nothing here uses). A shell's `ulimit -n N`
 * sets both limits, so it still bounds the host; past it, a transfer fails
 * with "out of file descriptors" (failure no_fds), never a hang.
 */
static void raise_nofile_limit(void)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl); /* best effort: the old limit still works */
	}
}

int main(int argc, char **argv)
{
	static struct host_pool pool; /* zeroed: no slab yet */
	struct host h;
	lua_State *L;
	int status, code = EXIT_SUCCESS;
	memset(&h, 0, sizeof h);
	h.opts.argc = argc;
	h.opts.argv = argv;
	if (parse_options(&h.opts, &code) != 0)
		return code;
	if (h.opts.script && !h.opts.stdin_script && suggest_prompt(argv[h.opts.script]))
		return EXIT_USAGE;
	setup_signals();
	raise_nofile_limit();
	L = host_newstate(&pool);
	if (L == NULL) {
		fprintf(stderr, "%s: cannot create Lua state: not enough memory\n", PROGNAME);
		return EXIT_FAILURE;
	}
	lua_pushcfunction(L, pmain);
	lua_pushlightuserdata(L, &h);
	status = lua_pcall(L, 1, 0, 0);
	if (status != LUA_OK) {
		fprintf(stderr, "%s: %s\n", PROGNAME, lua_tostring(L, -1));
		h.exit_code = EXIT_FAILURE;
	}
	/* Finalisers run whole: the hook would cut Lua ones short while an interrupt is pending. */
	lua_sethook(L, NULL, 0, 0);
	lua_close(L); /* frees every engine and child process, so no curl handle outlives the cleanup */
	pool_free_all(&pool);
	curl_dl_cleanup();
	fflush(stdout);
	if (term_signal) {
		fflush(stderr);
		die_of_signal(term_signal); /* 128 + signal for the shell, as if never caught */
	}
	if (interrupted)
		return EXIT_INTERRUPTED;
	return h.exit_code;
}
