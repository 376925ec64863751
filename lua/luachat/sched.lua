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
local one_line = require("luachat.util").one_line -- util requires only options: no cycle

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

-- A task that failed and whose error nobody retrieved (wait, gather) is not
-- silent: when it is collected (at the latest when the Lua state closes, as
-- the host does at exit), one line goes to stderr, like Python asyncio's
-- "Task exception was never retrieved". Cancelled tasks are not reported:
-- whoever cancelled them knows. M.on_unretrieved(err) replaces the line.
function M.on_unretrieved(err)
  io.stderr:write("luachat: a task failed and nobody waited for it: ", one_line(err.message), "\n")
end
function Task:__gc()
  local err = rawget(self, "err")
  if err == nil or rawget(self, "retrieved") or err.kind == "cancelled" then return end
  self.retrieved = true
  pcall(M.on_unretrieved, err) -- a finalizer never raises
end

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
      -- err.message (and tostring(err)) is one line; the stack is err.traceback.
      local text = error_text(e)
      task.err = task_error(one_line(text))
      task.err.traceback = debug.traceback(co, text)
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

-- Timers of tasks that ended without them (Task:cancel of a sleeping task)
-- wait for nothing: dropped, so they neither bound a wait nor count as pending.
local function waits_for_nothing(tm)
  return tm.fired or (tm.co ~= nil and coroutine.status(tm.co) == "dead")
