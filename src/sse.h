/*
 * sse.h: an incremental Server-Sent Events parser (WHATWG EventSource rules).
 *
 * Owns: the line and event state of one stream. Bytes go in with sse_feed()
 * in pieces of any size (split anywhere, including inside a CRLF pair or a
 * UTF-8 sequence); each complete event is handed to the caller's callback.
 * The parser makes no allocation per byte or per event: the data and event
 * name accumulate in buffers that are reused.
 * Never: includes lua.h or curl.h, or calls back into anything but the
 * event callback.
 *
 * Rules: LF, CR and CRLF line ends (mixed too); a leading UTF-8 BOM is
 * skipped; lines starting with ':' are comments; "field:value" with one
 * optional space after the colon; a line without a colon is a field with an
 * empty value; several data lines are joined with "\n"; "event" sets the
 * type, "id" the last event id (ignored if it contains NUL), "retry" the
 * reconnection time (digits only); unknown fields are ignored, except the
 * non-standard "error" field sent by older llama.cpp servers, which makes
 * the event's type "error" with that value as its data. A blank line
 * dispatches the event when its data buffer is non-empty.
 */
#ifndef LCHAT_SSE_H
#define LCHAT_SSE_H

#include <stddef.h>
#include "buf.h"

#define SSE_DEFAULT_MAX_EVENT ((size_t)16 << 20) /* 16 MiB */
/*
 * A single line may hold max_event + SSE_LINE_SLACK bytes (without its line
 * end), so a "data: " line carrying exactly max_event bytes fits; a longer
 * line is SSE_TOO_LARGE even when it is a comment.
 */
#define SSE_LINE_SLACK 64

struct sse_event {
	const char *type;  /* "message" unless an event: field said otherwise */
	size_t type_len;
	const char *data;  /* data lines joined by "\n"; NUL-terminated */
	size_t data_len;
	const char *id;    /* last event id seen so far ("" if none) */
	size_t id_len;
};

/* Return 0 to continue, non-zero to stop: sse_feed then returns SSE_STOPPED. */
typedef int (*sse_event_fn)(void *ud, const struct sse_event *ev);

enum sse_status {
	SSE_OK = 0,
	SSE_TOO_LARGE = 1, /* an event (or a line) passed max_event bytes */
	SSE_NO_MEMORY = 2,
	SSE_STOPPED = 3    /* the callback asked to stop */
};

struct sse_parser {
	struct buf line;   /* the current, incomplete line */
	struct buf data;   /* pending data: each data line plus "\n" (WHATWG) */
	struct buf type;   /* the event type buffer */
	struct buf id;     /* last event id */
	long retry_ms;     /* last valid retry: value, -1 if none */
	size_t max_event;
	size_t events;     /* events dispatched so far (for error messages) */
	size_t offset;     /* bytes fed so far (for error messages) */
	int bom_checked;   /* BOM bytes matched so far (0-2); 3 once decided */
	int last_was_cr;   /* the last line ended in CR: skip one following LF */
	int has_error_field; /* an error: field was seen: the type is "error" */
	enum sse_status status; /* sticky: once not SSE_OK, feed/finish return it */
};

/* Set up a parser; max_event 0 means SSE_DEFAULT_MAX_EVENT. */
void sse_init(struct sse_parser *p, size_t max_event);
/* Release the parser's buffers. */
void sse_free(struct sse_parser *p);
/*
 * Feed `n` bytes, calling `fn` (may be NULL) for each complete event. The
 * event's pointers are valid only during the call. Any status but SSE_OK is
 * final: the parser then only returns that status, and p->events (events
 * dispatched) and p->offset (the byte where it stopped) say where; for a
 * too-large line, offset is the first byte over the limit, otherwise the
 * byte after the line end of the line that failed or stopped. sse_free is
 * always safe.
 */
enum sse_status sse_feed(struct sse_parser *p, const char *bytes, size_t n,
                         sse_event_fn fn, void *ud);
/*
 * End of a stream that closed cleanly: an unterminated last line is taken
 * as a line, and a pending event with data is dispatched (a deliberate
 * leniency over WHATWG, so nothing that arrived is lost).
 */
enum sse_status sse_finish(struct sse_parser *p, sse_event_fn fn, void *ud);
/* A one-line description of a status, for error messages. */
const char *sse_status_string(enum sse_status s);
/*
 * Format p->status with its location, e.g. "stream event 3 over the
 * 16777216-byte limit at byte 1234", into out (always NUL-terminated when
 * size > 0). Returns out.
 */
const char *sse_describe(const struct sse_parser *p, char *out, size_t size);

#endif
