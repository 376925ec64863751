/*
 * lchat_json.c: JSON that round-trips chat payloads exactly.
 *
 * Owns: decoding through a private lua-cjson instance plus fix-ups (cjson
 * 2.1.0 makes every number a float and every `[]` an empty table), and
 * luachat's own encoder (exact integers, shortest round-trip floats, marked
 * empty arrays, null, error paths).
 * Never: keeps malloc'ed memory live across a call that can raise (the
 * encoder's scratch is a Lua-owned box with __gc), or keeps state in C globals.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "lchat.h"
#include "lchat_json.h"

#define JSON_MAX_DEPTH 1000
#define JSON_EMPTY_ARRAY_MARKER "\\u0000luachat:[]"  /* as written into the text */
#define JSON_EMPTY_ARRAY_VALUE "\0luachat:[]"        /* as cjson decodes it */
#define JSON_EMPTY_ARRAY_VALUE_LEN 11
#define JSON_SCRATCH_MT "luachat.JSONScratch"

/* Upvalues of json_decode / json_encode. */
#define UV_DECODE 1   /* the private cjson instance's decode */
#define UV_ARRAY_MT 2
#define UV_OBJECT_MT 3

/* ---------------------------------------------------------------- decode */

/* Is there a `[` followed by optional blanks and `]` anywhere (strings included)? memchr-fast. */
static int may_have_empty_array(const char *s, size_t n)
{
	const char *p = s, *end = s + n;
	while ((p = memchr(p, '[', (size_t)(end - p))) != NULL) {
		p++;
		while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
			p++;
		if (p < end && *p == ']')
			return 1;
	}
	return 0;
}

/* Does the text hold an empty array `[ ]` outside strings? Cheap, no allocation. */
static int has_empty_array(const char *s, size_t n)
{
	size_t i = 0;
	if (!may_have_empty_array(s, n))
		return 0; /* the common case: no string-aware scan needed */
	while (i < n) {
		char c = s[i++];
		if (c == '"') {
			while (i < n && s[i] != '"')
				i += s[i] == '\\' ? 2 : 1;
			i++;
		} else if (c == '[') {
			size_t j = i;
			while (j < n && (s[j] == ' ' || s[j] == '\t' || s[j] == '\n' || s[j] == '\r'))
				j++;
			if (j < n && s[j] == ']')
				return 1;
		}
	}
	return 0;
}

/* Push a copy of the text with every empty array holding one marker string. */
static void push_marked_text(lua_State *L, const char *s, size_t n)
{
	luaL_Buffer b;
	size_t i = 0, run = 0;
	luaL_buffinit(L, &b);
	while (i < n) {
		char c = s[i];
		if (c == '"') {
			size_t j = i + 1;
			while (j < n && s[j] != '"')
				j += s[j] == '\\' ? 2 : 1;
			i = j + 1;
			continue;
		}
		i++;
		if (c == '[') {
			size_t j = i;
			while (j < n && (s[j] == ' ' || s[j] == '\t' || s[j] == '\n' || s[j] == '\r'))
				j++;
			if (j < n && s[j] == ']') {
				luaL_addlstring(&b, s + run, i - run); /* up to and including '[' */
				luaL_addstring(&b, "\"" JSON_EMPTY_ARRAY_MARKER "\"");
				run = j; /* resume at ']' */
				i = j;
			}
		}
	}
	if (i > n)
		i = n;
	luaL_addlstring(&b, s + run, n - run);
	luaL_pushresult(&b);
}

static int is_marker(lua_State *L, int idx)
{
	size_t len;
	const char *s;
	if (lua_type(L, idx) != LUA_TSTRING)
		return 0;
	s = lua_tolstring(L, idx, &len);
	return len == JSON_EMPTY_ARRAY_VALUE_LEN && memcmp(s, JSON_EMPTY_ARRAY_VALUE, len) == 0;
}

/*
 * Walk a decoded table: integral floats become integers, marked empty
 * arrays become empty tables with the array metatable. Returns 0, or -1 when
 * a number overflowed to inf (`1e999`): nothing could send it back. Stack-neutral.
 */
