/*
 * buf.h: a growable byte buffer with a hard size limit.
 *
 * Owns: one malloc'ed byte array (data, len, cap) that never grows past
 * `limit`. Growing past the limit or a failed realloc is reported as an
 * error result; nothing here aborts or longjmps.
 * Never: includes lua.h or curl.h (C tests and fuzzers link it alone).
 */
#ifndef LCHAT_BUF_H
#define LCHAT_BUF_H

#include <stddef.h>

enum buf_status {
	BUF_OK = 0,
	BUF_TOO_LARGE = 1, /* the append would pass `limit`; nothing appended */
	BUF_NO_MEMORY = 2  /* realloc failed; nothing appended */
};

struct buf {
	char *data;   /* NUL-terminated when non-NULL (cap keeps one spare byte) */
	size_t len;
	size_t cap;
	size_t limit; /* max len; 0 means no limit */
};

/* Initialise an empty buffer (no allocation yet). */
void buf_init(struct buf *b, size_t limit);
/* Release the storage; the buffer is empty and reusable afterwards. */
void buf_free(struct buf *b);
/* Forget the contents but keep the storage for reuse. */
void buf_reset(struct buf *b);
/* Make room for `extra` more bytes (within the limit). */
enum buf_status buf_reserve(struct buf *b, size_t extra);
/* Append `n` bytes; all or nothing. */
enum buf_status buf_append(struct buf *b, const void *p, size_t n);
enum buf_status buf_append_byte(struct buf *b, char c);

#endif
