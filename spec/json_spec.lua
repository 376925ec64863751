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

  it("encodes deep nesting within the limit; the path stack grows as it descends (issue 15)", function()
    local t, want = 1, "1"
    for _ = 1, 990 do t, want = { t }, "[" .. want .. "]" end
    assert.equal(want, json.encode(t))
    local o = { f = print }
    for _ = 1, 600 do o = { a = o } end
    assert.has_error(function() json.encode(o) end, "cannot encode a function at $.a.a.a.a.a.a....a.a.a.f")
    assert.has_error(function() json.encode(o, { sort_keys = true }) end,
      "cannot encode a function at $.a.a.a.a.a.a....a.a.a.f")
  end)

  describe("never loses data (issue 13)", function()
    it("a string that looks like an internal marker is just a string", function()
      local v = assert(json.decode('{"a":[],"b":["\\u0000luachat:[]"],"c":["\\u0000luachat:[]",[]]}'))
      assert.equal(1, #v.b)
      assert.equal("\0luachat:[]", v.b[1])
      assert.is_false(getmetatable(v.b) == json.array_mt)
      assert.equal("\0luachat:[]", v.c[1])
      assert.is_true(json.is_array(v.a))
      assert.equal('{"a":[],"b":["\\u0000luachat:[]"],"c":["\\u0000luachat:[]",[]]}',
        json.encode(v, { sort_keys = true }))
    end)

    it("-0.0 stays a float -0.0 both ways", function()
      for _, text in ipairs { "-0.0", "-0", "-0e0", "[-0.0]" } do
        local v = assert(json.decode(text))
        if type(v) == "table" then v = v[1] end
        assert.equal("float", math.type(v), text)
        assert.equal(-math.huge, 1 / v, text)
      end
      assert.equal("-0", json.encode(-0.0))
      assert.equal("integer", math.type(json.decode("0")))
      assert.equal("integer", math.type(json.decode("0.0")))
    end)

    it("integers beyond 2^53 decode exactly when they fit in 64 bits", function()
      assert.equal(9007199254740993, json.decode("9007199254740993"))
      assert.equal(math.maxinteger, json.decode("9223372036854775807"))
      assert.equal(math.mininteger, json.decode("-9223372036854775808"))
      assert.equal("float", math.type(json.decode("9223372036854775808")))
      assert.equal("[9007199254740993]", json.encode(json.decode("[9007199254740993]")))
    end)

    it("an array with holes encodes its holes as null, up to its largest index", function()
      local t = json.array {}
      t[5] = 1
      assert.equal("[null,null,null,null,1]", json.encode(t))
      local u = json.array { 1, 2, 3 }
      u[2] = nil
      assert.equal("[1,null,3]", json.encode(u))
      assert.equal("[]", json.encode(json.array {}))
      -- unmarked tables with holes are objects, as before (faithful too)
      assert.equal('{"1":"a","3":"b"}', json.encode({ [1] = "a", [3] = "b" }, { sort_keys = true }))
    end)

    it("an array too sparse to write out is an error naming the path", function()
      local t = json.array {}
      t[1e6] = 1
      assert.has_error(function() json.encode { x = { t } } end,
        "cannot encode a sparse array (largest index 1000000, 1 elements) at $.x[1]")
    end)

    it("an array-marked table with other keys is an error naming the key", function()
      assert.has_error(function() json.encode { list = json.array { 1, 2, name = "x" } } end,
        'cannot encode key "name" in a table marked as an array at $.list')
      assert.has_error(function() json.encode(json.array { [0] = 1 }) end,
        "cannot encode key 0 in a table marked as an array at $")
      assert.has_error(function() json.encode(json.array { [2.5] = 1 }) end,
        "cannot encode key 2.5 in a table marked as an array at $")
    end)

    it("a table with both 1 and \"1\" as keys is an error, sorted or not", function()
      for _, opts in ipairs { {}, { sort_keys = true } } do
        assert.has_error(function() json.encode({ a = { [1] = "a", ["1"] = "b" } }, opts) end,
          'cannot encode a table with both 1 and "1" as keys at $.a')
        assert.has_error(function() json.encode({ [2] = "x", [1] = "y", ["2"] = "z" }, opts) end,
          'cannot encode a table with both 2 and "2" as keys at $')
      end
      -- no clash: each key written once
      assert.equal('{"01":"b","1":"a"}', json.encode({ [1] = "a", ["01"] = "b" }, { sort_keys = true }))
    end)

    it("NaN and infinities are errors both ways", function()
      assert.has_error(function() json.encode { -math.huge } end, "cannot encode an infinite number at $[1]")
      for _, text in ipairs { "NaN", "[Infinity]", "-Infinity", "[nan]", "1e400" } do
        assert.is_nil(json.decode(text), text)
      end
    end)

    it("decoding is strict JSON: errors name the position", function()
      for text, pos in pairs { ["[01]"] = 3, ["[1.]"] = 2, ["[1,]"] = 4, ['{"a" 1}'] = 6, ['"\\x"'] = 2,
                             ['"abc'] = 1, ["[1] x"] = 5, ["{1:2}"] = 2, ['["\\u12G4"]'] = 3, ["-"] = 1 } do
        local v, err = json.decode(text)
        assert.is_nil(v, text)
        assert.matches("^invalid JSON: .* at character " .. pos .. "$", err)
      end
      -- raw control bytes inside strings are accepted, as lua-cjson did
      assert.equal("a\tb\nc", json.decode('"a\tb\nc"'))
    end)
  end)

  describe("lone surrogate escapes", function()
    it("decode to U+FFFD; a pair joins", function()
      assert.equal("\u{FFFD}", json.decode('"\\ud83d"'))
      assert.equal("\u{FFFD}", json.decode('"\\ude00"'))
      assert.equal("a\u{FFFD}b\u{FFFD}", json.decode('"a\\udbffb\\udc00"'))
      assert.equal("\u{FFFD}\u{FFFD}", json.decode('"\\ude00\\ud83d"'))
      assert.equal("😀", json.decode('"\\ud83d\\ude00"'))
      assert.equal("\u{FFFD}😀", json.decode('"\\ud83d\\ud83d\\ude00"'))
      assert.same({ ["\u{FFFD}"] = "\u{FFFD}x" }, json.decode('{"\\ud800":"\\udfffx"}'))
    end)

    it("with surrogates = \"wtf8\", halves at a string's edges keep their WTF-8 bytes", function()
      local opt = { surrogates = "wtf8" }
      assert.equal("a\xED\xA0\xBD", json.decode('"a\\ud83d"', opt))
      assert.equal("\xED\xB8\x80b", json.decode('"\\ude00b"', opt))
      -- inside a string no partner can come: U+FFFD
      assert.equal("\u{FFFD}x\u{FFFD}", json.decode('"\\ud83dx\\ude00"', opt))
      assert.equal("😀", json.decode('"\\ud83d\\ude00"', opt))
    end)
  end)

  it("a transcript with tool calls round-trips exactly", function()
    local transcript = '[{"content":"S","role":"system"},{"content":"q","role":"user"},'
      .. '{"content":null,"role":"assistant","tool_calls":[{"function":{"arguments":"","name":"f"},"id":"c1","type":"function"}]},'
      .. '{"content":"{\\"ok\\":true}","role":"tool","tool_call_id":"c1"},{"content":"done","role":"assistant","tool_calls":[]}]'
    assert.equal(transcript, json.encode(json.decode(transcript), { sort_keys = true }))
  end)
end)
