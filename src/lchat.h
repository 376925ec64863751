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

/* Registry fields a host may set before opening the module (see main.c). */
#define LCHAT_REG_INTERRUPT_FLAG "luachat.interrupt_flag" /* lightuserdata: volatile sig_atomic_t * */
#define LCHAT_REG_WAKEUP_FD "luachat.wakeup_fd"           /* integer: read end of a self-pipe */

/* The engine context: one per lua_State, an upvalue of every core function. */
struct lchat_engine {
	struct http_engine *http;            /* NULL once closed */
	volatile sig_atomic_t *interrupted;  /* the host's SIGINT flag, or NULL */
	int wakeup_fd;                       /* the host's self-pipe read end (non-blocking), or -1 */
};

/* lchat_core.c: clear a host's SIGINT flag and drain its self-pipe; returns whether it was set. */
int lchat_take_interrupt(volatile sig_atomic_t *flag, int wakeup_fd);

/* lchat_transfer.c */
void lchat_transfer_open(lua_State *L);
int lchat_transfer_start(lua_State *L);
/* Push the Lua object of a transfer the engine reported ready; unpins it when done. */
void lchat_transfer_push_ready(lua_State *L, int engine_idx, struct http_transfer *t);

/* lchat_err.c: the only place error tables are built. */
void lchat_err_open(lua_State *L);
int lchat_err_new(lua_State *L);
/* Push an error table {kind, message, status?, retryable=false, retries=0}. */
void lchat_err_push(lua_State *L, const char *kind, const char *message, long status);

#endif
