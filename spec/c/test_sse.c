/*
 * test_sse.c: unit tests of src/sse.c, the incremental SSE parser.
 *
 * Owns: the case table (input bytes -> expected events, status, location),
 * the corpus check (spec/fixtures/sse: NAME.sse + NAME.count), and the
 * memory-bound tests.
 * Every input is fed whole, split in two at every offset, and one byte at
 * a time; each piece is copied into its own exact-size allocation so that
 * ASan/valgrind catch any read past a piece. All three must give the same
 * events, status and error location.
 * Never: includes lua.h or curl.h; links only sse.o and buf.o.
 * Run from the repo root: build/spec/test_sse [fixture dir, default spec/fixtures/sse]
 */
#include <dirent.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sse.h"
#include "test.h"

/* ---- recording events ---------------------------------------------------- */

struct rec {
	char *log; /* events serialised as "len:bytes" for type, data, id */
	size_t len, cap;
	size_t count;
	size_t stop_at;   /* return non-zero from the callback at this event (1-based) */
	size_t max_event; /* invariant: data_len <= max_event */
	const char *broken; /* first invariant an event broke */
	int data_json;    /* corpus: data must be "[DONE]" or a JSON object */
};

static void rec_put(struct rec *r, const void *p, size_t n)
{
	if (r->len + n + 1 > r->cap) {
		size_t cap = r->cap ? r->cap : 256;
		char *q;
		while (cap < r->len + n + 1)
			cap *= 2;
		q = realloc(r->log, cap);
		if (q == NULL) {
			fprintf(stderr, "test_sse: out of memory\n");
			exit(2);
		}
		r->log = q;
		r->cap = cap;
	}
	if (n)
		memcpy(r->log + r->len, p, n);
	r->len += n;
}

static void rec_field(struct rec *r, const char *p, size_t n)
{
	char num[32];
	int k = snprintf(num, sizeof num, "%zu:", n);
	rec_put(r, num, (size_t)k);
	rec_put(r, p, n);
}

static void rec_event(struct rec *r, const char *type, size_t tl, const char *data, size_t dl,
                      const char *id, size_t il)
{
	rec_field(r, type, tl);
	rec_field(r, data, dl);
	rec_field(r, id, il);
	rec_put(r, "|", 1);
}

static int on_event(void *ud, const struct sse_event *ev)
{
	struct rec *r = ud;
	if (ev->data == NULL || ev->type == NULL || ev->id == NULL)
		r->broken = "NULL pointer in event";
	else if (ev->data[ev->data_len] != '\0')
		r->broken = "data not NUL-terminated";
	else if (ev->data_len > r->max_event)
		r->broken = "data_len > max_event";
	else if (ev->type_len == 0 || ev->type[ev->type_len] != '\0')
		r->broken = "type empty or not NUL-terminated";
	else if (ev->id[ev->id_len] != '\0')
		r->broken = "id not NUL-terminated";
	else if (r->data_json && !(strcmp(ev->data, "[DONE]") == 0 ||
	                           (ev->data_len >= 2 && ev->data[0] == '{' &&
	                            ev->data[ev->data_len - 1] == '}')))
		r->broken = "corpus event data is neither [DONE] nor a JSON object";
	if (r->broken)
		return 0;
	rec_event(r, ev->type, ev->type_len, ev->data, ev->data_len, ev->id, ev->id_len);
	r->count++;
	return r->stop_at && r->count == r->stop_at;
}

/* Two recordings are equal (memcmp is not called on a NULL, empty log). */
static int same_log(const struct rec *a, const struct rec *b)
{
	return a->len == b->len && (a->len == 0 || memcmp(a->log, b->log, a->len) == 0);
}

/* Print bytes escaped, for failure messages. */
static void dump(const char *label, const char *p, size_t n)
{
	size_t i;
	fprintf(stdout, "    %s: \"", label);
	for (i = 0; i < n && i < 400; i++) {
		unsigned char c = (unsigned char)p[i];
		if (c == '\n')
			fputs("\\n", stdout);
		else if (c == '\r')
			fputs("\\r", stdout);
		else if (c == '"' || c == '\\')
			fprintf(stdout, "\\%c", c);
		else if (c < 32 || c >= 127)
			fprintf(stdout, "\\x%02x", c);
		else
			fputc(c, stdout);
	}
	fprintf(stdout, "%s\"\n", n > 400 ? "..." : "");
}

