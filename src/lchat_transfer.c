/*
 * lchat_transfer.c: the luachat.Transfer userdata (one HTTP request).
 *
 * Owns: the Lua face of an http_transfer: starting it from a request table,
 * handing queued SSE events to Lua, its result table, cancel/close. A
 * running transfer is pinned in the engine's pin table (a user value of the
 * engine) so the GC cannot take it while curl writes into it.
 * Never: calls Lua from a curl callback (all curl work is in http.c), or
 * keeps malloc'ed memory live across a call that can raise.
 */
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "lchat.h"

/* User value of a transfer: 1 = the engine userdata. */
#define UV_ENGINE 1

struct lchat_transfer *lchat_check_transfer(lua_State *L, int i)
{
	return luaL_checkudata(L, i, LCHAT_TRANSFER_MT);
}

struct lchat_transfer *lchat_check_open_transfer(lua_State *L, int i)
{
	struct lchat_transfer *lt = lchat_check_transfer(L, i);
	if (lt->t == NULL)
		luaL_error(L, "attempt to use a closed transfer");
	return lt;
}

/* Drop the pin of the transfer at index i (no-op if not pinned). */
static void unpin(lua_State *L, int i, struct lchat_transfer *lt)
{
	if (lt->ref == LUA_NOREF)
		return;
	i = lua_absindex(L, i);
	lua_getiuservalue(L, i, UV_ENGINE);
	if (lua_getiuservalue(L, -1, LCHAT_UV_PINS) == LUA_TTABLE)
		luaL_unref(L, -1, lt->ref);
	lua_pop(L, 2);
	lt->ref = LUA_NOREF;
}

/* Seconds a timeout may be (luachat.options.MAX_SECONDS, about 31 years). */
#define LCHAT_MAX_SECONDS 1e9

/*
 * A field in seconds as milliseconds. NaN, infinities and values whose
 * milliseconds a long cannot hold are refused here: converting them to long
 * is undefined behaviour (and in practice turned a timeout off).
 */
static long field_ms(lua_State *L, int t, const char *name)
{
	lua_Number s, max = LCHAT_MAX_SECONDS;
	lua_getfield(L, t, name);
	s = luaL_optnumber(L, -1, 0);
	lua_pop(L, 1);
	if ((double)LONG_MAX / 1000.0 < max)
		max = (double)LONG_MAX / 1000.0;
	if (!(s >= 0 && s <= max)) /* NaN fails both */
		luaL_error(L, "field '%s' must be between 0 and %f seconds", name, (double)max);
	return (long)(s * 1000.0);
}

static size_t field_size(lua_State *L, int t, const char *name)
{
	lua_Integer n;
	lua_getfield(L, t, name);
	n = luaL_optinteger(L, -1, 0);
	lua_pop(L, 1);
	if (n < 0)
		luaL_error(L, "field '%s' must not be negative", name);
	return (size_t)n;
}

static const char *field_string(lua_State *L, int t, const char *name, int required)
{
	const char *s;
	int ty = lua_getfield(L, t, name);
	if (ty == LUA_TNIL && !required) {
		lua_pop(L, 1);
		return NULL;
	}
	if (ty != LUA_TSTRING)
		luaL_error(L, "field '%s' must be a string", name);
	s = lua_tostring(L, -1);
	lua_pop(L, 1); /* the request table keeps the string alive */
	return s;
}

/*
 * The body file of a request table (its fields body_file, body_prefix,
 * body_suffix) into bf; 0 when it has none. body_file is an open Lua file
 * handle (io.open, io.tmpfile) of a regular file: its buffered writes are
 * flushed, http_start dups its descriptor, and the handle may be closed
 * while the transfer runs. The strings stay in the request table.
 */
