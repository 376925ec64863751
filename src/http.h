/*
 * http.h: transfers on one libcurl multi handle, with timeouts and limits.
 *
 * Owns: the CURLM, every easy handle and header list, a body file's
 * descriptor (a dup, closed when the transfer ends), the response buffers
 * and, for streaming transfers, the SSE parser and the queue of parsed
 * events. Callbacks only append to C buffers and set flags.
 * Never: includes lua.h, calls back into a script, blocks without a bound,
 * or frees a transfer the caller still holds (the caller frees).
 */
#ifndef LCHAT_HTTP_H
#define LCHAT_HTTP_H

#include <stddef.h>
#include "buf.h"
#include "sse.h"

#define HTTP_DEFAULT_MAX_BODY ((size_t)64 << 20)      /* 64 MiB */
#define HTTP_DEFAULT_MAX_ERROR_BODY ((size_t)64 << 10) /* 64 KiB kept on errors */
#define HTTP_QUEUE_HIGH_WATER ((size_t)48 << 10)      /* pause reading above this (per transfer) */
#define HTTP_QUEUE_KEEP ((size_t)2 << 10)             /* a drained queue keeps at most this much */

enum http_state {
	HTTP_RUNNING = 0,
	HTTP_DONE = 1,      /* finished: look at http_result */
	HTTP_CLOSED = 2     /* cancelled or freed by the caller */
};

/* Why a transfer failed; HTTP_OK even for 4xx/5xx (those are the caller's call). */
enum http_failure {
	HTTP_OK = 0,
	HTTP_FAIL_NETWORK,     /* connect, DNS, reset, dropped mid-body, TLS */
	HTTP_FAIL_TIMEOUT,     /* connect or total timeout */
	HTTP_FAIL_IDLE,        /* no byte received for idle_timeout_ms */
	HTTP_FAIL_TOO_LARGE,   /* body over max_body, or an SSE event over max_event */
	HTTP_FAIL_NO_MEMORY,
	HTTP_FAIL_CANCELLED,   /* http_cancel, or an interrupt */
	HTTP_FAIL_TLS,         /* certificate verification */
	HTTP_FAIL_NO_FDS,      /* out of file descriptors (EMFILE/ENFILE), or of epoll room */
	HTTP_FAIL_BODY_FILE    /* the request body's file could not be read whole (it shrank, EIO) */
};

/* How a message about running out of descriptors starts. */
#define HTTP_NO_FDS_MSG "out of file descriptors (see ulimit -n)"

/*
 * A request body streamed from a file: prefix, then the file's bytes from
 * offset 0 (as many as fstat says when the transfer starts), then suffix,
 * with that total as Content-Length. The file is read in curl's read
 * callback with pread, a buffer at a time, never whole in memory.
 */
struct http_body_file {
	int fd;                      /* a regular file; http_start dups it (the caller keeps fd) */
	const char *suffix;          /* may be NULL; copied by http_start */
	size_t suffix_len;
};

struct http_request {
	const char *method;          /* "GET", "POST", ... */
	const char *url;
	const char *const *headers;  /* "Name: value" lines */
	size_t nheaders;
	const char *body;            /* may be NULL; copied by http_start (with body_file: the prefix) */
	size_t body_len;
	const struct http_body_file *body_file; /* NULL: the body is `body` alone */
	int stream;                  /* parse a 2xx non-JSON body as SSE into the event queue */
	long timeout_ms;             /* total, 0 = none */
	long connect_timeout_ms;     /* 0 = curl's default */
	long idle_timeout_ms;        /* no byte for this long fails the transfer, 0 = none */
	size_t max_body;             /* 0 = HTTP_DEFAULT_MAX_BODY */
	size_t max_event;            /* 0 = SSE_DEFAULT_MAX_EVENT */
	const char *ca_file;         /* NULL = system CAs */
};

/* A response header the caller may want; names compared case-insensitively. */
struct http_result {
	enum http_failure failure;
	long status;                 /* last HTTP status seen, 0 if none */
	char request_id[128];        /* x-request-id (or similar), "" if none */
	char content_type[128];
	char retry_after[64];        /* raw Retry-After value, "" if none */
	char retry_after_ms[32];     /* raw retry-after-ms value, "" if none */
	char should_retry[16];       /* raw x-should-retry value, "" if none */
	char location[512];          /* a redirect's Location (never followed), "" if none */
	char mcp_session_id[256];    /* Mcp-Session-Id (MCP Streamable HTTP), "" if none */
	char rl_remaining_requests[32]; /* x-ratelimit-remaining-requests, "" if none (luachat batch) */
	char rl_remaining_tokens[32];   /* x-ratelimit-remaining-tokens, "" if none */
	char rl_reset_requests[32];     /* x-ratelimit-reset-requests ("1s", "6m0s"), "" if none */
	char rl_reset_tokens[32];       /* x-ratelimit-reset-tokens, "" if none */
	char message[256];           /* one line: what failed and where, never a key */
	size_t bytes_received;       /* body bytes received */
	double seconds;              /* wall time from start to done */
	int body_started;            /* at least one body byte arrived */
};