/* ---- feeding an input in pieces ------------------------------------------ */

enum mode { WHOLE, SPLIT, BYTES };

struct outcome {
	struct rec r;
	enum sse_status st;
	size_t offset, events;
	long retry;
	char msg[200];
	const char *sticky; /* what went wrong re-feeding after an error */
};

/* Feed one piece from its own exact-size allocation (so overreads are caught). */
static enum sse_status feed_piece(struct sse_parser *p, const char *s, size_t n, struct rec *r)
{
	char *copy = malloc(n ? n : 1);
	enum sse_status st;
	if (copy == NULL)
		exit(2);
	memcpy(copy, s, n);
	st = sse_feed(p, copy, n, on_event, r);
	free(copy);
	return st;
}

/*
 * Feed `in` whole, split at `at`, or bytewise; then sse_finish if asked.
 * Fills `o` (the caller frees o->r.log).
 */
static void run(const char *in, size_t len, size_t max_event, int finish, size_t stop_at,
                enum mode m, size_t at, int data_json, struct outcome *o)
{
	struct sse_parser p;
	enum sse_status st = SSE_OK;
	size_t i;
	memset(o, 0, sizeof *o);
	o->r.stop_at = stop_at;
	o->r.data_json = data_json;
	sse_init(&p, max_event);
	o->r.max_event = p.max_event;
	switch (m) {
	case WHOLE:
		st = feed_piece(&p, in, len, &o->r);
		break;
	case SPLIT:
		st = feed_piece(&p, in, at, &o->r);
		if (st == SSE_OK)
			st = feed_piece(&p, in + at, len - at, &o->r);
		break;
	case BYTES:
		for (i = 0; i < len && st == SSE_OK; i++)
			st = feed_piece(&p, in + i, 1, &o->r);
		break;
	}
	if (st == SSE_OK && finish)
		st = sse_finish(&p, on_event, &o->r);
	o->st = st;
	o->offset = p.offset;
	o->events = p.events;
	o->retry = p.retry_ms;
	sse_describe(&p, o->msg, sizeof o->msg);
	if (p.events != o->r.count && !o->r.broken && !stop_at)
		o->sticky = "p->events differs from the callback count";
	if (st != SSE_OK) {
		/* An error is final: more input is refused and dispatches nothing. */
		size_t before = o->r.count;
		if (sse_feed(&p, "data: z\n\n", 9, on_event, &o->r) != st ||
		    sse_finish(&p, on_event, &o->r) != st || o->r.count != before ||
		    p.offset != o->offset)
			o->sticky = "the error status was not sticky";
	}
	sse_free(&p);
}

static const char *mode_name(enum mode m, size_t at, char *tmp, size_t n)
{
	if (m == WHOLE)
		return "whole";
	if (m == BYTES)
		return "one byte at a time";
	snprintf(tmp, n, "split at %zu", at);
	return tmp;
}

/* ---- the case table ------------------------------------------------------ */

struct exp_ev {
	const char *type;
	const char *data;
	const char *id;   /* NULL: "" */
	size_t data_len;  /* 0: strlen(data) */
};

struct sse_case {
	const char *name;
	const char *in;
	size_t len;
	size_t max_event;  /* 0: the default */
	int finish;        /* call sse_finish after the input */
	size_t stop_at;    /* the callback stops at this event */
	enum sse_status want;
	int check_offset;
	size_t want_offset;
	const char *want_msg; /* exact sse_describe() text, if set */
	int check_retry;
	long want_retry;
	struct exp_ev ev[6];
};

#define IN(s) .in = s, .len = sizeof(s) - 1
#define M(d) {"message", d, NULL, 0}
#define X8 "xxxxxxxx"
#define X64 X8 X8 X8 X8 X8 X8 X8 X8
#define X71 X64 "xxxxxxx" /* ":" X71 is a 72-byte line: 8 + SSE_LINE_SLACK */

