/*
 * test_http.c: unit tests of src/http.c's event loop without a transfer:
 * http_watch (other descriptors in the engine's one epoll wait), the
 * wakeup fd, and the one descriptor for host loops (http_engine_fd).
 *
 * Owns: nothing but its test cases. Links buf.o, sse.o, chunk_scan.o,
 * http.o and curl_dl.o; no transfer starts, so libcurl is never loaded.
 * Never: includes lua.h, sleeps, or waits on a clock: every wait here has
 * a ready descriptor (a hang is the failure, caught by the runner's timeout).
 * Run from the repo root: build/spec/test_http (arguments are ignored).
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "http.h"
#include "test.h"

/* Long enough that a wait which does not end on readiness hangs the test. */
#define FOREVER_MS 600000

struct seen {
	int calls;
	int fd;
	int events;
	void *ud;
	struct http_engine *e; /* for callbacks that change watches */
	int remove_fd;         /* a watch the callback removes (-1: none) */
};

static void on_ready(void *ud, int fd, int events)
{
	struct seen *s = ud;
	s->calls++;
	s->fd = fd;
	s->events = events;
	s->ud = ud;
	if (s->remove_fd >= 0)
		http_watch(s->e, s->remove_fd, 0, NULL, NULL);
}

static struct http_engine *engine(void)
{
	char err[256];
	struct http_engine *e = http_engine_new(err, sizeof err);
	if (e == NULL) {
		printf("http_engine_new: %s\n", err);
		exit(1);
	}
	return e;
}

static void seen_init(struct seen *s, struct http_engine *e)
{
	memset(s, 0, sizeof *s);
	s->e = e;
	s->fd = -1;
	s->remove_fd = -1;
}

static int poll_once(struct http_engine *e, int ms)
{
	char err[256];
	int n = http_poll(e, ms, err, sizeof err);
	if (n < 0)
		printf("http_poll: %s\n", err);
	return n;
}

static void test_read_watch(void)
{
	struct http_engine *e = engine();
	struct seen s;
	int p[2];
	t_begin("watch: a readable pipe runs the callback inside http_poll, which returns");
	seen_init(&s, e);
	T_CHECK(pipe(p) == 0);
	T_EQ_INT(http_watch(e, p[0], HTTP_WATCH_READ, on_ready, &s), 0);
	T_EQ_INT(poll_once(e, 0), 0);
	T_EQ_INT(s.calls, 0); /* nothing written: not ready */
	T_EQ_INT(write(p[1], "x", 1), 1);
	T_EQ_INT(poll_once(e, FOREVER_MS), 0); /* returns at once: no transfer is ready, a watch fired */
	T_EQ_INT(s.calls, 1);
	T_EQ_INT(s.fd, p[0]);
	T_EQ_INT(s.events, HTTP_WATCH_READ);
	T_CHECK(s.ud == &s);
	/* Level-triggered: still unread, so it fires again; read it and it stops. */
	T_EQ_INT(poll_once(e, 0), 0);
	T_EQ_INT(s.calls, 2);
	{
		char c;
		T_EQ_INT(read(p[0], &c, 1), 1);
	}
	T_EQ_INT(poll_once(e, 0), 0);
	T_EQ_INT(s.calls, 2);
	T_EQ_INT(http_watch(e, p[0], 0, NULL, NULL), 0);
	close(p[0]);
	close(p[1]);
	http_engine_free(e);
	t_end();
}

