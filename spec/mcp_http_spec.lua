-- luachat.mcp over Streamable HTTP against the reference server-everything
-- (`node dist/index.js streamableHttp`, pinned in spec/mcp/package-lock.json):
-- list and call, the session id, progress while other tasks run, sampling with
-- the connection's model, a server killed mid-call, DELETE on close.
local helper = require "spec.mcp.helper"
local server = require "spec.helpers.server"
local luachat = require "luachat"
local core = require "luachat.core"
local mcp_tools = require "luachat.mcp_tools"

-- A non-streamed chat completion answering `text`.
local function reply(text)
  return { json = { id = "c1", object = "chat.completion", created = 1, model = "m",
    choices = { { index = 0, finish_reason = "stop", message = { role = "assistant", content = text } } } } }
end

describe("luachat.mcp over Streamable HTTP", function()
  local ev, srv

  setup(function()
    helper.peers()
    ev = helper.everything_http()
    srv = server.start()
  end)
  teardown(function()
    if ev then ev.stop() end
    if srv then srv:stop() end
  end)
  before_each(function() srv:reset() end)
  after_each(function()
    assert.equal(0, core.live(), "a transfer was left running")
    assert.equal(0, require("luachat.sched").live_tasks(), "a task was left running")
  end)

  it("initializes with the current protocol revision, keeps the session id, lists and calls tools", function()
    local s = assert(luachat.mcp.connect { url = ev.url, name = "ev" })
    assert.equal("2025-11-25", s.protocol_version)
    assert.equal("mcp-servers/everything", s.server_info.name)
    assert.matches("^[%x-]+$", s.transport.session_id)
    local tools = assert(s:tools())
    local by = {}
    for _, t in ipairs(tools) do by[t.name] = t end
    assert.is_truthy(by.echo and by["trigger-long-running-operation"])
    assert.equal(luachat.agent.Tool, getmetatable(by.echo))
    assert.equal("ev", by.echo.server)
    assert.same({ "message" }, by.echo.parameters.required)
    -- Without the sampling capability the server offers no sampling tool.
    assert.is_nil(by["trigger-sampling-request"])
    local r = assert(s:call("echo", { message = "hi" }))
    assert.equal("Echo: hi", r.content[1].text)
    local img = assert(s:call("get-tiny-image", {}))
    assert.matches("%[image: image/png, %d+ bytes%]", (mcp_tools.result_text(img)))
    assert.is_true(s:ping())
    assert.is_nil(s.transport.lost) -- notifications/initialized went with the session id
    s:close()
    assert.matches("Received session termination request for session " .. s.transport.session_id, ev.text(), 1, true)
    local _, err = s:call("echo", { message = "late" })
    assert.equal("mcp", err.kind)
    assert.matches("mcp server 'ev': tools/call echo: the session is closed", err.message, 1, true)
  end)

  it("a long call reports progress while other tasks keep running", function()
    local s <close> = assert(luachat.mcp.connect { url = ev.url, name = "ev" })
    local progress = {}
    local first = false
    local long = luachat.spawn(function()
      return s:call("trigger-long-running-operation", { duration = 4, steps = 4 }, {
        on_progress = function(p, total) progress[#progress + 1] = { p, total } first = true end })
    end)
    srv:script { reply "hello" }
    local other = luachat.spawn(function()
      while not first do luachat.sleep(0.02) end -- the long call is under way
      local c = luachat.client { base_url = srv.base_url, api_key = "sk-x" }
      local res = assert(c:chat { model = "m", messages = { { role = "user", content = "hi" } } })
      local r2 = assert(s:call("echo", { message = "meanwhile" }))
      return long:is_done(), r2.content[1].text, res.choices[1].message.content ~= nil
    end)
    local long_done, text, chatted = other:wait()
    assert(long_done ~= nil, tostring(text))
    assert.is_false(long_done)
    assert.equal("Echo: meanwhile", text)
    assert.is_true(chatted)
    local r = assert(long:wait())
    assert.matches("Long running operation completed", r.content[1].text)
    assert.same({ { 1, 4 }, { 2, 4 }, { 3, 4 }, { 4, 4 } }, progress)
  end)

  it("answers sampling/createMessage with the connection's model", function()
    srv:script { reply "forty-two" }
    local c = luachat.client { base_url = srv.base_url, api_key = "sk-x" }
    local s <close> = assert(luachat.mcp.connect { url = ev.url, sampling = { client = c, model = "m" } })
    local r = assert(s:call("trigger-sampling-request", { prompt = "the answer?", maxTokens = 20 }))
    assert.matches("forty%-two", mcp_tools.result_text(r))
    local reqs = srv:requests()
    local body = require("cjson").decode(reqs[#reqs].body)
    assert.equal("m", body.model)
    assert.equal(20, body.max_tokens)
    assert.matches("the answer%?", body.messages[#body.messages].content)
  end)

  it("a server killed mid-call fails the call with an mcp error naming it; nothing hangs", function()
    local own = helper.everything_http()
    local s = assert(luachat.mcp.connect { url = own.url, name = "doomed" })
    local res, err = s:call("trigger-long-running-operation", { duration = 30, steps = 30 }, {
      on_progress = function() own.kill() end })
    own.stop()
    assert.is_nil(res)
    assert.equal("mcp", err.kind)
    assert.matches("^mcp server 'doomed': POST http://127%.0%.0%.1:%d+/mcp: ", err.message)
    s:close()
  end)

  it("listen = true opens the GET stream; close ends it with the session", function()
    local s = assert(luachat.mcp.connect { url = ev.url, name = "ev", listen = true })
    assert.is_truthy(s.transport.get)
    assert.equal("Echo: x", assert(s:call("echo", { message = "x" })).content[1].text)
    s:close()
    luachat.run() -- the GET stream's reader ends with the session
    assert.matches("Establishing new SSE stream for session " .. s.transport.session_id, ev.text(), 1, true)
  end)

  it("JSON answers (a scripted server): the session id and protocol version go with every later request; DELETE on close", function()
    local null = require("cjson").null
    srv:script {
      { json = { jsonrpc = "2.0", id = 1, result = { protocolVersion = "2025-06-18",
        capabilities = { tools = {} }, serverInfo = { name = "scripted", version = "1" } } },
        headers = { ["Mcp-Session-Id"] = "sess-42" } },
      { status = 202, body = "", delay = 0.3 },
      { json = { jsonrpc = "2.0", id = 2, result = { tools = { { name = "t1", inputSchema = { type = "object" } } },
        nextCursor = null } } },
      { json = { jsonrpc = "2.0", id = 3, result = { content = { { type = "text", text = "json answer" } } } } },
      { status = 200, body = "" },
    }
    local s = assert(luachat.mcp.connect { url = srv.url .. "/mcp", name = "scripted" })
    assert.equal("2025-06-18", s.protocol_version)
    assert.equal("t1", assert(s:tools())[1].name)
    assert.equal("json answer", assert(s:call("t1", {})).content[1].text)
    s:close()
    local reqs = srv:requests()
    assert.equal(5, #reqs)
    local function h(r, name)
      for k, v in pairs(r.headers) do if k:lower() == name then return v end end
    end
    assert.is_nil(h(reqs[1], "mcp-session-id"))
    assert.matches("application/json, text/event%-stream", h(reqs[1], "accept"))
    for i = 2, 5 do
      assert.equal("sess-42", h(reqs[i], "mcp-session-id"))
      assert.equal("2025-06-18", h(reqs[i], "mcp-protocol-version"))
    end
    assert.equal("notifications/initialized", require("cjson").decode(reqs[2].body).method)
    -- tools/list waited for the notification's answer (held 0.3 s): POSTs on separate
    -- connections may arrive in any order, and nothing may overtake initialized.
    assert.is_true(reqs[3].time - reqs[2].time >= 0.3, "tools/list arrived before initialized was answered")
    assert.equal("DELETE", reqs[5].method)
  end)

  it("a server that is not an MCP server: connect fails with its HTTP status and message", function()
    local s, err = luachat.mcp.connect { url = srv.url .. "/mcp", name = "notmcp", headers = { Authorization = "Bearer sk-secret-h3" } }
    assert.is_nil(s)
    assert.equal("mcp", err.kind)
    assert.matches("^mcp server 'notmcp': POST http://127%.0%.0%.1:%d+/mcp: HTTP 404", err.message)
    assert.equal(404, err.status)
    assert.is_nil(err.message:find("sk-secret-h3", 1, true))
    local reqs = srv:requests()
    assert.equal("Bearer sk-secret-h3", reqs[#reqs].headers.authorization or reqs[#reqs].headers.Authorization)
  end)

  it("a URL nothing listens on fails connect with an mcp error", function()
    local port = ev.url:match(":(%d+)/")
    local s, err = luachat.mcp.connect { url = "http://127.0.0.1:1/mcp", name = "nowhere" }
    assert.is_nil(s)
    assert.equal("mcp", err.kind)
    assert.matches("mcp server 'nowhere': POST http://127.0.0.1:1/mcp: ", err.message, 1, true)
    assert.is_truthy(port)
  end)
end)
