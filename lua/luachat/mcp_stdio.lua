-- luachat.mcp_stdio: MCP's stdio transport: the server is a child process
-- (argv, never a shell) whose stdin/stdout pipes the engine's loop watches.
--
-- Owns: the child (luachat.core's process object), newline-delimited JSON-RPC
-- framing both ways, a reader task that runs while requests wait for answers
-- (so a slow server never blocks other tasks, and a session nobody waits on
-- keeps no task alive), what the child's exit and stderr tell a failure.
-- Never: blocks the loop, yields in send (mcp_rpc's rule), or leaves the child
-- running once closed (the process object ends it and its process group).
local process = require "luachat.process"
local sched = require "luachat.sched"
local log = require "luachat.log"
local rpc_mod = require "luachat.mcp_rpc"

local M = {}

-- The longest message a server may send (bytes): one line of JSON. Larger is
-- a failure of the session (the child is ended), never unbounded memory.
M.MAX_MESSAGE = 64 * 1024 * 1024
-- Lines of the child's stderr put in error messages.
M.STDERR_LINES = 5

local T = {}
T.__index = T
T.__name = "luachat.McpStdio"

-- What a server inherits of our environment by default (the MCP SDK's
-- getDefaultEnvironment, after sudo's list): nothing else, so API keys and
-- other secrets in ours never reach a server unless the connection's `env`
-- gives them (or inherit_env = true passes everything).
M.DEFAULT_ENV = { "HOME", "LOGNAME", "PATH", "SHELL", "TERM", "USER" }

-- The child's whole environment: DEFAULT_ENV's variables we have (a value
-- starting "()", a shell function, is left out as the SDK does), then `env`
-- over them (false removes one). -> { K = "v" }
function M.environment(env)
  local out = {}
  for _, k in ipairs(M.DEFAULT_ENV) do
    local v = os.getenv(k)
    if v and v:sub(1, 2) ~= "()" then out[k] = v end
  end
  for k, v in pairs(env or {}) do
    if v == false then out[k] = nil else out[k] = v end
  end
  return out
end

-- M.new{ name=, command = argv, env = { K = v | false }, cwd =, inherit_env = } -> transport | nil, err
-- inherit_env: env is applied over our whole environment instead of M.environment's minimum.
function M.new(opts)
  local env, only = opts.env, false
  if not opts.inherit_env then env, only = M.environment(opts.env), true end
  local w, err = process.spawn { argv = opts.command, env = env, env_only = only, cwd = opts.cwd }
  if not w then
    -- err.message: "cannot start 'cmd': No such file or directory"
    return nil, rpc_mod.error(opts.name, "%s", tostring(type(err) == "table" and err.message or err))
  end
  -- proc: the luachat.Process userdata, read here without waiting (the reader waits on it).
  return setmetatable({ name = opts.name, wrapper = w, proc = w.raw, parts = {}, plen = 0, reading = false,
    closed = false }, T)
end

function T:attach(rpc) self.rpc = rpc end

-- The last lines of the child's stderr, or "".
function T:stderr_tail(lines)
  local ok, s = pcall(self.proc.stderr_tail, self.proc, lines or M.STDERR_LINES)
  return ok and type(s) == "string" and s or ""
end

-- Why the child is gone, for messages: "exited with status 3", "was killed by signal 9".
function T:exit_text()
  local state, value = self.proc:exit_status()
  if state == "exit" then return "exited with status " .. tostring(value) end
  if state == "signal" then return "was killed by signal " .. tostring(value) end
  return "closed its stdout"
end

function T:death_error()
  local tail = self:stderr_tail()
  tail = tail ~= "" and ("; its stderr ends: " .. rpc_mod.excerpt(tail, 600)) or ""
  local pending = ""
  local names = {}
  for _, req in pairs(self.rpc.pending) do names[#names + 1] = req end
  table.sort(names, function(a, b) return a.id < b.id end)
  if #names > 0 then
    local w = {}
    for i, req in ipairs(names) do w[i] = req.what end
    pending = " while waiting for " .. table.concat(w, ", ")
  end
  return rpc_mod.error(self.name, "the server %s%s%s%s", self:exit_text(), pending, tail, self.rpc:garbage_note())
end

-- Bytes from stdout: each complete line is one message.
function T:feed(data)
  local start = 1
  while true do
    local nl = data:find("\n", start, true)
    if not nl then break end
    local piece = data:sub(start, nl - 1)
    local line = piece
    if self.plen > 0 then
      self.parts[#self.parts + 1] = piece
      line = table.concat(self.parts)
      self.parts, self.plen = {}, 0
    end
    start = nl + 1
    if #line > M.MAX_MESSAGE then return self:too_large() end
    if line:sub(-1) == "\r" then line = line:sub(1, -2) end
    if line:find("%S") then self.rpc:receive(line) end
    if self.rpc.dead then return end
  end
  if start <= #data then
    local rest = data:sub(start)
    self.parts[#self.parts + 1] = rest
    self.plen = self.plen + #rest
    if self.plen > M.MAX_MESSAGE then self:too_large() end
  end
end

-- A message over MAX_MESSAGE: the session ends (whole or in pieces, it is refused).
function T:too_large()
  self.parts, self.plen = {}, 0
  self.rpc:fail_all(rpc_mod.error(self.name, "the server sent a message over %d bytes (the limit)", M.MAX_MESSAGE))
  self:close(0)
end

-- The reader: runs while requests wait, reading what the child writes.
local function reader(self)
  local p = self.proc
  while not self.closed do
    local data = p:read() -- "" when nothing yet, nil at end of file
    if data and data ~= "" then
      self:feed(data)
    elseif data == nil then
      if p:done() then
        self.rpc:fail_all(self:death_error())
        break
      end
      sched.wait_transfer(p) -- stdout ended: wait for the exit status
    elseif self.rpc:in_flight() == 0 then
      break -- nobody waits: the next request starts a reader again
    else
      sched.wait_transfer(p)
    end
  end
  self.reading = false
end

-- Write one message (a line) to the child's stdin; the loop writes what the
-- pipe does not take now. Never yields. A request starts the reader.
function T:send(text, req)
  if self.closed then return nil, rpc_mod.error(self.name, "the session is closed") end
  local ok, err = self.proc:write(text .. "\n")
  if not ok then
    local e = self.proc:done() and self:death_error()
      or rpc_mod.error(self.name, "cannot write to the server: %s", tostring(type(err) == "table" and err.message or err))
    return nil, e
  end
  if req and not self.reading then
    self.reading = true
    sched.spawn(reader, self)
  end
  return true
end

-- A request stopped waiting (timeout, cancelled): a reader left waiting for
-- nobody is woken so it can end (luachat.run would wait for it).
function T:abandon()
  if self.reading and self.rpc:in_flight() == 0 then sched.wake(self.proc) end
end

-- End the child: stdin closed, `grace` seconds to exit, then SIGTERM to its
-- process group, as long again, then SIGKILL; reaped, descriptors closed.
-- The waits yield (luachat.process's shutdown: other tasks go on). grace nil
-- (garbage collection): at once, without waiting.
function T:close(grace)
  if self.closed then return end
  self.closed = true
  sched.wake(self.proc) -- the reader, if one waits, sees the session closed and ends
  if grace and grace > 0 then
    local ok, err = pcall(self.wrapper.shutdown, self.wrapper, grace)
    if not ok then
      log.debug("mcp %s: shutdown failed (%s); ending the server at once", self.name, tostring(err))
      self.proc:close(0)
    end
  else
    self.proc:close(0)
  end
  log.debug("mcp %s: the server %s", self.name, self:exit_text())
end

return M
