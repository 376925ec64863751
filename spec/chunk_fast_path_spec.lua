-- The plain-chunk fast path (src/chunk_scan.c, src/lchat_chunks.c) against
-- the Lua path (json.decode + the accumulator): same final for every chunk
-- sequence, the right chunks taken fast, and lazy chunks that behave like
-- decoded tables.
local server = require "spec.helpers.server"
local luachat = require "luachat"
local core = require "luachat.core"
local stream = require "luachat.stream"
local json = luachat.json

-- Feed raw chunk JSON both ways; returns both encoded finals and how many went fast.
local function both_ways(raws)
  local slow, fast = stream.accumulator(), stream.accumulator()
  local nfast = 0
  for _, raw in ipairs(raws) do
    local chunk = json.decode(raw)
    if type(chunk) == "table" then slow:add(chunk) end
    if core.accumulate_plain(fast, raw) then
      nfast = nfast + 1
    elseif type(chunk) == "table" then
      fast:add(json.decode(raw))
    end
  end
  return json.encode(slow:result(), { sort_keys = true }), json.encode(fast:result(), { sort_keys = true }), nfast
end

local head = '"id":"c1","object":"chat.completion.chunk","created":1,"model":"m"'
local function delta(d, extra)
  return '{' .. head .. ',"choices":[{"index":0,"delta":' .. d .. ',"finish_reason":null' .. (extra or "") .. '}]}'
end
local first = delta('{"role":"assistant","content":""}')
local function finish(reason)
  return '{' .. head .. ',"choices":[{"index":0,"delta":{},"finish_reason":"' .. reason .. '"}]}'
end

