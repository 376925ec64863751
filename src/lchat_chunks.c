/*
 * lchat_chunks.c: the fast path from queued SSE events to stream chunks.
 *
 * Owns: t:drain(acc, fn) and t:next_chunk(acc), which take plain chunks
 * (chunk_scan.h) off a streaming transfer's queue, append their text to the
 * Lua accumulator's own part lists, and hand each one on as a lazy chunk:
 * a table that decodes its JSON on first access, so a script that only
 * wants luachat.delta_text and the final message never pays for a decode
 * (and once a script does read fields, that stream's chunks come decoded).
 * Also luachat.delta_text and the lazy chunk's metamethods.
 * Never: decides an accumulation rule (luachat.stream owns them; a chunk
 * that needs one is left on the queue for Lua), or calls Lua while a curl
 * frame is on the stack (we only run from a Lua call).
 */
#include <string.h>

#include "lchat.h"
#include "chunk_scan.h"

/* Private keys of a lazy chunk (light userdata: no script can spell them). */
static const char key_raw = 'r';  /* the chunk's JSON text */
static const char key_text = 't'; /* choices[1].delta.content, when non-empty */
#define KEY_RAW ((void *)&key_raw)
#define KEY_TEXT ((void *)&key_text)

/* Stack slots of t:drain and t:next_chunk. */
enum { S_T = 1, S_ACC, S_FN, S_MSGH, S_BYINDEX, S_TOP = S_BYINDEX };

static void push_decoded(lua_State *L, int json);

/* Decode a lazy chunk in place: its fields become real, its metatable goes. */
void lchat_chunk_materialize(lua_State *L, int idx)
{
	idx = lua_absindex(L, idx);
	luaL_checkstack(L, 6, "materializing a chunk");
	lua_rawgetp(L, idx, KEY_RAW);
	if (lua_type(L, -1) != LUA_TSTRING) { /* already decoded */
		lua_pop(L, 1);
		return;
	}
	push_decoded(L, -1);
	lua_remove(L, -2);
	lua_pushnil(L);
	lua_rawsetp(L, idx, KEY_RAW);
	lua_pushnil(L);
	lua_rawsetp(L, idx, KEY_TEXT);
	lua_pushnil(L);
	while (lua_next(L, -2)) {
		lua_pushvalue(L, -2);
		lua_insert(L, -2);
		lua_rawset(L, idx);
	}
	lua_pop(L, 1);
	lua_pushnil(L);
	lua_setmetatable(L, idx);
}

int lchat_is_lazy_chunk(lua_State *L, int idx)
{
	int lazy;
	if (!lua_getmetatable(L, idx))
		return 0;
	luaL_getmetatable(L, LCHAT_LAZY_CHUNK_MT);
	lazy = lua_rawequal(L, -1, -2);
	lua_pop(L, 2);
	return lazy;
}

/* __index(t, k): decode, then look again. */
static int l_lazy_index(lua_State *L)
{
	lchat_chunk_materialize(L, 1);
	lua_settop(L, 2);
	lua_rawget(L, 1);
	return 1;
}

/* __newindex(t, k, v): decode first, so the write is not lost under decoded fields. */
static int l_lazy_newindex(lua_State *L)
{
	lchat_chunk_materialize(L, 1);
	lua_settop(L, 3);
	lua_rawset(L, 1);
	return 0;
}

/* The iterator of __pairs: next(t, k), independent of the global 'next'. */
static int l_lazy_next(lua_State *L)
{
	luaL_checktype(L, 1, LUA_TTABLE);
	lua_settop(L, 2);
	if (lua_next(L, 1))
		return 2;
	lua_pushnil(L);
	return 1;
}

/* __pairs(t): decode, then iterate as a plain table. */
static int l_lazy_pairs(lua_State *L)
{
	lchat_chunk_materialize(L, 1);
	lua_pushcfunction(L, l_lazy_next);
	lua_pushvalue(L, 1);
	lua_pushnil(L);
	return 3;
}

/* delta_text(chunk) -> choices[1].delta.content, or "" when it has none. */
static int l_delta_text(lua_State *L)
{
	if (lua_type(L, 1) != LUA_TTABLE) {
		lua_pushliteral(L, "");
		return 1;
	}
	if (lua_rawgetp(L, 1, KEY_RAW) == LUA_TSTRING) { /* lazy: the scanner kept the text */
		if (lua_rawgetp(L, 1, KEY_TEXT) != LUA_TSTRING)
			lua_pushliteral(L, "");
		return 1;
	}
	lua_settop(L, 1);
	if (lua_getfield(L, 1, "choices") == LUA_TTABLE && lua_geti(L, -1, 1) == LUA_TTABLE &&
	    lua_getfield(L, -1, "delta") == LUA_TTABLE && lua_getfield(L, -1, "content") == LUA_TSTRING)
		return 1;
	lua_pushliteral(L, "");
	return 1;
}