static const struct sse_case cases[] = {
	/* line ends */
	{"LF", IN("data: a\n\ndata: b\n\n"), .ev = {M("a"), M("b")}},
	{"CR", IN("data: a\r\rdata: b\r\r"), .ev = {M("a"), M("b")}},
	{"CRLF", IN("data: a\r\n\r\ndata: b\r\n\r\n"), .ev = {M("a"), M("b")}},
	{"mixed line ends", IN("data: a\r\n\ndata: b\r\rdata: c\n\r\ndata: d\r\ndata: e\r\n\n"),
	 .ev = {M("a"), M("b"), M("c"), M("d\ne")}},
	{"CRLF is one line end", IN("data: a\r\ndata: b\r\n\r\n"), .ev = {M("a\nb")}},
	{"LF CR is two line ends", IN("data: a\n\rdata: b\n\n"), .ev = {M("a"), M("b")}},
	{"CR CRLF is two line ends", IN("data: a\r\r\ndata: b\n\n"), .ev = {M("a"), M("b")}},
	{"blank lines alone dispatch nothing", IN("\n\n\r\n\r\r\n\n")},
	/* comments */
	{"comments ignored",
	 IN(": OPENROUTER PROCESSING\n\n: keep-alive\n\n: ping\r\ndata: x\n: mid\n:\n\n"),
	 .ev = {M("x")}},
	{"comment holding data: is still a comment", IN(":data: x\n\n")},
	/* data */
	{"data without space", IN("data:a\n\n"), .ev = {M("a")}},
	{"data: only one space removed", IN("data:  a\n\n"), .ev = {M(" a")}},
	{"data: trailing spaces kept", IN("data: a \t\n\n"), .ev = {M("a \t")}},
	{"data: colon in value", IN("data: {\"a\":\"b:c\"}\n\n"), .ev = {M("{\"a\":\"b:c\"}")}},
	{"multi-line data joined with LF", IN("data: a\ndata:b\ndata:  c\n\n"), .ev = {M("a\nb\n c")}},
	{"data alone is an empty line", IN("data\n\n"), .ev = {M("")}},
	{"data: empty value", IN("data:\n\n"), .ev = {M("")}},
	{"data: one space only", IN("data: \n\n"), .ev = {M("")}},
	{"two empty data lines", IN("data\ndata\n\n"), .ev = {M("\n")}},
	{"empty data line then text", IN("data\ndata: a\n\n"), .ev = {M("\na")}},
	{"text then empty data line", IN("data: a\ndata:\n\n"), .ev = {M("a\n")}},
	{"NUL bytes in data", IN("data: a\0b\n\n"), .ev = {{"message", "a\0b", NULL, 3}}},
	{"[DONE]", IN("data: {\"x\":1}\n\ndata: [DONE]\n\n"), .ev = {M("{\"x\":1}"), M("[DONE]")}},
	{"UTF-8 multibyte data", IN("data: h\xc3\xa9llo \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x8e\x89\n\n"),
	 .ev = {M("h\xc3\xa9llo \xe6\x97\xa5\xe6\x9c\xac \xf0\x9f\x8e\x89")}},
	/* event */
	{"event sets the type, reset after dispatch", IN("event: ping\ndata: 1\n\ndata: 2\n\n"),
	 .ev = {{"ping", "1", NULL, 0}, M("2")}},
	{"event without data: nothing, type reset", IN("event: a\n\ndata: b\n\n"), .ev = {M("b")}},
	{"event: empty value means message", IN("event:\ndata: x\n\n"), .ev = {M("x")}},
	{"event: the last one wins", IN("event: a\nevent:b\ndata: x\n\n"), .ev = {{"b", "x", NULL, 0}}},
	{"event alone (no colon) is an empty type", IN("event: a\nevent\ndata: x\n\n"), .ev = {M("x")}},
	{"event: after data, same event", IN("data: x\nevent: done\n\n"), .ev = {{"done", "x", NULL, 0}}},
	/* id */
	{"id persists across events", IN("id: 7\ndata: a\n\ndata: b\n\nid\ndata: c\n\n"),
	 .ev = {{"message", "a", "7", 0}, {"message", "b", "7", 0}, M("c")}},
	{"id set by an event without data", IN("id: 9\n\ndata: a\n\n"), .ev = {{"message", "a", "9", 0}}},
	{"id containing NUL is ignored", IN("id: 1\n\nid: 2\0x\ndata: a\n\n"),
	 .ev = {{"message", "a", "1", 0}}},
	{"id: one space removed", IN("id:  5\ndata: a\n\n"), .ev = {{"message", "a", " 5", 0}}},
	/* retry */
	{"retry: digits set it", IN("retry: 1500\ndata: a\n\n"), .check_retry = 1, .want_retry = 1500,
	 .ev = {M("a")}},
	{"retry: non-digits ignored", IN("retry: 1500\nretry: 15x\nretry: -1\nretry: 2 \nretry:\ndata: a\n\n"),
	 .check_retry = 1, .want_retry = 1500, .ev = {M("a")}},
	{"retry: none seen", IN("data: a\n\n"), .check_retry = 1, .want_retry = -1, .ev = {M("a")}},
	{"retry: no space", IN("retry:0\n"), .check_retry = 1, .want_retry = 0},
	/* unknown fields */
	{"unknown fields ignored",
	 IN("foo: bar\nDATA: x\nData: y\ndata : z\n data: q\nevents: e\nidx: 3\ndata: w\n\n"),
	 .ev = {M("w")}},
	{"unknown field alone dispatches nothing", IN("foo: bar\n\n")},
	/* BOM */
	{"BOM skipped", IN("\xef\xbb\xbf" "data: a\n\n"), .ev = {M("a")}},
	{"BOM skipped only once", IN("\xef\xbb\xbf\xef\xbb\xbf" "data: a\n\ndata: b\n\n"), .ev = {M("b")}},
	{"BOM then comment and CRLF", IN("\xef\xbb\xbf: hi\r\ndata: a\r\n\r\n"), .ev = {M("a")}},
	{"partial BOM is text", IN("\xef\xbb" "data: a\n\ndata: b\n\n"), .ev = {M("b")}},
	{"BOM byte then line end", IN("\xef\n" "data: a\n\n"), .ev = {M("a")}},
	{"BOM not at the start is text", IN("data: a\n\n\xef\xbb\xbf" "data: b\n\ndata: c\n\n"),
	 .ev = {M("a"), M("c")}},
	/* llama.cpp error field */
	{"llama.cpp error: line",
	 IN("data: {\"choices\":[]}\n\nerror: {\"code\":500,\"message\":\"boom\",\"type\":\"server_error\"}\n\n"),
	 .ev = {M("{\"choices\":[]}"),
	        {"error", "{\"code\":500,\"message\":\"boom\",\"type\":\"server_error\"}", NULL, 0}}},
	{"error: overrides event type and data", IN("event: x\ndata: a\nerror: e\n\ndata: b\n\n"),
	 .ev = {{"error", "e", NULL, 0}, M("b")}},
	{"error alone: empty error event", IN("error\n\n"), .ev = {{"error", "", NULL, 0}}},
	{"error: without blank line, at finish", IN("error: {\"message\":\"x\"}"), .finish = 1,
	 .ev = {{"error", "{\"message\":\"x\"}", NULL, 0}}},
	/* end of stream */
	{"no trailing blank line: finish dispatches", IN("data: a\n\ndata: b\n"), .finish = 1,
	 .ev = {M("a"), M("b")}},
	{"unterminated last line: finish takes it", IN("data: a\ndata: b"), .finish = 1,
	 .ev = {M("a\nb")}},
	{"unterminated, no finish: not dispatched", IN("data: a\n\ndata: b\n"), .ev = {M("a")}},
	{"trailing CR then finish", IN("data: a\r"), .finish = 1, .ev = {M("a")}},
	{"finish: empty stream", IN(""), .finish = 1},
	{"finish: only a BOM", IN("\xef\xbb\xbf"), .finish = 1},
	{"finish: inside a BOM", IN("\xef\xbb"), .finish = 1},
	{"finish: trailing comment", IN("data: a\n\n: bye"), .finish = 1, .ev = {M("a")}},
	{"finish: pending event without data", IN("event: x\nid: 3"), .finish = 1},
	/* limits (max_event 8: data <= 8 bytes, lines <= 72 bytes) */
	{"event at the limit", IN("data: 12345678\n\n"), .max_event = 8, .ev = {M("12345678")}},
	{"event over the limit", IN("data: 123456789\n\ndata: a\n\n"), .max_event = 8,
	 .want = SSE_TOO_LARGE, .check_offset = 1, .want_offset = 16,
	 .want_msg = "stream event 1 over the 8-byte limit at byte 16"},
	{"joined lines at the limit", IN("data: 1234\ndata: 123\n\n"), .max_event = 8,
	 .ev = {M("1234\n123")}},
	{"joined lines over the limit", IN("data: a\n\ndata: 1234\ndata: 1234\n\n"), .max_event = 8,
	 .want = SSE_TOO_LARGE, .check_offset = 1, .want_offset = 31, .ev = {M("a")},
	 .want_msg = "stream event 2 over the 8-byte limit at byte 31"},
	{"empty data lines count", IN("data: 1234567\ndata\ndata\n\n"), .max_event = 8,
	 .want = SSE_TOO_LARGE, .check_offset = 1, .want_offset = 24},
	{"error: over the limit", IN("error: 123456789\n\n"), .max_event = 8, .want = SSE_TOO_LARGE},
	{"event over the limit at finish", IN("data: 12345678\ndata"), .max_event = 8, .finish = 1,
	 .want = SSE_TOO_LARGE, .check_offset = 1, .want_offset = 19},
	{"line at the limit", IN(":" X71 "\ndata: a\n\n"), .max_event = 8, .ev = {M("a")}},
	{"line over the limit", IN(":" X71 "x\ndata: a\n\n"), .max_event = 8, .want = SSE_TOO_LARGE,
	 .check_offset = 1, .want_offset = 73,
	 .want_msg = "stream event 1 over the 8-byte limit at byte 73"},
	{"line over the limit, no line end", IN("data: a\n\n:" X71 "xx"), .max_event = 8,
	 .want = SSE_TOO_LARGE, .check_offset = 1, .want_offset = 82, .ev = {M("a")}},
	{"line over the limit after CRLF", IN("data: a\r\n\r\n" X64 X8 "x"), .max_event = 8,
	 .want = SSE_TOO_LARGE, .check_offset = 1, .want_offset = 84, .ev = {M("a")}},
	{"BOM not counted in a line", IN("\xef\xbb\xbf:" X71 "\n"), .max_event = 8, .finish = 1},
	/* the callback stops the parser */
	{"callback stops", IN("data: a\n\ndata: b\n\ndata: c\n\n"), .stop_at = 2, .want = SSE_STOPPED,
	 .check_offset = 1, .want_offset = 18, .ev = {M("a"), M("b")},
	 .want_msg = "stream stopped by the event callback after event 2 at byte 18"},
	{"callback stops inside CRLF", IN("data: a\r\n\r\ndata: b\r\n\r\n"), .stop_at = 1,
	 .want = SSE_STOPPED, .check_offset = 1, .want_offset = 10, .ev = {M("a")}},
	{"callback stops at finish", IN("data: a"), .finish = 1, .stop_at = 1, .want = SSE_STOPPED,
	 .check_offset = 1, .want_offset = 7, .ev = {M("a")}},
};

