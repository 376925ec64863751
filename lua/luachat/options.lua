-- luachat.options: the one rule for option tables (luachat.client, per-call
-- options, luachat.agent, luachat.tool, config-file profiles).
--
-- Owns: checking an option table against a spec of its known keys: an unknown
-- key or a value of the wrong type or range is an error naming the key (with
-- a "did you mean" for near misses such as `baseurl`), and numbers must be
-- finite and in range. check() raises like luaL_argerror, for programming
-- errors; validate() returns the message, for files (config) the caller names.
-- Never: looks at request tables (client:chat's `req` carries arbitrary
-- provider fields), converts or stores values (the caller does).
local M = {}

-- Seconds given to any option are at most this (about 31 years); larger is a
-- mistake, and would overflow the C side's milliseconds.
M.MAX_SECONDS = 1e9

-- A rule: { what = "a ...", ok = function(v) -> true | nil, why }, optionally
-- must = "must ..." (the whole complaint, instead of "must be <what>, got <type>")
-- and required = true (a nil value is then an error too).
local function rule(what, ok) return { what = what, ok = ok } end

-- A copy of rule r with fields changed, e.g. M.with(M.func, { required = true }).
function M.with(r, changes)
  local c = {}
  for k, v in pairs(r) do c[k] = v end
  for k, v in pairs(changes) do c[k] = v end
  return c
end

-- A rule of one's own: M.rule("a luachat client", function(v) ... end).
M.rule = rule

