/*
 * http.c: transfers on libcurl multi handles (one, until a fan-out passes
 * HTTP_SHARD_TRANSFERS; see struct http_shard).
 *
 * Owns: the CURLMs, the easy handles, header lists and request bodies (a
 * body file's descriptor, dup'ed, read in curl's read callback), the
 * response buffers, each streaming transfer's SSE parser and event queue,
 * the idle-timeout bookkeeping, and the engine's one epoll set. curl is
 * driven event by event (curl_multi_socket_action): on_socket mirrors the
 * sockets curl wants into the epoll set, on_timer keeps each multi handle's
 * deadline, and a wake-up costs the sockets that are ready, not every transfer.
 * Other descriptors (the SIGINT self-pipe, http_watch's) share the set.
 * libcurl callbacks here only append to C buffers and set flags; handles
 * are removed and cleaned up only in the drain loop (or by an explicit
 * cancel/free from the owner). libcurl is
 * called through curl_dl (loaded on the first transfer, see curl_dl.h): an
 * engine that never starts one never loads it.
 * Never: includes lua.h, calls into a script, or prints anything.
 */
#include "http.h"

#include "curl_dl.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

struct http_transfer {
	struct http_engine *engine;       /* NULL once the engine is gone */
	struct http_shard *shard;         /* the multi handle it runs in, while it runs */
	CURL *easy;                       /* NULL once finished or cancelled */
	struct curl_slist *headers;
	char *body;                       /* our copy of the request body (a body file's: prefix, suffix) */
	int body_fd;                      /* a body file (http_body_file): our dup, -1 none */
	curl_off_t up_prefix, up_file;    /* a body file's request: bytes of prefix, of file (at start) */
	curl_off_t up_total, up_pos;      /* its Content-Length; the next byte on_upload hands curl */
	char errbuf[CURL_ERROR_SIZE];
	enum http_state state;
	struct http_result result;
	struct buf body_buf;              /* non-SSE response body */
	struct buf events;                /* queued SSE event records */
	struct sse_parser sse;
	int want_stream;                  /* the request asked for SSE parsing */
	int decided;                      /* the body's destination is chosen */
	int is_sse;
	int is_error_body;                /* non-2xx: keep the first bytes only */
	int paused;                       /* we returned CURL_WRITEFUNC_PAUSE */
	int headers_done;                 /* the blank line ending the last header section arrived */
	int in_ready;
	size_t max_body;
	long idle_timeout_ms;
	double started, last_rx;          /* monotonic seconds */
	enum http_failure abort_reason;   /* why a callback stopped the transfer */
	enum http_failure sock_failure;   /* on_socket could not watch its socket */
	char abort_msg[160];
	struct http_transfer *prev, *next;             /* engine->all */
	struct http_transfer *ready_prev, *ready_next; /* engine ready queue */
	void *owner;
};

/* A descriptor another layer watches through http_watch (indexed by fd; events 0: none). */
struct http_watch_slot {
	http_watch_fn fn;
	void *ud;
	int events;
};

/* Ready epoll entries taken per epoll_wait; more simply wait for the next poll. */
#define HTTP_EPOLL_BATCH 512

/* curl's receive buffer per transfer: big while few run, small from HTTP_MANY_TRANSFERS. */
#define HTTP_BIG_BUFFER 16384L
#define HTTP_SMALL_BUFFER 2048L
#define HTTP_MANY_TRANSFERS 256

/*
 * One CURLM and what curl told it. Transfers are spread over shards of at
 * most HTTP_SHARD_TRANSFERS: libcurl 7.88's curl_multi_remove_handle walks
 * every connection of its multi handle (close_connect_only) once the
 * transfer left its connection for reuse, O(n^2) over a fan-out of n (an
 * eighth of the CPU at 10,000 streams). Shard 0 takes transfers until it is
 * full, so an ordinary load runs in one multi handle and reuses every idle
 * connection as before; the others exist only while a big fan-out runs.
 */
struct http_shard {
	struct http_engine *engine;
	CURLM *multi;
	unsigned index;                   /* in engine->shards, and in its sockets' epoll tags */
	size_t live;                      /* transfers in this multi handle */
	size_t sockets;                   /* its sockets open (connections, and attempts) */
	double timer_at;                  /* curl's deadline (CURLMOPT_TIMERFUNCTION), < 0 none */
	int kick;                         /* a resumed transfer: run curl's timeout action now */
};

#define HTTP_SHARD_TRANSFERS 512

struct http_engine {
	struct http_shard **shards;       /* [0] made with the first transfer (loads libcurl); NULL: gone */
	unsigned nshards;                 /* slots in shards */
	int epfd;                         /* the one wait: curl's sockets, the wakeup fd, watches */
	int wakeup_fd;
	struct http_transfer *all;        /* every transfer not yet freed */
	struct http_transfer *ready_head, *ready_tail;
	size_t live;
	int kick;                         /* some shard was kicked (see http_shard) */
	double idle_at;                   /* no idle deadline is earlier than this, < 0 none */
	size_t sock_failures;             /* transfers on_socket failed, to finish in the drain loop */
	struct http_watch_slot *watches;  /* http_watch's descriptors, indexed by fd */
	int nwatches;                     /* slots allocated */
};

