-- luachat.mcp_rpc: one JSON-RPC 2.0 conversation with an MCP server.
--
-- Owns: request ids, the requests in flight (several at once, matched by id),
-- waiting for an answer (a timeout sends notifications/cancelled), answering
-- the peer's requests through a handler (each in a task of its own, so a slow
-- answer never stops the reading), progress notifications for the request
-- they name, and failing every pending request when the transport dies.
-- Never: touches a descriptor or a socket (the transport does: luachat.mcp_stdio,
-- luachat.mcp_http give `send(text, req)` and `abandon(req)`), yields inside
-- `send` (a request cancelled from a <close> handler must still say so), or
-- decides MCP policy (luachat.mcp does).
local core = require "luachat.core"
local json = require "luachat.json"
local sched = require "luachat.sched"
local log = require "luachat.log"

local M = {}

local null = json.null
local traceback = debug.traceback

-- JSON-RPC error codes (the JSON-RPC 2.0 spec).
M.PARSE_ERROR, M.INVALID_REQUEST, M.METHOD_NOT_FOUND = -32700, -32600, -32601
M.INVALID_PARAMS, M.INTERNAL_ERROR = -32602, -32603

-- The one way an MCP failure is made: kind "mcp", the message naming the server.
function M.error(name, fmt, ...)
  local ok, s = pcall(string.format, fmt, ...)
  return core.error { kind = "mcp", message = "mcp server '" .. tostring(name) .. "': " .. (ok and s or fmt) }
end

-- A short, one-line excerpt of bytes a server sent, for messages and logs.
function M.excerpt(s, max)
  s = tostring(s):gsub("[%z\1-\31\127]+", " ")
  max = max or 120
  if #s > max then s = s:sub(1, max) .. "..." end
  return s
end

-- A request in flight; sched.wait_transfer waits on it (done() like a transfer).
local Pending = {}
Pending.__index = Pending
Pending.__name = "luachat.McpRequest"
function Pending:done() return self.finished end

local Rpc = {}
Rpc.__index = Rpc
Rpc.__name = "luachat.McpRpc"

-- M.new{ name=, transport=, on_request=, on_notification= }:
-- transport: { send = function(self, text, req) -> true | nil, err; abandon = function(self, req) }
-- on_request(method, params) -> result | nil, { code=, message= } (runs in a task)
-- on_notification(method, params) (progress is handled here, by request)
function M.new(opts)
  return setmetatable({
    name = opts.name, transport = opts.transport,
    on_request = opts.on_request, on_notification = opts.on_notification,
    next_id = 0, pending = {}, by_token = {}, dead = nil,
    garbage = 0, last_garbage = nil,
  }, Rpc)
end

-- How many requests wait for an answer.
function Rpc:in_flight()
  local n = 0
  for _ in pairs(self.pending) do n = n + 1 end
  return n
end

-- A copy of the session's fatal error for one more caller (each gets its own table).
local function copy_error(e)
  local c = {}
  for k, v in pairs(e) do c[k] = v end
  return core.error(c)
end

-- Settle request `req` (result or err) and wake whoever waits on it.
function Rpc:finish(req, result, err)
  if req.finished then return end
  self.pending[req.id] = nil
  if req.token ~= nil then self.by_token[req.token] = nil end
  req.finished, req.result, req.error = true, result, err
  sched.wake(req)
end

-- What the last garbage on the wire was, for messages about a failure.
function Rpc:garbage_note()
  if self.garbage == 0 then return "" end
  return string.format(" (it also wrote %d line%s that %s not JSON-RPC, the last: '%s')", self.garbage,
    self.garbage == 1 and "" or "s", self.garbage == 1 and "is" or "are", self.last_garbage)
end