static int fix_up(lua_State *L, int t, int marked, int depth)
{
	t = lua_absindex(L, t);
	if (depth > JSON_MAX_DEPTH + 8)
		return 0; /* cjson refused deeper input already */
	luaL_checkstack(L, 4, "JSON too deeply nested");
	if (marked && lua_rawlen(L, t) == 1) {
		lua_rawgeti(L, t, 1);
		if (is_marker(L, -1)) {
			lua_pop(L, 1);
			lua_pushnil(L);
			lua_rawseti(L, t, 1);
			lua_pushvalue(L, lua_upvalueindex(UV_ARRAY_MT));
			lua_setmetatable(L, t);
			return 0;
		}
		lua_pop(L, 1);
	}
	lua_pushnil(L);
	while (lua_next(L, t) != 0) {
		int ty = lua_type(L, -1);
		if (ty == LUA_TNUMBER && !lua_isinteger(L, -1)) {
			lua_Number v = lua_tonumber(L, -1);
			if (v == floor(v) && fabs(v) < 9007199254740992.0) { /* 2^53: exact */
				lua_pushvalue(L, -2);
				lua_pushinteger(L, (lua_Integer)v);
				lua_rawset(L, t); /* assigning an existing field is allowed during lua_next */
			} else if (isinf(v)) {
				lua_pop(L, 2);
				return -1;
			}
		} else if (ty == LUA_TTABLE && fix_up(L, -1, marked, depth + 1) != 0) {
			lua_pop(L, 2);
			return -1;
		}
		lua_pop(L, 1);
	}
	return 0;
}

/* json_decode(s) -> value | nil, "invalid JSON: ... at character N" */
static int l_json_decode(lua_State *L)
{
	size_t n;
	const char *s = luaL_checklstring(L, 1, &n);
	int marked = has_empty_array(s, n);
	lua_settop(L, 1);
	lua_pushvalue(L, lua_upvalueindex(UV_DECODE));
	if (marked)
		push_marked_text(L, s, n);
	else
		lua_pushvalue(L, 1);
	if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
		if (marked) { /* report positions in the caller's text, not the marked copy */
			lua_pop(L, 1);
			lua_pushvalue(L, lua_upvalueindex(UV_DECODE));
			lua_pushvalue(L, 1);
			if (lua_pcall(L, 1, 1, 0) == LUA_OK)
				lua_pushliteral(L, "malformed");
		}
		lua_pushnil(L);
		lua_pushfstring(L, "invalid JSON: %s", lua_isstring(L, -2) ? lua_tostring(L, -2) : "?");
		return 2;
	}
	if (lua_type(L, -1) == LUA_TTABLE) {
		if (fix_up(L, -1, marked, 0) != 0)
			goto out_of_range;
	} else if (lua_type(L, -1) == LUA_TNUMBER && !lua_isinteger(L, -1)) {
		lua_Number v = lua_tonumber(L, -1);
		if (isinf(v))
			goto out_of_range;
		if (v == floor(v) && fabs(v) < 9007199254740992.0) {
			lua_pop(L, 1);
			lua_pushinteger(L, (lua_Integer)v);
		}
	}
	return 1;
out_of_range:
	lua_pushnil(L);
	lua_pushliteral(L, "invalid JSON: a number is out of range (beyond 1.8e308)");
	return 2;
}

/* ---------------------------------------------------------------- encode */

/* Lua-owned scratch: freed by __gc if an error unwinds the encoder. */
struct scratch {
	char *p;
	size_t len, cap;
};

struct path_step {
	const char *key; /* NULL: an array index */
	size_t keylen;
	lua_Integer index;
};

struct encoder {
	lua_State *L;
	struct scratch *out;
	int sort_keys;
	int depth;
	struct path_step path[JSON_MAX_DEPTH + 1];
};

static int l_scratch_gc(lua_State *L)
{
	struct scratch *s = luaL_checkudata(L, 1, JSON_SCRATCH_MT);
	free(s->p);
	s->p = NULL;
	return 0;
}

static void grow(struct encoder *e, size_t extra)
{
	struct scratch *s = e->out;
	size_t need = s->len + extra, cap = s->cap ? s->cap : 256;
	char *p;
	if (need <= s->cap)
		return;
	while (cap < need)
		cap *= 2;
	p = realloc(s->p, cap);
	if (p == NULL)
		luaL_error(e->L, "not enough memory to encode JSON");
	s->p = p;
	s->cap = cap;
}

static void put(struct encoder *e, const char *p, size_t n)
{
	grow(e, n);
	memcpy(e->out->p + e->out->len, p, n);
	e->out->len += n;
}

static void put_char(struct encoder *e, char c)
{
	if (e->out->len == e->out->cap)
		grow(e, 1);
	e->out->p[e->out->len++] = c;
}

