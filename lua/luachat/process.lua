-- luachat.process: child processes whose pipes are watched by the one loop
-- (the stdio transport of MCP servers). Waiting yields inside a task and
-- drives the loop outside one (luachat.sched), so a slow child never blocks
-- HTTP streams or other tasks.
--
-- Owns: the Lua wrapper around core.process's luachat.Process userdata
-- (src/lchat_proc.c): a line buffer for read_line, and waits with timeouts.
-- Never: blocks the loop (except close(grace), bounded, see below), runs a
-- shell, or reads stdout behind the caller's back.
--
-- API (errors are luachat errors: kind "process", or "timeout" for a wait):
--   local process = require "luachat.process"
--   local p, err = process.spawn{ argv = {"cmd", "arg"}, env = {K = "v", DROP = false},
--                                 cwd = "/dir", max_line = 64 * 2^20 }
--     argv: no shell, argv[1] looked up in PATH; env: added to (false: removed from) ours;
--     env_only = true: env (its strings) is the child's whole environment, nothing of ours.
--     A command that cannot start is nil, err at once:
--     "cannot start 'cmd': No such file or directory".
--   p:write(data)          -> true | nil, err      queued, never blocks
--   p:read([timeout])      -> next stdout bytes (waits for some) | nil at EOF | nil, err (timeout)
--   p:read_line([timeout]) -> next line without "\n" | nil at EOF | nil, err (timeout, too long)
--                             (a last line without "\n" is returned before nil)
--   p:wait([timeout])      -> "exit", code | "signal", n | nil, err (timeout); reads nothing
--   p:shutdown([grace])    -> like close, but waits by yielding: close stdin, wait grace s
--                             (default 1) for an exit, SIGTERM the group, wait grace s, then
--                             close(0): SIGKILL, reap. Returns what wait returns.
--   p:close([grace])       -> the same done in C, blocking the loop up to 2 * grace s; idempotent,
--                             also on garbage collection and for `local p <close>`
--   p:close_stdin(), p:kill([sig]), p:pid(), p:done(), p:exit_status(),
--   p:stderr_tail([lines]), p:pending()         as on the userdata (lchat_proc.c)
--   p.raw                  the luachat.Process userdata (sched.wait_transfer(p.raw) wakes on news)
-- One task reads a given process at a time (as with a stream).
local core = require "luachat.core"
local sched = require "luachat.sched"

local M = {}

local DEFAULT_MAX_LINE = 64 * 1024 * 1024
local DEFAULT_GRACE = 1

local find, sub, concat = string.find, string.sub, table.concat
local now = core.now

local Process = {}
Process.__index = Process
Process.__name = "luachat.ProcessWrapper"

local function timeout_error(self, what, timeout)
  return core.error { kind = "timeout",
    message = string.format("process '%s' (pid %d): no %s within %g s", self.name, self.raw:pid(), what, timeout) }
end

-- spawn{argv=, env=, cwd=, max_line=} -> Process | nil, err
function M.spawn(spec)
  if type(spec) ~= "table" then
    error("bad argument #1 to 'spawn' (table expected, got " .. type(spec) .. ")", 2)
  end
  local max_line = spec.max_line or DEFAULT_MAX_LINE
  if math.type(max_line) ~= "integer" or max_line < 1 then
    error("bad argument #1 to 'spawn' (field 'max_line' must be a positive integer)", 2)
  end
  local raw, err = core.process { argv = spec.argv, env = spec.env, cwd = spec.cwd, env_only = spec.env_only }
  if not raw then return nil, err end
  local name = type(spec.argv) == "table" and spec.argv[1] or "?"
  return setmetatable({ raw = raw, name = name, max_line = max_line,
    rest = "", pos = 1, parts = {}, parts_len = 0, eof = false }, Process)
end

-- Wait for news from the process (output, EOF, exit) until `deadline`; false on timeout.
local function wait_news(self, deadline)
  local left = deadline and deadline - now()
  if left and left <= 0 then return false end
  return sched.wait_transfer(self.raw, left)
end

-- Buffered bytes (a read_line's leftovers) first, else what the process has: string | "" | nil (EOF).
local function take(self)
  if self.parts_len > 0 or self.pos <= #self.rest then
    local s = concat(self.parts) .. sub(self.rest, self.pos)
    self.parts, self.parts_len, self.rest, self.pos = {}, 0, "", 1
    if s ~= "" then return s end
  end
  return self.raw:read()
end

function Process:read(timeout)
  local deadline = timeout and now() + timeout
  while true do
    local s = take(self)
    if s == nil then return nil end
    if s ~= "" then return s end
    if not wait_news(self, deadline) then return nil, timeout_error(self, "output", timeout) end
  end
end

function Process:read_line(timeout)
  local deadline = timeout and now() + timeout
  while true do
    local rest, pos = self.rest, self.pos
    local nl = find(rest, "\n", pos, true)
    if nl then
      local piece = sub(rest, pos, nl - 1)
      self.pos = nl + 1
      if self.parts_len == 0 then
        if #piece > self.max_line then break end
        return piece
      end
      local total = self.parts_len + #piece
      local parts = self.parts
      parts[#parts + 1] = piece
      self.parts, self.parts_len = {}, 0
      if total > self.max_line then break end
      return concat(parts)
    end
    if pos <= #rest then -- no newline in what is left: it starts the next line
      local piece = sub(rest, pos)
      self.parts[#self.parts + 1] = piece
      self.parts_len = self.parts_len + #piece
      self.rest, self.pos = "", 1
      if self.parts_len > self.max_line then break end
    end
    local s = self.raw:read()
    if s == nil then -- EOF: a last line without its newline, then nil
      if self.parts_len > 0 then
        local line = concat(self.parts)
        self.parts, self.parts_len = {}, 0
        return line
      end
      return nil
    elseif s == "" then
      if not wait_news(self, deadline) then return nil, timeout_error(self, "line", timeout) end
    else
      self.rest, self.pos = s, 1
    end
  end
  self.parts, self.parts_len = {}, 0
  return nil, core.error { kind = "process",
    message = string.format("process '%s' (pid %d): a line longer than %d bytes", self.name, self.raw:pid(), self.max_line) }
end

function Process:wait(timeout)
  local deadline = timeout and now() + timeout
  while true do
    local kind, value = self.raw:exit_status()
    if kind then return kind, value end
    if not wait_news(self, deadline) then return nil, timeout_error(self, "exit", timeout) end
  end
end

function Process:shutdown(grace)
  grace = grace or DEFAULT_GRACE
  if type(grace) ~= "number" or grace ~= grace or grace < 0 or grace > 3600 then
    error("bad argument #1 to 'shutdown' (seconds between 0 and 3600 expected)", 2)
  end
  local raw = self.raw
  if pcall(raw.close_stdin, raw) then -- false: closed already
    if not self:wait(grace) then
      raw:kill("TERM")
      self:wait(grace)
    end
  end
  return raw:close(0)
end

function Process:close(grace) return self.raw:close(grace) end
function Process:write(data) return self.raw:write(data) end
function Process:close_stdin() return self.raw:close_stdin() end
function Process:kill(sig) return self.raw:kill(sig) end
function Process:pid() return self.raw:pid() end
function Process:done() return self.raw:done() end
function Process:exit_status() return self.raw:exit_status() end
function Process:stderr_tail(lines) return self.raw:stderr_tail(lines) end
function Process:pending() return self.raw:pending() end
Process.__close = function(self) self.raw:close() end
Process.__tostring = function(self) return tostring(self.raw) end

return M