/* Compare one outcome with the expectation; returns 0 and reports on mismatch. */
static int check_outcome(const struct sse_case *c, const struct outcome *o, const struct rec *want,
                         const char *how)
{
	int ok = 1;
	if (o->r.broken) {
		t_fail(__LINE__, "%s: %s", how, o->r.broken);
		ok = 0;
	}
	if (o->sticky) {
		t_fail(__LINE__, "%s: %s", how, o->sticky);
		ok = 0;
	}
	if (o->st != c->want) {
		t_fail(__LINE__, "%s: status %d (%s), want %d (%s)", how, (int)o->st, o->msg, (int)c->want,
		       sse_status_string(c->want));
		ok = 0;
	}
	if (!same_log(&o->r, want)) {
		t_fail(__LINE__, "%s: events differ (%zu events, want %zu)", how, o->r.count, want->count);
		dump("got ", o->r.log, o->r.len);
		dump("want", want->log, want->len);
		ok = 0;
	}
	if (c->check_offset && o->offset != c->want_offset) {
		t_fail(__LINE__, "%s: offset %zu, want %zu", how, o->offset, c->want_offset);
		ok = 0;
	}
	if (!c->check_offset && o->st == SSE_OK && c->finish && o->offset != c->len) {
		t_fail(__LINE__, "%s: offset %zu after finish, want the input length %zu", how,
		       o->offset, c->len);
		ok = 0;
	}
	if (c->want_msg && strcmp(o->msg, c->want_msg) != 0) {
		t_fail(__LINE__, "%s: message \"%s\", want \"%s\"", how, o->msg, c->want_msg);
		ok = 0;
	}
	if (c->check_retry && o->retry != c->want_retry) {
		t_fail(__LINE__, "%s: retry %ld, want %ld", how, o->retry, c->want_retry);
		ok = 0;
	}
	return ok;
}

