-- The text path (src/chunk_scan.c's allow-list through core.scan_text, then
-- acc:add_text) against the full path (json.decode + acc:add): same final for
-- every chunk sequence, the right chunks taken on the text path, a scanner
-- that knows every field the accumulator has a rule for, chunks that are
-- ordinary tables, and the explicit text path (on_text, s:text()).
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
    if fast:add_data(raw) then
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
    ["system_fingerprint and service_tier: repeated (text path), changed, null, empty"] = {
      '{' .. head .. ',"system_fingerprint":"fp1","service_tier":"default","choices":[{"index":0,"delta":{"role":"assistant","content":"a"}}]}',
      '{' .. head .. ',"system_fingerprint":"fp1","service_tier":"default","choices":[{"index":0,"delta":{"content":"b"}}]}',
      '{' .. head .. ',"system_fingerprint":"fp2","service_tier":"default","choices":[{"index":0,"delta":{"content":"c"}}]}',
      '{' .. head .. ',"system_fingerprint":null,"service_tier":"flex","choices":[{"index":0,"delta":{"content":"d"}}]}',
      '{' .. head .. ',"system_fingerprint":"fp2","service_tier":"","choices":[{"index":0,"delta":{"content":"e"}}]}',
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
    ["an error chunk is merged, then reported"] = {
      first, delta('{"content":"kept"}'), '{"error":{"message":"boom"}}', '{' .. head .. ',"error":null,"choices":[]}',
      '{' .. head .. ',"error":{"message":"late"},"choices":[{"index":0,"delta":{"content":"!"},"finish_reason":"error"}]}',
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
    -- every field kept: top-level, per choice and inside the delta (last non-null; objects merged)
    -- last non-null: fp2 (null keeps it), service_tier "" (the last, not null)
    ["system_fingerprint and service_tier: repeated (text path), changed, null, empty"] = answer(
      { choice { content = "abcde" } }, { system_fingerprint = "fp2", service_tier = "" }),
    ["unknown fields anywhere, nested deeply"] = answer({ {
      index = 0, finish_reason = null, content_filter_results = { hate = { filtered = false } },
      message = { role = "assistant", content = "ok", extra = { null } } } },
      { service_tier = "default", obfuscation = "xyz", x = { a = { 1, 2, { b = { { {} } } } }, c = true } }),
    -- b (the last of two "choices"), c (\u0063ontent is content), e, f (a whole message); not g:
    -- luachat.json rejects 1e400 (out of range), so that chunk is never decoded;
    -- d went to choice 1 (index 1.0); the arguments object became JSON text
    ["odd shapes go to the Lua path"] = answer {
      { index = 0, finish_reason = null, logprobs = { content = { { token = "e", logprob = -0.1 } } },
        message = { role = "assistant", content = "bcef",
          tool_calls = { { type = "function", ["function"] = { name = "", arguments = '{"k":1}' } } } } },
      choice({ content = "d" }, nil, 1) },
    -- the error chunk's own content and finish_reason are merged before it is reported
    ["an error chunk is merged, then reported"] = answer { choice({ content = "kept!" }, "error") },
  }

  for name, raws in pairs(sequences) do
    it("gives the known answer, on both paths: " .. name, function()
      local want = known[name]
      assert.is_table(want, "no known answer for the sequence " .. name)
      local slow, fast = stream.accumulator(), stream.accumulator()
      for _, raw in ipairs(raws) do
        local chunk = json.decode(raw)
        if type(chunk) == "table" then slow:add(chunk) end
        if not fast:add_data(raw) and type(chunk) == "table" then fast:add(json.decode(raw)) end
      end
      assert.same(want, slow:result(), "Lua path")
      assert.same(want, fast:result(), "fast path")
    end)
  end

  it("takes ordinary text and argument deltas on the text path, and leaves rule-bearing chunks to acc:add", function()
    local acc = stream.accumulator()
    assert.is_false(acc:add_data(first))          -- head fields and the role: acc:add
    acc:add(json.decode(first))
    assert.is_true(acc:add_data(delta('{"content":"x"}')))
    assert.is_true(acc:add_data(delta('{"role":"assistant","content":"y"}')))
    assert.is_false(acc:add_data('{' .. head .. ',"choices":[],"usage":{"total_tokens":1}}'))
    assert.is_false(acc:add_data(finish("stop")))
    assert.is_false(acc:add_data('{"error":{"message":"e"}}'))
    assert.is_false(acc:add_data(delta('{"content":"x"}') .. " trailing"))
    assert.is_false(acc:add_data(delta('{"content":"x\1"}')))
    assert.is_false(acc:add_data(delta([[{"content":"\ud800"}]])))
    assert.is_false(acc:add_data('[1]'))
    -- the allow-list: a key the scanner does not name sends the chunk to acc:add
    assert.is_false(acc:add_data(delta('{"content":"z","annotations":[]}')))
    assert.is_false(acc:add_data('{' .. head .. ',"citations":["u"],"choices":[{"index":0,"delta":{"content":"z"}}]}'))
    assert.is_false(acc:add_data('{' .. head .. ',"service_tier":"default","choices":[{"index":0,"delta":{"content":"z"}}]}')) -- not ours yet
    assert.is_false(acc:add_data(delta('{"content":"z"}', ',"content_filter_results":{}')))
    assert.equal("xy", acc:result().choices[1].message.content)
    local _, _, nfast = both_ways(sequences["tool arguments in fragments"])
    assert.equal(3, nfast)
    _, _, nfast = both_ways(sequences["system_fingerprint and service_tier: repeated (text path), changed, null, empty"])
    assert.equal(1, nfast) -- only the chunk repeating both
  end)

  -- A field the accumulator has a rule for (stream.RULES) must be one the scanner either
  -- refuses or hands over exactly: for each, at each place, a chunk carrying it must give
  -- the same final on both paths. A rule added for a field the scanner skips fails here.
  it("knows every field the accumulator has a rule for (and refuses any other)", function()
    local values = { '"v"', '""', "null", "1", "{}", '{"k":"v"}', "[]", '[{"k":1}]' }
    local places = {
      chunk = function(f, v) return '{' .. head .. ',"' .. f .. '":' .. v .. ',"choices":[{"index":0,"delta":{"content":"t"}}]}' end,
      choice = function(f, v) return '{' .. head .. ',"choices":[{"index":0,"delta":{"content":"t"},"' .. f .. '":' .. v .. '}]}' end,
      delta = function(f, v) return delta('{"content":"t","' .. f .. '":' .. v .. '}') end,
      tool_call = function(f, v) return delta('{"tool_calls":[{"index":0,"function":{"arguments":"a"},"' .. f .. '":' .. v .. '}]}') end,
      ["function"] = function(f, v) return delta('{"tool_calls":[{"index":0,"function":{"arguments":"a","' .. f .. '":' .. v .. '}}]}') end,
      logprobs = function(f, v) return delta('{"content":"t"}', ',"logprobs":{"' .. f .. '":' .. v .. '}') end,
      audio = function(f, v) return delta('{"audio":{"' .. f .. '":' .. v .. '}}') end,
    }
    local opened = delta('{"tool_calls":[{"index":0,"id":"c","type":"function","function":{"name":"f","arguments":""}}]}')
    local n = 0
    for place, rules in pairs(stream.RULES) do
      local make = assert(places[place], "no chunk shape for the rules of " .. place)
      local fields = { "an_unknown_field", "system_fingerprint", "service_tier" }
      for f in pairs(rules) do if f ~= "*" then fields[#fields + 1] = f end end
      for _, f in ipairs(fields) do
        for _, v in ipairs(values) do
          local raw = make(f, v)
          if json.decode(raw) then
            local want, got = both_ways({ first, opened, raw })
            assert.equal(want, got, place .. "." .. f .. " = " .. v)
            n = n + 1
          end
        end
      end
    end
    assert.is_true(n > 100)
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

describe("stream chunks", function()
  local srv, c
  setup(function() srv = server.start() end)
  teardown(function() if srv then srv:stop() end end)
  before_each(function()
    srv:reset()
    c = luachat.client { base_url = srv.base_url, api_key = "sk-chunks-test", idle_timeout = 5 }
  end)
  after_each(function() assert.equal(0, core.live(), "a transfer was left running") end)

  local raws = { first, delta('{"content":"Hel"}', ',"logprobs":null'), delta([[{"content":"lo \u00e9"}]]),
    finish("stop") }
  local body = {}
  for _, r in ipairs(raws) do body[#body + 1] = "data: " .. r .. "\n\n" end
  body = table.concat(body) .. "data: [DONE]\n\n"
  local req = { model = "m", messages = { { role = "user", content = "hi" } } }

  -- Every chunk a script gets is an ordinary table: next, rawget, pairs, #, stock cjson and
  -- any other library see the decoded data (issue 14: no lazy chunks, no metatable).
  local function check_plain(ch, raw, where)
    assert.is_nil(getmetatable(ch), where)
    assert.is_not_nil(next(ch), where)
    assert.equal("c1", rawget(ch, "id"), where)
    assert.is_table(rawget(ch, "choices"), where)
    assert.equal(1, #rawget(ch, "choices"), where)
    local keys = {}
    for k in pairs(ch) do keys[#keys + 1] = k end
    table.sort(keys)
    assert.same({ "choices", "created", "id", "model", "object" }, keys, where)
    local cjson = require "cjson"
    assert.same(cjson.decode(raw), cjson.decode(cjson.encode(ch)), where)
  end

  it("are ordinary tables in the callback form (next, rawget, pairs, #, stock cjson)", function()
    srv:script { { body = body, content_type = "text/event-stream" } }
    local seen = {}
    local final = assert(c:stream(req, function(ch) seen[#seen + 1] = ch end))
    assert.equal("Hello é", final.choices[1].message.content)
    assert.equal(#raws, #seen)
    for i, ch in ipairs(seen) do check_plain(ch, raws[i], "chunk " .. i) end
    assert.equal("Hel", luachat.delta_text(seen[2]))
    assert.equal("lo é", luachat.delta_text(seen[3]))
    assert.equal(json.null, seen[2].choices[1].logprobs)
  end)

  it("are ordinary tables in the pull form and beside on_text", function()
    srv:script { { body = body, content_type = "text/event-stream" }, { body = body, content_type = "text/event-stream" } }
    local s <close> = assert(c:open_stream(req))
    local n = 0
    for ch in s:chunks() do
      n = n + 1
      check_plain(ch, raws[n], "pull chunk " .. n)
    end
    assert.equal(#raws, n)
    local seen, text = {}, {}
    assert(c:stream(req, { on_chunk = function(ch) seen[#seen + 1] = ch end,
      on_text = function(t, i) text[#text + 1] = t .. "|" .. i end }))
    for i, ch in ipairs(seen) do check_plain(ch, raws[i], "on_chunk chunk " .. i) end
    assert.same({ "Hel|0", "lo é|0" }, text)
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

  -- n = 2: each choice's text by its index (chunks carry one choice each, or both)
  local two = { first,
    '{' .. head .. ',"choices":[{"index":1,"delta":{"role":"assistant","content":"B"}}]}',
    delta('{"content":"a"}'),
    '{' .. head .. ',"choices":[{"index":1,"delta":{"content":"b"}}]}',
    '{' .. head .. ',"choices":[{"index":1,"delta":{"content":"!"}},{"index":0,"delta":{"content":"?"}}]}' }
  local two_body = {}
  for _, r in ipairs(two) do two_body[#two_body + 1] = "data: " .. r .. "\n\n" end
  two_body = table.concat(two_body) .. "data: [DONE]\n\n"

  it("luachat.delta_text(chunk, index) reads choice index (default 0), not the first element", function()
    local ch = json.decode(two[5])
    assert.equal("?", luachat.delta_text(ch))
    assert.equal("?", luachat.delta_text(ch, 0))
    assert.equal("!", luachat.delta_text(ch, 1))
    assert.equal("", luachat.delta_text(ch, 2))
    assert.equal("", luachat.delta_text(json.decode(two[2])))
    assert.equal("", luachat.delta_text({ choices = { { delta = { content = 5 } } } }))
    assert.equal("x", luachat.delta_text({ choices = { { delta = { content = "x" } } } })) -- no index: 0
  end)

  it("on_text(text, index) and s:text() give each choice its own text", function()
    srv:script { { body = two_body, content_type = "text/event-stream" }, { body = two_body, content_type = "text/event-stream" } }
    local got = {}
    local final = assert(c:stream(req, { on_text = function(t, i) got[#got + 1] = i .. ":" .. t end }))
    assert.same({ "1:B", "0:a", "1:b", "1:!", "0:?" }, got)
    assert.equal("a?", final.choices[1].message.content)
    assert.equal("Bb!", final.choices[2].message.content)
    local s <close> = assert(c:open_stream(req))
    local pulled = {}
    for t, i in s:text() do pulled[#pulled + 1] = i .. ":" .. t end
    assert.same(got, pulled)
    assert.same(final, (s:result()))
  end)

  it("on_text: an error propagates with its traceback and closes the stream; false stops", function()
    srv:script { { body = body, content_type = "text/event-stream" }, { body = body, content_type = "text/event-stream" } }
    local ok, e = pcall(c.stream, c, req, { on_text = function(t) if t == "Hel" then error("on_text broke") end end })
    assert.is_false(ok)
    assert.matches("on_text broke", e)
    assert.matches("stack traceback", e)
    local final, err = c:stream(req, { on_text = function(t) return t ~= "Hel" end })
    assert.equal("cancelled", err.kind)
    assert.equal("Hel", final.choices[1].message.content)
  end)

  it("on_text inside a task may wait (yields to the scheduler)", function()
    srv:script { { body = body, content_type = "text/event-stream" } }
    local t = luachat.spawn(function()
      local got = {}
      local final, err = c:stream(req, { on_text = function(x) luachat.sleep(0.001); got[#got + 1] = x end })
      return final, err, table.concat(got)
    end)
    local final, err, text = t:wait()
    assert.is_nil(err)
    assert.equal("Hello é", text)
    assert.equal("Hello é", final.choices[1].message.content)
  end)

  it("the text path skips named events (event: ping with a text delta) as the chunk path does", function()
    local ping = "event: ping\ndata: " .. delta('{"content":"PING"}') .. "\n\n"
    local b = "data: " .. raws[1] .. "\n\n" .. "data: " .. raws[2] .. "\n\n" .. ping .. "data: " .. raws[3] .. "\n\n"
      .. ping .. "data: " .. raws[4] .. "\n\ndata: [DONE]\n\n"
    srv:script { { body = b, content_type = "text/event-stream" }, { body = b, content_type = "text/event-stream" } }
    local got = {}
    local final = assert(c:stream(req, { on_text = function(t) got[#got + 1] = t end }))
    assert.same({ "Hel", "lo é" }, got)
    assert.equal("Hello é", final.choices[1].message.content)
    local s <close> = assert(c:open_stream(req))
    local pulled = {}
    for t in s:text() do pulled[#pulled + 1] = t end
    assert.same({ "Hel", "lo é" }, pulled)
    assert.equal("Hello é", s:result().choices[1].message.content)
  end)

  it("refuses handlers that are not functions and unknown handler keys, at the caller's line", function()
    assert.has_error(function() c:stream(req, { on_text = 1 }) end, "bad argument #2 to 'stream' (field 'on_text' must be a function)")
    assert.has_error(function() c:stream(req, { on_chunk = "x" }) end, "bad argument #2 to 'stream' (field 'on_chunk' must be a function)")
    assert.has_error(function() c:stream(req, { ontext = print }) end,
      "bad argument #2 to 'stream' (unknown field 'ontext' (did you mean 'on_text'?))")
    -- the message names the script's line (client:stream tail-calls chat_stream.stream)
    local line = debug.getinfo(1, "l").currentline
    local ok, e = pcall(function() c:stream(req, { on_txt = print }) end)
    assert.is_false(ok)
    assert.matches("chunk_fast_path_spec.lua:" .. (line + 1) .. ": bad argument #2 to 'stream'", e, 1, true)
    ok, e = pcall(function() c:stream(req, 5) end)
    assert.matches("chunk_fast_path_spec.lua:" .. (line + 4) .. ": bad argument #2 to 'stream'", e, 1, true)
    assert.has_error(function() c:stream(req, 5) end, "bad argument #2 to 'stream' (function or table expected, got number)")
  end)
end)
