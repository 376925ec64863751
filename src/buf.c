/*
 * buf.c: the capped, growable byte buffer (see buf.h).
 *
 * Owns: the storage of one struct buf: the limit is checked before any
 * growth, growth is geometric (amortised O(1) appends) and capped at the
 * limit, and the data is kept NUL-terminated once allocated.
 * Never: aborts, longjmps or exits on failure (a failed realloc is
 * BUF_NO_MEMORY and leaves the buffer as it was); includes lua.h or curl.h.
 */
#include "buf.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define BUF_MIN_CAP 64

void buf_init(struct buf *b, size_t limit)
{
	b->data = NULL;
	b->len = 0;
	b->cap = 0;
	b->limit = limit;
}

void buf_free(struct buf *b)
{
	free(b->data);
	b->data = NULL;
	b->len = 0;
	b->cap = 0;
}

void buf_reset(struct buf *b)
{
	b->len = 0;
	if (b->data)
		b->data[0] = '\0';
}

/*
 * Ensure cap >= len + extra + 1 (the spare byte holds the NUL). The limit is
 * checked first, so a refused request allocates nothing; the new capacity
 * doubles but never exceeds limit + 1, so memory stays bounded by the limit.
 */
enum buf_status buf_reserve(struct buf *b, size_t extra)
{
	size_t need, cap;
	char *p;
	if (extra > SIZE_MAX - 1 - b->len)
		return b->limit ? BUF_TOO_LARGE : BUF_NO_MEMORY;
	need = b->len + extra;
	if (b->limit && need > b->limit)
		return BUF_TOO_LARGE;
	if (need < b->cap) /* need + 1 <= cap */
		return BUF_OK;
	cap = b->cap < BUF_MIN_CAP ? BUF_MIN_CAP : b->cap;
	while (cap < need + 1) {
		if (cap > SIZE_MAX / 2) {
			cap = need + 1;
			break;
		}
		cap *= 2;
	}
	if (b->limit && cap > b->limit + 1)
		cap = b->limit + 1; /* >= need + 1, as need <= limit */
	p = realloc(b->data, cap);
	if (p == NULL)
		return BUF_NO_MEMORY;
	if (b->data == NULL)
		p[0] = '\0';
	b->data = p;
	b->cap = cap;
	return BUF_OK;
}

enum buf_status buf_append(struct buf *b, const void *p, size_t n)
{
	enum buf_status st;
	if (n == 0)
		return BUF_OK;
	st = buf_reserve(b, n);
	if (st != BUF_OK)
		return st;
	memcpy(b->data + b->len, p, n);
	b->len += n;
	b->data[b->len] = '\0';
	return BUF_OK;
}

enum buf_status buf_append_byte(struct buf *b, char c)
{
	enum buf_status st = buf_reserve(b, 1);
	if (st != BUF_OK)
		return st;
	b->data[b->len++] = c;
	b->data[b->len] = '\0';
	return BUF_OK;
}