static int body_file_field(lua_State *L, int t, struct http_request *req, struct http_body_file *bf)
{
	luaL_Stream *fs;
	struct stat st;
	if (lua_getfield(L, t, "body_file") == LUA_TNIL) {
		lua_pop(L, 1);
		if (field_string(L, t, "body_prefix", 0) || field_string(L, t, "body_suffix", 0))
			return luaL_error(L, "fields 'body_prefix' and 'body_suffix' need 'body_file'");
		return 0;
	}
	fs = luaL_testudata(L, -1, LUA_FILEHANDLE);
	if (fs == NULL)
		return luaL_error(L, "field 'body_file' must be a file handle (io.open)");
	if (fs->closef == NULL)
		return luaL_error(L, "field 'body_file' is a closed file");
	lua_pop(L, 1); /* the request table keeps the handle alive */
	if (req->body)
		return luaL_error(L, "fields 'body' and 'body_file' cannot both be given (see 'body_prefix')");
	fflush(fs->f); /* what the script wrote and stdio still holds */
	bf->fd = fileno(fs->f);
	if (bf->fd < 0 || fstat(bf->fd, &st) != 0 || !S_ISREG(st.st_mode))
		return luaL_error(L, "field 'body_file' must be a regular file");
	/* Checked here, not found out after the headers went (io.open(p, "wb")). */
	if ((fcntl(bf->fd, F_GETFL) & O_ACCMODE) == O_WRONLY)
		return luaL_error(L, "field 'body_file' must be open for reading");
	req->body = field_string(L, t, "body_prefix", 0);
	if (req->body) {
		lua_getfield(L, t, "body_prefix");
		req->body_len = lua_rawlen(L, -1);
		lua_pop(L, 1);
	}
	bf->suffix = field_string(L, t, "body_suffix", 0);
	if (bf->suffix) {
		lua_getfield(L, t, "body_suffix");
		bf->suffix_len = lua_rawlen(L, -1);
		lua_pop(L, 1);
	}
	req->body_file = bf;
	return 1;
}

/*
 * core.start(req) -> transfer | nil, err.  Upvalue 1: the engine.
 * Headers are gathered in a Lua-owned array so nothing malloc'ed is live
 * while the table reads below can raise.
 */
int lchat_transfer_start(lua_State *L)
{
	struct lchat_engine *eng = lua_touserdata(L, lua_upvalueindex(1));
	struct http_request req;
	struct http_body_file bf;
	struct lchat_transfer *lt;
	const char **headers = NULL;
	char err[256];
	size_t i, n = 0;
	luaL_checktype(L, 1, LUA_TTABLE);
	lua_settop(L, 1);
	if (eng->http == NULL)
		return luaL_error(L, "attempt to use a closed engine");
	memset(&req, 0, sizeof req);
	memset(&bf, 0, sizeof bf);
	req.method = field_string(L, 1, "method", 0);
	req.url = field_string(L, 1, "url", 1);
	req.body = field_string(L, 1, "body", 0);
	if (req.body) {
		lua_getfield(L, 1, "body");
		req.body_len = lua_rawlen(L, -1);
		lua_pop(L, 1);
	}
	body_file_field(L, 1, &req, &bf);
	req.ca_file = field_string(L, 1, "ca_file", 0);
	lua_getfield(L, 1, "stream");
	req.stream = lua_toboolean(L, -1);
	lua_pop(L, 1);
	req.timeout_ms = field_ms(L, 1, "timeout");
	req.connect_timeout_ms = field_ms(L, 1, "connect_timeout");
	req.idle_timeout_ms = field_ms(L, 1, "idle_timeout");
	req.max_body = field_size(L, 1, "max_body");
	req.max_event = field_size(L, 1, "max_event");
	if (lua_getfield(L, 1, "headers") == LUA_TTABLE) { /* stack: 2 = headers */
		n = lua_rawlen(L, 2);
		headers = lua_newuserdatauv(L, (n ? n : 1) * sizeof *headers, 0); /* 3 */
		for (i = 0; i < n; i++) {
			if (lua_rawgeti(L, 2, (lua_Integer)i + 1) != LUA_TSTRING)
				return luaL_error(L, "header %d must be a string \"Name: value\"", (int)i + 1);
			headers[i] = lua_tostring(L, -1);
			lua_pop(L, 1); /* still referenced by the headers table */
		}
	} else if (!lua_isnil(L, 2)) {
		return luaL_error(L, "field 'headers' must be a list of strings");
	}
	req.headers = headers;
	req.nheaders = n;

	/* Create the object closed, then acquire: a memory error leaves nothing half-made. */
	lt = lua_newuserdatauv(L, sizeof *lt, 1);
	lt->t = NULL;
	lt->ref = LUA_NOREF;
	lt->ev_off = 0;
	lt->popped = 0;
	luaL_setmetatable(L, LCHAT_TRANSFER_MT);
	lua_pushvalue(L, lua_upvalueindex(1));
	lua_setiuservalue(L, -2, UV_ENGINE);
	/* Pin before starting, so a memory error here cannot orphan a running transfer. */
	lua_getiuservalue(L, lua_upvalueindex(1), LCHAT_UV_PINS);
	lua_pushvalue(L, -2);
	lt->ref = luaL_ref(L, -2);
	lua_pop(L, 1);
	lt->t = http_start(eng->http, &req, err, sizeof err);
	if (lt->t == NULL) {
		unpin(L, -1, lt);
		lua_pushnil(L);
		lchat_err_push(L, "network", err, 0);
		return 2;
	}
	http_set_owner(lt->t, lt);
	return 1;
}

