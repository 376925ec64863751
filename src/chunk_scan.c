/*
 * chunk_scan.c: the plain-chunk reader (see chunk_scan.h).
 *
 * A recursive-descent walk over strict JSON. Every function returns 0 to go
 * on or -1 for "not plain", which is never an error: the caller falls back
 * to the full decoder, which gives the exact error message if there is one.
 * So when in doubt (exponents, control bytes, escaped keys, duplicate
 * fields, deep nesting), say "not plain".
 */
#include <string.h>

#include "chunk_scan.h"
#include "json_hex.h"
#include "json_run.h"

#define SCAN_MAX_DEPTH 32
#define SCAN_MAX_NUMBER 300 /* digits; longer could overflow a double */

struct cursor {
	const char *p, *end;
	int depth;
};

static void skip_ws(struct cursor *c)
{
	while (c->p < c->end && (*c->p == ' ' || *c->p == '\n' || *c->p == '\r' || *c->p == '\t'))
		c->p++;
}

/* Consume byte ch after whitespace. */
static int expect(struct cursor *c, char ch)
{
	skip_ws(c);
	if (c->p >= c->end || *c->p != ch)
		return -1;
	c->p++;
	return 0;
}

/* After whitespace: consume ch and return 1 if it is next, else 0. */
static int accept(struct cursor *c, char ch)
{
	skip_ws(c);
	if (c->p < c->end && *c->p == ch) {
		c->p++;
		return 1;
	}
	return 0;
}

/* A string at the cursor (after whitespace); its body goes to *t (t may be NULL). */
static int scan_string(struct cursor *c, struct chunk_text *t)
{
	const char *start;
	int escaped = 0;
	if (expect(c, '"') != 0)
		return -1;
	start = c->p;
	for (;;) {
		unsigned char ch;
		c->p = json_run(c->p, c->end, 1); /* the hot loop: plain text (json_run.h) */
		if (c->p >= c->end)
			return -1;
		ch = (unsigned char)*c->p;
		if (ch == '"')
			break;
		if (ch < 0x20)
			return -1; /* raw control byte: let the full decoder judge it */
		escaped = 1;
		if (c->end - c->p < 2)
			return -1;
		switch (c->p[1]) {
		case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
			c->p += 2;
			break;
		case 'u': {
			unsigned u, lo;
			if (c->end - c->p < 6 || json_hex4(c->p + 2, &u) != 0)
				return -1;
			c->p += 6;
			if (u >= 0xDC00 && u <= 0xDFFF)
				return -1; /* a lone low surrogate */
			if (u >= 0xD800 && u <= 0xDBFF) { /* must pair with a low surrogate */
				if (c->end - c->p < 6 || c->p[0] != '\\' || c->p[1] != 'u' ||
				    json_hex4(c->p + 2, &lo) != 0 || lo < 0xDC00 || lo > 0xDFFF)
					return -1;
				c->p += 6;
			}
			break;
		}
		default:
			return -1;
		}
	}
	if (t) {
		t->p = c->p > start ? start : NULL;
		t->len = (size_t)(c->p - start);
		t->escaped = escaped;
	}
	c->p++; /* the closing quote */
	return 0;
}

static int is_digit(char ch)
{
	return ch >= '0' && ch <= '9';
}

/* A number; *ival gets its value when it is a small non-negative integer, else -1. */
static int scan_number(struct cursor *c, long *ival)
{
	const char *start = c->p;
	long v = 0;
	int integral = 1, negative = 0;
	if (c->p < c->end && *c->p == '-') {
		negative = 1;
		c->p++;
	}
	if (c->p >= c->end || !is_digit(*c->p))
		return -1;
	if (*c->p == '0') {
		c->p++;
		if (c->p < c->end && is_digit(*c->p))
			return -1; /* a leading zero */
	} else {
		while (c->p < c->end && is_digit(*c->p)) {
			if (v < 100000000)
				v = v * 10 + (*c->p - '0');
			else
				integral = 0; /* too big to be an index: fine elsewhere */
			c->p++;
		}
	}
	if (c->p < c->end && *c->p == '.') {
		integral = 0;
		c->p++;
		if (c->p >= c->end || !is_digit(*c->p))
			return -1;
		while (c->p < c->end && is_digit(*c->p))
			c->p++;
	}
	if (c->p < c->end && (*c->p == 'e' || *c->p == 'E'))
		return -1; /* exponents can overflow: the full decoder reports those */
	if (c->p - start > SCAN_MAX_NUMBER)
		return -1;
	*ival = integral && !negative ? v : -1;
	return 0;
}

