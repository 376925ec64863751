-- Child processes on the loop (issue 17's stdio layer: core.process, src/proc.c,
-- src/lchat_proc.c, lua/luachat/process.lua). A child's pipes are watched by
-- the same loop as HTTP transfers, so neither blocks the other; a command that
-- cannot start fails at once; close ends the child (its process group, down to
-- SIGKILL), reaps it and closes every descriptor. Synchronised on events (the
-- test server's gates, lines from the child), never on sleeps or time bounds.
local server = require "spec.helpers.server"
local proc = require "spec.helpers.proc"
local luachat = require "luachat"
local core = require "luachat.core"
local process = require "luachat.process"
local json = luachat.json

local shell_quote = proc.shell_quote

local GATE_TIMEOUT = 30 -- a gate never released fails the stream (never a pass)
local SAFETY = 30 -- a read that is never woken fails after this long instead of hanging (never a pass)

local own_pid = server.own_pid()

-- Our open descriptors (the ls's pipe is there both times).
local function fd_count()
  local p = io.popen("ls /proc/" .. own_pid .. "/fd")
  local n = 0
  for _ in p:lines() do n = n + 1 end
  p:close()
  return n
end

-- Whether pid exists at all (a zombie counts: it has not been reaped).
local function pid_exists(pid)
  return proc.read_file("/proc/" .. pid .. "/stat") ~= nil
end

local function chunk(delta, finish)
  return { id = "chatcmpl-p", object = "chat.completion.chunk", created = 1700000000, model = "m",
    choices = { { index = 0, delta = delta, finish_reason = finish or json.null } } }
end

describe("processes", function()
  local fds_before
  before_each(function() fds_before = fd_count() end)
  after_each(function()
    collectgarbage()
    collectgarbage()
    assert.equal(0, core.live(), "a transfer or process was left running")
    if fds_before then assert.equal(fds_before, fd_count(), "a descriptor was left open") end
  end)

  it("cat round trip in one task while a stream proceeds in another; neither waits for the other", function()
    local srv = server.start()
    finally(function() srv:stop() end)
    srv:script { { sse = {
      { json = chunk { role = "assistant", content = "s1" } },
      { gate = "g", timeout = GATE_TIMEOUT },
      { json = chunk { content = "s2" } },
      { json = chunk({}, "stop") },
    }, done = true } }
    local c = luachat.client { base_url = srv.base_url, api_key = "sk-proc", max_retries = 0 }
    fds_before = nil -- curl keeps its connection (and the engine its descriptors): counted elsewhere
    local order = {}
    local p = assert(process.spawn { argv = { "cat" } })
    finally(function() p:close(0) end)
    local streamer = luachat.spawn(function()
      return c:stream({ model = "m", messages = { { role = "user", content = "hi" } } }, function(ch)
        local d = ch.choices[1] and ch.choices[1].delta
        if d and d.content then order[#order + 1] = d.content end
      end)
    end)
    local reader = luachat.spawn(function()
      assert(p:write("ping\n"))
      local line = assert(p:read_line(SAFETY))
      order[#order + 1] = line
      -- cat is silent now: this task waits on it while the stream goes on
      line = assert(p:read_line(SAFETY))
      order[#order + 1] = line
      assert.is_nil(p:read_line(SAFETY)) -- EOF once stdin is closed
      return p:wait(SAFETY)
    end)
    -- The stream is held at its gate: the round trip through cat completes meanwhile.
    local safety = luachat.now() + SAFETY
    while #order < 2 and not reader:is_done() and luachat.now() < safety do luachat.sleep(0.01) end
    table.sort(order)
    assert.same({ "ping", "s1" }, order) -- in either order
    assert.equal("armed", srv:release("g"))
    local final, err = streamer:wait()
    assert.is_nil(err, tostring(err))
    assert.equal("s1s2", final.choices[1].message.content)
    assert.same({ "ping", "s1", "s2" }, order) -- the stream finished while the reader waited on cat
    assert(p:write("pong\n"))
    p:close_stdin()
    local kind, code = reader:wait()
    assert.same({ "ping", "s1", "s2", "pong" }, order)
    assert.equal("exit", kind)
    assert.equal(0, code)
    assert.is_true(p:done())
    local pid = p:pid()
    assert.same({ "exit", 0 }, { p:close() })
    assert.is_false(pid_exists(pid))
  end)

  it("a command that does not exist is an immediate error naming it", function()
    local p, err = process.spawn { argv = { "luachat-no-such-command", "--flag" } }
    assert.is_nil(p)
    assert.equal("process", err.kind)
    assert.equal("cannot start 'luachat-no-such-command': No such file or directory", err.message)
    assert.equal(err.message, tostring(err):match("cannot start.*$"))
    local raw, err2 = core.process { argv = { "/nonexistent/dir/cmd" } }
    assert.is_nil(raw)
    assert.equal("cannot start '/nonexistent/dir/cmd': No such file or directory", err2.message)
    local _, err3 = core.process { argv = { "cat" }, cwd = "/nonexistent-dir" }
    assert.equal("cannot start 'cat' in '/nonexistent-dir': No such file or directory", err3.message)
  end)

  it("programming errors raise", function()
    assert.has_error(function() core.process {} end, "field 'argv' must be a list of strings")
    assert.has_error(function() core.process { argv = {} } end,
      "field 'argv' must not be empty (the command to run comes first)")
    assert.has_error(function() core.process { argv = { "cat", 1 } } end, "field 'argv' item 2 must be a string")
    assert.has_error(function() core.process { argv = { "cat" }, env = { A = 1 } } end,
      "field 'env': the value of A must be a string (or false to unset it)")
    assert.has_error(function() core.process { argv = { "cat" }, env = { ["A=B"] = "x" } } end,
      "field 'env': bad name 'A=B'")
    assert.has_error(function() core.process { argv = { "cat" }, cwd = 5 } end, "field 'cwd' must be a string")
    local p = assert(core.process { argv = { "cat" } })
    p:close()
    assert.has_error(function() p:write("x") end, "attempt to use a closed process")
    assert.has_error(function() p:read() end, "attempt to use a closed process")
    assert.equal("luachat.Process (closed)", tostring(p))
  end)

  it("a child that exits mid-conversation: EOF, done, its exit status; a later write fails", function()
    local p = assert(process.spawn { argv = { "sh", "-c", 'read x; echo "got $x"; echo bye >&2; exit 7' } })
    local pid = p:pid()
    assert(p:write("a\n"))
    assert.equal("got a", p:read_line())
    assert.is_nil(p:read_line())
    assert.is_nil(p:read())
    assert.same({ "exit", 7 }, { p:wait() })
    assert.is_true(p:done())
    assert.is_false(pid_exists(pid)) -- reaped without any close
    local ok, err = p:write("more\n")
    assert.is_nil(ok)
    assert.equal("process", err.kind)
    assert.equal("cannot write to 'sh': Broken pipe", err.message)
    p:close()
    assert.equal("bye", p:stderr_tail())
    assert.same({ "exit", 7 }, { p:exit_status() })
  end)

  it("a child killed by a signal reports it", function()
    local p = assert(process.spawn { argv = { "sh", "-c", "kill -9 $$" } })
    assert.same({ "signal", 9 }, { p:wait() })
    assert.is_nil(p:read())
    p:close()
  end)

  it("close ends a child that ignores stdin's EOF and SIGTERM: SIGKILL after the grace, reaped", function()
    local p = assert(process.spawn { argv = { "sh", "-c", "trap '' TERM; echo ready; while :; do sleep 1; done" } })
    assert.equal("ready", p:read_line())
    local pid = p:pid()
    assert.same({ "signal", 9 }, { p:close(0.2) })
    assert.is_false(pid_exists(pid))
    assert.same({ "signal", 9 }, { p:close(0.2) }) -- idempotent
    assert.is_true(p:done())
  end)

  it("close ends the whole process group (a grandchild holding the pipes too)", function()
    local p = assert(process.spawn { argv = { "sh", "-c", "sleep 100 & echo $!; wait" } })
    local grandchild = tonumber(p:read_line())
    assert.is_truthy(grandchild)
    assert.same({ "signal", 15 }, { p:close(0.2) })
    -- the orphaned sleep got SIGTERM too: it is gone once init reaps it, or a zombie meanwhile
    local stat = proc.read_file("/proc/" .. grandchild .. "/stat")
    while stat and not stat:match("%)%s+[ZX]") do
      luachat.sleep(0.01)
      stat = proc.read_file("/proc/" .. grandchild .. "/stat")
    end
  end)

  it("shutdown in a task waits by yielding: other tasks run meanwhile", function()
    local p = assert(process.spawn { argv = { "sh", "-c", "trap '' TERM; echo ready; while :; do sleep 1; done" } })
    assert.equal("ready", p:read_line())
    local ticks = 0
    local ticker = luachat.spawn(function()
      while not p:done() do
        ticks = ticks + 1
        luachat.sleep(0.01)
      end
    end)
    local t = luachat.spawn(function() return p:shutdown(0.3) end)
    assert.same({ "signal", 9 }, { t:wait() })
    ticker:wait()
    assert.is_true(ticks > 3) -- the ticker ran during the 0.6 s of grace (the loop was not blocked)
  end)

  it("a process nobody references is ended by the garbage collector", function()
    local pid
    do
      local p = assert(core.process { argv = { "sleep", "100" } })
      pid = p:pid()
    end
    collectgarbage()
    collectgarbage()
    assert.is_false(pid_exists(pid))
  end)

  it("stderr keeps the last lines", function()
    local p = assert(process.spawn { argv = { "sh", "-c",
      "i=1; while [ $i -le 40 ]; do echo err$i >&2; i=$((i+1)); done; exit 1" } })
    assert.same({ "exit", 1 }, { p:wait() })
    p:close()
    assert.equal("err38\nerr39\nerr40", p:stderr_tail(3))
    local tail = p:stderr_tail()
    assert.equal(20, select(2, tail:gsub("\n", "")) + 1)
    assert.equal("err21", tail:match("^[^\n]*"))
  end)

  it("env and cwd", function()
    local p = assert(process.spawn { argv = { "sh", "-c", 'echo "$LUACHAT_H4:${HOME-unset}:$(pwd)"' },
      env = { LUACHAT_H4 = "v1", HOME = false }, cwd = "/tmp" })
    assert.equal("v1:unset:/tmp", p:read_line())
    p:close()
  end)

  it("env_only = true: env is the child's whole environment (the command still found in our PATH)", function()
    local p = assert(process.spawn { argv = { "env" }, env = { ONLY_A = "1", ONLY_B = "two words", ONLY_C = false },
      env_only = true })
    local lines = {}
    for line in function() return p:read_line() end do lines[#lines + 1] = line end
    table.sort(lines)
    assert.same({ "ONLY_A=1", "ONLY_B=two words" }, lines)
    p:close()
  end)

  it("10 MB of output arrive intact, in pieces and as one line", function()
    local p = assert(process.spawn { argv = { "seq", "1", "1500000" } })
    local parts = {}
    for s in function() return p:read() end do parts[#parts + 1] = s end
    local want = {}
    for i = 1, 1500000 do want[i] = i end
    local got = table.concat(parts)
    assert.equal(10888896, #got)
    assert.is_true(got == table.concat(want, "\n") .. "\n")
    p:close()

    p = assert(process.spawn { argv = { "sh", "-c", "head -c 10000000 /dev/zero | tr '\\000' a; echo; echo end" } })
    local line = p:read_line()
    assert.equal(10000000, #line)
    assert.is_nil(line:find("[^a]"))
    assert.equal("end", p:read_line())
    assert.is_nil(p:read_line())
    p:close()
  end)

  it("a line over max_line is an error, not unbounded memory", function()
    local p = assert(process.spawn { argv = { "sh", "-c", "head -c 100000 /dev/zero | tr '\\000' a; echo" },
      max_line = 1000 })
    local line, err = p:read_line()
    assert.is_nil(line)
    assert.equal("process", err.kind)
    assert.matches("^process 'sh' %(pid %d+%): a line longer than 1000 bytes$", err.message)
    p:close()
  end)

  it("write queues what the child does not read yet, never blocks; the queue has a limit", function()
    local p = assert(process.spawn { argv = { "sh", "-c", "echo ready; exec sleep 100" } }) -- never reads stdin
    assert.equal("ready", p:read_line())
    local mib = string.rep("x", 1024 * 1024)
    assert.is_true(p:write(mib)) -- the pipe takes 64 KiB or so; the rest waits in the queue
    assert.is_true(p:pending() > 0)
    local ok, err = p:write(string.rep("y", 64 * 1024 * 1024))
    assert.is_nil(ok)
    assert.equal("process", err.kind)
    assert.equal("cannot write to 'sh': more than 67108864 bytes would wait for it to read", err.message)
    p:close_stdin() -- after the queue: still open while bytes wait
    ok, err = p:write("late")
    assert.is_nil(ok)
    assert.equal("cannot write to 'sh': its input is closed", err.message)
    assert.same({ "signal", 15 }, { p:close(0.1) }) -- sleep ignores stdin: SIGTERM ends it
  end)

  it("read with a timeout returns a timeout error and leaves the process usable", function()
    local p = assert(process.spawn { argv = { "cat" } })
    local s, err = p:read(0.05)
    assert.is_nil(s)
    assert.equal("timeout", err.kind)
    assert(p:write("x\n"))
    assert.equal("x", p:read_line())
    p:close()
  end)

  it("no zombies and no descriptors left after many processes", function()
    local pids = {}
    for i = 1, 20 do
      local p = assert(process.spawn { argv = { "sh", "-c", "echo " .. i .. "; cat" } })
      assert.equal(tostring(i), p:read_line())
      pids[i] = p
    end
    for i, p in ipairs(pids) do
      local pid = p:pid()
      p:close()
      pids[i] = pid
    end
    for _, pid in ipairs(pids) do assert.is_false(pid_exists(pid)) end
    -- after_each checks the descriptor count
  end)

  it("the host's lua_close ends running children; Ctrl-C still wakes a loop waiting on one #once", function()
    local pidfile = os.tmpname()
    local out, _, code = proc.run(proc.host .. " -e " .. shell_quote(
      "local p = require('luachat.core').process{ argv = {'sleep', '100'} } "
      .. "local f = io.open(" .. string.format("%q", pidfile) .. ", 'w') f:write(p:pid()) f:close() print('ok')"))
    assert.equal(0, code)
    assert.equal("ok\n", out)
    local pid = tonumber(proc.read_file(pidfile))
    assert.is_false(pid_exists(pid))

    -- A script waiting (driving the loop) on a silent cat: SIGINT ends it with 130 and the cat with it.
    local ready = os.tmpname()
    os.remove(ready)
    local out2, err2, code2 = proc.run(string.format(
      "%s -e %s & pid=$!; while [ ! -e %s ] && kill -0 $pid 2>/dev/null; do sleep 0.02; done; kill -INT $pid; wait $pid",
      proc.host, shell_quote("local p = require('luachat.process').spawn{ argv = {'cat'} } "
        .. "local f = io.open(" .. string.format("%q", pidfile) .. ", 'w') f:write(p:pid()) f:close() "
        .. "io.open(" .. string.format("%q", ready) .. ", 'w'):close() p:read_line() print('not reached')"),
      shell_quote(ready)))
    os.remove(ready)
    assert.equal(130, code2)
    assert.equal("", out2)
    assert.matches("interrupted", err2, 1, true)
    pid = tonumber(proc.read_file(pidfile))
    os.remove(pidfile)
    assert.is_false(pid_exists(pid))
  end)
end)
