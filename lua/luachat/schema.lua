-- luachat.schema: checks tool arguments against the tool's JSON Schema, so a
-- model's mistake becomes a message it can act on, never a handler crash.
--
-- Owns: the subset of JSON Schema that tool definitions use: type (and
-- lists of types), required, properties, additionalProperties, enum, const,
-- items, min/maxItems, min/maxLength, minimum/maximum, anyOf/oneOf/allOf.
-- Unknown keywords are ignored (as validators do), never an error.
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

local function check_object(v, s, path)
  local props = type(s.properties) == "table" and s.properties or {}
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
      local ok, err = check(value, sub, path .. "." .. k)
      if not ok then return false, err end
    elseif s.additionalProperties == false then
      local allowed = {}
      for name in pairs(props) do allowed[#allowed + 1] = name end
      table.sort(allowed)
      return false, string.format("%s: unexpected property %q (allowed: %s)", path, k,
        #allowed > 0 and table.concat(allowed, ", ") or "none")
    elseif type(s.additionalProperties) == "table" then
      local ok, err = check(value, s.additionalProperties, path .. "." .. k)
      if not ok then return false, err end
    end
  end
  return true
end

local function check_array(v, s, path)
  local n = #v
  if type(s.minItems) == "number" and n < s.minItems then
    return false, string.format("%s: expected at least %d items, got %d", path, s.minItems, n)
  end
  if type(s.maxItems) == "number" and n > s.maxItems then
    return false, string.format("%s: expected at most %d items, got %d", path, s.maxItems, n)
  end
  if type(s.items) == "table" then
    for i = 1, n do
      local ok, err = check(v[i], s.items, string.format("%s[%d]", path, i - 1))
      if not ok then return false, err end
    end
  end
  return true
end

function check(v, s, path)
  if type(s) ~= "table" then return true end -- true/false schemas and junk: permissive
  local t = s.type
  if t ~= nil then
    local ok = false
    if type(t) == "table" then
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
  elseif type(v) == "table" then
    local ok, err
    if is_object(v) and (s.properties or s.required or s.additionalProperties ~= nil) then
      ok, err = check_object(v, s, path)
      if not ok then return false, err end
    end
    if is_array(v) and (s.items or s.minItems or s.maxItems) then
      ok, err = check_array(v, s, path)
      if not ok then return false, err end
    end
  end
  if type(s.allOf) == "table" then
    for _, sub in ipairs(s.allOf) do
      local ok, err = check(v, sub, path)
      if not ok then return false, err end
    end
  end
  for _, key in ipairs { "anyOf", "oneOf" } do
    local list = s[key]
    if type(list) == "table" then
      local passed, first_err = 0, nil
      for _, sub in ipairs(list) do
        local ok, err = check(v, sub, path)
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
  return check(value, schema, "$")
end

return M
