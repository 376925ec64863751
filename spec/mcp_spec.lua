-- luachat.mcp over stdio: the reference servers (server-everything,
-- server-filesystem, pinned in spec/mcp/package-lock.json) and
-- spec/mcp/fault_server.mjs for what they cannot do: garbage on stdout, a
-- response for an unknown id, a 10 MB result, calls in flight at once, a
-- server dying mid-call, a timeout, sampling, list_changed, pages, versions.
-- Also an agent run using an MCP tool against the local test server.
local helper = require "spec.mcp.helper"
local server = require "spec.helpers.server"
local proc = require "spec.helpers.proc"
local luachat = require "luachat"
local core = require "luachat.core"
local sched = require "luachat.sched"
local mcp_tools = require "luachat.mcp_tools"

local call, reply = helper.call, helper.reply

describe("luachat.mcp over stdio", function()
  local srv, dir

  setup(function()
    helper.peers()
    srv = server.start()
    dir = proc.tmpdir()
  end)
  teardown(function()
    if srv then srv:stop() end
    if dir then os.execute("rm -rf " .. proc.shell_quote(dir)) end
  end)
  before_each(function() srv:reset() end)
  after_each(function()
    collectgarbage() -- sessions a test dropped end their children now
    assert.equal(0, core.live(), "a transfer or a process was left running")
    assert.equal(0, sched.live_tasks(), "a task was left running")
  end)

  -- A session with the fault server; its --log file (every message it received).
  local function fault(...)
    local log = dir .. "/log" .. tostring(math.random(1, 1e9))
    local s, err = luachat.mcp.connect { command = helper.fault("--log", log, ...), name = "fault", timeout = 30 }
    return s, err, log
  end

  -- Messages the fault server received with this method.
  local function received(log, method)
    local out = {}
    for _, m in ipairs(helper.log_lines(log)) do
      if m.method == method then out[#out + 1] = m end
    end
    return out
  end

  describe("the reference servers", function()
    it("server-everything: initialize, tools/list, tools/call, ping; close ends the child", function()
      local s = assert(luachat.mcp.connect { command = helper.everything() })
      assert.equal("server-everything", s.name)
      assert.equal("2025-11-25", s.protocol_version)
      local names = {}
      for _, t in ipairs(assert(s:tools())) do names[t.name] = t end
      assert.is_truthy(names.echo and names["get-sum"])
      local r = assert(s:call("get-sum", { a = 2, b = 40 }))
      assert.matches("42", mcp_tools.result_text(r))
      assert.is_true(s:ping())
      local pid = s.transport.proc:pid()
      assert.is_true(helper.alive(pid))
      s:close()
      assert.is_false(helper.alive(pid))
      s:close() -- idempotent
    end)

    it("a stdio server gets only HOME, LOGNAME, PATH, SHELL, TERM, USER of our environment plus env; inherit_env = true gives all", function()
      -- Our own environment (busted's), to find variables outside the default list.
      local ours = {}
      for kv in (proc.read_file("/proc/self/environ") or ""):gmatch("[^%z]+") do
        local k, v = kv:match("^([^=]+)=(.*)$")
        if k then ours[k] = v end
      end
      local defaults = { HOME = true, LOGNAME = true, PATH = true, SHELL = true, TERM = true, USER = true }
      local other
      for k, v in pairs(ours) do
        if not defaults[k] and v ~= "" and v:sub(1, 2) ~= "()" then other = k break end
      end
      assert.is_truthy(other, "the spec process has no variable outside the default list")
      assert.is_truthy(ours.PATH)
      local function server_env(opts)
        opts.command = helper.everything()
        local s <close> = assert(luachat.mcp.connect(opts))
        return luachat.json.decode(assert(mcp_tools.result_text(assert(s:call("get-env", {})))))
      end
      local env = server_env { env = { MCP_SPEC_TOKEN = "given", HOME = false } }
      local expect = { MCP_SPEC_TOKEN = "given" }
      for k in pairs(defaults) do
        if k ~= "HOME" and ours[k] then expect[k] = ours[k] end
      end
      -- node may add nothing of its own to process.env: exactly these.
      assert.same(expect, env)
      env = server_env { inherit_env = true, env = { MCP_SPEC_TOKEN = "given" } }
      assert.equal(ours[other], env[other])
      assert.equal("given", env.MCP_SPEC_TOKEN)
      assert.equal(ours.PATH, env.PATH)
    end)

    it("server-filesystem: reads a file in the allowed directory; a path outside is an isError result", function()
      proc.write_file(dir .. "/a.txt", "alpha\nbeta\n")
      local fs <close> = assert(luachat.mcp.connect { command = helper.filesystem(dir), name = "fs" })
      local r = assert(fs:call("read_text_file", { path = dir .. "/a.txt" }))
      assert.equal("alpha\nbeta\n", mcp_tools.result_text(r))
      local bad = assert(fs:call("read_text_file", { path = "/etc/passwd" }))
      assert.is_true(bad.isError)
      local text, err_text = mcp_tools.result_text(bad)
      assert.is_nil(text)
      assert.matches("outside allowed directories", err_text)
    end)

    it("an agent run uses an MCP tool: arguments checked, the file's text goes back to the model", function()
      proc.write_file(dir .. "/notes.txt", "the launch code is 1234")
      local fs <close> = assert(luachat.mcp.connect { command = helper.filesystem(dir), name = "fs" })
      srv:script {
        reply { call("c1", "read_text_file", string.format('{"path":%q}', dir .. "/notes.txt")),
                call("c2", "read_text_file", '{"path": 7}') },
        reply(nil, "The code is 1234."),
      }
      local client = luachat.client { base_url = srv.base_url, api_key = "sk-x" }
      local agent = luachat.agent { client = client, model = "m", tools = { fs } }
      local res = assert(agent:run("what is the code?"))
      assert.equal("The code is 1234.", res.content)
      local body = require("cjson").decode(srv:requests()[2].body)
      local msgs = body.messages
      assert.same({ role = "tool", tool_call_id = "c1", content = "the launch code is 1234" }, msgs[#msgs - 1])
      assert.equal("error: invalid arguments for read_text_file: $.path: expected string, got integer", msgs[#msgs].content)
      local sent = {}
      for _, t in ipairs(body.tools) do sent[t["function"].name] = t["function"] end
      assert.same({ "path" }, sent.read_text_file.parameters.required)
    end)

    it("a long-running call reports progress while other tasks keep running", function()
      local s <close> = assert(luachat.mcp.connect { command = helper.everything(), name = "ev" })
      local progress, started = {}, false
      local long = luachat.spawn(function()
        return s:call("trigger-long-running-operation", { duration = 3, steps = 3 }, {
          on_progress = function(p, total) progress[#progress + 1] = { p, total } started = true end })
      end)
      srv:script { reply(nil, "meanwhile") }
      local other = luachat.spawn(function()
        while not started do luachat.sleep(0.02) end
        local c = luachat.client { base_url = srv.base_url, api_key = "sk-x" }
        local res = assert(c:chat { model = "m", messages = { { role = "user", content = "hi" } } })
        local echo = assert(s:call("echo", { message = "in between" }))
        return long:is_done(), res.choices[1].message.content, echo.content[1].text
      end)
      local long_done, text, echo = other:wait()
      assert.is_false(long_done)
      assert.equal("meanwhile", text)
      assert.equal("Echo: in between", echo)
      assert.matches("Long running operation completed", assert(long:wait()).content[1].text)
      assert.same({ { 1, 3 }, { 2, 3 }, { 3, 3 } }, progress)
    end)
  end)

  describe("faults", function()
    it("a command that does not exist fails connect with an mcp error naming it", function()
      local s, err = luachat.mcp.connect { command = { "no-such-mcp-server-h3", "x" } }
      assert.is_nil(s)
      assert.equal("mcp", err.kind)
      assert.equal("mcp server 'no-such-mcp-server-h3': cannot start 'no-such-mcp-server-h3': No such file or directory",
        err.message)
    end)

    it("a server that exits at once: its exit status and stderr in the error", function()
      local s, err = fault("--exit-at-once")
      assert.is_nil(s)
      assert.equal("mcp", err.kind)
      assert.equal("mcp server 'fault': the server exited with status 3 while waiting for initialize; "
        .. "its stderr ends: fault_server: exiting at once as asked", err.message)
    end)

    it("garbage on stdout is skipped; the call still gets its answer", function()
      local s <close>, _, log = assert(fault("--banner"))
      local r = assert(s:call("garbage"))
      assert.equal("after garbage", r.content[1].text)
      assert.equal(4, s.rpc.garbage) -- the banner, then three lines
      assert.equal(1, #received(log, "notifications/initialized"))
    end)

    it("a response for an unknown id is dropped; the right one is matched", function()
      local s <close> = assert(fault())
      assert.equal("after unknown id", assert(s:call("unknown_id")).content[1].text)
      assert.equal("x", assert(s:call("echo", { text = "x" })).content[1].text)
    end)

    it("a 10 MB result arrives whole", function()
      local s <close> = assert(fault())
      local r = assert(s:call("big", { bytes = 10 * 1024 * 1024 }))
      assert.equal(10 * 1024 * 1024, #r.content[1].text)
      assert.is_true(r.content[1].text == string.rep("x", 10 * 1024 * 1024)) -- (a mismatch is not printed)
    end)

    it("a message over the limit ends the session instead of filling memory", function()
      local stdio = require "luachat.mcp_stdio"
      local saved = stdio.MAX_MESSAGE
      stdio.MAX_MESSAGE = 100000
      local s, _, _ = assert(fault())
      local pid = s.transport.proc:pid()
      local res, err = s:call("big", { bytes = 300000 })
      stdio.MAX_MESSAGE = saved
      assert.is_nil(res and "a result") -- (not the 300 KB table in the failure message)
      assert.equal("mcp server 'fault': the server sent a message over 100000 bytes (the limit)", err.message)
      assert.is_false(helper.alive(pid))
      s:close()
    end)

    it("several calls in flight at once are matched by id, answered in any order", function()
      local s <close> = assert(fault())
      local tasks = {}
      for i, ms in ipairs { 400, 10, 200, 0 } do
        tasks[i] = luachat.spawn(function() return s:call("slow", { ms = ms, text = "t" .. i }) end)
      end
      assert.equal(4, s.rpc:in_flight())
      for i, r in ipairs(luachat.gather(tasks)) do
        assert.equal("t" .. i, r[1].content[1].text)
      end
    end)

    it("a server that dies mid-call fails every pending call, then every later one; nothing hangs", function()
      local s, _, _ = assert(fault())
      local pid = s.transport.proc:pid()
      local hang = luachat.spawn(function() return s:call("hang") end)
      local res, err = s:call("die")
      assert.is_nil(res)
      assert.equal("mcp", err.kind)
      assert.matches("^mcp server 'fault': the server exited with status 7 while waiting for tools/call hang, "
        .. "tools/call die; its stderr ends: fault_server: dying mid%-call$", err.message)
      local hres, herr = hang:wait()
      assert.is_nil(hres)
      assert.equal(err.message, herr.message)
      local _, later = s:call("echo", { text = "x" })
      assert.matches("the server exited with status 7", later.message)
      assert.is_false(helper.alive(pid))
      s:close()
    end)

    it("a timeout fails the call and tells the server (notifications/cancelled); the session goes on", function()
      local s <close>, _, log = assert(fault())
      local res, err = s:call("hang", nil, { timeout = 0.2 })
      assert.is_nil(res)
      assert.equal("mcp server 'fault': tools/call hang timed out after 0.2 s", err.message)
      assert.is_true(s:ping()) -- answered after the server read the cancellation
      local cancelled = received(log, "notifications/cancelled")
      assert.equal(1, #cancelled)
      local calls = received(log, "tools/call")
      assert.equal(calls[1].id, cancelled[1].params.requestId)
    end)

    it("cancelling a task cancels its pending call at the server", function()
      local s <close>, _, log = assert(fault())
      local task = luachat.spawn(function() return s:call("hang") end)
      assert.is_true(task:cancel())
      assert.equal("cancelled", select(2, task:wait()).kind)
      assert.is_true(s:ping())
      local cancelled = received(log, "notifications/cancelled")
      assert.equal(1, #cancelled)
      assert.equal(received(log, "tools/call")[1].id, cancelled[1].params.requestId)
    end)

    it("isError and JSON-RPC errors", function()
      local s <close> = assert(fault())
      local r = assert(s:call("fail"))
      assert.is_true(r.isError)
      local _, err = s:call("rpc_error")
      assert.equal("mcp", err.kind)
      assert.equal("mcp server 'fault': tools/call rpc_error failed: Unknown tool arguments (JSON-RPC error -32602)", err.message)
      assert.equal(-32602, err.code)
    end)

    it("sampling: refused with a JSON-RPC error without the option, answered by the model with it", function()
      local s <close> = assert(fault())
      local r = assert(s:call("sample", { prompt = "hi" }))
      assert.equal("sampling refused: sampling is not offered by this client (-32601)", r.content[1].text)
      srv:script { reply(nil, "hello back") }
      local c = luachat.client { base_url = srv.base_url, api_key = "sk-x" }
      local s2 <close>, _, log = assert(fault())
      s2.sampling = { client = c, model = "sampler" } -- as connect{ sampling = ... } keeps it
      local r2 = assert(s2:call("sample", { prompt = "say hello" }))
      assert.equal("model said: hello back", r2.content[1].text)
      local body = require("cjson").decode(srv:requests()[1].body)
      assert.equal("sampler", body.model)
      assert.same({ { role = "system", content = "You are terse." }, { role = "user", content = "say hello" } }, body.messages)
      assert.equal(50, body.max_tokens)
      assert.is_table(received(log, "initialize")[1])
    end)

    it("announces sampling only when it is offered", function()
      local c = luachat.client { base_url = srv.base_url, api_key = "sk-x" }
      local log = dir .. "/log-sampling"
      local s <close> = assert(luachat.mcp.connect { command = helper.fault("--log", log),
        sampling = { client = c, model = "m" } })
      local init = received(log, "initialize")[1]
      assert.is_table(init.params.capabilities.sampling)
      assert.equal("2025-11-25", init.params.protocolVersion)
    end)

    it("list_changed: the tool list is fetched again", function()
      local s <close> = assert(fault())
      local before = #assert(s:tools())
      assert.equal("grown", assert(s:call("grow")).content[1].text)
      local names = {}
      for _, t in ipairs(assert(s:tools())) do names[t.name] = true end
      assert.is_true(names.extra)
      assert.equal(before + 1, #s:tools())
    end)

    it("an agent sees the new tool list after list_changed, from its next model call", function()
      local s <close> = assert(fault())
      srv:script {
        reply { call("c1", "grow", "{}") },
        reply { call("c2", "extra", "{}") },
        reply(nil, "done"),
      }
      local client = luachat.client { base_url = srv.base_url, api_key = "sk-x" }
      local weather = luachat.tool { name = "weather", handler = function() return "sun" end }
      local agent = luachat.agent { client = client, model = "m", tools = { weather, s } }
      assert.is_nil(agent.tools_by_name.extra)
      assert.equal("done", assert(agent:run("grow")).content)
      local cjson = require "cjson"
      local function names(i)
        local out = {}
        for _, t in ipairs(cjson.decode(srv:requests()[i].body).tools) do out[t["function"].name] = true end
        return out
      end
      assert.is_nil(names(1).extra)
      assert.is_true(names(2).extra and names(2).weather and names(2).echo)
      local msgs = cjson.decode(srv:requests()[3].body).messages
      assert.same({ role = "tool", tool_call_id = "c2", content = "extra ran" }, msgs[#msgs])
    end)

    it("tools/list pages are followed", function()
      local s <close>, _, log = assert(fault("--page", "4"))
      assert.equal(15, #assert(s:tools()))
      local lists = received(log, "tools/list")
      assert.equal(4, #lists)
      assert.equal("12", lists[4].params.cursor)
    end)

    it("the previous protocol revision is accepted; any other is an error naming both", function()
      local s <close> = assert(fault("--version", "2025-06-18"))
      assert.equal("2025-06-18", s.protocol_version)
      local bad, err = fault("--version", "1999-01-01")
      assert.is_nil(bad)
      assert.equal("mcp server 'fault': initialize: the server speaks MCP protocol version 1999-01-01; "
        .. "luachat speaks 2025-11-25 and 2025-06-18", err.message)
    end)

    it("progress reaches on_progress; results map to the model's text", function()
      local s <close> = assert(fault())
      local seen = {}
      local r = assert(s:call("progress", { steps = 2 }, { on_progress = function(p, t, m) seen[#seen + 1] = { p, t, m } end }))
      assert.equal("progressed", r.content[1].text)
      assert.same({ { 1, 2, "step 1" }, { 2, 2, "step 2" } }, seen)
      assert.equal("[image: image/png, 1234 bytes]\n[audio: audio/wav, 10 bytes]", mcp_tools.result_text(assert(s:call("image"))))
      assert.equal('{"a":[1,"x"],"b":2}', mcp_tools.result_text(assert(s:call("structured"))))
      assert.equal("resource text\nand text", mcp_tools.result_text(assert(s:call("resource"))))
    end)

    it("close: stdin closed, the server exits (reaped, no descriptor left); later calls fail; a dropped session is collected", function()
      local function fds()
        local p = io.popen("ls /proc/" .. (require("spec.helpers.proc").read_file("/proc/self/stat"):match("^(%d+)")) .. "/fd")
        local n = 0
        for _ in p:lines() do n = n + 1 end
        p:close()
        return n
      end
      local before = fds()
      local s, _, log = assert(fault())
      assert.is_true(fds() > before) -- its pipes (and pidfd)
      local pid = s.transport.proc:pid()
      s:close()
      assert.is_false(helper.alive(pid))
      local lines = helper.log_lines(log)
      assert.equal("stdin closed", lines[#lines].event)
      assert.equal(before, fds())
      local _, err = s:call("echo", { text = "x" })
      assert.equal("mcp server 'fault': tools/call echo: the session is closed", err.message)
      local s2 = assert(fault())
      local pid2 = s2.transport.proc:pid()
      s2 = nil -- luacheck: ignore
      collectgarbage()
      collectgarbage()
      assert.is_false(helper.alive(pid2))
    end)
  end)
end)
