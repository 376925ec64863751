-- luachat.sched: tasks (coroutines) over the one curl multi loop.
--
-- Owns: the task table, who waits on which transfer, timers, and driving
-- core.poll. Inside a task, waiting is coroutine.yield; anywhere else (the
-- main chunk, a coroutine that is not a task) waiting drives the loop until
-- the thing waited for is ready, resuming other tasks meanwhile. One call
-- works both ways.
-- Never: yields across a C call, or loses a task's error.
local core = require "luachat.core"
local options = require "luachat.options"

local M = {}

local unpack = table.unpack
local now = core.now

local tasks = setmetatable({}, { __mode = "k" })   -- coroutine -> task
local waiters = {}                                 -- transfer -> coroutine waiting on it
local flagged = setmetatable({}, { __mode = "k" }) -- transfer -> true: ready, nobody was waiting
local timers = {}                                  -- { at=, co= | fired= }, unsorted
local runq = {}                                    -- tasks to resume, with their resume values
local live_tasks = 0

local Task = {}
Task.__index = Task
Task.__name = "luachat.Task"

local function task_error(message)
  return core.error { kind = "task", message = message }
end

-- The running task, or nil when the caller is not inside one.
function M.current()
  local co = coroutine.running()
  local t = tasks[co]
  if t and not t.done then return t end
  return nil
end

-- The text of a task's error value. Whatever the value does (a __tostring that
-- raises, yields or returns no string), the failure stays in its task: this
-- never raises or yields (tostring runs in a coroutine of its own).
local function error_text(e)
  if type(e) == "string" then return e end
  local co = coroutine.create(tostring)
  local ok, s = coroutine.resume(co, e)
  if ok and coroutine.status(co) == "dead" and type(s) == "string" then return s end
  return string.format("(a %s error value whose __tostring failed)", type(e))
end

