-- luachat.schema: the JSON Schema subset that tool arguments are checked
-- against. Each case is a value, a schema and the exact verdict: true, or the
-- "$.path: message" the model will read.
local json = require "luachat.json"
local schema = require "luachat.schema"

local null = json.null

-- { description, value, schema, expected error (nil when valid) }
local cases = {
  -- type
  { "a string is a string", "x", { type = "string" } },
  { "a number is not a string", 42.5, { type = "string" }, "$: expected string, got number" },
  { "an integer is reported as integer", 42, { type = "string" }, "$: expected string, got integer" },
  { "an integer is a number", 3, { type = "number" } },
  { "a float is a number", 3.25, { type = "number" } },
  { "an integral float is an integer", 2.0, { type = "integer" } },
  { "a fraction is not an integer", 2.5, { type = "integer" }, "$: expected integer, got number" },
  { "infinity is not an integer", math.huge, { type = "integer" }, "$: expected integer, got number" },
  { "true is a boolean", true, { type = "boolean" } },
  { "a string is not a boolean", "true", { type = "boolean" }, "$: expected boolean, got string" },
  { "json.null is null", null, { type = "null" } },
  { "false is not null", false, { type = "null" }, "$: expected null, got boolean" },
  { "null is not an object", null, { type = "object" }, "$: expected object, got null" },
  { "a sequence is an array", { 1, 2 }, { type = "array" } },
  { "a marked empty table is an array", json.array {}, { type = "array" } },
  { "a marked empty array is not an object", json.array {}, { type = "object" }, "$: expected object, got array" },
  { "an unmarked empty table is an array", {}, { type = "array" } },
  { "an unmarked empty table is an object", {}, { type = "object" } },
  { "a marked empty object is not an array", json.object {}, { type = "array" }, "$: expected array, got object" },
  { "a table with string keys is an object", { a = 1 }, { type = "object" } },
  { "an object is not an array", { a = 1 }, { type = "array" }, "$: expected array, got object" },
  { "a sequence is not an object", { 1, 2 }, { type = "object" }, "$: expected object, got array" },
  { "a list of types accepts any of them", null, { type = { "string", "null" } } },
  { "a list of types names them all", 1, { type = { "string", "null" } }, "$: expected string or null, got integer" },
  { "an unknown type name constrains nothing", 1, { type = "whatever" } },
  { "no type accepts anything", { 1 }, {} },

  -- objects
  { "required properties present", { city = "Oslo" }, { type = "object", required = { "city" } } },
  { "a missing required property is named", {}, { type = "object", required = { "city" } },
    '$: missing required property "city"' },
  { "null counts as present for required", { city = null }, { type = "object", required = { "city" } } },
  { "properties are checked", { city = 1.5 }, { type = "object", properties = { city = { type = "string" } } },
    "$.city: expected string, got number" },
  { "absent optional properties are fine", {}, { type = "object", properties = { city = { type = "string" } } } },
  { "extra properties are allowed by default", { city = "x", more = 1 },
    { type = "object", properties = { city = { type = "string" } } } },
  { "additionalProperties false names the property and the allowed ones", { city = "x", more = 1 },
    { type = "object", properties = { city = { type = "string" }, unit = { type = "string" } },
      additionalProperties = false },
    '$: unexpected property "more" (allowed: city, unit)' },
  { "additionalProperties false with no properties", { a = 1 }, { type = "object", additionalProperties = false },
    '$: unexpected property "a" (allowed: none)' },
  { "additionalProperties as a schema checks the extra ones", { a = 1, b = "x" },
    { type = "object", additionalProperties = { type = "integer" } }, "$.b: expected integer, got string" },
  { "additionalProperties as a schema passes good extras", { a = 1, b = 2 },
    { type = "object", additionalProperties = { type = "integer" } } },

  -- enum and const
  { "a value in the enum", "c", { enum = { "c", "f" } } },
  { "a value outside the enum lists the options", "k", { type = "string", enum = { "c", "f" } },
    '$: "k" is not one of "c", "f"' },
  { "enum compares numbers by value", 2.0, { enum = { 1, 2 } } },
  { "enum may hold null", null, { enum = { "a", null } } },
  { "enum compares tables deeply", { x = 1 }, { enum = { { x = 1 } } } },
  { "const matches", "v1", { const = "v1" } },
  { "const mismatch shows both", "v2", { const = "v1" }, '$: expected "v1", got "v2"' },

  -- arrays
  { "items are checked with their index", { "a", 2, "c" }, { type = "array", items = { type = "string" } },
    "$[1]: expected string, got integer" },
  { "good items pass", { "a", "b" }, { type = "array", items = { type = "string" } } },
  { "minItems", { 1 }, { type = "array", minItems = 2 }, "$: expected at least 2 items, got 1" },
  { "minItems on an empty array", json.array {}, { type = "array", minItems = 1 },
    "$: expected at least 1 items, got 0" },
  { "maxItems", { 1, 2, 3 }, { type = "array", maxItems = 2 }, "$: expected at most 2 items, got 3" },

  -- strings and numbers
  { "minLength counts characters, not bytes", "åå", { type = "string", minLength = 2 } },
  { "minLength", "a", { type = "string", minLength = 2 }, "$: expected at least 2 characters, got 1" },
  { "maxLength", "abcd", { type = "string", maxLength = 3 }, "$: expected at most 3 characters, got 4" },
  { "minimum", -5, { type = "number", minimum = 0 }, "$: -5 is below the minimum 0" },
  { "maximum", 101, { type = "integer", maximum = 100 }, "$: 101 is above the maximum 100" },
  { "bounds are inclusive", 100, { type = "integer", minimum = 100, maximum = 100 } },

  -- anyOf / oneOf / allOf
  { "anyOf passes when one branch does", 3, { anyOf = { { type = "string" }, { type = "integer" } } } },
  { "anyOf fails with the first branch's reason", true, { anyOf = { { type = "string" }, { type = "integer" } } },
    "$: matches none of the allowed shapes ($: expected string, got boolean)" },
  { "oneOf passes with exactly one", "x", { oneOf = { { type = "string" }, { type = "integer" } } } },
  { "oneOf fails when two match", 3, { oneOf = { { type = "number" }, { type = "integer" } } },
    "$: matches 2 shapes where exactly one is allowed" },
  { "allOf needs every branch", 5, { allOf = { { type = "integer" }, { maximum = 3 } } },
    "$: 5 is above the maximum 3" },

  -- structured outputs' keywords (issue 19)
  { "an empty enum admits nothing", "x", { enum = json.array {} }, "$: no value is allowed (the enum is empty)" },
  { "an empty list of types constrains nothing", "x", { type = json.array {} } },
  { "a false schema admits nothing", { a = 1 }, { properties = { a = false } }, "$.a: no value is allowed here" },
  { "not", "x", { ["not"] = { type = "string" } }, '$: "x" matches a shape that is not allowed (not)' },
  { "not passes the others", 1, { ["not"] = { type = "string" } } },
  { "exclusiveMinimum (a number)", 0, { exclusiveMinimum = 0 }, "$: 0 is not above 0" },
  { "exclusiveMaximum (a number)", 10, { exclusiveMaximum = 10 }, "$: 10 is not below 10" },
  { "exclusiveMaximum (draft 4's boolean)", 10, { maximum = 10, exclusiveMaximum = true }, "$: 10 is not below 10" },
  { "inside the exclusive bounds", 5, { exclusiveMinimum = 0, exclusiveMaximum = 10 } },
  { "multipleOf", 7, { multipleOf = 2 }, "$: 7 is not a multiple of 2" },
  { "multipleOf with a fraction", 0.3, { multipleOf = 0.1 } },
  { "minProperties", { a = 1 }, { type = "object", minProperties = 2 }, "$: expected at least 2 properties, got 1" },
  { "maxProperties", { a = 1, b = 2 }, { maxProperties = 1 }, "$: expected at most 1 properties, got 2" },
  { "uniqueItems", { 1, 2, 1 }, { uniqueItems = true }, "$: items 0 and 2 are equal (uniqueItems)" },
  { "uniqueItems compares tables deeply", { { a = 1 }, { a = 1 } }, { uniqueItems = true },
    "$: items 0 and 1 are equal (uniqueItems)" },
  { "prefixItems by position, items for the rest", { "a", 1, true },
    { prefixItems = { { type = "string" }, { type = "integer" } }, items = { type = "string" } },
    "$[2]: expected string, got boolean" },
  { "prefixItems position", { 1 }, { prefixItems = { { type = "string" } } }, "$[0]: expected string, got integer" },
  { "items false after prefixItems", { "a", "b" }, { prefixItems = { { type = "string" } }, items = false },
    "$: expected at most 1 items, got 2" },
  { "a $ref to $defs", { who = { name = 1 } },
    { properties = { who = { ["$ref"] = "#/$defs/person" } },
      ["$defs"] = { person = { properties = { name = { type = "string" } } } } },
    "$.who.name: expected string, got integer" },
  { "a recursive $ref (#)", { next = { next = { value = "x" } } },
    { properties = { value = { type = "integer" }, next = { ["$ref"] = "#" } } },
    "$.next.next.value: expected integer, got string" },
  { "a $ref with an escaped pointer", 1, { ["$ref"] = "#/definitions/a~1b", definitions = { ["a/b"] = { type = "string" } } },
    "$: expected string, got integer" },
  { "a remote $ref constrains nothing", 1, { ["$ref"] = "https://example.com/s.json" } },
  { "a $ref that loops on itself stops", 1, { ["$ref"] = "#" }, "$: $ref # nests more than 64 deep" },
}

