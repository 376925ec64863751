/*
 * lchat_json.c: JSON that round-trips chat payloads exactly.
 *
 * Owns: luachat's own decoder (strict RFC 8259; integers stay integers, `[]`
 * becomes an empty table carrying the array metatable, -0.0 stays a float,
 * lone surrogate escapes become U+FFFD, or their WTF-8 bytes at a string's
 * edges for streams to join) and encoder (exact integers, shortest
 * round-trip floats, marked arrays, null, error paths). Neither ever drops
 * data: what it cannot represent faithfully is an error naming where.
 * Never: marks anything in band (inside the data), keeps malloc'ed memory
 * live across a call that can raise (the encoder's scratch is a Lua-owned
 * box with __gc), or keeps state in C globals.
 */
#include <locale.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>

#include "buf.h"
#include "json_hex.h"
#include "json_run.h"
#include "lchat.h"
#include "lchat_json.h"

#define JSON_MAX_DEPTH 1000
#define JSON_SCRATCH_MT "luachat.JSONScratch"
#define JSON_EXACT 9007199254740992.0 /* 2^53: integral floats below it become integers */
#define JSON_SPARSE_SAFE 10           /* an array may have holes up to this index... */
#define JSON_SPARSE_RATIO 2           /* ...or up to this many times its element count */

/* Upvalues of json_decode / json_encode. */
#define UV_ARRAY_MT 1
#define UV_OBJECT_MT 2
#define UV_STR_CACHE 3   /* json_decode only: struct str_cache (userdata) */
#define UV_STR_ANCHOR 4  /* json_decode only: the cached strings, slot i at index i + 1 */

/*
 * Short strings seen lately (object keys, "chat.completion.chunk", ids): a
 * decoded string equal to a cached one is pushed from the cache instead of
 * being hashed and interned again by lua_pushlstring, which was a sixth of a
 * stream's decoding. Direct-mapped; the strings are anchored in the
 * UV_STR_ANCHOR table, so the pointers stay valid while cached. A cached
 * string is the same Lua value lua_pushlstring would give: nothing changes
 * for the caller.
 */
#define STR_CACHE_SLOTS 256
#define STR_CACHE_MAX 40 /* Lua's short strings (LUAI_MAXSHORTLEN): longer ones are not interned */
struct str_cache {
	struct { const char *s; size_t len; } slot[STR_CACHE_SLOTS];
};

/* ---------------------------------------------------------------- decode */

struct decoder {
	lua_State *L;
	const char *s, *p, *end;
	int wtf8;          /* lone surrogates at a string's edges keep their WTF-8 bytes */
	int depth;
	const char *error; /* what went wrong (static), at error_at */
	const char *error_at;
};

static int decode_value(struct decoder *d);

/* Record the first error; returns -1 for the caller to pass up. */
static int decode_fail(struct decoder *d, const char *what, const char *at)
{
	d->error = what;
	d->error_at = at;
	return -1;
}

static void skip_blanks(struct decoder *d)
{
	while (d->p < d->end && (*d->p == ' ' || *d->p == '\n' || *d->p == '\r' || *d->p == '\t'))
		d->p++;
}

static int hex4(const char *p, const char *end, unsigned *v)
{
	return end - p < 4 ? -1 : json_hex4(p, v);
}

