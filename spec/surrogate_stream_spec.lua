-- A surrogate pair split across two stream chunks (issue 13 item 4): a
-- provider that cuts UTF-16 text sends "\ud83d" at the end of one delta and
-- "\ude00" at the start of the next. The stream must go on, the final must
-- hold the real character, and a half that never meets its partner becomes
-- U+FFFD. Checked in the callback, pull and chat{stream=true} forms, with the
-- agent's on_text, and against the C fast path's accumulator.
local server = require "spec.helpers.server"
local proc = require "spec.helpers.proc"
local luachat = require "luachat"
local core = require "luachat.core"
local stream = require "luachat.stream"
local json = luachat.json

local HEAD = '"id":"chatcmpl-x","object":"chat.completion.chunk","created":1700000000,"model":"m"'

-- One chunk's JSON, with the content given as raw JSON string text (escapes kept as written).
local function text_event(raw, extra)
  return "{" .. HEAD .. ',"choices":[{"index":0,"delta":{' .. (extra or "") .. '"content":"' .. raw
    .. '"},"finish_reason":null}]}'
end

local EVENTS = {
  text_event("Hi ", '"role":"assistant",'),
  text_event("A\\ud83d"),          -- high half at the end of a delta
  text_event("\\ude00B"),          -- low half at the start of the next one
  text_event(" plain"),            -- a plain chunk (C fast path) between
  text_event("\\ud83d"),           -- a delta that is only a high half
  text_event("\\ude03"),           -- and one that is only its low half
  text_event("x\\ud83d"),          -- a high half whose partner never comes
  text_event("C\\ude00"),          -- a low half with nothing before it
  "{" .. HEAD .. ',"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function",'
    .. '"function":{"name":"f","arguments":"{\\"s\\":\\"\\ud83d"}}]},"finish_reason":null}]}',
  "{" .. HEAD .. ',"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,'
    .. '"function":{"arguments":"\\ude00\\"}"}}]},"finish_reason":null}]}',
  "{" .. HEAD .. ',"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}',
  "{" .. HEAD .. ',"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":9,"total_tokens":14}}',
}
local CONTENT = "Hi A😀B plain😃x\u{FFFD}C\u{FFFD}"
local ARGS = '{"s":"😀"}'

