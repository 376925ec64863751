-- luachat.log: LUACHAT_LOG=debug tracing to stderr, one line per event.
-- Owns: the log level, and luachat.log.visible (control characters shown,
-- not obeyed: debug lines carry server text to a terminal). Never: prints a header, a body or a key (callers
-- pass already-redacted, one-line facts: method, URL without query or userinfo
-- (luachat.redact.url), status, timing; error messages redacted by the client).
local M = {}

-- A control character in caret notation: ESC -> ^[, DEL -> ^?.
local function caret(c)
  local b = c:byte()
  return b == 127 and "^?" or ("^" .. string.char(b + 64))
end

-- s with every control character made visible instead of obeyed, so text from
-- a server cannot retitle or clear the terminal or write the clipboard: C0
-- and DEL in caret notation (^[), the C1 controls U+0080-U+009F as M-^[ (cat -v).
-- Tab stays; newline stays when keep_newline is true. The one such rule: the
-- command line (luachat.cli_term) uses it for error lines and answers.
function M.visible(s, keep_newline)
  s = tostring(s):gsub("\194([\128-\159])", function(c) return "M-" .. caret(string.char(c:byte() - 128)) end)
  return (s:gsub(keep_newline and "[%z\1-\8\11-\31\127]" or "[%z\1-\8\10-\31\127]", caret))
end

-- LUACHAT_LOG's levels, any case (DEBUG, Debug): debug; trace is its old
-- alias. Unset or empty: no log.
local LEVELS = { debug = true, trace = true }

-- The variable read as luachat reads every one (luachat.options.env_value):
-- level | nil (unset) | nil, problem, worded as the other variables' problems
-- ("environment variable LUACHAT_CASSETTE_MODE must be ..., got 'bogus'").
local function env_level(v)
  local value, why = require("luachat.options").env_value("LUACHAT_LOG", v)
  if why then return nil, why end
  if value ~= nil and not LEVELS[value:lower()] then
    return nil, string.format("environment variable LUACHAT_LOG must be debug (any case) or unset, got '%s'", value)
  end
  return value and value:lower()
end

local level, problem = env_level(os.getenv("LUACHAT_LOG"))

-- check_env() -> nil | problem: a LUACHAT_LOG value that is not a level. The
-- command line checks it first and prints it as a usage error (exit 2).
function M.check_env() return problem end

-- A script that only uses the library is told once, at the first line that
-- would have been logged, instead of the value being ignored in silence.
M.enabled = level ~= nil or problem ~= nil

function M.debug(fmt, ...)
  if not M.enabled then return end
  if problem then
    M.enabled = false
    io.stderr:write("luachat: ", problem, "; no debug log\n")
    return
  end
  local ok, line = pcall(string.format, fmt, ...)
  io.stderr:write("luachat[debug] ", M.visible(ok and line or fmt), "\n")
end

return M