describe("plain-chunk fast path", function()
  local sequences = {
    ["text, role resent in every delta"] = {
      first, delta('{"role":"assistant","content":"Hel"}'), delta('{"role":"assistant","content":"lo"}'),
      finish("stop"),
    },
    ["escapes: quotes, backslashes, control escapes, BMP and astral \\u"] = {
      first, delta([[{"content":"a\"b\\c\/d\n\t\r\b\f"}]]), delta([[{"content":"caf\u00e9 \u20ac \ud83d\ude00 \u0000end"}]]),
    },
    ["raw UTF-8 passes through"] = { first, delta('{"content":"héllo → 世界 🎉"}') },
    ["reasoning_content and reasoning both sent: counted once"] = {
      first, delta('{"reasoning_content":"think","reasoning":"think"}'), delta('{"reasoning":"more"}'),
      delta('{"reasoning_content":"","reasoning":"alt"}'), delta('{"content":"answer"}'),
    },
    ["refusal"] = { first, delta('{"refusal":"I can"}'), delta('{"refusal":"not."}') },
    ["tool arguments in fragments"] = {
      first,
      delta('{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"f","arguments":""}}]}'),
      delta('{"tool_calls":[{"index":0,"function":{"arguments":"{\\"a\\":"}}]}'),
      delta('{"tool_calls":[{"index":0,"id":"","type":null,"function":{"name":null,"arguments":"1}"}}]}'),
      delta('{"tool_calls":[{"index":1,"id":"call_2","function":{"name":"g","arguments":"{}"}}]}'),
      delta('{"tool_calls":[{"index":0,"function":{"arguments":" "}}]}'),
    },
    ["Ollama: index 0 reused with a new id is a new call"] = {
      first,
      delta('{"tool_calls":[{"index":0,"id":"a","function":{"name":"f","arguments":"{}"}}]}'),
      delta('{"tool_calls":[{"index":0,"id":"b","function":{"name":"g","arguments":"{"}}]}'),
      delta('{"tool_calls":[{"index":0,"function":{"arguments":"}"}}]}'),
    },
    ["Ollama: a new id alone (no name) at a used index is a new call"] = {
      first,
      delta('{"tool_calls":[{"index":0,"id":"a","function":{"name":"f","arguments":"{}"}}]}'),
      delta('{"tool_calls":[{"index":0,"id":"b","function":{"arguments":"[]"}}]}'),
    },
    ["Gemini: calls without index continue the last call"] = {
      first,
      delta('{"tool_calls":[{"id":"a","function":{"name":"f","arguments":"{"}}]}'),
      delta('{"tool_calls":[{"function":{"arguments":"}"}}]}'),
    },
    ["an index-less fragment continues the call an indexed fragment just touched"] = {
      first,
      delta('{"tool_calls":[{"index":0,"id":"a","function":{"name":"f","arguments":"{"}}]}'),
      delta('{"tool_calls":[{"index":1,"id":"b","function":{"name":"g","arguments":"["}}]}'),
      delta('{"tool_calls":[{"index":0,"function":{"arguments":"\\"k\\":"}}]}'),
      delta('{"tool_calls":[{"function":{"arguments":"1}"}}]}'),
    },
    ["a tool fragment for a call never opened"] = {
      first, delta('{"tool_calls":[{"index":3,"function":{"arguments":"x"}}]}'),
    },
    ["several choices, interleaved and in one chunk"] = {
      '{' .. head .. ',"choices":[{"index":1,"delta":{"role":"assistant","content":"B"}}]}',
      '{' .. head .. ',"choices":[{"index":0,"delta":{"role":"assistant","content":"A"}}]}',
      '{' .. head .. ',"choices":[{"index":1,"delta":{"content":"b"}}]}',
      '{' .. head .. ',"choices":[{"index":0,"delta":{"content":"a"}},{"index":1,"delta":{"content":"!"}}]}',
    },
    ["nulls, empty strings, empty choices, usage on every chunk"] = {
      first, delta('{"content":null}'), delta('{"content":""}'), delta('{}'),
      '{' .. head .. ',"choices":[],"usage":null}',
      '{' .. head .. ',"choices":[{"index":0,"delta":{"content":"x"}}],"usage":{"total_tokens":3}}',
      '{' .. head .. ',"choices":null}', '{' .. head .. '}',
    },
    ["head fields arriving late"] = {
      '{"choices":[{"index":0,"delta":{"role":"assistant","content":"a"}}]}',
      '{"id":"late","choices":[{"index":0,"delta":{"content":"b"}}]}',
      '{"id":"later","model":"m2","created":5,"system_fingerprint":"fp","choices":[{"index":0,"delta":{"content":"c"}}]}',
      '{"id":"","model":7,"choices":[{"index":0,"delta":{"content":"d"}}]}',
    },
    ["unknown fields anywhere, nested deeply"] = {
      first,
      '{' .. head .. ',"service_tier":"default","obfuscation":"xyz","x":{"a":[1,2,{"b":[[[]]]}],"c":true},'
        .. '"choices":[{"index":0,"content_filter_results":{"hate":{"filtered":false}},"delta":{"content":"ok","extra":[null]}}]}',
    },
    ["odd shapes go to the Lua path"] = {
      first,
      '{' .. head .. ',"choices":[{"index":0,"delta":{"content":"a"}}],"choices":[{"index":0,"delta":{"content":"b"}}]}',
      '{' .. head .. ',"choices":[{"index":0,"delta":{"\\u0063ontent":"c"}}]}',
      '{' .. head .. ',"choices":[{"index":1.0,"delta":{"content":"d"}}]}',
      '{' .. head .. ',"choices":[{"index":0,"delta":{"content":"e"},"logprobs":{"content":[{"token":"e","logprob":-0.1}]}}]}',
      '{' .. head .. ',"choices":[{"index":0,"message":{"content":"f"}}]}',
      '{' .. head .. ',"choices":[{"index":0,"delta":{"content":"g"}}],"n":1e400}',
      '{' .. head .. ',"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":{"k":1}}}]}}]}',
    },
    ["an error chunk changes nothing"] = {
      first, delta('{"content":"kept"}'), '{"error":{"message":"boom"}}', '{' .. head .. ',"error":null,"choices":[]}',
    },
  }

  for name, raws in pairs(sequences) do
    it("gives the Lua path's final: " .. name, function()
      if name ~= "odd shapes go to the Lua path" then -- every other input is valid JSON
        for _, raw in ipairs(raws) do assert.is_table(json.decode(raw), raw) end
      end
      local want, got = both_ways(raws)
      assert.equal(want, got)
    end)
  end

  -- Known answers for the sequences above, derived by hand from the chunks
  -- (not from either path): a rule broken in both paths alike still fails.
  local null = json.null
  local function answer(choices, fields)
    local f = { id = "c1", object = "chat.completion", created = 1, model = "m", choices = choices }
    for k, v in pairs(fields or {}) do f[k] = v end
    return f
  end
  local function choice(message, finish, index)
    local m = { role = "assistant" }
    for k, v in pairs(message) do m[k] = v end
    return { index = index or 0, message = m, finish_reason = finish or null }
  end
  local function call(id, name, args)
    return { id = id, type = "function", ["function"] = { name = name, arguments = args } }
  end
  local known = {
    ["text, role resent in every delta"] = answer { choice({ content = "Hello" }, "stop") },
    ["escapes: quotes, backslashes, control escapes, BMP and astral \\u"] = answer {
      choice { content = 'a"b\\c/d\n\t\r\b\f' .. "caf\u{e9} \u{20ac} \u{1F600} \0end" } },
    ["raw UTF-8 passes through"] = answer { choice { content = "h\u{e9}llo \u{2192} \u{4e16}\u{754c} \u{1F389}" } },
    -- think (reasoning_content wins) + more + alt ("" reasoning_content falls back to reasoning)
    ["reasoning_content and reasoning both sent: counted once"] = answer {
      choice { content = "answer", reasoning_content = "thinkmorealt" } },
    ["refusal"] = answer { choice { content = null, refusal = "I cannot." } },
    -- call 1: "" + {"a": + 1} + " " (its empty id/null type/null name change nothing); call 2 whole
    ["tool arguments in fragments"] = answer { choice { content = null,
      tool_calls = { call("call_1", "f", '{"a":1} '), call("call_2", "g", "{}") } } },
    ["Ollama: index 0 reused with a new id is a new call"] = answer { choice { content = null,
      tool_calls = { call("a", "f", "{}"), call("b", "g", "{}") } } },
    ["Ollama: a new id alone (no name) at a used index is a new call"] = answer { choice { content = null,
      tool_calls = { call("a", "f", "{}"), { id = "b", type = "function", ["function"] = { name = "", arguments = "[]" } } } } },
    ["Gemini: calls without index continue the last call"] = answer { choice { content = null,
      tool_calls = { call("a", "f", "{}") } } },
    ["an index-less fragment continues the call an indexed fragment just touched"] = answer { choice {
      content = null, tool_calls = { call("a", "f", '{"k":1}'), call("b", "g", "[") } } },
    ["a tool fragment for a call never opened"] = answer { choice { content = null,
      tool_calls = { { type = "function", ["function"] = { name = "", arguments = "x" } } } } },
    ["several choices, interleaved and in one chunk"] = answer {
      choice({ content = "Aa" }, nil, 0), choice({ content = "Bb!" }, nil, 1) },
    ["nulls, empty strings, empty choices, usage on every chunk"] = answer({ choice { content = "x" } },
      { usage = { total_tokens = 3 } }),
    -- id: the first non-empty ("late"); model "m2" (7 is no string); created 5; fingerprint "fp"
    ["head fields arriving late"] = answer({ choice { content = "abcd" } },
      { id = "late", model = "m2", created = 5, system_fingerprint = "fp" }),
    ["unknown fields anywhere, nested deeply"] = answer { choice { content = "ok" } },
    -- b (the last of two "choices"), c (\u0063ontent is content), e, f (a whole message); not g:
    -- luachat.json rejects 1e400 (out of range), so that chunk is never decoded;
    -- d went to choice 1 (index 1.0); the arguments object became JSON text
    ["odd shapes go to the Lua path"] = answer {
      { index = 0, finish_reason = null, logprobs = { content = { { token = "e", logprob = -0.1 } } },
        message = { role = "assistant", content = "bcef",
          tool_calls = { { type = "function", ["function"] = { name = "", arguments = '{"k":1}' } } } } },
      choice({ content = "d" }, nil, 1) },
    ["an error chunk changes nothing"] = answer { choice { content = "kept" } },
  }

  for name, raws in pairs(sequences) do
    it("gives the known answer, on both paths: " .. name, function()
      local want = known[name]
      assert.is_table(want, "no known answer for the sequence " .. name)
      local slow, fast = stream.accumulator(), stream.accumulator()
      for _, raw in ipairs(raws) do
        local chunk = json.decode(raw)
        if type(chunk) == "table" then slow:add(chunk) end
        if not core.accumulate_plain(fast, raw) and type(chunk) == "table" then fast:add(json.decode(raw)) end
      end
      assert.same(want, slow:result(), "Lua path")
      assert.same(want, fast:result(), "fast path")
    end)
  end

  it("takes ordinary text and argument deltas fast, and leaves rule-bearing chunks to Lua", function()
    local acc = stream.accumulator()
    assert.is_false(core.accumulate_plain(acc, first))          -- head fields and the role: Lua
    acc:add(json.decode(first))
    assert.is_true(core.accumulate_plain(acc, delta('{"content":"x"}')))
    assert.is_true(core.accumulate_plain(acc, delta('{"role":"assistant","content":"y"}')))
    assert.is_false(core.accumulate_plain(acc, '{' .. head .. ',"choices":[],"usage":{"total_tokens":1}}'))
    assert.is_false(core.accumulate_plain(acc, finish("stop")))
    assert.is_false(core.accumulate_plain(acc, '{"error":{"message":"e"}}'))
    assert.is_false(core.accumulate_plain(acc, delta('{"content":"x"}') .. " trailing"))
    assert.is_false(core.accumulate_plain(acc, delta('{"content":"x\1"}')))
    assert.is_false(core.accumulate_plain(acc, delta([[{"content":"\ud800"}]])))
    assert.is_false(core.accumulate_plain(acc, '[1]'))
    assert.equal("xy", acc:result().choices[1].message.content)
    local _, _, nfast = both_ways(sequences["tool arguments in fragments"])
    assert.equal(3, nfast)
  end)

  it("gives the Lua path's final on the accumulation fuzzer's saved inputs", function()
    local dir = "spec/fixtures/fuzz/"
    local p = io.popen('ls "' .. dir .. '" 2>/dev/null')
    local n = 0
    for name in p:lines() do
      local f = io.open(dir .. name, "rb")
      local raws = {}
      for line in f:read("a"):gmatch("[^\n]+") do raws[#raws + 1] = line end
      f:close()
      local want, got = both_ways(raws)
      assert.equal(want, got, name)
      n = n + 1
    end
    p:close()
    assert.is_true(n > 0)
  end)
end)

describe("lazy chunks", function()
  local srv, c
  setup(function() srv = server.start() end)
  teardown(function() if srv then srv:stop() end end)
  before_each(function()
    srv:reset()
    c = luachat.client { base_url = srv.base_url, api_key = "sk-lazy-test", idle_timeout = 5 }
  end)
  after_each(function() assert.equal(0, core.live(), "a transfer was left running") end)

  local raws = { first, delta('{"content":"Hel"}', ',"logprobs":null'), delta([[{"content":"lo \u00e9"}]]),
    finish("stop") }
  local body = {}
  for _, r in ipairs(raws) do body[#body + 1] = "data: " .. r .. "\n\n" end
  body = table.concat(body) .. "data: [DONE]\n\n"
  local req = { model = "m", messages = { { role = "user", content = "hi" } } }

  it("read like decoded tables: fields, pairs, encode, delta_text before and after decoding", function()
    srv:script { { body = body, content_type = "text/event-stream" } }
    local seen = {}
    local final = assert(c:stream(req, function(ch) seen[#seen + 1] = ch end))
    assert.equal("Hello é", final.choices[1].message.content)
    assert.equal(#raws, #seen)
    local lazy = seen[2]
    assert.equal("Hel", luachat.delta_text(lazy))         -- without decoding
    assert.equal("Hel", lazy.choices[1].delta.content)     -- decodes on access
    assert.equal("Hel", luachat.delta_text(lazy))         -- and after
    local keys = {}
    for k in pairs(seen[3]) do keys[#keys + 1] = k end
    table.sort(keys)
    assert.same({ "choices", "created", "id", "model", "object" }, keys)
    assert.equal(json.encode(json.decode(raws[2]), { sort_keys = true }), json.encode(seen[2], { sort_keys = true }))
    assert.equal(json.encode(json.decode(raws[3]), { sort_keys = true }), json.encode(seen[3], { sort_keys = true }))
    assert.equal("lo é", luachat.delta_text(seen[3]))
    seen[4].mine = true                                    -- a write is kept, decoded fields too
    assert.is_true(seen[4].mine)
    assert.equal("stop", seen[4].choices[1].finish_reason)
    assert.equal(json.null, seen[2].choices[1].logprobs)
  end)

  it("once the script reads a chunk's fields, later chunks come decoded (and read the same)", function()
    local many = { first }
    for i = 1, 20 do many[#many + 1] = delta('{"content":"' .. i .. ' "}') end
    many[#many + 1] = finish("stop")
    local text = {}
    for _, r in ipairs(many) do text[#text + 1] = "data: " .. r .. "\n\n" end
    srv:script { { body = table.concat(text) .. "data: [DONE]\n\n", content_type = "text/event-stream" } }
    local lazy, decoded, got = 0, 0, {}
    local final = assert(c:stream(req, function(ch)
      if getmetatable(ch) then lazy = lazy + 1 else decoded = decoded + 1 end
      if #got >= 3 then got[#got + 1] = ch.choices[1].delta.content or "" else got[#got + 1] = luachat.delta_text(ch) end
    end))
    assert.equal(22, lazy + decoded)
    assert.is_true(lazy >= 3 and decoded >= 15, lazy .. " lazy, " .. decoded .. " decoded")
    local want = {}
    for i = 1, 20 do want[#want + 1] = i .. " " end
    assert.equal(table.concat(want), final.choices[1].message.content)
    assert.equal(table.concat(want), table.concat(got))
  end)

  it("a finalizer that closes the stream mid-drain stops it cleanly (no use of the freed queue)", function()
    -- GC timing decides when the finalizer runs; every outcome must be clean, and
    -- each form must see at least one close in mid-stream within a few tries.
    for _, form in ipairs { "callback", "pull", "take_one" } do
      local mid = false
      for _ = 1, 5 do
        srv:script { { generate = { kind = "text", chunks = 30000 } } }
        local s = assert(c:open_stream(req))
        collectgarbage("collect")
        collectgarbage("restart")
        collectgarbage("incremental", 1, 1000) -- short cycles: the finalizer runs soon
        setmetatable({}, { __gc = function() s:close() end }) -- garbage at once
        local n = 0
        if form == "callback" then
          s:each(function() n = n + 1 end)
        elseif form == "pull" then
          for _ in s:chunks() do n = n + 1 end
        else
          local t = s.transfer
          while true do
            local ok, ev = pcall(t.take_one, t) -- once closed it raises "closed transfer"
            if not ok or ev == nil then break end
            n = n + 1
          end
        end
        collectgarbage("incremental", 200, 100)
        collectgarbage("collect")
        local final, err = s:result()
        assert.is_table(final, form)
        if err then
          assert.equal("cancelled", err.kind, form)
          mid = mid or n < 30000
        end
        if mid then break end
      end
      assert.is_true(mid, form .. ": the finalizer never ran in mid-stream")
    end
  end)

  it("keep their metatable to themselves and iterate without the global next", function()
    srv:script { { body = body, content_type = "text/event-stream" } }
    local seen = {}
    assert(c:stream(req, function(ch) seen[#seen + 1] = ch end))
    local lazy = seen[2]
    assert.equal("luachat.LazyChunk", getmetatable(lazy))
    assert.has_error(function() setmetatable(lazy, {}) end)
    local saved = next
    _G.next = nil
    local ok, keys = pcall(function()
      local k = {}
      for key in pairs(lazy) do k[#k + 1] = key end
      return k
    end)
    _G.next = saved
    assert.is_true(ok, tostring(keys))
    assert.equal(5, #keys)
  end)

  it("in the pull form too", function()
    srv:script { { body = body, content_type = "text/event-stream" } }
    local s <close> = assert(c:open_stream(req))
    local texts = {}
    for ch in s:chunks() do texts[#texts + 1] = luachat.delta_text(ch) .. "|" .. tostring(ch.choices[1].index) end
    assert.same({ "|0", "Hel|0", "lo é|0", "|0" }, texts)
    assert.equal("Hello é", s:result().choices[1].message.content)
  end)

  it("a callback may wait inside a task (it yields through the C loop)", function()
    srv:script { { body = body, content_type = "text/event-stream" } }
    local order = {}
    local t = luachat.spawn(function()
      return c:stream(req, function(ch)
        luachat.sleep(0.01)
        order[#order + 1] = luachat.delta_text(ch)
      end)
    end)
    local final, err = t:wait()
    assert.is_nil(err)
    assert.equal("Hello é", final.choices[1].message.content)
    assert.same({ "", "Hel", "lo é", "" }, order)
  end)

  it("a Lua error in a fast-path callback propagates with its traceback; false stops", function()
    srv:script { { body = body, content_type = "text/event-stream" }, { body = body, content_type = "text/event-stream" } }
    local n = 0
    local ok, e = pcall(c.stream, c, req, function(ch)
      n = n + 1
      if luachat.delta_text(ch) == "Hel" then error("callback broke") end
    end)
    assert.is_false(ok)
    assert.matches("callback broke", e)
    assert.matches("stack traceback", e)
    assert.equal(2, n)
    local final, err = c:stream(req, function(ch) return luachat.delta_text(ch) ~= "Hel" end)
    assert.equal("cancelled", err.kind)
    assert.equal("Hel", final.choices[1].message.content)
  end)
end)
