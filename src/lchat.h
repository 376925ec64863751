/*
 * lchat.h: what the Lua bindings (lchat_*.c) share. Internal, not installed.
 * Only lchat_*.c include lua.h; the layers below (http, sse, buf) never do.
 */
#ifndef LCHAT_H
#define LCHAT_H

#include <signal.h>
#include <lua.h>
#include <lauxlib.h>
#include "http.h"

#define LCHAT_ENGINE_MT "luachat.Engine"
#define LCHAT_TRANSFER_MT "luachat.Transfer"
#define LCHAT_ERROR_MT "luachat.Error"
#define LCHAT_LAZY_CHUNK_MT "luachat.LazyChunk"

/* Registry fields a host may set before opening the module (see main.c). */
#define LCHAT_REG_INTERRUPT_FLAG "luachat.interrupt_flag" /* lightuserdata: volatile sig_atomic_t * */
#define LCHAT_REG_WAKEUP_FD "luachat.wakeup_fd"           /* integer: read end of a self-pipe */
/* The flag's values: 0 none, 1 SIGINT (take_interrupt clears it), LCHAT_INTERRUPT_TERMINATE
 * (SIGTERM/SIGHUP: the host is ending; reported as an interrupt, never cleared). */
#define LCHAT_INTERRUPT_TERMINATE 2

/* The engine context: one per lua_State, an upvalue of every core function. */
struct lchat_engine {
	struct http_engine *http;            /* NULL once closed */
	volatile sig_atomic_t *interrupted;  /* the host's SIGINT flag, or NULL */
	int wakeup_fd;                       /* the host's self-pipe read end (non-blocking), or -1 */
};
/* User value of the engine userdata: the pin table of live transfers (lchat_transfer.c). */
#define LCHAT_UV_PINS 1

/* lchat_core.c: clear a host's SIGINT flag (not a termination) and drain its self-pipe; returns whether it was set. */
int lchat_take_interrupt(volatile sig_atomic_t *flag, int wakeup_fd);

/* lchat_transfer.c */
struct lchat_transfer {
	struct http_transfer *t;  /* NULL when closed */
	int ref;                  /* pin in the engine's pin table, LUA_NOREF if none */
	size_t ev_off;            /* queued events before this offset were handed out */
	unsigned long popped;     /* events handed out so far (detects a queue changed under us) */
};

/* One queued SSE event, pointing into the transfer's queue (valid until the next poll). */
struct lchat_event {
	const char *type; /* type_len 0: the default "message" */
	size_t type_len;
	const char *data;
	size_t data_len;
	size_t size;      /* of its record in the queue */
};

struct lchat_transfer *lchat_check_transfer(lua_State *L, int i);
struct lchat_transfer *lchat_check_open_transfer(lua_State *L, int i);
/* The next queued event: 1 and *ev (pointing into the queue), or 0 when none is queued or closed. */
int lchat_transfer_peek(struct lchat_transfer *lt, struct lchat_event *ev);
/*
 * Push a copy of the next queued event (a Lua string: for a message event
 * its data, else the whole record) and point *ev into the copy (ev->type is
 * not valid when type_len is 0); 0, nothing pushed, when none. The transfer may be closed on
 * return (a finalizer ran): then lchat_transfer_pop does nothing.
 */
int lchat_transfer_copy_next(lua_State *L, struct lchat_transfer *lt, struct lchat_event *ev);
/* Hand out the event just copied (ev->size); resumes a paused transfer once the queue is empty. */
void lchat_transfer_pop(struct lchat_transfer *lt, const struct lchat_event *ev);
void lchat_transfer_open(lua_State *L);
int lchat_transfer_start(lua_State *L);
/* Push the Lua object of a transfer the engine reported ready; unpins it when done. */
void lchat_transfer_push_ready(lua_State *L, int engine_idx, struct http_transfer *t);

/* lchat_chunks.c: set mod.scan_text (the text path's allow-list scanner). */
void lchat_chunks_register(lua_State *L, int mod);

/* lchat_proc.c: child processes on the loop (core.process; API in its header comment). */
int lchat_proc_new(lua_State *L);
/* [-0, +0] After http_poll: append the processes with news to the list at list_idx; the new count. */
lua_Integer lchat_proc_push_ready(lua_State *L, int engine_idx, int list_idx, lua_Integer n);
/* [-0, +0] The engine's live processes (started, not finished, not closed). */
lua_Integer lchat_proc_live(lua_State *L, int engine_idx);

/* lchat_err.c: the only place error tables are built. */
/*
 * [-(nargs+1), +(nres|1), -] lua_pcall of the function below nargs
 * arguments under the one message handler: a string error gets a
 * traceback, an object with __tostring its description. Every C-to-Lua
 * call from plain C code (the host, lchat_api.c) goes through it.
 */
int lchat_pcall(lua_State *L, int nargs, int nres);
void lchat_err_open(lua_State *L);
int lchat_err_new(lua_State *L);
/* Push an error table {kind, message, status?, retryable=false, retries=0}. */
void lchat_err_push(lua_State *L, const char *kind, const char *message, long status);

#endif
