-- bench/lua_profile.lua: a sampling profile of Lua code for `make bench`'s
-- profile section. Loaded before the script (`luachat -e 'dofile"bench/lua_profile.lua"'`).
--
-- Owns: a count hook that every STEP VM instructions charges the running Lua
-- function (source:line where it is defined), and, when the state closes,
-- the table of functions by share written to $LUACHAT_BENCH_LUAPROF.
-- Never: used outside the benchmark; it replaces the host's interrupt hook
-- (Ctrl-C does not stop a profiled run).
local STEP = 1000
local counts, total = {}, 0
local getinfo = debug.getinfo

local function hook()
  local info = getinfo(2, "S")
  if info then
    local key = info.short_src .. ":" .. info.linedefined
    counts[key] = (counts[key] or 0) + 1
    total = total + 1
  end
end
debug.sethook(hook, "", STEP)

-- Names of functions, read from their definition lines when reporting.
local function name_of(key)
  local file, line = key:match("^(.*):(%d+)$")
  line = tonumber(line)
  if not file or line == 0 then return "(main chunk)" end
  local f = io.open(file, "r")
  if not f then return "?" end
  local n, text = 0, nil
  for l in f:lines() do
    n = n + 1
    if n == line then text = l break end
  end
  f:close()
  if not text then return "?" end
  return (text:match("function%s+([%w_%.:]+)") or text:match("([%w_%.]+)%s*=%s*function")
    or "(anonymous)")
end

-- Reported when the state closes (after the script ends).
_G.__luachat_bench_profile = setmetatable({}, { __gc = function()
  debug.sethook()
  local path = os.getenv("LUACHAT_BENCH_LUAPROF")
  local out = path and io.open(path, "w") or io.stderr
  local keys = {}
  for k in pairs(counts) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b) return counts[a] > counts[b] end)
  out:write(string.format("%d samples (one per %d VM instructions)\n", total, STEP))
  for i = 1, math.min(#keys, 15) do
    local k = keys[i]
    out:write(string.format("%5.1f%%  %-32s %s\n", 100 * counts[k] / total, name_of(k), k))
  end
  if out ~= io.stderr then out:close() end
end })