static void test_case(const struct sse_case *c)
{
	struct rec want;
	struct outcome o;
	char tmp[64];
	size_t i;
	memset(&want, 0, sizeof want);
	for (i = 0; i < sizeof c->ev / sizeof c->ev[0] && c->ev[i].type; i++) {
		const struct exp_ev *e = &c->ev[i];
		const char *id = e->id ? e->id : "";
		rec_event(&want, e->type, strlen(e->type), e->data,
		          e->data_len ? e->data_len : strlen(e->data), id, strlen(id));
		want.count++;
	}
	t_begin(c->name);
	run(c->in, c->len, c->max_event, c->finish, c->stop_at, WHOLE, 0, 0, &o);
	check_outcome(c, &o, &want, "whole");
	free(o.r.log);
	run(c->in, c->len, c->max_event, c->finish, c->stop_at, BYTES, 0, 0, &o);
	check_outcome(c, &o, &want, "one byte at a time");
	free(o.r.log);
	for (i = 0; i <= c->len; i++) {
		int ok;
		run(c->in, c->len, c->max_event, c->finish, c->stop_at, SPLIT, i, 0, &o);
		ok = check_outcome(c, &o, &want, mode_name(SPLIT, i, tmp, sizeof tmp));
		free(o.r.log);
		if (!ok)
			break; /* one failing split is enough to report */
	}
	t_end();
	free(want.log);
}

