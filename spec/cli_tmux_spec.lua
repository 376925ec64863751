-- `luachat -c` on a real terminal, driven through tmux: a streamed reply,
-- Ctrl-C cancelling a slow reply without leaving, /save and /load, Ctrl-D.
-- Fails when tmux is not installed (scripts/deps.sh installs it). Every wait polls
-- capture-pane with a bound; the session is always killed in teardown.
-- run-tests: once (it only drives the host in tmux; scripts/run-tests.sh)
package.path = "lua/?.lua;lua/?/init.lua;" .. package.path

local proc = require "spec.helpers.proc"
local HOST, shell_quote = proc.host, proc.shell_quote

local function sh(cmd)
  local ok = os.execute(cmd)
  return ok == true or ok == 0
end

local function capture(cmd)
  local p = io.popen(cmd)
  local s = p:read("a")
  p:close()
  return s
end

local have_tmux = sh("command -v tmux >/dev/null 2>&1")
local have_server, server = pcall(require, "spec.helpers.server")
if not have_server then have_server, server = pcall(dofile, "spec/helpers/server.lua") end
local have_core = pcall(require, "luachat.core")

-- Screen helpers for one tmux session (every wait polls with a bound).
local function tmux_session(SESSION)
  local function pane()
    return capture("tmux capture-pane -p -t " .. SESSION .. " 2>/dev/null")
  end

  -- Poll the screen until `text` appears (plain match), at most `secs` seconds.
  local function wait_for(text, secs)
    local deadline = os.time() + (secs or 10)
    local screen
    repeat
      screen = pane()
      if screen:find(text, 1, true) then return screen end
      sh("sleep 0.1")
    until os.time() > deadline
    error(string.format("timed out waiting for %q; screen:\n%s", text, screen), 2)
  end

  -- Prompt lines on the screen: lines starting with "> " (capture-pane drops
  -- trailing blanks, so an empty prompt shows as ">").
  local function prompts()
    local n = 0
    for line in (pane() .. "\n"):gmatch("([^\n]*)\n") do
      if line == ">" or line:sub(1, 2) == "> " then n = n + 1 end
    end
    return n
  end

  -- Wait until at least n prompts have been shown.
  local function wait_prompts(n, secs)
    local deadline = os.time() + (secs or 10)
    repeat
      if prompts() >= n then return end
      sh("sleep 0.1")
    until os.time() > deadline
    error(string.format("timed out waiting for prompt %d; screen:\n%s", n, pane()), 2)
  end

  local function keys(...)
    local args = {}
    for i = 1, select("#", ...) do args[i] = shell_quote((select(i, ...))) end
    assert(sh("tmux send-keys -t " .. SESSION .. " " .. table.concat(args, " ")))
  end

  local function type_line(s)
    keys("-l", s)
    keys("Enter")
  end

  return { pane = pane, wait_for = wait_for, prompts = prompts, wait_prompts = wait_prompts,
    keys = keys, type_line = type_line }
end