void lchat_transfer_push_ready(lua_State *L, int engine_idx, struct http_transfer *t)
{
	struct lchat_transfer *lt = http_owner(t);
	engine_idx = lua_absindex(L, engine_idx);
	lua_getiuservalue(L, engine_idx, LCHAT_UV_PINS);
	lua_rawgeti(L, -1, lt->ref);
	lua_remove(L, -2);
	if (http_state(t) != HTTP_RUNNING)
		unpin(L, -1, lt);
}

/* Point *ev at the event record starting at p. */
static void parse_record(const char *p, struct lchat_event *ev)
{
	uint32_t tl, dl;
	memcpy(&tl, p, 4);
	memcpy(&dl, p + 4 + tl, 4);
	ev->type = p + 4;
	ev->type_len = tl;
	ev->data = p + 8 + tl;
	ev->data_len = dl;
	ev->size = 8 + (size_t)tl + dl;
}

int lchat_transfer_peek(struct lchat_transfer *lt, struct lchat_event *ev)
{
	const struct buf *q;
	if (lt->t == NULL)
		return 0;
	q = http_events(lt->t);
	if (lt->ev_off >= q->len)
		return 0;
	parse_record(q->data + lt->ev_off, ev);
	return 1;
}

/*
 * Any Lua allocation may run a GC step, and so finalizers, which may close,
 * poll or drain this very transfer (freeing or moving its queue). So the
 * record (for a message event, just its data) is copied into a Lua string
 * first (lua_pushlstring copies before its GC step) and everything after
 * reads the copy.
 */
int lchat_transfer_copy_next(lua_State *L, struct lchat_transfer *lt, struct lchat_event *ev)
{
	for (;;) {
		struct lchat_event q;
		unsigned long popped = lt->popped;
		if (!lchat_transfer_peek(lt, &q))
			return 0;
		if (q.type_len == 0) /* the usual message event: its data is the copy */
			lua_pushlstring(L, q.data, q.data_len);
		else
			lua_pushlstring(L, q.type - 4, q.size);
		if (lt->t != NULL && lt->popped != popped) { /* taken meanwhile: the copy is stale */
			lua_pop(L, 1);
			continue;
		}
		if (q.type_len == 0) {
			*ev = q;
			ev->data = lua_tostring(L, -1);
		} else {
			parse_record(lua_tostring(L, -1), ev);
		}
		return 1;
	}
}

void lchat_transfer_pop(struct lchat_transfer *lt, const struct lchat_event *ev)
{
	if (lt->t == NULL) /* closed meanwhile: the queue is gone */
		return;
	lt->popped++;
	lt->ev_off += ev->size;
	if (lt->ev_off >= http_events(lt->t)->len) {
		lt->ev_off = 0;
		http_events_consumed(lt->t);
	}
}

/* Replace the record copy on top with the event: a string (message) or {event=, data=}. */
static void push_event(lua_State *L, const struct lchat_event *ev)
{
	if (ev->type_len == 0) {
		lua_pushlstring(L, ev->data, ev->data_len);
	} else {
		lua_createtable(L, 0, 2);
		lua_pushlstring(L, ev->type, ev->type_len);
		lua_setfield(L, -2, "event");
		lua_pushlstring(L, ev->data, ev->data_len);
		lua_setfield(L, -2, "data");
	}
	lua_replace(L, -2);
}

/* t:take() -> list of events, or nil when none are queued. Resumes a paused transfer. */
static int l_transfer_take(lua_State *L)
{
	struct lchat_transfer *lt = lchat_check_open_transfer(L, 1);
	struct lchat_event ev;
	lua_Integer n = 0;
	lua_settop(L, 1);
	lua_createtable(L, 16, 0);
	while (lchat_transfer_copy_next(L, lt, &ev)) {
		push_event(L, &ev);
		lua_rawseti(L, 2, ++n);
		lchat_transfer_pop(lt, &ev);
	}
	if (n == 0)
		lua_pushnil(L);
	return 1;
}

/* t:take_one() -> the next event (string, or {event=, data=}), or nil when none is queued. */
static int l_transfer_take_one(lua_State *L)
{
	struct lchat_transfer *lt = lchat_check_open_transfer(L, 1);
	struct lchat_event ev;
	if (!lchat_transfer_copy_next(L, lt, &ev)) {
		lua_pushnil(L);
		return 1;
	}
	push_event(L, &ev);
	lchat_transfer_pop(lt, &ev);
	return 1;
}

/* t:has_events() -> whether an event is queued */
static int l_transfer_has_events(lua_State *L)
{
	struct lchat_transfer *lt = lchat_check_open_transfer(L, 1);
	struct lchat_event ev;
	lua_pushboolean(L, lchat_transfer_peek(lt, &ev));
	return 1;
}