-- An enum: one of the strings in set (keys), described as what ("record,
-- replay or auto"). A wrong string is named in the complaint ("got 'bogus'"):
-- enum values are never secrets, and the value says more than "got string".
function M.enum(what, set)
  local r = rule(what, function(v) return set[v] == true end)
  r.enum = true
  return r
end

local function is_type(name, what)
  return rule(what, function(v) return type(v) == name end)
end

M.string = is_type("string", "a string")
M.table = is_type("table", "a table")
M.func = is_type("function", "a function")
M.boolean = is_type("boolean", "a boolean")
M.any = rule("any value", function() return true end)

-- A byte that a terminal or an HTTP header line treats as control (C0 or DEL).
local CONTROL = "[%z\1-\31\127]"
M.CONTROL = CONTROL

-- A value read from the environment (every variable luachat reads: keys,
-- URLs, model, organization, project): surrounding whitespace trimmed (a value
-- from a mounted secret file often ends in a newline), set but empty counts as
-- unset. A control character left inside is refused, naming the variable.
-- -> value | nil (unset) | nil, message
function M.env_value(name, v)
  if v == nil then return nil end
  v = tostring(v):match("^%s*(.-)%s*$")
  if v == "" then return nil end
  if v:find(CONTROL) then return nil, "environment variable " .. name .. " contains a control character" end
  return v
end

-- A string with no control character (keys, header values, URLs, ids).
M.text = rule("a string", function(v)
  if type(v) ~= "string" then return nil end
  if v:find(CONTROL) then return nil, "contains a control character" end
  return true
end)

-- A number as error messages show it: NaN is "nan" whatever its sign bit
-- (tostring gives "-nan" for 0/0 on glibc).
function M.number_text(v)
  if v ~= v then return "nan" end
  return tostring(v)
end

local function finite(v) return type(v) == "number" and v == v and v ~= math.huge and v ~= -math.huge end

-- Seconds: a finite number in [0, MAX_SECONDS].
M.seconds = M.with(rule("a finite number of seconds", function(v)
  if not finite(v) then return nil end
  if v < 0 or v > M.MAX_SECONDS then
    return nil, string.format("must be between 0 and %.0f seconds, got %s", M.MAX_SECONDS, M.number_text(v))
  end
  return true
end), { numeric = true })

-- An integer (an integral float such as 2.0 counts) in [min, max].
function M.integer(min, max)
  local what = max and string.format("an integer from %d to %d", min, max)
    or string.format("an integer of at least %d", min)
  return M.with(rule(what, function(v)
    local i = math.type(v) and math.tointeger(v)
    if not i or i < min or (max and i > max) then return nil end
    return true
  end), { numeric = true })
end

-- One of several rules, e.g. either(M.text, M.boolean).
function M.either(a, b, what)
  return rule(what or (a.what .. " or " .. b.what), function(v)
    local ok, why = a.ok(v)
    if ok then return true end
    local ok2, why2 = b.ok(v)
    if ok2 then return true end
    return nil, why or why2
  end)
end

-- A key with its punctuation and case dropped, for "did you mean".
local function squash(k)
  return (tostring(k):lower():gsub("[^%w]", ""))
end

-- Edit distance between a and b (Levenshtein; option names are short).
local function distance(a, b)
  local prev = {}
  for j = 0, #b do prev[j] = j end
  for i = 1, #a do
    local cur = { [0] = i }
    for j = 1, #b do
      local cost = a:byte(i) == b:byte(j) and 0 or 1
      cur[j] = math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
    end
    prev = cur
  end
  return prev[#b]
end

-- Are a's letters found in b, in order (params in parameters)?
local function subsequence(a, b)
  local j = 1
  for i = 1, #a do
    j = b:find(a:sub(i, i), j, true)
    if not j then return false end
    j = j + 1
  end
  return true
end

-- The known name an unknown key most likely meant, or nil: the same letters
-- (baseurl), a typo or two (default_profle, timout), or the start or an
-- abbreviation of a name (idle, max_retry, params, desc). Ranked by edit
-- distance (a start or abbreviation counts as the most typos allowed), then
-- by plain edit distance, then by closer length, then by name.
local function less(a, b) -- lexicographic order of two rank lists
  for i = 1, #a do
    if a[i] ~= b[i] then return a[i] < b[i] end
  end
  return false
end

local function nearest(k, names)
  if type(k) ~= "string" then return nil end
  local want = squash(k)
  local limit = #want >= 6 and 2 or #want >= 3 and 1 or 0 -- typos allowed, by length
  local best, best_rank
  for _, name in ipairs(names) do
    local have = squash(name)
    local d = distance(want, have)
    local score = d
    if #want >= 4 and #want < #have then
      local p = 0
      while p < #want and want:byte(p + 1) == have:byte(p + 1) do p = p + 1 end
      if p >= #want - 2 or subsequence(want, have) then score = math.min(d, limit) end
    end
    local rank = { score, d, math.abs(#have - #want) }
    if score <= limit and (not best_rank or less(rank, best_rank)) then best, best_rank = name, rank end
  end
  return best
end

local function describe_key(k)
  if type(k) == "string" then return "'" .. k .. "'" end
  return "[" .. tostring(k) .. "]"
end


local function complaint(k, r, v, why)
  local text = why or r.must
  if not text then
    text = "must be " .. r.what
    -- A number's value says more to a numeric rule; elsewhere its type does.
    if v ~= nil then
      local got = type(v)
      if r.numeric and got == "number" then
        got = M.number_text(v)
      elseif r.enum and got == "string" then -- control characters shown escaped, long values cut
        got = string.format("%q", #v > 60 and v:sub(1, 60) .. "..." or v):gsub("^\"(.*)\"$", "'%1'"):gsub("\\\n", "\\n")
      end
      text = text .. ", got " .. got
    end
  end
  return string.format("field %s %s", describe_key(k), text)
end

-- validate(t, spec) -> true | nil, message naming the key.
-- spec: { key = rule, ... }. Unknown keys first, then each known key in sorted
-- order (so the first problem reported does not depend on the hash order).
function M.validate(t, spec)
  local unknown = {}
  for k in pairs(t) do
    if type(k) ~= "string" or not spec[k] then unknown[#unknown + 1] = k end
  end
  table.sort(unknown, function(a, b)
    local ta, tb = type(a), type(b)
    if ta ~= tb then return ta < tb end
    if ta == "string" or ta == "number" then return a < b end
    return false
  end)
  local names = {}
  for name in pairs(spec) do names[#names + 1] = name end
  table.sort(names)
  local k = unknown[1]
  if k ~= nil then
    local msg = "unknown field " .. describe_key(k)
    local near = nearest(k, names)
    if near then msg = msg .. string.format(" (did you mean '%s'?)", near) end
    return nil, msg
  end
  for _, name in ipairs(names) do
    local r, v = spec[name], t[name]
    if v == nil then
      if r.required then return nil, complaint(name, r, nil) end
    else
      local ok, why = r.ok(v)
      if not ok then return nil, complaint(name, r, v, why) end
    end
  end
  return true
end

-- check(fname, t, spec [, level [, argn]]): raise "bad argument #argn to
-- 'fname' (message)" at `level` (1: the function calling check; 2, the
-- default: its caller). argn defaults to 1.
function M.check(fname, t, spec, level, argn)
  local ok, msg = M.validate(t, spec)
  if not ok then
    error(string.format("bad argument #%d to '%s' (%s)", argn or 1, fname, msg), (level or 2) + 1)
  end
end

return M
