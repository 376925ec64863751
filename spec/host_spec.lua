-- The luachat host binary, run as a user would: arguments, exit codes,
-- stdin scripts, error output, SIGINT, the library search path.
-- run-tests: once (it only drives the host as a subprocess; scripts/run-tests.sh)
local proc = require "spec.helpers.proc"
local HOST, shell_quote, run, abspath = proc.host, proc.shell_quote, proc.run, proc.abspath

local function host(args, stdin)
  return run(HOST .. " " .. args, stdin)
end

describe("luachat host", function()
  it("-e runs code: _VERSION is Lua 5.4", function()
    local out, _, code = host("-e " .. shell_quote("print(_VERSION)"))
    assert.equal("Lua 5.4\n", out)
    assert.equal(0, code)
  end)

  it("runs a script with arg and ... like lua5.4", function()
    local path = os.tmpname()
    local f = assert(io.open(path, "w"))
    f:write("#!/usr/bin/env luachat\nprint(arg[0], arg[1], arg[2], #arg, select('#', ...), ...)\n")
    f:close()
    local out, err, code = host(shell_quote(path) .. " a 'b c'")
    os.remove(path)
    assert.equal("", err)
    assert.equal(0, code)
    assert.equal(path .. "\ta\tb c\t2\t2\ta\tb c\n", out)
  end)

  it("reads the script from stdin with -", function()
    local out, _, code = host("- x y", "print('stdin', ...)")
    assert.equal("stdin\tx\ty\n", out)
    assert.equal(0, code)
  end)

  it("reads stdin when it is not a terminal and no script is given", function()
    local out, _, code = host("", "io.write(1 + 1)")
    assert.equal("2", out)
    assert.equal(0, code)
  end)

  it("an uncaught error prints luachat: message and a traceback, exit 1", function()
    local out, err, code = host("-e " .. shell_quote("local function f() error('kaput') end f()"))
    assert.equal("", out)
    assert.equal(1, code)
    assert.matches("^luachat: %(command line%):1: kaput\n", err)
    assert.matches("stack traceback:", err, 1, true)
  end)

  it("an error object with __tostring is described by it", function()
    local _, err, code = host("-e " .. shell_quote(
      "error(require('luachat').error{kind='api', message='bad thing', status=400})"))
    assert.equal(1, code)
    assert.matches("^luachat: luachat: api error 400: bad thing", err)
  end)

  it("a syntax error in the script exits 1", function()
    local _, err, code = host("-e " .. shell_quote("x ="))
    assert.equal(1, code)
    assert.matches("unexpected symbol near <eof>", err, 1, true)
  end)

  it("os.exit(n) exits n", function()
    local _, _, code = host("-e " .. shell_quote("os.exit(7)"))
    assert.equal(7, code)
    _, _, code = host("-e " .. shell_quote("os.exit(true)"))
    assert.equal(0, code)
  end)

  it("a bad option exits 2 with a usage line", function()
    local out, err, code = host("--frobnicate")
    assert.equal(2, code)
    assert.equal("", out)
    assert.matches("unrecognized option '%-%-frobnicate'", err)
    assert.matches("usage: luachat", err, 1, true)
    _, err, code = host("-e")
    assert.equal(2, code)
    assert.matches("'-e' needs an argument", err, 1, true)
  end)

  it("-v prints luachat's, Lua's and libcurl's versions", function()
    local out, _, code = host("-v")
    assert.equal(0, code)
    assert.matches("^luachat %d+%.%d+%.%d+\nLua 5%.4%.%d+\nlibcurl %d+%.%d+", out)
  end)

  it("maps libcurl on first need (src/curl_dl.c), not at start-up or on require", function()
    local out, err, code = host("-e " .. shell_quote([[
local function mapped()
  for l in io.lines("/proc/self/maps") do
    if l:find("libcurl", 1, true) then return "curl" end
  end
  return "no curl"
end
io.write(mapped(), "|")
local core = require "luachat.core"
core.poll(0.001) -- an engine with no transfer sleeps without curl
io.write(mapped(), "|", tostring(core.next_timeout()), "|", #core.fds(), "|")
local v = core.curl_version
io.write(mapped(), "|", v, "\n")]]))
    assert.equal(0, code, err)
    assert.matches("^no curl|no curl|nil|0|curl|%d+%.%d+%.%d+\n$", out)
  end)

  it("-h prints usage on stdout", function()
    local out, _, code = host("--help")
    assert.equal(0, code)
    assert.matches("^usage: luachat %[options%] %[script %[args%.%.%.%]%]", out)
    for _, flag in ipairs { "-e CODE", "-p PROMPT", "-c ", "-v, --version", "-h, --help" } do
      assert.matches(flag, out, 1, true)
    end
  end)

  it("-l requires a module into a global", function()
    local out, _, code = host("-l luachat -e " .. shell_quote("print(type(luachat.client))"))
    assert.equal(0, code)
    assert.equal("function\n", out)
  end)

  it("finds its Lua library from any directory without environment variables", function()
    local out, err, code = run("cd / && env -u LUA_PATH -u LUA_PATH_5_4 " .. shell_quote(abspath(HOST))
      .. " -e " .. shell_quote("print(require('luachat').version)"))
    assert.equal("", err)
    assert.equal(0, code)
    assert.matches("^%d+%.%d+%.%d+\n$", out)
  end)

  it("still honours LUA_PATH for the user's own modules", function()
    local dir = os.tmpname()
    os.remove(dir)
    os.execute("mkdir -p " .. dir)
    local f = assert(io.open(dir .. "/mymod.lua", "w"))
    f:write("return { hello = 'from mymod' }")
    f:close()
    local out, _, code = run("cd / && LUA_PATH=" .. shell_quote(dir .. "/?.lua;;") .. " " .. shell_quote(abspath(HOST))
      .. " -e " .. shell_quote("print(require('mymod').hello, require('luachat').version ~= nil)"))
    os.execute("rm -rf " .. dir)
    assert.equal(0, code)
    assert.equal("from mymod\ttrue\n", out)
  end)

  -- Run `code` in the host; once it has created the file named by the global
  -- READY (or exited), send SIGINT. An event, not a sleep, says when.
  local function interrupt_when_ready(code)
    local ready = os.tmpname()
    os.remove(ready)
    local out, err, status = run(string.format(
      "%s -e %s -e %s & pid=$!; while [ ! -e %s ] && kill -0 $pid 2>/dev/null; do sleep 0.02; done; kill -INT $pid; wait $pid",
      HOST, shell_quote("READY = " .. string.format("%q", ready)), shell_quote(code), shell_quote(ready)))
    os.remove(ready)
    return out, err, status
  end

  it("SIGINT ends a script with status 130", function()
    -- A script blocked in luachat.sleep (driving the curl loop), interrupted.
    local out, err, code = interrupt_when_ready("io.write('started\\n') io.stdout:flush() io.open(READY, 'w'):close() "
      .. "require('luachat').sleep(20) print('not reached')")
    assert.equal(130, code)
    assert.equal("started\n", out)
    assert.matches("interrupted", err, 1, true)
  end)

  it("SIGINT interrupts a pure Lua loop too", function()
    local _, err, code = interrupt_when_ready("io.open(READY, 'w'):close() while true do end")
    assert.equal(130, code)
    assert.matches("interrupted", err, 1, true) -- the handler's doing, not SIGINT's default action
  end)
end)