/* "$.messages[2].content" for error messages. */
static const char *push_path(struct encoder *e)
{
	luaL_Buffer b;
	int i;
	luaL_buffinit(e->L, &b);
	luaL_addchar(&b, '$');
	for (i = 0; i < e->depth; i++) {
		const struct path_step *st = &e->path[i];
		if (e->depth > 12 && i == 6) { /* deep (a cycle): the head and the tail say enough */
			luaL_addstring(&b, "...");
			i = e->depth - 4;
			st = &e->path[i];
		}
		if (st->key == NULL && st->index == 0)
			continue; /* a level whose first member is not reached yet */
		if (st->key) {
			luaL_addchar(&b, '.');
			luaL_addlstring(&b, st->key, st->keylen > 64 ? 64 : st->keylen);
		} else {
			char num[32];
			snprintf(num, sizeof num, "[%lld]", (long long)st->index);
			luaL_addstring(&b, num);
		}
	}
	luaL_pushresult(&b);
	return lua_tostring(e->L, -1);
}

static int encode_error(struct encoder *e, const char *what)
{
	const char *path = push_path(e);
	return luaL_error(e->L, "cannot encode %s at %s", what, path);
}

static void put_string(struct encoder *e, const char *s, size_t n)
{
	static const char hex[] = "0123456789abcdef";
	size_t i, run = 0;
	grow(e, n + 2);
	put_char(e, '"');
	for (i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		const char *esc = NULL;
		char u[6];
		if (c >= 0x20 && c != '"' && c != '\\')
			continue;
		switch (c) {
		case '"': esc = "\\\""; break;
		case '\\': esc = "\\\\"; break;
		case '\n': esc = "\\n"; break;
		case '\r': esc = "\\r"; break;
		case '\t': esc = "\\t"; break;
		case '\b': esc = "\\b"; break;
		case '\f': esc = "\\f"; break;
		default:
			u[0] = '\\'; u[1] = 'u'; u[2] = '0'; u[3] = '0';
			u[4] = hex[c >> 4]; u[5] = hex[c & 15];
		}
		put(e, s + run, i - run);
		if (esc)
			put(e, esc, strlen(esc));
		else
			put(e, u, 6);
		run = i + 1;
	}
	put(e, s + run, n - run);
	put_char(e, '"');
}

static void put_number(struct encoder *e, int idx)
{
	char num[40];
	int len;
	if (lua_isinteger(e->L, idx)) {
		len = snprintf(num, sizeof num, LUA_INTEGER_FMT, (LUAI_UACINT)lua_tointeger(e->L, idx));
	} else {
		lua_Number v = lua_tonumber(e->L, idx);
		if (isnan(v) || isinf(v))
			encode_error(e, isnan(v) ? "NaN" : "an infinite number");
		/* The shortest of %.15g..%.17g that reads back as the same double. */
		len = snprintf(num, sizeof num, "%.15g", (double)v);
		if (strtod(num, NULL) != v)
			len = snprintf(num, sizeof num, "%.16g", (double)v);
		if (strtod(num, NULL) != v)
			len = snprintf(num, sizeof num, "%.17g", (double)v);
	}
	put(e, num, (size_t)len);
}

static void encode_value(struct encoder *e, int idx);

/* Is the table a sequence 1..n (n > 0)? Returns n, 0 if empty, -1 if not a sequence. */
static lua_Integer sequence_length(lua_State *L, int t)
{
	lua_Integer count = 0, max = 0;
	lua_pushnil(L);
	while (lua_next(L, t) != 0) {
		lua_pop(L, 1);
		if (lua_isinteger(L, -1) && lua_tointeger(L, -1) >= 1) {
			lua_Integer k = lua_tointeger(L, -1);
			if (k > max)
				max = k;
			count++;
		} else {
			lua_pop(L, 1);
			return -1;
		}
	}
	return count == max ? count : -1;
}

static void encode_array(struct encoder *e, int t, lua_Integer n)
{
	lua_Integer i;
	put_char(e, '[');
	for (i = 1; i <= n; i++) {
		if (i > 1)
			put_char(e, ',');
		e->path[e->depth - 1].key = NULL;
		e->path[e->depth - 1].index = i;
		lua_rawgeti(e->L, t, i);
		encode_value(e, -1);
		lua_pop(e->L, 1);
	}
	put_char(e, ']');
}

