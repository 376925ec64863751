-- luachat.schema: checks tool arguments (and structured outputs) against a JSON
-- Schema, so a model's mistake becomes a message it can act on, never a crash;
-- and prepares a schema for the wire (normalize: empty lists go out as []).
--
-- Owns: the subset of JSON Schema that tool definitions and structured outputs
-- use: type (and lists of types), required, properties, additionalProperties,
-- min/maxProperties, enum, const, items, prefixItems, min/maxItems,
-- uniqueItems, min/maxLength, minimum/maximum, exclusiveMinimum/Maximum,
-- multipleOf, anyOf/oneOf/allOf/not, local $ref ("#/$defs/x", "#").
-- Unknown keywords (pattern, format, ...) are ignored (as validators do), never an error.
local json = require "luachat.json"

local null = json.null
local M = {}

local function is_array(v)
  if type(v) ~= "table" then return false end
  if getmetatable(v) == json.array_mt then return true end
  if getmetatable(v) == json.object_mt then return false end
  return next(v) == nil or json.is_array(v)
end

local function is_object(v)
  if type(v) ~= "table" or getmetatable(v) == json.array_mt then return false end
  return next(v) == nil or not json.is_array(v)
end

local function json_type(v)
  if v == null then return "null" end
  local t = type(v)
  if t == "string" or t == "boolean" then return t end
  if t == "number" then return math.type(v) == "integer" and "integer" or "number" end
  if t == "table" then
    -- An unmarked empty table is both; call it an object. A marked [] is an array.
    if getmetatable(v) == json.array_mt or (next(v) ~= nil and is_array(v)) then return "array" end
    return "object"
  end
  return t
end

local function matches_type(v, want)
  if want == "null" then return v == null end
  if want == "string" then return type(v) == "string" end
  if want == "boolean" then return type(v) == "boolean" end
  if want == "number" then return type(v) == "number" end
  if want == "integer" then
    -- 2.0 counts (JSON has one number type); inf and NaN do not.
    return math.type(v) == "integer"
      or (type(v) == "number" and v == math.floor(v) and v - v == 0)
  end
  if want == "array" then return is_array(v) end
  if want == "object" then return is_object(v) end
  return true -- an unknown type name constrains nothing
end