/* ---- memory bounds and reuse --------------------------------------------- */

/* A 100 MB line without a line end fails once the line passes the cap. */
static void test_huge_line(void)
{
	struct sse_parser p;
	size_t chunk = 64 * 1024, fed = 0, limit;
	char *x = malloc(chunk);
	enum sse_status st = SSE_OK;
	char msg[200], want[200];
	t_begin("100 MB line without a line end: bounded, SSE_TOO_LARGE");
	if (x == NULL)
		exit(2);
	memset(x, 'x', chunk);
	memcpy(x, "data: ", 6);
	sse_init(&p, 0);
	limit = SSE_DEFAULT_MAX_EVENT + SSE_LINE_SLACK;
	while (fed < (size_t)100 << 20 && st == SSE_OK) {
		st = sse_feed(&p, x, chunk, NULL, NULL);
		fed += chunk;
		if (fed == chunk)
			memset(x, 'x', 6);
	}
	T_EQ_INT(st, SSE_TOO_LARGE);
	T_CHECK(fed <= limit + chunk); /* failed in the chunk that crossed the cap */
	T_CHECK(p.line.cap <= limit + 1);
	T_CHECK(p.data.data == NULL);
	T_EQ_SIZE(p.offset, limit + 1);
	T_EQ_SIZE(p.events, 0);
	snprintf(want, sizeof want, "stream event 1 over the %zu-byte limit at byte %zu",
	         (size_t)SSE_DEFAULT_MAX_EVENT, limit + 1);
	sse_describe(&p, msg, sizeof msg);
	T_CHECK(strcmp(msg, want) == 0);
	sse_free(&p);
	free(x);
	t_end();
}

