-- luachat.util: small helpers every other module shares, each written once.
--
-- Owns: one_line (error messages and status lines on one line), cut (a
-- string shortened on a UTF-8 character boundary), getenv (an environment
-- variable as luachat reads every one), add_usage (token counts summed),
-- random_hex (n random bytes as hex: Idempotency-Keys, batch run ids).
-- Never: requires another luachat module but luachat.options, or keeps state.
-- Internal: not part of the public API (names may change).
local options = require "luachat.options"

local M = {}

-- s (any value, through tostring) on one line: every run of line breaks, with
-- the whitespace around it, becomes one space. Nothing else changes (control
-- characters other than CR/LF are the display's business: luachat.log.visible).
-- With max, the result is cut to at most max bytes plus "…" (see cut).
function M.one_line(s, max)
  s = tostring(s):gsub("%s*[\r\n]+%s*", " ")
  if max then return M.cut(s, max) end
  return s
end

-- s cut to at most max bytes on a UTF-8 character boundary, "…" appended when cut.
function M.cut(s, max)
  if #s <= max then return s end
  local cut = max
  while cut > 1 and (s:byte(cut + 1) or 0) & 0xC0 == 0x80 do cut = cut - 1 end
  return s:sub(1, cut) .. "…"
end

-- An environment variable as luachat reads every one (options.env_value):
-- surrounding whitespace trimmed, set but empty counts as unset.
-- -> value | nil (unset) | nil, message (a control character inside).
function M.getenv(name)
  return options.env_value(name, os.getenv(name))
end

local USAGE_KEYS = { "prompt_tokens", "completion_tokens", "total_tokens" }

-- Add a reply's usage table u into sum: prompt_tokens, completion_tokens and
-- total_tokens, each created at 0; only numbers count (a string or a JSON null
-- adds nothing). u not a table: sum is unchanged.
function M.add_usage(sum, u)
  if type(u) ~= "table" then return sum end
  for _, k in ipairs(USAGE_KEYS) do
    local v = u[k]
    sum[k] = (sum[k] or 0) + (type(v) == "number" and v or 0)
  end
  return sum
end

-- n random bytes (math.random) as 2n lowercase hex digits.
function M.random_hex(n)
  local t = {}
  for i = 1, n do t[i] = string.format("%02x", math.random(0, 255)) end
  return table.concat(t)
end

return M