/* Push a scanned string as a Lua string (decoding escapes in a Lua-owned buffer). */
static void push_text(lua_State *L, const struct chunk_text *t)
{
	luaL_Buffer b;
	if (!t->escaped) {
		lua_pushlstring(L, t->p, t->len);
		return;
	}
	chunk_unescape(t, luaL_buffinitsize(L, &b, t->len));
	luaL_pushresultsize(&b, chunk_unescape(t, b.b));
}

/* parts[#parts + 1] = the string on top (kept on the stack); field names the parts list in st. */
static void append_part(lua_State *L, int st, const char *field)
{
	if (lua_getfield(L, st, field) == LUA_TTABLE) {
		lua_pushvalue(L, -2);
		lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
	}
	lua_pop(L, 1);
}

/* Append scanned text t, when present, to st's parts list field. */
static void append_text(lua_State *L, int st, const char *field, const struct chunk_text *t)
{
	if (t->p == NULL)
		return;
	push_text(L, t);
	append_part(L, st, field);
	lua_pop(L, 1);
}

/* Head fields the accumulator still lacks (a plain chunk must not carry one). */
static unsigned head_missing(lua_State *L)
{
	static const struct { const char *field; unsigned bit; } head[] = {
		{ "id", CHUNK_HEAD_ID }, { "model", CHUNK_HEAD_MODEL },
		{ "created", CHUNK_HEAD_CREATED }, { "fingerprint", CHUNK_HEAD_FINGERPRINT },
	};
	unsigned missing = 0;
	for (size_t i = 0; i < sizeof head / sizeof head[0]; i++) {
		if (lua_getfield(L, S_ACC, head[i].field) == LUA_TNIL)
			missing |= head[i].bit;
		lua_pop(L, 1);
	}
	return missing;
}

/*
 * Whether the accumulator can take this chunk without a rule: its choice and
 * tool call already exist there, and it sets nothing that is set only once.
 * Pushes the choice state (or nil) and, for a tool fragment, the call.
 */
static int fits(lua_State *L, const struct chunk_scan *sc, unsigned missing)
{
	if (sc->head & missing)
		return 0;
	if (!sc->has_choice)
		return 1;
	if (lua_rawgeti(L, S_BYINDEX, sc->choice_index) != LUA_TTABLE)
		return 0;
	if (sc->has_role) {
		int unset = lua_getfield(L, -1, "role") == LUA_TNIL;
		lua_pop(L, 1);
		if (unset)
			return 0;
	}
	if (sc->has_args) {
		if (lua_getfield(L, -1, "call_by_index") != LUA_TTABLE ||
		    lua_rawgeti(L, -1, sc->tool_index) != LUA_TTABLE)
			return 0;
		lua_remove(L, -2);
	}
	return 1;
}

/* Apply a chunk that fits: text appended where Acc:add would put it. Leaves the text on top. */
static void apply(lua_State *L, const struct chunk_scan *sc)
{
	int st;
	lua_pushnil(L); /* delta_text, replaced below */
	if (!sc->has_choice)
		return;
	st = lua_gettop(L) - 1;
	if (sc->has_args) { /* the stack holds st, call (see fits) */
		int call = st--;
		append_text(L, call, "args", &sc->args);
		lua_pushvalue(L, call);
		lua_setfield(L, st, "last_call");
	}
	append_text(L, st, "refusal", &sc->refusal);
	append_text(L, st, "reasoning", &sc->reasoning);
	if (sc->content.p) {
		push_text(L, &sc->content);
		append_part(L, st, "content");
		lua_replace(L, -2);
	}
}

/* Mark the accumulator changed (its cached result is stale). */
static void touch(lua_State *L)
{
	lua_pushnil(L);
	lua_setfield(L, S_ACC, "cache");
}

/* Push the JSON string at index json decoded (a plain chunk, so the decoder accepts it). */
static void push_decoded(lua_State *L, int json)
{
	json = lua_absindex(L, json);
	luaL_getmetatable(L, LCHAT_LAZY_CHUNK_MT);
	lua_getfield(L, -1, "decode");
	lua_replace(L, -2);
	lua_pushvalue(L, json);
	lua_call(L, 1, 2);
	if (lua_type(L, -2) != LUA_TTABLE)
		luaL_error(L, "luachat: a stream chunk could not be decoded: %s", lua_tostring(L, -1));
	lua_pop(L, 1);
}

