/*
 * poll_loop.c: an application that owns its event loop and drives luachat
 * from it.
 *
 *   cc examples/poll_loop.c $(pkg-config --cflags --libs luachat) -o poll_loop
 *   OPENAI_BASE_URL=http://127.0.0.1:8080/v1 ./poll_loop "Tell me a story."
 *
 * A luachat task (luachat.spawn) streams a completion; each piece of text
 * is handed to a C function of the application. The loop is the
 * application's: luachat is one descriptor in it (luachat_fd, its epoll
 * fd, however many connections it has open) plus a deadline
 * (luachat_next_timeout, asked every turn). Beside it the application has
 * its own sources (a heartbeat timer, and standard input when it is a
 * terminal: press Enter for a progress line); it calls poll(2), then
 * luachat.step(0) to let luachat read what arrived and resume its tasks.
 * It stops when the task is done, then prints how many chunks arrived and
 * how many turns the loop made.
 *
 * Owns: only the example. Never: calls the Lua API outside a protected
 * call, or blocks anywhere but in its own poll(2).
 */
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

#include <luachat.h>

#define HEARTBEAT_MS 200

/* The application's side of things, reached from Lua through a lightuserdata upvalue. */
struct app {
	struct pollfd fds[2];   /* luachat's one fd, then the app's own (stdin) */
	int done;               /* the task finished */
	int chunks;             /* pieces of text received */
	int chunk_turns;        /* distinct loop turns in which text arrived */
	int last_chunk_turn;
	int turns;
	int heartbeats;
	char error[1024];       /* the task's error, if it failed */
};

/* The task: stream a completion; every piece of text goes to app_chunk (C). */
static const char task_chunk[] =
	"local luachat, prompt, app_chunk = ...\n"
	"local client = luachat.client()  -- OPENAI_BASE_URL, OPENAI_API_KEY\n"
	"app_task = luachat.spawn(function()\n"
	"  local final, err = client:stream({\n"
	"    model = os.getenv('LUACHAT_MODEL') or 'gpt-4o-mini',\n"
	"    messages = { { role = 'user', content = prompt } },\n"
	"  }, function(chunk)\n"
	"    local text = luachat.delta_text(chunk)\n"
	"    if text ~= '' then app_chunk(text) end\n"
	"  end)\n"
	"  if not final then error(err, 0) end  -- nothing arrived\n"
	"  if err then io.stderr:write('poll_loop: ', tostring(err), '\\n') end  -- cut short\n"
	"  return final\n"
	"end)\n";

static long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* app_chunk(text): called from the luachat task as text arrives. */
static int l_app_chunk(lua_State *L)
{
	struct app *app = lua_touserdata(L, lua_upvalueindex(1));
	size_t len;
	const char *text = luaL_checklstring(L, 1, &len);
	fwrite(text, 1, len, stdout);
	fflush(stdout);
	app->chunks++;
	if (app->last_chunk_turn != app->turns) {
		app->last_chunk_turn = app->turns;
		app->chunk_turns++;
	}
	return 0;
}

/* Under lua_pcall: libraries, luachat, then the task started from task_chunk. */
static int start_task(lua_State *L)
{
	struct app *app = lua_touserdata(L, 1);
	const char *prompt = lua_touserdata(L, 2);
	luaL_openlibs(L);
	luachat_openlibs(L);
	luaL_requiref(L, "luachat", luaopen_luachat, 1);
	if (luaL_loadbuffer(L, task_chunk, sizeof task_chunk - 1, "=poll_loop") != LUA_OK)
		return lua_error(L);
	lua_pushvalue(L, -2);          /* luachat */
	lua_pushstring(L, prompt);
	lua_pushlightuserdata(L, app);
	lua_pushcclosure(L, l_app_chunk, 1);
	lua_call(L, 3, 0);
	return 0;
}