static void test_write_and_change(void)
{
	struct http_engine *e = engine();
	struct seen s;
	int p[2];
	t_begin("watch: WRITE on a pipe's write end; the same fd changed to READ, then removed");
	seen_init(&s, e);
	T_CHECK(pipe(p) == 0);
	T_EQ_INT(http_watch(e, p[1], HTTP_WATCH_WRITE, on_ready, &s), 0);
	T_EQ_INT(poll_once(e, FOREVER_MS), 0);
	T_EQ_INT(s.calls, 1);
	T_EQ_INT(s.events, HTTP_WATCH_WRITE);
	/* Changed (the same fd, the second call modifies): a write end is never readable. */
	T_EQ_INT(http_watch(e, p[1], HTTP_WATCH_READ, on_ready, &s), 0);
	T_EQ_INT(poll_once(e, 0), 0);
	T_EQ_INT(s.calls, 1);
	T_EQ_INT(http_watch(e, p[1], HTTP_WATCH_READ | HTTP_WATCH_WRITE, on_ready, &s), 0);
	T_EQ_INT(poll_once(e, 0), 0);
	T_EQ_INT(s.calls, 2);
	T_EQ_INT(s.events, HTTP_WATCH_WRITE);
	/* Removed: ready, yet no call; removing twice is fine. */
	T_EQ_INT(http_watch(e, p[1], 0, NULL, NULL), 0);
	T_EQ_INT(poll_once(e, 0), 0);
	T_EQ_INT(s.calls, 2);
	T_EQ_INT(http_watch(e, p[1], 0, NULL, NULL), 0);
	/* And added again after removal. */
	T_EQ_INT(http_watch(e, p[1], HTTP_WATCH_WRITE, on_ready, &s), 0);
	T_EQ_INT(poll_once(e, 0), 0);
	T_EQ_INT(s.calls, 3);
	T_EQ_INT(http_watch(e, p[1], 0, NULL, NULL), 0);
	close(p[0]);
	close(p[1]);
	http_engine_free(e);
	t_end();
}

static void test_hangup(void)
{
	struct http_engine *e = engine();
	struct seen s;
	int p[2];
	t_begin("watch: a hang-up (the writer closed) is reported as READ");
	seen_init(&s, e);
	T_CHECK(pipe(p) == 0);
	close(p[1]);
	T_EQ_INT(http_watch(e, p[0], HTTP_WATCH_READ, on_ready, &s), 0);
	T_EQ_INT(poll_once(e, FOREVER_MS), 0);
	T_EQ_INT(s.calls, 1);
	T_EQ_INT(s.events, HTTP_WATCH_READ);
	T_EQ_INT(http_watch(e, p[0], 0, NULL, NULL), 0);
	close(p[0]);
	http_engine_free(e);
	t_end();

	e = engine();
	t_begin("watch: an error on a write end (the reader closed) is reported as READ");
	seen_init(&s, e);
	T_CHECK(pipe(p) == 0);
	close(p[0]);
	T_EQ_INT(http_watch(e, p[1], HTTP_WATCH_WRITE, on_ready, &s), 0);
	T_EQ_INT(poll_once(e, FOREVER_MS), 0);
	T_EQ_INT(s.calls, 1);
	T_CHECK(s.events & HTTP_WATCH_READ);
	T_EQ_INT(http_watch(e, p[1], 0, NULL, NULL), 0);
	close(p[1]);
	http_engine_free(e);
	t_end();
}

static void test_remove_in_callback(void)
{
	struct http_engine *e = engine();
	struct seen a, b;
	int p[2], q[2];
	t_begin("watch: a callback removing another ready watch: that one's callback never runs");
	seen_init(&a, e);
	seen_init(&b, e);
	T_CHECK(pipe(p) == 0 && pipe(q) == 0);
	T_EQ_INT(write(p[1], "x", 1), 1);
	T_EQ_INT(write(q[1], "x", 1), 1);
	a.remove_fd = q[0];
	b.remove_fd = p[0];
	T_EQ_INT(http_watch(e, p[0], HTTP_WATCH_READ, on_ready, &a), 0);
	T_EQ_INT(http_watch(e, q[0], HTTP_WATCH_READ, on_ready, &b), 0);
	T_EQ_INT(poll_once(e, FOREVER_MS), 0); /* both ready in one epoll_wait batch */
	T_EQ_INT(a.calls + b.calls, 1);
	/* The one that ran removed the other; it is still watched itself. */
	T_EQ_INT(poll_once(e, 0), 0);
	T_EQ_INT(a.calls + b.calls, 2);
	T_CHECK(a.calls == 2 || b.calls == 2);
	T_EQ_INT(http_watch(e, p[0], 0, NULL, NULL), 0);
	T_EQ_INT(http_watch(e, q[0], 0, NULL, NULL), 0);
	close(p[0]);
	close(p[1]);
	close(q[0]);
	close(q[1]);
	http_engine_free(e);
	t_end();
}