/* UTF-8 (or, for a surrogate, WTF-8) of cp into b. */
static void add_utf8(luaL_Buffer *b, unsigned cp)
{
	char u[4];
	size_t n;
	if (cp < 0x80) {
		u[0] = (char)cp;
		n = 1;
	} else if (cp < 0x800) {
		u[0] = (char)(0xC0 | (cp >> 6));
		u[1] = (char)(0x80 | (cp & 0x3F));
		n = 2;
	} else if (cp < 0x10000) {
		u[0] = (char)(0xE0 | (cp >> 12));
		u[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
		u[2] = (char)(0x80 | (cp & 0x3F));
		n = 3;
	} else {
		u[0] = (char)(0xF0 | (cp >> 18));
		u[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
		u[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
		u[3] = (char)(0x80 | (cp & 0x3F));
		n = 4;
	}
	luaL_addlstring(b, u, n);
}

/*
 * The \u escape at p (inside a string whose body starts at body) into b;
 * returns the bytes consumed, or 0 when it is invalid. A pair becomes its
 * character. A lone half becomes U+FFFD, except in wtf8 mode a high half
 * ending the string or a low half starting it: its partner may be at the
 * other side of a stream chunk, so it keeps its WTF-8 bytes for the
 * accumulator to join (lua/luachat/stream.lua).
 */
static size_t decode_escape_u(struct decoder *d, luaL_Buffer *b, const char *p, const char *body)
{
	unsigned cp, lo;
	if (hex4(p + 2, d->end, &cp) != 0)
		return 0;
	if (cp >= 0xD800 && cp <= 0xDBFF) {
		if (d->end - p >= 12 && p[6] == '\\' && p[7] == 'u' && hex4(p + 8, d->end, &lo) == 0 &&
		    lo >= 0xDC00 && lo <= 0xDFFF) {
			add_utf8(b, 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00));
			return 12;
		}
		add_utf8(b, d->wtf8 && d->end - p > 6 && p[6] == '"' ? cp : 0xFFFD);
		return 6;
	}
	if (cp >= 0xDC00 && cp <= 0xDFFF)
		cp = d->wtf8 && p == body ? cp : 0xFFFD;
	add_utf8(b, cp);
	return 6;
}

/* Push the string s[0..len) (len <= STR_CACHE_MAX), from the cache when it holds it. */
static void push_short_string(lua_State *L, const char *s, size_t len)
{
	struct str_cache *c = lua_touserdata(L, lua_upvalueindex(UV_STR_CACHE));
	unsigned h = len ? ((unsigned)len * 31u + (unsigned char)s[0] * 7u +
	                    (unsigned char)s[len / 2] * 3u + (unsigned char)s[len - 1]) % STR_CACHE_SLOTS : 0;
	if (c->slot[h].s && c->slot[h].len == len && memcmp(c->slot[h].s, s, len) == 0) {
		lua_rawgeti(L, lua_upvalueindex(UV_STR_ANCHOR), (lua_Integer)h + 1);
		return;
	}
	lua_pushlstring(L, s, len);
	lua_pushvalue(L, -1);
	lua_rawseti(L, lua_upvalueindex(UV_STR_ANCHOR), (lua_Integer)h + 1);
	c->slot[h].s = lua_tostring(L, -1);
	c->slot[h].len = len;
}

/* The string at d->p (on its opening quote): push it. */
static int decode_string(struct decoder *d)
{
	lua_State *L = d->L;
	const char *open = d->p, *body = d->p + 1, *p = body, *run;
	luaL_Buffer b;
	p = json_run(p, d->end, 0); /* the common case: no escape */
	if (p >= d->end)
		return decode_fail(d, "unterminated string", open);
	if (*p == '"') {
		size_t len = (size_t)(p - body);
		if (len <= STR_CACHE_MAX)
			push_short_string(L, body, len);
		else
			lua_pushlstring(L, body, len);
		d->p = p + 1;
		return 0;
	}
	luaL_buffinit(L, &b);
	run = body;
	for (;;) {
		char esc = 0;
		size_t used = 2;
		p = json_run(p, d->end, 0);
		if (p >= d->end)
			return decode_fail(d, "unterminated string", open);
		luaL_addlstring(&b, run, (size_t)(p - run));
		if (*p == '"')
			break;
		if (d->end - p < 2)
			return decode_fail(d, "unterminated string", open);
		switch (p[1]) {
		case '"': esc = '"'; break;
		case '\\': esc = '\\'; break;
		case '/': esc = '/'; break;
		case 'b': esc = '\b'; break;
		case 'f': esc = '\f'; break;
		case 'n': esc = '\n'; break;
		case 'r': esc = '\r'; break;
		case 't': esc = '\t'; break;
		case 'u':
			used = decode_escape_u(d, &b, p, body);
			if (used == 0)
				return decode_fail(d, "invalid \\u escape", p);
			break;
		default:
			return decode_fail(d, "invalid escape", p);
		}
		if (esc)
			luaL_addchar(&b, esc);
		p += used;
		run = p;
	}
	luaL_pushresult(&b);
	d->p = p + 1;
	return 0;
}

static int is_digit(char c)
{
	return c >= '0' && c <= '9';
}

/*
 * The number at d->p: push it. An integer literal that fits 64 bits is that
 * integer; -0 is the float -0.0; other integral values within 2^53 become
 * integers (1.0 -> 1, 1e2 -> 100); beyond the double range is an error.
 */
static int decode_number(struct decoder *d)
{
	lua_State *L = d->L;
	const char *start = d->p, *p = d->p;
	int negative = 0, fraction = 0;
	size_t len;
	lua_Number v;
	if (*p == '-') {
		negative = 1;
		p++;
	}
	if (p >= d->end || !is_digit(*p))
		return decode_fail(d, "invalid number", start);
	if (*p == '0')
		p++;
	else
		while (p < d->end && is_digit(*p))
			p++;
	if (p < d->end && *p == '.') {
		fraction = 1;
		if (++p >= d->end || !is_digit(*p))
			return decode_fail(d, "invalid number", start);
		while (p < d->end && is_digit(*p))
			p++;
	}
	if (p < d->end && (*p == 'e' || *p == 'E')) {
		fraction = 1;
		p++;
		if (p < d->end && (*p == '+' || *p == '-'))
			p++;
		if (p >= d->end || !is_digit(*p))
			return decode_fail(d, "invalid number", start);
		while (p < d->end && is_digit(*p))
			p++;
	}
	d->p = p;
	len = (size_t)(p - start);
	if (!fraction && len - (size_t)negative <= 18) { /* fits: no conversion needed */
		lua_Integer i = 0;
		const char *q;
		for (q = start + negative; q < p; q++)
			i = i * 10 + (*q - '0');
		if (negative && i == 0)
			lua_pushnumber(L, -0.0);
		else
			lua_pushinteger(L, negative ? -i : i);
		return 0;
	}
	if (len <= 200) { /* Lua's own conversion: exact integers, locale-proof */
		char num[201];
		memcpy(num, start, len);
		num[len] = '\0';
		if (lua_stringtonumber(L, num) == 0)
			return decode_fail(d, "invalid number", start);
		if (lua_isinteger(L, -1))
			return 0;
		v = lua_tonumber(L, -1);
		lua_pop(L, 1);
	} else { /* longer than Lua converts: strtod on a Lua-owned copy */
		char *num = lua_newuserdatauv(L, len + 1, 0), *dot;
		memcpy(num, start, len);
		num[len] = '\0';
		if ((dot = memchr(num, '.', len)) != NULL)
			*dot = lua_getlocaledecpoint();
		v = (lua_Number)strtod(num, NULL);
		lua_pop(L, 1);
	}
	if (isinf(v))
		return decode_fail(d, "a number is out of range (beyond 1.8e308)", NULL);
	if (v == floor(v) && fabs(v) < JSON_EXACT && !(v == 0 && signbit(v)))
		lua_pushinteger(L, (lua_Integer)v);
	else
		lua_pushnumber(L, v);
	return 0;
}

static int decode_literal(struct decoder *d, const char *word, size_t n)
{
	if ((size_t)(d->end - d->p) < n || memcmp(d->p, word, n) != 0)
		return decode_fail(d, "expected a value", d->p);
	d->p += n;
	return 0;
}

/*
 * Arrays and objects are built in one allocation each: their values (an
 * object's keys and values) are gathered on the Lua stack, and the table is
 * made at the closing bracket with its exact size, instead of growing (and
 * rehashing) at each insertion as lua_newtable + rawset would: a stream chunk
 * is four to seven small tables. Past DECODE_BATCH items the table is made
 * then and filled as it grows, so a large array never needs a large stack.
 */
#define DECODE_BATCH 32

/* Enter an array or object (d->p on its bracket); nothing is pushed yet. */
static int open_container(struct decoder *d)
{
	if (++d->depth > JSON_MAX_DEPTH)
		return decode_fail(d, "too deeply nested (over 1000 levels)", d->p);
	d->p++;
	skip_blanks(d);
	return 0;
}

/*
 * [-(n*width), +1] Make the table for the n items gathered above stack slot
 * base (width 2: key-value pairs of an object; 1: array elements, indices 1..n)
 * and leave it at base + 1 in their place.
 */
static void make_table(lua_State *L, int base, int n, int width)
{
	int i;
	if (width == 2) {
		lua_createtable(L, 0, n);
		for (i = 0; i < n; i++) {
			lua_pushvalue(L, base + 1 + 2 * i);
			lua_pushvalue(L, base + 2 + 2 * i);
			lua_rawset(L, -3); /* in order: a repeated key keeps the last value, as JSON.parse */
		}
	} else {
		lua_createtable(L, n, 0);
		for (i = 0; i < n; i++) {
			lua_pushvalue(L, base + 1 + i);
			lua_rawseti(L, -2, i + 1);
		}
	}
	lua_replace(L, base + 1);
	lua_settop(L, base + 1);
}

static int decode_array(struct decoder *d)
{
	lua_State *L = d->L;
	int base = lua_gettop(L), n = 0, made = 0;
	if (open_container(d) != 0)
		return -1;
	if (d->p < d->end && *d->p == ']') { /* `[]`: an empty table that knows it is an array */
		lua_createtable(L, 0, 0);
		lua_pushvalue(L, lua_upvalueindex(UV_ARRAY_MT));
		lua_setmetatable(L, -2);
		d->p++;
		d->depth--;
		return 0;
	}
	for (;;) {
		luaL_checkstack(L, 4, "JSON too deeply nested");
		if (decode_value(d) != 0)
			return -1;
		n++;
		if (made) {
			lua_rawseti(L, -2, n);
		} else if (n == DECODE_BATCH) {
			make_table(L, base, n, 1);
			made = 1;
		}
		skip_blanks(d);
		if (d->p < d->end && *d->p == ',') {
			d->p++;
			continue;
		}
		if (d->p < d->end && *d->p == ']')
			break;
		return decode_fail(d, "expected ',' or ']'", d->p);
	}
	if (!made)
		make_table(L, base, n, 1);
	d->p++;
	d->depth--;
	return 0;
}

static int decode_object(struct decoder *d)
{
	lua_State *L = d->L;
	int base = lua_gettop(L), n = 0, made = 0;
	if (open_container(d) != 0)
		return -1;
	if (d->p < d->end && *d->p == '}') {
		lua_createtable(L, 0, 0);
		d->p++;
		d->depth--;
		return 0;
	}
	for (;;) {
		luaL_checkstack(L, 4, "JSON too deeply nested");
		skip_blanks(d);
		if (d->p >= d->end || *d->p != '"')
			return decode_fail(d, "expected a string key", d->p);
		if (decode_string(d) != 0)
			return -1;
		skip_blanks(d);
		if (d->p >= d->end || *d->p != ':')
			return decode_fail(d, "expected ':'", d->p);
		d->p++;
		if (decode_value(d) != 0)
			return -1;
		n++;
		if (made) {
			lua_rawset(L, -3); /* a repeated key keeps the last value, as JSON.parse */
		} else if (n == DECODE_BATCH) {
			make_table(L, base, n, 2);
			made = 1;
		}
		skip_blanks(d);
		if (d->p < d->end && *d->p == ',') {
			d->p++;
			continue;
		}
		if (d->p < d->end && *d->p == '}')
			break;
		return decode_fail(d, "expected ',' or '}'", d->p);
	}
	if (!made)
		make_table(L, base, n, 2);
	d->p++;
	d->depth--;
	return 0;
}

/* Any value at d->p (after blanks): push it, or return -1 with d->error set. */
static int decode_value(struct decoder *d)
{
	skip_blanks(d);
	if (d->p >= d->end)
		return decode_fail(d, "unexpected end", d->p);
	switch (*d->p) {
	case '"': return decode_string(d);
	case '[': return decode_array(d);
	case '{': return decode_object(d);
	case 't':
		if (decode_literal(d, "true", 4) != 0)
			return -1;
		lua_pushboolean(d->L, 1);
		return 0;
	case 'f':
		if (decode_literal(d, "false", 5) != 0)
			return -1;
		lua_pushboolean(d->L, 0);
		return 0;
	case 'n':
		if (decode_literal(d, "null", 4) != 0)
			return -1;
		lua_pushlightuserdata(d->L, NULL);
		return 0;
	default:
		if (*d->p == '-' || is_digit(*d->p))
			return decode_number(d);
		return decode_fail(d, "expected a value", d->p);
	}
}

/*
 * json_decode(s [, {surrogates = "wtf8"}]) -> value | nil, "invalid JSON: ... at character N".
 * Everything it builds is Lua's: an error just drops the partial value.
 */
static int l_json_decode(lua_State *L)
{
	struct decoder d;
	size_t n;
	d.s = luaL_checklstring(L, 1, &n);
	d.L = L;
	d.p = d.s;
	d.end = d.s + n;
	d.wtf8 = 0;
	d.depth = 0;
	d.error = NULL;
	d.error_at = NULL;
	if (lua_type(L, 2) == LUA_TTABLE) {
		lua_getfield(L, 2, "surrogates");
		d.wtf8 = lua_type(L, -1) == LUA_TSTRING && strcmp(lua_tostring(L, -1), "wtf8") == 0;
	}
	lua_settop(L, 1);
	if (decode_value(&d) == 0) {
		skip_blanks(&d);
		if (d.p == d.end)
			return 1;
		decode_fail(&d, "unexpected data after the value", d.p);
	}
	lua_settop(L, 1);
	lua_pushnil(L);
	if (d.error_at)
		lua_pushfstring(L, "invalid JSON: %s at character %I", d.error,
		                (LUAI_UACINT)(d.error_at - d.s + 1));
	else
		lua_pushfstring(L, "invalid JSON: %s", d.error);
	return 2;
}

/* ---------------------------------------------------------------- encode */

struct path_step {
	const char *key; /* NULL: an array index */
	size_t keylen;
	lua_Integer index;
};

/*
 * Lua-owned scratch of one encode, freed by __gc if an error unwinds the
 * encoder: the output and the path stack (struct path_step[depth], grown
 * as the encoder descends), both buf.c buffers without a limit.
 */
struct scratch {
	struct buf out;
	struct buf path;
};

struct encoder {
	lua_State *L;
	struct scratch *s;
	int sort_keys;
	int depth;
};

/* The path step of level i (0 <= i <= depth, room made by path_room). */
#define STEP(e, i) (((struct path_step *)(void *)(e)->s->path.data)[i])

static int l_scratch_gc(lua_State *L)
{
	struct scratch *s = luaL_checkudata(L, 1, JSON_SCRATCH_MT);
	buf_free(&s->out);
	buf_free(&s->path);
	return 0;
}

static void check_room(struct encoder *e, enum buf_status st)
{
	if (st != BUF_OK)
		luaL_error(e->L, "not enough memory to encode JSON");
}

/* Room for the steps of levels 0..depth (path.len: bytes of steps made so far). */
static void path_room(struct encoder *e)
{
	struct buf *p = &e->s->path;
	size_t need = ((size_t)e->depth + 1) * sizeof(struct path_step);
	if (need > p->len) {
		check_room(e, buf_reserve(p, need - p->len));
		p->len = need;
	}
}

static void grow(struct encoder *e, size_t extra)
{
	check_room(e, buf_reserve(&e->s->out, extra));
}

static void put(struct encoder *e, const char *p, size_t n)
{
	check_room(e, buf_append(&e->s->out, p, n));
}

static void put_char(struct encoder *e, char c)
{
	check_room(e, buf_append_byte(&e->s->out, c));
}

/* "$.messages[2].content" for error messages. */
static const char *push_path(struct encoder *e)
{
	luaL_Buffer b;
	int i;
	luaL_buffinit(e->L, &b);
	luaL_addchar(&b, '$');
	for (i = 0; i < e->depth; i++) {
		const struct path_step *st = &STEP(e, i);
		if (e->depth > 12 && i == 6) { /* deep (a cycle): the head and the tail say enough */
			luaL_addstring(&b, "...");
			i = e->depth - 4;
			st = &STEP(e, i);
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

/* Elements 1..n; a hole (only in a marked array) is null. */
static void encode_array(struct encoder *e, int t, lua_Integer n)
{
	lua_Integer i;
	put_char(e, '[');
	for (i = 1; i <= n; i++) {
		if (i > 1)
			put_char(e, ',');
		STEP(e, e->depth - 1).key = NULL;
		STEP(e, e->depth - 1).index = i;
		if (lua_rawgeti(e->L, t, i) == LUA_TNIL)
			put(e, "null", 4);
		else
			encode_value(e, -1);
		lua_pop(e->L, 1);
	}
	put_char(e, ']');
}

/* An error about the table being encoded (not one of its members): the path names the table. */
static int table_error(struct encoder *e, const char *what)
{
	STEP(e, e->depth - 1).key = NULL;
	STEP(e, e->depth - 1).index = 0;
	return encode_error(e, what);
}

/*
 * A table marked as an array: every key must be an index; holes encode as
 * null up to the largest index, as JSON.stringify does, unless the table is
 * so sparse that writing it out would be absurd (lua-cjson's rule).
 */
static void encode_marked_array(struct encoder *e, int t)
{
	lua_State *L = e->L;
	lua_Integer count = 0, max = 0;
	lua_pushnil(L);
	while (lua_next(L, t) != 0) {
		lua_pop(L, 1);
		if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 1) {
			const char *key = lua_type(L, -1) == LUA_TSTRING
				? lua_pushfstring(L, "\"%s\"", lua_tostring(L, -1))
				: lua_type(L, -1) == LUA_TNUMBER ? lua_pushfstring(L, "%s", lua_tostring(L, -1))
				: lua_pushfstring(L, "of type %s", luaL_typename(L, -1));
			table_error(e, lua_pushfstring(L, "key %s in a table marked as an array", key));
		}
		if (lua_tointeger(L, -1) > max)
			max = lua_tointeger(L, -1);
		count++;
	}
	if (max > JSON_SPARSE_SAFE && max > count * JSON_SPARSE_RATIO)
		table_error(e, lua_pushfstring(L, "a sparse array (largest index %I, %I elements)",
		                               (LUAI_UACINT)max, (LUAI_UACINT)count));
	encode_array(e, t, max);
}

/*
 * The key at idx (a copy the caller pushed) as a string; integer keys are
 * converted in place. An integer key whose string form is also a key of t
 * would give a duplicate name (and one value lost when read back): an error.
 */
static const char *object_key(struct encoder *e, int t, int idx, size_t *len)
{
	lua_State *L = e->L;
	int ty = lua_type(L, idx);
	idx = lua_absindex(L, idx);
	if (ty == LUA_TNUMBER && lua_isinteger(L, idx)) {
		lua_Integer k = lua_tointeger(L, idx);
		lua_pushfstring(L, "%I", (LUAI_UACINT)k);
		if (lua_rawget(L, t) != LUA_TNIL)
			table_error(e, lua_pushfstring(L, "a table with both %I and \"%I\" as keys",
			                               (LUAI_UACINT)k, (LUAI_UACINT)k));
		lua_pop(L, 1);
		return lua_tolstring(L, idx, len);
	}
	if (ty == LUA_TSTRING)
		return lua_tolstring(L, idx, len);
	table_error(e, lua_pushfstring(L, "a table key of type %s", luaL_typename(L, idx)));
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
			k = object_key(e, t, -1, &klen);
			if (!first)
				put_char(e, ',');
			first = 0;
			put_string(e, k, klen);
			put_char(e, ':');
			STEP(e, e->depth - 1).key = k;
			STEP(e, e->depth - 1).keylen = klen;
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
			object_key(e, t, -1, &klen);
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
			STEP(e, e->depth - 1) = keys[i];
			lua_rawgeti(L, kt, keys[i].index);
			if (lua_rawget(L, t) == LUA_TNIL) { /* an integer key stored as string (never both) */
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
	path_room(e);
	STEP(e, e->depth).key = NULL;
	STEP(e, e->depth).index = 0;
	e->depth++;
	if (lua_getmetatable(L, t)) {
		int array = lua_rawequal(L, -1, lua_upvalueindex(UV_ARRAY_MT));
		int object = lua_rawequal(L, -1, lua_upvalueindex(UV_OBJECT_MT));
		lua_pop(L, 1);
		if (array) {
			encode_marked_array(e, t);
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
	struct encoder e; /* nothing malloc'ed in it: the scratch box owns the memory */
	int sort = 0;
	luaL_checkany(L, 1);
	if (lua_type(L, 2) == LUA_TTABLE) {
		lua_getfield(L, 2, "sort_keys");
		sort = lua_toboolean(L, -1);
		lua_pop(L, 1);
	}
	lua_settop(L, 1);
	e.L = L;
	e.sort_keys = sort;
	e.depth = 0;
	e.s = lua_newuserdatauv(L, sizeof *e.s, 0); /* 2: the scratch box */
	buf_init(&e.s->out, 0);
	buf_init(&e.s->path, 0);
	luaL_setmetatable(L, JSON_SCRATCH_MT);
	encode_value(&e, 1);
	lua_pushlstring(L, e.s->out.data ? e.s->out.data : "", e.s->out.len);
	buf_free(&e.s->out); /* free now rather than at the next GC */
	buf_free(&e.s->path);
	return 1;
}

void lchat_json_register(lua_State *L)
{
	int mod = lua_gettop(L);
	if (luaL_newmetatable(L, JSON_SCRATCH_MT)) {
		lua_pushcfunction(L, l_scratch_gc);
		lua_setfield(L, -2, "__gc");
	}
	lua_pop(L, 1);
	lua_newtable(L);                            /* upvalue 1: array_mt */
	lua_pushliteral(L, "array");
	lua_setfield(L, -2, "__jsontype");
	lua_newtable(L);                            /* upvalue 2: object_mt */
	lua_pushliteral(L, "object");
	lua_setfield(L, -2, "__jsontype");
	lua_pushvalue(L, -2);
	lua_setfield(L, mod, "json_array_mt");
	lua_pushvalue(L, -1);
	lua_setfield(L, mod, "json_object_mt");
	lua_pushvalue(L, -2);
	lua_pushvalue(L, -2);
	lua_pushcclosure(L, l_json_encode, 2);
	lua_setfield(L, mod, "json_encode");
	memset(lua_newuserdatauv(L, sizeof(struct str_cache), 0), 0, sizeof(struct str_cache));
	lua_createtable(L, STR_CACHE_SLOTS, 0);
	lua_pushcclosure(L, l_json_decode, 4);
	lua_setfield(L, mod, "json_decode");
	lua_pushlightuserdata(L, NULL);
	lua_setfield(L, mod, "json_null");
	lua_settop(L, mod);
}
