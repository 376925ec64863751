-- luachat.json: JSON that round-trips chat payloads exactly (docs/JSON.md).
--
-- Owns: the public face of the C codec in luachat.core (src/lchat_json.c):
-- decode (strict; integers stay integers, `[]` stays `[]`, -0.0 stays -0.0),
-- encode (exact, or an error naming the path: never drops data), the null
-- sentinel and the array/object markers.
local core = require "luachat.core"

local M = {
  null = core.json_null,          -- JSON null (equal to cjson.null): truthy in Lua, compare with it
  array_mt = core.json_array_mt,  -- a table with it always encodes as an array
  object_mt = core.json_object_mt, -- a table with it always encodes as an object
}

local array_mt, object_mt = M.array_mt, M.object_mt

-- decode(s [, {surrogates = "wtf8"}]) -> value | nil, message (with the position: "at character N").
-- A lone surrogate escape is U+FFFD; with surrogates = "wtf8" a half at a string's start or end
-- keeps its WTF-8 bytes instead (streams join halves split across chunks: docs/JSON.md).
M.decode = core.json_decode

-- encode(value [, {sort_keys = true}]) -> string; raises for values JSON cannot hold
-- faithfully, naming where: "cannot encode a function at $.tools[1].handler". A marked
-- array's holes encode as null.
M.encode = core.json_encode

-- Mark t (or a new table) as a JSON array, so that even empty it encodes as [].
function M.array(t)
  return setmetatable(t or {}, array_mt)
end

-- Mark t (or a new table) as a JSON object, so that it encodes as {} even if it looks like a list.
function M.object(t)
  return setmetatable(t or {}, object_mt)
end

-- Is t an array: marked, or a non-empty sequence?
function M.is_array(t)
  if type(t) ~= "table" then return false end
  local mt = getmetatable(t)
  if mt == array_mt then return true end
  if mt == object_mt then return false end
  local n = #t
  if n == 0 then return false end
  local count = 0
  for _ in pairs(t) do count = count + 1 end
  return count == n
end

function M.is_null(v)
  return v == M.null
end

return M