static int scan_literal(struct cursor *c, const char *word, size_t len)
{
	if ((size_t)(c->end - c->p) < len || memcmp(c->p, word, len) != 0)
		return -1;
	c->p += len;
	return 0;
}

/* Whether null is next (consumed if so). */
static int accept_null(struct cursor *c)
{
	skip_ws(c);
	if (c->end - c->p >= 4 && memcmp(c->p, "null", 4) == 0) {
		c->p += 4;
		return 1;
	}
	return 0;
}

static int skip_value(struct cursor *c);

static int skip_container(struct cursor *c, char close, int object)
{
	if (++c->depth > SCAN_MAX_DEPTH)
		return -1;
	if (!accept(c, close)) {
		do {
			if (object && (scan_string(c, NULL) != 0 || expect(c, ':') != 0))
				return -1;
			if (skip_value(c) != 0)
				return -1;
		} while (accept(c, ','));
		if (expect(c, close) != 0)
			return -1;
	}
	c->depth--;
	return 0;
}

/* Any JSON value, validated and ignored. */
static int skip_value(struct cursor *c)
{
	long ignored;
	skip_ws(c);
	if (c->p >= c->end)
		return -1;
	switch (*c->p) {
	case '"': return scan_string(c, NULL);
	case '{': c->p++; return skip_container(c, '}', 1);
	case '[': c->p++; return skip_container(c, ']', 0);
	case 't': return scan_literal(c, "true", 4);
	case 'f': return scan_literal(c, "false", 5);
	case 'n': return scan_literal(c, "null", 4);
	default: return scan_number(c, &ignored);
	}
}

/* null, or a string (body to *t); *is_string says which. */
static int scan_opt_string(struct cursor *c, struct chunk_text *t, int *is_string)
{
	*is_string = 0;
	if (accept_null(c))
		return 0;
	*is_string = 1;
	return scan_string(c, t);
}

/* null or "" only: a value the accumulator would take is not plain. */
static int scan_empty_string(struct cursor *c)
{
	struct chunk_text t = { NULL, 0, 0 };
	int is_string;
	if (scan_opt_string(c, &t, &is_string) != 0)
		return -1;
	return t.p == NULL ? 0 : -1;
}

/* null, or a non-empty string whose body goes to *t ("" would replace a value: not plain). */
static int scan_repeated(struct cursor *c, struct chunk_text *t)
{
	int is_string;
	if (scan_opt_string(c, t, &is_string) != 0)
		return -1;
	return is_string && t->p == NULL ? -1 : 0;
}

/* A small non-negative integer (an index). */
static int scan_index(struct cursor *c, long *v)
{
	skip_ws(c);
	if (scan_number(c, v) != 0 || *v < 0)
		return -1;
	return 0;
}

/*
 * Object walker: calls field(c, key, keylen, state) for each member, the
 * cursor on the value. Keys with escapes and repeated known keys are not
 * plain (a decoder would see them differently or keep only the last).
 */
typedef int (*field_fn)(struct cursor *c, const char *key, size_t len, void *state, unsigned *seen);

static int scan_object(struct cursor *c, field_fn field, void *state)
{
	unsigned seen = 0;
	if (expect(c, '{') != 0 || ++c->depth > SCAN_MAX_DEPTH)
		return -1;
	if (!accept(c, '}')) {
		do {
			struct chunk_text key = { NULL, 0, 0 };
			if (scan_string(c, &key) != 0 || key.escaped || expect(c, ':') != 0)
				return -1;
			if (field(c, key.p ? key.p : "", key.len, state, &seen) != 0)
				return -1;
		} while (accept(c, ','));
		if (expect(c, '}') != 0)
			return -1;
	}
	c->depth--;
	return 0;
}

/* Match key against name; marks bit in *seen and fails on a repeat. */
static int key_is(const char *key, size_t len, const char *name, unsigned bit, unsigned *seen, int *dup)
{
	size_t n = strlen(name);
	if (len != n || memcmp(key, name, n) != 0)
		return 0;
	if (*seen & bit)
		*dup = 1;
	*seen |= bit;
	return 1;
}