/* Under lua_pcall: luachat.step(0), then whether the task is done (and its error). */
static int step(lua_State *L)
{
	struct app *app = lua_touserdata(L, 1);
	lua_getglobal(L, "luachat");
	lua_getfield(L, -1, "step");
	lua_pushinteger(L, 0);
	lua_call(L, 1, 2);
	if (lua_isnil(L, -2))
		return luaL_error(L, "luachat.step: %s", luaL_tolstring(L, -1, NULL));
	lua_pop(L, 2);
	lua_getglobal(L, "app_task");
	lua_getfield(L, -1, "is_done");
	lua_pushvalue(L, -2);
	lua_call(L, 1, 1);
	app->done = lua_toboolean(L, -1);
	lua_pop(L, 1);
	if (app->done) {
		lua_getfield(L, -1, "wait"); /* done: returns at once, final or nil, err */
		lua_pushvalue(L, -2);
		lua_call(L, 1, 2);
		if (lua_isnil(L, -2))
			snprintf(app->error, sizeof app->error, "%s", luaL_tolstring(L, -1, NULL));
	}
	return 0;
}

/* Run fn(app) under lua_pcall; on error print it and return -1. */
static int protect(lua_State *L, lua_CFunction fn, struct app *app)
{
	lua_pushcfunction(L, fn);
	lua_pushlightuserdata(L, app);
	if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
		fprintf(stderr, "poll_loop: %s\n", lua_tostring(L, -1));
		lua_pop(L, 1);
		return -1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	static struct app app;
	const char *prompt = argc > 1 ? argv[1] : "Tell me a very short story.";
	int watch_stdin = isatty(STDIN_FILENO);
	long next_beat;
	lua_State *L = luaL_newstate();
	if (L == NULL)
		return EXIT_FAILURE;
	app.last_chunk_turn = -1;
	lua_pushcfunction(L, start_task);
	lua_pushlightuserdata(L, &app);
	lua_pushlightuserdata(L, (void *)prompt);
	if (lua_pcall(L, 2, 0, 0) != LUA_OK) {
		fprintf(stderr, "poll_loop: %s\n", lua_tostring(L, -1));
		lua_close(L);
		return EXIT_FAILURE;
	}
	next_beat = now_ms() + HEARTBEAT_MS;
	/* luachat's one descriptor: the same for the whole run, whatever it has open. */
	app.fds[0].fd = luachat_fd(L);
	app.fds[0].events = POLLIN;
	if (app.fds[0].fd < 0)
		goto fail;
	if (protect(L, step, &app) != 0) /* the task may have finished at once */
		goto fail;
	while (!app.done) {
		int n = 1, wait, until_beat, own = -1;
		long timeout_ms = luachat_next_timeout(L); /* -1: no deadline of luachat's */
		app.fds[0].revents = 0;
		if (watch_stdin) { /* the app's own source, beside luachat's */
			own = n++;
			app.fds[own].fd = STDIN_FILENO;
			app.fds[own].events = POLLIN;
			app.fds[own].revents = 0;
		}
		until_beat = (int)(next_beat - now_ms());
		if (until_beat < 0)
			until_beat = 0;
		wait = timeout_ms < 0 || timeout_ms > until_beat ? until_beat : (int)timeout_ms;
		app.turns++;
		if (poll(app.fds, (nfds_t)n, wait) < 0) {
			perror("poll_loop: poll");
			goto fail;
		}
		if (own >= 0 && (app.fds[own].revents & (POLLIN | POLLHUP))) {
			char line[256];
			if (fgets(line, sizeof line, stdin) == NULL)
				watch_stdin = 0;
			else
				fprintf(stderr, "[%d chunks after %d turns]\n", app.chunks, app.turns);
		}
		if (now_ms() >= next_beat) {
			app.heartbeats++;
			next_beat = now_ms() + HEARTBEAT_MS;
		}
		/* Whatever woke poll, let luachat look: it reads its sockets, runs timeouts, resumes tasks. */
		if (protect(L, step, &app) != 0)
			goto fail;
	}
	printf("\n-- %d chunks in %d loop turns (%d of them brought text), %d heartbeats\n",
	       app.chunks, app.turns, app.chunk_turns, app.heartbeats);
	lua_close(L);
	if (app.error[0]) {
		fprintf(stderr, "poll_loop: %s\n", app.error);
		return EXIT_FAILURE;
	}
	return EXIT_SUCCESS;
fail:
	lua_close(L);
	return EXIT_FAILURE;
}