/* 1 MiB data lines: the 16th pushes the joined data past 16 MiB. */
static void test_huge_event(void)
{
	struct sse_parser p;
	size_t n = (size_t)1 << 20, i;
	char *line = malloc(n + 7);
	enum sse_status st = SSE_OK;
	struct rec r;
	t_begin("16 MiB event from 1 MiB lines: bounded, SSE_TOO_LARGE");
	if (line == NULL)
		exit(2);
	memset(&r, 0, sizeof r);
	r.max_event = SSE_DEFAULT_MAX_EVENT;
	memcpy(line, "data: ", 6);
	memset(line + 6, 'y', n);
	line[n + 6] = '\n';
	sse_init(&p, 0);
	for (i = 0; i < 20 && st == SSE_OK; i++)
		st = sse_feed(&p, line, n + 7, on_event, &r);
	T_EQ_INT(st, SSE_TOO_LARGE);
	T_EQ_SIZE(i, 16);
	T_CHECK(p.data.cap <= SSE_DEFAULT_MAX_EVENT + 2);
	T_EQ_SIZE(p.offset, 16 * (n + 7));
	T_EQ_SIZE(r.count, 0);
	sse_free(&p);
	free(r.log);
	free(line);
	t_end();
}

/* Exactly max_event bytes of data in one line is accepted. */
static void test_exact_limit(void)
{
	struct sse_parser p;
	size_t max = 1000;
	char in[1100];
	struct rec r;
	t_begin("data of exactly max_event bytes in one line");
	memset(&r, 0, sizeof r);
	r.max_event = max;
	memcpy(in, "data: ", 6);
	memset(in + 6, 'z', max);
	memcpy(in + 6 + max, "\n\n", 2);
	sse_init(&p, max);
	T_EQ_INT(sse_feed(&p, in, max + 8, on_event, &r), SSE_OK);
	T_EQ_SIZE(r.count, 1);
	T_CHECK(r.broken == NULL);
	T_CHECK(p.data.cap <= max + 2);
	sse_free(&p);
	free(r.log);
	t_end();
}

/* Buffers are reused: no reallocation after the first event, no line copy for whole lines. */
static void test_reuse(void)
{
	struct sse_parser p;
	const char *ev = "event: delta\ndata: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n";
	char *data_before = NULL, *type_before = NULL;
	size_t i;
	int moved = 0;
	struct rec r;
	t_begin("buffers reused across events, whole lines not copied");
	memset(&r, 0, sizeof r);
	r.max_event = SSE_DEFAULT_MAX_EVENT;
	sse_init(&p, 0);
	for (i = 0; i < 1000; i++) {
		T_EQ_INT(sse_feed(&p, ev, strlen(ev), on_event, &r), SSE_OK);
		if (i == 0) {
			data_before = p.data.data;
			type_before = p.type.data;
		} else if (p.data.data != data_before || p.type.data != type_before) {
			moved = 1;
		}
		free(r.log); /* keep the recorder small */
		r.log = NULL;
		r.len = r.cap = 0;
	}
	T_CHECK(!moved);
	T_CHECK(p.line.data == NULL); /* every line was parsed in place */
	T_EQ_SIZE(p.events, 1000);
	T_EQ_SIZE(p.offset, 1000 * strlen(ev));
	sse_free(&p);
	t_end();
}

static void test_api(void)
{
	struct sse_parser p;
	char msg[64];
	t_begin("init defaults, NULL callback, status strings");
	sse_init(&p, 0);
	T_EQ_SIZE(p.max_event, SSE_DEFAULT_MAX_EVENT);
	T_EQ_INT(p.retry_ms, -1);
	T_EQ_INT(sse_feed(&p, "data: a\n\ndata: b\n\n", 18, NULL, NULL), SSE_OK);
	T_EQ_SIZE(p.events, 2);
	T_EQ_INT(sse_finish(&p, NULL, NULL), SSE_OK);
	T_CHECK(strcmp(sse_describe(&p, msg, sizeof msg), "ok") == 0);
	sse_free(&p);
	sse_free(&p); /* safe twice */
	T_CHECK(strcmp(sse_status_string(SSE_OK), "ok") == 0);
	T_CHECK(strcmp(sse_status_string(SSE_TOO_LARGE),
	               "stream event or line over the size limit") == 0);
	T_CHECK(strcmp(sse_status_string(SSE_NO_MEMORY), "out of memory parsing the stream") == 0);
	T_CHECK(strcmp(sse_status_string(SSE_STOPPED), "stream stopped by the event callback") == 0);
	t_end();
}

