-- luachat.agent unit specs: the tool-calling loop against a fake client that
-- plays scripted replies and records every request it got (as the JSON that
-- would go on the wire), so the assertions are on exactly what was sent.
-- No network; the scheduler is the real one except where a fake shows the
-- order of results does not depend on the order of completion.
local json = require "luachat.json"
local core = require "luachat.core"
local sched = require "luachat.sched"
local agent_mod = require "luachat.agent"

local null = json.null

local function enc(v) return json.encode(v, { sort_keys = true }) end
local function fresh(v) return json.decode(enc(v)) end -- new tables, as a real client decodes them

local function call(id, name, arguments)
  return { id = id, type = "function", ["function"] = { name = name, arguments = arguments } }
end

local function completion(msg, finish, usage)
  return { id = "chatcmpl-1", object = "chat.completion", created = 1, model = "m",
    choices = { { index = 0, message = msg, finish_reason = finish } }, usage = usage }
end

-- An assistant reply carrying tool calls (content null, as OpenAI sends it).
local function calls_reply(calls, finish, usage)
  return completion({ role = "assistant", content = null, tool_calls = calls }, finish or "tool_calls",
    usage or { prompt_tokens = 10, completion_tokens = 5, total_tokens = 15 })
end

local function text_reply(text, usage)
  return completion({ role = "assistant", content = text }, "stop",
    usage or { prompt_tokens = 20, completion_tokens = 2, total_tokens = 22 })
end

