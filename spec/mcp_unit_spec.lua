-- luachat.mcp's parts without a server: the JSON-RPC session over a fake
-- transport (ids, answers in any order, unknown ids, timeouts and
-- notifications/cancelled, progress, the peer's requests), results as model
-- text, tool names, the agent's expansion of sessions (duplicates, prefix),
-- connect's option checks, --mcp word splitting.
local luachat = require "luachat"
local json = require "luachat.json"
local sched = require "luachat.sched"
local rpc_mod = require "luachat.mcp_rpc"
local mcp = require "luachat.mcp"
local mcp_tools = require "luachat.mcp_tools"
local cli_options = require "luachat.cli_options"

-- A transport that keeps what is sent.
local function fake()
  local t = { sent = {}, abandoned = {} }
  function t:send(text, req)
    self.sent[#self.sent + 1] = json.decode(text)
    return true
  end
  function t:abandon(req) self.abandoned[#self.abandoned + 1] = req.id end
  return t
end

local function response(id, result) return json.encode { jsonrpc = "2.0", id = id, result = result } end

describe("luachat.mcp_rpc", function()
  after_each(function() assert.equal(0, sched.live_tasks(), "a task was left running") end)

  it("matches answers to requests by id, whatever their order; an unknown id is dropped", function()
    local t = fake()
    local rpc = rpc_mod.new { name = "srv", transport = t }
    local a = luachat.spawn(function() return rpc:request("tools/call", { name = "a" }) end)
    local b = luachat.spawn(function() return rpc:request("tools/call", { name = "b" }) end)
    assert.equal(2, #t.sent)
    assert.equal("a", t.sent[1].params.name)
    local ida, idb = t.sent[1].id, t.sent[2].id
    assert.are_not.equal(ida, idb)
    rpc:receive(response(424242, { v = "nobody" }))
    rpc:receive(response(idb, { v = "B" }))
    rpc:receive(response(ida, { v = "A" }))
    assert.equal("A", a:wait().v)
    assert.equal("B", b:wait().v)
    assert.equal(0, rpc:in_flight())
  end)

  it("a batch of answers (a JSON array) is taken apart", function()
    local t = fake()
    local rpc = rpc_mod.new { name = "srv", transport = t }
    local a = luachat.spawn(function() return rpc:request("x") end)
    local b = luachat.spawn(function() return rpc:request("y") end)
    rpc:receive("[" .. response(t.sent[2].id, { n = 2 }) .. "," .. response(t.sent[1].id, { n = 1 }) .. "]")
    assert.equal(1, a:wait().n)
    assert.equal(2, b:wait().n)
  end)

  it("an error answer is an mcp error naming the server, with the JSON-RPC code", function()
    local t = fake()
    local rpc = rpc_mod.new { name = "srv", transport = t }
    local task = luachat.spawn(function() return rpc:request("tools/call", { name = "x" }) end)
    rpc:receive(json.encode { jsonrpc = "2.0", id = t.sent[1].id, error = { code = -32602, message = "bad args" } })
    local res, err = task:wait()
    assert.is_nil(res)
    assert.equal("mcp", err.kind)
    assert.equal("mcp server 'srv': tools/call x failed: bad args (JSON-RPC error -32602)", err.message)
    assert.equal(-32602, err.code)
  end)

  it("a response with neither result nor error is invalid JSON-RPC", function()
    local t = fake()
    local rpc = rpc_mod.new { name = "srv", transport = t }
    local task = luachat.spawn(function() return rpc:request("tools/list") end)
    rpc:receive(json.encode { jsonrpc = "2.0", id = t.sent[1].id })
    local _, err = task:wait()
    assert.equal("mcp server 'srv': invalid JSON-RPC response to tools/list: no result and no error", err.message)
  end)

  it("a timeout fails the request and sends notifications/cancelled with its id", function()
    local t = fake()
    local rpc = rpc_mod.new { name = "srv", transport = t }
    rpc:receive("not json at all")
    local res, err = luachat.spawn(function()
      return rpc:request("tools/call", { name = "slow" }, { timeout = 0.05 })
    end):wait()
    assert.is_nil(res)
    assert.equal("mcp", err.kind)
    assert.matches("^mcp server 'srv': tools/call slow timed out after 0.05 s %(it also wrote 1 line that is not JSON%-RPC, the last: 'not json at all'%)$", err.message)
    local cancel = t.sent[2]
    assert.equal("notifications/cancelled", cancel.method)
    assert.equal(t.sent[1].id, cancel.params.requestId)
    assert.same({ t.sent[1].id }, t.abandoned)
    -- The late answer is for nobody now.
    rpc:receive(response(t.sent[1].id, {}))
    assert.equal(0, rpc:in_flight())
  end)

  it("cancelling the task that waits cancels its request", function()
    local t = fake()
    local rpc = rpc_mod.new { name = "srv", transport = t }
    local task = luachat.spawn(function() return rpc:request("tools/call", { name = "hang" }) end)
    assert.equal(1, rpc:in_flight())
    assert.is_true(task:cancel())
    assert.equal(0, rpc:in_flight())
    assert.equal("notifications/cancelled", t.sent[2].method)
    assert.equal(t.sent[1].id, t.sent[2].params.requestId)
    assert.same({ t.sent[1].id }, t.abandoned)
    local res, err = task:wait()
    assert.is_nil(res)
    assert.equal("cancelled", err.kind)
    assert.is_false(task:cancel())
  end)

  it("progress notifications reach the request's on_progress; a failing callback fails the call", function()
    local t = fake()
    local rpc = rpc_mod.new { name = "srv", transport = t }
    local seen = {}
    local task = luachat.spawn(function()
      return rpc:request("tools/call", { name = "p" }, { on_progress = function(p, total, msg)
        seen[#seen + 1] = { p, total, msg }
        if p == 3 then error("boom") end
      end })
    end)
    local token = t.sent[1].params._meta.progressToken
    local function progress(p, msg)
      rpc:receive(json.encode { jsonrpc = "2.0", method = "notifications/progress",
        params = { progressToken = token, progress = p, total = 3, message = msg } })
    end
    progress(1, "one")
    progress(2)
    assert.same({ { 1, 3, "one" }, { 2, 3 } }, seen)
    progress(3)
    local res, err = task:wait()
    assert.is_nil(res)
    assert.equal("callback", err.kind)
    assert.matches("on_progress failed: .*boom", err.message)
    assert.equal("notifications/cancelled", t.sent[2].method)
  end)

  it("answers ping, refuses what it has no handler for, and hands on notifications", function()
    local t = fake()
    local notes = {}
    local rpc = rpc_mod.new { name = "srv", transport = t,
      on_notification = function(method, params) notes[#notes + 1] = { method, params.x } end }
    rpc:receive(json.encode { jsonrpc = "2.0", id = "p1", method = "ping" })
    assert.same({ jsonrpc = "2.0", id = "p1", result = {} }, t.sent[1])
    rpc:receive(json.encode { jsonrpc = "2.0", id = 7, method = "roots/list" })
    luachat.run()
    assert.equal(7, t.sent[2].id)
    assert.equal(rpc_mod.METHOD_NOT_FOUND, t.sent[2].error.code)
    rpc:receive(json.encode { jsonrpc = "2.0", method = "notifications/x", params = { x = 1 } })
    assert.same({ { "notifications/x", 1 } }, notes)
  end)

  it("a dead transport fails every pending request and every later one", function()
    local t = fake()
    local rpc = rpc_mod.new { name = "srv", transport = t }
    local a = luachat.spawn(function() return rpc:request("a") end)
    local b = luachat.spawn(function() return rpc:request("b") end)
    rpc:fail_all(rpc_mod.error("srv", "the server exited with status 7"))
    local _, ea = a:wait()
    local _, eb = b:wait()
    assert.equal("mcp server 'srv': the server exited with status 7", ea.message)
    assert.equal(ea.message, eb.message)
    assert.are_not.equal(ea, eb)
    local _, ec = rpc:request("c")
    assert.equal(ea.message, ec.message)
  end)
end)

describe("luachat.mcp_tools", function()
  it("turns a CallToolResult into the model's text", function()
    local rt = mcp_tools.result_text
    assert.equal("a\nb", rt { content = { { type = "text", text = "a" }, { type = "text", text = "b" } } })
    assert.equal('{"a":[1,"x"],"b":2}', rt { content = json.array {}, structuredContent = { b = 2, a = { 1, "x" } } })
    assert.equal("text wins", rt { content = { { type = "text", text = "text wins" } }, structuredContent = { a = 1 } })
    assert.equal("[image: image/png, 1234 bytes]\n[audio: audio/wav, 3 bytes]", rt { content = {
      { type = "image", mimeType = "image/png", data = string.rep("AAAA", 411) .. "AA==" },
      { type = "audio", mimeType = "audio/wav", data = "AAAA" } } })
    assert.equal("resource text", rt { content = { { type = "resource",
      resource = { uri = "file:///a", mimeType = "text/plain", text = "resource text" } } } })
    assert.equal("[resource link: file:///b (b)]", rt { content = { { type = "resource_link", uri = "file:///b", name = "b" } } })
    local text, err = rt { isError = true, content = { { type = "text", text = "the disk is full" } } }
    assert.is_nil(text)
    assert.equal("the disk is full", err)
    assert.equal("", rt { content = json.array {} })
  end)

  it("makes model-safe tool names", function()
    assert.equal("git_status", mcp_tools.model_name("git.status"))
    assert.equal("a_b-c", mcp_tools.model_name("a/b-c"))
    assert.equal(64, #mcp_tools.model_name(string.rep("x", 80)))
  end)

  -- A session with a fixed tool list (no server).
  local function session(name, names, prefix)
    local list = {}
    for i, n in ipairs(names) do list[i] = { name = n, description = "d " .. n, inputSchema = { type = "object" } } end
    return setmetatable({ name = name, tool_list = list, generation = 1, prefix = prefix or false, closed = true },
      mcp.Session)
  end

  it("an agent's tools: a session stands for all its tools; a name two servers offer is an error naming both", function()
    -- luachat.agent as require "luachat.agent" gives it, the instance whose expansion loads the
    -- luachat.mcp_tools this file loaded (which makes its tools with that same instance): the host
    -- preloads `luachat` before busted snapshots package.loaded, so with several files in one busted
    -- process the table still holds the agent module an earlier file cached on it (agent_spec.lua),
    -- whose Tool metatable the tools made here do not have (as in hostile_input_spec).
    local agent_mod = require "luachat.agent"
    local c = luachat.client { base_url = "http://127.0.0.1:9/v1", api_key = "k" }
    local weather = agent_mod.tool { name = "weather", handler = function() return "sun" end }
    local a = agent_mod { client = c, model = "m", tools = { session("fs", { "read", "list" }), weather } }
    assert.same({ "read", "list", "weather" }, { a.tools[1].name, a.tools[2].name, a.tools[3].name })
    assert.equal("fs", a.tools[1].server)
    local ok, err = pcall(agent_mod, { client = c, model = "m",
      tools = { session("web", { "search" }), session("docs", { "search" }) } })
    assert.is_false(ok)
    assert.equal("mcp", err.kind)
    assert.equal("two tools are named 'search': one from MCP server 'web', one from MCP server 'docs' "
      .. "(connect with prefix = true, or pass prefix = true to luachat.agent, to name them web__search and docs__search)",
      err.message)
    local ok2, err2 = pcall(agent_mod, { client = c, model = "m",
      tools = { weather, session("w", { "weather" }) } })
    assert.is_false(ok2)
    assert.matches("two tools are named 'weather': one from a Lua tool, one from MCP server 'w'", err2.message, 1, true)
    local p = agent_mod { client = c, model = "m", prefix = true,
      tools = { session("web", { "search" }), session("docs", { "search" }) } }
    assert.same({ "web__search", "docs__search" }, { p.tools[1].name, p.tools[2].name })
    assert.equal("search", p.tools[2].mcp_name)
    local q = agent_mod { client = c, model = "m",
      tools = { session("web", { "search" }, true), session("docs", { "search" }) } }
    assert.same({ "web__search", "search" }, { q.tools[1].name, q.tools[2].name })
  end)
end)

describe("luachat.mcp.connect options", function()
  it("raises for programming errors, naming the option", function()
    local function msg(opts)
      local ok, e = pcall(mcp.connect, opts)
      assert.is_false(ok)
      return tostring(e)
    end
    assert.matches("give exactly one of command %(a stdio server%) and url", msg {})
    assert.matches("give exactly one of command", msg { command = { "x" }, url = "http://h/mcp" })
    assert.matches("'command'", msg { command = {} })
    assert.matches("item 2 is a number", msg { command = { "x", 2 } })
    assert.matches("did you mean 'timeout'", msg { command = { "x" }, timout = 3 })
    assert.matches("'url'", msg { url = "ftp://h" })
    assert.matches("env, inherit_env and cwd are for command", msg { url = "http://h/mcp", cwd = "/" })
    assert.matches("env, inherit_env and cwd are for command", msg { url = "http://h/mcp", inherit_env = true })
    assert.matches("'inherit_env'", msg { command = { "x" }, inherit_env = "yes" })
    assert.matches("headers, ca_file and listen are for url", msg { command = { "x" }, headers = {} })
    assert.matches("control character in header", msg { url = "http://h/mcp", headers = { A = "x\r\nB: y" } })
    assert.matches("client = a luachat client", msg { command = { "x" }, sampling = { model = "m" } })
  end)

  it("names a server after the package or script a command runs, or a URL's host", function()
    assert.equal("server-filesystem", mcp.default_name { command = { "npx", "-y", "@modelcontextprotocol/server-filesystem", "/srv" } })
    assert.equal("fault_server", mcp.default_name { command = { "node", "/x/spec/mcp/fault_server.mjs", "--page", "2" } })
    assert.equal("mcp-server-git", mcp.default_name { command = { "uvx", "mcp-server-git@1.2", "--repository", "." } })
    assert.equal("my-server", mcp.default_name { command = { "/usr/local/bin/my-server" } })
    assert.equal("server-everything", mcp.default_name { command = { "node",
      "/x/node_modules/@modelcontextprotocol/server-everything/dist/index.js", "stdio" } })
    assert.equal("example.com", mcp.default_name { url = "https://user:pw@example.com/mcp" })
  end)
end)

describe("--mcp word splitting", function()
  it("splits like a shell, quotes and backslashes included, and expands nothing", function()
    local w = cli_options.split_words
    assert.same({ "npx", "-y", "@scope/pkg", "/srv" }, w("npx -y @scope/pkg /srv"))
    assert.same({ "a", "b c", 'd " e $x \\n', "f g", "hi", "" }, w([[  a   'b c'  "d \" e \$x \n"  f\ g h''i ""  ]]))
    assert.same({ "$HOME", "~", "*", ";", "|" }, w([[$HOME ~ * ; |]]))
    assert.same({}, w("   "))
    local _, why = w("a 'b")
    assert.equal("unterminated ' quote", why)
    _, why = w('a "b')
    assert.equal('unterminated " quote', why)
  end)

  it("--mcp is repeatable and checked as a usage error", function()
    local o = assert(cli_options.parse { "-p", "x", "--mcp", "a b", "--mcp=c 'd e'" })
    assert.same({ { "a", "b" }, { "c", "d e" } }, o.mcp)
    local _, err = cli_options.parse { "-p", "x", "--mcp", "a 'b" }
    assert.equal("--mcp 'a 'b': unterminated ' quote", err)
    _, err = cli_options.parse { "-c", "--mcp", "  " }
    assert.equal("--mcp needs a command (--mcp 'CMD ARGS')", err)
  end)
end)

describe("the luachat table", function()
  it("has the modules docs/MCP.md names: luachat.mcp_tools, luachat.mcp_stdio, luachat.process", function()
    local fresh = require "luachat"
    assert.equal(require("luachat.mcp_tools").result_text, fresh.mcp_tools.result_text)
    assert.equal(64 * 1024 * 1024, fresh.mcp_stdio.MAX_MESSAGE)
    assert.same({ "HOME", "LOGNAME", "PATH", "SHELL", "TERM", "USER" }, fresh.mcp_stdio.DEFAULT_ENV)
    assert.equal("function", type(fresh.process.spawn))
    assert.equal("text", fresh.mcp_tools.result_text { content = { { type = "text", text = "text" } } })
  end)
end)
