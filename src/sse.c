/*
 * sse.c: the incremental Server-Sent Events parser (see sse.h for the rules).
 *
 * Owns: splitting a byte stream into lines and lines into events. Line ends
 * are found with memchr over the piece; a line that lies whole inside one
 * piece is parsed in place, and only a line cut by a piece boundary is
 * copied into p->line. Data, type and id accumulate in buffers that are
 * reset, not freed, between events, so the steady state allocates nothing.
 * Every buffer is capped (line: max_event + SSE_LINE_SLACK, data: max_event),
 * and the cap is checked before growing, so a hostile stream cannot make
 * us allocate past the limit.
 * Never: includes lua.h or curl.h, allocates per byte or per event, or
 * calls anything but the event callback.
 */
#include "sse.h"

#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

static const unsigned char sse_bom[3] = {0xEF, 0xBB, 0xBF};

static size_t line_max(const struct sse_parser *p)
{
	return p->max_event > SIZE_MAX - SSE_LINE_SLACK - 2 ? SIZE_MAX - 2
	                                                     : p->max_event + SSE_LINE_SLACK;
}

void sse_init(struct sse_parser *p, size_t max_event)
{
	if (max_event == 0)
		max_event = SSE_DEFAULT_MAX_EVENT;
	if (max_event > SIZE_MAX - SSE_LINE_SLACK - 2)
		max_event = SIZE_MAX - SSE_LINE_SLACK - 2;
	p->max_event = max_event;
	buf_init(&p->line, line_max(p));
	/* +1: the stored form keeps a "\n" after the last line, stripped at dispatch. */
	buf_init(&p->data, max_event + 1);
	/* type and id come from one line, so the line cap bounds them too. */
	buf_init(&p->type, line_max(p));
	buf_init(&p->id, line_max(p));
	p->retry_ms = -1;
	p->events = 0;
	p->offset = 0;
	p->bom_checked = 0;
	p->last_was_cr = 0;
	p->has_error_field = 0;
	p->status = SSE_OK;
}

void sse_free(struct sse_parser *p)
{
	buf_free(&p->line);
	buf_free(&p->data);
	buf_free(&p->type);
	buf_free(&p->id);
}

static enum sse_status from_buf(enum buf_status st)
{
	return st == BUF_OK ? SSE_OK : st == BUF_TOO_LARGE ? SSE_TOO_LARGE : SSE_NO_MEMORY;
}

/* A blank line: hand the pending event to fn if it has data, then start a new one. */
static enum sse_status dispatch(struct sse_parser *p, sse_event_fn fn, void *ud)
{
	struct sse_event ev;
	int stop = 0;
	if (p->data.len > 0) {
		/* Drop the "\n" that followed the last data line. */
		p->data.len--;
		p->data.data[p->data.len] = '\0';
		if (p->has_error_field) {
			ev.type = "error";
			ev.type_len = 5;
		} else if (p->type.len > 0) {
			ev.type = p->type.data;
			ev.type_len = p->type.len;
		} else {
			ev.type = "message";
			ev.type_len = 7;
		}
		ev.data = p->data.data;
		ev.data_len = p->data.len;
		ev.id = p->id.data ? p->id.data : "";
		ev.id_len = p->id.len;
		p->events++;
		if (fn)
			stop = fn(ud, &ev);
	}
	buf_reset(&p->data);
	buf_reset(&p->type);
	p->has_error_field = 0;
	return stop ? SSE_STOPPED : SSE_OK;
}

/* retry: only ASCII digits (at least one); too big a number is clamped. */
static void set_retry(struct sse_parser *p, const char *v, size_t n)
{
	long ms = 0;
	size_t i;
	if (n == 0)
		return;
	for (i = 0; i < n; i++)
		if (v[i] < '0' || v[i] > '9')
			return;
	for (i = 0; i < n; i++) {
		int d = v[i] - '0';
		ms = ms > (LONG_MAX - d) / 10 ? LONG_MAX : ms * 10 + d;
	}
	p->retry_ms = ms;
}

