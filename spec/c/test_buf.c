/*
 * test_buf.c: unit tests of src/buf.c (limits, reserve, growth,
 * reset, failure results).
 *
 * Owns: nothing but its test cases. Links only buf.o (and sse.o, unused).
 * Never: includes lua.h or curl.h.
 * Run from the repo root: build/spec/test_buf (arguments are ignored).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "test.h"

/* Under ASan a huge allocation must fail with NULL, as it does in libc. */
const char *__asan_default_options(void);
const char *__asan_default_options(void)
{
	return "allocator_may_return_null=1";
}

static void test_init(void)
{
	struct buf b;
	t_begin("init: empty, nothing allocated");
	buf_init(&b, 42);
	T_CHECK(b.data == NULL);
	T_EQ_SIZE(b.len, 0);
	T_EQ_SIZE(b.cap, 0);
	T_EQ_SIZE(b.limit, 42);
	T_EQ_INT(buf_append(&b, "", 0), BUF_OK);
	T_CHECK(b.data == NULL); /* an empty append allocates nothing */
	buf_free(&b);
	buf_free(&b); /* idempotent */
	T_CHECK(b.data == NULL);
	t_end();
}

static void test_append(void)
{
	struct buf b;
	t_begin("append: bytes, NUL-terminated, binary-safe");
	buf_init(&b, 0);
	T_EQ_INT(buf_append(&b, "abc", 3), BUF_OK);
	T_EQ_INT(buf_append(&b, "d\0e", 3), BUF_OK);
	T_EQ_INT(buf_append_byte(&b, 'f'), BUF_OK);
	T_EQ_SIZE(b.len, 7);
	T_CHECK(b.data != NULL && memcmp(b.data, "abcd\0ef", 8) == 0); /* includes the NUL */
	T_CHECK(b.cap >= b.len + 1);
	buf_free(&b);
	t_end();
}

static void test_limit(void)
{
	struct buf b;
	size_t i;
	t_begin("limit: refused before growing, all or nothing");
	buf_init(&b, 10);
	T_EQ_INT(buf_append(&b, "0123456789x", 11), BUF_TOO_LARGE);
	T_CHECK(b.data == NULL); /* checked before any allocation */
	T_EQ_INT(buf_append(&b, "01234", 5), BUF_OK);
	T_EQ_INT(buf_append(&b, "567890", 6), BUF_TOO_LARGE);
	T_EQ_SIZE(b.len, 5);
	T_CHECK(strcmp(b.data, "01234") == 0);
	T_EQ_INT(buf_append(&b, "56789", 5), BUF_OK); /* exactly the limit */
	T_EQ_SIZE(b.len, 10);
	T_EQ_INT(buf_append_byte(&b, 'x'), BUF_TOO_LARGE);
	T_EQ_INT(buf_reserve(&b, 1), BUF_TOO_LARGE);
	T_EQ_INT(buf_reserve(&b, 0), BUF_OK);
	T_CHECK(strcmp(b.data, "0123456789") == 0);
	T_CHECK(b.cap <= 11);
	buf_free(&b);
	t_end();

	t_begin("limit: capacity never passes limit + 1");
	buf_init(&b, 100);
	for (i = 0; i < 100; i++)
		T_EQ_INT(buf_append_byte(&b, (char)('a' + i % 26)), BUF_OK);
	T_EQ_INT(buf_append_byte(&b, 'z'), BUF_TOO_LARGE);
	T_EQ_SIZE(b.len, 100);
	T_CHECK(b.cap <= 101);
	T_CHECK(b.data[100] == '\0');
	buf_free(&b);
	t_end();

	t_begin("limit: size overflow is refused, not wrapped");
	buf_init(&b, 10);
	T_EQ_INT(buf_append(&b, "ab", 2), BUF_OK);
	T_EQ_INT(buf_reserve(&b, SIZE_MAX), BUF_TOO_LARGE);
	T_EQ_INT(buf_reserve(&b, SIZE_MAX - 2), BUF_TOO_LARGE);
	T_EQ_SIZE(b.len, 2);
	buf_free(&b);
	buf_init(&b, 0);
	T_EQ_INT(buf_append(&b, "ab", 2), BUF_OK);
	T_EQ_INT(buf_reserve(&b, SIZE_MAX), BUF_NO_MEMORY);
	T_EQ_INT(buf_reserve(&b, SIZE_MAX - 2), BUF_NO_MEMORY);
	T_EQ_SIZE(b.len, 2);
	buf_free(&b);
	t_end();
}

