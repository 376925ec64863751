-- The decoder's and the chunk scanner's fast paths (issue 14 speed): strings scanned 8
-- bytes at a time (src/json_run.h), tables built at their closing bracket with their
-- exact size (src/lchat_json.c, DECODE_BATCH), short strings pushed from a cache. Each
-- must give exactly what the plain byte-by-byte, insert-as-you-go decoder gave.
local json = require "luachat.json"
local core = require "luachat.core"

local function chunk_with(content)
  return '{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,'
    .. '"delta":{"content":"' .. content .. '"},"finish_reason":null}]}'
end

describe("JSON fast paths", function()
  -- Each special byte at every offset of a string, so it falls in the first, a middle and
  -- the last 8-byte word and in the byte-by-byte tail.
  local specials = {
    { json = '\\"', text = '"' }, { json = "\\\\", text = "\\" }, { json = "\\n", text = "\n" },
    { json = "\\u00e9", text = "é" }, { json = "\\ud83d\\ude00", text = "😀" }, { json = "é", text = "é" },
  }

  it("a string with an escape or a quote at any offset decodes exactly (json.decode and scan_text)", function()
    for _, sp in ipairs(specials) do
      for before = 0, 24 do
        for after = 0, 9 do
          local a, b = string.rep("a", before), string.rep("b", after)
          local want = a .. sp.text .. b
          local raw = a .. sp.json .. b
          assert.equal(want, json.decode('"' .. raw .. '"'), raw)
          assert.same({ k = want }, json.decode('{"k":"' .. raw .. '"}'), raw)
          local index, content = core.scan_text(chunk_with(raw))
          assert.equal(0, index, raw)
          assert.equal(want, content, raw)
        end
      end
    end
  end)

  it("a raw control byte at any offset sends the chunk to the full path; the decoder keeps it", function()
    for before = 0, 24 do
      local raw = string.rep("a", before) .. "\1" .. "bcdefghijk"
      assert.is_nil(core.scan_text(chunk_with(raw)), "offset " .. before)
      assert.equal(raw, json.decode('"' .. raw .. '"'))
    end
  end)

  it("an unterminated string at any length is an error, never a read past the end", function()
    for n = 0, 20 do
      local v, err = json.decode('"' .. string.rep("x", n))
      assert.is_nil(v)
      assert.matches("unterminated string", err, 1, true)
      assert.is_nil(core.scan_text('{"choices":[{"index":0,"delta":{"content":"' .. string.rep("x", n)))
    end
  end)

  it("objects and arrays of any size, across the batch of 32, keep every item in order", function()
    for n = 0, 100 do
      local keys, elems, want_obj, want_arr = {}, {}, {}, {}
      for i = 1, n do
        keys[i] = string.format('"k%d":%d', i, i)
        elems[i] = tostring(i)
        want_obj["k" .. i] = i
        want_arr[i] = i
      end
      local obj = json.decode("{" .. table.concat(keys, ",") .. "}")
      local arr = json.decode("[" .. table.concat(elems, ",") .. "]")
      assert.same(want_obj, obj)
      assert.equal(n, #arr)
      for i = 1, n do assert.equal(i, rawget(arr, i)) end
      -- ordinary tables: the array marked only when empty, as before
      assert.equal(n == 0, getmetatable(arr) == json.array_mt)
    end
  end)

  it("a repeated key keeps the last value, within the batch and past it", function()
    assert.same({ a = 3 }, json.decode('{"a":1,"a":2,"a":3}'))
    local parts = { '"dup":"first"' }
    for i = 1, 40 do parts[#parts + 1] = string.format('"k%d":%d', i, i) end
    parts[#parts + 1] = '"dup":"last"'
    local v = json.decode("{" .. table.concat(parts, ",") .. "}")
    assert.equal("last", v.dup)
    assert.equal(40, v.k40)
  end)

  it("nested containers deeper than a batch decode whole", function()
    local v = json.decode(string.rep("[", 200) .. "1" .. string.rep("]", 200))
    for _ = 1, 199 do v = v[1] end
    assert.same({ 1 }, v)
  end)

  it("the short-string cache never returns another string of the same shape", function()
    -- Same length, same first, middle and last bytes: the same cache slot.
    local v = json.decode('["aXbYc","aZbWc","aXbYc",{"aXbYc":1,"aZbWc":2}]')
    assert.same({ "aXbYc", "aZbWc", "aXbYc", { aXbYc = 1, aZbWc = 2 } }, v)
    local many = {}
    for i = 1, 2000 do many[i] = string.format('"s%d"', i % 700) end
    local got = json.decode("[" .. table.concat(many, ",") .. "]")
    for i = 1, 2000 do assert.equal("s" .. (i % 700), got[i]) end
    assert.equal("", json.decode('""'))
    assert.same({ [""] = "" }, json.decode('{"":""}'))
  end)
end)