/*
 * Lazy chunks pay off only while the script does not read their fields.
 * Once it has decoded one (the last chunk handed out lost its lazy
 * metatable), hand this stream's plain chunks out decoded.
 */
static void update_eager(lua_State *L, struct lchat_transfer *lt)
{
	if (lt->eager)
		return;
	if (lua_getiuservalue(L, S_T, LCHAT_UV_LAST_CHUNK) == LUA_TTABLE && !lchat_is_lazy_chunk(L, -1)) {
		lt->eager = 1;
		lua_pushnil(L);
		lua_setiuservalue(L, S_T, LCHAT_UV_LAST_CHUNK);
	}
	lua_pop(L, 1);
}

/*
 * Take the next queued event if it is a plain chunk that fits; push the
 * chunk (lazy, or decoded once the script reads fields) and return 1, or
 * push nothing and return 0 (the event stays queued).
 */
static int take_plain(lua_State *L, struct lchat_transfer *lt, unsigned missing)
{
	struct lchat_event ev;
	struct chunk_scan sc;
	int base = lua_gettop(L);
	update_eager(L, lt);
	if (!lchat_transfer_copy_next(L, lt, &ev)) /* base + 1: the chunk's JSON, ours to read */
		return 0;
	if (lt->t == NULL || ev.type_len != 0 || !chunk_scan(ev.data, ev.data_len, &sc) ||
	    !fits(L, &sc, missing)) {
		lua_settop(L, base);
		return 0; /* left queued for the Lua path */
	}
	lchat_transfer_pop(lt, &ev); /* taken: an error below cannot hand it out twice */
	apply(L, &sc);
	if (lt->eager) {
		push_decoded(L, base + 1);
	} else {
		lua_createtable(L, 0, 2);
		lua_pushvalue(L, base + 1);
		lua_rawsetp(L, -2, KEY_RAW);
		if (lua_type(L, -2) == LUA_TSTRING) {
			lua_pushvalue(L, -2);
			lua_rawsetp(L, -2, KEY_TEXT);
		}
		luaL_setmetatable(L, LCHAT_LAZY_CHUNK_MT);
		lua_pushvalue(L, -1);
		lua_setiuservalue(L, S_T, LCHAT_UV_LAST_CHUNK);
	}
	lua_replace(L, base + 1);
	lua_settop(L, base + 1);
	return 1;
}

/* Fill S_MSGH (nil) and S_BYINDEX from the accumulator at S_ACC (argument acc_arg). */
static void push_slots(lua_State *L, int acc_arg)
{
	lua_settop(L, S_FN);
	lua_pushnil(L); /* S_MSGH, set by drain */
	if (lua_getfield(L, S_ACC, "by_index") != LUA_TTABLE)
		luaL_argerror(L, acc_arg, "a luachat.stream accumulator expected");
}

/* Checks shared by drain and next_chunk; leaves the stack as S_T..S_TOP. */
static struct lchat_transfer *prepare(lua_State *L, int with_fn)
{
	struct lchat_transfer *lt = lchat_check_open_transfer(L, S_T);
	luaL_checktype(L, S_ACC, LUA_TTABLE);
	if (with_fn)
		luaL_checktype(L, S_FN, LUA_TFUNCTION);
	push_slots(L, S_ACC);
	return lt;
}

/* Message handler: a traceback for strings, other error values as they are (as debug.traceback). */
static int msgh(lua_State *L)
{
	if (lua_type(L, 1) == LUA_TSTRING || lua_isnoneornil(L, 1))
		luaL_traceback(L, L, lua_tostring(L, 1), 1);
	return 1;
}

/*
 * After fn returned (or resumed after a yield): the number of results to
 * return (stop on false, or on an error), or -1 to go on draining.
 */
static int drain_check(lua_State *L, int status, lua_Integer n)
{
	if (status != LUA_OK && status != LUA_YIELD) {
		lua_pushliteral(L, "error");
		lua_pushinteger(L, n);
		lua_rotate(L, -3, 2); /* status, n, error */
		return 3;
	}
	if (lua_isboolean(L, -1) && !lua_toboolean(L, -1)) {
		lua_pushliteral(L, "stop");
		lua_pushinteger(L, n);
		return 2;
	}
	lua_settop(L, S_TOP);
	return -1;
}

static int drain_loop(lua_State *L, lua_Integer n);