-- A fake client. script[i] answers request i: a chat.completion table, {err = e},
-- a function(req, i) returning one of those, or for streams
-- {chunks = {...}, final = completion, err = e|nil}.
local function fake_client(script)
  local c = { requests = {}, bodies = {}, chats = 0, streams = 0 }
  local n = 0
  local function take(req)
    local body = enc(req)
    c.bodies[#c.bodies + 1] = body
    c.requests[#c.requests + 1] = json.decode(body)
    n = n + 1
    local step = script[n]
    if type(step) == "function" then step = step(req, n) end
    assert(step, "fake client: no scripted reply for request " .. n)
    return step
  end
  function c.chat(_, req)
    c.chats = c.chats + 1
    local step = take(req)
    if step.err then return nil, step.err end
    return fresh(step)
  end
  -- handlers: a function (on_chunk) or { on_text = fn(text, index), on_chunk = fn }, as client:stream.
  function c.stream(_, req, handlers)
    c.streams = c.streams + 1
    local step = take(req)
    if step.err and not step.final then return nil, step.err end
    local on_chunk, on_text = handlers, nil
    if type(handlers) == "table" then on_chunk, on_text = handlers.on_chunk, handlers.on_text end
    for _, chunk in ipairs(step.chunks or {}) do
      local stop = false
      if on_text then
        for _, ch in ipairs(chunk.choices or {}) do
          local t = type(ch.delta) == "table" and ch.delta.content
          if type(t) == "string" and t ~= "" and on_text(t, ch.index or 0) == false then stop = true end
        end
      end
      if on_chunk and on_chunk(fresh(chunk)) == false then stop = true end
      if stop then
        return fresh(step.final), core.error { kind = "cancelled", message = "stream cancelled by the callback" }
      end
    end
    return fresh(step.final), step.err
  end
  return c
end

local function chunk(text)
  return { object = "chat.completion.chunk", choices = { { index = 0, delta = { content = text },
    finish_reason = null } } }
end

local weather, weather_args, reset_weather = require("spec.helpers.weather")(agent_mod.tool)

-- The tool messages of a transcript, by tool_call_id, and their ids in order.
local function tool_messages(messages)
  local by_id, order = {}, {}
  for _, m in ipairs(messages) do
    if m.role == "tool" then
      by_id[m.tool_call_id] = m.content
      order[#order + 1] = m.tool_call_id
    end
  end
  return by_id, order
end

describe("agent (unit, fake client)", function()
  before_each(function() reset_weather() end)

  describe("definitions", function()
    it("tool() validates the name, handler and parameters", function()
      local ok_handler = function() end
      for _, bad in ipairs { "", "has space", "dot.name", string.rep("a", 65), "é" } do
        assert.has_error(function() agent_mod.tool { name = bad, handler = ok_handler } end,
          "bad argument #1 to 'tool' (field 'name' must match ^[a-zA-Z0-9_-]{1,64}$)")
      end
      assert.has_no.errors(function() agent_mod.tool { name = string.rep("a", 64), handler = ok_handler } end)
      assert.has_no.errors(function() agent_mod.tool { name = "A-b_9", handler = ok_handler } end)
      assert.has_error(function() agent_mod.tool { name = "x" } end,
        "bad argument #1 to 'tool' (field 'handler' must be a function)")
      assert.has_error(function() agent_mod.tool { name = "x", handler = ok_handler, parameters = "{}" } end,
        "bad argument #1 to 'tool' (field 'parameters' must be a JSON Schema table)")
      assert.has_error(function() agent_mod.tool "x" end, "bad argument #1 to 'tool' (table expected, got string)")
    end)

    it("tool() defaults parameters to an empty object schema that encodes as {}", function()
      local t = agent_mod.tool { name = "now", handler = function() return "12:00" end }
      assert.equal('{"function":{"name":"now","parameters":{"properties":{},"type":"object"}},"type":"function"}',
        enc(t:definition()))
    end)

    it("agent{} needs a client and a model; max_turns must be a positive integer, output_retries 0 to 100", function()
      local c = fake_client {}
      assert.has_error(function() agent_mod { model = "m" } end,
        "bad argument #1 to 'agent' (field 'client' must be a luachat client)")
      assert.has_error(function() agent_mod { client = c } end,
        "bad argument #1 to 'agent' (field 'model' must be a non-empty string)")
      assert.has_error(function() agent_mod { client = c, model = "m", max_turns = 0 } end,
        "bad argument #1 to 'agent' (field 'max_turns' must be a positive integer)")
      for _, bad in ipairs { { -1, "-1" }, { 1.5, "1.5" }, { 101, "101" }, { "2", "string" } } do
        assert.has_error(function() agent_mod { client = c, model = "m", output_retries = bad[1] } end,
          "bad argument #1 to 'agent' (field 'output_retries' must be an integer from 0 to 100, got " .. bad[2] .. ")")
      end
      assert.equal(2, agent_mod { client = c, model = "m", output_retries = 2.0 }.output_retries)
      assert.equal(0, agent_mod { client = c, model = "m" }.output_retries)
      assert.has_error(function() agent_mod { client = c, model = "m", on_text = "x" } end,
        "bad argument #1 to 'agent' (field 'on_text' must be a function)")
      assert.has_error(function() agent_mod { client = c, model = "m", tools = { weather, weather } } end,
        "bad argument #1 to 'agent' (two tools are named 'get_weather')")
    end)

    it("the module is callable (agent{...}) and exposes new, tool and load", function()
      assert.is_function(agent_mod.new)
      assert.is_function(agent_mod.tool)
      assert.is_function(agent_mod.load)
      local a = agent_mod { client = fake_client {}, model = "m" }
      assert.equal(10, a.max_turns)
      assert.is_false(a.stream)
      assert.is_true(a.parallel)
    end)
  end)

  describe("requests", function()
    it("sends model, system prompt first, tools as function definitions and the extra request fields", function()
      local c = fake_client { text_reply("hi") }
      local a = agent_mod { client = c, model = "gpt-4o-mini", system = "You are terse.", tools = { weather },
        request = { temperature = 0, max_tokens = 50 } }
      local res = assert(a:run("Hello"))
      assert.equal(1, #c.requests)
      assert.equal('{"max_tokens":50,"messages":[{"content":"You are terse.","role":"system"},' ..
        '{"content":"Hello","role":"user"}],"model":"gpt-4o-mini","temperature":0,"tools":[{"function":' ..
        '{"description":"Current weather for a city","name":"get_weather","parameters":{"additionalProperties":false,' ..
        '"properties":{"city":{"type":"string"}},"required":["city"],"type":"object"}},"type":"function"}]}',
        c.bodies[1])
      assert.equal("hi", res.content)
      assert.equal("stop", res.finish_reason)
      assert.equal(1, res.turns)
    end)

    it("omits tools and the system message when there are none", function()
      local c = fake_client { text_reply("hi") }
      assert(agent_mod { client = c, model = "m" }:run("Hello"))
      assert.equal('{"messages":[{"content":"Hello","role":"user"}],"model":"m"}', c.bodies[1])
    end)

    it("run() also takes a list of messages", function()
      local c = fake_client { text_reply("ok") }
      local a = agent_mod { client = c, model = "m", system = "S" }
      assert(a:run { { role = "user", content = "a" }, { role = "assistant", content = "b" },
        { role = "user", content = "c" } })
      local sent = c.requests[1].messages
      assert.equal(4, #sent)
      assert.same({ "system", "user", "assistant", "user" },
        { sent[1].role, sent[2].role, sent[3].role, sent[4].role })
      assert.equal("c", sent[4].content)
    end)
  end)

  describe("the loop", function()
    it("re-sends the assistant message exactly as received and answers each call in order", function()
      -- As a provider sends it: null content, extra fields, an empty array, calls in a given order.
      local assistant_text = '{"role":"assistant","content":null,"refusal":null,"annotations":[],' ..
        '"reasoning_content":"Two cities, two calls.","tool_calls":[' ..
        '{"id":"call_b","type":"function","function":{"name":"get_weather","arguments":"{\\"city\\": \\"Paris\\"}"}},' ..
        '{"id":"call_a","type":"function","function":{"name":"get_weather","arguments":"{\\"city\\":\\"Oslo\\"}"}}]}'
      local first = completion(json.decode(assistant_text), "tool_calls",
        { prompt_tokens = 10, completion_tokens = 5, total_tokens = 15 })
      local c = fake_client { first, text_reply("Paris 21, Oslo 21.") }
      local a = agent_mod { client = c, model = "m", tools = { weather } }
      local res = assert(a:run("Weather in Paris and Oslo?"))

      assert.equal(2, #c.requests)
      local sent = c.requests[2].messages
      assert.equal(4, #sent)
      -- byte for byte the message received: null kept, [] kept, arguments untouched, extra fields kept
      assert.equal(enc(json.decode(assistant_text)), enc(sent[2]))
      assert.equal(null, sent[2].content)
      assert.equal('{"city": "Paris"}', sent[2].tool_calls[1]["function"].arguments)
      assert.same({ role = "tool", tool_call_id = "call_b", content = '{"city":"Paris","temp_c":21}' }, sent[3])
      assert.same({ role = "tool", tool_call_id = "call_a", content = '{"city":"Oslo","temp_c":21}' }, sent[4])
      -- handlers got decoded arguments and the call
      assert.equal(2, #weather_args)
      local by_city = {}
      for _, w in ipairs(weather_args) do by_city[w.args.city] = w.call end
      assert.same({ id = "call_b", name = "get_weather", arguments = '{"city": "Paris"}' }, by_city.Paris)
      assert.same({ id = "call_a", name = "get_weather", arguments = '{"city":"Oslo"}' }, by_city.Oslo)
      -- the result
      assert.equal("Paris 21, Oslo 21.", res.content)
      assert.equal(2, res.turns)
      assert.equal("stop", res.finish_reason)
      assert.equal(5, #res.messages)
      assert.equal(enc(sent), enc({ table.unpack(res.messages, 1, 4) }))
      assert.same({ role = "assistant", content = "Paris 21, Oslo 21." }, res.messages[5])
    end)

    it("treats tool calls as decisive even when finish_reason says stop", function()
      local c = fake_client { calls_reply({ call("c1", "get_weather", '{"city":"Rome"}') }, "stop"), text_reply("done") }
      local res = assert(agent_mod { client = c, model = "m", tools = { weather } }:run("Rome?"))
      assert.equal(2, #c.requests)
      assert.equal(2, res.turns)
      assert.equal("done", res.content)
      assert.equal('{"city":"Rome","temp_c":21}', c.requests[2].messages[3].content)
    end)

    it("result.content is \"\" when the final message has null content", function()
      local c = fake_client { completion({ role = "assistant", content = null }, "stop") }
      local res = assert(agent_mod { client = c, model = "m" }:run("x"))
      assert.equal("", res.content)
      assert.equal(null, res.messages[2].content)
    end)

    it("gives an id to calls that come without one and answers with it", function()
      local nameless = { type = "function", ["function"] = { name = "get_weather", arguments = '{"city":"Oslo"}' } }
      local c = fake_client { calls_reply({ nameless }), text_reply("ok") }
      assert(agent_mod { client = c, model = "m", tools = { weather } }:run("x"))
      local sent = c.requests[2].messages
      assert.equal("call_1_1", sent[2].tool_calls[1].id)
      assert.equal("call_1_1", sent[3].tool_call_id)
    end)

    it("follow-ups continue the same conversation; turns and usage are per run", function()
      local c = fake_client {
        calls_reply({ call("c1", "get_weather", '{"city":"Oslo"}') }), text_reply("Oslo 21"),
        text_reply("Tomorrow too", { prompt_tokens = 1, completion_tokens = 1, total_tokens = 2 }),
      }
      local a = agent_mod { client = c, model = "m", system = "S", tools = { weather } }
      local r1 = assert(a:run("Oslo?"))
      assert.equal(2, r1.turns)
      local r2 = assert(a:run("And tomorrow?"))
      assert.equal(1, r2.turns)
      assert.same({ prompt_tokens = 1, completion_tokens = 1, total_tokens = 2 }, r2.usage)
      local sent = c.requests[3].messages
      assert.equal(6, #sent)
      assert.same({ "system", "user", "assistant", "tool", "assistant", "user" },
        { sent[1].role, sent[2].role, sent[3].role, sent[4].role, sent[5].role, sent[6].role })
      assert.equal("And tomorrow?", sent[6].content)
      assert.equal(7, #r2.messages)
    end)

    it("sums usage over the turns of a run, skipping missing fields", function()
      local c = fake_client {
        calls_reply({ call("c1", "get_weather", '{"city":"A"}') }, nil,
          { prompt_tokens = 100, completion_tokens = 10, total_tokens = 110 }),
        calls_reply({ call("c2", "get_weather", '{"city":"B"}') }, nil, { prompt_tokens = 7 }), -- partial usage
        calls_reply({ call("c3", "get_weather", '{"city":"C"}') }, nil, nil),                 -- none at all
        text_reply("done", { prompt_tokens = 200, completion_tokens = 20, total_tokens = 220 }),
      }
      -- strip the default usage of the third reply
      local res = assert(agent_mod { client = c, model = "m", tools = { weather } }:run("x"))
      assert.equal(4, res.turns)
      assert.same({ prompt_tokens = 100 + 7 + 10 + 200, completion_tokens = 10 + 5 + 20,
        total_tokens = 110 + 15 + 220 }, res.usage)
    end)

    it("max_turns stops a model that never stops calling tools, keeping the transcript", function()
      local n = 0
      local always = function()
        n = n + 1
        return calls_reply({ call("c" .. n, "get_weather", '{"city":"Oslo"}') })
      end
      local c = fake_client { always, always, always, always, always }
      local a = agent_mod { client = c, model = "m", tools = { weather }, max_turns = 3 }
      local res, err = a:run("loop forever")
      assert.is_nil(res)
      assert.equal("max_turns", err.kind)
      assert.matches("3 turns", err.message)
      assert.is_string(tostring(err))
      assert.equal(3, #c.requests)
      assert.equal(3, err.result.turns)
      assert.equal("", err.result.content)
      assert.equal("tool_calls", err.result.finish_reason)
      assert.same({ prompt_tokens = 30, completion_tokens = 15, total_tokens = 45 }, err.result.usage)
      local msgs = err.result.messages
      assert.equal(1 + 3 * 2, #msgs) -- user, then (assistant, tool) x 3
      local _, order = tool_messages(msgs)
      assert.same({ "c1", "c2", "c3" }, order)
    end)

    it("a client error ends the run with nil, err and the partial transcript in err.result", function()
      local api_err = core.error { kind = "api", message = "server exploded", status = 500 }
      local c = fake_client { calls_reply({ call("c1", "get_weather", '{"city":"Oslo"}') }), { err = api_err } }
      local res, err = agent_mod { client = c, model = "m", tools = { weather } }:run("x")
      assert.is_nil(res)
      assert.equal(api_err, err)
      assert.equal("api", err.kind)
      assert.equal(500, err.status)
      assert.equal(1, err.result.turns)
      assert.equal(3, #err.result.messages)
      assert.equal("tool", err.result.messages[3].role)
      assert.same({ prompt_tokens = 10, completion_tokens = 5, total_tokens = 15 }, err.result.usage)
    end)

    it("a client that returns neither a reply nor an error still ends the run cleanly", function()
      local c = { chat = function() return nil end }
      local res, err = agent_mod { client = c, model = "m" }:run("x")
      assert.is_nil(res)
      assert.equal("api", err.kind)
      assert.equal(0, err.result.turns)
    end)

    it("a reply without choices is a deserialise error, not a crash", function()
      local c = fake_client { { id = "x", choices = json.array {} } }
      local res, err = agent_mod { client = c, model = "m" }:run("x")
      assert.is_nil(res)
      assert.equal("deserialise", err.kind)
      assert.equal(1, err.result.turns)
    end)
  end)

  describe("tool failures become tool messages", function()
    local function failing_tools(calls_log)
      local nested = agent_mod.tool {
        name = "nested",
        parameters = { type = "object", required = { "opts" }, properties = {
          opts = { type = "object", properties = {
            mode = { type = "string", enum = { "a", "b" } },
            tags = { type = "array", items = { type = "string" } },
          } } } },
        handler = function() calls_log[#calls_log + 1] = "nested"; return "nested ok" end,
      }
      local fails = agent_mod.tool { name = "fails", handler = function() error("disk on fire") end }
      local soft = agent_mod.tool { name = "soft", handler = function() return nil, "not found" end }
      local secret = agent_mod.tool { name = "secret", handler = function()
        calls_log[#calls_log + 1] = "secret"; return "leaked" end }
      local bad_result = agent_mod.tool { name = "bad_result", handler = function() return { f = print } end }
      local noargs = agent_mod.tool { name = "noargs", handler = function(args)
        calls_log[#calls_log + 1] = "noargs:" .. tostring(next(args)); return "no args ok" end }
      return { weather, nested, fails, soft, secret, bad_result, noargs }
    end

    local failing_calls = {
      call("c1", "get_weather", '{"city": "Par'),
      call("c2", "teleport", '{}'),
      call("c3", "get_weather", '{"city": 42}'),
      call("c4", "get_weather", '{}'),
      call("c5", "get_weather", '{"city":"x","extra":1}'),
      call("c6", "nested", '{"opts":{"mode":"c"}}'),
      call("c7", "nested", '{"opts":{"mode":"a","tags":["x",1]}}'),
      call("c8", "fails", '{}'),
      call("c9", "soft", '{}'),
      call("c10", "secret", '{}'),
      call("c11", "get_weather", '[1,2]'),
      call("c12", "bad_result", '{}'),
      call("c13", "noargs", ''),
      call("c14", "get_weather", 'null'),
    }

    for _, parallel in ipairs { false, true } do
      it("every model or handler mistake reaches the model and the run completes (parallel = "
          .. tostring(parallel) .. ")", function()
        local log, results = {}, {}
        local c = fake_client { calls_reply(failing_calls), text_reply("I will do better") }
        local a = agent_mod { client = c, model = "m", tools = failing_tools(log), parallel = parallel,
          on_tool_call = function(info) return info.name ~= "secret" end,
          on_tool_result = function(info, result, err) results[info.id] = { result = result, err = err } end,
        }
        local res, err = a:run("try everything")
        assert.is_nil(err)
        assert.equal("I will do better", res.content)
        assert.equal(2, res.turns)

        local content, order = tool_messages(c.requests[2].messages)
        assert.same({ "c1", "c2", "c3", "c4", "c5", "c6", "c7", "c8", "c9", "c10", "c11", "c12", "c13", "c14" }, order)
        assert.matches("^error: invalid JSON arguments for get_weather %(.+%); send the arguments as one JSON object$",
          content.c1)
        assert.equal('error: unknown tool "teleport"; available tools: get_weather, nested, fails, soft, secret, '
          .. "bad_result, noargs", content.c2)
        assert.equal("error: invalid arguments for get_weather: $.city: expected string, got integer", content.c3)
        assert.equal('error: invalid arguments for get_weather: $: missing required property "city"', content.c4)
        assert.equal('error: invalid arguments for get_weather: $: unexpected property "extra" (allowed: city)',
          content.c5)
        assert.equal('error: invalid arguments for nested: $.opts.mode: "c" is not one of "a", "b"', content.c6)
        assert.equal("error: invalid arguments for nested: $.opts.tags[1]: expected string, got integer", content.c7)
        assert.matches("^error: tool fails failed: .*disk on fire$", content.c8) -- first line only, no traceback
        assert.equal("error: tool soft failed: not found", content.c9)
        assert.equal("error: the call to secret was refused by the user; do not retry it", content.c10)
        assert.equal("error: arguments for get_weather must be a JSON object, got [1,2]", content.c11)
        assert.matches("^error: tool bad_result failed: its result cannot be sent as JSON: ", content.c12)
        assert.equal("no args ok", content.c13)
        assert.equal("error: arguments for get_weather must be a JSON object, got null", content.c14)

        -- only the valid, allowed calls ran their handlers; "" arguments arrived as {}
        assert.same({ "noargs:nil" }, log)
        assert.equal(0, #weather_args)
        -- on_tool_result: once per call; result or err, the error without the "error: " prefix
        local n = 0
        for _ in pairs(results) do n = n + 1 end
        assert.equal(14, n)
        assert.same({ result = "no args ok" }, results.c13)
        assert.same({ err = "invalid arguments for get_weather: $.city: expected string, got integer" }, results.c3)
        assert.same({ err = "tool soft failed: not found" }, results.c9)
      end)
    end

    it("junk in tool_calls is answered as an unknown tool, in order", function()
      local c = fake_client { calls_reply({ 42, call("c2", "get_weather", '{"city":"Oslo"}') }), text_reply("ok") }
      local res = assert(agent_mod { client = c, model = "m", tools = { weather }, parallel = false }:run("x"))
      assert.equal("ok", res.content)
      local sent = c.requests[2].messages
      assert.equal("call_1_1", sent[3].tool_call_id)
      assert.matches("^error: unknown tool", sent[3].content)
      assert.equal("c2", sent[4].tool_call_id)
    end)

    it("converts handler results: string as is, table as JSON, nil as \"\", numbers and booleans with tostring", function()
      local values = { "plain text", { a = 1, b = { 1, 2 } }, nil, 42, true, 1.5, json.array {}, null }
      local tools, calls = {}, {}
      for i = 1, 8 do
        tools[i] = agent_mod.tool { name = "t" .. i, handler = function() return values[i] end }
        calls[i] = call("c" .. i, "t" .. i, "{}")
      end
      tools[9] = agent_mod.tool { name = "t9", handler = function() end } -- returns nothing at all
      calls[9] = call("c9", "t9", "{}")
      local c = fake_client { calls_reply(calls), text_reply("ok") }
      assert(agent_mod { client = c, model = "m", tools = tools }:run("x"))
      local content = tool_messages(c.requests[2].messages)
      assert.equal("plain text", content.c1)
      assert.equal('{"a":1,"b":[1,2]}', content.c2)
      assert.equal("", content.c3)
      assert.equal("42", content.c4)
      assert.equal("true", content.c5)
      assert.equal("1.5", content.c6)
      assert.equal("[]", content.c7)
      assert.equal("null", content.c8)
      assert.equal("", content.c9)
    end)

    it("a handler's nil, err with a luachat error table uses its one-line text", function()
      local t = agent_mod.tool { name = "lookup", handler = function()
        return nil, core.error { kind = "api", message = "upstream 503" } end }
      local c = fake_client { calls_reply({ call("c1", "lookup", "{}") }), text_reply("ok") }
      assert(agent_mod { client = c, model = "m", tools = { t } }:run("x"))
      local content = tool_messages(c.requests[2].messages)
      assert.matches("^error: tool lookup failed: .*upstream 503", content.c1)
    end)
  end)

  describe("callbacks", function()
    it("on_tool_call sees each call, and on_tool_result gets the string sent", function()
      local seen, results = {}, {}
      local c = fake_client { calls_reply({ call("c1", "get_weather", '{"city":"Oslo"}') }), text_reply("ok") }
      assert(agent_mod { client = c, model = "m", tools = { weather },
        on_tool_call = function(info) seen[#seen + 1] = info; return nil end, -- nil allows, only false refuses
        on_tool_result = function(info, result, err) results[#results + 1] = { info.id, result, err } end,
      }:run("x"))
      assert.same({ { id = "c1", name = "get_weather", arguments = '{"city":"Oslo"}' } }, seen)
      assert.same({ { "c1", '{"city":"Oslo","temp_c":21}' } }, results)
      assert.equal(1, #weather_args)
    end)

    local cases = {
      { "on_tool_call", function() error("hook broke") end },
      { "on_tool_result", function() error("hook broke") end },
    }
    for _, parallel in ipairs { false, true } do
      for _, case in ipairs(cases) do
        it("an error in " .. case[1] .. " ends the run with kind callback and a traceback (parallel = "
            .. tostring(parallel) .. ")", function()
          local c = fake_client { calls_reply({ call("c1", "get_weather", '{"city":"A"}'),
            call("c2", "get_weather", '{"city":"B"}') }), text_reply("never") }
          local a = agent_mod { client = c, model = "m", tools = { weather }, parallel = parallel,
            [case[1]] = case[2] }
          local res, err = a:run("x")
          assert.is_nil(res)
          assert.equal("callback", err.kind)
          assert.matches("^" .. case[1] .. " failed: .*hook broke", err.message)
          assert.matches("stack traceback", err.message)
          assert.equal(1, #c.requests)
          assert.equal(1, err.result.turns)
          assert.equal(2, #err.result.messages) -- user, assistant: no tool messages were appended
        end)
      end
    end

    it("an error in on_text (not streaming) ends the run with kind callback", function()
      local c = fake_client { text_reply("hello") }
      local res, err = agent_mod { client = c, model = "m", on_text = function() error("tty gone") end }:run("x")
      assert.is_nil(res)
      assert.equal("callback", err.kind)
      assert.matches("^on_text failed: .*tty gone", err.message)
    end)

    it("without streaming, on_text gets the whole reply text once", function()
      local texts = {}
      local c = fake_client { calls_reply({ call("c1", "get_weather", '{"city":"A"}') }), text_reply("all at once") }
      assert(agent_mod { client = c, model = "m", tools = { weather },
        on_text = function(t) texts[#texts + 1] = t end }:run("x"))
      assert.same({ "all at once" }, texts) -- a null-content tool-call reply gives no text
    end)
  end)

  describe("streaming", function()
    it("uses client:stream, on_text gets text as it arrives, the final comes from the stream", function()
      local texts = {}
      local c = fake_client {
        { chunks = { chunk("Let me "), chunk("check.") },
          final = completion({ role = "assistant", content = "Let me check.",
            tool_calls = { call("c1", "get_weather", '{"city":"Oslo"}') } }, "tool_calls",
            { prompt_tokens = 3, completion_tokens = 4, total_tokens = 7 }) },
        { chunks = { chunk("Oslo: "), chunk(""), chunk("21") },
          final = completion({ role = "assistant", content = "Oslo: 21" }, "stop",
            { prompt_tokens = 5, completion_tokens = 2, total_tokens = 7 }) },
      }
      local a = agent_mod { client = c, model = "m", tools = { weather }, stream = true,
        on_text = function(t) texts[#texts + 1] = t end }
      local res = assert(a:run("Oslo?"))
      assert.equal(2, c.streams)
      assert.equal(0, c.chats)
      assert.same({ "Let me ", "check.", "Oslo: ", "21" }, texts) -- empty deltas are not passed on
      assert.equal("Oslo: 21", res.content)
      assert.equal(2, res.turns)
      assert.same({ prompt_tokens = 8, completion_tokens = 6, total_tokens = 14 }, res.usage)
      assert.equal("Let me check.", c.requests[2].messages[2].content)
      assert.equal('{"city":"Oslo","temp_c":21}', c.requests[2].messages[3].content)
    end)

    it("a stream error ends the run and keeps the partial text in err.result.content", function()
      local net = core.error { kind = "network", message = "connection reset" }
      local c = fake_client {
        { chunks = { chunk("Half an ") }, final = completion({ role = "assistant", content = "Half an " }, null),
          err = net },
      }
      local texts = {}
      local res, err = agent_mod { client = c, model = "m", stream = true,
        on_text = function(t) texts[#texts + 1] = t end }:run("x")
      assert.is_nil(res)
      assert.equal(net, err)
      assert.equal("Half an ", err.result.content)
      assert.equal(0, err.result.turns)
      assert.equal(1, #err.result.messages) -- the user message only
      assert.same({ "Half an " }, texts)
    end)

    it("a stream that fails before any data ends the run with the client's error", function()
      local c = fake_client { { err = core.error { kind = "invalid_api_key", message = "bad key", status = 401 } } }
      local res, err = agent_mod { client = c, model = "m", stream = true }:run("x")
      assert.is_nil(res)
      assert.equal("invalid_api_key", err.kind)
      assert.equal("", err.result.content)
    end)

    it("an error in on_text while streaming stops the stream and ends the run with kind callback", function()
      local c = fake_client {
        { chunks = { chunk("one"), chunk("two"), chunk("three") },
          final = completion({ role = "assistant", content = "onetwothree" }, "stop") },
      }
      local calls = 0
      local res, err = agent_mod { client = c, model = "m", stream = true, on_text = function(t)
        calls = calls + 1
        if t == "two" then error("cannot print") end
      end }:run("x")
      assert.is_nil(res)
      assert.equal("callback", err.kind)
      assert.matches("^on_text failed: .*cannot print", err.message)
      assert.equal(2, calls) -- the stream stopped at the failing chunk
      assert.equal(1, #err.result.messages)
    end)
  end)

  describe("parallel calls", function()
    -- Load a copy of the agent module bound to a fake scheduler.
    local function agent_with_sched(fake)
      local saved_sched, saved_agent = package.loaded["luachat.sched"], package.loaded["luachat.agent"]
      package.loaded["luachat.sched"] = fake
      package.loaded["luachat.agent"] = nil
      local ok, mod = pcall(require, "luachat.agent")
      package.loaded["luachat.sched"] = saved_sched
      package.loaded["luachat.agent"] = saved_agent
      assert(ok, mod)
      return mod
    end

    -- A scheduler that defers every task and runs them in reverse order at gather time.
    local function reversing_sched()
      local s = { spawned = 0, gathers = 0, ran = {} }
      function s.spawn(fn, ...)
        s.spawned = s.spawned + 1
        local args = table.pack(...)
        local t = {}
        function t.run() t.results = table.pack(fn(table.unpack(args, 1, args.n))) end
        function t.wait() if not t.results then t.run() end return table.unpack(t.results, 1, t.results.n) end
        return t
      end
      function s.gather(list)
        s.gathers = s.gathers + 1
        for i = #list, 1, -1 do list[i].run() end
        local out = {}
        for i, t in ipairs(list) do out[i] = { t.wait() } end
        return out
      end
      s.sleep = function() end
      return s
    end

    local function city_calls(cities)
      local calls = {}
      for i, city in ipairs(cities) do calls[i] = call("c" .. i, "get_weather", enc { city = city }) end
      return calls
    end

    it("spawns one task per call and keeps the results in call order whatever order they finish in", function()
      local fake = reversing_sched()
      local mod = agent_with_sched(fake)
      local c = fake_client { calls_reply(city_calls { "A", "B", "C", "D" }), text_reply("ok") }
      assert(mod { client = c, model = "m", tools = { weather } }:run("x"))
      assert.equal(4, fake.spawned)
      assert.equal(1, fake.gathers)
      -- the handlers really ran in reverse ...
      local ran = {}
      for i, w in ipairs(weather_args) do ran[i] = w.args.city end
      assert.same({ "D", "C", "B", "A" }, ran)
      -- ... and the tool messages still follow the calls
      local content, order = tool_messages(c.requests[2].messages)
      assert.same({ "c1", "c2", "c3", "c4" }, order)
      assert.equal('{"city":"A","temp_c":21}', content.c1)
      assert.equal('{"city":"D","temp_c":21}', content.c4)
    end)

    it("parallel = false, or a single call, runs without tasks", function()
      local fake = reversing_sched()
      local mod = agent_with_sched(fake)
      local c = fake_client { calls_reply(city_calls { "A", "B" }), calls_reply(city_calls { "Z" }), text_reply("ok") }
      assert(mod { client = c, model = "m", tools = { weather }, parallel = false }:run("x"))
      assert.equal(0, fake.spawned)
      local c2 = fake_client { calls_reply(city_calls { "Z" }), text_reply("ok") }
      assert(mod { client = c2, model = "m", tools = { weather } }:run("x"))
      assert.equal(0, fake.spawned)
      local ran = {}
      for i, w in ipairs(weather_args) do ran[i] = w.args.city end
      assert.same({ "A", "B", "Z", "Z" }, ran)
    end)

    it("with the real scheduler, handlers that sleep overlap and results keep call order", function()
      local events = {}
      local slow = agent_mod.tool { name = "slow",
        parameters = { type = "object", properties = { ms = { type = "integer" } }, required = { "ms" } },
        handler = function(args, info)
          events[#events + 1] = "start " .. info.id
          sched.sleep(args.ms / 1000)
          events[#events + 1] = "end " .. info.id
          return "slept " .. args.ms
        end }
      local c = fake_client { calls_reply({ call("a", "slow", '{"ms":60}'), call("b", "slow", '{"ms":30}'),
        call("c", "slow", '{"ms":1}') }), text_reply("ok") }
      assert(agent_mod { client = c, model = "m", tools = { slow } }:run("x"))
      -- all three started before any ended: they ran as concurrent tasks
      assert.same({ "start a", "start b", "start c" }, { events[1], events[2], events[3] })
      assert.equal(6, #events)
      local content, order = tool_messages(c.requests[2].messages)
      assert.same({ "a", "b", "c" }, order)
      assert.same({ a = "slept 60", b = "slept 30", c = "slept 1" }, content)
      assert.equal(0, sched.live_tasks())
    end)

    it("handlers may run sub-agents on their own client inside parallel tasks", function()
      local sub_client = fake_client {
        function(req) return text_reply("sub: " .. req.messages[#req.messages].content) end,
        function(req) return text_reply("sub: " .. req.messages[#req.messages].content) end,
      }
      local ask = agent_mod.tool { name = "ask",
        parameters = { type = "object", properties = { q = { type = "string" } }, required = { "q" } },
        handler = function(args)
          local sub = agent_mod { client = sub_client, model = "small" }
          sched.sleep(0.001)
          local r, e = sub:run(args.q)
          if not r then return nil, e end
          return r.content
        end }
      local c = fake_client { calls_reply({ call("q1", "ask", '{"q":"one"}'), call("q2", "ask", '{"q":"two"}') }),
        text_reply("ok") }
      assert(agent_mod { client = c, model = "m", tools = { ask } }:run("x"))
      local content = tool_messages(c.requests[2].messages)
      assert.same({ q1 = "sub: one", q2 = "sub: two" }, content)
      assert.equal(2, #sub_client.requests)
      assert.equal(0, sched.live_tasks())
    end)
  end)

  describe("save and load", function()
    local path
    before_each(function() path = os.tmpname() end)
    after_each(function() os.remove(path) end)

    local function read(p)
      local f = assert(io.open(p, "rb"))
      local s = f:read("a")
      f:close()
      return s
    end
    local function write(p, s)
      local f = assert(io.open(p, "wb"))
      f:write(s)
      f:close()
    end

    it("round-trips the transcript exactly: arrays stay arrays, nulls stay null", function()
      local first = completion(json.decode('{"role":"assistant","content":null,"annotations":[],"refusal":null,' ..
        '"tool_calls":[{"id":"c1","type":"function","function":{"name":"get_weather","arguments":"{\\"city\\":\\"Oslo\\"}"}}]}'),
        "tool_calls")
      local c = fake_client { first, text_reply("Oslo 21"), text_reply("Still 21") }
      local a = agent_mod { client = c, model = "gpt-4o-mini", system = "You are terse.", tools = { weather } }
      assert(a:run("Oslo?"))
      assert(a:save(path))

      local text = read(path)
      local data = assert(json.decode(text))
      assert.equal(1, data.version)
      assert.equal("gpt-4o-mini", data.model)
      assert.equal("You are terse.", data.system)
      assert.equal(5, #data.messages)
      assert.matches('"annotations":%[%]', text)
      assert.matches('"content":null', text)
      assert.matches('"tool_calls":%[{', text)

      local b = assert(agent_mod.load(path, { client = c, tools = { weather } }))
      assert.equal("gpt-4o-mini", b.model)
      assert.equal("You are terse.", b.system)
      assert.equal(enc(a.messages), enc(b.messages))
      -- saving the loaded agent writes the same bytes
      local path2 = os.tmpname()
      assert(b:save(path2))
      assert.equal(text, read(path2))
      os.remove(path2)
      -- and it continues the conversation, with the system prompt once
      local r = assert(b:run("And tomorrow?"))
      assert.equal("Still 21", r.content)
      local sent = c.requests[3].messages
      assert.equal(6, #sent)
      assert.equal("system", sent[1].role)
      assert.equal(enc(a.messages[3]), enc(sent[3]))
    end)

    it("load: opts.model overrides the saved model", function()
      local a = agent_mod { client = fake_client {}, model = "one" }
      assert(a:save(path))
      local b = assert(agent_mod.load(path, { client = fake_client {}, model = "two" }))
      assert.equal("two", b.model)
      assert.equal(0, #b.messages)
      assert.equal('{"messages":[],"model":"one","version":1}\n', read(path))
    end)

    it("load: a missing file is an environment error, bad JSON or a wrong shape a deserialise error", function()
      local opts = { client = fake_client {} }
      local res, err = agent_mod.load(path .. ".does-not-exist", opts)
      assert.is_nil(res)
      assert.equal("environment", err.kind)
      assert.matches("does%-not%-exist", err.message)

      write(path, '{"version":1,"messages":[')
      res, err = agent_mod.load(path, opts)
      assert.is_nil(res)
      assert.equal("deserialise", err.kind)

      write(path, '{"version":1,"model":"m","messages":{"role":"user"}}')
      res, err = agent_mod.load(path, opts)
      assert.is_nil(res)
      assert.equal("deserialise", err.kind)

      write(path, '{"version":2,"model":"m","messages":[]}')
      res, err = agent_mod.load(path, opts)
      assert.is_nil(res)
      assert.equal("deserialise", err.kind)
      assert.matches("version 2", err.message)
    end)

    it("save: an unwritable path is an environment error", function()
      local a = agent_mod { client = fake_client {}, model = "m" }
      local ok, err = a:save("/nonexistent-dir/x/chat.json")
      assert.is_nil(ok)
      assert.equal("environment", err.kind)
    end)
  end)
end)
