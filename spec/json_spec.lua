-- luachat.json: the round-trip rules of docs/JSON.md.
local json = require "luachat.json"

describe("luachat.json", function()
  local completion = '{"id":"chatcmpl-1","object":"chat.completion","created":1700000000,"model":"m",'
    .. '"choices":[{"index":0,"message":{"role":"assistant","content":null,"refusal":null,"annotations":[],'
    .. '"tool_calls":[{"id":"call_1","type":"function","function":{"name":"f","arguments":"{\\"a\\": [1, 2]}"}}]},'
    .. '"logprobs":null,"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":12,"completion_tokens":3,'
    .. '"total_tokens":15,"prompt_tokens_details":{"cached_tokens":0}},"system_fingerprint":"fp_1"}'

  it("round-trips a realistic response byte for byte (sorted keys)", function()
    local v = assert(json.decode(completion))
    local again = json.encode(v, { sort_keys = true })
    assert.equal(json.encode(assert(json.decode(again)), { sort_keys = true }), again)
    assert.matches('"annotations":[]', again, 1, true)
    assert.matches('"content":null', again, 1, true)
    assert.matches('"arguments":"{\\"a\\": [1, 2]}"', again, 1, true)
    assert.matches('"created":1700000000', again, 1, true)
  end)

  it("keeps integers integers and floats exact", function()
    local v = json.decode('{"a":1,"b":-7,"c":1.5,"d":0.1,"e":1e300,"f":9007199254740991}')
    assert.equal("integer", math.type(v.a))
    assert.equal("integer", math.type(v.b))
    assert.equal("integer", math.type(v.f))
    assert.equal("float", math.type(v.c))
    assert.equal("[0.1,1e+300,0.3333333333333333,123456789012345678,-5]",
      json.encode { 0.1, 1e300, 1 / 3, 123456789012345678, -5 })
    for _, x in ipairs { 0.1, 1 / 3, 2 ^ 0.5, 1e-300, 123.456 } do
      assert.equal(x, json.decode(json.encode(x)))
    end
    assert.equal("integer", math.type(json.decode("42")))
  end)

  it("empty arrays stay arrays, empty objects objects, nested too", function()
    local v = json.decode('{"a":[],"b":{},"c":[[],[ ],{"d":[]}],"s":"[]"}')
    assert.is_true(json.is_array(v.a))
    assert.is_false(json.is_array(v.b))
    assert.equal("[]", v.s) -- strings are never touched
    assert.equal('{"a":[],"b":{},"c":[[],[],{"d":[]}],"s":"[]"}', json.encode(v, { sort_keys = true }))
  end)

  it("null is a distinct, truthy sentinel that round-trips", function()
    local v = json.decode('{"x":null,"y":[null,1]}')
    assert.equal(json.null, v.x)
    assert.is_true(json.is_null(v.y[1]))
    assert.equal('{"x":null,"y":[null,1]}', json.encode(v, { sort_keys = true }))
    assert.equal(json.null, require("cjson").null)
  end)

  it("array and object markers", function()
    assert.equal("[]", json.encode(json.array {}))
    assert.equal("{}", json.encode({}))
    assert.equal("{}", json.encode(json.object {}))
    assert.equal('{"1":"a"}', json.encode(json.object { "a" }))
    assert.equal('{"required":[]}', json.encode { required = json.array {} })
    local t = {}
    assert.equal(t, json.array(t))
    assert.is_true(json.is_array(t))
  end)

  it("escapes strings per RFC 8259 and passes UTF-8 through", function()
    assert.equal([["a\"b\\c\n\t\u0001/é😀"]], json.encode("a\"b\\c\n\t\1/é😀"))
    assert.equal("é😀\0", json.decode([["\u00e9\ud83d\ude00\u0000"]]))
  end)

  it("encodes tables by shape: sequences as arrays, integer keys of objects as strings", function()
    assert.equal('["a","b"]', json.encode { "a", "b" })
    assert.equal('{"1":"a","3":"b"}', json.encode({ [1] = "a", [3] = "b" }, { sort_keys = true }))
    assert.equal('{"k":true,"z":false}', json.encode({ z = false, k = true }, { sort_keys = true }))
  end)

  it("decode errors are nil plus a message with the position", function()
    local v, err = json.decode('{"a": 1,}')
    assert.is_nil(v)
    assert.matches("^invalid JSON: .* at character %d+", err)
    v, err = json.decode("")
    assert.is_nil(v)
    assert.truthy(err)
    v, err = json.decode("NaN")
    assert.is_nil(v)
  end)

  it("numbers beyond the double range are an error, not inf (found by fuzzing)", function()
    for _, text in ipairs { '{"created":1e999}', '[1,[2,-1e400]]', "1e999" } do
      local v, err = json.decode(text)
      assert.is_nil(v, text)
      assert.equal("invalid JSON: a number is out of range (beyond 1.8e308)", err)
    end
    assert.equal(1e308, json.decode("1e308"))
  end)

  it("100,000-deep nesting is an error, not a crash", function()
    local v, err = json.decode(string.rep("[", 100000) .. string.rep("]", 100000))
    assert.is_nil(v)
    assert.matches("nested", err)
  end)

  it("encode errors name the path", function()
    assert.has_error(function() json.encode { tools = { { handler = print } } } end,
      "cannot encode a function at $.tools[1].handler")
    assert.has_error(function() json.encode { x = 0 / 0 } end, "cannot encode NaN at $.x")
    assert.has_error(function() json.encode { x = math.huge } end, "cannot encode an infinite number at $.x")
    -- (ASan once caught this path reading an unset level)
    assert.has_error(function() json.encode { [true] = 1 } end, "cannot encode a table key of type boolean at $")
    assert.has_error(function() json.encode { a = { b = { [1.5] = 1 } } } end,
      "cannot encode a table key of type number at $.a.b")
    local cycle = {}
    cycle.self = cycle
    local ok, err = pcall(json.encode, cycle)
    assert.is_false(ok)
    assert.matches("nested too deeply %(a cycle%?%) at %$%.self", err)
  end)

  it("a transcript with tool calls round-trips exactly", function()
    local transcript = '[{"content":"S","role":"system"},{"content":"q","role":"user"},'
      .. '{"content":null,"role":"assistant","tool_calls":[{"function":{"arguments":"","name":"f"},"id":"c1","type":"function"}]},'
      .. '{"content":"{\\"ok\\":true}","role":"tool","tool_call_id":"c1"},{"content":"done","role":"assistant","tool_calls":[]}]'
    assert.equal(transcript, json.encode(json.decode(transcript), { sort_keys = true }))
  end)
end)
