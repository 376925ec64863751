/*
 * luachat.h: the public C API of the luachat engine.
 *
 * Link with `pkg-config --cflags --libs luachat`. The engine is a Lua 5.4
 * module: open it into any lua_State and use the Lua API (`require "luachat"`).
 */
#ifndef LUACHAT_H
#define LUACHAT_H

#include <lua.h>

#define LUACHAT_VERSION "0.1.0"

/* The C half of the engine: `require "luachat.core"`. */
int luaopen_luachat_core(lua_State *L);

#endif