/* The key at idx (a copy the caller pushed) as a string; integer keys are converted in place. */
static const char *object_key(struct encoder *e, int idx, size_t *len)
{
	int ty = lua_type(e->L, idx);
	if (ty == LUA_TSTRING || (ty == LUA_TNUMBER && lua_isinteger(e->L, idx)))
		return lua_tolstring(e->L, idx, len);
	encode_error(e, lua_pushfstring(e->L, "a table key of type %s", luaL_typename(e->L, idx)));
	return NULL;
}

static int compare_keys(const void *a, const void *b)
{
	const struct path_step *x = a, *y = b;
	size_t n = x->keylen < y->keylen ? x->keylen : y->keylen;
	int c = memcmp(x->key, y->key, n);
	return c ? c : (x->keylen > y->keylen) - (x->keylen < y->keylen);
}

static void encode_object(struct encoder *e, int t)
{
	lua_State *L = e->L;
	int first = 1;
	put_char(e, '{');
	if (!e->sort_keys) {
		lua_pushnil(L);
		while (lua_next(L, t) != 0) {
			size_t klen;
			const char *k;
			/* Keep the original key for lua_next; encode from a copy. */
			lua_pushvalue(L, -2);
			k = object_key(e, -1, &klen);
			if (!first)
				put_char(e, ',');
			first = 0;
			put_string(e, k, klen);
			put_char(e, ':');
			e->path[e->depth - 1].key = k;
			e->path[e->depth - 1].keylen = klen;
			encode_value(e, -2);
			lua_pop(L, 2);
		}
	} else {
		/* Collect string keys into a Lua table (keeps them alive), sort pointers in a box. */
		lua_Integer n = 0, i;
		struct path_step *keys;
		int kt;
		lua_newtable(L);
		kt = lua_gettop(L);
		lua_pushnil(L);
		while (lua_next(L, t) != 0) {
			size_t klen;
			lua_pop(L, 1);
			lua_pushvalue(L, -1);
			object_key(e, -1, &klen);
			lua_rawseti(L, kt, ++n);
		}
		keys = lua_newuserdatauv(L, (size_t)(n ? n : 1) * sizeof *keys, 0);
		for (i = 0; i < n; i++) {
			lua_rawgeti(L, kt, i + 1);
			keys[i].key = lua_tolstring(L, -1, &keys[i].keylen);
			keys[i].index = i + 1;
			lua_pop(L, 1); /* still referenced by kt */
		}
		qsort(keys, (size_t)n, sizeof *keys, compare_keys);
		for (i = 0; i < n; i++) {
			if (i > 0)
				put_char(e, ',');
			put_string(e, keys[i].key, keys[i].keylen);
			put_char(e, ':');
			e->path[e->depth - 1] = keys[i];
			lua_rawgeti(L, kt, keys[i].index);
			if (lua_rawget(L, t) == LUA_TNIL) { /* an integer key stored as string */
				lua_pop(L, 1);
				lua_pushinteger(L, (lua_Integer)strtoll(keys[i].key, NULL, 10));
				lua_rawget(L, t);
			}
			encode_value(e, -1);
			lua_pop(L, 1);
		}
		lua_pop(L, 2);
	}
	put_char(e, '}');
}

static void encode_table(struct encoder *e, int t)
{
	lua_State *L = e->L;
	lua_Integer n;
	if (e->depth >= JSON_MAX_DEPTH)
		encode_error(e, "a table nested too deeply (a cycle?)");
	luaL_checkstack(L, 6, "JSON too deeply nested");
	/* No member yet at this level: an error before the first one names the table itself. */
	e->path[e->depth].key = NULL;
	e->path[e->depth].index = 0;
	e->depth++;
	if (lchat_is_lazy_chunk(L, t))
		lchat_chunk_materialize(L, t);
	if (lua_getmetatable(L, t)) {
		int array = lua_rawequal(L, -1, lua_upvalueindex(UV_ARRAY_MT));
		int object = lua_rawequal(L, -1, lua_upvalueindex(UV_OBJECT_MT));
		lua_pop(L, 1);
		if (array) {
			encode_array(e, t, (lua_Integer)lua_rawlen(L, t));
			e->depth--;
			return;
		}
		if (object) {
			encode_object(e, t);
			e->depth--;
			return;
		}
	}
	n = sequence_length(L, t);
	if (n > 0)
		encode_array(e, t, n);
	else
		encode_object(e, t);
	e->depth--;
}