static double now_seconds(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Copy at most dstlen-1 bytes of a header value, trimming CR/LF and blanks. */
static void copy_trimmed(char *dst, size_t dstlen, const char *src, size_t n)
{
	while (n > 0 && (*src == ' ' || *src == '\t')) {
		src++;
		n--;
	}
	while (n > 0 && (src[n - 1] == '\r' || src[n - 1] == '\n' || src[n - 1] == ' ' ||
	                 src[n - 1] == '\t'))
		n--;
	if (n >= dstlen)
		n = dstlen - 1;
	memcpy(dst, src, n);
	dst[n] = '\0';
}

static void ready_push(struct http_transfer *t)
{
	struct http_engine *e = t->engine;
	if (t->in_ready || e == NULL)
		return;
	t->in_ready = 1;
	t->ready_next = NULL;
	t->ready_prev = e->ready_tail;
	if (e->ready_tail)
		e->ready_tail->ready_next = t;
	else
		e->ready_head = t;
	e->ready_tail = t;
}

static void ready_unlink(struct http_transfer *t)
{
	struct http_engine *e = t->engine;
	if (!t->in_ready || e == NULL)
		return;
	if (t->ready_prev)
		t->ready_prev->ready_next = t->ready_next;
	else
		e->ready_head = t->ready_next;
	if (t->ready_next)
		t->ready_next->ready_prev = t->ready_prev;
	else
		e->ready_tail = t->ready_prev;
	t->in_ready = 0;
	t->ready_prev = t->ready_next = NULL;
}

static void fail_in_callback(struct http_transfer *t, enum http_failure f, const char *msg)
{
	t->abort_reason = f;
	snprintf(t->abort_msg, sizeof t->abort_msg, "%s", msg);
}

/* Append one event record to the queue: u32 type_len, type, u32 data_len, data. */
static int queue_event(void *ud, const struct sse_event *ev)
{
	struct http_transfer *t = ud;
	uint32_t tl = 0, dl = (uint32_t)ev->data_len;
	int is_message = ev->type_len == 7 && memcmp(ev->type, "message", 7) == 0;
	if (!is_message)
		tl = (uint32_t)ev->type_len;
	if (buf_reserve(&t->events, 8 + tl + dl) != BUF_OK) {
		fail_in_callback(t, HTTP_FAIL_NO_MEMORY, "out of memory queueing a stream event");
		return 1;
	}
	buf_append(&t->events, &tl, 4);
	if (tl)
		buf_append(&t->events, ev->type, tl);
	buf_append(&t->events, &dl, 4);
	buf_append(&t->events, ev->data, dl);
	return 0;
}

/* Choose where the body goes, once the status and Content-Type are known. */
static void decide_destination(struct http_transfer *t)
{
	long s = t->result.status;
	int ok = s >= 200 && s < 300;
	t->decided = 1;
	t->is_error_body = !ok;
	/* A 2xx JSON body on a streaming request: the server ignored stream=true. */
	t->is_sse = t->want_stream && ok && strstr(t->result.content_type, "json") == NULL;
	t->body_buf.limit = t->is_error_body ? HTTP_DEFAULT_MAX_ERROR_BODY : t->max_body;
}

/* CURLOPT_WRITEFUNCTION */
static size_t on_body(char *data, size_t size, size_t nmemb, void *ud)
{
	struct http_transfer *t = ud;
	size_t n = size * nmemb;
	if (!t->decided)
		decide_destination(t);
	if (t->is_sse) {
		/* Bound memory for slow consumers: curl keeps these bytes and redelivers. */
		if (t->events.len >= HTTP_QUEUE_HIGH_WATER) {
			t->paused = 1;
			return CURL_WRITEFUNC_PAUSE;
		}
	}
	t->last_rx = now_seconds();
	t->result.body_started = 1;
	t->result.bytes_received += n;
	if (t->is_sse) {
		size_t before = t->events.len;
		enum sse_status st = sse_feed(&t->sse, data, n, queue_event, t);
		if (st == SSE_TOO_LARGE) {
			char msg[160];
			fail_in_callback(t, HTTP_FAIL_TOO_LARGE, sse_describe(&t->sse, msg, sizeof msg));
			return CURL_WRITEFUNC_ERROR;
		}
		if (st != SSE_OK) {
			if (t->abort_reason == HTTP_OK)
				fail_in_callback(t, HTTP_FAIL_NO_MEMORY, "out of memory parsing the stream");
			return CURL_WRITEFUNC_ERROR;
		}
		if (t->events.len > before)
			ready_push(t);
		return n;
	}
	if (t->is_error_body) {
		/* Keep the first bytes of an error body; the rest is dropped, not fatal. */
		size_t room = t->body_buf.limit > t->body_buf.len ? t->body_buf.limit - t->body_buf.len : 0;
		if (buf_append(&t->body_buf, data, n < room ? n : room) == BUF_NO_MEMORY) {
			fail_in_callback(t, HTTP_FAIL_NO_MEMORY, "out of memory reading the response");
			return CURL_WRITEFUNC_ERROR;
		}
		return n;
	}
	switch (buf_append(&t->body_buf, data, n)) {
	case BUF_OK:
		return n;
	case BUF_TOO_LARGE: {
		char msg[160];
		snprintf(msg, sizeof msg, "response body over the %zu-byte limit", t->max_body);
		fail_in_callback(t, HTTP_FAIL_TOO_LARGE, msg);
		return CURL_WRITEFUNC_ERROR;
	}
	default:
		fail_in_callback(t, HTTP_FAIL_NO_MEMORY, "out of memory reading the response");
		return CURL_WRITEFUNC_ERROR;
	}
}

static int header_is(const char *line, size_t n, const char *name, const char **value, size_t *vlen)
{
	size_t k = strlen(name);
	if (n <= k || line[k] != ':' || strncasecmp(line, name, k) != 0)
		return 0;
	*value = line + k + 1;
	*vlen = n - k - 1;
	return 1;
}

/* CURLOPT_HEADERFUNCTION: one header line at a time, status lines included. */
static size_t on_header(char *line, size_t size, size_t nmemb, void *ud)
{
	struct http_transfer *t = ud;
	size_t n = size * nmemb;
	const char *v;
	size_t vl;
	struct http_result *r = &t->result;
	t->last_rx = now_seconds();
	if (n > 5 && memcmp(line, "HTTP/", 5) == 0) {
		/* A new response (after 100-continue, say): forget the last one's headers. */
		const char *sp = memchr(line, ' ', n);
		r->status = sp ? strtol(sp + 1, NULL, 10) : 0;
		r->request_id[0] = r->content_type[0] = r->retry_after[0] = '\0';
		r->retry_after_ms[0] = r->should_retry[0] = r->location[0] = '\0';
		r->mcp_session_id[0] = '\0';
		r->rl_remaining_requests[0] = r->rl_remaining_tokens[0] = '\0';
		r->rl_reset_requests[0] = r->rl_reset_tokens[0] = '\0';
		t->decided = 0;
		t->headers_done = 0;
		return n;
	}
	if ((n == 2 && line[0] == '\r' && line[1] == '\n') || (n == 1 && line[0] == '\n')) {
		t->headers_done = 1;
		return n;
	}
	if (header_is(line, n, "x-request-id", &v, &vl) ||
	    (r->request_id[0] == '\0' && (header_is(line, n, "request-id", &v, &vl) ||
	                                  header_is(line, n, "apim-request-id", &v, &vl))))
		copy_trimmed(r->request_id, sizeof r->request_id, v, vl);
	else if (header_is(line, n, "content-type", &v, &vl))
		copy_trimmed(r->content_type, sizeof r->content_type, v, vl);
	else if (header_is(line, n, "retry-after", &v, &vl))
		copy_trimmed(r->retry_after, sizeof r->retry_after, v, vl);
	else if (header_is(line, n, "retry-after-ms", &v, &vl))
		copy_trimmed(r->retry_after_ms, sizeof r->retry_after_ms, v, vl);
	else if (header_is(line, n, "x-should-retry", &v, &vl))
		copy_trimmed(r->should_retry, sizeof r->should_retry, v, vl);
	else if (header_is(line, n, "location", &v, &vl))
		copy_trimmed(r->location, sizeof r->location, v, vl);
	else if (header_is(line, n, "mcp-session-id", &v, &vl))
		copy_trimmed(r->mcp_session_id, sizeof r->mcp_session_id, v, vl);
	else if (header_is(line, n, "x-ratelimit-remaining-requests", &v, &vl))
		copy_trimmed(r->rl_remaining_requests, sizeof r->rl_remaining_requests, v, vl);
	else if (header_is(line, n, "x-ratelimit-remaining-tokens", &v, &vl))
		copy_trimmed(r->rl_remaining_tokens, sizeof r->rl_remaining_tokens, v, vl);
	else if (header_is(line, n, "x-ratelimit-reset-requests", &v, &vl))
		copy_trimmed(r->rl_reset_requests, sizeof r->rl_reset_requests, v, vl);
	else if (header_is(line, n, "x-ratelimit-reset-tokens", &v, &vl))
		copy_trimmed(r->rl_reset_tokens, sizeof r->rl_reset_tokens, v, vl);
	return n;
}

/* What an epoll entry is: bits 32-39 of its data.u64, a curl socket's shard above them, the fd below. */
enum { SRC_WAKEUP = 1, SRC_WATCH = 2, SRC_CURL = 3 };

static uint64_t src_tag(int kind, int fd)
{
	return ((uint64_t)kind << 32) | (uint32_t)fd;
}

static uint64_t curl_tag(const struct http_shard *sh, int fd)
{
	return ((uint64_t)sh->index << 40) | src_tag(SRC_CURL, fd);
}

static uint32_t epoll_bits(int watch_events)
{
	uint32_t ev = 0;
	if (watch_events & HTTP_WATCH_READ)
		ev |= EPOLLIN;
	if (watch_events & HTTP_WATCH_WRITE)
		ev |= EPOLLOUT;
	return ev;
}

struct http_engine *http_engine_new(char *err, size_t errlen)
{
	struct http_engine *e = calloc(1, sizeof *e);
	if (e == NULL) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	e->wakeup_fd = -1;
	e->idle_at = -1;
	/* The one wait of the engine: curl's sockets, the wakeup fd and watches join it. */
	e->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (e->epfd < 0) {
		int no_fds = errno == EMFILE || errno == ENFILE;
		snprintf(err, errlen, "%s: epoll_create1: %s", no_fds ? HTTP_NO_FDS_MSG : "cannot wait for events",
		         strerror(errno));
		free(e);
		return NULL;
	}
	return e; /* no curl yet: engine_shard makes the first CURLM with the first transfer */
}

/*
 * CURLMOPT_SOCKETFUNCTION: keep socket s in the epoll set as curl wants it.
 * socketp is non-NULL once s is in the set (curl_multi_assign); curl
 * forgets it on CURL_POLL_REMOVE, after which s is out of the set again.
 * A failed epoll_ctl fails only that transfer, in the drain loop (curl
 * would abort every transfer if this returned -1).
 */
static int on_socket(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
	struct http_shard *sh = userp;
	struct http_engine *e;
	struct epoll_event ev;
	struct http_transfer *t = NULL;
	e = sh->engine;
	if (what == CURL_POLL_REMOVE) {
		if (socketp)
			epoll_ctl(e->epfd, EPOLL_CTL_DEL, s, NULL); /* fails only if curl closed it first */
		return 0;
	}
	memset(&ev, 0, sizeof ev);
	ev.events = (what & CURL_POLL_IN ? EPOLLIN : 0) | (what & CURL_POLL_OUT ? EPOLLOUT : 0);
	ev.data.u64 = curl_tag(sh, s);
	if (epoll_ctl(e->epfd, socketp ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, s, &ev) == 0) {
		if (socketp == NULL)
			curl_dl.multi_assign(sh->multi, s, sh);
		return 0;
	}
	curl_dl.easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&t);
	if (t && t->state == HTTP_RUNNING && t->sock_failure == HTTP_OK) {
		char msg[160];
		int no_fds = errno == ENOMEM || errno == ENOSPC;
		snprintf(msg, sizeof msg, "%s: epoll_ctl: %s", no_fds ? HTTP_NO_FDS_MSG : "cannot wait on a socket",
		         strerror(errno));
		fail_in_callback(t, no_fds ? HTTP_FAIL_NO_FDS : HTTP_FAIL_NETWORK, msg);
		t->sock_failure = t->abort_reason;
		e->sock_failures++;
	}
	return 0;
}