/* ---- the provider corpus ------------------------------------------------- */

static char *read_file(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	char *s = NULL;
	size_t cap = 0, n = 0, k;
	if (f == NULL)
		return NULL;
	do {
		if (n + 4096 > cap) {
			char *q = realloc(s, cap = (cap ? cap * 2 : 8192));
			if (q == NULL)
				exit(2);
			s = q;
		}
		k = fread(s + n, 1, cap - n, f);
		n += k;
	} while (k > 0);
	fclose(f);
	*len = n;
	return s;
}

static int by_name(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Each <name>.sse has <name>.count: the number of events, counted by hand. */
static void test_corpus_file(const char *dir, const char *name)
{
	char path[1024], label[300];
	char *in, *cnt;
	size_t len, clen, i;
	long want_count;
	struct outcome whole, o;
	snprintf(label, sizeof label, "corpus %s", name);
	t_begin(label);
	snprintf(path, sizeof path, "%s/%s", dir, name);
	in = read_file(path, &len);
	snprintf(path, sizeof path, "%s/%.*s.count", dir, (int)(strlen(name) - 4), name);
	cnt = read_file(path, &clen);
	if (in == NULL || cnt == NULL) {
		t_fail(__LINE__, "cannot read %s or its .count file", name);
		free(in);
		free(cnt);
		t_end();
		return;
	}
	cnt = realloc(cnt, clen + 1);
	cnt[clen] = '\0';
	want_count = strtol(cnt, NULL, 10);
	free(cnt);
	run(in, len, 0, 1, 0, WHOLE, 0, 1, &whole);
	if (whole.st != SSE_OK || whole.r.broken)
		t_fail(__LINE__, "whole: %s %s", whole.msg, whole.r.broken ? whole.r.broken : "");
	if ((long)whole.r.count != want_count)
		t_fail(__LINE__, "%zu events, want %ld", whole.r.count, want_count);
	run(in, len, 0, 1, 0, BYTES, 0, 1, &o);
	if (o.st != SSE_OK || !same_log(&o.r, &whole.r))
		t_fail(__LINE__, "one byte at a time: events differ from the whole feed");
	free(o.r.log);
	for (i = 0; i <= len; i++) {
		run(in, len, 0, 1, 0, SPLIT, i, 1, &o);
		if (o.st != SSE_OK || !same_log(&o.r, &whole.r)) {
			t_fail(__LINE__, "split at %zu: events differ from the whole feed", i);
			free(o.r.log);
			break;
		}
		free(o.r.log);
	}
	free(whole.r.log);
	free(in);
	t_end();
}

static void test_corpus(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	char *names[256];
	size_t n = 0, i;
	t_begin("corpus directory has fixtures");
	if (d == NULL) {
		t_fail(__LINE__, "cannot open %s (run from the repo root or pass the directory)", dir);
		t_end();
		return;
	}
	while ((de = readdir(d)) != NULL && n < 256) {
		size_t l = strlen(de->d_name);
		if (l > 4 && strcmp(de->d_name + l - 4, ".sse") == 0)
			names[n++] = strdup(de->d_name);
	}
	closedir(d);
	T_CHECK(n >= 10);
	t_end();
	qsort(names, n, sizeof names[0], by_name);
	for (i = 0; i < n; i++) {
		test_corpus_file(dir, names[i]);
		free(names[i]);
	}
}

int main(int argc, char **argv)
{
	size_t i;
	for (i = 0; i < sizeof cases / sizeof cases[0]; i++)
		test_case(&cases[i]);
	test_api();
	test_reuse();
	test_exact_limit();
	test_huge_event();
	test_huge_line();
	test_corpus(argc > 1 ? argv[1] : "spec/fixtures/sse");
	return t_summary("test_sse");
}
