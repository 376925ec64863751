-- luachat.mcp_http: MCP's Streamable HTTP transport over the engine's curl loop.
--
-- Owns: one POST per message (Accept: JSON or SSE), reading each answer (a JSON
-- body or an SSE stream of messages) in a task of its own and handing every
-- message to luachat.mcp_rpc, the Mcp-Session-Id and MCP-Protocol-Version
-- headers, the optional GET stream for server messages, DELETE on close.
-- Never: blocks the loop, yields in send (mcp_rpc's rule), puts a header value
-- or a URL's query or userinfo in a message (luachat.redact.url).
local core = require "luachat.core"
local sched = require "luachat.sched"
local log = require "luachat.log"
local request = require "luachat.request"
local redact = require "luachat.redact"
local rpc_mod = require "luachat.mcp_rpc"

local M = {}

local T = {}
T.__index = T
T.__name = "luachat.McpHttp"

-- M.new{ name=, url=, headers = {Name = value}, timeout = s, ca_file = }
function M.new(opts)
  return setmetatable({
    name = opts.name, url = opts.url, headers = opts.headers or {}, timeout = opts.timeout,
    ca_file = opts.ca_file, session_id = nil, protocol_version = nil,
    posts = {}, -- req -> the transfer carrying it
    notes = {}, -- the tasks reading notification POSTs still in flight (see flush)
    closed = false,
  }, T)
end

function T:attach(rpc) self.rpc = rpc end

function T:where(method)
  return (method or "POST") .. " " .. redact.url(self.url)
end

function T:header_lines(accept, has_body)
  local h = { "Accept: " .. accept, "User-Agent: luachat/" .. core.version .. " (MCP)" }
  if has_body then h[#h + 1] = "Content-Type: application/json" end
  if self.session_id then h[#h + 1] = "Mcp-Session-Id: " .. self.session_id end
  if self.protocol_version then h[#h + 1] = "MCP-Protocol-Version: " .. self.protocol_version end
  local names = {}
  for k in pairs(self.headers) do names[#names + 1] = k end
  table.sort(names)
  for _, k in ipairs(names) do h[#h + 1] = k .. ": " .. tostring(self.headers[k]) end
  return h
end

-- An HTTP outcome that is not a success, as an mcp error (nil when it is one).
function T:outcome_error(r, method)
  if r.failure then
    if r.failure == "cancelled" then return nil end
    return rpc_mod.error(self.name, "%s: %s", self:where(method), tostring(r.message or r.failure))
  end
  if r.status >= 200 and r.status < 300 then return nil end
  local detail = ""
  local doc = type(r.body) == "string" and r.body ~= "" and require("luachat.json").decode(r.body)
  if type(doc) == "table" and type(doc.error) == "table" and type(doc.error.message) == "string" then
    detail = ": " .. rpc_mod.excerpt(doc.error.message, 300)
  elseif type(r.body) == "string" and r.body ~= "" then
    detail = ": " .. rpc_mod.excerpt(r.body, 200)
  end
  local err = rpc_mod.error(self.name, "%s: HTTP %d%s%s", self:where(method), r.status, detail,
    (r.status == 404 and self.session_id) and " (the server ended the session)" or "")
  err.status = r.status
  return err
end

-- Read one transfer to its end: every message to the rpc. Runs as a task.
local function pump(self, t, req, method)
  local function deliver(ev)
    if type(ev) == "table" then
      if ev.event ~= "message" then return end -- MCP sends messages only
      ev = ev.data
    end
    if ev ~= "" then self.rpc:receive(ev) end
  end
  while true do
    if not self.session_id then
      -- Kept before any message is handed on: the caller sends the next one at once.
      local sid = t:result().mcp_session_id
      if sid then self.session_id = sid end
    end
    local evs = t:take()
    if evs then
      for _, ev in ipairs(evs) do deliver(ev) end
    elseif t:done() then
      break
    else
      sched.wait_transfer(t)
    end
  end
  local r = t:result()
  t:close()
  if req then self.posts[req] = nil else self.notes[sched.current()] = nil end
  if r.mcp_session_id and not self.session_id then self.session_id = r.mcp_session_id end
  log.debug("mcp %s: %s -> %s in %.3fs", self.name, self:where(method), r.failure or r.status, r.seconds)
  local err = self:outcome_error(r, method)
  if not err and not r.sse and type(r.body) == "string" and r.body:find("%S") then
    self.rpc:receive(r.body)
  end
  if req and not req.finished and not err and r.status == 202 and self.get and not self.get:done() then
    return -- accepted: the answer comes on the GET stream
  end
  if req and not req.finished then
    self.rpc:finish(req, nil, err or rpc_mod.error(self.name, "%s: the server answered without a response to %s",
      self:where(method), req.what))
  elseif err and not req then
    -- A notification or an answer the server refused: nobody waits for it.
    self.lost = (self.lost or 0) + 1
    log.debug("mcp %s: %s", self.name, err.message)
  end
end

-- Start one POST carrying `text`; its answer is read by a task. Never yields.
function T:send(text, req)
  if self.closed then return nil, rpc_mod.error(self.name, "the session is closed") end
  local t, err = core.start {
    method = "POST", url = self.url, headers = self:header_lines("application/json, text/event-stream", true),
    body = text, stream = true, connect_timeout = 10,
    -- The request's own timeout is the rpc's; this only bounds a POST nobody waits for.
    timeout = req == nil and (self.timeout or 60) or nil,
    ca_file = self.ca_file,
  }
  if not t then
    return nil, rpc_mod.error(self.name, "%s: %s", self:where(), tostring(err and err.message or err))
  end
  if req then self.posts[req] = t end
  local task = sched.spawn(pump, self, t, req, "POST")
  if not req and not task:is_done() then self.notes[task] = true end
  return true
end

-- Wait until every notification POST sent so far has its answer. Separate POSTs
-- may reach the server in any order, so connect waits here after
-- notifications/initialized: no request may overtake it.
function T:flush()
  for task in pairs(self.notes) do
    task:wait()
    self.notes[task] = nil
  end
end

-- The request was abandoned (timeout, cancelled): stop its POST.
function T:abandon(req)
  local t = self.posts[req]
  if t then
    self.posts[req] = nil
    t:cancel()
    sched.wake(t) -- a cancelled transfer is never reported ready: its reader must hear it
  end
end

-- The GET stream for messages the server sends on its own (opt-in: it keeps a
-- task and a transfer open until close). A 405 means the server offers none.
function T:listen()
  local t = core.start { method = "GET", url = self.url, headers = self:header_lines("text/event-stream", false),
    stream = true, connect_timeout = 10, ca_file = self.ca_file }
  if not t then return end
  self.get = t
  sched.spawn(pump, self, t, nil, "GET")
end

-- End the session: DELETE with the session id (a 405 is fine), waiting at most
-- `wait` seconds; the GET stream and every POST are stopped.
function T:close(wait)
  if self.closed then return end
  self.closed = true
  if self.get then
    self.get:cancel()
    sched.wake(self.get)
  end
  for req, t in pairs(self.posts) do
    self.posts[req] = nil
    t:cancel()
    sched.wake(t)
  end
  if self.session_id and wait then
    local t = core.start { method = "DELETE", url = self.url, headers = self:header_lines("application/json", false),
      connect_timeout = 5, timeout = wait, ca_file = self.ca_file }
    if t then
      local r = request.wait_result(t)
      log.debug("mcp %s: %s -> %s", self.name, self:where("DELETE"), r.failure or r.status)
    end
  end
end

return M