/* t:done() -> boolean */
static int l_transfer_done(lua_State *L)
{
	struct lchat_transfer *lt = lchat_check_transfer(L, 1);
	lua_pushboolean(L, lt->t == NULL || http_state(lt->t) != HTTP_RUNNING);
	return 1;
}

static void set_string_field(lua_State *L, const char *name, const char *value)
{
	if (value[0] != '\0') {
		lua_pushstring(L, value);
		lua_setfield(L, -2, name);
	}
}

/* t:result() -> table describing the outcome so far (see docs/DESIGN.md). */
static int l_transfer_result(lua_State *L)
{
	struct lchat_transfer *lt = lchat_check_open_transfer(L, 1);
	const struct http_result *r = http_result(lt->t);
	const struct buf *body = http_body(lt->t);
	lua_createtable(L, 0, 18);
	if (http_state(lt->t) != HTTP_RUNNING && r->failure != HTTP_OK) {
		lua_pushstring(L, http_failure_name(r->failure));
		lua_setfield(L, -2, "failure");
		lua_pushstring(L, r->message);
		lua_setfield(L, -2, "message");
	}
	lua_pushboolean(L, http_state(lt->t) != HTTP_RUNNING);
	lua_setfield(L, -2, "done");
	lua_pushinteger(L, r->status);
	lua_setfield(L, -2, "status");
	set_string_field(L, "request_id", r->request_id);
	set_string_field(L, "content_type", r->content_type);
	set_string_field(L, "retry_after", r->retry_after);
	set_string_field(L, "retry_after_ms", r->retry_after_ms);
	set_string_field(L, "should_retry", r->should_retry);
	set_string_field(L, "location", r->location);
	set_string_field(L, "mcp_session_id", r->mcp_session_id);
	set_string_field(L, "ratelimit_remaining_requests", r->rl_remaining_requests);
	set_string_field(L, "ratelimit_remaining_tokens", r->rl_remaining_tokens);
	set_string_field(L, "ratelimit_reset_requests", r->rl_reset_requests);
	set_string_field(L, "ratelimit_reset_tokens", r->rl_reset_tokens);
	lua_pushlstring(L, body->data ? body->data : "", body->len);
	lua_setfield(L, -2, "body");
	lua_pushboolean(L, http_is_sse(lt->t));
	lua_setfield(L, -2, "sse");
	lua_pushboolean(L, r->body_started);
	lua_setfield(L, -2, "body_started");
	lua_pushinteger(L, (lua_Integer)r->bytes_received);
	lua_setfield(L, -2, "bytes");
	lua_pushnumber(L, r->seconds);
	lua_setfield(L, -2, "seconds");
	return 1;
}

/* t:cancel(): stop a running transfer (kept readable: result() says "cancelled"). */
static int l_transfer_cancel(lua_State *L)
{
	struct lchat_transfer *lt = lchat_check_transfer(L, 1);
	if (lt->t) {
		http_cancel(lt->t);
		unpin(L, 1, lt);
	}
	return 0;
}

/* t:close(), __gc, __close: cancel and free; idempotent. */
static int l_transfer_close(lua_State *L)
{
	struct lchat_transfer *lt = lchat_check_transfer(L, 1);
	if (lt->t) {
		http_free(lt->t);
		lt->t = NULL;
	}
	unpin(L, 1, lt);
	return 0;
}

static int l_transfer_tostring(lua_State *L)
{
	struct lchat_transfer *lt = lchat_check_transfer(L, 1);
	if (lt->t == NULL)
		lua_pushliteral(L, "luachat.Transfer (closed)");
	else
		lua_pushfstring(L, "luachat.Transfer (%s, %p)",
		                http_state(lt->t) == HTTP_RUNNING ? "running" : "done", (void *)lt);
	return 1;
}

void lchat_transfer_open(lua_State *L)
{
	static const luaL_Reg methods[] = {
		{ "take", l_transfer_take },
		{ "take_one", l_transfer_take_one },
		{ "has_events", l_transfer_has_events },
		{ "done", l_transfer_done },
		{ "result", l_transfer_result },
		{ "cancel", l_transfer_cancel },
		{ "close", l_transfer_close },
		{ NULL, NULL }
	};
	static const luaL_Reg meta[] = {
		{ "__gc", l_transfer_close },
		{ "__close", l_transfer_close },
		{ "__tostring", l_transfer_tostring },
		{ NULL, NULL }
	};
	if (luaL_newmetatable(L, LCHAT_TRANSFER_MT)) {
		luaL_setfuncs(L, meta, 0);
		luaL_newlib(L, methods);
		lua_setfield(L, -2, "__index");
	}
	lua_pop(L, 1);
}
