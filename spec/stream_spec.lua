-- Streaming against the local test server: provider-shaped streams, byte
-- splits, in-band errors, cuts, cancellation, the pull form.
local server = require "spec.helpers.server"
local luachat = require "luachat"
local core = require "luachat.core"
local json = luachat.json

local function chunk(fields)
  local c = { id = "chatcmpl-s", object = "chat.completion.chunk", created = 1700000000, model = "m" }
  for k, v in pairs(fields) do c[k] = v end
  return c
end

local function text_chunk(text, extra)
  local delta = { content = text }
  for k, v in pairs(extra or {}) do delta[k] = v end
  return chunk { choices = { { index = 0, delta = delta, finish_reason = json.null } } }
end

local function finish_chunk(reason)
  return chunk { choices = { { index = 0, delta = {}, finish_reason = reason or "stop" } } }
end

local usage_chunk = chunk { choices = json.array {}, usage = { prompt_tokens = 5, completion_tokens = 3, total_tokens = 8 } }

-- An SSE stream as one string, from a list of JSON values, with a line end.
local function sse_text(events, eol, done)
  eol = eol or "\n"
  local out = {}
  for _, e in ipairs(events) do out[#out + 1] = "data: " .. json.encode(e) .. eol .. eol end
  if done ~= false then out[#out + 1] = "data: [DONE]" .. eol .. eol end
  return table.concat(out)
end

local function read_fixture(name)
  local f = io.open("spec/fixtures/sse/" .. name)
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

describe("streaming", function()
  local srv, c

  setup(function()
    srv = server.start()
  end)
  teardown(function() if srv then srv:stop() end end)
  before_each(function()
    srv:reset()
    c = luachat.client { base_url = srv.base_url, api_key = "sk-stream-test", idle_timeout = 5 }
  end)
  after_each(function() assert.equal(0, core.live(), "a transfer was left running") end)

  local req = { model = "m", messages = { { role = "user", content = "hi" } } }
  local basic = { text_chunk("Hel", { role = "assistant" }), text_chunk("lo"), text_chunk(" world"), finish_chunk(), usage_chunk }

  it("sends stream=true and include_usage by default, and accumulates the final", function()
    srv:script { { body = sse_text(basic), content_type = "text/event-stream" } }
    local seen = {}
    local final, err = c:stream(req, function(ch) seen[#seen + 1] = luachat.delta_text(ch) end)
    assert.is_nil(err)
    assert.same({ "Hel", "lo", " world", "", "" }, seen)
    assert.equal("chat.completion", final.object)
    assert.equal("chatcmpl-s", final.id)
    assert.equal("Hello world", final.choices[1].message.content)
    assert.equal("assistant", final.choices[1].message.role)
    assert.equal("stop", final.choices[1].finish_reason)
    assert.equal(8, final.usage.total_tokens)
    local sent = srv:requests()[1].json
    assert.is_true(sent.stream)
    assert.same({ include_usage = true }, sent.stream_options)
    assert.equal("text/event-stream", srv:requests()[1].headers["accept"])
  end)

  it("keeps the script's own stream_options, and omits them when false", function()
    srv:script { { body = sse_text(basic) , content_type = "text/event-stream" }, { body = sse_text(basic), content_type = "text/event-stream" } }
    assert.truthy(c:stream({ model = "m", messages = {}, stream_options = { include_usage = false } }))
    assert.truthy(c:stream({ model = "m", messages = {}, stream_options = false }))
    local reqs = srv:requests()
    assert.same({ include_usage = false }, reqs[1].json.stream_options)
    assert.is_nil(reqs[2].json.stream_options)
  end)

  it("handles events split at every few bytes, CRLF line ends, comments and multi-line data", function()
    local body = ": OPENROUTER PROCESSING\r\n\r\n" .. sse_text(basic, "\r\n")
    srv:script { { body = body, content_type = "text/event-stream", write_size = 3 } }
    local final, err = c:stream(req)
    assert.is_nil(err)
    assert.equal("Hello world", final.choices[1].message.content)
    -- one JSON object spread over two data: lines is joined with "\n" (valid JSON whitespace)
    local enc = json.encode(text_chunk("multi"), { sort_keys = true })
    local comma = enc:find(',"id"', 1, true) -- split between two members: "\n" is then JSON whitespace
    local a, b = enc:sub(1, comma), enc:sub(comma + 1)
    srv:script { { body = "data: " .. a .. "\ndata: " .. b .. "\n\n: keep-alive\n\ndata: [DONE]\n\n", content_type = "text/event-stream", write_size = 1 } }
    final, err = c:stream(req)
    assert.is_nil(err)
    assert.equal("multi", final.choices[1].message.content)
  end)

  it("a stream that ends cleanly without [DONE] is complete", function()
    srv:script { { body = sse_text(basic, "\n", false), content_type = "text/event-stream" } }
    local final, err = c:stream(req)
    assert.is_nil(err)
    assert.equal("Hello world", final.choices[1].message.content)
    assert.equal(8, final.usage.total_tokens)
  end)

  it("accumulates parallel tool calls from deltas, arguments exact", function()
    local function tc(i, fields) return chunk { choices = { { index = 0, delta = { tool_calls = { fields } }, finish_reason = json.null } } } end
    local events = {
      chunk { choices = { { index = 0, delta = { role = "assistant", content = json.null }, finish_reason = json.null } } },
      tc(0, { index = 0, id = "call_a", type = "function", ["function"] = { name = "get_weather", arguments = "" } }),
      tc(0, { index = 0, ["function"] = { arguments = '{"ci' } }),
      tc(1, { index = 1, id = "call_b", type = "function", ["function"] = { name = "get_time", arguments = '{"tz":' } }),
      tc(0, { index = 0, ["function"] = { arguments = 'ty": "Paris"}' } }),
      tc(1, { index = 1, ["function"] = { arguments = ' "UTC"}' } }),
      finish_chunk("tool_calls"),
    }
    srv:script { { body = sse_text(events), content_type = "text/event-stream", write_size = 17 } }
    local final, err = c:stream(req)
    assert.is_nil(err)
    local msg = final.choices[1].message
    assert.equal("tool_calls", final.choices[1].finish_reason)
    assert.equal(2, #msg.tool_calls)
    assert.equal("call_a", msg.tool_calls[1].id)
    assert.equal("get_weather", msg.tool_calls[1]["function"].name)
    assert.equal('{"city": "Paris"}', msg.tool_calls[1]["function"].arguments)
    assert.equal("call_b", msg.tool_calls[2].id)
    assert.equal('{"tz": "UTC"}', msg.tool_calls[2]["function"].arguments)
  end)

  describe("provider-shaped fixtures", function()
    -- Each fixture is a real-shaped stream; fed with small writes it must give
    -- the same final as fed whole.
    local names = {}
    local p = io.popen("ls spec/fixtures/sse/*.sse 2>/dev/null")
    for line in p:lines() do names[#names + 1] = line:match("([^/]+)$") end
    p:close()

    it("there is a corpus of provider streams", function()
      assert.is_true(#names >= 8, "expected provider fixtures in spec/fixtures/sse")
    end)

    for _, name in ipairs(names) do
      it(name .. " gives the same final whole and split into 5-byte writes", function()
        local body = read_fixture(name)
        srv:script {
          { body = body, content_type = "text/event-stream" },
          { body = body, content_type = "text/event-stream", write_size = 5 },
        }
        local whole, err1 = c:stream(req)
        local split, err2 = c:stream(req)
        if name:match("error") then
          assert.equal("api", err1 and err1.kind)
          assert.equal("api", err2 and err2.kind)
        else
          assert.is_nil(err1)
          assert.is_nil(err2)
        end
        assert.same(whole, split)
        assert.equal("chat.completion", whole.object)
        local m = whole.choices[1] and whole.choices[1].message
        assert.truthy(m, "no message accumulated")
        assert.is_true((type(m.content) == "string" and #m.content > 0) or (m.tool_calls and #m.tool_calls > 0)
          or (type(m.refusal) == "string" and #m.refusal > 0) or (type(m.audio) == "table" and m.audio.transcript ~= nil)
          or (err1 ~= nil), "empty final from " .. name)
      end)
    end
  end)

  describe("in-band errors keep what came before", function()
    it("data: {error} mid-stream", function()
      srv:script { { body = sse_text({ text_chunk("partial "), { error = { message = "overloaded", type = "server_error" } } }, "\n", false),
        content_type = "text/event-stream" } }
      local final, err = c:stream(req)
      assert.equal("api", err.kind)
      assert.matches("overloaded", err.message, 1, true)
      assert.equal("partial ", final.choices[1].message.content)
    end)

    it("event: error", function()
      srv:script { { body = sse_text({ text_chunk("a") }, "\n", false) .. 'event: error\ndata: {"error":{"message":"quota"}}\n\n',
        content_type = "text/event-stream" } }
      local final, err = c:stream(req)
      assert.equal("api", err.kind)
      assert.matches("quota", err.message, 1, true)
      assert.equal("a", final.choices[1].message.content)
    end)

    it("llama.cpp's error: line", function()
      srv:script { { body = sse_text({ text_chunk("b") }, "\n", false) .. 'error: {"code":500,"message":"context full","type":"server_error"}\n\n',
        content_type = "text/event-stream" } }
      local final, err = c:stream(req)
      assert.equal("api", err.kind)
      assert.matches("context full", err.message, 1, true)
      assert.equal("b", final.choices[1].message.content)
    end)

    it("invalid JSON in an event is a deserialise error with the event number", function()
      srv:script { { body = sse_text({ text_chunk("ok") }, "\n", false) .. "data: {not json\n\n", content_type = "text/event-stream" } }
      local final, err = c:stream(req)
      assert.equal("deserialise", err.kind)
      assert.matches("invalid JSON in event 2", err.message, 1, true)
      assert.equal("ok", final.choices[1].message.content)
    end)
  end)

  describe("cuts, stalls and limits", function()
    it("a connection dropped mid-stream is a network error with the partial final, not retried", function()
      local body = sse_text({ text_chunk("kept "), text_chunk("text") }, "\n", false) .. sse_text({ text_chunk("lost") }, "\n", false)
      local cut = #sse_text({ text_chunk("kept "), text_chunk("text") }, "\n", false) + 10
      srv:script { { body = body, content_type = "text/event-stream", chunked = false, close_after_body = cut } }
      local final, err = c:stream(req)
      assert.equal("network", err.kind)
      assert.equal("kept text", final.choices[1].message.content)
      assert.equal(1, #srv:requests())
    end)

    it("the idle timeout applies between chunks", function()
      -- 2 s, not less: on a loaded machine "first" itself may take a while to come
      srv:script { { sse = { { json = text_chunk("first") }, { json = text_chunk("late"), delay = 20 } }, done = true } }
      local final, err = luachat.client { base_url = srv.base_url, idle_timeout = 2 }:stream(req)
      assert.equal("timeout", err.kind)
      assert.equal("first", final.choices[1].message.content)
    end)

    it("a failure before the first byte is retried", function()
      srv:script {
        { status = 503, json = { error = { message = "busy" } }, headers = { ["retry-after-ms"] = "1" } },
        { body = sse_text(basic), content_type = "text/event-stream" },
      }
      local final, err = c:stream(req)
      assert.is_nil(err)
      assert.equal("Hello world", final.choices[1].message.content)
      local reqs = srv:requests()
      assert.equal(2, #reqs)
      assert.equal(reqs[1].headers["idempotency-key"], reqs[2].headers["idempotency-key"])
    end)

    it("an HTTP error before the stream returns nil, err", function()
      srv:script { { status = 401, json = { error = { message = "Incorrect API key" } } } }
      local final, err = c:stream(req)
      assert.is_nil(final)
      assert.equal("invalid_api_key", err.kind)
    end)

    it("an event over max_event ends with a clear error, memory bounded", function()
      srv:script { { body = "data: " .. string.rep("x", 200000) .. "\n\n", content_type = "text/event-stream" } }
      local _, err = luachat.client { base_url = srv.base_url, max_event = 65536 }:stream(req)
      assert.equal("deserialise", err.kind)
      assert.matches("limit", err.message, 1, true)
    end)

    it("a server that ignores stream=true and sends JSON still gives the final", function()
      srv:script { { json = { id = "x", object = "chat.completion", created = 1, model = "m",
        choices = { { index = 0, message = { role = "assistant", content = "whole" }, finish_reason = "stop" } } } } }
      local final, err = c:stream(req)
      assert.is_nil(err)
      assert.equal("whole", final.choices[1].message.content)
    end)

    -- The same server, every form a script may use: nothing of the answer is lost
    -- (the callbacks, the text path and the iterators saw nothing before).
    describe("a server that ignores stream=true: the whole completion is one chunk", function()
      local WHOLE = { id = "x", object = "chat.completion", created = 1, model = "m", service_tier = "default",
        choices = {
          { index = 0, message = { role = "assistant", content = "whole" }, finish_reason = "stop", logprobs = luachat.json.null },
          { index = 1, message = { role = "assistant", content = luachat.json.null,
            tool_calls = { { id = "c1", type = "function", ["function"] = { name = "f", arguments = "{}" } } } },
            finish_reason = "tool_calls" },
        },
        usage = { prompt_tokens = 3, completion_tokens = 2, total_tokens = 5 } }
      before_each(function() srv:script { { json = WHOLE } } end)

      local function check_chunk(ch)
        assert.equal("chat.completion.chunk", ch.object)
        assert.equal("x", ch.id)
        assert.equal("default", ch.service_tier)
        assert.same(WHOLE.usage, ch.usage)
        assert.same({ role = "assistant", content = "whole" }, ch.choices[1].delta)
        assert.equal("stop", ch.choices[1].finish_reason)
        assert.is_nil(ch.choices[1].message)
        assert.same({ { index = 0, id = "c1", type = "function", ["function"] = { name = "f", arguments = "{}" } } },
          ch.choices[2].delta.tool_calls)
      end

      it("on_chunk and on_text get it; the final is the completion as sent", function()
        local chunks, texts = {}, {}
        local final, err = c:stream(req, {
          on_chunk = function(ch)
            chunks[#chunks + 1] = luachat.json.decode(luachat.json.encode(ch))
            ch.usage.total_tokens = -1 -- the chunk is the script's: the final is not changed through it
            ch.choices[1].delta.content = "changed"
          end,
          on_text = function(t, i) texts[#texts + 1] = { t, i } end,
        })
        assert.is_nil(err)
        assert.equal(1, #chunks)
        check_chunk(chunks[1])
        assert.same({ { "whole", 0 } }, texts)
        assert.equal("chat.completion", final.object)
        assert.equal("whole", final.choices[1].message.content)
        assert.equal(5, final.usage.total_tokens)
      end)

      it("the plain callback, on_text alone, chunks() and text() get it", function()
        local got = {}
        c:stream(req, function(ch) got[#got + 1] = ch end)
        assert.equal(1, #got)
        check_chunk(got[1])

        srv:script { { json = WHOLE } }
        local texts = {}
        local final = c:stream(req, { on_text = function(t) texts[#texts + 1] = t end })
        assert.same({ "whole" }, texts)
        assert.equal("whole", final.choices[1].message.content)

        srv:script { { json = WHOLE } }
        local s = assert(c:open_stream(req))
        local pulled = {}
        for ch in s:chunks() do pulled[#pulled + 1] = ch end
        assert.equal(1, #pulled)
        check_chunk(pulled[1])
        local f2, e2 = s:result()
        assert.is_nil(e2)
        assert.equal("whole", f2.choices[1].message.content)

        srv:script { { json = WHOLE } }
        s = assert(c:open_stream(req))
        local pieces = {}
        for t, i in s:text() do pieces[#pieces + 1] = t .. "@" .. i end
        assert.same({ "whole@0" }, pieces)
        assert.equal("whole", s:result().choices[1].message.content)
      end)

      it("the agent's streaming mode hands its text to on_text", function()
        local texts = {}
        local agent = luachat.agent { client = c, model = "m", stream = true,
          on_text = function(t) texts[#texts + 1] = t end }
        srv:script { { json = { id = "y", object = "chat.completion", created = 1, model = "m",
          choices = { { index = 0, message = { role = "assistant", content = "answer" }, finish_reason = "stop" } } } } }
        local result = assert(agent:run("hi"))
        assert.equal("answer", result.content)
        assert.same({ "answer" }, texts)
      end)
    end)

    it("a 200 HTML body is a clear error", function()
      srv:script { { body = "<html><body>proxy login</body></html>\n", content_type = "text/html" } }
      local _, err = c:stream(req)
      assert.equal("deserialise", err.kind)
      assert.matches("text/html", err.message, 1, true)
    end)
  end)

  describe("callbacks", function()
    it("returning false cancels: err.kind cancelled, final keeps what arrived", function()
      srv:script { { sse = { { json = text_chunk("one") }, { json = text_chunk("two") }, { json = text_chunk("three"), delay = 2 } }, done = true } }
      local calls = 0
      local final, err = c:stream(req, function(ch)
        calls = calls + 1
        if calls == 2 then return false end
      end)
      assert.equal(2, calls)
      assert.equal("cancelled", err.kind)
      assert.equal("onetwo", final.choices[1].message.content)
    end)

    it("a Lua error in the callback propagates with its traceback and leaves no transfer", function()
      srv:script { { sse = { { json = text_chunk("one") }, { json = text_chunk("two"), delay = 1 } }, done = true } }
      local ok, msg = pcall(c.stream, c, req, function() error("callback exploded") end)
      assert.is_false(ok)
      assert.matches("callback exploded", msg, 1, true)
      assert.matches("stack traceback", msg, 1, true)
      assert.equal(0, core.live())
    end)
  end)

  describe("pull form", function()
    it("chunks() and result()", function()
      srv:script { { body = sse_text(basic), content_type = "text/event-stream" } }
      local s <close> = assert(c:open_stream(req))
      local texts = {}
      for ch in s:chunks() do texts[#texts + 1] = luachat.delta_text(ch) end
      local final, err = s:result()
      assert.is_nil(err)
      assert.equal("Hello world", table.concat(texts))
      assert.equal("Hello world", final.choices[1].message.content)
    end)

    it("closing early cancels the transfer and keeps the partial", function()
      srv:script { { sse = { { json = text_chunk("a") }, { json = text_chunk("b"), delay = 3 } }, done = true } }
      local final, err
      do
        local s <close> = assert(c:open_stream(req))
        assert.equal("a", luachat.delta_text(s:chunks()()))
        s:close()
        final, err = s:result()
      end
      assert.equal("cancelled", err.kind)
      assert.equal("a", final.choices[1].message.content)
      assert.equal(0, core.live())
    end)

    it("a slow consumer pauses the transfer instead of buffering everything", function()
      -- 4 MiB of events; consumed slowly after a pause, the whole stream still arrives intact.
      local events = {}
      for i = 1, 16000 do events[i] = text_chunk(string.format("%05d", i)) end
      srv:script { { body = sse_text(events), content_type = "text/event-stream" } }
      local s <close> = assert(c:open_stream(req))
      luachat.sleep(0.5) -- not consuming: curl must pause at the high-water mark
      local n = 0
      for _ in s:chunks() do n = n + 1 end
      local final, err = s:result()
      assert.is_nil(err)
      assert.equal(16000, n)
      assert.equal(16000 * 5, #final.choices[1].message.content)
    end)
  end)

  it("streams run concurrently in tasks: the server answers none until all 10 arrived", function()
    -- one at a time would get a 504 after hold_timeout
    srv:default { sse = { { json = text_chunk("x") }, { json = text_chunk("y") } }, done = true, hold_until = 10, hold_timeout = 60 }
    local ts = {}
    for i = 1, 10 do ts[i] = luachat.spawn(function() return c:stream(req) end) end
    for i = 1, 10 do
      local final, err = ts[i]:wait()
      assert.is_nil(err)
      assert.equal("xy", final.choices[1].message.content)
    end
    assert.equal(10, #srv:requests())
  end)
end)
