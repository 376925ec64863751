-- luachat.luv: drive luachat from a running libuv loop (luv, as in Neovim and
-- Luvit): `local detach = luachat.luv(uv)`.
--
-- Owns: the adapter's libuv handles, nothing else. It watches what luachat
-- waits on and nothing more (STYLE.md 4): the engine's one descriptor,
-- core.fd() (the epoll set, readable when a step has work), and the deadline
-- of sched.next_timeout() (curl's timer, task sleeps, runnable tasks). On every
-- wake-up it takes one sched.step(0), as an application's own poll loop does
-- (docs/EMBEDDING.md).
-- Never: raises inside a libuv callback (luv's default handler calls exit()),
-- blocks the loop, or keeps handles after detach().
local sched = require "luachat.sched"
local core = require "luachat.core"

local M = {}

local attached -- the detach function of the adapter in use, or nil

-- Milliseconds for a uv timer from seconds (nil: no deadline).
local function ms(seconds)
  if seconds == nil then return nil end
  if seconds <= 0 then return 0 end
  return math.ceil(seconds * 1000)
end

-- luachat.luv(uv [, opts]) -> detach
-- opts.on_error(err): called (under pcall) when the loop itself fails (not a
-- task: a task's error stays in its task); the default writes it to stderr.
-- Either way the adapter then detaches and calls uv.stop(), and detach()
-- returns nil, err.
function M.attach(uv, opts)
  if type(uv) ~= "table" or type(uv.new_timer) ~= "function" or type(uv.new_poll) ~= "function" then
    error("bad argument #1 to 'luv' (the luv module expected, got " .. type(uv) .. ")", 2)
  end
  opts = opts or {}
  if type(opts) ~= "table" then error("bad argument #2 to 'luv' (options table expected, got " .. type(opts) .. ")", 2) end
  for k in pairs(opts) do
    if k ~= "on_error" then error("bad argument #2 to 'luv' (unknown field '" .. tostring(k) .. "': on_error)", 2) end
  end
  if opts.on_error ~= nil and type(opts.on_error) ~= "function" then
    error("bad argument #2 to 'luv' (field 'on_error' must be a function)", 2)
  end
  if attached then error("luachat.luv: already attached to a loop (call its detach first)", 2) end

  local timer = uv.new_timer()
  local prepare = uv.new_prepare()
  local poll = uv.new_poll(core.fd())
  local stopped_err
  local detach

  local function fail(err)
    stopped_err = stopped_err or err
    local handler = opts.on_error or function(e) io.stderr:write("luachat.luv: ", tostring(e), "\n") end
    pcall(handler, err)
    detach()
    pcall(uv.stop)
  end

  -- One step of luachat; every error is the loop's (tasks keep their own).
  local function step()
    if not attached then return end
    local ok, pending, err = pcall(sched.step, 0)
    if not ok then return fail(pending) end
    if pending == nil then return fail(err) end
  end

  local function on_ready(err)
    if err then return fail(core.error { kind = "network", message = "luachat.luv: poll: " .. tostring(err) }) end
    step()
  end

  local armed_at -- the deadline (uv.now() ms) the timer is set for, or nil
  -- Before libuv blocks: watch what luachat waits on, until its next deadline
  -- (tasks spawned from the application's own callbacks set one).
  local function rearm()
    if not attached then return end
    local ok, err = pcall(function()
      local wait = ms(sched.next_timeout())
      if wait == nil then
        if armed_at then timer:stop() armed_at = nil end
        return
      end
      local at = uv.now() + wait
      if armed_at ~= at then
        timer:stop()
        timer:start(wait, 0, function()
          armed_at = nil
          step()
        end)
        armed_at = at
      end
    end)
    if not ok then fail(err) end
  end

  local handles = { poll, timer, prepare }
  poll:start("r", on_ready)
  -- The prepare handle, active until detach(), also keeps uv.run() running
  -- while luachat is idle: tasks may be spawned from any later callback.
  prepare:start(rearm)

  detach = function()
    if attached == detach then
      attached = nil
      for _, h in ipairs(handles) do
        if not h:is_closing() then h:close() end
      end
    end
    if stopped_err then return nil, stopped_err end
    return true
  end
  attached = detach
  rearm()
  return detach
end

return M
