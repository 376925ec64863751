/*
 * chunk_scan.h: a one-pass reader of streamed chat.completion.chunk JSON
 * that picks out the few fields stream accumulation needs, without building
 * anything.
 *
 * Owns: the "plain chunk" test. A plain chunk is strict JSON (a subset of
 * what luachat.json decodes, so decoding it later always succeeds the same way)
 * whose only effect on the accumulated message is text: content, refusal,
 * reasoning, or one tool call's argument fragment, for at most one choice.
 * It decides by an allow-list: only the keys named in chunk_scan.c (id, model,
 * created, object, system_fingerprint, service_tier (handed over: the
 * accumulator takes the chunk only when they equal what it holds), choices; index, delta; content, role, refusal,
 * reasoning_content, reasoning, tool_calls; a fragment's index and arguments;
 * null/"" for finish_reason, usage, error, logprobs and the like) may appear.
 * Any other key, and anything else (errors, usage, finish_reason, new tool
 * calls, several choices, exponents, odd escapes), is "not plain" and goes to
 * the full decoder and the Lua accumulator, which own every rule.
 * Never: includes lua.h, allocates, or reads past n bytes.
 */
#ifndef LCHAT_CHUNK_SCAN_H
#define LCHAT_CHUNK_SCAN_H

#include <stddef.h>

/* Head fields of a chunk that carry a usable value (the accumulator keeps the first). */
enum {
	CHUNK_HEAD_ID = 1,          /* "id": non-empty string */
	CHUNK_HEAD_MODEL = 2,       /* "model": non-empty string */
	CHUNK_HEAD_CREATED = 4      /* "created": a number */
};

/* A JSON string's body inside the scanned text; escaped: it holds backslash escapes. */
struct chunk_text {
	const char *p; /* NULL when the field is absent, null or "" */
	size_t len;
	int escaped;
};

struct chunk_scan {
	unsigned head;               /* CHUNK_HEAD_* present */
	int has_choice;              /* choices holds exactly one choice */
	long choice_index;           /* its "index" (0 when absent) */
	int has_role;                /* its delta has a non-empty "role" */
	int text_is_string;          /* delta.content is a string (maybe ""): luachat.delta_text */
	struct chunk_text content;   /* delta.content */
	struct chunk_text refusal;   /* delta.refusal */
	struct chunk_text reasoning; /* delta.reasoning_content, else delta.reasoning */
	int has_args;                /* delta.tool_calls is one continuation fragment */
	long tool_index;             /* its "index" */
	struct chunk_text args;      /* its function.arguments */
	struct chunk_text fingerprint;  /* system_fingerprint (non-empty string; "" is not plain) */
	struct chunk_text service_tier; /* service_tier (likewise) */
};

/* Whether s[0..n) is a plain chunk; fills *out either way (partially when not). */
int chunk_scan(const char *s, size_t n, struct chunk_scan *out);

/* Decode t's escapes into dst (room for t->len bytes); returns the decoded length. */
size_t chunk_unescape(const struct chunk_text *t, char *dst);

#endif