end
local function drop_dead_timers()
  for i = 1, #timers do
    if waits_for_nothing(timers[i]) then -- copy only when there is something to drop
      local keep = {}
      for _, tm in ipairs(timers) do
        if not waits_for_nothing(tm) then keep[#keep + 1] = tm end
      end
      timers = keep
      return
    end
  end
end

local function next_timer_in()
  drop_dead_timers()
  local soonest
  for _, tm in ipairs(timers) do
    if not soonest or tm.at < soonest then soonest = tm.at end
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

-- Checks run at every turn of the loop (and when an external loop asks for
-- next_timeout): fn() wakes what became ready without an event of its own,
-- such as a connection slot freed by a transfer the program closed
-- (luachat.limits). A check stays while it is registered (M.watch/M.unwatch).
local checks = {}
local function run_checks()
  if next(checks) == nil then return end
  for fn in pairs(checks) do fn() end
end
function M.watch(fn) checks[fn] = true end
function M.unwatch(fn) checks[fn] = nil end

-- Make task coroutine co (waiting for something a check saw) runnable.
function M.wake_task(co)
  runq[#runq + 1] = { co, n = 1 }
end

-- One turn of the loop: poll (waiting at most `timeout` s), then wake what is ready.
local function turn(timeout)
  run_checks()
  run_queue()
  if #runq > 0 then timeout = 0 end
  local tn = next_timer_in()
  if tn and tn < timeout then timeout = tn end
  local list, err = core.poll(timeout)
  if not list then error(err, 0) end
  dispatch(list)
  fire_timers()
  run_checks()
  run_queue()
end

-- Drive the loop from outside any task until cond() holds.
local function drive(cond, what)
  driving = driving + 1
  local ok, err = pcall(function()
    while not cond() do
      if core.live() == 0 and #runq == 0 then drop_dead_timers() end
      if core.live() == 0 and #timers == 0 and #runq == 0 then
        run_checks() -- may wake a task, which may start a transfer
        run_queue()
        if cond() then return end
        if core.live() == 0 and #timers == 0 and #runq == 0 then
          error("luachat: deadlock: waiting for " .. what .. " with nothing left to run", 0)
        end
      end
      turn(1)
    end
  end)
  driving = driving - 1
  if not ok then error(err, 0) end
end

-- Outside a task: drive the loop until cond() holds (what: for the deadlock
-- message). In a task, wait by yielding until M.wake_task instead.
function M.wait_until(cond, what)
  drive(cond, what)
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
  if self.err then
    self.retrieved = true
    return nil, self.err
  end
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

-- Semaphores: at most n holders at once; the rest wait in order (FIFO). A
-- freed permit goes straight to the first waiter still waiting, so a late
-- acquire never overtakes the queue. Waiters that gave up (timeout, error) or
-- whose task died are skipped, never handed a permit.
local Semaphore = {}
Semaphore.__index = Semaphore
Semaphore.__name = "luachat.Semaphore"

local Permit = {}
Permit.__index = Permit
Permit.__name = "luachat.Permit"

local function check_count(fname, n)
  local i = math.type(n) and math.tointeger(n)
  if not i or i < 1 then
    error(string.format("bad argument #1 to '%s' (an integer of at least 1 expected, got %s)", fname,
      type(n) == "number" and options.number_text(n) or type(n)), 3)
  end
  return i
end

-- luachat.semaphore(n) -> a semaphore with n permits.
function M.semaphore(n)
  n = check_count("semaphore", n)
  return setmetatable({ n = n, free = n, out = 0, queue = {}, head = 1, tail = 0 }, Semaphore)
end

-- Hand one permit to the first live waiter, or back to the pool.
local function give(sem)
  local q = sem.queue
  while sem.head <= sem.tail do
    local w = q[sem.head]
    q[sem.head] = nil
    sem.head = sem.head + 1
    if not w.cancelled and not (w.co and coroutine.status(w.co) == "dead") then
      w.granted = true
      if w.co then runq[#runq + 1] = { w.co, n = 1 } end
      return
    end
  end
  sem.head, sem.tail = 1, 0
  sem.free = sem.free + 1
end

-- The <close> guard of a waiting task: unless it took its permit, it leaves the
-- queue, and a permit already handed to it goes to the next waiter.
local waiting_mt = { __close = function(g)
  local w = g.w
  if w.taken then return end
  w.cancelled = true
  if w.granted then
    w.taken = true
    give(g.sem)
  end
end }

local function new_permit(sem)
  return setmetatable({ sem = sem }, Permit)
end

-- permit:release(): gives the permit back; later calls do nothing.
function Permit:release()
  local sem = rawget(self, "sem")
  if sem then
    self.sem = nil
    sem.out = sem.out - 1
    give(sem)
  end
end
-- `local p <close> = sem:acquire()`: released when the scope ends, by an error
-- too, and when a task that failed is closed (its pending <close> variables run).
Permit.__close = Permit.release

-- sem:acquire([timeout]) -> permit | nil, err (kind "timeout").
-- Yields in a task, drives the loop outside one; waits in order of arrival.
function Semaphore:acquire(timeout)
  if getmetatable(self) ~= Semaphore then error("bad self to 'acquire' (luachat.Semaphore expected)", 2) end
  if timeout ~= nil then
    local t = tonumber(timeout)
    if not t or t ~= t or t < 0 or t == math.huge then
      error("bad argument #1 to 'acquire' (a finite number of seconds expected, got "
        .. (type(timeout) == "number" and options.number_text(timeout) or type(timeout)) .. ")", 2)
    end
    timeout = t
  end
  if self.free > 0 and self.head > self.tail then
    self.free = self.free - 1
    self.out = self.out + 1
    return new_permit(self)
  end
  local task = M.current()
  local w = { co = task and task.co, granted = false }
  self.tail = self.tail + 1
  self.queue[self.tail] = w
  if task then
    -- Closed while it waits (Task:cancel): leave the queue, and pass on a
    -- permit already handed to it.
    local guard <close> = setmetatable({ w = w, sem = self }, waiting_mt)
    local timer
    if timeout then
      timer = { at = now() + timeout, co = task.co }
      timers[#timers + 1] = timer
    end
    while not w.granted and not (timer and timer.fired) do coroutine.yield() end
    if timer then timer.fired = true end
    if w.granted then
      w.taken = true
      self.out = self.out + 1
      return new_permit(self)
    end
  else
    local deadline = timeout and now() + timeout
    if deadline then timers[#timers + 1] = { at = deadline } end -- keeps drive() from calling it a deadlock
    local ok, err = pcall(drive, function() return w.granted or (deadline ~= nil and now() >= deadline) end,
      "a semaphore permit")
    if not ok then
      w.cancelled = true
      if w.granted then give(self) end
      error(err, 0)
    end
  end
  if w.granted then
    self.out = self.out + 1
    return new_permit(self)
  end
  w.cancelled = true -- skipped when its turn comes
  return nil, core.error { kind = "timeout",
    message = string.format("semaphore: no permit free within %s s (all %d held)", options.number_text(timeout), self.n) }
end

-- sem:release([permit]): gives a permit back (permit:release()); without one,
-- gives back one permit acquired earlier (an error when none is held).
function Semaphore:release(permit)
  if getmetatable(self) ~= Semaphore then error("bad self to 'release' (luachat.Semaphore expected)", 2) end
  if permit ~= nil then
    if getmetatable(permit) ~= Permit or (rawget(permit, "sem") ~= nil and rawget(permit, "sem") ~= self) then
      error("bad argument #1 to 'release' (a permit of this semaphore expected)", 2)
    end
    return permit:release()
  end
  if self.out <= 0 then error("luachat.semaphore: release without a permit held", 2) end
  self.out = self.out - 1
  give(self)
end

-- sem:with(fn, ...) -> fn(...)'s results, holding a permit meanwhile (released
-- when fn returns or raises).
function Semaphore:with(fn, ...)
  local p <close> = assert(self:acquire())
  return fn(...)
end

-- Free permits now, and tasks or callers waiting for one.
function Semaphore:available() return self.free end
function Semaphore:waiting()
  local n = 0
  for i = self.head, self.tail do
    local w = self.queue[i]
    if not w.cancelled and not (w.co and coroutine.status(w.co) == "dead") then n = n + 1 end
  end
  return n
end

function Semaphore:__tostring()
  return string.format("luachat.Semaphore (%d of %d free, %d waiting)", self.free, self.n, self:waiting())
end

-- gather(list [, { concurrency = n }]): wait for every item: { {res, err}, ... }
-- in the order given. Items are tasks (already running) or functions, which
-- gather spawns as tasks in list order; with `concurrency`, at most n of the
-- functions run at once (the next starts when one ends). Tasks given already
-- running are not counted: they run regardless.
function M.gather(list, opts)
  if type(list) ~= "table" then
    error("bad argument #1 to 'gather' (list of tasks expected, got " .. type(list) .. ")", 2)
  end
  for i, item in ipairs(list) do
    if getmetatable(item) ~= Task and type(item) ~= "function" then
      error(string.format("bad argument #1 to 'gather' (list of tasks expected, item %d is a %s)", i, type(item)), 2)
    end
  end
  local sem
  if opts ~= nil then
    if type(opts) ~= "table" then
      error("bad argument #2 to 'gather' (options table expected, got " .. type(opts) .. ")", 2)
    end
    options.check("gather", opts, { concurrency = options.integer(1) }, 2, 2)
    if opts.concurrency then sem = M.semaphore(opts.concurrency) end
  end
  local started = {}
  for i, item in ipairs(list) do
    if type(item) == "function" then
      if sem then
        local permit = sem:acquire()
        started[i] = M.spawn(function()
          local p <close> = permit
          return item()
        end)
      else
        started[i] = M.spawn(item)
      end
    else
      started[i] = item
    end
  end
  local out = {}
  for i, task in ipairs(started) do
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
  run_checks()
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
