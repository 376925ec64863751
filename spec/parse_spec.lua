-- Structured outputs (issue 19): client:parse against the test server scripted
-- as a model; the agent's output_schema; JSON Schemas with empty lists at any
-- depth going out as [] (asserted on the bytes the server received).
local server = require "spec.helpers.server"
local luachat = require "luachat"
local core = require "luachat.core"
local json = luachat.json
local schema = require "luachat.schema"

-- A non-streamed reply whose message has this content (and refusal).
local function reply(content, refusal, finish)
  return { json = {
    id = "chatcmpl-p", object = "chat.completion", created = 1, model = "m",
    choices = { { index = 0, finish_reason = finish or "stop",
      message = { role = "assistant", content = content or json.null, refusal = refusal or json.null } } },
    usage = { prompt_tokens = 10, completion_tokens = 5, total_tokens = 15 },
  } }
end

local function chunk(delta, finish)
  return { json = { id = "chatcmpl-s", object = "chat.completion.chunk", created = 1, model = "m",
    choices = { { index = 0, delta = delta, finish_reason = finish or json.null } } } }
end

local PERSON = {
  type = "object",
  properties = { name = { type = "string" }, age = { type = "integer" } },
  required = { "name", "age" },
  additionalProperties = false,
}

local function count(s, sub)
  local n, i = 0, 1
  while true do
    local a, b = s:find(sub, i, true)
    if not a then return n end
    n, i = n + 1, b + 1
  end
end