local function show(v)
  if type(v) == "string" then return string.format("%q", #v > 40 and v:sub(1, 37) .. "..." or v) end
  local ok, s = pcall(json.encode, v)
  return ok and (#s > 40 and s:sub(1, 37) .. "..." or s) or tostring(v)
end

local function equal(a, b)
  if a == b then return true end
  if type(a) ~= "table" or type(b) ~= "table" then return false end
  for k, v in pairs(a) do if not equal(v, b[k]) then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end

local check

local function check_object(v, s, path, ctx)
  local props = type(s.properties) == "table" and s.properties or {}
  if type(s.minProperties) == "number" or type(s.maxProperties) == "number" then
    local n = 0
    for _ in pairs(v) do n = n + 1 end
    if type(s.minProperties) == "number" and n < s.minProperties then
      return false, string.format("%s: expected at least %d properties, got %d", path, s.minProperties, n)
    end
    if type(s.maxProperties) == "number" and n > s.maxProperties then
      return false, string.format("%s: expected at most %d properties, got %d", path, s.maxProperties, n)
    end
  end
  if type(s.required) == "table" then
    for _, name in ipairs(s.required) do
      if v[name] == nil then return false, string.format("%s: missing required property %q", path, name) end
    end
  end
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = tostring(k) end
  table.sort(keys)
  for _, k in ipairs(keys) do
    local sub = props[k]
    local value = v[k]
    if sub ~= nil then
      local ok, err = check(value, sub, path .. "." .. k, ctx)
      if not ok then return false, err end
    elseif s.additionalProperties == false then
      local allowed = {}
      for name in pairs(props) do allowed[#allowed + 1] = name end
      table.sort(allowed)
      return false, string.format("%s: unexpected property %q (allowed: %s)", path, k,
        #allowed > 0 and table.concat(allowed, ", ") or "none")
    elseif type(s.additionalProperties) == "table" then
      local ok, err = check(value, s.additionalProperties, path .. "." .. k, ctx)
      if not ok then return false, err end
    end
  end
  return true
end

local function check_array(v, s, path, ctx)
  local n = #v
  if type(s.minItems) == "number" and n < s.minItems then
    return false, string.format("%s: expected at least %d items, got %d", path, s.minItems, n)
  end
  if type(s.maxItems) == "number" and n > s.maxItems then
    return false, string.format("%s: expected at most %d items, got %d", path, s.maxItems, n)
  end
  -- prefixItems (2020-12) checks the first items by position; items checks the rest.
  -- items as a list is the older tuple form of the same thing.
  local prefix = type(s.prefixItems) == "table" and s.prefixItems
    or (type(s.items) == "table" and json.is_array(s.items) and s.items) or nil
  local first = 1
  if prefix then
    for i = 1, math.min(n, #prefix) do
      local ok, err = check(v[i], prefix[i], string.format("%s[%d]", path, i - 1), ctx)
      if not ok then return false, err end
    end
    first = #prefix + 1
  end
  local rest = s.items
  if prefix == s.items then rest = s.additionalItems end
  if type(rest) == "table" then
    for i = first, n do
      local ok, err = check(v[i], rest, string.format("%s[%d]", path, i - 1), ctx)
      if not ok then return false, err end
    end
  elseif rest == false and n >= first then
    return false, string.format("%s: expected at most %d items, got %d", path, first - 1, n)
  end
  if s.uniqueItems == true then
    for i = 2, n do
      for j = 1, i - 1 do
        if equal(v[i], v[j]) then
          return false, string.format("%s: items %d and %d are equal (uniqueItems)", path, j - 1, i - 1)
        end
      end
    end
  end
  return true
end

-- The schema a local $ref points at ("#", "#/$defs/name", any JSON pointer
-- into the root schema), or nil (a remote or broken reference constrains nothing).
local function resolve(root, ref)
  if ref == "#" then return root end
  local pointer = ref:match("^#(/.*)$")
  if not pointer then return nil end
  local node = root
  for part in pointer:gmatch("/([^/]*)") do
    part = part:gsub("~1", "/"):gsub("~0", "~")
    if type(node) ~= "table" then return nil end
    local nxt = node[part]
    if nxt == nil and part:match("^%d+$") then nxt = node[tonumber(part) + 1] end
    node = nxt
  end
  return node
end

local MAX_REF_DEPTH = 64

function check(v, s, path, ctx)
  if s == false then return false, path .. ": no value is allowed here" end
  if type(s) ~= "table" then return true end -- true schemas and junk: permissive
  local ref = s["$ref"]
  if type(ref) == "string" then
    local target = resolve(ctx.root, ref)
    if target ~= nil then
      if ctx.depth >= MAX_REF_DEPTH then
        return false, string.format("%s: $ref %s nests more than %d deep", path, ref, MAX_REF_DEPTH)
      end
      ctx.depth = ctx.depth + 1
      local ok, err = check(v, target, path, ctx)
      ctx.depth = ctx.depth - 1
      if not ok then return false, err end
    end
  end
  local t = s.type
  if t ~= nil then
    local ok = false
    if type(t) == "table" then
      ok = t[1] == nil -- an empty list of types names none: constrains nothing
      for _, one in ipairs(t) do if matches_type(v, one) then ok = true break end end
      t = table.concat(t, " or ")
    else
      ok = matches_type(v, t)
    end
    if not ok then return false, string.format("%s: expected %s, got %s", path, t, json_type(v)) end
  end
  if type(s.enum) == "table" then
    local found = false
    for _, e in ipairs(s.enum) do if equal(v, e) then found = true break end end
    if not found then
      if s.enum[1] == nil then return false, path .. ": no value is allowed (the enum is empty)" end
      local opts = {}
      for i, e in ipairs(s.enum) do opts[i] = show(e) end
      return false, string.format("%s: %s is not one of %s", path, show(v), table.concat(opts, ", "))
    end
  end
  if s.const ~= nil and not equal(v, s.const) then
    return false, string.format("%s: expected %s, got %s", path, show(s.const), show(v))
  end
  if type(v) == "string" then
    local len = utf8.len(v) or #v
    if type(s.minLength) == "number" and len < s.minLength then
      return false, string.format("%s: expected at least %d characters, got %d", path, s.minLength, len)
    end
    if type(s.maxLength) == "number" and len > s.maxLength then
      return false, string.format("%s: expected at most %d characters, got %d", path, s.maxLength, len)
    end
  elseif type(v) == "number" then
    if type(s.minimum) == "number" and v < s.minimum then
      return false, string.format("%s: %s is below the minimum %s", path, show(v), show(s.minimum))
    end
    if type(s.maximum) == "number" and v > s.maximum then
      return false, string.format("%s: %s is above the maximum %s", path, show(v), show(s.maximum))
    end
    -- A number (2019+), or draft 4's boolean making minimum/maximum exclusive.
    local xmin = s.exclusiveMinimum == true and s.minimum or s.exclusiveMinimum
    if type(xmin) == "number" and v <= xmin then
      return false, string.format("%s: %s is not above %s", path, show(v), show(xmin))
    end
    local xmax = s.exclusiveMaximum == true and s.maximum or s.exclusiveMaximum
    if type(xmax) == "number" and v >= xmax then
      return false, string.format("%s: %s is not below %s", path, show(v), show(xmax))
    end
    local m = s.multipleOf
    if type(m) == "number" and m > 0 then
      local q = v / m
      if q ~= math.floor(q) and math.abs(q - math.floor(q + 0.5)) > 1e-9 then
        return false, string.format("%s: %s is not a multiple of %s", path, show(v), show(m))
      end
    end
  elseif type(v) == "table" then
    local ok, err
    if is_object(v) and (s.properties or s.required or s.additionalProperties ~= nil
        or s.minProperties or s.maxProperties) then
      ok, err = check_object(v, s, path, ctx)
      if not ok then return false, err end
    end
    if is_array(v) and (s.items ~= nil or s.prefixItems or s.minItems or s.maxItems or s.uniqueItems) then
      ok, err = check_array(v, s, path, ctx)
      if not ok then return false, err end
    end
  end
  if type(s.allOf) == "table" then
    for _, sub in ipairs(s.allOf) do
      local ok, err = check(v, sub, path, ctx)
      if not ok then return false, err end
    end
  end
  if s["not"] ~= nil and check(v, s["not"], path, ctx) then
    return false, string.format("%s: %s matches a shape that is not allowed (not)", path, show(v))
  end
  for _, key in ipairs { "anyOf", "oneOf" } do
    local list = s[key]
    if type(list) == "table" then
      local passed, first_err = 0, nil
      for _, sub in ipairs(list) do
        local ok, err = check(v, sub, path, ctx)
        if ok then passed = passed + 1 else first_err = first_err or err end
      end
      if passed == 0 then
        return false, string.format("%s: matches none of the allowed shapes (%s)", path, first_err or "?")
      end
      if key == "oneOf" and passed > 1 then
        return false, string.format("%s: matches %d shapes where exactly one is allowed", path, passed)
      end
    end
  end
  return true
end

-- validate(value, schema) -> true | false, "$.path: what is wrong"
function M.validate(value, schema)
  return check(value, schema, "$", { root = schema, depth = 0 })
end

-- Keywords whose value is a list of values or of schemas, a map of name to
-- schema, or one schema (JSON Schema 2020-12 and the drafts before it).
local LIST_KEYWORDS = { "required", "enum", "examples" }
local SCHEMA_LIST_KEYWORDS = { "anyOf", "oneOf", "allOf", "prefixItems" }
local SCHEMA_MAP_KEYWORDS = { "properties", "patternProperties", "$defs", "definitions", "dependentSchemas" }
local SCHEMA_KEYWORDS = { "additionalProperties", "additionalItems", "unevaluatedItems",
  "unevaluatedProperties", "contains", "propertyNames", "not", "if", "then", "else" }

local function mark_array(t)
  if type(t) == "table" and next(t) == nil and getmetatable(t) == nil then json.array(t) end
end

local function mark_object(t)
  if type(t) == "table" and next(t) == nil and getmetatable(t) == nil then json.object(t) end
end

local normalize

local function normalize_list(list, seen)
  if type(list) ~= "table" then return end
  mark_array(list)
  for _, sub in ipairs(list) do normalize(sub, seen) end
end

function normalize(s, seen)
  if type(s) ~= "table" or seen[s] then return end
  seen[s] = true
  for _, k in ipairs(LIST_KEYWORDS) do mark_array(s[k]) end
  if type(s.type) == "table" then mark_array(s.type) end
  for _, k in ipairs(SCHEMA_LIST_KEYWORDS) do normalize_list(s[k], seen) end
  for _, k in ipairs(SCHEMA_MAP_KEYWORDS) do
    local map = s[k]
    if type(map) == "table" then
      mark_object(map)
      for _, sub in pairs(map) do normalize(sub, seen) end
    end
  end
  for _, k in ipairs(SCHEMA_KEYWORDS) do normalize(s[k], seen) end
  local items = s.items
  if type(items) == "table" then
    -- A non-empty list is the tuple form; an empty table is the schema {} (anything).
    if json.is_array(items) then normalize_list(items, seen) else normalize(items, seen) end
  end
  local dr = s.dependentRequired
  if type(dr) == "table" then
    mark_object(dr)
    for _, list in pairs(dr) do mark_array(list) end
  end
end

-- normalize(schema) -> schema, prepared for json.encode in place: at any depth, an
-- empty list-valued keyword (required, enum, examples, type, anyOf, oneOf, allOf,
-- prefixItems, a dependentRequired entry) is marked as an array so it goes out as
-- [], and an empty map-valued one (properties, patternProperties, $defs,
-- definitions, dependentSchemas, dependentRequired) as an object ({}). Lua cannot
-- tell {} from []; strict structured outputs reject "required": {}. Tables that
-- already carry a metatable are left alone. The one rule for tool parameters and
-- response_format schemas.
function M.normalize(schema)
  normalize(schema, {})
  return schema
end

return M
