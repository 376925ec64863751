/*
 * lchat_json.h: luachat's JSON rules (see docs/JSON.md), for the bindings.
 */
#ifndef LCHAT_JSON_H
#define LCHAT_JSON_H

#include <lua.h>

/* Set json_encode, json_decode, json_null, json_array_mt, json_object_mt into the table on top. */
void lchat_json_register(lua_State *L);

#endif