local function finish(task, ok, ...)
  local co = task.co
  task.done = true
  live_tasks = live_tasks - 1
  if ok then
    task.results = table.pack(...)
  else
    local e = ...
    if type(e) == "table" and getmetatable(e) and type(rawget(e, "kind")) == "string" then
      task.err = e -- a luachat error raised as is: keep its kind
    else
      task.err = task_error(debug.traceback(co, error_text(e)))
    end
    coroutine.close(co) -- runs its pending <close> variables
  end
  for _, w in ipairs(task.waiters) do
    runq[#runq + 1] = { w, n = 1 }
  end
  task.waiters = {}
end

-- Resume a task's coroutine; notice when it ends.
local function resume(co, ...)
  local task = tasks[co]
  if coroutine.status(co) ~= "suspended" then
    -- Not ours to resume now (it is running further up this stack): retry later.
    runq[#runq + 1] = table.pack(co, ...)
    return
  end
  if task then
    local function settle(ok, ...)
      if coroutine.status(co) == "dead" then finish(task, ok, ...) end
    end
    settle(coroutine.resume(co, ...))
  else
    local ok, err = coroutine.resume(co, ...)
    if not ok then error(err, 0) end
  end
end

local function run_queue()
  local progressed = true
  while #runq > 0 and progressed do
    local q = runq
    runq = {}
    progressed = false
    for _, item in ipairs(q) do
      local co = item[1]
      local status = coroutine.status(co)
      if status == "suspended" then
        progressed = true
        resume(co, unpack(item, 2, item.n))
      elseif status ~= "dead" then
        runq[#runq + 1] = item -- running further up this stack: later
      end
    end
  end
end

local function fire_timers()
  if #timers == 0 then return end
  local t = now()
  local keep = {}
  local due = {}
  for _, tm in ipairs(timers) do
    if tm.fired then
      -- cancelled
    elseif tm.at <= t then
      due[#due + 1] = tm
    else
      keep[#keep + 1] = tm
    end
  end
  timers = keep
  table.sort(due, function(a, b) return a.at < b.at end)
  for _, tm in ipairs(due) do
    tm.fired = true
    if tm.on_fire then tm.on_fire() end
    if tm.co then resume(tm.co, false) end
  end
end

local function next_timer_in()
  local soonest
  for _, tm in ipairs(timers) do
    if not tm.fired and (not soonest or tm.at < soonest) then soonest = tm.at end
  end
  if soonest then return math.max(0, soonest - now()) end
  return nil
end

local function dispatch(list)
  for i = 1, #list do
    local tr = list[i]
    local co = waiters[tr]
    if co then
      waiters[tr] = nil
      resume(co, true)
    else
      flagged[tr] = true
    end
  end
end

local driving = 0

-- One turn of the loop: poll (waiting at most `timeout` s), then wake what is ready.
local function turn(timeout)
  run_queue()
  if #runq > 0 then timeout = 0 end
  local tn = next_timer_in()
  if tn and tn < timeout then timeout = tn end
  local list, err = core.poll(timeout)
  if not list then error(err, 0) end
  dispatch(list)
  fire_timers()
  run_queue()
end

-- Drive the loop from outside any task until cond() holds.
local function drive(cond, what)
  driving = driving + 1
  local ok, err = pcall(function()
    while not cond() do
      if core.live() == 0 and #timers == 0 and #runq == 0 then
        run_queue()
        if cond() then return end
        error("luachat: deadlock: waiting for " .. what .. " with nothing left to run", 0)
      end
      turn(1)
    end
  end)
  driving = driving - 1
  if not ok then error(err, 0) end
end

-- Wait until transfer `tr` has new events or is done, or `timeout` seconds pass.
-- Returns true when it is ready, false on timeout.
function M.wait_transfer(tr, timeout)
  if flagged[tr] then
    flagged[tr] = nil
    return true
  end
  if tr:done() then return true end
  local task = M.current()
  if task then
    local co = task.co
    local timer
    if timeout then
      timer = { at = now() + timeout, on_fire = function()
        if waiters[tr] == co then waiters[tr] = nil end
      end, co = co }
      timers[#timers + 1] = timer
    end
    waiters[tr] = co
    local ready = coroutine.yield()
    if timer then timer.fired = true end
    if waiters[tr] == co then waiters[tr] = nil end
    return ready and true or false
  end
  local deadline = timeout and now() + timeout
  drive(function()
    if flagged[tr] then return true end
    return deadline ~= nil and now() >= deadline
  end, "a transfer")
  if flagged[tr] then
    flagged[tr] = nil
    return true
  end
  return tr:done()
end

-- Mark `obj` ready, as core.poll does for a transfer, for objects that Lua code
-- completes (an MCP request's answer, luachat.mcp_rpc): the task waiting on it
-- with wait_transfer resumes in this turn's run queue, or the next wait returns
-- at once. obj needs :done() like a transfer.
function M.wake(obj)
  local co = waiters[obj]
  if co then
    waiters[obj] = nil
    runq[#runq + 1] = { co, true, n = 2 }
  else
    flagged[obj] = true
  end
end

-- Sleep `seconds`: yields inside a task, drives the loop (other tasks go on) outside.
-- A NaN or infinite time never comes (now() >= NaN is never true): refused.
function M.sleep(seconds)
  seconds = tonumber(seconds) or error("bad argument #1 to 'sleep' (number expected)", 2)
  if seconds ~= seconds or seconds == math.huge or seconds == -math.huge then
    error("bad argument #1 to 'sleep' (a finite number of seconds expected, got " .. options.number_text(seconds) .. ")", 2)
  end
  local task = M.current()
  if task then
    timers[#timers + 1] = { at = now() + seconds, co = task.co }
    coroutine.yield()
    return
  end
  local deadline = now() + seconds
  timers[#timers + 1] = { at = deadline } -- keeps drive() from calling it a deadlock
  drive(function() return now() >= deadline end, "sleep")
end

-- Start fn(...) as a task at once; it runs until its first wait.
function M.spawn(fn, ...)
  if type(fn) ~= "function" then
    error("bad argument #1 to 'spawn' (function expected, got " .. type(fn) .. ")", 2)
  end
  local co = coroutine.create(fn)
  local task = setmetatable({ co = co, done = false, waiters = {} }, Task)
  tasks[co] = task
  live_tasks = live_tasks + 1
  resume(co, ...)
  return task
end

-- The task's results, or nil, err if it raised. Yields in a task, drives outside.
function Task:wait()
  if not self.done then
    local me = M.current()
    if me == self then error("a task cannot wait for itself", 2) end
    if me then
      self.waiters[#self.waiters + 1] = me.co
      while not self.done do coroutine.yield() end
    else
      drive(function() return self.done end, "a task")
    end
  end
  if self.err then return nil, self.err end
  return unpack(self.results, 1, self.results.n)
end

function Task:is_done()
  return self.done
end

-- Cancel a task that waits: its pending <close> variables run (so what it was
-- waiting for is given up: an MCP request sends notifications/cancelled), and
-- it ends with a "cancelled" error, which its waiters get. -> true, or false
-- when it had already finished. A running task (the caller) cannot be cancelled.
function Task:cancel()
  if self.done then return false end
  if coroutine.status(self.co) ~= "suspended" then error("a running task cannot be cancelled", 2) end
  coroutine.close(self.co)
  finish(self, false, core.error { kind = "cancelled", message = "the task was cancelled" })
  return true
end

-- Wait for every task: { {res, err}, ... } in the order given.
function M.gather(list)
  if type(list) ~= "table" then
    error("bad argument #1 to 'gather' (list of tasks expected, got " .. type(list) .. ")", 2)
  end
  for i, task in ipairs(list) do
    if getmetatable(task) ~= Task then
      error(string.format("bad argument #1 to 'gather' (list of tasks expected, item %d is a %s)", i, type(task)), 2)
    end
  end
  local out = {}
  for i, task in ipairs(list) do
    local res, err = task:wait()
    out[i] = { res, err }
  end
  return out
end

-- One non-blocking (or bounded) step for external loops: poll once, resume
-- what is ready. Returns how much is pending (transfers + timers + tasks).
function M.step(timeout)
  if M.current() or driving > 0 then
    return nil, core.error { kind = "environment", message = "luachat.step: the loop is already running" }
  end
  local seconds = tonumber(timeout) or 0
  if seconds ~= seconds or math.abs(seconds) == math.huge then
    error("bad argument #1 to 'step' (a finite number of seconds expected, got " .. options.number_text(seconds) .. ")", 2)
  end
  turn(seconds)
  return core.live() + #timers + #runq
end

-- Seconds until the loop needs a step (curl's timer, idle deadlines, task
-- timers, runnable tasks), or nil when nothing is pending. For external loops.
function M.next_timeout()
  if #runq > 0 then return 0 end
  local t = core.next_timeout()
  local tn = next_timer_in()
  if tn and (not t or tn < t) then t = tn end
  return t
end

-- Drive until every task has finished.
function M.run()
  drive(function() return live_tasks == 0 end, "tasks")
end

function M.live_tasks()
  return live_tasks
end

return M