#define KEY(name, bit) key_is(key, len, name, bit, seen, &dup)

static int function_field(struct cursor *c, const char *key, size_t len, void *state, unsigned *seen)
{
	struct chunk_scan *out = state;
	int dup = 0, is_string;
	if (KEY("name", 1))
		return dup ? -1 : scan_empty_string(c);
	if (KEY("arguments", 2))
		return dup ? -1 : scan_opt_string(c, &out->args, &is_string);
	return -1; /* allow-list: a key not named here may need a rule */
}

static int tool_call_field(struct cursor *c, const char *key, size_t len, void *state, unsigned *seen)
{
	struct chunk_scan *out = state;
	int dup = 0;
	if (KEY("index", 1))
		return dup ? -1 : scan_index(c, &out->tool_index);
	if (KEY("id", 2) || KEY("type", 4))
		return dup ? -1 : scan_empty_string(c);
	if (KEY("function", 8)) {
		if (dup)
			return -1;
		if (accept_null(c))
			return 0;
		return scan_object(c, function_field, out);
	}
	return -1; /* allow-list */
}

/*
 * null, [], or a list of exactly one object, whose members go to field
 * (a second element is not plain). *present says whether there was one.
 */
static int scan_single_list(struct cursor *c, field_fn field, void *state, int *present)
{
	*present = 0;
	if (accept_null(c))
		return 0;
	if (expect(c, '[') != 0)
		return -1;
	if (accept(c, ']'))
		return 0;
	*present = 1;
	if (scan_object(c, field, state) != 0)
		return -1;
	return expect(c, ']');
}

/* delta.tool_calls: null, [], or one fragment with an index. */
static int scan_tool_calls(struct cursor *c, struct chunk_scan *out)
{
	out->tool_index = -1;
	if (scan_single_list(c, tool_call_field, out, &out->has_args) != 0)
		return -1;
	return out->has_args && out->tool_index < 0 ? -1 : 0;
}

struct delta_state {
	struct chunk_scan *out;
	struct chunk_text reasoning_content, reasoning;
};

static int delta_field(struct cursor *c, const char *key, size_t len, void *state, unsigned *seen)
{
	struct delta_state *d = state;
	struct chunk_scan *out = d->out;
	int dup = 0, is_string;
	if (KEY("content", 1))
		return dup ? -1 : scan_opt_string(c, &out->content, &out->text_is_string);
	if (KEY("role", 2)) {
		struct chunk_text role = { NULL, 0, 0 };
		if (dup || scan_opt_string(c, &role, &is_string) != 0)
			return -1;
		out->has_role = role.p != NULL;
		return 0;
	}
	if (KEY("refusal", 4))
		return dup ? -1 : scan_opt_string(c, &out->refusal, &is_string);
	if (KEY("reasoning_content", 8))
		return dup ? -1 : scan_opt_string(c, &d->reasoning_content, &is_string);
	if (KEY("reasoning", 16))
		return dup ? -1 : scan_opt_string(c, &d->reasoning, &is_string);
	if (KEY("tool_calls", 32))
		return dup ? -1 : scan_tool_calls(c, out);
	return -1; /* allow-list: annotations, audio, anything new goes to the full path */
}

static int choice_field(struct cursor *c, const char *key, size_t len, void *state, unsigned *seen)
{
	struct chunk_scan *out = state;
	int dup = 0;
	if (KEY("index", 1)) {
		if (dup)
			return -1;
		if (accept_null(c)) /* the accumulator reads a missing index as 0 */
			return 0;
		return scan_index(c, &out->choice_index);
	}
	if (KEY("delta", 2)) {
		/* Reasoning: reasoning_content when non-empty, else reasoning (as the accumulator). */
		struct delta_state d = { out, { NULL, 0, 0 }, { NULL, 0, 0 } };
		if (dup || accept_null(c))
			return dup ? -1 : 0;
		if (scan_object(c, delta_field, &d) != 0)
			return -1;
		out->reasoning = d.reasoning_content.p ? d.reasoning_content : d.reasoning;
		return 0;
	}
	if (KEY("finish_reason", 4))
		return dup ? -1 : scan_empty_string(c);
	if (KEY("message", 8) || KEY("logprobs", 16))
		return dup || !accept_null(c) ? -1 : 0;
	return -1; /* allow-list: content_filter_results and the like go to the full path */
}