local function sse_body()
  local out = {}
  for _, e in ipairs(EVENTS) do out[#out + 1] = "data: " .. e .. "\n\n" end
  out[#out + 1] = "data: [DONE]\n\n"
  return table.concat(out)
end

local function check_final(final, err)
  assert.is_nil(err, err and tostring(err))
  local choice = final.choices[1]
  assert.equal(CONTENT, choice.message.content)
  assert.equal(ARGS, choice.message.tool_calls[1]["function"].arguments)
  assert.equal("stop", choice.finish_reason)           -- later events were not lost
  assert.equal(14, final.usage.total_tokens)
  assert.is_truthy(utf8.len(choice.message.content))   -- valid UTF-8
end

describe("a surrogate pair split across chunks", function()
  local srv, c
  local req = { model = "m", messages = { { role = "user", content = "hi" } } }

  setup(function() srv = server.start() end)
  teardown(function() if srv then srv:stop() end end)
  before_each(function()
    srv:reset()
    srv:script { { body = sse_body(), content_type = "text/event-stream", write_size = 7 } }
    c = luachat.client { base_url = srv.base_url, api_key = "sk-surrogate", idle_timeout = 5 }
  end)
  after_each(function() assert.equal(0, core.live(), "a transfer was left running") end)

  it("callback form: every chunk arrives, the final joins the pair", function()
    local texts, n = {}, 0
    local final, err = c:stream(req, function(chunk)
      n = n + 1
      texts[#texts + 1] = luachat.delta_text(chunk)
    end)
    check_final(final, err)
    assert.equal(#EVENTS, n)
    -- Each chunk's own text keeps the half it carries, as WTF-8 bytes (documented).
    assert.equal("A\xED\xA0\xBD", texts[2])
    assert.equal("\xED\xB8\x80B", texts[3])
  end)

  it("pull form: every chunk arrives, the final joins the pair", function()
    local s <close> = assert(c:open_stream(req))
    local n = 0
    for _ in s:chunks() do n = n + 1 end
    check_final(s:result())
    assert.equal(#EVENTS, n)
  end)

  it("chat{stream = true}: the final joins the pair", function()
    local r = { model = "m", messages = req.messages, stream = true }
    check_final(c:chat(r))
  end)

  it("agent on_text: the run completes with the real characters", function()
    srv:script { { body = sse_body():gsub('"tool_calls":%[.-%]', '"content":""'),
      content_type = "text/event-stream", write_size = 5 } }
    local seen = {}
    local agent = luachat.agent { client = c, model = "m", stream = true,
      on_text = function(t) seen[#seen + 1] = t end }
    local result, err = agent:run("hi")
    assert.is_nil(err, err and tostring(err))
    assert.equal(CONTENT, result.content)
    assert.is_true(#seen >= 6)
    -- on_text gets whole characters: a high half waits for its low half in the next chunk
    assert.equal(CONTENT, table.concat(seen))
    for _, t in ipairs(seen) do assert.is_truthy(utf8.len(t), t) end
  end)

  it("the command line prints the real characters #once", function()
    local home = proc.tmpdir()
    local out, errout, code = proc.run(string.format(
      "env HOME=%s XDG_CONFIG_HOME=%s/c XDG_STATE_HOME=%s/s LUACHAT_PROFILE= LUACHAT_MODEL= "
      .. "LUACHAT_BASE_URL= OPENAI_BASE_URL=%s OPENAI_API_KEY=sk-surrogate %s -m m -p hi",
      home, home, home, proc.shell_quote(srv.base_url), proc.host))
    os.execute("rm -rf " .. proc.shell_quote(home))
    assert.equal(0, code, errout)
    assert.equal(CONTENT .. "\n", out)
  end)
end)

describe("the accumulator joins halves the same on both paths", function()
  it("C fast path and Lua path agree, and the final is valid UTF-8", function()
    local lua_acc, fast = stream.accumulator(), stream.accumulator()
    local opt = { surrogates = "wtf8" }
    for _, data in ipairs(EVENTS) do
      lua_acc:add(assert(json.decode(data, opt)))
      if not fast:add_data(data) then fast:add(assert(json.decode(data, opt))) end
    end
    assert.equal(CONTENT, lua_acc:result().choices[1].message.content)
    assert.equal(json.encode(lua_acc:result(), { sort_keys = true }), json.encode(fast:result(), { sort_keys = true }))
  end)

  it("luachat.text_joiner gives whole characters as text arrives", function()
    local join = luachat.text_joiner()
    assert.equal("A", join("A\xED\xA0\xBD"))
    assert.equal("😀B", join("\xED\xB8\x80B"))
    assert.equal("x", join("x\xED\xA0\xBD"))
    assert.equal("\u{FFFD}y", join("y"))          -- the held half met no partner
    assert.equal("", join("\xED\xA0\xBD"))
    assert.equal("\u{FFFD}", join(nil))           -- end: what is held
    assert.equal("", join(nil))
    assert.equal("\u{FFFD}z", luachat.text_joiner()("\xED\xB8\x80z"))
  end)

  it("refusal and reasoning are joined too; other invalid bytes pass through", function()
    local acc = stream.accumulator()
    acc:add { choices = { { index = 0, delta = { refusal = "no \xED\xA0\xBD", reasoning_content = "r\xED\xA0\xBD" } } } }
    acc:add { choices = { { index = 0, delta = { refusal = "\xED\xB8\x80", reasoning = "x", reasoning_content = "\xED\xB8\x81" } } } }
    acc:add { choices = { { index = 0, delta = { content = "\xFF\xED\xA0" } } } }
    local msg = acc:result().choices[1].message
    assert.equal("no 😀", msg.refusal)
    assert.equal("r😁", msg.reasoning_content)
    assert.equal("\xFF\xED\xA0", msg.content) -- not a surrogate half: untouched
  end)
end)