#define FIELD_IS(name) (nlen == sizeof(name) - 1 && memcmp(line, name, nlen) == 0)

/* Interpret one complete line (without its line end). */
static enum sse_status process_line(struct sse_parser *p, const char *line, size_t len,
                                    sse_event_fn fn, void *ud)
{
	const char *colon, *v;
	size_t nlen, vlen;
	enum buf_status st;
	if (len == 0)
		return dispatch(p, fn, ud);
	if (line[0] == ':')
		return SSE_OK; /* comment: ": keep-alive", ": OPENROUTER PROCESSING" */
	colon = memchr(line, ':', len);
	if (colon) {
		nlen = (size_t)(colon - line);
		v = colon + 1;
		vlen = len - nlen - 1;
		if (vlen > 0 && v[0] == ' ') {
			v++;
			vlen--;
		}
	} else {
		nlen = len;
		v = "";
		vlen = 0;
	}
	if (FIELD_IS("data")) {
		/* One reserve for value + "\n", so the data cap is all or nothing. */
		st = buf_reserve(&p->data, vlen + 1);
		if (st != BUF_OK)
			return from_buf(st);
		buf_append(&p->data, v, vlen);
		buf_append_byte(&p->data, '\n');
	} else if (FIELD_IS("event")) {
		buf_reset(&p->type);
		return from_buf(buf_append(&p->type, v, vlen));
	} else if (FIELD_IS("id")) {
		if (memchr(v, '\0', vlen) == NULL) {
			buf_reset(&p->id);
			return from_buf(buf_append(&p->id, v, vlen));
		}
	} else if (FIELD_IS("retry")) {
		set_retry(p, v, vlen);
	} else if (FIELD_IS("error")) {
		/* Non-standard (older llama.cpp): the value replaces the data, type "error". */
		buf_reset(&p->data);
		st = buf_reserve(&p->data, vlen + 1);
		if (st != BUF_OK)
			return from_buf(st);
		buf_append(&p->data, v, vlen);
		buf_append_byte(&p->data, '\n');
		p->has_error_field = 1;
	}
	return SSE_OK;
}

/*
 * Scan n bytes (after the BOM check). A line end is CR, LF or CRLF; a CR
 * sets last_was_cr so that an LF right after it, in this piece or the
 * next, is skipped rather than taken as a second (blank) line.
 * p->offset moves with the scan so errors can say where they happened.
 */
static enum sse_status scan(struct sse_parser *p, const char *s, size_t n, sse_event_fn fn,
                            void *ud)
{
	const char *end = s + n;
	/* Next CR / LF at or after s, cached so the scan stays linear when one is rare. */
	const char *cr = NULL, *lf = NULL;
	int cr_none = 0, lf_none = 0;
	size_t max = line_max(p);
	while (s < end) {
		const char *e;
		const char *line;
		size_t k, len;
		enum sse_status st;
		if (p->last_was_cr) {
			p->last_was_cr = 0;
			if (*s == '\n') {
				s++;
				p->offset++;
				continue;
			}
		}
		/* cr/lf stay valid while >= s: nothing lies between s and them. */
		if (!cr_none && (cr == NULL || cr < s)) {
			cr = memchr(s, '\r', (size_t)(end - s));
			cr_none = cr == NULL;
		}
		if (!lf_none && (lf == NULL || lf < s)) {
			lf = memchr(s, '\n', (size_t)(end - s));
			lf_none = lf == NULL;
		}
		e = cr && (!lf || cr < lf) ? cr : lf;
		if (e == NULL) {
			/* Unfinished line: keep it for the next piece, within the cap. */
			k = (size_t)(end - s);
			if (k > max - p->line.len) {
				p->offset += max - p->line.len + 1;
				return SSE_TOO_LARGE;
			}
			st = from_buf(buf_append(&p->line, s, k));
			if (st != SSE_OK)
				return st;
			p->offset += k;
			return SSE_OK;
		}
		k = (size_t)(e - s);
		if (k > max - p->line.len) {
			p->offset += max - p->line.len + 1;
			return SSE_TOO_LARGE;
		}
		if (p->line.len > 0) {
			st = from_buf(buf_append(&p->line, s, k));
			if (st != SSE_OK)
				return st;
			line = p->line.data;
			len = p->line.len;
		} else {
			line = s; /* whole line inside this piece: no copy */
			len = k;
		}
		p->last_was_cr = *e == '\r';
		p->offset += k + 1;
		s = e + 1;
		st = process_line(p, line, len, fn, ud);
		buf_reset(&p->line);
		if (st != SSE_OK)
			return st;
	}
	return SSE_OK;
}

