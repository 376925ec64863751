/*
 * test.h: the tiny shared harness of the C unit tests (no framework).
 *
 * Owns: pass/fail counting per case, failure messages that name the case
 * and the line, and the one summary line "name: N passed, N failed".
 * Never: depends on anything but the C library; a test binary includes it once.
 */
#ifndef LCHAT_TEST_H
#define LCHAT_TEST_H

#include <stdarg.h>
#include <stdio.h>

static int t_passed, t_failed;
static int t_case_failed;
static const char *t_case_name = "?";

/* Start a case; every check until t_end() belongs to it. */
static inline void t_begin(const char *name)
{
	t_case_name = name;
	t_case_failed = 0;
}

/* Record a failure of the current case (printed on stdout, so the summary stays last). */
static inline void t_fail(int line, const char *fmt, ...)
{
	va_list ap;
	fprintf(stdout, "FAIL %s (line %d): ", t_case_name, line);
	va_start(ap, fmt);
	vfprintf(stdout, fmt, ap);
	va_end(ap);
	fputc('\n', stdout);
	t_case_failed = 1;
}

/* Close the case; returns 1 if it passed. */
static inline int t_end(void)
{
	if (t_case_failed)
		t_failed++;
	else
		t_passed++;
	return !t_case_failed;
}

/* Print the summary line; the exit status of main. */
static inline int t_summary(const char *prog)
{
	printf("%s: %d passed, %d failed\n", prog, t_passed, t_failed);
	return t_failed ? 1 : 0;
}

#define T_CHECK(cond)                                                                        \
	do {                                                                                 \
		if (!(cond))                                                                 \
			t_fail(__LINE__, "%s", #cond);                                       \
	} while (0)

#define T_EQ_SIZE(got, want)                                                                 \
	do {                                                                                 \
		size_t t_g_ = (size_t)(got), t_w_ = (size_t)(want);                          \
		if (t_g_ != t_w_)                                                            \
			t_fail(__LINE__, "%s is %zu, want %zu", #got, t_g_, t_w_);           \
	} while (0)

#define T_EQ_INT(got, want)                                                                  \
	do {                                                                                 \
		long t_g_ = (long)(got), t_w_ = (long)(want);                                \
		if (t_g_ != t_w_)                                                            \
			t_fail(__LINE__, "%s is %ld, want %ld", #got, t_g_, t_w_);           \
	} while (0)

#endif