struct http_engine;
struct http_transfer;

/*
 * A new engine; NULL on failure (message in err). Its own CURLM, and
 * libcurl itself (curl_dl.h), come with the first http_start, which
 * reports a failure to load it.
 */
struct http_engine *http_engine_new(char *err, size_t errlen);
/* Cancel and free every live transfer's curl state, then the engine. */
void http_engine_free(struct http_engine *e);
/* An fd that, when readable, wakes http_poll early (e.g. a self-pipe for SIGINT); -1 for none. */
void http_engine_set_wakeup_fd(struct http_engine *e, int fd);
/* How many transfers are running. */
size_t http_engine_live(const struct http_engine *e);
/*
 * The engine's epoll descriptor: readable when http_poll has work. An
 * application's own loop waits on it (with http_next_timeout) then calls
 * http_poll(e, 0, ...).
 */
int http_engine_fd(const struct http_engine *e);

/*
 * Other descriptors in the engine's one wait (a child process's pipes, say).
 * fn runs inside http_poll when fd is ready, with HTTP_WATCH_* bits
 * (hang-up and error are reported as READ); it must not call Lua, nor
 * free the engine; it may call http_watch. A watched fd firing makes
 * http_poll return (like a transfer event). Remove a watch (events 0)
 * before closing its fd.
 */
enum { HTTP_WATCH_READ = 1, HTTP_WATCH_WRITE = 2 };
typedef void (*http_watch_fn)(void *ud, int fd, int events);
/* Add or change (same fd) a descriptor in the engine's wait; events 0 removes it. 0, or -1 with errno. */
int http_watch(struct http_engine *e, int fd, int events, http_watch_fn fn, void *ud);

/*
 * Start a transfer. The request is copied; the transfer is running until
 * http_poll reports it done. NULL on failure (message in err).
 */
struct http_transfer *http_start(struct http_engine *e, const struct http_request *req,
                                 char *err, size_t errlen);

/*
 * One turn of the loop: run what is due (curl's timer, idle deadlines),
 * wait up to timeout_ms (0 = do not wait; bounded by the next deadline) on
 * the epoll set, hand each ready socket to curl (one socket_action each)
 * and each ready watch to its callback, then collect finished transfers
 * and those with new events. Returns how many transfers are ready (see
 * http_next_ready), or -1 with a message in err on a multi-level failure.
 */
int http_poll(struct http_engine *e, int timeout_ms, char *err, size_t errlen);
/* Pop the next ready transfer (finished or with new events); NULL when none. */
struct http_transfer *http_next_ready(struct http_engine *e);
/* Milliseconds until the engine needs attention (curl timer, idle deadlines); -1 none. */
long http_next_timeout(struct http_engine *e);
/* File descriptors for an external loop (the one epoll fd); returns how many were written (<= max). */
int http_fds(struct http_engine *e, int *fds, short *events, int max);

enum http_state http_state(const struct http_transfer *t);
const struct http_result *http_result(const struct http_transfer *t);
/* The response body (non-stream, or an error/JSON body of a stream transfer). */
const struct buf *http_body(const struct http_transfer *t);
/* Whether the body went to the SSE parser (2xx, not JSON). */
int http_is_sse(const struct http_transfer *t);

/*
 * Queued SSE events, each record: u32 type_len, type bytes, u32 data_len,
 * data bytes (host byte order); type_len 0 means the default "message". The caller reads them then calls
 * http_events_consumed, which also resumes a transfer paused at the
 * high-water mark.
 */
const struct buf *http_events(const struct http_transfer *t);
void http_events_consumed(struct http_transfer *t);

/* Stop a running transfer: it becomes DONE with HTTP_FAIL_CANCELLED (never reported ready). */
void http_cancel(struct http_transfer *t);
/* Cancel if running and free everything; t is invalid afterwards. */
void http_free(struct http_transfer *t);
/* Opaque pointer for the binding (the Lua object's registry ref, say). */
void http_set_owner(struct http_transfer *t, void *owner);
void *http_owner(const struct http_transfer *t);

const char *http_failure_name(enum http_failure f);

#endif