/* choices: null, [], or exactly one choice object. */
static int scan_choices(struct cursor *c, struct chunk_scan *out)
{
	return scan_single_list(c, choice_field, out, &out->has_choice);
}

/* A head field: *bit is set when its value is one the accumulator would keep. */
static int scan_head_string(struct cursor *c, struct chunk_scan *out, unsigned bit)
{
	struct chunk_text t = { NULL, 0, 0 };
	skip_ws(c);
	if (c->p < c->end && *c->p == '"') {
		if (scan_string(c, &t) != 0)
			return -1;
		if (t.p)
			out->head |= bit;
		return 0;
	}
	return skip_value(c);
}

static int top_field(struct cursor *c, const char *key, size_t len, void *state, unsigned *seen)
{
	struct chunk_scan *out = state;
	int dup = 0;
	if (KEY("id", 1))
		return dup ? -1 : scan_head_string(c, out, CHUNK_HEAD_ID);
	if (KEY("model", 2))
		return dup ? -1 : scan_head_string(c, out, CHUNK_HEAD_MODEL);
	if (KEY("object", 4)) /* "chat.completion.chunk": the final's object is fixed */
		return dup ? -1 : skip_value(c);
	/* Last non-null, repeated in every chunk by OpenAI: handed over for the accumulator to compare. */
	if (KEY("system_fingerprint", 128))
		return dup ? -1 : scan_repeated(c, &out->fingerprint);
	if (KEY("service_tier", 256))
		return dup ? -1 : scan_repeated(c, &out->service_tier);
	if (KEY("created", 8)) {
		skip_ws(c);
		if (dup)
			return -1;
		if (c->p < c->end && (*c->p == '-' || is_digit(*c->p)))
			out->head |= CHUNK_HEAD_CREATED;
		return skip_value(c);
	}
	if (KEY("choices", 16))
		return dup ? -1 : scan_choices(c, out);
	if (KEY("error", 32) || KEY("usage", 64))
		return dup || !accept_null(c) ? -1 : 0;
	return -1; /* allow-list: citations, x_groq, usage... go to the full path */
}

#undef KEY

int chunk_scan(const char *s, size_t n, struct chunk_scan *out)
{
	struct cursor c = { s, s + n, 0 };
	memset(out, 0, sizeof *out);
	if (scan_object(&c, top_field, out) != 0)
		return 0;
	skip_ws(&c);
	return c.p == c.end;
}

static size_t put_utf8(char *dst, unsigned cp)
{
	if (cp < 0x80) {
		dst[0] = (char)cp;
		return 1;
	}
	if (cp < 0x800) {
		dst[0] = (char)(0xC0 | (cp >> 6));
		dst[1] = (char)(0x80 | (cp & 0x3F));
		return 2;
	}
	if (cp < 0x10000) {
		dst[0] = (char)(0xE0 | (cp >> 12));
		dst[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
		dst[2] = (char)(0x80 | (cp & 0x3F));
		return 3;
	}
	dst[0] = (char)(0xF0 | (cp >> 18));
	dst[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
	dst[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
	dst[3] = (char)(0x80 | (cp & 0x3F));
	return 4;
}

/* Escapes were validated by scan_string; every escape is at least as long as its UTF-8. */
size_t chunk_unescape(const struct chunk_text *t, char *dst)
{
	const char *p = t->p, *end = t->p + t->len;
	size_t o = 0;
	while (p < end) {
		unsigned cp, lo;
		if (*p != '\\') {
			dst[o++] = *p++;
			continue;
		}
		switch (p[1]) {
		case 'b': dst[o++] = '\b'; p += 2; continue;
		case 'f': dst[o++] = '\f'; p += 2; continue;
		case 'n': dst[o++] = '\n'; p += 2; continue;
		case 'r': dst[o++] = '\r'; p += 2; continue;
		case 't': dst[o++] = '\t'; p += 2; continue;
		case 'u': break;
		default: dst[o++] = p[1]; p += 2; continue; /* " \ / */
		}
		/* scan_string validated every escape: the digits are there and a high
		 * half is followed by its low half. */
		cp = lo = 0;
		(void)json_hex4(p + 2, &cp);
		p += 6;
		if (cp >= 0xD800 && cp <= 0xDBFF) {
			(void)json_hex4(p + 2, &lo);
			p += 6;
			cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
		}
		o += put_utf8(dst + o, cp);
	}
	return o;
}