static void test_no_memory(void)
{
	struct buf b;
	char *before;
	size_t cap;
	t_begin("realloc failure: BUF_NO_MEMORY, buffer unchanged");
	buf_init(&b, 0);
	T_EQ_INT(buf_append(&b, "keep", 4), BUF_OK);
	before = b.data;
	cap = b.cap;
	T_EQ_INT(buf_reserve(&b, SIZE_MAX / 8), BUF_NO_MEMORY); /* ~2^61: no libc can */
	T_EQ_INT(buf_append(&b, "x", SIZE_MAX / 16), BUF_NO_MEMORY); /* never read: fails first */
	T_CHECK(b.data == before);
	T_EQ_SIZE(b.cap, cap);
	T_EQ_SIZE(b.len, 4);
	T_CHECK(strcmp(b.data, "keep") == 0);
	T_EQ_INT(buf_append(&b, "!", 1), BUF_OK); /* still usable */
	T_CHECK(strcmp(b.data, "keep!") == 0);
	buf_free(&b);
	t_end();
}

static void test_reserve(void)
{
	struct buf b;
	char *p;
	size_t i;
	t_begin("reserve: room for n more without reallocating");
	buf_init(&b, 0);
	T_EQ_INT(buf_reserve(&b, 1000), BUF_OK);
	T_CHECK(b.data != NULL && b.data[0] == '\0');
	T_EQ_SIZE(b.len, 0);
	T_CHECK(b.cap >= 1001);
	p = b.data;
	for (i = 0; i < 1000; i++)
		buf_append_byte(&b, 'x');
	T_CHECK(b.data == p);
	T_EQ_SIZE(b.len, 1000);
	T_EQ_INT(buf_reserve(&b, 0), BUF_OK);
	T_CHECK(b.data == p);
	buf_free(&b);
	t_end();

	t_begin("growth: geometric (few reallocations)");
	buf_init(&b, 0);
	{
		size_t changes = 0, last = 0;
		for (i = 0; i < 1000000; i++) {
			buf_append_byte(&b, 'y');
			if (b.cap != last) {
				changes++;
				last = b.cap;
			}
		}
		T_EQ_SIZE(b.len, 1000000);
		T_CHECK(changes <= 20);
		T_CHECK(b.cap <= 2 * 1000000 + 64);
	}
	buf_free(&b);
	t_end();
}

static void test_reset(void)
{
	struct buf b;
	char *p;
	size_t cap;
	t_begin("reset: keeps capacity for reuse");
	buf_init(&b, 50);
	buf_reset(&b); /* unallocated: fine */
	T_CHECK(b.data == NULL);
	buf_append(&b, "0123456789012345678901234567890123456789", 40);
	p = b.data;
	cap = b.cap;
	buf_reset(&b);
	T_EQ_SIZE(b.len, 0);
	T_CHECK(b.data == p && b.cap == cap);
	T_CHECK(b.data[0] == '\0');
	T_EQ_INT(buf_append(&b, "0123456789012345678901234567890123456789", 40), BUF_OK);
	T_CHECK(b.data == p);
	T_EQ_INT(buf_append(&b, "01234567890", 11), BUF_TOO_LARGE); /* limit survives reset */
	buf_free(&b);
	T_CHECK(b.data == NULL && b.len == 0 && b.cap == 0);
	T_EQ_SIZE(b.limit, 50); /* reusable after free */
	T_EQ_INT(buf_append(&b, "again", 5), BUF_OK);
	T_CHECK(strcmp(b.data, "again") == 0);
	buf_free(&b);
	t_end();
}

int main(void)
{
	test_init();
	test_append();
	test_limit();
	test_no_memory();
	test_reserve();
	test_reset();
	return t_summary("test_buf");
}