describe("client:parse", function()
  local srv, client

  setup(function() srv = server.start() end)
  teardown(function() if srv then srv:stop() end end)
  before_each(function()
    srv:reset()
    client = luachat.client { base_url = srv.base_url, api_key = "sk-parse", max_retries = 0 }
  end)
  after_each(function() assert.equal(0, core.live(), "a transfer was left running") end)

  local function request(text)
    return { model = "m", messages = { { role = "user", content = text or "Who?" } } }
  end

  it("sends response_format json_schema and returns the decoded, checked value and the response", function()
    srv:script { reply('{"name": "Ada", "age": 36}') }
    local req = request()
    local value, err, res = client:parse(req, PERSON, { name = "person" })
    assert.is_nil(err)
    assert.same({ name = "Ada", age = 36 }, value)
    assert.equal("integer", math.type(value.age))
    assert.equal("chatcmpl-p", res.id)
    local r = srv:requests()[1]
    assert.equal("/v1/chat/completions", r.path)
    local rf = r.json.response_format
    assert.equal("json_schema", rf.type)
    assert.equal("person", rf.json_schema.name)
    assert.is_true(rf.json_schema.strict)
    assert.same({ "name", "age" }, rf.json_schema.schema.required)
    assert.is_false(rf.json_schema.schema.additionalProperties)
    assert.same({ { role = "user", content = "Who?" } }, r.json.messages)
    assert.is_nil(req.response_format) -- the caller's request is left as it was
  end)

  it("defaults to name 'output', strict true, no re-ask", function()
    srv:script { reply('{"name": 1, "age": 2}'), reply('{"name": "x", "age": 2}') }
    local value, err = client:parse(request(), PERSON)
    assert.is_nil(value)
    assert.equal("invalid_output", err.kind)
    local reqs = srv:requests()
    assert.equal(1, #reqs)
    assert.equal("output", reqs[1].json.response_format.json_schema.name)
    assert.is_true(reqs[1].json.response_format.json_schema.strict)
  end)

  it("strict = false is sent as false", function()
    srv:script { reply('{"name": "Ada", "age": 36}') }
    assert.truthy(client:parse(request(), PERSON, { strict = false }))
    assert.matches('"strict":false', srv:requests()[1].body, 1, true)
  end)

  it("content that is not JSON is invalid_output, with the content kept and the response returned", function()
    srv:script { reply("Ada, 36 years old") }
    local value, err, res = client:parse(request(), PERSON)
    assert.is_nil(value)
    assert.equal("invalid_output", err.kind)
    assert.matches("^the output is not JSON: invalid JSON: .* at character 1$", err.message)
    assert.equal("Ada, 36 years old", err.body)
    assert.equal(0, err.retries)
    assert.equal("chatcmpl-p", res.id)
  end)

  it("output that fails the schema names the JSON path", function()
    srv:script { reply('{"name": 42, "age": 36}') }
    local value, err, res = client:parse(request(), PERSON)
    assert.is_nil(value)
    assert.equal("invalid_output", err.kind)
    assert.equal("the output does not match the schema: $.name: expected string, got integer", err.message)
    assert.equal('{"name": 42, "age": 36}', err.body)
    assert.truthy(res)
    assert.matches("luachat: invalid_output error", tostring(err), 1, true)
  end)

  it("a nested failure names the whole path", function()
    srv:script { reply('{"people": [{"name": "a"}, {"name": 2}]}') }
    local s = { type = "object", properties = { people = { type = "array", items = PERSON } } }
    local _, err = client:parse(request(), s)
    assert.equal('the output does not match the schema: $.people[0]: missing required property "age"', err.message)
  end)

  it("a refusal is err.kind 'refusal' with the model's words, never re-asked", function()
    srv:script { reply(nil, "I can't help with that."), reply('{"name": "x", "age": 1}') }
    local value, err, res = client:parse(request(), PERSON, { retries = 3 })
    assert.is_nil(value)
    assert.equal("refusal", err.kind)
    assert.equal("the model refused: I can't help with that.", err.message)
    assert.equal("I can't help with that.", err.refusal)
    assert.truthy(res)
    assert.equal(1, #srv:requests())
  end)

  it("a reply cut by max_tokens says so", function()
    srv:script { reply('{"name": "Ad', nil, "length") }
    local _, err = client:parse(request(), PERSON)
    assert.equal("invalid_output", err.kind)
    assert.matches("finish_reason length: the output was cut; raise max_tokens", err.message, 1, true)
  end)

  it("retries = N re-asks with the validation error, then returns the value", function()
    srv:script { reply('{"name": 42, "age": 36}'), reply("not json"), reply('{"name": "Ada", "age": 36}') }
    local value, err, res = client:parse(request(), PERSON, { retries = 2 })
    assert.is_nil(err)
    assert.same({ name = "Ada", age = 36 }, value)
    assert.truthy(res)
    local reqs = srv:requests()
    assert.equal(3, #reqs)
    local m2 = reqs[2].json.messages
    assert.equal(3, #m2)
    assert.same({ role = "assistant", content = '{"name": 42, "age": 36}' }, m2[2])
    assert.equal("user", m2[3].role)
    assert.equal("Your reply was not valid: $.name: expected string, got integer. "
      .. "Answer again with only the JSON value, matching the JSON schema given.", m2[3].content)
    local m3 = reqs[3].json.messages
    assert.equal(5, #m3)
    assert.equal("not json", m3[4].content)
    assert.matches("^Your reply was not valid: the output is not JSON: invalid JSON", m3[5].content)
    -- every attempt asks for the same schema
    for _, r in ipairs(reqs) do assert.equal("output", r.json.response_format.json_schema.name) end
  end)

  it("retries run out: the last error, how many re-asks were made", function()
    srv:script { reply('{"name": 1, "age": 1}'), reply('{"name": 2, "age": 1}') }
    local value, err, res = client:parse(request(), PERSON, { retries = 1 })
    assert.is_nil(value)
    assert.equal("invalid_output", err.kind)
    assert.equal(1, err.retries)
    assert.equal("the output does not match the schema: $.name: expected string, got integer (after 1 re-ask)",
      err.message)
    assert.equal('{"name": 2, "age": 1}', err.body)
    assert.truthy(res)
    assert.equal(2, #srv:requests())
  end)

  it("a reply cut at max_tokens or stopped by a content filter is never re-asked", function()
    for _, finish in ipairs { "length", "content_filter" } do
      srv:reset()
      srv:script { reply('{"name": "Ad', nil, finish), reply('{"name": "Ada", "age": 36}') }
      local value, err = client:parse(request(), PERSON, { retries = 2 })
      assert.is_nil(value, finish)
      assert.equal("invalid_output", err.kind)
      assert.equal(0, err.retries)
      assert.equal(1, #srv:requests(), finish)
    end
  end)

  it("the re-ask never carries the API key, and is cut on a character boundary", function()
    local long = "sk-parse" .. string.rep("é", 2000)
    srv:script { reply(json.encode { name = "A", age = 1, [long] = 1 }), reply('{"name": "A", "age": 1}') }
    assert(client:parse(request(), PERSON, { retries = 1 }))
    local sent = srv:requests()[2].json.messages[3]
    assert.equal("user", sent.role)
    assert.matches('^Your reply was not valid: %$: unexpected property "%[REDACTED%]éé', sent.content)
    assert.is_nil(sent.content:find("sk-parse", 1, true))
    assert.matches("…%. Answer again with only the JSON value", sent.content)
    assert.is_true(#sent.content < 1200)
    assert.is_not_nil(utf8.len(sent.content))
  end)

  it("an API error is returned as is, with no response", function()
    srv:script { { status = 400, json = { error = { message = "bad schema" } } } }
    local value, err, res = client:parse(request(), PERSON, { retries = 2 })
    assert.is_nil(value)
    assert.is_nil(res)
    assert.equal("api", err.kind)
    assert.equal(400, err.status)
    assert.equal(1, #srv:requests())
  end)

  it("works over a stream (request.stream = true), the content joined from chunks", function()
    srv:script { { sse = {
      chunk { role = "assistant", content = "" },
      chunk { content = '{"name": "A' }, chunk { content = 'da", "age"' }, chunk { content = ": 36}" },
      chunk({}, "stop"),
    }, done = true } }
    local req = request()
    req.stream = true
    local value, err = client:parse(req, PERSON)
    assert.is_nil(err)
    assert.same({ name = "Ada", age = 36 }, value)
    assert.is_true(srv:requests()[1].json.stream)
  end)

  it("passes call options (headers) through", function()
    srv:script { reply('{"name": "Ada", "age": 36}') }
    assert.truthy(client:parse(request(), PERSON, nil, { headers = { ["X-Trace"] = "t1" } }))
    assert.equal("t1", srv:requests()[1].headers["x-trace"])
  end)

  it("raises on programming errors, blaming the caller's line", function()
    local line = debug.getinfo(1, "l").currentline
    local ok, e = pcall(client.parse, client, request(), "not a schema")
    assert.is_false(ok)
    assert.matches("bad argument #2 to 'parse' %(JSON Schema table expected, got string%)", e)
    ok, e = pcall(function() local v = client:parse(request(), PERSON, { retry = 1 }) return v end)
    assert.is_false(ok)
    assert.matches("parse_spec.lua:" .. (line + 4) .. ": bad argument #3 to 'parse' %(unknown field 'retry' %(did you mean 'retries'%?%)%)", e)
    ok, e = pcall(client.parse, client, request(), PERSON, { name = "has space" })
    assert.matches("bad argument #3 to 'parse' %(field 'name' must match", e)
    ok, e = pcall(client.parse, client, request(), PERSON, { retries = -1 })
    assert.matches("field 'retries' must be an integer from 0 to 100", e)
    ok, e = pcall(client.parse, client, { messages = {} }, PERSON)
    assert.matches("bad argument #1 to 'parse' %(field 'model' must be a non%-empty string%)", e)
    ok, e = pcall(client.parse, client, request(), PERSON, nil, { timeout = "x" })
    assert.matches("bad argument #4 to 'parse'", e)
  end)
end)

describe("JSON Schemas on the wire: empty lists at any depth go out as []", function()
  local srv, client

  setup(function() srv = server.start() end)
  teardown(function() if srv then srv:stop() end end)
  before_each(function()
    srv:reset()
    client = luachat.client { base_url = srv.base_url, api_key = "sk-parse", max_retries = 0 }
  end)
  after_each(function() assert.equal(0, core.live(), "a transfer was left running") end)

  -- Each table holds one key, so the encoding is the same bytes whatever the hash order.
  local function deep()
    return { properties = { a = { anyOf = { { required = {} }, { items = { enum = {} } } } } } }
  end
  local DEEP = '{"properties":{"a":{"anyOf":[{"required":[]},{"items":{"enum":[]}}]}}}'

  -- Every list-valued keyword empty, every map-valued one empty, nested two levels.
  local function every_keyword()
    local leaf = function()
      return { type = {}, required = {}, enum = {}, examples = {}, anyOf = {}, oneOf = {}, allOf = {},
        prefixItems = {}, properties = {}, patternProperties = {}, ["$defs"] = {}, definitions = {},
        dependentSchemas = {}, dependentRequired = { x = {} } }
    end
    local s = leaf()
    s.properties = { p = leaf() }
    s.items = leaf()
    s.additionalProperties = leaf()
    s["not"] = leaf()
    s["$defs"] = { d = { properties = { q = leaf() } } }
    return s
  end
  local LISTS = { "type", "required", "enum", "examples", "anyOf", "oneOf", "allOf", "prefixItems" }
  local MAPS = { "properties", "patternProperties", "$defs", "definitions", "dependentSchemas" }

  local function check_every_keyword(body)
    -- leaves: the top-level schema's properties hold p, its $defs hold d: those are not empty
    for _, k in ipairs(LISTS) do
      assert.equal(6, count(body, '"' .. k .. '":[]'), k)
      assert.equal(0, count(body, '"' .. k .. '":{}'), k)
    end
    assert.equal(6, count(body, '"x":[]'))
    for _, k in ipairs(MAPS) do
      assert.equal(0, count(body, '"' .. k .. '":[]'), k)
    end
    assert.equal(5, count(body, '"properties":{}'))
    assert.equal(5, count(body, '"$defs":{}'))
    assert.equal(6, count(body, '"patternProperties":{}'))
    -- decoded by luachat's decoder, each [] is a marked array
    local doc = json.decode(body)
    return doc
  end

  it("in tool parameters given to client:chat", function()
    srv:script { reply("ok"), reply("ok") }
    local function send(params)
      assert.truthy(client:chat { model = "m", messages = { { role = "user", content = "x" } },
        tools = { { type = "function", ["function"] = { name = "t", parameters = params } } } })
    end
    send(deep())
    send(every_keyword())
    local reqs = srv:requests()
    assert.equal(1, count(reqs[1].body, '"parameters":' .. DEEP))
    check_every_keyword(reqs[2].body)
  end)

  it("in a response_format schema given to client:chat", function()
    srv:script { reply("ok") }
    assert.truthy(client:chat { model = "m", messages = { { role = "user", content = "x" } },
      response_format = { type = "json_schema", json_schema = { name = "o", schema = deep() } } })
    assert.matches('"schema":' .. DEEP, srv:requests()[1].body, 1, true)
  end)

  it("in client:parse's schema", function()
    srv:script { reply('{}') }
    -- (enum = [] and anyOf = [] admit no value: only the wire matters here)
    local _, err = client:parse({ model = "m", messages = { { role = "user", content = "x" } } }, every_keyword())
    assert.equal("the output does not match the schema: $: no value is allowed (the enum is empty)", err.message)
    local doc = check_every_keyword(srv:requests()[1].body)
    local s = doc.response_format.json_schema.schema
    assert.equal(json.array_mt, getmetatable(s.required))
    assert.equal(json.array_mt, getmetatable(s.properties.p.anyOf))
    assert.equal(json.array_mt, getmetatable(s["$defs"].d.properties.q.required))
    assert.equal(json.array_mt, getmetatable(s.items.dependentRequired.x))
  end)

  it("in luachat.tool parameters sent by the agent", function()
    srv:script { reply("done") }
    local t = luachat.tool { name = "t", parameters = deep(), handler = function() return "x" end }
    local agent = luachat.agent { client = client, model = "m", tools = { t } }
    assert.truthy(agent:run("go"))
    assert.matches('"parameters":' .. DEEP, srv:requests()[1].body, 1, true)
  end)

  it("keeps non-empty lists, marked tables and a schema {} (items = {}) as they are", function()
    local s = { items = {}, required = { "a" }, enum = json.object {}, properties = json.array {} }
    schema.normalize(s)
    assert.equal('{"enum":{}}', json.encode { enum = s.enum })
    assert.equal('{"properties":[]}', json.encode { properties = s.properties })
    assert.equal('{"items":{}}', json.encode { items = s.items })
    assert.equal('["a"]', json.encode(s.required))
  end)

  it("survives a schema that contains itself", function()
    local s = { type = "object", required = {} }
    s.properties = { self = s }
    assert.equal(s, schema.normalize(s))
    assert.equal(json.array_mt, getmetatable(s.required))
  end)
end)

describe("luachat.agent output_schema", function()
  local srv, client

  setup(function() srv = server.start() end)
  teardown(function() if srv then srv:stop() end end)
  before_each(function()
    srv:reset()
    client = luachat.client { base_url = srv.base_url, api_key = "sk-parse", max_retries = 0 }
  end)
  after_each(function() assert.equal(0, core.live(), "a transfer was left running") end)

  local function call_reply()
    return { json = {
      id = "c1", object = "chat.completion", created = 1, model = "m",
      choices = { { index = 0, finish_reason = "tool_calls", message = { role = "assistant", content = json.null,
        tool_calls = { { id = "call_1", type = "function", ["function"] = { name = "lookup", arguments = '{"q":"Ada"}' } } } } } },
    } }
  end

  local lookup = luachat.tool { name = "lookup", parameters = { type = "object", properties = { q = { type = "string" } },
    required = { "q" } }, handler = function(args) return { name = args.q, age = 36 } end }

  it("returns the final answer parsed as result.parsed, response_format on every turn", function()
    srv:script { call_reply(), reply('{"name": "Ada", "age": 36}') }
    local agent = luachat.agent { client = client, model = "m", tools = { lookup }, output_schema = PERSON }
    local result, err = agent:run("Who is Ada?")
    assert.is_nil(err)
    assert.same({ name = "Ada", age = 36 }, result.parsed)
    assert.equal('{"name": "Ada", "age": 36}', result.content)
    assert.equal(2, result.turns)
    for _, r in ipairs(srv:requests()) do
      assert.equal("json_schema", r.json.response_format.type)
      assert.equal("output", r.json.response_format.json_schema.name)
      assert.is_true(r.json.response_format.json_schema.strict)
    end
  end)

  it("a final answer failing the schema is invalid_output, the transcript in err.result", function()
    srv:script { reply('{"name": "Ada"}') }
    local agent = luachat.agent { client = client, model = "m", output_schema = PERSON }
    local result, err = agent:run("Who?")
    assert.is_nil(result)
    assert.equal("invalid_output", err.kind)
    assert.equal('the output does not match the schema: $: missing required property "age"', err.message)
    assert.equal('{"name": "Ada"}', err.result.content)
    assert.equal(1, err.result.turns)
    assert.equal(2, #err.result.messages)
  end)

  it("a refusal is err.kind 'refusal'", function()
    srv:script { reply(nil, "No.") }
    local agent = luachat.agent { client = client, model = "m", output_schema = PERSON }
    local result, err = agent:run("Who?")
    assert.is_nil(result)
    assert.equal("refusal", err.kind)
    assert.equal("No.", err.refusal)
  end)

  it("without output_schema nothing is parsed and no response_format is sent", function()
    srv:script { reply('{"name": "Ada", "age": 36}') }
    local result = luachat.agent { client = client, model = "m" }:run("Who?")
    assert.is_nil(result.parsed)
    assert.is_nil(srv:requests()[1].json.response_format)
  end)

  it("output_schema must be a table", function()
    local ok, e = pcall(luachat.agent, { client = client, model = "m", output_schema = "x" })
    assert.is_false(ok)
    assert.matches("field 'output_schema' must be a JSON Schema table", e)
  end)
end)
