-- luachat.limits: the client option max_connections, the most transfers one
-- client has running to one host (scheme, host and port) at once. The rest
-- wait in a queue, in the order they asked, and start as running ones end.
--
-- Owns: per client and host, the running transfers and the queue. A slot is
-- held from core.start until the transfer is done (finished, or closed by its
-- owner): over HTTP/1.1 that is exactly the time curl keeps the connection in
-- use, so the bound is the number of connections; over HTTP/2 requests
-- multiplex on fewer connections and the bound caps the streams as well.
-- Never: starts a transfer out of order, or holds a slot for a transfer that
-- is done (checked at every turn of the loop: sched.watch).
local core = require "luachat.core"
local sched = require "luachat.sched"

local M = {}

local gates = setmetatable({}, { __mode = "k" }) -- client -> { hostkey -> host }

local DEFAULT_PORTS = { http = 80, https = 443 }

-- "scheme://host:port" of a URL: what curl keys its connections on (userinfo dropped).
local function host_key(url)
  local scheme, authority = tostring(url):match("^(%a[%w+.-]*)://([^/?#]*)")
  if not scheme then return tostring(url) end
  scheme = scheme:lower()
  authority = authority:gsub("^.*@", ""):lower()
  local host, port = authority:match("^(%[.*%]):?(%d*)$")
  if not host then host, port = authority:match("^([^:]*):?(%d*)$") end
  port = tonumber(port) or DEFAULT_PORTS[scheme] or 0
  return string.format("%s://%s:%d", scheme, host or authority, port)
end
M.host_key = host_key

local Host = {}
Host.__index = Host

local function new_host(max)
  local h = setmetatable({ max = max, active = {}, reserved = 0, queue = {}, head = 1, tail = 0 }, Host)
  h.check = function() h:grant() end
  return h
end

-- Forget running transfers that are done; returns how many still run.
function Host:prune()
  local keep = {}
  for _, t in ipairs(self.active) do
    if not t:done() then keep[#keep + 1] = t end
  end
  self.active = keep
  return #keep
end

-- Hand free slots to the waiters at the head of the queue (skipping those that
-- gave up); stop watching once the queue is empty.
function Host:grant()
  local free = self.max - self:prune() - self.reserved
  while free > 0 and self.head <= self.tail do
    local w = self.queue[self.head]
    self.queue[self.head] = nil
    self.head = self.head + 1
    if not w.cancelled and not (w.co and coroutine.status(w.co) == "dead") then
      w.granted = true
      self.reserved = self.reserved + 1
      free = free - 1
      if w.co then sched.wake_task(w.co) end
    end
  end
  if self.head > self.tail then
    self.head, self.tail = 1, 0
    sched.unwatch(self.check)
  end
end

-- Start the transfer in a slot held (reserved = true: granted from the queue).
function Host:start(spec, reserved)
  if reserved then self.reserved = self.reserved - 1 end
  local t, err = core.start(spec)
  if not t then
    self:grant() -- the slot is free again
    return nil, err
  end
  self.active[#self.active + 1] = t
  return t
end

local waiting_mt = { __close = function(g)
  local w = g.w
  if w.taken then return end
  w.cancelled = true
  if w.granted then
    w.taken = true
    g.host.reserved = g.host.reserved - 1
    g.host:grant()
  end
end }

-- Wait for a slot in the queue: yields in a task, drives the loop outside.
function Host:wait()
  local task = sched.current()
  local w = { co = task and task.co, granted = false }
  self.tail = self.tail + 1
  self.queue[self.tail] = w
  sched.watch(self.check)
  if task then
    -- Closed while it waits (Task:cancel): leave the queue, and pass on a slot
    -- already handed to it.
    local guard <close> = setmetatable({ w = w, host = self }, waiting_mt)
    while not w.granted do coroutine.yield() end
    w.taken = true
    return
  end
  local ok, err = pcall(sched.wait_until, function() return w.granted end, "a connection slot")
  if not ok then
    w.cancelled = true
    if w.granted then
      self.reserved = self.reserved - 1
      self:grant()
    end
    error(err, 0)
  end
end

-- What request.transfer_spec puts in spec.limits: the client's record when it
-- has max_connections, else nil (then nothing here runs for its requests).
function M.of(client)
  if not client.max_connections then return nil end
  local g = gates[client]
  if not g then
    g = { client = client, hosts = {} }
    gates[client] = g
  end
  return g
end

-- Start spec's transfer, queueing behind earlier requests of the same client
-- to the same host while max_connections of them run. -> transfer | nil, err
function M.start(spec)
  local g = spec.limits
  local max = g and g.client.max_connections
  if not max then return core.start(spec) end
  local key = host_key(spec.url)
  local h = g.hosts[key]
  if not h then
    h = new_host(max)
    g.hosts[key] = h
  end
  h.max = max -- a script may change c.max_connections; the next grant uses it
  if h.head > h.tail and h:prune() + h.reserved < h.max then
    return h:start(spec, false)
  end
  h:wait()
  return h:start(spec, true)
end

-- For specs: { running =, queued = } of a client's host (URL or key).
function M.stats(client, url)
  local h = gates[client] and gates[client].hosts[host_key(url)]
  if not h then return { running = 0, queued = 0 } end
  local queued = 0
  for i = h.head, h.tail do
    if not h.queue[i].cancelled then queued = queued + 1 end
  end
  return { running = h:prune(), queued = queued }
end

return M