/* CURLMOPT_TIMERFUNCTION: the one curl deadline; http_poll acts on it (never from here). */
static int on_timer(CURLM *multi, long timeout_ms, void *userp)
{
	struct http_shard *sh = userp;
	(void)multi;
	sh->timer_at = timeout_ms < 0 ? -1 : now_seconds() + (double)timeout_ms / 1000.0;
	return 0;
}

/*
 * CURLOPT_OPENSOCKETFUNCTION: curl's socket, made here so that running out
 * of descriptors is a failure of its own (curl says only "couldn't
 * connect"), and close-on-exec (child processes never inherit one).
 */
static curl_socket_t on_open_socket(void *ud, curlsocktype purpose, struct curl_sockaddr *a)
{
	struct http_transfer *t = ud;
	curl_socket_t s;
	(void)purpose;
	s = socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
	if (s < 0 && (errno == EMFILE || errno == ENFILE) && t->abort_reason == HTTP_OK) {
		char msg[160];
		snprintf(msg, sizeof msg, "%s: socket: %s", HTTP_NO_FDS_MSG, strerror(errno));
		fail_in_callback(t, HTTP_FAIL_NO_FDS, msg);
	}
	if (s < 0)
		return CURL_SOCKET_BAD;
	if (t->shard)
		t->shard->sockets++;
	return s;
}

/* CURLOPT_CLOSESOCKETFUNCTION: close one of on_open_socket's sockets (each shard counts its own). */
static int on_close_socket(void *ud, curl_socket_t s)
{
	struct http_shard *sh = ud;
	if (sh->sockets > 0)
		sh->sockets--;
	return close(s);
}

/*
 * The shard a new transfer joins: the first with room, else a new one. The
 * first loads libcurl (curl_dl_load runs curl_global_init once per
 * process). Each is a CURLM driven through the socket interface (on_socket,
 * on_timer). NULL with a message in err, e.g. "cannot load libcurl.so.4: ...".
 */