/* Match a leading BOM, which may arrive split across pieces; return the bytes used. */
static size_t check_bom(struct sse_parser *p, const char *s, size_t n, sse_event_fn fn,
                        void *ud, enum sse_status *st)
{
	size_t used = 0;
	*st = SSE_OK;
	while (p->bom_checked < 3 && used < n) {
		if ((unsigned char)s[used] == sse_bom[p->bom_checked]) {
			p->bom_checked++;
			used++;
			if (p->bom_checked == 3)
				p->offset += 3;
		} else {
			/* Not a BOM: the bytes matched so far were ordinary text. */
			int k = p->bom_checked;
			p->bom_checked = 3;
			*st = scan(p, (const char *)sse_bom, (size_t)k, fn, ud);
		}
	}
	return used;
}

enum sse_status sse_feed(struct sse_parser *p, const char *bytes, size_t n, sse_event_fn fn,
                         void *ud)
{
	enum sse_status st;
	if (p->status != SSE_OK)
		return p->status;
	if (p->bom_checked < 3) {
		size_t used = check_bom(p, bytes, n, fn, ud, &st);
		if (st != SSE_OK)
			return p->status = st;
		bytes += used;
		n -= used;
	}
	if (n > 0)
		p->status = scan(p, bytes, n, fn, ud);
	return p->status;
}

enum sse_status sse_finish(struct sse_parser *p, sse_event_fn fn, void *ud)
{
	enum sse_status st;
	if (p->status != SSE_OK)
		return p->status;
	if (p->bom_checked < 3) {
		/* The stream ended inside a BOM prefix: those bytes are text. */
		int k = p->bom_checked;
		p->bom_checked = 3;
		st = scan(p, (const char *)sse_bom, (size_t)k, fn, ud);
		if (st != SSE_OK)
			return p->status = st;
	}
	if (p->line.len > 0) {
		st = process_line(p, p->line.data, p->line.len, fn, ud);
		buf_reset(&p->line);
		if (st != SSE_OK)
			return p->status = st;
	}
	p->last_was_cr = 0;
	return p->status = dispatch(p, fn, ud);
}

const char *sse_status_string(enum sse_status s)
{
	switch (s) {
	case SSE_OK:
		return "ok";
	case SSE_TOO_LARGE:
		return "stream event or line over the size limit";
	case SSE_NO_MEMORY:
		return "out of memory parsing the stream";
	case SSE_STOPPED:
		return "stream stopped by the event callback";
	}
	return "unknown stream status";
}

const char *sse_describe(const struct sse_parser *p, char *out, size_t size)
{
	if (size == 0)
		return out;
	switch (p->status) {
	case SSE_TOO_LARGE:
		snprintf(out, size, "stream event %zu over the %zu-byte limit at byte %zu",
		         p->events + 1, p->max_event, p->offset);
		break;
	case SSE_NO_MEMORY:
		snprintf(out, size, "out of memory in stream event %zu at byte %zu", p->events + 1,
		         p->offset);
		break;
	case SSE_STOPPED:
		snprintf(out, size, "stream stopped by the event callback after event %zu at byte %zu",
		         p->events, p->offset);
		break;
	default:
		snprintf(out, size, "%s", sse_status_string(p->status));
		break;
	}
	return out;
}