describe("schema.validate", function()
  for _, c in ipairs(cases) do
    local name, value, sch, want = c[1], c[2], c[3], c[4]
    it(name, function()
      local ok, err = schema.validate(value, sch)
      if want == nil then
        assert.is_nil(err)
        assert.is_true(ok)
      else
        assert.is_false(ok)
        assert.equal(want, err)
      end
    end)
  end

  it("reports the full path of a nested failure", function()
    local sch = {
      type = "object", required = { "trip" },
      properties = {
        trip = {
          type = "object", required = { "legs" },
          properties = {
            legs = {
              type = "array", minItems = 1,
              items = {
                type = "object", required = { "from", "to" }, additionalProperties = false,
                properties = { from = { type = "string" }, to = { type = "string" },
                  mode = { enum = { "train", "bus" } } },
              },
            },
          },
        },
      },
    }
    local good = json.decode('{"trip":{"legs":[{"from":"Oslo","to":"Bergen","mode":"train"}]}}')
    assert.is_true(schema.validate(good, sch))
    local function check(text, want)
      local ok, err = schema.validate(assert(json.decode(text)), sch)
      assert.is_false(ok)
      assert.equal(want, err)
    end
    check('{"trip":{"legs":[{"from":"Oslo","to":"Bergen"},{"from":"Bergen","to":7}]}}',
      "$.trip.legs[1].to: expected string, got integer")
    check('{"trip":{"legs":[{"from":"Oslo","to":"Bergen","mode":"plane"}]}}',
      '$.trip.legs[0].mode: "plane" is not one of "train", "bus"')
    check('{"trip":{"legs":[{"from":"Oslo"}]}}', '$.trip.legs[0]: missing required property "to"')
    check('{"trip":{"legs":[{"from":"a","to":"b","via":"c"}]}}',
      '$.trip.legs[0]: unexpected property "via" (allowed: from, mode, to)')
    check('{"trip":{"legs":[]}}', "$.trip.legs: expected at least 1 items, got 0")
    check('{"trip":{}}', '$.trip: missing required property "legs"')
    check('{"trip":null}', "$.trip: expected object, got null")
  end)

  it("checks decoded JSON: [] is an array, {} an object, null is json.null", function()
    local v = assert(json.decode('{"tags":[],"meta":{},"note":null}'))
    assert.is_true(schema.validate(v, { type = "object", properties = {
      tags = { type = "array", items = { type = "string" } },
      meta = { type = "object", additionalProperties = false },
      note = { type = { "string", "null" } },
    } }))
    local ok, err = schema.validate(v, { type = "object", properties = { tags = { type = "object" } } })
    assert.is_false(ok)
    assert.equal("$.tags: expected object, got array", err)
  end)

  it("reports the first failing property in a stable (sorted) order", function()
    local sch = { type = "object", properties = { b = { type = "string" }, a = { type = "string" } } }
    for _ = 1, 5 do
      local ok, err = schema.validate({ b = 1, a = 2 }, sch)
      assert.is_false(ok)
      assert.equal("$.a: expected string, got integer", err)
    end
  end)

  it("ignores keywords it does not know and non-table schemas", function()
    assert.is_true(schema.validate("x", { type = "string", format = "email", pattern = "^no$" }))
    assert.is_true(schema.validate(5, true))
    assert.is_true(schema.validate(5, nil))
  end)
end)
