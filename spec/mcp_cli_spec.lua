-- The command line with MCP servers: `luachat -p ... --mcp 'CMD ARGS'` runs a
-- stdio server's tools in the agent loop against the local test server,
-- a command that does not exist, a name two servers offer, quoting errors,
-- a config profile's `mcp = {...}` (Streamable HTTP) and /tools in -c.
-- run-tests: once (the CLI runs only in the host; everything here is a subprocess)
local helper = require "spec.mcp.helper"
local server = require "spec.helpers.server"
local proc = require "spec.helpers.proc"
local cjson = require "cjson"

local HOST, q = proc.abspath(proc.host), proc.shell_quote

local call, reply = helper.call, helper.reply

describe("luachat --mcp", function()
  local srv, home

  setup(function()
    helper.peers()
    srv = server.start()
    home = proc.tmpdir()
  end)
  teardown(function()
    if srv then srv:stop() end
    if home then os.execute("rm -rf " .. q(home)) end
  end)
  before_each(function() srv:reset() end)

  local function luachat(args, stdin)
    local env = string.format("env OPENAI_BASE_URL=%s OPENAI_API_KEY=sk-test HOME=%s XDG_CONFIG_HOME=%s "
      .. "XDG_STATE_HOME=%s LUACHAT_PROFILE= LUACHAT_MODEL= LUACHAT_BASE_URL= NO_COLOR=1",
      q(srv.base_url), q(home), q(home .. "/config"), q(home .. "/state"))
    return proc.run(env .. " " .. q(HOST) .. " " .. args, stdin or "")
  end

  local fault = "node " .. helper.FAULT

  it("-p: the model calls a tool of a stdio server; its result goes back to the model", function()
    srv:script { reply { call("c1", "echo", '{"text":"from the server"}') }, reply(nil, "The server said hello.") }
    local out, err, code = luachat("--no-stream -p " .. q("use echo") .. " --mcp " .. q(fault .. " --stderr 'started ok'"))
    assert.equal(0, code, err)
    assert.equal("The server said hello.\n", out)
    assert.matches("echo", err)
    local reqs = srv:requests()
    assert.equal(2, #reqs)
    local first = cjson.decode(reqs[1].body)
    local names = {}
    for _, t in ipairs(first.tools) do names[t["function"].name] = true end
    assert.is_true(names.echo and names.big and names.slow)
    local msgs = cjson.decode(reqs[2].body).messages
    assert.same({ role = "tool", tool_call_id = "c1", content = "from the server" }, msgs[#msgs])
  end)

  it("a stdio server does not see OPENAI_API_KEY (nor any variable outside the minimum)", function()
    srv:script { reply { call("c1", "get-env", "{}") }, reply(nil, "done") }
    local cmd = "env OPENAI_API_KEY=sk-test-SECRET123 MCP_SPEC_OTHER=x " .. q(HOST) .. " --no-stream -p env "
      .. "--mcp " .. q("node " .. helper.EVERYTHING .. " stdio")
    local env = string.format("env OPENAI_BASE_URL=%s HOME=%s XDG_CONFIG_HOME=%s XDG_STATE_HOME=%s "
      .. "LUACHAT_PROFILE= LUACHAT_MODEL= LUACHAT_BASE_URL= NO_COLOR=1 ",
      q(srv.base_url), q(home), q(home .. "/config"), q(home .. "/state"))
    local out, err, code = proc.run(env .. cmd)
    assert.equal(0, code, err)
    assert.equal("done\n", out)
    local msgs = cjson.decode(srv:requests()[2].body).messages
    local seen = cjson.decode(msgs[#msgs].content)
    assert.is_nil(seen.OPENAI_API_KEY)
    assert.is_nil(seen.MCP_SPEC_OTHER)
    assert.equal(home, seen.HOME)
    assert.is_truthy(seen.PATH)
    assert.is_nil(srv:requests()[2].body:find("SECRET123", 1, true))
  end)

  it("an isError result reaches the model as a tool error", function()
    srv:script { reply { call("c1", "fail", "{}") }, reply(nil, "Sorry.") }
    local out, err, code = luachat("--no-stream -p x --mcp " .. q(fault))
    assert.equal(0, code, err)
    assert.equal("Sorry.\n", out)
    local msgs = cjson.decode(srv:requests()[2].body).messages
    assert.equal("error: tool fail failed: the disk is full", msgs[#msgs].content)
  end)

  it("a command that does not exist: exit 1, one line naming it, no request sent", function()
    local out, err, code = luachat("-p x --mcp " .. q("no-such-mcp-server-h3 --flag"))
    assert.equal(1, code)
    assert.equal("", out)
    assert.equal("luachat: --mcp 'no-such-mcp-server-h3 --flag': mcp server 'no-such-mcp-server-h3': "
      .. "cannot start 'no-such-mcp-server-h3': No such file or directory\n", err)
    assert.equal(0, #srv:requests())
  end)

  it("a server that exits at once: exit 1 with its status and stderr", function()
    local _, err, code = luachat("-p x --mcp " .. q(fault .. " --exit-at-once"))
    assert.equal(1, code)
    assert.matches("^luachat: %-%-mcp '.-': mcp server 'fault_server': the server exited with status 3 "
      .. "while waiting for initialize; its stderr ends: fault_server: exiting at once as asked\n$", err)
  end)

  it("a tool name two servers offer: exit 1 naming both, with the command line's way out (a profile)", function()
    local _, err, code = luachat("-p x --mcp " .. q(fault) .. " --mcp " .. q("node " .. helper.FAULT .. " --page 3"))
    assert.equal(1, code)
    assert.equal("luachat: two tools are named 'echo': one from MCP server 'fault_server', one from MCP server "
      .. "'fault_server_2' (list the servers in a config profile's mcp = { NAME = {...} } with prefix = true to name "
      .. "them fault_server__echo and fault_server_2__echo; see docs/MCP.md)\n", err)
  end)

  it("--mcp's label keeps the quoting as typed", function()
    local _, err, code = luachat("-p x --mcp " .. q("sh -c 'echo boom >&2; exit 3'"))
    assert.equal(1, code)
    assert.equal("luachat: --mcp \"sh -c 'echo boom >&2; exit 3'\": mcp server 'sh': the server exited with status 3 "
      .. "while waiting for initialize; its stderr ends: boom\n", err)
  end)

  it("an empty command is a usage error (exit 2) in the command line's words; nothing starts", function()
    local out, err, code = luachat("-p x --mcp " .. q('""'))
    assert.equal(2, code)
    assert.equal("", out)
    assert.matches("^luachat: %-%-mcp '\"\"': the command %(its first word%) is empty\n", err)
    assert.is_nil(err:find("bad argument", 1, true))
    assert.equal(0, #srv:requests())
  end)

  it("a profile's server that cannot start: its name said once", function()
    os.execute("mkdir -p " .. q(home .. "/config/luachat"))
    proc.write_file(home .. "/config/luachat/config.lua", [[
      return { profiles = { work = { base_url = "http://127.0.0.1:9/v1", model = "m", key_optional = true,
        mcp = { bad = { command = { "no-such-mcp-server-f2" } } } } } }]])
    local _, err, code = luachat("-p x -P work")
    os.remove(home .. "/config/luachat/config.lua")
    assert.equal(1, code)
    assert.equal("luachat: profile work: mcp server 'bad': cannot start 'no-such-mcp-server-f2': "
      .. "No such file or directory\n", err)
  end)

  it("a server that dies mid-call: the model reads 'error: tool die failed: ' and the message, nothing more", function()
    srv:script { reply { call("c1", "die", "{}") }, reply(nil, "It died.") }
    local out, err, code = luachat("--no-stream -p x --mcp " .. q(fault))
    assert.equal(0, code, err)
    assert.equal("It died.\n", out)
    local msgs = cjson.decode(srv:requests()[2].body).messages
    assert.matches("^error: tool die failed: mcp server 'fault_server': the server exited with status %d+ while "
      .. "waiting for tools/call die", msgs[#msgs].content)
  end)

  it("Ctrl-C while a script waits for a call: the server hears notifications/cancelled", function()
    local log = home .. "/interrupt.log"
    os.remove(log)
    local code = string.format([[
      local s = assert(luachat.mcp.connect { command = { "node", %q, "--log", %q } })
      s:call("hang")
      print("not reached")]], helper.FAULT, log)
    -- SIGINT once the server has the call (its log says so): an event, not a sleep.
    local out, err, status = proc.run(string.format(
      "%s -e %s & pid=$!; while ! grep -q tools/call %s 2>/dev/null && kill -0 $pid 2>/dev/null; do sleep 0.02; done; "
      .. "kill -INT $pid; wait $pid", q(HOST), q(code), q(log)))
    assert.equal(130, status, err)
    assert.equal("", out)
    assert.matches("interrupted", err, 1, true)
    local call_id, cancelled
    for _, m in ipairs(helper.log_lines(log)) do
      if m.method == "tools/call" then call_id = m.id end
      if m.method == "notifications/cancelled" then cancelled = m.params.requestId end
    end
    assert.is_truthy(call_id)
    assert.equal(call_id, cancelled)
  end)

  it("server log notifications go to the debug log (LUACHAT_LOG=debug)", function()
    local code = string.format([[
      local s = assert(luachat.mcp.connect { command = { "node", %q }, name = "f" })
      assert(s:call("progress", { steps = 1 }))
      s:close()]], helper.FAULT)
    local _, err, status = proc.run("LUACHAT_LOG=debug " .. q(HOST) .. " -e " .. q(code))
    assert.equal(0, status, err)
    assert.matches("luachat%[debug%] mcp f: %[info fault%] progress done\n", err)
    assert.matches("luachat%[debug%] mcp f: connected %(node .- protocol 2025%-11%-25, 15 tools%)", err)
  end)

  it("-c with --mcp: /tools lists the stdio server's tools with its name, one line each, cut to 100 columns", function()
    local _, err, code = luachat("-c --mcp " .. q(fault .. " --long-tool"), "/tools\n")
    assert.equal(0, code, err)
    err = "\n" .. err
    -- The name column fits the longest name (39 > 30: cut to 30, the longer name overflows it).
    assert.matches("\necho                            %(MCP server fault_server%) Echo the text back\n", err)
    local long = err:match("\n(a_tool_with_a_rather_long_name_of_40_ch[^\n]*)\n")
    assert.is_truthy(long, err)
    assert.matches("^a_tool_with_a_rather_long_name_of_40_ch  %(MCP server fault_server%) Long%. Long%.", long)
    assert.equal(98 + #"…", #long)
    for line in err:gmatch("[^\n]+") do
      assert.is_true(utf8.len(line) <= 99, line)
    end
  end)

  it("-c: after a server dies, /tools says it is gone and the model is no longer offered its tools", function()
    srv:script { reply { call("c1", "die", "{}") }, reply(nil, "It died.") }
    local _, err, code = luachat("-c --no-stream --mcp " .. q(fault), "x\n/tools\n")
    assert.equal(0, code, err)
    assert.matches("\nMCP server fault_server is gone %(the server exited with status 7 while waiting for tools/call die", err)
    assert.is_nil(err:find("\necho ", 1, true))
    local reqs = srv:requests()
    assert.equal(2, #reqs)
    assert.is_truthy(cjson.decode(reqs[1].body).tools)
    local offered = cjson.decode(reqs[2].body).tools
    assert.is_true(offered == nil or #offered == 0, reqs[2].body)
  end)

  it("bad quoting is a usage error (exit 2) and starts nothing", function()
    local _, err, code = luachat("-p x --mcp " .. q("node 'unterminated"))
    assert.equal(2, code)
    assert.matches("luachat: --mcp 'node 'unterminated': unterminated ' quote\n", err, 1, true)
  end)

  it("-c: a profile's mcp servers (Streamable HTTP); /tools lists them with their server", function()
    local ev = helper.everything_http()
    os.execute("mkdir -p " .. q(home .. "/config/luachat"))
    proc.write_file(home .. "/config/luachat/config.lua", string.format([[
      return { profiles = { local_mcp = { base_url = %q, key_optional = true, model = "m",
        mcp = { ev = { url = %q, timeout = 30 } } } } }]], srv.base_url, ev.url))
    local out, err, code = luachat("-c -P local_mcp", "/tools\n")
    ev.stop()
    assert.equal(0, code, err)
    assert.equal("", out)
    assert.matches("echo%s+%(MCP server ev%) Echoes back the input", err)
    assert.matches("trigger%-long%-running%-operation%s+%(MCP server ev%)", err)
  end)

  it("a profile's mcp entry is checked like connect's options", function()
    os.execute("mkdir -p " .. q(home .. "/config/luachat"))
    proc.write_file(home .. "/config/luachat/config.lua", [[
      return { profiles = { bad = { base_url = "http://127.0.0.1:9/v1", model = "m", key_optional = true,
        mcp = { fs = { command = { "x" }, timout = 3 } } } } }]])
    local _, err, code = luachat("-p x -P bad")
    assert.equal(1, code)
    assert.matches("profile 'bad': field 'mcp'.*server 'fs': unknown field 'timout' %(did you mean 'timeout'%?%)", err)
  end)
end)