static struct http_shard *engine_shard(struct http_engine *e, char *err, size_t errlen)
{
	struct http_shard *sh;
	unsigned i, slot = e->nshards;
	for (i = 0; i < e->nshards; i++) {
		if (e->shards[i] == NULL) {
			if (slot == e->nshards)
				slot = i;
		} else if (e->shards[i]->live < HTTP_SHARD_TRANSFERS) {
			return e->shards[i];
		}
	}
	if (e->nshards == 0 && curl_dl_load(err, errlen) != 0)
		return NULL;
	if (slot == e->nshards) {
		struct http_shard **grown = realloc(e->shards, (e->nshards + 1) * sizeof *grown);
		if (grown == NULL)
			goto nomem;
		e->shards = grown;
		e->shards[e->nshards++] = NULL;
	}
	sh = calloc(1, sizeof *sh);
	if (sh == NULL)
		goto nomem;
	sh->multi = curl_dl.multi_init();
	if (sh->multi == NULL) {
		free(sh);
		snprintf(err, errlen, "curl_multi_init failed");
		return NULL;
	}
	sh->engine = e;
	sh->index = slot;
	sh->timer_at = -1;
	curl_dl.multi_setopt(sh->multi, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX);
	/* HTTP/2: as many streams on a connection as the server allows (its SETTINGS
	 * still bound it). At libcurl's default of 100, each concurrent request to a
	 * host past the 100th opened a TLS connection of its own (spec/http2_spec.lua). */
	curl_dl.multi_setopt(sh->multi, CURLMOPT_MAX_CONCURRENT_STREAMS, 1000L);
	curl_dl.multi_setopt(sh->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
	curl_dl.multi_setopt(sh->multi, CURLMOPT_SOCKETDATA, sh);
	curl_dl.multi_setopt(sh->multi, CURLMOPT_TIMERFUNCTION, on_timer);
	curl_dl.multi_setopt(sh->multi, CURLMOPT_TIMERDATA, sh);
	e->shards[slot] = sh;
	return sh;
nomem:
	snprintf(err, errlen, "out of memory");
	return NULL;
}

/* Close a shard's multi handle (its idle connections with it) and free it. */
static void shard_free(struct http_engine *e, struct http_shard *sh)
{
	curl_dl.multi_cleanup(sh->multi); /* may call on_socket for cached connections: epfd still open */
	e->shards[sh->index] = NULL;
	free(sh);
}

/*
 * Shards past 0 without transfers, once fewer than half a shard's run (the
 * fan-out is over; a load hovering near 512 keeps its spare instead of
 * remaking it, and its connections, for every transfer past 512), are freed
 * with their idle connections. Outside any curl call (run_due).
 */
static void free_empty_shards(struct http_engine *e)
{
	unsigned i;
	if (e->nshards < 2 || e->live >= HTTP_SHARD_TRANSFERS / 2)
		return;
	for (i = 1; i < e->nshards; i++)
		if (e->shards[i] && e->shards[i]->live == 0)
			shard_free(e, e->shards[i]);
}

/* Release a transfer's curl state (not its result or buffers). */
static void release_curl(struct http_transfer *t)
{
	if (t->easy) {
		if (t->shard && t->state == HTTP_RUNNING)
			curl_dl.multi_remove_handle(t->shard->multi, t->easy);
		curl_dl.easy_cleanup(t->easy);
		t->easy = NULL;
	}
	if (t->headers) /* none means libcurl may never have been loaded */
		curl_dl.slist_free_all(t->headers);
	t->headers = NULL;
	free(t->body);
	t->body = NULL;
	if (t->body_fd >= 0) /* after easy_cleanup: curl calls on_upload no more */
		close(t->body_fd);
	t->body_fd = -1;
	if (t->state == HTTP_RUNNING && t->engine)
		t->engine->live--;
	if (t->state == HTTP_RUNNING && t->shard)
		t->shard->live--;
	t->shard = NULL;
}

void http_engine_free(struct http_engine *e)
{
	struct http_transfer *t, *next;
	unsigned i;
	if (e == NULL)
		return;
	for (t = e->all; t; t = next) {
		next = t->next;
		ready_unlink(t);
		if (t->state == HTTP_RUNNING) {
			t->result.failure = HTTP_FAIL_CANCELLED;
			snprintf(t->result.message, sizeof t->result.message, "cancelled: the engine was closed");
		}
		release_curl(t);
		if (t->state == HTTP_RUNNING)
			t->state = HTTP_DONE;
		t->engine = NULL;
		t->prev = t->next = NULL;
	}
	for (i = 0; i < e->nshards; i++)
		if (e->shards[i])
			shard_free(e, e->shards[i]);
	free(e->shards);
	close(e->epfd);
	free(e->watches);
	free(e);
}

void http_engine_set_wakeup_fd(struct http_engine *e, int fd)
{
	struct epoll_event ev;
	if (e->wakeup_fd >= 0)
		epoll_ctl(e->epfd, EPOLL_CTL_DEL, e->wakeup_fd, NULL);
	e->wakeup_fd = -1;
	if (fd < 0)
		return;
	memset(&ev, 0, sizeof ev);
	ev.events = EPOLLIN;
	ev.data.u64 = src_tag(SRC_WAKEUP, fd);
	if (epoll_ctl(e->epfd, EPOLL_CTL_ADD, fd, &ev) == 0)
		e->wakeup_fd = fd;
}

int http_engine_fd(const struct http_engine *e)
{
	return e->epfd;
}

size_t http_engine_live(const struct http_engine *e)
{
	return e->live;
}

int http_watch(struct http_engine *e, int fd, int events, http_watch_fn fn, void *ud)
{
	struct epoll_event ev;
	struct http_watch_slot *w;
	if (fd < 0) {
		errno = EBADF;
		return -1;
	}
	if ((events & ~(HTTP_WATCH_READ | HTTP_WATCH_WRITE)) != 0 || (events != 0 && fn == NULL)) {
		errno = EINVAL;
		return -1;
	}
	if (events == 0) {
		/* Removing what is not watched is a no-op; a closed fd already left the set. */
		if (fd < e->nwatches && e->watches[fd].events != 0) {
			epoll_ctl(e->epfd, EPOLL_CTL_DEL, fd, NULL);
			memset(&e->watches[fd], 0, sizeof e->watches[fd]);
		}
		return 0;
	}
	if (fd >= e->nwatches) {
		int n = e->nwatches ? e->nwatches : 16;
		struct http_watch_slot *grown;
		while (n <= fd)
			n *= 2;
		grown = realloc(e->watches, (size_t)n * sizeof *grown);
		if (grown == NULL) {
			errno = ENOMEM;
			return -1;
		}
		memset(grown + e->nwatches, 0, (size_t)(n - e->nwatches) * sizeof *grown);
		e->watches = grown;
		e->nwatches = n;
	}
	w = &e->watches[fd];
	memset(&ev, 0, sizeof ev);
	ev.events = epoll_bits(events);
	ev.data.u64 = src_tag(SRC_WATCH, fd);
	if (epoll_ctl(e->epfd, w->events ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, fd, &ev) != 0)
		return -1;
	w->fn = fn;
	w->ud = ud;
	w->events = events;
	return 0;
}

static int add_header(struct http_transfer *t, const char *line)
{
	struct curl_slist *l = curl_dl.slist_append(t->headers, line);
	if (l == NULL)
		return -1;
	t->headers = l;
	return 0;
}

/* Is url an https URL (scheme compared without case, as curl does)? */
static int http_url_is_tls(const char *url)
{
	return url != NULL && strncasecmp(url, "https://", 8) == 0;
}

/* A transfer's idle deadline may be earlier than the engine's earliest: lower it. */
static void idle_note(struct http_engine *e, const struct http_transfer *t)
{
	double at;
	if (t->idle_timeout_ms <= 0)
		return;
	at = t->last_rx + (double)t->idle_timeout_ms / 1000.0;
	if (e->idle_at < 0 || at < e->idle_at)
		e->idle_at = at;
}

/*
 * CURLOPT_READFUNCTION of a body file's request: the next bytes from
 * up_pos on, out of the prefix (t->body), the file (pread at its own
 * offset: the caller's descriptor offset is never moved), then the suffix
 * (t->body after the prefix). A file that ends before the size it had at
 * the start, or a read error, aborts the transfer (HTTP_FAIL_BODY_FILE):
 * the request never goes out with a body shorter than its Content-Length.
 */
static size_t on_upload(char *dst, size_t size, size_t nitems, void *ud)
{
	struct http_transfer *t = ud;
	size_t room = size * nitems, n = 0;
	curl_off_t file_end = t->up_prefix + t->up_file;
	/* Sending is progress: a long upload is not idle while curl takes its bytes. */
	t->last_rx = now_seconds();
	while (n < room && t->up_pos < t->up_total) {
		size_t want = room - n;
		if (t->up_pos < t->up_prefix) {
			if ((curl_off_t)want > t->up_prefix - t->up_pos)
				want = (size_t)(t->up_prefix - t->up_pos);
			memcpy(dst + n, t->body + t->up_pos, want);
		} else if (t->up_pos < file_end) {
			ssize_t got;
			if ((curl_off_t)want > file_end - t->up_pos)
				want = (size_t)(file_end - t->up_pos);
			got = pread(t->body_fd, dst + n, want, (off_t)(t->up_pos - t->up_prefix));
			if (got < 0 && errno == EINTR)
				continue;
			if (got <= 0) {
				char msg[160];
				if (got == 0)
					snprintf(msg, sizeof msg, "the request body's file ended at byte %lld of %lld: "
					         "it shrank during the upload", (long long)(t->up_pos - t->up_prefix),
					         (long long)t->up_file);
				else
					snprintf(msg, sizeof msg, "cannot read the request body's file at byte %lld: %s",
					         (long long)(t->up_pos - t->up_prefix), strerror(errno));
				fail_in_callback(t, HTTP_FAIL_BODY_FILE, msg);
				return CURL_READFUNC_ABORT;
			}
			want = (size_t)got;
		} else {
			if ((curl_off_t)want > t->up_total - t->up_pos)
				want = (size_t)(t->up_total - t->up_pos);
			memcpy(dst + n, t->body + t->up_prefix + (t->up_pos - file_end), want);
		}
		n += want;
		t->up_pos += want;
	}
	return n;
}

/*
 * CURLOPT_SEEKFUNCTION of a body file's request: curl sends the body again
 * from offset (0: a reused connection died before any answer, and curl
 * retries on a new one). Without it curl fails that retry ("necessary data
 * rewind wasn't possible").
 */
static int on_upload_seek(void *ud, curl_off_t offset, int origin)
{
	struct http_transfer *t = ud;
	if (origin != SEEK_SET || offset < 0 || offset > t->up_total)
		return CURL_SEEKFUNC_CANTSEEK;
	t->up_pos = offset;
	return CURL_SEEKFUNC_OK;
}

/*
 * A body file's request (http_body_file): dup the descriptor (the
 * transfer's own, closed in release_curl), take the file's size once, and
 * copy prefix and suffix into one block. 0, or -1 with a message in err.
 */
static int body_file_open(struct http_transfer *t, const struct http_request *req, char *err, size_t errlen)
{
	const struct http_body_file *bf = req->body_file;
	size_t plen = req->body ? req->body_len : 0, slen = bf->suffix ? bf->suffix_len : 0;
	struct stat st;
	t->body_fd = fcntl(bf->fd, F_DUPFD_CLOEXEC, 0);
	if (t->body_fd < 0) {
		int no_fds = errno == EMFILE || errno == ENFILE;
		snprintf(err, errlen, "%s: cannot use the request body's file: %s", no_fds ? HTTP_NO_FDS_MSG : "request body",
		         strerror(errno));
		return -1;
	}
	if (fstat(t->body_fd, &st) != 0) {
		snprintf(err, errlen, "cannot use the request body's file: fstat: %s", strerror(errno));
		return -1;
	}
	if (!S_ISREG(st.st_mode)) {
		snprintf(err, errlen, "the request body's file is not a regular file");
		return -1;
	}
	/* Content-Length is a curl_off_t: prefix + file + suffix must fit one. */
	if (plen > (size_t)INT32_MAX || slen > (size_t)INT32_MAX ||
	    (curl_off_t)st.st_size > INT64_MAX - (curl_off_t)plen - (curl_off_t)slen) {
		snprintf(err, errlen, "request body too large");
		return -1;
	}
	t->body = malloc(plen + slen ? plen + slen : 1);
	if (t->body == NULL) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	if (plen)
		memcpy(t->body, req->body, plen);
	if (slen)
		memcpy(t->body + plen, bf->suffix, slen);
	t->up_prefix = (curl_off_t)plen;
	t->up_file = (curl_off_t)st.st_size;
	t->up_total = t->up_prefix + t->up_file + (curl_off_t)slen;
	t->up_pos = 0;
	return 0;
}

struct http_transfer *http_start(struct http_engine *e, const struct http_request *req,
                                 char *err, size_t errlen)
{
	struct http_transfer *t;
	struct http_shard *sh;
	size_t i;
	if ((sh = engine_shard(e, err, errlen)) == NULL)
		return NULL;
	t = calloc(1, sizeof *t);
	if (t == NULL) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	t->engine = e;
	t->body_fd = -1; /* before any failure: release_curl closes what is >= 0 */
	t->want_stream = req->stream;
	t->max_body = req->max_body ? req->max_body : HTTP_DEFAULT_MAX_BODY;
	t->idle_timeout_ms = req->idle_timeout_ms;
	buf_init(&t->body_buf, t->max_body);
	buf_init(&t->events, 0);
	sse_init(&t->sse, req->max_event);
	t->state = HTTP_DONE; /* until it is in the multi handle */
	t->easy = curl_dl.easy_init();
	if (t->easy == NULL) {
		snprintf(err, errlen, "curl_easy_init failed");
		goto fail;
	}
	for (i = 0; i < req->nheaders; i++)
		if (add_header(t, req->headers[i]) != 0)
			goto nomem;
	/* curl adds "Expect: 100-continue" to large POSTs: a wasted round trip here. */
	if (add_header(t, "Expect:") != 0)
		goto nomem;
	if (req->body_file) {
		/* Streamed by on_upload; POSTFIELDSIZE is the Content-Length, known up front. */
		if (body_file_open(t, req, err, errlen) != 0)
			goto fail;
		curl_dl.easy_setopt(t->easy, CURLOPT_POST, 1L);
		curl_dl.easy_setopt(t->easy, CURLOPT_READFUNCTION, on_upload);
		curl_dl.easy_setopt(t->easy, CURLOPT_READDATA, t);
		curl_dl.easy_setopt(t->easy, CURLOPT_SEEKFUNCTION, on_upload_seek);
		curl_dl.easy_setopt(t->easy, CURLOPT_SEEKDATA, t);
		curl_dl.easy_setopt(t->easy, CURLOPT_POSTFIELDSIZE_LARGE, t->up_total);
	} else if (req->body) {
		t->body = malloc(req->body_len ? req->body_len : 1);
		if (t->body == NULL)
			goto nomem;
		memcpy(t->body, req->body, req->body_len);
		curl_dl.easy_setopt(t->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len);
		curl_dl.easy_setopt(t->easy, CURLOPT_POSTFIELDS, t->body);
	}
	curl_dl.easy_setopt(t->easy, CURLOPT_URL, req->url);
	curl_dl.easy_setopt(t->easy, CURLOPT_CUSTOMREQUEST, req->method ? req->method : "GET");
	if (req->method && strcmp(req->method, "HEAD") == 0)
		curl_dl.easy_setopt(t->easy, CURLOPT_NOBODY, 1L);
	curl_dl.easy_setopt(t->easy, CURLOPT_HTTPHEADER, t->headers);
	curl_dl.easy_setopt(t->easy, CURLOPT_PRIVATE, t);
	curl_dl.easy_setopt(t->easy, CURLOPT_ERRORBUFFER, t->errbuf);
	curl_dl.easy_setopt(t->easy, CURLOPT_WRITEFUNCTION, on_body);
	curl_dl.easy_setopt(t->easy, CURLOPT_WRITEDATA, t);
	curl_dl.easy_setopt(t->easy, CURLOPT_HEADERFUNCTION, on_header);
	curl_dl.easy_setopt(t->easy, CURLOPT_HEADERDATA, t);
	curl_dl.easy_setopt(t->easy, CURLOPT_OPENSOCKETFUNCTION, on_open_socket);
	curl_dl.easy_setopt(t->easy, CURLOPT_OPENSOCKETDATA, t);
	curl_dl.easy_setopt(t->easy, CURLOPT_CLOSESOCKETFUNCTION, on_close_socket);
	curl_dl.easy_setopt(t->easy, CURLOPT_CLOSESOCKETDATA, sh);
	curl_dl.easy_setopt(t->easy, CURLOPT_NOSIGNAL, 1L);
	curl_dl.easy_setopt(t->easy, CURLOPT_FOLLOWLOCATION, 0L); /* never carry a key elsewhere */
	curl_dl.easy_setopt(t->easy, CURLOPT_PROTOCOLS_STR, "http,https");
	/*
	 * HTTP/2 only over TLS (2TLS: plain http is HTTP/1.1). PIPEWAIT only
	 * where HTTP/2 can be negotiated: with it, libcurl 7.88 holds every
	 * other request to a host whose first plain-HTTP connection has not
	 * answered yet, so requests started together ran one at a time, and a
	 * stream paused at the high-water mark whose callback waited on such a
	 * request never resumed. Over https the wait ends with the handshake
	 * (ALPN says h2: multiplex; http/1.1: new connections as needed).
	 */
	curl_dl.easy_setopt(t->easy, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
	curl_dl.easy_setopt(t->easy, CURLOPT_PIPEWAIT, http_url_is_tls(req->url) ? 1L : 0L);
	curl_dl.easy_setopt(t->easy, CURLOPT_ACCEPT_ENCODING, "");
	curl_dl.easy_setopt(t->easy, CURLOPT_TCP_KEEPALIVE, 1L);
	curl_dl.easy_setopt(t->easy, CURLOPT_TCP_NODELAY, 1L);
	/*
	 * curl keeps a receive buffer of this size per transfer: 16 KiB reads a
	 * big body in few calls, but 10,000 streams would hold 160 MB in them
	 * (SSE events are a few hundred bytes). Small buffers once many run.
	 */
	curl_dl.easy_setopt(t->easy, CURLOPT_BUFFERSIZE,
	                    e->live >= HTTP_MANY_TRANSFERS ? HTTP_SMALL_BUFFER : HTTP_BIG_BUFFER);
	/*
	 * Over plain http (HTTP/1.1: one transfer per connection) with at least
	 * as many transfers running as sockets open, no idle connection can be
	 * waiting for reuse: skip curl's search of the connection cache, a walk
	 * over every connection to the host (O(n^2) over a fan-out of n).
	 * Never over https, where one HTTP/2 connection carries many transfers.
	 */
	if (!http_url_is_tls(req->url) && sh->live >= sh->sockets)
		curl_dl.easy_setopt(t->easy, CURLOPT_FRESH_CONNECT, 1L);
	curl_dl.easy_setopt(t->easy, CURLOPT_SSL_VERIFYPEER, 1L);
	curl_dl.easy_setopt(t->easy, CURLOPT_SSL_VERIFYHOST, 2L);
	if (req->ca_file)
		curl_dl.easy_setopt(t->easy, CURLOPT_CAINFO, req->ca_file);
	if (req->timeout_ms > 0)
		curl_dl.easy_setopt(t->easy, CURLOPT_TIMEOUT_MS, req->timeout_ms);
	if (req->connect_timeout_ms > 0)
		curl_dl.easy_setopt(t->easy, CURLOPT_CONNECTTIMEOUT_MS, req->connect_timeout_ms);
	t->shard = sh; /* before the add: curl may open the socket in it */
	if (curl_dl.multi_add_handle(sh->multi, t->easy) != CURLM_OK) {
		t->shard = NULL;
		snprintf(err, errlen, "curl_multi_add_handle failed");
		goto fail;
	}
	t->state = HTTP_RUNNING;
	t->started = t->last_rx = now_seconds();
	e->live++;
	sh->live++;
	t->next = e->all;
	if (e->all)
		e->all->prev = t;
	e->all = t;
	idle_note(e, t);
	return t;
nomem:
	snprintf(err, errlen, "out of memory");
fail:
	release_curl(t);
	buf_free(&t->body_buf);
	buf_free(&t->events);
	sse_free(&t->sse);
	free(t);
	return NULL;
}

static enum http_failure failure_of(CURLcode code)
{
	switch (code) {
	case CURLE_OK:
		return HTTP_OK;
	case CURLE_OPERATION_TIMEDOUT:
		return HTTP_FAIL_TIMEOUT;
	case CURLE_OUT_OF_MEMORY:
		return HTTP_FAIL_NO_MEMORY;
	case CURLE_FILESIZE_EXCEEDED:
		return HTTP_FAIL_TOO_LARGE;
	case CURLE_PEER_FAILED_VERIFICATION:
	case CURLE_SSL_CACERT_BADFILE:
	case CURLE_SSL_CERTPROBLEM:
	case CURLE_SSL_CONNECT_ERROR:
	case CURLE_SSL_ISSUER_ERROR:
		return HTTP_FAIL_TLS;
	default:
		return HTTP_FAIL_NETWORK;
	}
}

/* Move a transfer out of the multi handle with its outcome, and report it ready. */
static void finish(struct http_transfer *t, CURLcode code, enum http_failure forced, const char *msg)
{
	struct http_result *r = &t->result;
	r->seconds = now_seconds() - t->started;
	if (forced != HTTP_OK) {
		r->failure = forced;
		snprintf(r->message, sizeof r->message, "%s", msg);
	} else if (code != CURLE_OK && t->abort_reason != HTTP_OK) {
		r->failure = t->abort_reason;
		snprintf(r->message, sizeof r->message, "%s", t->abort_msg);
	} else if (code != CURLE_OK) {
		r->failure = failure_of(code);
		/*
		 * errbuf names host and port but never headers, so no key can leak here.
		 * It often ends with curl's own words for the code ("Failed to connect
		 * ...: Couldn't connect to server"): then it alone, not both.
		 */
		const char *what = curl_dl.easy_strerror(code);
		if (t->errbuf[0] && strstr(t->errbuf, what) != NULL)
			snprintf(r->message, sizeof r->message, "%.250s", t->errbuf);
		else
			snprintf(r->message, sizeof r->message, "%.100s%s%.150s", what,
			         t->errbuf[0] ? ": " : "", t->errbuf);
	} else if (!t->headers_done && r->status != 0) {
		/* curl ends a response cut inside its headers as if it were complete. */
		r->failure = HTTP_FAIL_NETWORK;
		snprintf(r->message, sizeof r->message, "connection closed inside the response headers");
	} else {
		r->failure = HTTP_OK;
		if (t->is_sse && sse_finish(&t->sse, queue_event, t) != SSE_OK) {
			r->failure = t->abort_reason != HTTP_OK ? t->abort_reason : HTTP_FAIL_TOO_LARGE;
			snprintf(r->message, sizeof r->message, "%s",
			         t->abort_msg[0] ? t->abort_msg : "the last stream event is over the limit");
		}
	}
	release_curl(t);
	t->state = HTTP_DONE;
	ready_push(t);
}

static void drain_finished(struct http_engine *e)
{
	CURLMsg *m;
	int left;
	unsigned i;
	for (i = 0; i < e->nshards; i++) {
		struct http_shard *sh = e->shards[i];
		if (sh == NULL)
			continue;
		while ((m = curl_dl.multi_info_read(sh->multi, &left)) != NULL) {
			struct http_transfer *t = NULL;
			if (m->msg != CURLMSG_DONE)
				continue;
			curl_dl.easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&t);
			if (t)
				finish(t, m->data.result, HTTP_OK, NULL);
		}
	}
}

/* Why a socket callback failed a transfer: finish those now, outside curl's callbacks. */
static void finish_sock_failures(struct http_engine *e)
{
	struct http_transfer *t, *after;
	if (e->sock_failures == 0)
		return;
	e->sock_failures = 0;
	for (t = e->all; t; t = after) {
		after = t->next;
		if (t->state == HTTP_RUNNING && t->sock_failure != HTTP_OK)
			finish(t, CURLE_OK, t->sock_failure, t->abort_msg);
	}
}

/*
 * Fail transfers that received nothing for their idle timeout. Deadlines
 * only move later (last_rx grows; a resumed or new transfer lowers
 * idle_at itself), so the list is walked only once the earliest deadline
 * seen at the last walk has passed, and that walk finds the next one: not
 * a walk over every transfer per wake-up.
 */
static void check_idle(struct http_engine *e)
{
	double now, next = -1;
	struct http_transfer *t, *after;
	if (e->idle_at < 0 || (now = now_seconds()) < e->idle_at)
		return;
	for (t = e->all; t; t = after) {
		double deadline;
		after = t->next;
		if (t->state != HTTP_RUNNING || t->idle_timeout_ms <= 0 || t->paused)
			continue;
		deadline = t->last_rx + (double)t->idle_timeout_ms / 1000.0;
		if (now >= deadline) {
			char msg[96];
			snprintf(msg, sizeof msg, "no data received for %.3g s (idle timeout)",
			         (double)t->idle_timeout_ms / 1000.0);
			finish(t, CURLE_OK, HTTP_FAIL_IDLE, msg);
		} else if (next < 0 || deadline < next) {
			next = deadline;
		}
	}
	e->idle_at = next;
}

/* Each shard's curl timer, when due (or kicked after a resume): one socket_action(CURL_SOCKET_TIMEOUT). */
static CURLMcode run_timer(struct http_engine *e)
{
	int running;
	unsigned i;
	double now = now_seconds();
	CURLMcode first = CURLM_OK;
	e->kick = 0;
	for (i = 0; i < e->nshards; i++) {
		struct http_shard *sh = e->shards[i];
		int due;
		CURLMcode mc;
		if (sh == NULL)
			continue;
		due = sh->timer_at >= 0 && now >= sh->timer_at;
		if (!due && !sh->kick)
			continue;
		if (due)
			sh->timer_at = -1; /* one-shot, as curl expects: on_timer sets the next one */
		sh->kick = 0;
		mc = curl_dl.multi_socket_action(sh->multi, CURL_SOCKET_TIMEOUT, 0, &running);
		if (mc != CURLM_OK && first == CURLM_OK)
			first = mc; /* the other shards still run their timers */
	}
	return first;
}

/* One ready epoll entry: a curl socket costs one socket_action; a watch runs its callback. */
static CURLMcode dispatch(struct http_engine *e, const struct epoll_event *ev)
{
	int fd = (int)(uint32_t)ev->data.u64;
	int kind = (int)((ev->data.u64 >> 32) & 0xff);
	if (kind == SRC_CURL) {
		unsigned shard = (unsigned)(ev->data.u64 >> 40);
		int running, mask = 0;
		/* A shard freed since this entry was read took its sockets with it. */
		if (shard >= e->nshards || e->shards[shard] == NULL)
			return CURLM_OK;
		if (ev->events & (EPOLLIN | EPOLLHUP))
			mask |= CURL_CSELECT_IN;
		if (ev->events & EPOLLOUT)
			mask |= CURL_CSELECT_OUT;
		if (ev->events & EPOLLERR)
			mask |= CURL_CSELECT_ERR;
		return curl_dl.multi_socket_action(e->shards[shard]->multi, fd, mask, &running);
	}
	if (kind == SRC_WATCH && fd < e->nwatches && e->watches[fd].events != 0) {
		/* Looked up now: an earlier callback in this batch may have removed it. */
		struct http_watch_slot *w = &e->watches[fd];
		int what = 0;
		if (ev->events & (EPOLLIN | EPOLLHUP | EPOLLERR))
			what |= HTTP_WATCH_READ;
		if (ev->events & EPOLLOUT)
			what |= HTTP_WATCH_WRITE;
		w->fn(w->ud, fd, what);
	}
	return CURLM_OK; /* the wakeup fd: waking was the point; its owner drains it */
}

/* Milliseconds from now to a monotonic deadline (< 0: none), rounded up. */
static long ms_until(double at, double now)
{
	double ms;
	if (at < 0)
		return -1;
	ms = (at - now) * 1000.0;
	return ms <= 0 ? 0 : ms > 86400000.0 ? 86400000L : (long)ms + 1;
}

/* What is due now, outside any callback: curl's timer, socket failures, finished transfers, idle. */
static CURLMcode run_due(struct http_engine *e)
{
	CURLMcode mc = run_timer(e);
	finish_sock_failures(e);
	drain_finished(e);
	free_empty_shards(e);
	check_idle(e);
	return mc;
}

int http_poll(struct http_engine *e, int timeout_ms, char *err, size_t errlen)
{
	struct epoll_event evs[HTTP_EPOLL_BATCH];
	int n, i, count = 0;
	long wait;
	struct http_transfer *t;
	CURLMcode mc = run_due(e);
	if (mc != CURLM_OK)
		goto multi_error;
	wait = e->ready_head || timeout_ms <= 0 ? 0 : timeout_ms;
	if (wait > 0) {
		long next = http_next_timeout(e);
		if (next >= 0 && next < wait)
			wait = next;
	}
	n = epoll_wait(e->epfd, evs, HTTP_EPOLL_BATCH, (int)wait);
	if (n < 0 && errno != EINTR) {
		snprintf(err, errlen, "epoll_wait: %s", strerror(errno));
		return -1;
	}
	for (i = 0; i < n; i++) {
		mc = dispatch(e, &evs[i]);
		if (mc != CURLM_OK)
			goto multi_error;
	}
	mc = run_due(e);
	if (mc != CURLM_OK)
		goto multi_error;
	for (t = e->ready_head; t; t = t->ready_next)
		count++;
	return count;
multi_error:
	snprintf(err, errlen, "curl multi error: %s", curl_dl.multi_strerror(mc));
	return -1;
}

struct http_transfer *http_next_ready(struct http_engine *e)
{
	struct http_transfer *t = e->ready_head;
	if (t)
		ready_unlink(t);
	return t;
}

long http_next_timeout(struct http_engine *e)
{
	double now;
	long ms, idle;
	unsigned i;
	if (e->ready_head || e->kick || e->sock_failures)
		return 0;
	now = now_seconds();
	ms = -1;
	for (i = 0; i < e->nshards; i++) {
		long at;
		if (e->shards[i] == NULL || (at = ms_until(e->shards[i]->timer_at, now)) < 0)
			continue;
		if (ms < 0 || at < ms)
			ms = at;
	}
	idle = ms_until(e->idle_at, now);
	if (idle >= 0 && (ms < 0 || idle < ms))
		ms = idle;
	return ms;
}

int http_fds(struct http_engine *e, int *fds, short *events, int max)
{
	/* One descriptor stands for all: the epoll set is readable when any member is ready. */
	if (max < 1)
		return 0;
	fds[0] = e->epfd;
	events[0] = POLLIN;
	return 1;
}

enum http_state http_state(const struct http_transfer *t)
{
	return t->state;
}

const struct http_result *http_result(const struct http_transfer *t)
{
	return &t->result;
}

const struct buf *http_body(const struct http_transfer *t)
{
	return &t->body_buf;
}

int http_is_sse(const struct http_transfer *t)
{
	return t->is_sse;
}

const struct buf *http_events(const struct http_transfer *t)
{
	return &t->events;
}

void http_events_consumed(struct http_transfer *t)
{
	/* A queue that grew past the usual few KiB gives its memory back: with
	 * hundreds of streams, each keeping its peak would add up. */
	if (t->events.cap > HTTP_QUEUE_KEEP)
		buf_free(&t->events);
	else
		buf_reset(&t->events);
	if (t->paused && t->easy && t->state == HTTP_RUNNING) {
		t->paused = 0;
		t->last_rx = now_seconds(); /* time spent paused by us is not idle time */
		if (t->engine) {
			idle_note(t->engine, t);
			/* curl resumes it from its timer (easy_pause sets it); the next poll runs it at once. */
			t->engine->kick = 1;
			if (t->shard)
				t->shard->kick = 1;
		}
		/* May deliver the held data right here, through on_body. */
		curl_dl.easy_pause(t->easy, CURLPAUSE_CONT);
	}
}

void http_cancel(struct http_transfer *t)
{
	if (t->state != HTTP_RUNNING)
		return;
	ready_unlink(t);
	t->result.failure = HTTP_FAIL_CANCELLED;
	t->result.seconds = now_seconds() - t->started;
	snprintf(t->result.message, sizeof t->result.message, "cancelled");
	release_curl(t);
	t->state = HTTP_DONE;
}

void http_free(struct http_transfer *t)
{
	if (t == NULL)
		return;
	http_cancel(t);
	ready_unlink(t);
	if (t->engine) {
		if (t->prev)
			t->prev->next = t->next;
		else
			t->engine->all = t->next;
		if (t->next)
			t->next->prev = t->prev;
	}
	buf_free(&t->body_buf);
	buf_free(&t->events);
	sse_free(&t->sse);
	free(t);
}

void http_set_owner(struct http_transfer *t, void *owner)
{
	t->owner = owner;
}

void *http_owner(const struct http_transfer *t)
{
	return t->owner;
}

const char *http_failure_name(enum http_failure f)
{
	switch (f) {
	case HTTP_OK: return "ok";
	case HTTP_FAIL_NETWORK: return "network";
	case HTTP_FAIL_TIMEOUT: return "timeout";
	case HTTP_FAIL_IDLE: return "idle";
	case HTTP_FAIL_TOO_LARGE: return "too_large";
	case HTTP_FAIL_NO_MEMORY: return "no_memory";
	case HTTP_FAIL_CANCELLED: return "cancelled";
	case HTTP_FAIL_TLS: return "tls";
	case HTTP_FAIL_NO_FDS: return "no_fds";
	case HTTP_FAIL_BODY_FILE: return "body_file";
	}
	return "unknown";
}
