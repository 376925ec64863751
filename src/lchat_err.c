/*
 * lchat_err.c: luachat's error objects, and the only place they are built.
 *
 * Owns: the luachat.Error metatable. An error is a plain table
 * {kind, message, status, body, request_id, retryable, retries} with a
 * one-line __tostring. Lua code builds them through core.error(t). Also the
 * one message handler and lchat_pcall, through which C calls Lua (STYLE §3).
 * Never: puts an API key in a message (callers redact before calling).
 */
#include "lchat.h"

/*
 * The message handler (lua.c's msghandler): a string error gets a
 * traceback; an error object with __tostring (luachat.Error) is described
 * by it; anything else is named by its type, with a traceback.
 */
static int lchat_msghandler(lua_State *L)
{
	const char *msg = lua_tostring(L, 1);
	if (msg == NULL) {
		if (luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING)
			return 1; /* an error object with its own description */
		msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
	}
	luaL_traceback(L, L, msg, 1);
	return 1;
}

int lchat_pcall(lua_State *L, int nargs, int nres)
{
	int base = lua_gettop(L) - nargs; /* the function's index */
	int status;
	lua_pushcfunction(L, lchat_msghandler);
	lua_insert(L, base);
	status = lua_pcall(L, nargs, nres, base);
	lua_remove(L, base);
	return status;
}

/* __tostring: "luachat: api error 429 (request req_1): Rate limit [retries: 2]" */
static int l_error_tostring(lua_State *L)
{
	luaL_Buffer b;
	luaL_checktype(L, 1, LUA_TTABLE);
	luaL_buffinit(L, &b);
	luaL_addstring(&b, "luachat: ");
	lua_getfield(L, 1, "kind");
	luaL_addstring(&b, lua_isstring(L, -1) ? lua_tostring(L, -1) : "unknown");
	lua_pop(L, 1);
	luaL_addstring(&b, " error");
	if (lua_getfield(L, 1, "status") == LUA_TNUMBER) {
		lua_pushfstring(L, " %d", (int)lua_tointeger(L, -1));
		lua_remove(L, -2);
		luaL_addvalue(&b);
	} else {
		lua_pop(L, 1);
	}
	if (lua_getfield(L, 1, "request_id") == LUA_TSTRING) {
		lua_pushfstring(L, " (request %s)", lua_tostring(L, -1));
		lua_remove(L, -2);
		luaL_addvalue(&b);
	} else {
		lua_pop(L, 1);
	}
	luaL_addstring(&b, ": ");
	lua_getfield(L, 1, "message");
	luaL_addstring(&b, lua_isstring(L, -1) ? lua_tostring(L, -1) : "(no message)");
	lua_pop(L, 1);
	if (lua_getfield(L, 1, "retries") == LUA_TNUMBER && lua_tointeger(L, -1) > 0) {
		lua_pushfstring(L, " [retries: %d]", (int)lua_tointeger(L, -1));
		lua_remove(L, -2);
		luaL_addvalue(&b);
	} else {
		lua_pop(L, 1);
	}
	luaL_pushresult(&b);
	return 1;
}

void lchat_err_open(lua_State *L)
{
	if (luaL_newmetatable(L, LCHAT_ERROR_MT)) {
		lua_pushcfunction(L, l_error_tostring);
		lua_setfield(L, -2, "__tostring");
	}
	lua_pop(L, 1);
}

/* Give the table at the top the Error metatable and its defaults. */
static void finish_error(lua_State *L)
{
	if (lua_getfield(L, -1, "retryable") == LUA_TNIL) {
		lua_pushboolean(L, 0);
		lua_setfield(L, -3, "retryable");
	}
	lua_pop(L, 1);
	if (lua_getfield(L, -1, "retries") == LUA_TNIL) {
		lua_pushinteger(L, 0);
		lua_setfield(L, -3, "retries");
	}
	lua_pop(L, 1);
	luaL_setmetatable(L, LCHAT_ERROR_MT);
}

/* core.error(t) -> t, as a luachat.Error (kind and message required). */
int lchat_err_new(lua_State *L)
{
	luaL_checktype(L, 1, LUA_TTABLE);
	lua_settop(L, 1);
	if (lua_getfield(L, 1, "kind") != LUA_TSTRING)
		luaL_argerror(L, 1, "field 'kind' must be a string");
	if (lua_getfield(L, 1, "message") != LUA_TSTRING)
		luaL_argerror(L, 1, "field 'message' must be a string");
	lua_pop(L, 2);
	finish_error(L);
	return 1;
}

void lchat_err_push(lua_State *L, const char *kind, const char *message, long status)
{
	lua_createtable(L, 0, 6);
	lua_pushstring(L, kind);
	lua_setfield(L, -2, "kind");
	lua_pushstring(L, message);
	lua_setfield(L, -2, "message");
	if (status > 0) {
		lua_pushinteger(L, status);
		lua_setfield(L, -2, "status");
	}
	finish_error(L);
}