static void encode_value(struct encoder *e, int idx)
{
	lua_State *L = e->L;
	idx = lua_absindex(L, idx);
	switch (lua_type(L, idx)) {
	case LUA_TSTRING: {
		size_t n;
		const char *s = lua_tolstring(L, idx, &n);
		put_string(e, s, n);
		break;
	}
	case LUA_TNUMBER:
		put_number(e, idx);
		break;
	case LUA_TBOOLEAN:
		if (lua_toboolean(L, idx))
			put(e, "true", 4);
		else
			put(e, "false", 5);
		break;
	case LUA_TTABLE:
		encode_table(e, idx);
		break;
	case LUA_TLIGHTUSERDATA:
		if (lua_touserdata(L, idx) == NULL) { /* json.null (cjson's null) */
			put(e, "null", 4);
			break;
		}
		/* fall through */
	default:
		encode_error(e, lua_pushfstring(L, "a %s", luaL_typename(L, idx)));
	}
}

/* json_encode(value [, {sort_keys=true}]) -> string; raises on values JSON cannot hold. */
static int l_json_encode(lua_State *L)
{
	struct encoder *e;
	int sort = 0;
	luaL_checkany(L, 1);
	if (lua_type(L, 2) == LUA_TTABLE) {
		lua_getfield(L, 2, "sort_keys");
		sort = lua_toboolean(L, -1);
		lua_pop(L, 1);
	}
	lua_settop(L, 1);
	e = lua_newuserdatauv(L, sizeof *e, 0); /* 2: the encoder state (path stack is big) */
	e->L = L;
	e->sort_keys = sort;
	e->depth = 0;
	e->out = lua_newuserdatauv(L, sizeof *e->out, 0); /* 3: the scratch box */
	e->out->p = NULL;
	e->out->len = e->out->cap = 0;
	luaL_setmetatable(L, JSON_SCRATCH_MT);
	encode_value(e, 1);
	lua_pushlstring(L, e->out->p, e->out->len);
	free(e->out->p); /* free now rather than at the next GC */
	e->out->p = NULL;
	return 1;
}

/* Fetch a private cjson instance (its settings are ours alone) and its decode. */
static void push_cjson_decode(lua_State *L)
{
	lua_getglobal(L, "require");
	lua_pushliteral(L, "cjson");
	lua_call(L, 1, 1);
	lua_getfield(L, -1, "new");
	lua_call(L, 0, 1);
	lua_getfield(L, -1, "decode_invalid_numbers");
	lua_pushboolean(L, 0);
	lua_call(L, 1, 0);
	lua_getfield(L, -1, "decode_max_depth");
	lua_pushinteger(L, JSON_MAX_DEPTH);
	lua_call(L, 1, 0);
	lua_getfield(L, -1, "decode");
	lua_getfield(L, -3, "null"); /* cjson.null, to check it is NULL */
	if (lua_type(L, -1) != LUA_TLIGHTUSERDATA || lua_touserdata(L, -1) != NULL)
		luaL_error(L, "luachat: unexpected lua-cjson: cjson.null is not a NULL lightuserdata");
	lua_pop(L, 1);
	lua_replace(L, -3);
	lua_pop(L, 1);
}

void lchat_json_register(lua_State *L)
{
	int mod = lua_gettop(L);
	if (luaL_newmetatable(L, JSON_SCRATCH_MT)) {
		lua_pushcfunction(L, l_scratch_gc);
		lua_setfield(L, -2, "__gc");
	}
	lua_pop(L, 1);
	push_cjson_decode(L);                       /* upvalue 1 */
	lua_newtable(L);                            /* upvalue 2: array_mt */
	lua_pushliteral(L, "array");
	lua_setfield(L, -2, "__jsontype");
	lua_newtable(L);                            /* upvalue 3: object_mt */
	lua_pushliteral(L, "object");
	lua_setfield(L, -2, "__jsontype");
	lua_pushvalue(L, -2);
	lua_setfield(L, mod, "json_array_mt");
	lua_pushvalue(L, -1);
	lua_setfield(L, mod, "json_object_mt");
	lua_pushvalue(L, -3);
	lua_pushvalue(L, -3);
	lua_pushvalue(L, -3);
	lua_pushcclosure(L, l_json_encode, 3);
	lua_setfield(L, mod, "json_encode");
	lua_pushcclosure(L, l_json_decode, 3);
	lchat_chunks_register(L, mod, -1);
	lua_setfield(L, mod, "json_decode");
	lua_pushlightuserdata(L, NULL);
	lua_setfield(L, mod, "json_null");
	lua_settop(L, mod);
}
