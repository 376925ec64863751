/*
 * fuzz_sse.c: libFuzzer target for src/sse.c.
 *
 * Owns: one property: however the input is cut into pieces, the parser
 * yields the same events, status and error location as when it gets the
 * input whole, and it never breaks its bounds (dispatched data_len <=
 * max_event, line and data buffers within their caps).
 * Input: byte 0-1 pick the split position, byte 2 max_event (1-255, or 0
 * for the default), byte 3 the event at which the callback stops (0 = never);
 * the rest is the stream.
 * Never: includes lua.h or curl.h; links only sse.c and buf.c.
 * Build and run (not part of the Makefile):
 *   clang -std=c11 -D_POSIX_C_SOURCE=200809L -g -O1 -fsanitize=fuzzer,address,undefined \
 *     -Isrc spec/c/fuzz_sse.c src/sse.c src/buf.c -o /tmp/fuzz_sse
 *   mkdir -p /tmp/fuzz_corpus && cp spec/fixtures/sse/[a-z]*.sse /tmp/fuzz_corpus/
 *   /tmp/fuzz_sse -max_total_time=30 /tmp/fuzz_corpus
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "sse.h"

struct fz_rec {
	struct buf log; /* events serialised with their lengths */
	size_t count, stop_at, max_event;
};

static void fz_check(int ok)
{
	if (!ok)
		abort();
}

static void fz_put(struct fz_rec *r, const char *p, size_t n)
{
	fz_check(buf_append(&r->log, &n, sizeof n) == BUF_OK);
	fz_check(buf_append(&r->log, p, n) == BUF_OK);
}

static int fz_event(void *ud, const struct sse_event *ev)
{
	struct fz_rec *r = ud;
	fz_check(ev->data_len <= r->max_event);
	fz_check(ev->data[ev->data_len] == '\0');
	fz_check(ev->type_len > 0 && ev->type[ev->type_len] == '\0');
	fz_check(ev->id[ev->id_len] == '\0');
	fz_put(r, ev->type, ev->type_len);
	fz_put(r, ev->data, ev->data_len);
	fz_put(r, ev->id, ev->id_len);
	r->count++;
	return r->stop_at && r->count == r->stop_at;
}

static void fz_bounds(const struct sse_parser *p)
{
	fz_check(p->line.len <= p->max_event + SSE_LINE_SLACK);
	fz_check(p->line.cap <= p->max_event + SSE_LINE_SLACK + 1);
	fz_check(p->data.len <= p->max_event + 1);
	fz_check(p->data.cap <= p->max_event + 2);
}

struct fz_out {
	struct fz_rec r;
	enum sse_status st;
	size_t offset, events;
	long retry;
};

/* Feed `s` cut at the `ncuts` positions in `cuts` (ascending), then finish. */
static void fz_run(const char *s, size_t n, const size_t *cuts, size_t ncuts, size_t max_event,
                   size_t stop_at, struct fz_out *o)
{
	struct sse_parser p;
	size_t at = 0, i;
	enum sse_status st = SSE_OK;
	sse_init(&p, max_event);
	buf_init(&o->r.log, 0);
	o->r.count = 0;
	o->r.stop_at = stop_at;
	o->r.max_event = p.max_event;
	for (i = 0; i <= ncuts && st == SSE_OK; i++) {
		size_t end = i < ncuts ? cuts[i] : n;
		/* An exact-size copy, so ASan sees any read past the piece. */
		char *piece = malloc(end - at + 1);
		fz_check(piece != NULL);
		memcpy(piece, s + at, end - at);
		st = sse_feed(&p, piece, end - at, fz_event, &o->r);
		free(piece);
		fz_bounds(&p);
		at = end;
	}
	if (st == SSE_OK)
		st = sse_finish(&p, fz_event, &o->r);
	fz_bounds(&p);
	o->st = st;
	o->offset = p.offset;
	o->events = p.events;
	o->retry = p.retry_ms;
	if (st == SSE_OK)
		fz_check(p.offset == n);
	sse_free(&p);
}

static void fz_same(const struct fz_out *a, const struct fz_out *b)
{
	fz_check(a->st == b->st);
	fz_check(a->offset == b->offset);
	fz_check(a->events == b->events);
	fz_check(a->retry == b->retry);
	fz_check(a->r.count == b->r.count);
	fz_check(a->r.log.len == b->r.log.len);
	fz_check(a->r.log.len == 0 || memcmp(a->r.log.data, b->r.log.data, a->r.log.len) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *s;
	size_t n, cut, max_event, stop_at, i;
	struct fz_out whole, split, bytes;
	if (size < 4)
		return 0;
	s = (const char *)data + 4;
	n = size - 4;
	cut = ((size_t)data[0] | (size_t)data[1] << 8) % (n + 1);
	max_event = data[2];
	stop_at = data[3] % 8;
	fz_run(s, n, NULL, 0, max_event, stop_at, &whole);
	fz_run(s, n, &cut, 1, max_event, stop_at, &split);
	fz_same(&whole, &split);
	if (n <= 4096) {
		size_t *cuts = malloc((n + 1) * sizeof *cuts);
		fz_check(cuts != NULL);
		for (i = 0; i < n; i++)
			cuts[i] = i + 1;
		fz_run(s, n, cuts, n ? n - 1 : 0, max_event, stop_at, &bytes);
		fz_same(&whole, &bytes);
		buf_free(&bytes.r.log);
		free(cuts);
	}
	buf_free(&whole.r.log);
	buf_free(&split.r.log);
	return 0;
}
