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
    assert.matches("^luachat: api error 400: bad thing", err) -- "luachat: " once, not twice
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
    assert.matches("^no curl|no curl|nil|1|curl|%d+%.%d+%.%d+\n$", out) -- fds(): the epoll fd
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

  it("its own Lua files come first, before another luachat reachable through LUA_PATH", function()
    local dir = proc.tmpdir()
    os.execute("mkdir -p " .. shell_quote(dir .. "/luachat"))
    proc.write_file(dir .. "/luachat/init.lua", "return { version = 'impostor' }")
    local out, err, code = run("cd / && LUA_PATH=" .. shell_quote(dir .. "/?.lua;" .. dir .. "/?/init.lua;;") .. " "
      .. shell_quote(abspath(HOST)) .. " -e " .. shell_quote("print(require('luachat').version)"))
    os.execute("rm -rf " .. shell_quote(dir))
    assert.equal("", err)
    assert.equal(0, code)
    assert.matches("^%d+%.%d+%.%d+\n$", out)
  end)

  it("a first argument that is no file and no path suggests -p, exit 2", function()
    local out, err, code = host(shell_quote("What is the capital of France?"))
    assert.equal(2, code)
    assert.equal("", out)
    assert.equal('luachat: cannot open What is the capital of France? (no such file); '
      .. 'did you mean: luachat -p "What is the capital of France?"\n', err)
    -- quoted for the shell when double quotes would not do
    _, err = host(shell_quote("it's $5"))
    assert.matches([[did you mean: luachat -p 'it'\''s $5']], err, 1, true)
    -- a path or a .lua name is a missing script, as before
    for _, name in ipairs { "nosuch.lua", "./nosuch", "dir/x", "-- -x" } do
      _, err, code = host(name)
      assert.equal(1, code, name)
      assert.matches("cannot open " .. name:gsub("^%-%- ", ""), err, 1, true)
      assert.is_nil(err:find("did you mean", 1, true), name)
    end
  end)

  it("every chat option reaches the chat command line, --name=value too", function()
    -- The host keeps no list of chat options: luachat.cli parses them all.
    local _, err, code = host("--model=foo -p hi -P nosuch")
    assert.equal(2, code)
    assert.matches("unknown profile 'nosuch'", err, 1, true)
    _, err, code = host("--max-turns=0 -p hi")
    assert.equal(2, code)
    assert.matches("--max-turns needs a positive whole number, got '0'", err, 1, true)
    _, err, code = host("--frobnicate -p hi")
    assert.equal(2, code)
    assert.matches("^luachat: unrecognized option '%-%-frobnicate'\nusage: luachat %-p PROMPT", err)
  end)

  it("scripts, -e and the prompt see the global luachat (the man page says preloaded)", function()
    local out, err, code = host("-e " .. shell_quote("print(luachat == require('luachat'), type(luachat.client))"))
    assert.equal("", err)
    assert.equal(0, code)
    assert.equal("true\tfunction\n", out)
    out = host("-", "print(type(luachat.agent))")
    assert.equal("table\n", out)
  end)

  it("a bad chat request blames the caller's line, not the library's", function()
    local _, err, code = host("-e " .. shell_quote("local c = luachat.client{ api_key = 'k' }\nc:chat{ messages = {} }"))
    assert.equal(1, code)
    assert.matches("^luachat: %(command line%):2: bad argument #1 to 'chat' %(field 'model' must be a non%-empty string%)", err)
    _, err = host("-e " .. shell_quote("local c = luachat.client{ api_key = 'k' }\nc:stream{ model = 'm' }"))
    assert.matches("^luachat: %(command line%):2: bad argument #1 to 'stream'", err)
    _, err = host("-e " .. shell_quote("local c = luachat.client{ api_key = 'k' }\nc:open_stream{}"))
    assert.matches("^luachat: %(command line%):2: bad argument #1 to 'open_stream'", err)
  end)

  it("os.execute answers as in lua5.4", function()
    local out, _, code = host("-e " .. shell_quote(
      "print(os.execute('exit 3')) print(os.execute('true')) print(os.execute('kill -TERM $$')) print(os.execute())"))
    assert.equal(0, code)
    assert.equal("nil\texit\t3\ntrue\texit\t0\nnil\tsignal\t15\ntrue\n", out)
  end)

  -- A script whose tool handler blocks; SIGINT arrives while it runs (the
  -- handler writes a file first, the shell waits for it). The fake client
  -- counts model calls: a second call means the turn went on.
  local function interrupt_in_handler(body)
    local dir = proc.tmpdir()
    local script = dir .. "/agent.lua"
    proc.write_file(script, [[
local dir = ...
local luachat = require "luachat"
local calls = 0
local client = { chat = function(_, req)
  calls = calls + 1
  local f = io.open(dir .. "/calls", "w") f:write(calls, "\n", req.messages[#req.messages].content or "", "\n") f:close()
  if calls == 1 then
    return { choices = { { finish_reason = "tool_calls", message = { role = "assistant",
      tool_calls = { { id = "c1", type = "function", ["function"] = { name = "slow", arguments = "{}" } },
                     { id = "c2", type = "function", ["function"] = { name = "next", arguments = "{}" } } } } } } }
  end
  return { choices = { { finish_reason = "stop", message = { role = "assistant", content = "done" } } } }
end }
local a = luachat.agent { client = client, model = "m", parallel = false, tools = {
  luachat.tool { name = "slow", handler = function()
    io.open(dir .. "/in-handler", "w"):close()
    ]] .. body .. [[
    return "finished"
  end },
  luachat.tool { name = "next", handler = function() io.open(dir .. "/next-ran", "w"):close() end },
} }
print(a:run("go"))
]])
    local out, err, code = run(string.format(
      "%s %s %s & pid=$!; n=0; while [ ! -e %s/in-handler ] && [ $n -lt 500 ]; do sleep 0.02; n=$((n+1)); done; "
        .. "kill -INT $pid; wait $pid",
      HOST, shell_quote(script), shell_quote(dir), shell_quote(dir)))
    local calls = proc.read_file(dir .. "/calls")
    local next_ran = proc.read_file(dir .. "/next-ran") ~= nil
    os.execute("rm -rf " .. shell_quote(dir))
    return out, err, code, calls, next_ran
  end

  it("Ctrl-C during a tool handler blocked in os.execute ends the turn once it returns", function()
    local out, err, code, calls, next_ran = interrupt_in_handler([[os.execute("sleep 1")]])
    assert.equal(130, code)
    assert.equal("", out)
    assert.matches("interrupted", err, 1, true)
    assert.equal("1\ngo\n", calls) -- the model was never called again
    assert.is_false(next_ran) -- nor the turn's next tool call run
  end)

  it("Ctrl-C during a luachat.sleep handler ends the turn: the model never sees 'interrupted'", function()
    local out, err, code, calls, next_ran = interrupt_in_handler([[luachat.sleep(5)]])
    assert.equal(130, code)
    assert.equal("", out)
    assert.matches("interrupted", err, 1, true)
    assert.equal("1\ngo\n", calls)
    assert.is_false(next_ran)
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
    -- bounded, so a host without its handler (SIGINT is ignored in a background job) fails, not hangs
    local _, err, code = interrupt_when_ready("io.open(READY, 'w'):close() local t = os.time() + 60 "
      .. "while os.time() < t do end os.exit(3)")
    assert.equal(130, code)
    assert.matches("interrupted", err, 1, true) -- the handler's doing, not SIGINT's default action
  end)

  -- Issue 15 item 8: LUA_INIT as lua5.4 reads it.
  it("runs LUA_INIT (code or @file) before -e, the script and the prompt; LUA_INIT_5_4 wins", function()
    local out, err, code = host("-e " .. shell_quote("print('e', X)"), nil)
    assert.equal("e\tnil\n", out)
    out, err, code = run("LUA_INIT=" .. shell_quote("X = 1 print('init', luachat ~= nil)") .. " " .. HOST
      .. " -e " .. shell_quote("print('e', X)"))
    assert.equal("", err)
    assert.equal(0, code)
    assert.equal("init\ttrue\ne\t1\n", out)
    local file = os.tmpname()
    proc.write_file(file, "print('from file', ...)\n")
    out, err, code = run("LUA_INIT=" .. shell_quote("print('plain')") .. " LUA_INIT_5_4=" .. shell_quote("@" .. file)
      .. " " .. HOST .. " -", "print('script')")
    os.remove(file)
    assert.equal("", err)
    assert.equal(0, code)
    assert.equal("from file\nscript\n", out)
    -- the prompt too (stdin not a terminal: -i reads lines from it)
    out, _, code = run("LUA_INIT=" .. shell_quote("Y = 41") .. " " .. HOST .. " -i", "Y + 1\n")
    assert.equal(0, code)
    assert.matches("\n42\n", out, 1, true)
  end)

  it("a failing LUA_INIT stops the host with exit 1 and says where", function()
    local out, err, code = run("LUA_INIT=" .. shell_quote("error('bad init')") .. " " .. HOST
      .. " -e " .. shell_quote("print('not reached')"))
    assert.equal(1, code)
    assert.equal("", out)
    assert.matches("^luachat: LUA_INIT:1: bad init\nstack traceback:", err)
    out, err, code = run("LUA_INIT=@/nonexistent/init.lua " .. HOST .. " -e " .. shell_quote("print('not reached')"))
    assert.equal(1, code)
    assert.equal("", out)
    assert.matches("^luachat: cannot open /nonexistent/init.lua", err)
  end)

  it("the chat command line does not run LUA_INIT (it is no Lua interpreter)", function()
    local out, err, code = run("LUA_INIT=" .. shell_quote("print('INIT RAN') os.exit(9)") .. " " .. HOST .. " -p --help")
    assert.equal(0, code, err)
    assert.is_nil(out:find("INIT RAN", 1, true))
  end)

  -- Issue 15 item 8: the prompt as lua.c splits it (a line, `return line`, more lines while incomplete).
  it("the prompt prints expressions, continues an incomplete statement, reports errors and goes on", function()
    local out, err, code = host("-i", table.concat({
      "1 + 1",              -- an expression: printed
      "for i = 1, 2 do",    -- incomplete: continued with >>
      "print('i', i)",
      "end",
      "x = = 1",            -- a syntax error that is not incomplete input: reported at once
      "error('boom')",      -- a runtime error: reported, the session goes on
      "return 'still', 'here'",
      "local t = {",        -- input ends mid-statement
    }, "\n") .. "\n")
    assert.equal(0, code)
    assert.matches("^luachat %d+%.%d+%.%d+ %(Lua 5%.4", out)
    assert.matches("> 1 + 1\n2\n", out, 1, true)
    assert.matches("> for i = 1, 2 do\n>> print('i', i)\n>> end\ni\t1\ni\t2\n", out, 1, true)
    assert.matches("still\there\n", out, 1, true)
    assert.matches("luachat: stdin:1: unexpected symbol near '='\n", err, 1, true)
    assert.matches("luachat: stdin:1: boom\nstack traceback:", err, 1, true)
    assert.matches("luachat: unfinished statement at end of input\n$", err)
  end)

  -- Issue 15 item 7: libcurl is dlopen()ed on first need (src/curl_dl.c); when that fails
  -- (here an empty libcurl.so.4 found first on LD_LIBRARY_PATH), every request is a
  -- structured error, never a crash, and the host still starts.
  it("a libcurl that cannot be loaded is an error result naming the library, not a crash", function()
    local dir = proc.tmpdir()
    proc.write_file(dir .. "/libcurl.so.4", "")
    local env = "LD_LIBRARY_PATH=" .. shell_quote(dir) .. " "
    local out, err, code = run(env .. HOST .. " -v")
    assert.equal(0, code, err)
    assert.matches("\nlibcurl %(cannot load libcurl%.so%.4: [^\n]*libcurl%.so%.4: file too short%)\n$", out)
    out, err, code = run(env .. HOST .. " -e " .. shell_quote([[
local core = require "luachat.core"
print("version", core.curl_version)
local c = luachat.client { base_url = "http://127.0.0.1:9/v1", api_key = "k" }
for _, how in ipairs { "chat", "stream", "chat" } do
  local r, e = c[how](c, { model = "m", messages = { { role = "user", content = "hi" } } })
  print(how, r, e.kind, e.message, e.retryable, e.retries)
end]]))
    assert.equal(0, code, err)
    local why = "cannot load libcurl.so.4: " .. dir .. "/libcurl.so.4: file too short"
    assert.equal("version\tnil\n"
      .. "chat\tnil\tnetwork\t" .. why .. "\tfalse\t0\n"
      .. "stream\tnil\tnetwork\t" .. why .. "\tfalse\t0\n"
      .. "chat\tnil\tnetwork\t" .. why .. "\tfalse\t0\n", out)
    out, err, code = run(env .. "OPENAI_API_KEY=k OPENAI_BASE_URL=http://127.0.0.1:9/v1 " .. HOST .. " -p hi -m m")
    os.execute("rm -rf " .. shell_quote(dir))
    assert.equal(1, code)
    assert.equal("", out)
    assert.matches(why, err, 1, true)
  end)
end)
