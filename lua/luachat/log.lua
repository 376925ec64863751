-- luachat.log: LUACHAT_LOG=debug tracing to stderr, one line per event.
-- Owns: the log level. Never: prints a header, a body or a key (callers
-- pass already-redacted, one-line facts: method, URL without query or userinfo
-- (luachat.redact.url), status, timing; error messages redacted by the client).
local M = {}

local level = os.getenv("LUACHAT_LOG")
M.enabled = level == "debug" or level == "trace"

function M.debug(fmt, ...)
  if not M.enabled then return end
  local ok, line = pcall(string.format, fmt, ...)
  io.stderr:write("luachat[debug] ", ok and line or fmt, "\n")
end

-- For tests and hosts: switch tracing on or off at run time.
function M.set_enabled(on)
  M.enabled = on and true or false
end

return M
