-- luachat.agent: what it accepts as tools and as input, and what a failing
-- handler tells the model (issue 13, "The command line"). A fake client
-- records every request; no network.
local json = require "luachat.json"
local agent_mod = require "luachat.agent"

local function reply(msg, finish)
  return { id = "c", object = "chat.completion", created = 1, model = "m",
    choices = { { index = 0, message = msg, finish_reason = finish or "stop" } } }
end

local function fake_client(script)
  local c = { requests = {} }
  function c.chat(_, req)
    c.requests[#c.requests + 1] = json.decode(json.encode(req))
    local step = script[#c.requests]
    assert(step, "fake client: no reply scripted for request " .. #c.requests)
    if type(step) == "function" then step = step(req) end
    return json.decode(json.encode(step))
  end
  return c
end

local function echo_tool()
  return agent_mod.tool { name = "echo", description = "echo",
    handler = function(args) return "echo " .. tostring(args.x) end }
end

describe("agent tools", function()
  it("a single tool is a list of one", function()
    local c = fake_client { reply { role = "assistant", content = "ok" } }
    local a = agent_mod { client = c, model = "m", tools = echo_tool() }
    assert.equal(1, #a.tools)
    assert.equal("echo", a.tools[1].name)
    assert(a:run("hi"))
    assert.equal(1, #c.requests[1].tools)
    assert.equal("echo", c.requests[1].tools[1]["function"].name)
  end)

  it("a single plain definition (name, handler) is a list of one too", function()
    local a = agent_mod { client = fake_client {}, model = "m",
      tools = { name = "plain", handler = function() return 1 end } }
    assert.equal(1, #a.tools)
    assert.equal("plain", a.tools[1].name)
    assert.is_true(agent_mod.is_tool(echo_tool()))
    assert.is_false(agent_mod.is_tool { echo_tool() })
  end)
end)

describe("agent:run input", function()
  it("refuses no input when the transcript has nothing to answer", function()
    local c = fake_client {}
    local a = agent_mod { client = c, model = "m", system = "be brief" }
    local ok, err = pcall(a.run, a)
    assert.is_false(ok)
    assert.matches("bad argument #1 to 'run' (no input, and the transcript has no message to answer)", err, 1, true)
    ok, err = pcall(a.run, a, {})
    assert.is_false(ok)
    assert.matches("no input", err, 1, true)
    assert.equal(0, #c.requests) -- nothing was posted, least of all messages: []
  end)

  it("refuses an empty message", function()
    local c = fake_client {}
    local a = agent_mod { client = c, model = "m" }
    for _, input in ipairs { "", "  \n" } do
      local ok, err = pcall(a.run, a, input)
      assert.is_false(ok)
      assert.matches("bad argument #1 to 'run' (the message is empty)", err, 1, true)
    end
    assert.equal(0, #c.requests)
    assert.equal(0, #a.messages)
  end)

  it("without input answers a transcript that has a message", function()
    local c = fake_client { reply { role = "assistant", content = "yes" } }
    local a = agent_mod { client = c, model = "m" }
    a.messages[1] = { role = "user", content = "still there?" }
    local res = assert(a:run())
    assert.equal("yes", res.content)
    assert.equal("still there?", c.requests[1].messages[1].content)
  end)
end)

describe("tool errors sent to the model", function()
  local function tool_message_for(handler)
    local c = fake_client {
      reply({ role = "assistant", content = json.null, tool_calls = {
        { id = "c1", type = "function", ["function"] = { name = "t", arguments = "{}" } } } }, "tool_calls"),
      reply { role = "assistant", content = "done" },
    }
    local a = agent_mod { client = c, model = "m", tools = { agent_mod.tool { name = "t", handler = handler } } }
    assert(a:run("go"))
    local msgs = c.requests[2].messages
    return msgs[#msgs].content
  end

  it("carry no file paths or line numbers", function()
    assert.equal("error: tool t failed: city not found", tool_message_for(function() error("city not found") end))
    assert.equal("error: tool t failed: attempt to index a nil value (local 'x')",
      tool_message_for(function() local x; return x.y end))
    -- nil, err from the handler: its words, also without a location
    assert.equal("error: tool t failed: no such city",
      tool_message_for(function() return nil, "lua/luachat/sched.lua:152: no such city" end))
  end)
end)