static void test_errors(void)
{
	struct http_engine *e = engine();
	struct seen s;
	int p[2], file;
	t_begin("watch: refused: a negative fd (EBADF), unknown bits or no callback (EINVAL), a regular file (EPERM)");
	seen_init(&s, e);
	T_CHECK(pipe(p) == 0);
	errno = 0;
	T_EQ_INT(http_watch(e, -1, HTTP_WATCH_READ, on_ready, &s), -1);
	T_EQ_INT(errno, EBADF);
	errno = 0;
	T_EQ_INT(http_watch(e, p[0], 4, on_ready, &s), -1);
	T_EQ_INT(errno, EINVAL);
	errno = 0;
	T_EQ_INT(http_watch(e, p[0], HTTP_WATCH_READ, NULL, &s), -1);
	T_EQ_INT(errno, EINVAL);
	file = open("Makefile", O_RDONLY);
	T_CHECK(file >= 0);
	errno = 0;
	T_EQ_INT(http_watch(e, file, HTTP_WATCH_READ, on_ready, &s), -1);
	T_EQ_INT(errno, EPERM); /* epoll cannot wait on a regular file */
	/* Removing a fd never watched is a no-op. */
	T_EQ_INT(http_watch(e, p[0], 0, NULL, NULL), 0);
	T_EQ_INT(http_watch(e, 5000, 0, NULL, NULL), 0);
	/* A high fd grows the table. */
	{
		int high = fcntl(p[0], F_DUPFD_CLOEXEC, 700);
		T_CHECK(high >= 700);
		T_EQ_INT(write(p[1], "x", 1), 1);
		T_EQ_INT(http_watch(e, high, HTTP_WATCH_READ, on_ready, &s), 0);
		T_EQ_INT(poll_once(e, FOREVER_MS), 0);
		T_EQ_INT(s.calls, 1);
		T_EQ_INT(s.fd, high);
		T_EQ_INT(http_watch(e, high, 0, NULL, NULL), 0);
		close(high);
	}
	close(file);
	close(p[0]);
	close(p[1]);
	http_engine_free(e);
	t_end();
}

static void test_engine_fd(void)
{
	struct http_engine *e = engine();
	struct seen s;
	struct pollfd pfd;
	int p[2], fds[4];
	short events[4];
	t_begin("engine fd: one descriptor, readable when a watch is ready; http_fds lists it alone");
	seen_init(&s, e);
	T_CHECK(pipe(p) == 0);
	T_EQ_INT(http_fds(e, fds, events, 4), 1);
	T_EQ_INT(fds[0], http_engine_fd(e));
	T_EQ_INT(events[0], POLLIN);
	T_EQ_INT(http_watch(e, p[0], HTTP_WATCH_READ, on_ready, &s), 0);
	pfd.fd = http_engine_fd(e);
	pfd.events = POLLIN;
	pfd.revents = 0;
	T_EQ_INT(poll(&pfd, 1, 0), 0);
	T_EQ_INT(write(p[1], "x", 1), 1);
	T_EQ_INT(poll(&pfd, 1, FOREVER_MS), 1);
	T_CHECK(pfd.revents & POLLIN);
	T_EQ_INT(http_next_timeout(e), -1); /* no transfer, no deadline */
	T_EQ_INT(poll_once(e, 0), 0);
	T_EQ_INT(s.calls, 1);
	T_EQ_INT(http_watch(e, p[0], 0, NULL, NULL), 0);
	close(p[0]);
	close(p[1]);
	http_engine_free(e);
	t_end();
}

static void test_wakeup(void)
{
	struct http_engine *e = engine();
	int p[2];
	t_begin("wakeup fd: a byte on it ends a long http_poll; without one, poll(0) returns at once");
	T_CHECK(pipe(p) == 0);
	http_engine_set_wakeup_fd(e, p[0]);
	T_EQ_INT(poll_once(e, 0), 0);
	T_EQ_INT(write(p[1], "!", 1), 1);
	T_EQ_INT(poll_once(e, FOREVER_MS), 0);
	http_engine_set_wakeup_fd(e, -1);
	close(p[0]);
	close(p[1]);
	http_engine_free(e);
	t_end();
}

int main(void)
{
	test_read_watch();
	test_write_and_change();
	test_hangup();
	test_remove_in_callback();
	test_errors();
	test_engine_fd();
	test_wakeup();
	return t_summary("test_http");
}