-- The transport is gone: every pending request fails with err, and so does every later one.
function Rpc:fail_all(err)
  if not self.dead then self.dead = err end
  local list = {}
  for _, req in pairs(self.pending) do list[#list + 1] = req end
  table.sort(list, function(a, b) return a.id < b.id end)
  for _, req in ipairs(list) do self:finish(req, nil, copy_error(err)) end
end

-- Stop waiting for req: the peer hears notifications/cancelled, the transport
-- drops what it still carries for it. Never yields (runs from <close> handlers).
function Rpc:abandon(req, reason, err)
  if req.finished then return end
  self:finish(req, nil, err)
  if not self.dead then
    self:notify("notifications/cancelled", { requestId = req.id, reason = reason })
  end
  if self.transport.abandon then self.transport:abandon(req) end
end

local function describe(method, params)
  if method == "tools/call" and type(params) == "table" and type(params.name) == "string" then
    return "tools/call " .. params.name
  end
  return method
end

-- Send a request and wait for its answer: result | nil, err. Works in a task
-- (yields) and outside one (drives the loop). opts: timeout (s), on_progress
-- (function(progress, total, message): a progressToken is sent).
-- A task that ends while waiting (an error, coroutine.close) cancels the request.
function Rpc:request(method, params, opts)
  opts = opts or {}
  if self.dead then return nil, copy_error(self.dead) end
  self.next_id = self.next_id + 1
  local id = self.next_id
  local what = describe(method, params)
  local req = setmetatable({ id = id, method = method, what = what, finished = false,
    on_progress = opts.on_progress }, Pending)
  if opts.on_progress then
    params = params or {}
    local meta = type(params._meta) == "table" and params._meta or {}
    meta.progressToken = id
    params._meta = meta
    req.token = id
  end
  local text = json.encode { jsonrpc = "2.0", id = id, method = method, params = params }
  self.pending[id] = req
  if req.token then self.by_token[id] = req end
  -- Whatever ends the wait early (the task closed, an interrupt) cancels the request.
  local guard <close> = setmetatable({}, { __close = function()
    if not req.finished then self:abandon(req, "the caller stopped waiting") end
  end })
  local ok, serr = self.transport:send(text, req)
  if not ok then
    self:finish(req, nil, serr)
    return nil, serr
  end
  local timeout = opts.timeout
  local deadline = timeout and core.now() + timeout
  while not req.finished do
    local left = deadline and deadline - core.now()
    if left and left <= 0 then
      self:abandon(req, "timeout", M.error(self.name, "%s timed out after %s s%s", what,
        tostring(timeout), self:garbage_note()))
      break
    end
    sched.wait_transfer(req, left)
  end
  if req.error then return nil, req.error end
  return req.result
end

-- Send a notification (no answer). -> true | nil, err
function Rpc:notify(method, params)
  if self.dead then return nil, copy_error(self.dead) end
  return self.transport:send(json.encode { jsonrpc = "2.0", method = method, params = params })
end

local function respond(self, id, result, rerr)
  local msg = { jsonrpc = "2.0", id = id }
  if rerr then
    msg.error = { code = math.tointeger(rerr.code) or M.INTERNAL_ERROR, message = tostring(rerr.message) }
  else
    msg.result = result or {}
  end
  local ok, text = pcall(json.encode, msg)
  if not ok then
    text = json.encode { jsonrpc = "2.0", id = id, error = { code = M.INTERNAL_ERROR,
      message = "the answer cannot be sent as JSON" } }
  end
  if self.dead then return end
  local sok, serr = self.transport:send(text)
  if not sok then log.debug("mcp %s: cannot answer request %s: %s", self.name, tostring(id), tostring(serr)) end
end

-- The peer's request: answered from a task of its own (sampling calls a model).
local function handle_request(self, msg)
  local id, method, params = msg.id, msg.method, msg.params
  if method == "ping" then return respond(self, id, {}) end
  sched.spawn(function()
    if not self.on_request then
      return respond(self, id, nil, { code = M.METHOD_NOT_FOUND, message = "method not found: " .. method })
    end
    local ok, result, rerr = xpcall(self.on_request, traceback, method, params)
    if not ok then
      log.debug("mcp %s: answering %s failed: %s", self.name, method, tostring(result))
      return respond(self, id, nil, { code = M.INTERNAL_ERROR, message = "the client failed to answer " .. method })
    end
    if result == nil then
      return respond(self, id, nil, rerr or { code = M.INTERNAL_ERROR, message = "no answer" })
    end
    respond(self, id, result)
  end)
end

local function handle_progress(self, params)
  local req = type(params) == "table" and self.by_token[params.progressToken]
  if not req or req.finished or not req.on_progress then return end
  local message = params.message ~= null and params.message or nil
  local total = params.total ~= null and params.total or nil
  local ok, e = xpcall(req.on_progress, traceback, params.progress, total, message)
  if not ok then
    self:abandon(req, "the client's progress callback failed",
      core.error { kind = "callback", message = "on_progress failed: " .. tostring(e) })
  end
end

local function garbage(self, text, why)
  self.garbage = self.garbage + 1
  self.last_garbage = M.excerpt(text)
  log.debug("mcp %s: ignored %s: %s", self.name, why, self.last_garbage)
end

-- One decoded message (a table).
local function dispatch(self, msg, text)
  if type(msg) ~= "table" or msg.jsonrpc ~= "2.0" then
    return garbage(self, text, "a message that is not JSON-RPC 2.0")
  end
  local id, method = msg.id, msg.method
  if type(method) == "string" then
    if id ~= nil and id ~= null then return handle_request(self, msg) end
    if method == "notifications/progress" then return handle_progress(self, msg.params) end
    if self.on_notification then
      local ok, e = xpcall(self.on_notification, traceback, method, msg.params)
      if not ok then log.debug("mcp %s: handling %s failed: %s", self.name, method, tostring(e)) end
    end
    return
  end
  if id == nil then return garbage(self, text, "a message with neither method nor id") end
  local req = self.pending[id]
  if not req then
    if id == null and type(msg.error) == "table" then
      log.debug("mcp %s: error without id: %s", self.name, M.excerpt(tostring(msg.error.message)))
    else
      log.debug("mcp %s: ignored a response for unknown request id %s", self.name, M.excerpt(tostring(id)))
    end
    return
  end
  local e = msg.error
  if e ~= nil and e ~= null then
    local emsg = type(e) == "table" and e.message ~= null and e.message or e
    local code = type(e) == "table" and math.tointeger(e.code) or nil
    local err = M.error(self.name, "%s failed: %s%s", req.what, M.excerpt(tostring(emsg), 500),
      code and string.format(" (JSON-RPC error %d)", code) or "")
    err.code = code
    if type(e) == "table" and e.data ~= nil and e.data ~= null then err.data = e.data end
    return self:finish(req, nil, err)
  end
  local result = msg.result
  if type(result) ~= "table" then
    return self:finish(req, nil, M.error(self.name, "invalid JSON-RPC response to %s: %s", req.what,
      result == nil and "no result and no error" or "the result is not an object"))
  end
  self:finish(req, result)
end

-- Text from the transport: one JSON-RPC message or a batch (a JSON array).
function Rpc:receive(text)
  local msg, derr = json.decode(text)
  if msg == nil then return garbage(self, text, "bytes that are not JSON (" .. tostring(derr) .. ")") end
  if type(msg) == "table" and json.is_array(msg) then
    for _, m in ipairs(msg) do
      if type(m) ~= "table" then return garbage(self, text, "a JSON array that is not a batch of messages") end
    end
    for _, m in ipairs(msg) do dispatch(self, m, text) end
    return
  end
  dispatch(self, msg, text)
end

return M
