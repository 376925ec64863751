-- The tool-calling loop against the test server scripted as a model that
-- calls tools; assertions on what the server received.
local server = require "spec.helpers.server"
local luachat = require "luachat"
local core = require "luachat.core"
local json = luachat.json

local function call(id, name, arguments)
  return { id = id, type = "function", ["function"] = { name = name, arguments = arguments } }
end

-- A non-streamed reply carrying tool calls (or text when calls is nil).
local function reply(calls, text, finish, usage)
  return { json = {
    id = "chatcmpl-a", object = "chat.completion", created = 1, model = "m",
    choices = { { index = 0, finish_reason = finish or (calls and "tool_calls" or "stop"),
      message = { role = "assistant", content = text or json.null, refusal = json.null,
        tool_calls = calls, annotations = json.array {} } } },
    usage = usage or { prompt_tokens = 10, completion_tokens = 5, total_tokens = 15 },
  } }
end

-- The same as a stream: text in pieces, each call's arguments in two fragments.
local function streamed(calls, text)
  local ev = {}
  local function chunk(delta, finish)
    return { json = { id = "chatcmpl-s", object = "chat.completion.chunk", created = 1, model = "m",
      choices = { { index = 0, delta = delta, finish_reason = finish or json.null } } } }
  end
  ev[#ev + 1] = chunk { role = "assistant", content = "" }
  if text then
    for piece in text:gmatch("%S+%s*") do ev[#ev + 1] = chunk { content = piece } end
  end
  for i, c in ipairs(calls or {}) do
    local a = c["function"].arguments
    local half = math.floor(#a / 2)
    ev[#ev + 1] = chunk { tool_calls = { { index = i - 1, id = c.id, type = "function",
      ["function"] = { name = c["function"].name, arguments = a:sub(1, half) } } } }
    ev[#ev + 1] = chunk { tool_calls = { { index = i - 1, ["function"] = { arguments = a:sub(half + 1) } } } }
  end
  ev[#ev + 1] = chunk({}, calls and "tool_calls" or "stop")
  ev[#ev + 1] = { json = { id = "chatcmpl-s", object = "chat.completion.chunk", created = 1, model = "m",
    choices = json.array {}, usage = { prompt_tokens = 7, completion_tokens = 3, total_tokens = 10 } } }
  return { sse = ev, done = true }
end

local weather, weather_calls, reset_weather = require("spec.helpers.weather")(luachat.tool)

describe("agent", function()
  local srv, client

  setup(function() srv = server.start() end)
  teardown(function() if srv then srv:stop() end end)
  before_each(function()
    srv:reset()
    reset_weather()
    client = luachat.client { base_url = srv.base_url, api_key = "sk-agent" }
  end)
  after_each(function() assert.equal(0, core.live(), "a transfer was left running") end)

  it("runs tools and re-sends the assistant message exactly, tool messages in order", function()
    local calls = { call("call_1", "get_weather", '{"city": "Paris"}'), call("call_2", "get_weather", '{"city":"Oslo"}') }
    srv:script { reply(calls), reply(nil, "Paris 21, Oslo 21.") }
    local agent = luachat.agent { client = client, model = "m", system = "You are terse.", tools = { weather },
      request = { temperature = 0 } }
    local result, err = agent:run("Weather in Paris and Oslo?")
    assert.is_nil(err)
    assert.equal("Paris 21, Oslo 21.", result.content)
    assert.equal(2, result.turns)
    assert.equal("stop", result.finish_reason)
    assert.same({ prompt_tokens = 20, completion_tokens = 10, total_tokens = 30 }, result.usage)
    local reqs = srv:requests()
    assert.equal(2, #reqs)
    local first = reqs[1].json
    assert.equal(0, first.temperature)
    assert.equal("system", first.messages[1].role)
    assert.same({ type = "function", ["function"] = { name = "get_weather", description = "Current weather for a city",
      parameters = { type = "object", properties = { city = { type = "string" } }, required = { "city" },
        additionalProperties = false } } }, first.tools[1])
    local second = reqs[2].body
    -- the assistant message as received: content null, arguments byte for byte
    assert.matches('"content":null', second, 1, true)
    assert.matches('"arguments":"{\\"city\\": \\"Paris\\"}"', second, 1, true)
    assert.matches('"annotations":[]', second, 1, true)
    local msgs = reqs[2].json.messages
    assert.equal(5, #msgs)
    assert.equal("assistant", msgs[3].role)
    assert.same(calls, msgs[3].tool_calls)
    assert.same({ role = "tool", tool_call_id = "call_1", content = '{"city":"Paris","temp_c":21}' },
      { role = msgs[4].role, tool_call_id = msgs[4].tool_call_id, content = json.encode(json.decode(msgs[4].content), { sort_keys = true }) })
    assert.equal("call_2", msgs[5].tool_call_id)
    assert.equal("Oslo", json.decode(msgs[5].content).city)
    assert.equal("call_1", weather_calls[1].call.id)
    assert.equal("get_weather", weather_calls[1].call.name)
  end)

  it("treats tool calls as decisive even when finish_reason says stop", function()
    srv:script { reply({ call("c1", "get_weather", '{"city":"Rome"}') }, nil, "stop"), reply(nil, "done") }
    local result = assert(luachat.agent { client = client, model = "m", tools = { weather } }:run("x"))
    assert.equal("done", result.content)
    assert.equal(1, #weather_calls)
  end)

  it("follow-ups continue the same conversation", function()
    srv:script { reply(nil, "first"), reply(nil, "second") }
    local agent = luachat.agent { client = client, model = "m" }
    assert(agent:run("one"))
    local result = assert(agent:run("two"))
    assert.equal("second", result.content)
    local msgs = srv:requests()[2].json.messages
    assert.same({ "user", "assistant", "user" }, { msgs[1].role, msgs[2].role, msgs[3].role })
    assert.equal(1, result.turns)
  end)

  it("four parallel calls whose handlers sleep run together: all start before any ends", function()
    local events = {}
    local slow = luachat.tool { name = "slow", parameters = { type = "object", properties = { n = { type = "integer" } } },
      handler = function(args)
        events[#events + 1] = "start " .. args.n
        luachat.sleep(0.2)
        events[#events + 1] = "end " .. args.n
        return "slept " .. args.n
      end }
    local calls = {}
    for i = 1, 4 do calls[i] = call("s" .. i, "slow", '{"n":' .. i .. '}') end
    srv:script { reply(calls), reply(nil, "ok") }
    local result = assert(luachat.agent { client = client, model = "m", tools = { slow }, parallel = true }:run("go"))
    assert.equal("ok", result.content)
    local msgs = srv:requests()[2].json.messages
    for i = 1, 4 do
      assert.equal("s" .. i, msgs[2 + i].tool_call_id)
      assert.equal("slept " .. i, msgs[2 + i].content)
    end
    -- one after the other would interleave start and end: no timing bound needed
    assert.equal(8, #events)
    for i = 1, 4 do assert.matches("^start ", events[i]) end
  end)

  it("every model or tool failure reaches the model as a tool message, and the run completes", function()
    local failing = luachat.tool { name = "fails", handler = function() error("disk on fire") end }
    local soft = luachat.tool { name = "soft", handler = function() return nil, "not found" end }
    local refused = luachat.tool { name = "secret", handler = function() return "should not run" end }
    local nested = luachat.tool { name = "nested",
      parameters = { type = "object", properties = { opts = { type = "object", properties = {
        mode = { type = "string", enum = { "a", "b" } }, tags = { type = "array", items = { type = "string" } } },
        required = { "mode" } } }, required = { "opts" } },
      handler = function() return "fine" end }
    local empty_ok = luachat.tool { name = "noargs", handler = function(args) return "args:" .. json.encode(args) end }
    local calls = {
      call("c1", "get_weather", '{"city": '),            -- invalid JSON
      call("c2", "teleport", '{}'),                      -- unknown tool
      call("c3", "get_weather", '{"city": 42}'),         -- wrong type
      call("c4", "get_weather", '{}'),                   -- missing required
      call("c5", "get_weather", '{"city":"x","extra":1}'), -- additionalProperties
      call("c6", "nested", '{"opts":{"mode":"c"}}'),     -- enum, nested
      call("c7", "nested", '{"opts":{"mode":"a","tags":[1]}}'), -- items
      call("c8", "fails", ""),                           -- handler raises
      call("c9", "soft", ""),                            -- handler returns nil, err
      call("c10", "secret", "{}"),                       -- refused by on_tool_call
      call("c11", "noargs", ""),                         -- empty arguments count as {}
    }
    srv:script { reply(calls), reply(nil, "recovered") }
    local results = {}
    local agent = luachat.agent { client = client, model = "m", tools = { weather, failing, soft, refused, nested, empty_ok },
      on_tool_call = function(c) return c.name ~= "secret" end,
      on_tool_result = function(c, res, err) results[c.id] = { res, err } end }
    local result, err = agent:run("break things")
    assert.is_nil(err)
    assert.equal("recovered", result.content)
    local msgs = srv:requests()[2].json.messages
    local content = {}
    for _, m in ipairs(msgs) do if m.role == "tool" then content[m.tool_call_id] = m.content end end
    assert.matches("^error: invalid JSON arguments for get_weather", content.c1)
    assert.matches('^error: unknown tool "teleport"; available tools: get_weather, fails', content.c2)
    assert.equal("error: invalid arguments for get_weather: $.city: expected string, got integer", content.c3)
    assert.equal('error: invalid arguments for get_weather: $: missing required property "city"', content.c4)
    assert.matches('^error: invalid arguments for get_weather: %$: unexpected property "extra"', content.c5)
    assert.equal('error: invalid arguments for nested: $.opts.mode: "c" is not one of "a", "b"', content.c6)
    assert.equal("error: invalid arguments for nested: $.opts.tags[0]: expected string, got integer", content.c7)
    assert.matches("^error: tool fails failed: .*disk on fire", content.c8)
    assert.is_nil(content.c8:find("traceback", 1, true))
    assert.equal("error: tool soft failed: not found", content.c9)
    assert.matches("^error: the call to secret was refused", content.c10)
    assert.equal("args:{}", content.c11)
    assert.equal(0, #weather_calls)
    assert.is_nil(results.c9[1])
    assert.equal("tool soft failed: not found", results.c9[2])
    assert.equal("args:{}", results.c11[1])
  end)

  it("max_turns stops a model that never stops calling tools", function()
    srv:default(reply({ call("loop", "get_weather", '{"city":"Loop"}') }))
    local result, err = luachat.agent { client = client, model = "m", tools = { weather }, max_turns = 3 }:run("forever")
    assert.is_nil(result)
    assert.equal("max_turns", err.kind)
    assert.equal(3, err.result.turns)
    assert.equal(3, #srv:requests())
    assert.equal(3, #weather_calls)
    assert.equal(7, #err.result.messages) -- user + 3 x (assistant + tool)
  end)

  it("streams: on_text gets text as it arrives, tool calls come from deltas", function()
    local calls = { call("st1", "get_weather", '{"city":"Lima"}'), call("st2", "get_weather", '{"city":"Quito"}') }
    srv:script { streamed(calls, "Checking both. "), streamed(nil, "Lima and Quito are 21.") }
    local texts = {}
    local agent = luachat.agent { client = client, model = "m", tools = { weather }, stream = true,
      on_text = function(t) texts[#texts + 1] = t end }
    local result, err = agent:run("Weather?")
    assert.is_nil(err)
    assert.equal("Lima and Quito are 21.", result.content)
    assert.equal("Checking both. Lima and Quito are 21.", table.concat(texts))
    assert.is_true(#texts > 2)
    assert.equal(2, #weather_calls)
    assert.same({ prompt_tokens = 14, completion_tokens = 6, total_tokens = 20 }, result.usage)
    local sent = srv:requests()[2].json
    assert.is_true(sent.stream)
    assert.same(calls, sent.messages[2].tool_calls)
  end)

  it("a stream error ends the run with the partial transcript", function()
    local first = "data: " .. json.encode { choices = { { index = 0, delta = { content = "half an ans" } } } } .. "\n\n"
    local second = "data: " .. json.encode { choices = { { index = 0, delta = { content = "wer" } } } } .. "\n\n"
    srv:script { { body = first .. second, content_type = "text/event-stream", close_after_body = #first + 5 } }
    local agent = luachat.agent { client = client, model = "m", stream = true }
    local result, err = agent:run("q")
    assert.is_nil(result)
    assert.equal("network", err.kind)
    assert.equal(1, #err.result.messages)
    assert.equal("user", err.result.messages[1].role)
    assert.equal("half an ans", err.result.content)
    assert.equal(1, #srv:requests()) -- data had arrived: not retried
  end)

  it("an error in a callback ends the run with a callback error, never a crash", function()
    srv:script { reply({ call("c1", "get_weather", '{"city":"A"}') }) }
    local agent = luachat.agent { client = client, model = "m", tools = { weather },
      on_tool_result = function() error("ui broke") end }
    local result, err = agent:run("x")
    assert.is_nil(result)
    assert.equal("callback", err.kind)
    assert.matches("ui broke", err.message, 1, true)
  end)

  it("handlers may call the client (sub-agents) in parallel", function()
    local sub = luachat.tool { name = "ask", parameters = { type = "object", properties = { q = { type = "string" } } },
      handler = function(args)
        local r = assert(luachat.agent { client = client, model = "sub" }:run(args.q))
        return r.content
      end }
    srv:script { reply({ call("a1", "ask", '{"q":"one"}'), call("a2", "ask", '{"q":"two"}') }) }
    srv:append { { json = { choices = { { index = 0, message = { role = "assistant", content = "{{last_user}}!" }, finish_reason = "stop" } } } } }
    srv:append { { json = { choices = { { index = 0, message = { role = "assistant", content = "{{last_user}}!" }, finish_reason = "stop" } } } } }
    srv:append { reply(nil, "both answered") }
    local result = assert(luachat.agent { client = client, model = "m", tools = { sub } }:run("fan out"))
    assert.equal("both answered", result.content)
    local msgs = srv:requests()[4].json.messages
    local answers = { msgs[3].content, msgs[4].content }
    table.sort(answers)
    assert.same({ "one!", "two!" }, answers)
  end)

  it("save and load round-trip the transcript exactly", function()
    srv:script { reply({ call("c1", "get_weather", '{"city":"Bern"}') }), reply(nil, "Bern 21") , reply(nil, "again") }
    local agent = luachat.agent { client = client, model = "m", system = "S", tools = { weather } }
    assert(agent:run("Bern?"))
    local path = os.tmpname()
    assert(agent:save(path))
    local again = assert(luachat.agent.load(path, { client = client, tools = { weather } }))
    assert.equal("m", again.model)
    assert.equal("S", again.system)
    assert.equal(json.encode(agent.messages, { sort_keys = true }), json.encode(again.messages, { sort_keys = true }))
    assert.matches('"annotations":[]', json.encode(again.messages), 1, true)
    local f = io.open(path)
    local saved = f:read("a")
    f:close()
    local copy = os.tmpname()
    assert(again:save(copy))
    f = io.open(copy)
    assert.equal(saved, f:read("a"))
    f:close()
    os.remove(path)
    os.remove(copy)
    assert.equal("again", again:run("and now?").content)
    assert.equal(6, #srv:requests()[3].json.messages)
    local _, err = luachat.agent.load("/nonexistent/x.json", { client = client })
    assert.equal("environment", err.kind)
  end)

  describe("output_retries (re-asking a final answer that fails output_schema)", function()
    local PERSON = { type = "object", properties = { name = { type = "string" }, age = { type = "integer" } },
      required = { "name", "age" }, additionalProperties = false }
    local function reask(reason)
      return "Your reply was not valid: " .. reason .. ". Answer again with only the JSON value, matching the JSON schema given."
    end
    local function agent_of(o)
      o.client, o.model, o.output_schema = client, "m", PERSON
      return luachat.agent(o)
    end

    it("re-asks once: the bad answer then a user message with the error go out, the 2nd answer is parsed", function()
      srv:script { reply(nil, '{"name": "Ada"}'), reply(nil, '{"name": "Ada", "age": 36}') }
      local result, err = agent_of({ output_retries = 1 }):run("Who?")
      assert.is_nil(err)
      assert.same({ name = "Ada", age = 36 }, result.parsed)
      assert.equal(2, result.turns)
      local reqs = srv:requests()
      assert.equal(2, #reqs)
      assert.same({ { role = "user", content = "Who?" } }, reqs[1].json.messages)
      local sent = reqs[2].json.messages
      assert.equal(3, #sent)
      assert.same({ role = "user", content = "Who?" }, sent[1])
      assert.same({ role = "assistant", content = '{"name": "Ada"}', refusal = json.null, annotations = {} }, sent[2])
      assert.same({ role = "user", content = reask('$: missing required property "age"') }, sent[3])
      assert.equal("json_schema", reqs[2].json.response_format.type)
      assert.equal(4, #result.messages) -- the transcript keeps the re-ask and the good answer
      assert.equal('{"name": "Ada", "age": 36}', result.messages[4].content)
    end)

    it("streaming re-asks the same way (on_text saw both answers)", function()
      srv:script { streamed(nil, "not json"), streamed(nil, '{"name": "Ada", "age": 36}') }
      local texts = {}
      local result, err = agent_of({ output_retries = 1, stream = true,
        on_text = function(t) texts[#texts + 1] = t end }):run("Who?")
      assert.is_nil(err)
      assert.same({ name = "Ada", age = 36 }, result.parsed)
      assert.equal('not json{"name": "Ada", "age": 36}', table.concat(texts))
      local sent = srv:requests()[2].json.messages
      assert.equal(3, #sent)
      assert.equal("not json", sent[2].content)
      assert.equal("user", sent[3].role)
      assert.matches("^Your reply was not valid: the output is not JSON: ", sent[3].content)
    end)

    it("after output_retries failed re-asks the last error is returned, with err.result", function()
      srv:script { reply(nil, "{}"), reply(nil, '{"name": 1, "age": 2}'), reply(nil, '{"name": "A", "age": "x"}'),
        reply(nil, '{"name": "A", "age": 1}') }
      local result, err = agent_of({ output_retries = 2 }):run("Who?")
      assert.is_nil(result)
      assert.equal("invalid_output", err.kind)
      assert.equal('the output does not match the schema: $.age: expected integer, got string (after 2 re-asks)', err.message)
      assert.equal(2, err.retries)
      assert.equal(3, #srv:requests())
      assert.equal(3, err.result.turns)
      assert.equal('{"name": "A", "age": "x"}', err.result.content)
      assert.equal(6, #err.result.messages) -- user, then 3 answers with a re-ask after the first two
      assert.same({ role = "user", content = reask('$.name: expected string, got integer') }, err.result.messages[5])
    end)

    it("default 0: no re-ask, the error as before", function()
      srv:script { reply(nil, '{"name": "Ada"}'), reply(nil, '{"name": "Ada", "age": 36}') }
      local result, err = agent_of({}):run("Who?")
      assert.is_nil(result)
      assert.equal('the output does not match the schema: $: missing required property "age"', err.message)
      assert.equal(0, err.retries)
      assert.equal(1, #srv:requests())
      assert.equal(2, #err.result.messages)
    end)

    it("max_turns bounds the re-asks: with no turn left the answer's own error ends the run", function()
      srv:script { reply(nil, "{}"), reply(nil, "{}"), reply(nil, "{}") }
      local _, err = agent_of({ output_retries = 5, max_turns = 2 }):run("Who?")
      assert.equal("invalid_output", err.kind)
      assert.equal(1, err.retries)
      assert.equal(2, #srv:requests())
      assert.equal(2, err.result.turns)
      srv:reset()
      srv:script { reply({ call("c1", "get_weather", '{"city":"Oslo"}') }), reply(nil, "{}"), reply(nil, "{}") }
      _, err = agent_of({ output_retries = 5, max_turns = 2, tools = { weather } }):run("Who?")
      assert.equal("invalid_output", err.kind)
      assert.equal(0, err.retries)
      assert.equal(2, #srv:requests())
    end)

    it("a refusal, a reply cut at max_tokens or stopped by the content filter is not re-asked", function()
      for _, r in ipairs { { reply(nil, nil), "refusal" }, { reply(nil, '{"name": "A', "length"), "invalid_output" },
          { reply(nil, "", "content_filter"), "invalid_output" } } do
        srv:reset()
        if r[2] == "refusal" then r[1].json.choices[1].message.refusal = "No." end
        srv:script { r[1], reply(nil, '{"name": "Ada", "age": 36}') }
        local result, err = agent_of({ output_retries = 3 }):run("Who?")
        assert.is_nil(result)
        assert.equal(r[2], err.kind)
        assert.equal(1, #srv:requests())
      end
    end)

    it("the re-ask never carries the API key and is cut", function()
      local long = "sk-agent" .. string.rep("é", 2000)
      srv:script { reply(nil, json.encode { name = "A", age = 1, [long] = 1 }), reply(nil, '{"name": "A", "age": 1}') }
      assert(agent_of({ output_retries = 1 }):run("Who?"))
      local sent = srv:requests()[2].json.messages[3]
      assert.equal("user", sent.role)
      assert.matches('^Your reply was not valid: %$: unexpected property "%[REDACTED%]éé', sent.content)
      assert.is_nil(sent.content:find("sk-agent", 1, true))
      assert.matches("…%. Answer again with only the JSON value", sent.content)
      assert.is_true(#sent.content <= #reask("") + 1000 + #"…")
      assert.is_not_nil(utf8.len(sent.content)) -- cut on a character boundary
    end)
  end)

  it("rejects bad definitions with clear errors", function()
    assert.has_error(function() luachat.tool { name = "bad name", handler = print } end,
      "bad argument #1 to 'tool' (field 'name' must match ^[a-zA-Z0-9_-]{1,64}$)")
    assert.has_error(function() luachat.tool { name = "x" } end)
    assert.has_error(function() luachat.agent { model = "m" } end)
  end)
end)