describe("luachat -c in tmux", function()
  if not have_tmux then
    error("tmux is not installed (scripts/deps.sh installs it): the -c specs cannot run")
    return
  end
  if not (have_server and have_core) then
    error("needs the engine and spec/helpers/server.lua")
    return
  end
  local json = require "luachat.json"
  local SESSION = "luachat_test_" .. tostring(os.time()) .. "_" .. tostring(math.random(1e6))
  local srv, home

  local T = tmux_session(SESSION)
  local pane, wait_for, wait_prompts, keys, type_line = T.pane, T.wait_for, T.wait_prompts, T.keys, T.type_line

  local function chunk(text, finish)
    return { json = { id = "chatcmpl-t", object = "chat.completion.chunk", created = 1, model = "gpt-test",
      choices = { { index = 0, delta = text and { content = text } or {}, finish_reason = finish } } } }
  end

  setup(function()
    srv = server.start()
    home = proc.tmpdir()
    local cmd = string.format(
      "env HOME=%s XDG_CONFIG_HOME=%s XDG_STATE_HOME=%s OPENAI_BASE_URL=%s OPENAI_API_KEY=sk-test " ..
      "LUACHAT_PROFILE= LUACHAT_MODEL= LUACHAT_BASE_URL= NO_COLOR=1 %s -c -m gpt-test; echo EXITED:$?; sleep 30",
      shell_quote(home), shell_quote(home .. "/config"), shell_quote(home .. "/state"),
      shell_quote(srv.base_url), shell_quote(HOST))
    assert(sh(string.format("tmux new-session -d -s %s -x 120 -y 40 %s", SESSION, shell_quote(cmd))))
  end)

  teardown(function()
    sh("tmux kill-session -t " .. SESSION .. " 2>/dev/null")
    if srv then srv:stop() end
    if home then sh("rm -rf " .. shell_quote(home)) end
  end)

  it("chats, cancels a slow reply with Ctrl-C, saves and loads, leaves on Ctrl-D", function()
    wait_prompts(1)

    -- 1. A streamed reply.
    srv:script { { sse = { chunk("Hi there, "), chunk("friend."), chunk(nil, "stop") }, done = true } }
    type_line("hello")
    wait_for("Hi there, friend.")
    wait_prompts(2)

    -- 2. A slow reply, cancelled mid-way: back at the prompt, still in the chat.
    local slow = { chunk("Counting: one") }
    for i = 1, 40 do slow[#slow + 1] = { json = chunk(" more" .. i).json, delay = 0.5 } end
    srv:script { { sse = slow, done = true } }
    type_line("count slowly")
    wait_for("Counting: one")
    keys("C-c")
    wait_for("reply cancelled")
    wait_prompts(3)
    assert.is_nil(pane():find("EXITED", 1, true))

    -- 3. The next turn carries the cancelled partial reply in the transcript.
    srv:script { { sse = { chunk("Noted."), chunk(nil, "stop") }, done = true } }
    type_line("and now?")
    wait_for("Noted.")
    local reqs = srv:requests()
    local msgs = reqs[#reqs].json.messages
    local roles, contents = {}, {}
    for i, m in ipairs(msgs) do roles[i], contents[i] = m.role, m.content end
    assert.same({ "user", "assistant", "user", "assistant", "user" }, roles)
    assert.equal("hello", contents[1])
    assert.equal("Hi there, friend.", contents[2])
    assert.equal("count slowly", contents[3])
    assert.matches("^Counting: one", contents[4])
    assert.equal("and now?", contents[5])

    -- 4. /save writes the transcript; /reset forgets; /load brings it back.
    local file = home .. "/chat.json"
    type_line("/save " .. file)
    wait_for("saved 6 messages")
    local f = assert(io.open(file))
    local saved = f:read("a")
    f:close()
    assert.truthy(saved:find("Counting: one", 1, true))
    assert.truthy(json.decode(saved))
    type_line("/reset")
    wait_for("conversation cleared")
    type_line("/load " .. file)
    wait_for("loaded 6 messages")
    srv:script { { sse = { chunk("Welcome back."), chunk(nil, "stop") }, done = true } }
    type_line("still there?")
    wait_for("Welcome back.")
    reqs = srv:requests()
    msgs = reqs[#reqs].json.messages
    assert.equal(7, #msgs)
    assert.equal("hello", msgs[1].content)
    assert.equal("still there?", msgs[7].content)

    -- 5. Ctrl-D leaves with status 0.
    keys("C-d")
    wait_for("EXITED:0")
  end)
end)

-- Ctrl-C while a tool handler blocks (os.execute, luachat.sleep) and the
-- history of a multi-line prompt, on a real terminal.
describe("luachat -c in tmux: blocking tools and history", function()
  if not have_tmux then
    error("tmux is not installed (scripts/deps.sh installs it): the -c specs cannot run")
    return
  end
  if not (have_server and have_core) then
    error("needs the engine and spec/helpers/server.lua")
    return
  end
  local json = require "luachat.json"
  local SESSION = "luachat_test2_" .. tostring(os.time()) .. "_" .. tostring(math.random(1e6))
  local T = tmux_session(SESSION)
  local pane, wait_for, wait_prompts, keys, type_line = T.pane, T.wait_for, T.wait_prompts, T.keys, T.type_line
  local srv, home

  local function reply(msg, finish)
    return { json = { id = "c", object = "chat.completion", created = 1, model = "gpt-test",
      choices = { { index = 0, message = msg, finish_reason = finish or "stop" } } } }
  end
  local function call_reply(name)
    return reply({ role = "assistant", content = json.null, tool_calls = {
      { id = "call_" .. name, type = "function", ["function"] = { name = name, arguments = "{}" } } } }, "tool_calls")
  end

  -- Wait (bounded) until the handler has started: it creates this file first.
  local function wait_file(path)
    for _ = 1, 200 do
      if proc.read_file(path) then return end
      sh("sleep 0.05")
    end
    error("timed out waiting for " .. path .. "; screen:\n" .. pane(), 2)
  end

  setup(function()
    srv = server.start()
    home = proc.tmpdir()
    -- A history file as older versions wrote it: a line per entry, no "#<time>" marks.
    sh("mkdir -p " .. shell_quote(home .. "/state/luachat"))
    proc.write_file(home .. "/state/luachat/history", "old one\nold two\n")
    proc.write_file(home .. "/tools.lua", string.format([[
      local luachat = require "luachat"
      local home = %q
      return {
        luachat.tool { name = "slow_exec", handler = function()
          io.open(home .. "/in-exec", "w"):close()
          os.execute("sleep 2")
          return "exec finished"
        end },
        luachat.tool { name = "slow_sleep", handler = function()
          io.open(home .. "/in-sleep", "w"):close()
          luachat.sleep(30)
          return "sleep finished"
        end },
      }]], home))
    local cmd = string.format(
      "env HOME=%s XDG_CONFIG_HOME=%s XDG_STATE_HOME=%s OPENAI_BASE_URL=%s OPENAI_API_KEY=sk-test " ..
      "LUACHAT_PROFILE= LUACHAT_MODEL= LUACHAT_BASE_URL= NO_COLOR=1 %s -c -m gpt-test --no-stream --tools %s; " ..
      "echo EXITED:$?; sleep 30",
      shell_quote(home), shell_quote(home .. "/config"), shell_quote(home .. "/state"),
      shell_quote(srv.base_url), shell_quote(HOST), shell_quote(home .. "/tools.lua"))
    assert(sh(string.format("tmux new-session -d -s %s -x 120 -y 40 %s", SESSION, shell_quote(cmd))))
  end)

  teardown(function()
    sh("tmux kill-session -t " .. SESSION .. " 2>/dev/null")
    if srv then srv:stop() end
    if home then sh("rm -rf " .. shell_quote(home)) end
  end)

  it("Ctrl-C during a blocking handler cancels the turn; the model never hears of it", function()
    wait_prompts(1)

    -- 0. An older history file still reads as a line per entry.
    keys("Up")
    wait_for("> old two")
    assert.is_nil(pane():find("old one", 1, true))
    keys("C-u")

    -- 1. os.execute("sleep 2"): the turn stops once the command returns.
    srv:script { call_reply("slow_exec"), reply { role = "assistant", content = "should not be asked" } }
    type_line("run the command")
    wait_file(home .. "/in-exec")
    keys("C-c")
    wait_for("[reply cancelled]")
    wait_prompts(2)
    assert.equal(1, #srv:requests())

    -- 2. luachat.sleep(30): cancelled at once, no "interrupted" tool message.
    srv:reset()
    srv:script { call_reply("slow_sleep"), reply { role = "assistant", content = "should not be asked" } }
    type_line("sleep on it")
    wait_file(home .. "/in-sleep")
    keys("C-c")
    wait_for("[reply cancelled]")
    wait_prompts(3)
    assert.equal(1, #srv:requests())

    -- 3. Both turns were rolled back: the next request starts clean.
    srv:reset()
    srv:script { reply { role = "assistant", content = "Fine." } }
    type_line("next")
    wait_for("Fine.")
    local msgs = srv:requests()[1].json.messages
    assert.same({ { role = "user", content = "next" } }, msgs)
    assert.is_nil(pane():find("EXITED", 1, true))
  end)

  it("a multi-line prompt is one history entry: Up brings it back whole, and the file keeps it", function()
    wait_prompts(1)
    local n = T.prompts()
    srv:reset()
    srv:script { reply { role = "assistant", content = "Got it." }, reply { role = "assistant", content = "Again." } }
    type_line('"""')
    type_line("line one")
    type_line("line two")
    type_line('"""')
    wait_for("Got it.")
    wait_prompts(n + 1)
    keys("Up")
    keys("Enter")
    wait_for("Again.")
    local reqs = srv:requests()
    assert.equal(2, #reqs)
    local first, again = reqs[1].json.messages, reqs[2].json.messages
    assert.equal("line one\nline two", first[#first].content)
    assert.equal("line one\nline two", again[#again].content)
    keys("C-d")
    wait_for("EXITED:0")
    local hist = proc.read_file(home .. "/state/luachat/history") or ""
    assert.matches("\n#%d+\nline one\nline two\n", "\n" .. hist)
  end)
end)

-- A tmux session running the host's Lua prompt (no LUA_INIT, a fresh HOME), for
-- the describe block that calls this: started in its setup, killed in its
-- teardown. Returns the screen helpers.
local function lua_prompt_session(prefix)
  local SESSION = prefix .. tostring(os.time()) .. "_" .. tostring(math.random(1e6))
  local home
  setup(function()
    home = proc.tmpdir()
    local cmd = string.format("env -u LUA_INIT -u LUA_INIT_5_4 HOME=%s %s; echo EXITED:$?; sleep 30",
      shell_quote(home), shell_quote(HOST))
    assert(sh(string.format("tmux new-session -d -s %s -x 120 -y 40 %s", SESSION, shell_quote(cmd))))
  end)
  teardown(function()
    sh("tmux kill-session -t " .. SESSION .. " 2>/dev/null")
    if home then sh("rm -rf " .. shell_quote(home)) end
  end)
  return tmux_session(SESSION)
end

-- Issue 15 item 8: the Lua prompt (`luachat` on a terminal) reads a line,
-- tries `return line`, and continues an incomplete statement with ">> "; the
-- whole statement is one history entry, as in lua5.4.
describe("the Lua prompt in tmux", function()
  if not have_tmux then
    error("tmux is not installed (scripts/deps.sh installs it): the prompt specs cannot run")
    return
  end
  local T = lua_prompt_session("luachat_repl_")

  local function count(screen, text)
    local n, at = 0, 1
    while true do
      local i = screen:find(text, at, true)
      if not i then return n end
      n, at = n + 1, i + #text
    end
  end

  it("continues an incomplete statement, prints expressions, keeps the statement as one history entry", function()
    T.wait_for("Ctrl-D to leave")
    T.wait_prompts(1)
    T.type_line("6 * 7")
    T.wait_for("\n42\n")
    T.type_line("for i = 1, 2 do")
    T.wait_for("do\n>>") -- the continuation prompt (capture-pane drops its blank), nothing run yet
    T.type_line("print('row' .. i)")
    T.type_line("end")
    T.wait_for("row2")
    assert.equal(1, count(T.pane(), "row1"))
    -- Up brings back the whole loop (one entry), Enter runs it again
    T.keys("Up")
    T.keys("Enter")
    local deadline = os.time() + 10
    while count(T.pane(), "row2") < 2 and os.time() <= deadline do sh("sleep 0.1") end
    assert.equal(2, count(T.pane(), "row2"), T.pane())
    T.type_line("x = = 1") -- not incomplete: an error at once, no ">>"
    T.wait_for("unexpected symbol near '='")
    T.keys("C-d")
    T.wait_for("EXITED:0")
  end)
end)

-- Ctrl-C on a ">>" continuation line drops the unfinished statement and shows
-- a fresh "> " (as bash drops an unfinished loop); SIGTERM at the prompt stops
-- a child the session started and the host dies of the signal (143).
describe("the Lua prompt in tmux: Ctrl-C on a continuation line, SIGTERM", function()
  if not have_tmux then
    error("tmux is not installed (scripts/deps.sh installs it): the prompt specs cannot run")
    return
  end
  local T = lua_prompt_session("luachat_repl2_")

  it("Ctrl-C at '>>' discards the pending lines; SIGTERM stops a child and exits 143", function()
    T.wait_for("Ctrl-D to leave")
    T.wait_prompts(1)
    T.type_line("for i = 1, 2 do")
    T.wait_for("do\n>>")
    T.keys("C-c")
    T.wait_prompts(2) -- a fresh "> " after the ^C, not ">> "
    T.type_line("'after' .. 'cancel'")
    local screen = T.wait_for("aftercancel\n")
    assert.is_nil(screen:find("unexpected symbol", 1, true), screen)
    T.type_line("p = require('luachat.process').spawn { argv = { 'sleep', '106' } }")
    T.type_line("print('PIDS:' .. p:pid() .. ':' .. io.open('/proc/self/stat'):read('n') .. ':')")
    screen = T.wait_for("PIDS:")
    local child, host = screen:match("\nPIDS:(%d+):(%d+):")
    assert.truthy(child, screen)
    assert(sh("kill -TERM " .. host))
    T.wait_for("EXITED:143")
    local deadline = os.time() + 10
    while proc.read_file("/proc/" .. child .. "/stat") and os.time() <= deadline do sh("sleep 0.05") end
    local stat = proc.read_file("/proc/" .. child .. "/stat")
    assert.is_true(stat == nil or stat:match("^%d+ %b() (%a)") == "Z", "the child is gone")
  end)
end)

-- SIGTERM to `luachat -c`, at its prompt or during a streamed reply: the chat
-- loop, which goes on after Ctrl-C, ends; a child started by a --tools file is
-- stopped; the host dies of the signal (143).
describe("luachat -c in tmux: SIGTERM", function()
  if not have_tmux then
    error("tmux is not installed (scripts/deps.sh installs it): the -c specs cannot run")
    return
  end
  if not (have_server and have_core) then
    error("needs the engine and spec/helpers/server.lua")
    return
  end
  local SESSION = "luachat_term_" .. tostring(os.time()) .. "_" .. tostring(math.random(1e6))
  local T = tmux_session(SESSION)
  local srv, home

  local function chunk(text)
    return { json = { id = "chatcmpl-t", object = "chat.completion.chunk", created = 1, model = "gpt-test",
      choices = { { index = 0, delta = { content = text }, finish_reason = nil } } } }
  end

  setup(function() srv = server.start() end)
  teardown(function() if srv then srv:stop() end end)

  before_each(function()
    srv:reset()
    home = proc.tmpdir()
    proc.write_file(home .. "/tools.lua", string.format([[
KEEP = require('luachat.process').spawn { argv = { 'sleep', '109' } }
local f = io.open(%q, 'w') f:write(KEEP:pid(), ' ', io.open('/proc/self/stat'):read('n'), '\n') f:close()
return {}
]], home .. "/pids"))
    local cmd = string.format(
      "env HOME=%s XDG_CONFIG_HOME=%s XDG_STATE_HOME=%s OPENAI_BASE_URL=%s OPENAI_API_KEY=sk-test " ..
      "LUACHAT_PROFILE= LUACHAT_MODEL= LUACHAT_BASE_URL= NO_COLOR=1 %s -c -m gpt-test --tools %s; echo EXITED:$?; sleep 30",
      shell_quote(home), shell_quote(home .. "/config"), shell_quote(home .. "/state"), shell_quote(srv.base_url),
      shell_quote(HOST), shell_quote(home .. "/tools.lua"))
    assert(sh(string.format("tmux new-session -d -s %s -x 120 -y 40 %s", SESSION, shell_quote(cmd))))
  end)

  after_each(function()
    sh("tmux kill-session -t " .. SESSION .. " 2>/dev/null")
    if home then sh("rm -rf " .. shell_quote(home)) end
  end)

  -- Send SIGTERM to the host; it exits 143 and the --tools file's child is gone.
  local function terminate()
    local child, host = (proc.read_file(home .. "/pids") or ""):match("(%d+) (%d+)")
    assert.truthy(child)
    assert(sh("kill -TERM " .. host))
    local screen = T.wait_for("EXITED:143")
    local deadline = os.time() + 10
    while proc.read_file("/proc/" .. child .. "/stat") and os.time() <= deadline do sh("sleep 0.05") end
    local stat = proc.read_file("/proc/" .. child .. "/stat")
    assert.is_true(stat == nil or stat:match("^%d+ %b() (%a)") == "Z", "the child is gone")
    return screen
  end

  it("at the prompt: ends the session, stops the child, exits 143", function()
    T.wait_prompts(1)
    T.keys("-l", "half typed")
    T.wait_for("> half typed")
    terminate()
  end)

  it("during a streamed reply: the turn is not just cancelled, the session ends, exit 143", function()
    T.wait_prompts(1)
    local slow = { chunk("Counting: one") }
    for i = 1, 40 do slow[#slow + 1] = { json = chunk(" more" .. i).json, delay = 0.5 } end
    srv:script { { sse = slow, done = true } }
    T.type_line("count slowly")
    T.wait_for("Counting: one")
    terminate()
  end)
end)