static int drain_cont(lua_State *L, int status, lua_KContext ctx)
{
	int r = drain_check(L, status, (lua_Integer)ctx);
	return r >= 0 ? r : drain_loop(L, (lua_Integer)ctx);
}

static int drain_loop(lua_State *L, lua_Integer n)
{
	unsigned missing = head_missing(L); /* only the Lua path changes it */
	for (;;) {
		struct lchat_transfer *lt = lchat_check_transfer(L, S_T);
		int r;
		if (lt->t == NULL) { /* closed by fn */
			lua_pushliteral(L, "closed");
			lua_pushinteger(L, n);
			return 2;
		}
		if (!take_plain(L, lt, missing)) {
			struct lchat_event ev;
			if (lt->t == NULL) /* closed by a finalizer */
				lua_pushliteral(L, "closed");
			else
				lua_pushstring(L, lchat_transfer_peek(lt, &ev) ? "slow" : "empty");
			lua_pushinteger(L, n);
			return 2;
		}
		touch(L);
		n++;
		lua_pushvalue(L, S_FN);
		lua_insert(L, -2);
		r = drain_check(L, lua_pcallk(L, 1, 1, S_MSGH, (lua_KContext)n, drain_cont), n);
		if (r >= 0)
			return r;
	}
}

/*
 * t:drain(acc, fn) -> status, n [, err]: call fn(chunk) for each plain chunk
 * at the head of the queue. status: "empty" (queue empty), "slow" (the next
 * event is for Lua), "stop" (fn returned false), "error" (fn raised; err has
 * its traceback), "closed" (fn closed the transfer). n: chunks handed to fn.
 * fn may yield (a task waiting inside its callback).
 */
static int l_transfer_drain(lua_State *L)
{
	prepare(L, 1);
	lua_pushcfunction(L, msgh);
	lua_replace(L, S_MSGH);
	return drain_loop(L, 0);
}

/* t:next_chunk(acc) -> the next plain chunk, or nil when the next event is for Lua (or none). */
static int l_transfer_next_chunk(lua_State *L)
{
	struct lchat_transfer *lt;
	lua_settop(L, 2);
	lt = prepare(L, 0);
	if (!take_plain(L, lt, head_missing(L)))
		return 0;
	touch(L);
	return 1;
}

/*
 * core.accumulate_plain(acc, json) -> whether json was a plain chunk that fit
 * and is now in acc; nothing changes otherwise. For tests and fuzzers: the
 * Lua path (decode + Acc:add) must give the same accumulated result.
 */
static int l_accumulate_plain(lua_State *L)
{
	struct chunk_scan sc;
	size_t n;
	const char *s;
	luaL_checktype(L, 1, LUA_TTABLE);
	luaL_checktype(L, 2, LUA_TSTRING);
	lua_settop(L, 2);
	lua_rotate(L, 1, 1); /* acc to slot S_ACC; the text takes S_T (there is no transfer) */
	s = lua_tolstring(L, 1, &n);
	push_slots(L, 1);
	if (!chunk_scan(s, n, &sc) || !fits(L, &sc, head_missing(L))) {
		lua_pushboolean(L, 0);
		return 1;
	}
	apply(L, &sc);
	touch(L);
	lua_pushboolean(L, 1);
	return 1;
}

const luaL_Reg lchat_chunk_methods[] = {
	{ "drain", l_transfer_drain },
	{ "next_chunk", l_transfer_next_chunk },
	{ NULL, NULL }
};

void lchat_chunks_register(lua_State *L, int mod, int decode)
{
	static const luaL_Reg meta[] = {
		{ "__index", l_lazy_index },
		{ "__newindex", l_lazy_newindex },
		{ "__pairs", l_lazy_pairs },
		{ NULL, NULL }
	};
	decode = lua_absindex(L, decode);
	mod = lua_absindex(L, mod);
	if (luaL_newmetatable(L, LCHAT_LAZY_CHUNK_MT)) {
		luaL_setfuncs(L, meta, 0);
		lua_pushvalue(L, decode);
		lua_setfield(L, -2, "decode");
		/* Protected: scripts cannot edit it, nor swap it (which would lose the fields). */
		lua_pushliteral(L, LCHAT_LAZY_CHUNK_MT);
		lua_setfield(L, -2, "__metatable");
	}
	lua_pop(L, 1);
	lua_pushcfunction(L, l_delta_text);
	lua_setfield(L, mod, "delta_text");
	lua_pushcfunction(L, l_accumulate_plain);
	lua_setfield(L, mod, "accumulate_plain");
}
