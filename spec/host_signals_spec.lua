-- SIGTERM and SIGHUP to the host: what luachat started (--mcp stdio servers,
-- children of luachat.process and their process groups) is stopped, then the
-- host dies of the signal (128 + signo for the shell). A script that keeps
-- catching "interrupted" cannot hold the host: a second signal kills the
-- children and the host at once. Every wait polls for an event with a bound.
-- run-tests: once (it only drives the host as a subprocess; scripts/run-tests.sh)
local proc = require "spec.helpers.proc"
local HOST, q = proc.abspath(proc.host), proc.shell_quote

-- Is pid a live process (not gone, not a zombie left for init to reap)?
local function alive(pid)
  local stat = proc.read_file("/proc/" .. pid .. "/stat")
  if not stat then return false end
  return stat:match("^%d+ %b() (%a)") ~= "Z"
end

-- Wait (bounded) until none of pids is alive; returns those still alive.
local function wait_gone(pids)
  local deadline = os.time() + 10
  repeat
    local left = {}
    for _, pid in ipairs(pids) do if alive(pid) then left[#left + 1] = pid end end
    if #left == 0 or os.time() > deadline then return left end
    os.execute("sleep 0.05")
  until false
end

-- The pids the children wrote (one a line) once `want` of them are there.
local shell_wait_pids = [[n=0; while [ "$(wc -l 2>/dev/null < %s || echo 0)" -lt %d ] && kill -0 $pid 2>/dev/null && [ $n -lt 400 ]; do sleep 0.05; n=$((n+1)); done; ]]

-- Run the host in the background with `args`; once `want` pids are in the
-- file $PIDS, send the signals (e.g. {"TERM"}), each after its file exists
-- when one is given, then wait. Returns the pids, the exit status, stderr.
local function run_and_signal(dir, args, want, signals)
  local pids = dir .. "/pids"
  local script = string.format("PIDS=%s DIR=%s %s %s 2>%s & pid=$!; ", q(pids), q(dir), q(HOST), args, q(dir .. "/err"))
    .. string.format(shell_wait_pids, q(pids), want)
  for _, s in ipairs(signals) do
    if s.after then
      script = script .. string.format(
        "n=0; while [ ! -e %s ] && kill -0 $pid 2>/dev/null && [ $n -lt 400 ]; do sleep 0.05; n=$((n+1)); done; ",
        q(dir .. "/" .. s.after))
    end
    script = script .. "kill -" .. s.sig .. " $pid; "
  end
  script = script .. "wait $pid 2>/dev/null; echo $?"
  local p = io.popen(script)
  local status = tonumber(p:read("a"):match("(%d+)%s*$"))
  p:close()
  local list = {}
  for l in (proc.read_file(pids) or ""):gmatch("%d+") do list[#list + 1] = l end
  return list, status, proc.read_file(dir .. "/err") or ""
end

-- A stdio MCP server that never answers: its pid and a grandchild's (same group) go to
-- dir/pids (named in the command: a server does not get the host's whole environment).
local function mcp(dir)
  local f = dir .. "/pids"
  return string.format([[sh -c 'echo $$ >> %s; sleep 102 & echo $! >> %s; echo garbage; wait']], f, f)
end

describe("SIGTERM/SIGHUP to the host", function()
  local dir
  before_each(function() dir = proc.tmpdir() end)
  after_each(function() os.execute("rm -rf " .. q(dir)) end)

  for _, case in ipairs { { sig = "TERM", code = 143 }, { sig = "HUP", code = 129 } } do
    it("SIG" .. case.sig .. " stops an --mcp server and its group, exit " .. case.code, function()
      local pids, status, err = run_and_signal(dir,
        "-p hi -m m --base-url http://127.0.0.1:9 --mcp " .. q(mcp(dir)), 2, { { sig = case.sig } })
      assert.equal(2, #pids, err)
      assert.equal(case.code, status, err)
      assert.same({}, wait_gone(pids))
    end)
  end

  it("SIGTERM ends a script blocked on a luachat.process child: <close> runs, the child's group is stopped", function()
    local script = dir .. "/s.lua"
    proc.write_file(script, [[
local process = require "luachat.process"
local p <close> = assert(process.spawn { argv = { "sh", "-c", 'echo $$ >> "$PIDS"; sleep 103 & echo $! >> "$PIDS"; wait' } })
local mark <close> = setmetatable({}, { __close = function() io.open(os.getenv("DIR") .. "/closed", "w"):close() end })
p:read_line(60)
]])
    local pids, status, err = run_and_signal(dir, q(script), 2,
      { { sig = "TERM" } })
    assert.equal(2, #pids, err)
    assert.equal(143, status, err)
    assert.matches("interrupted", err, 1, true)
    assert.truthy(proc.read_file(dir .. "/closed"), "the <close> variable ran")
    assert.same({}, wait_gone(pids))
  end)

  it("a script that catches every interrupt: a second SIGTERM kills its children and the host", function()
    local script = dir .. "/s.lua"
    proc.write_file(script, [[
local process = require "luachat.process"
local p = assert(process.spawn { argv = { "sh", "-c", 'echo $$ >> "$PIDS"; sleep 104 & echo $! >> "$PIDS"; wait' } })
local caught = 0
while true do
  local ok, e = pcall(function() while true do end end)
  if tostring(e):find("interrupted", 1, true) and caught == 0 then
    caught = 1
    io.open(os.getenv("DIR") .. "/caught", "w"):close()
  end
end
]])
    local pids, status, err = run_and_signal(dir, q(script), 2,
      { { sig = "TERM" }, { sig = "TERM", after = "caught" } })
    assert.equal(2, #pids, err)
    assert.truthy(proc.read_file(dir .. "/caught"), "the first SIGTERM arrived as \"interrupted\"")
    assert.equal(143, status, err)
    assert.same({}, wait_gone(pids))
  end)

  it("a termination cannot be taken back as Ctrl-C can: after core.take_interrupt the next poll raises again", function()
    local script = dir .. "/s.lua"
    proc.write_file(script, [[
local core = require "luachat.core"
local luachat = require "luachat"
local p = assert(require("luachat.process").spawn { argv = { "sh", "-c", 'echo $$ >> "$PIDS"; exec sleep 111' } })
local ok, e = pcall(p.read_line, p, 60)
io.open(os.getenv("DIR") .. "/first", "w"):write(tostring(e), " ", tostring(core.take_interrupt())):close()
luachat.sleep(30) -- a taken Ctrl-C would sleep here; a termination raises at once
io.open(os.getenv("DIR") .. "/slept", "w"):close()
]])
    local pids, status, err = run_and_signal(dir, q(script), 1, { { sig = "TERM" } })
    assert.equal(1, #pids, err)
    assert.equal(143, status, err)
    assert.matches("interrupted true$", proc.read_file(dir .. "/first") or "")
    assert.is_nil(proc.read_file(dir .. "/slept"))
    assert.same({}, wait_gone(pids))
  end)

  it("the host dies of the signal itself: its parent sees \"killed by signal\", not exit 143", function()
    -- exec: the shell becomes the host, so os.execute reports how the host ended
    for _, sig in ipairs { { "TERM", 15 }, { "HUP", 1 } } do
      local ok, how, n = os.execute(string.format("exec %s -e %s 2>/dev/null", q(HOST),
        q("os.execute('kill -" .. sig[1] .. " $PPID') while true do end")))
      assert.same({ nil, "signal", sig[2] }, { ok, how, n })
    end
  end)

  it("started with SIGCHLD ignored, children are still waited for (their exit status, and no reaped pid kept)", function()
    -- An ignored SIGCHLD is inherited across exec (python sets it, then execs the host);
    -- the kernel would then reap children itself and process:wait would get no status.
    local script = "local p = assert(require('luachat.process').spawn { argv = { 'sh', '-c', 'exit 3' } }) "
      .. "require('luachat').sleep(0.3) print(p:wait(5))"
    local out = io.popen(string.format("python3 -c %s %s -e %s", q(
      "import os, signal, sys; signal.signal(signal.SIGCHLD, signal.SIG_IGN); os.execv(sys.argv[1], sys.argv[1:])"),
      q(HOST), q(script)))
    local s = out:read("a")
    out:close()
    assert.equal("exit\t3\n", s)
  end)

  it("an ignored SIGHUP stays ignored (nohup)", function()
    local out = io.popen(string.format(
      "trap '' HUP; DIR=%s %s -e %s & pid=$!; n=0; while [ ! -e %s ] && [ $n -lt 400 ]; do sleep 0.05; n=$((n+1)); done; "
        .. "kill -HUP $pid; touch %s; wait $pid; echo $?",
      q(dir), q(HOST), q("local d = os.getenv('DIR') io.open(d .. '/ready', 'w'):close() "
        .. "while not io.open(d .. '/sent') do end print('survived')"),
      q(dir .. "/ready"), q(dir .. "/sent")))
    local s = out:read("a")
    out:close()
    assert.equal("survived\n0\n", s)
  end)
end)
