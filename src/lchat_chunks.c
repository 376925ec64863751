/*
 * lchat_chunks.c: core.scan_text, the C half of the stream's text path.
 *
 * Owns: reading one SSE data string with chunk_scan.h's allow-list and
 * returning the text it carries, so a stream that only wants text (on_text,
 * s:text()) can skip building the chunk's tables. It returns values only:
 * the accumulator (luachat.stream, in Lua) is the only owner of its state,
 * and takes the text through its public acc:add_text.
 * Never: writes into a Lua table it did not create, or decides an
 * accumulation rule.
 */
#include <string.h>

#include "lchat.h"
#include "chunk_scan.h"

/* Push a scanned string as a Lua string (decoding escapes in a Lua-owned buffer), or nil. */
static void push_text(lua_State *L, const struct chunk_text *t)
{
	luaL_Buffer b;
	if (t->p == NULL) {
		lua_pushnil(L);
		return;
	}
	if (!t->escaped) {
		lua_pushlstring(L, t->p, t->len);
		return;
	}
	chunk_unescape(t, luaL_buffinitsize(L, &b, t->len));
	luaL_pushresultsize(&b, chunk_unescape(t, b.b));
}

/*
 * core.scan_text(json) -> nil when json is not a text-only chunk (any key
 * outside the scanner's allow-list, see chunk_scan.h); else
 * index, content, refusal, reasoning, tool_index, arguments, head, has_role,
 * system_fingerprint, service_tier:
 * index: the choice's index, or nil when the chunk has no choice;
 * the texts: nil when absent, null or ""; tool_index: nil without a
 * fragment; head: CHUNK_HEAD_* bits of id/model/created carrying a value;
 * has_role: the delta has a non-empty role; system_fingerprint and
 * service_tier: their non-empty strings, or nil.
 */
static int l_scan_text(lua_State *L)
{
	struct chunk_scan sc;
	size_t n;
	const char *s = luaL_checklstring(L, 1, &n);
	if (!chunk_scan(s, n, &sc)) {
		lua_pushnil(L);
		return 1;
	}
	if (sc.has_choice)
		lua_pushinteger(L, (lua_Integer)sc.choice_index);
	else
		lua_pushnil(L);
	push_text(L, &sc.content);
	push_text(L, &sc.refusal);
	push_text(L, &sc.reasoning);
	if (sc.has_args)
		lua_pushinteger(L, (lua_Integer)sc.tool_index);
	else
		lua_pushnil(L);
	push_text(L, &sc.args);
	lua_pushinteger(L, (lua_Integer)sc.head);
	lua_pushboolean(L, sc.has_role);
	push_text(L, &sc.fingerprint);
	push_text(L, &sc.service_tier);
	return 10;
}

void lchat_chunks_register(lua_State *L, int mod)
{
	mod = lua_absindex(L, mod);
	lua_pushcfunction(L, l_scan_text);
	lua_setfield(L, mod, "scan_text");
}
