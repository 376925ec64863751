-- Record/replay cassettes (issue 19): record against the local test server,
-- stop it, replay, and compare every output byte (each callback's chunks and
-- texts, the final, errors); misses; secrets never written; the CLI.
local server = require "spec.helpers.server"
local proc = require "spec.helpers.proc"
local luachat = require "luachat"
local core = require "luachat.core"
local cassette = require "luachat.cassette"
local json = luachat.json

local HOST, shell_quote = proc.host, proc.shell_quote

local function encode(v)
  return json.encode(v, { sort_keys = true })
end

local function reply(content, calls)
  return { json = {
    id = "chatcmpl-r", object = "chat.completion", created = 1, model = "m",
    choices = { { index = 0, finish_reason = calls and "tool_calls" or "stop",
      message = { role = "assistant", content = content or json.null, tool_calls = calls } } },
    usage = { prompt_tokens = 3, completion_tokens = 2, total_tokens = 5 },
  } }
end

local function chunk(delta, finish)
  return { json = { id = "chatcmpl-s", object = "chat.completion.chunk", created = 1, model = "m",
    choices = { { index = 0, delta = delta, finish_reason = finish or json.null } } } }
end

-- A stream: text in pieces (a named ping event among them), then usage.
local function streamed(text, calls)
  local ev = { chunk { role = "assistant", content = "" } }
  for piece in (text or ""):gmatch("%S+%s*") do ev[#ev + 1] = chunk { content = piece } end
  ev[#ev + 1] = { event = "ping", data = "{}" }
  for i, c in ipairs(calls or {}) do
    ev[#ev + 1] = chunk { tool_calls = { { index = i - 1, id = c.id, type = "function",
      ["function"] = { name = c["function"].name, arguments = c["function"].arguments } } } }
  end
  ev[#ev + 1] = chunk({}, calls and "tool_calls" or "stop")
  ev[#ev + 1] = { json = { id = "chatcmpl-s", object = "chat.completion.chunk", created = 1, model = "m",
    choices = json.array {}, usage = { prompt_tokens = 7, completion_tokens = 3, total_tokens = 10 } } }
  return { sse = ev, done = true }
end

local function call(id, name, arguments)
  return { id = id, type = "function", ["function"] = { name = name, arguments = arguments } }
end

local function read(path)
  return proc.read_file(path) or ""
end

local function lines(path)
  local t = {}
  for line in read(path):gmatch("[^\n]+") do t[#t + 1] = json.decode(line) end
  return t
end

local KEY = "sk-cassette-SECRET-0123456789"

describe("cassettes", function()
  local srv, dir, path, base_url

  -- One server, restarted only after a case stopped it (starting one costs seconds).
  before_each(function()
    if not srv then srv = server.start() end
    srv:reset()
    base_url = srv.base_url
    dir = proc.tmpdir()
    path = dir .. "/tape.jsonl"
    cassette.reset()
  end)
  after_each(function()
    os.execute("rm -rf " .. shell_quote(dir))
    assert.equal(0, core.live(), "a transfer was left running")
  end)
  teardown(function() if srv then srv:stop() end end)

  local function client(mode, extra)
    local opts = { base_url = base_url, api_key = KEY, cassette = path, cassette_mode = mode, max_retries = 0 }
    for k, v in pairs(extra or {}) do opts[k] = v end
    return luachat.client(opts)
  end

  -- Run `script(c)` recording against the server, then with the server stopped
  -- replaying; returns both outputs (already encoded) for comparison.
  local function record_then_replay(responses, script)
    if #responses > 0 then srv:script(responses) end
    local recorded = script(client("record"))
    local served = #srv:requests()
    srv:stop()
    srv = nil
    cassette.reset()
    local replayed = script(client("replay"))
    return recorded, replayed, served
  end

  it("chat, get and post replay byte for byte with the server stopped", function()
    local rec, rep, served = record_then_replay({
      reply("hello"), { json = { object = "list", data = { { id = "m1" } } } },
      { json = { data = { { embedding = { 0.5, -0.25 } } } } },
      { status = 400, json = { error = { message = "bad thing", type = "invalid_request_error" } } },
    }, function(c)
      local out = {}
      out[1] = encode { c:chat { model = "m", messages = { { role = "user", content = "hi" } } } }
      out[2] = encode { c:get("models", { query = { limit = 2 } }) }
      out[3] = encode { c:post("embeddings", { model = "e", input = "x" }) }
      local res, err = c:chat { model = "m", messages = { { role = "user", content = "bad" } } }
      out[4] = encode { res = res, kind = err.kind, status = err.status, message = err.message, body = err.body,
        request_id = err.request_id }
      return out
    end)
    assert.equal(4, served)
    assert.same(rec, rep)
    assert.matches('"content":"hello"', rep[1], 1, true)
    assert.matches('"embedding":[0.5,-0.25]', rep[3], 1, true)
    assert.matches('"message":"POST .-: HTTP 400: bad thing"', rep[4])
    assert.matches('"request_id":"req_4"', rep[4], 1, true)
    local t = lines(path)
    assert.equal(4, #t)
    assert.equal("chat/completions", t[1].request.path)
    assert.equal("POST", t[1].request.method)
    assert.same({ model = "m", messages = { { role = "user", content = "hi" } } }, t[1].request.body)
    assert.equal(200, t[1].response.status)
    assert.equal("models?limit=2", t[2].request.path)
    assert.equal("GET", t[2].request.method)
    assert.equal(400, t[4].response.status)
    assert.equal("hello", t[1].response.json.choices[1].message.content) -- a 2xx JSON body decoded
    assert.equal("string", type(t[4].response.body)) -- an error body as received (err.body shows it)
    assert.matches('"message":"bad thing"', t[4].response.body, 1, true)
  end)

  it("streams replay the same chunks to every callback, the same texts and the same final", function()
    local function run(c)
      local out = {}
      local chunks, texts = {}, {}
      local final, err = c:stream({ model = "m", messages = { { role = "user", content = "one" } } }, {
        on_chunk = function(ch) chunks[#chunks + 1] = encode(ch) end,
        on_text = function(t, i) texts[#texts + 1] = t .. "@" .. i end,
      })
      out.a = { chunks = chunks, texts = texts, final = encode(final), err = err and err.kind }
      -- open_stream with the text path only
      local s = assert(c:open_stream { model = "m", messages = { { role = "user", content = "two" } } })
      local t2 = {}
      for text in s:text() do t2[#t2 + 1] = text end
      local f2, e2 = s:result()
      out.b = { texts = t2, final = encode(f2), err = e2 and e2.kind }
      -- a plain function callback
      local n = 0
      local f3 = c:stream({ model = "m", messages = { { role = "user", content = "three" } } }, function() n = n + 1 end)
      out.c = { n = n, final = encode(f3) }
      return out
    end
    local rec, rep = record_then_replay({ streamed("Hello there world"), streamed("Second answer"),
      streamed("x y z") }, run)
    assert.same(rec, rep)
    assert.equal("Hello @0", rep.a.texts[1])
    assert.equal(6, #rep.a.chunks) -- the ping is skipped, as live
    assert.same({ "Second ", "answer" }, rep.b.texts)
    assert.matches('"content":"Hello there world"', rep.a.final, 1, true)
    assert.matches('"total_tokens":10', rep.a.final, 1, true)
    local t = lines(path)
    assert.equal(3, #t)
    assert.is_true(t[1].response.sse)
    assert.is_true(t[1].request.stream)
    assert.equal(8, #t[1].response.events) -- every event as received: 6 chunks, the ping, [DONE]
    assert.same({ event = "ping", data = "{}" }, t[1].response.events[5])
    assert.equal("[DONE]", t[1].response.events[8])
    -- chunks are written decoded (readable in a diff), replayed re-encoded
    assert.equal("Hello ", t[1].response.events[2].json.choices[1].delta.content)
    assert.is_nil(t[1].response.times) -- timing is written only with cassette_timing = "recorded"
    assert.is_nil(t[1].response.seconds)
  end)

  it("an agent with tools replays (streamed and not), tool handlers run again", function()
    local function run(c, stream)
      local ran = {}
      local weather = luachat.tool { name = "weather", parameters = { type = "object",
        properties = { city = { type = "string" } }, required = { "city" } },
        handler = function(args) ran[#ran + 1] = args.city; return { temp = 21 } end }
      local texts = {}
      local agent = luachat.agent { client = c, model = "m", tools = { weather }, stream = stream,
        on_text = function(t) texts[#texts + 1] = t end }
      local result, err = agent:run("Weather in Paris and Oslo?")
      return { content = result and result.content, messages = result and encode(result.messages),
        turns = result and result.turns, usage = result and encode(result.usage), ran = ran, texts = texts,
        err = err and err.message }
    end
    local calls = { call("call_1", "weather", '{"city":"Paris"}'), call("call_2", "weather", '{"city":"Oslo"}') }
    local rec, rep = record_then_replay({ reply(nil, calls), reply("Both 21."), streamed(nil, calls),
      streamed("Both are 21.") }, function(c)
      return { plain = run(c, false), streamed = run(c, true) }
    end)
    assert.same(rec, rep)
    assert.is_nil(rep.plain.err)
    assert.equal("Both 21.", rep.plain.content)
    assert.same({ "Paris", "Oslo" }, rep.plain.ran)
    assert.equal("Both are 21.", rep.streamed.content)
    assert.equal(2, rep.streamed.turns)
  end)

  it("streams in concurrent tasks record and replay (each task waits on its own recorder)", function()
    local function run(c)
      local spawn = luachat.spawn
      local results = luachat.gather {
        spawn(function()
          local texts = {}
          local final = c:stream({ model = "m", messages = { { role = "user", content = "a" } } },
            { on_text = function(t) texts[#texts + 1] = t end })
          return encode { texts = texts, final = final }
        end),
        spawn(function()
          return encode(c:chat { model = "m", stream = true, messages = { { role = "user", content = "b" } } })
        end),
        spawn(function()
          local s = assert(c:open_stream { model = "m", messages = { { role = "user", content = "c" } } })
          local chunks = {}
          for ch in s:chunks() do chunks[#chunks + 1] = encode(ch) end
          return encode { chunks = chunks, final = s:result() }
        end),
      }
      local out = {}
      for i, r in ipairs(results) do out[i] = r[1] or tostring(r[2]) end
      return out
    end
    -- every request gets a stream echoing its message, its events 50 ms apart:
    -- the tasks really wait on the loop while recording
    local events = { chunk { role = "assistant", content = "" } }
    for _, word in ipairs { "{{last_user}}-one ", "{{last_user}}-two ", "{{last_user}}-three" } do
      local ev = chunk { content = word }
      ev.delay = 0.05
      events[#events + 1] = ev
    end
    events[#events + 1] = chunk({}, "stop")
    srv:default { sse = events, done = true }
    local rec, rep, served = record_then_replay({}, run)
    assert.equal(3, served)
    assert.same(rec, rep)
    assert.matches('"texts":["a-one ","a-two ","a-three"]', rep[1], 1, true)
    assert.matches('"content":"b-one b-two b-three"', rep[2], 1, true)
    assert.matches('"content":"c-one c-two c-three"', rep[3], 1, true)
    assert.equal(3, #lines(path))
  end)

  it("a request not in the cassette is err.kind 'cassette' naming the closest and where it differs", function()
    srv:script { reply("hello"), reply("other") }
    local c = client("record")
    assert.truthy(c:chat { model = "m", messages = { { role = "user", content = "hi" } } })
    assert.truthy(c:get("models"))
    cassette.reset()
    local r = client("replay")
    local res, err = r:chat { model = "m", messages = { { role = "user", content = "bye" } } }
    assert.is_nil(res)
    assert.equal("cassette", err.kind)
    assert.equal("cassette " .. path .. " (mode replay): no recorded exchange for POST chat/completions; "
      .. 'closest: line 1 (POST chat/completions): the body differs at $.messages[0].content: '
      .. 'recorded "hi", sent "bye"', err.message)
    _, err = r:get("files")
    assert.matches("closest: line 2 %(GET models%): the path differs: recorded models, sent files$", err.message)
    _, err = r:chat { model = "m", messages = { { role = "user", content = "hi" } }, temperature = 0 }
    assert.matches("the body differs at $.temperature: recorded nothing, sent 0", err.message, 1, true)
    -- streams and the agent miss the same way
    local final
    final, err = r:stream { model = "m", messages = { { role = "user", content = "zzz" } } }
    assert.is_nil(final)
    assert.equal("cassette", err.kind)
    local _, aerr = luachat.agent { client = r, model = "m" }:run("zzz")
    assert.equal("cassette", aerr.kind)
    assert.equal(2, #srv:requests()) -- replay never reached the server
  end)

  it("identical requests replay in recorded order, then miss", function()
    srv:script { reply("first"), reply("second") }
    local req = { model = "m", messages = { { role = "user", content = "again" } } }
    local c = client("record")
    assert.equal("first", c:chat(req).choices[1].message.content)
    assert.equal("second", c:chat(req).choices[1].message.content)
    cassette.reset()
    local r = client("replay")
    assert.equal("first", r:chat(req).choices[1].message.content)
    assert.equal("second", r:chat(req).choices[1].message.content)
    local _, err = r:chat(req)
    assert.equal("cassette", err.kind)
    assert.matches("it was recorded 2 times %(lines 1, 2%), and this client replayed every one already$", err.message)
    -- another client (another test, say) replays the cassette from its start
    local again = client("replay")
    assert.equal("first", again:chat(req).choices[1].message.content)
    assert.equal("second", again:chat(req).choices[1].message.content)
  end)

  it("the body is compared as data: key order does not matter", function()
    srv:script { reply("ok") }
    local c = client("record")
    assert.truthy(c:post("things", '{"a": 1, "b": {"c": [1, 2], "d": "x"}}'))
    cassette.reset()
    local res, err = client("replay"):post("things", '{"b":{"d":"x","c":[1,2]},"a":1}')
    assert.is_nil(err)
    assert.equal("ok", res.choices[1].message.content)
  end)

  it("auto replays what the cassette has and records what it lacks", function()
    srv:script { reply("one"), reply("two") }
    local c = client("auto")
    assert.equal("one", c:chat({ model = "m", messages = { { role = "user", content = "1" } } }).choices[1].message.content)
    assert.equal(1, #srv:requests())
    cassette.reset()
    c = client() -- auto is the default
    assert.equal("one", c:chat({ model = "m", messages = { { role = "user", content = "1" } } }).choices[1].message.content)
    assert.equal(1, #srv:requests()) -- replayed
    assert.equal("two", c:chat({ model = "m", messages = { { role = "user", content = "2" } } }).choices[1].message.content)
    assert.equal(2, #srv:requests()) -- recorded
    assert.equal(2, #lines(path))
    cassette.reset()
    srv:stop()
    srv = nil
    c = client("replay")
    assert.equal("two", c:chat({ model = "m", messages = { { role = "user", content = "2" } } }).choices[1].message.content)
  end)

  it("record starts the cassette afresh", function()
    srv:script { reply("a"), reply("b") }
    assert.truthy(client("record"):chat { model = "m", messages = { { role = "user", content = "a" } } })
    cassette.reset()
    assert.truthy(client("record"):chat { model = "m", messages = { { role = "user", content = "b" } } })
    local t = lines(path)
    assert.equal(1, #t)
    assert.equal("b", t[1].request.body.messages[1].content)
  end)

  it("writes no secret: keys, Authorization, api-key, x-api-key, cookies, query secrets, URL userinfo", function()
    local echoed = "your key " .. KEY .. " and crumb cookie-SECRET-value and xk-SECRET-header"
    srv:script { { json = { id = "x", object = "chat.completion", created = 1, model = "m",
      choices = { { index = 0, finish_reason = "stop", message = { role = "assistant", content = echoed } } } } },
      { sse = { chunk { content = "key=" .. KEY }, chunk({}, "stop") }, done = true } }
    local base = base_url:gsub("^http://", "http://user:pw-SECRET-userinfo@")
    local c = luachat.client { base_url = base .. "?api-version=2024&sig=sig-SECRET-value",
      api_key = KEY, cassette = path, cassette_mode = "record", max_retries = 0,
      headers = { ["api-key"] = "azure-SECRET-key", ["x-api-key"] = "xk-SECRET-header",
        Cookie = "session=cookie-SECRET-value", ["X-Trace"] = "trace-1" },
      query = { key = "query-SECRET-key", mode = "fast" } }
    local res = assert(c:chat { model = "m", messages = { { role = "user", content = "hi" } } })
    assert.equal(echoed, res.choices[1].message.content) -- the script still sees what the server sent
    assert.truthy(c:stream { model = "m", messages = { { role = "user", content = "s" } } })
    local text = read(path)
    for _, secret in ipairs { KEY, "pw-SECRET-userinfo", "sig-SECRET-value", "azure-SECRET-key",
      "xk-SECRET-header", "cookie-SECRET-value", "query-SECRET-key", "SECRET", "Bearer" } do
      if text:find(secret, 1, true) then error(secret .. " was written: " .. text) end
    end
    assert.is_nil(text:lower():find("authorization", 1, true))
    assert.is_nil(text:lower():find("cookie", 1, true))
    assert.is_nil(text:lower():find("api-key", 1, true))
    assert.is_nil(text:lower():find("user-agent", 1, true))
    assert.is_nil(text:lower():find("idempotency", 1, true))
    local t = lines(path)
    assert.equal("chat/completions?mode=fast", t[1].request.path)
    assert.equal("trace-1", t[1].request.headers["X-Trace"])
    assert.equal("your key [REDACTED] and crumb [REDACTED] and [REDACTED]", t[1].response.json.choices[1].message.content)
    -- and the cassette still replays for the same client settings
    cassette.reset()
    local r = luachat.client { base_url = base .. "?api-version=2024&sig=sig-SECRET-value",
      api_key = KEY, cassette = path, cassette_mode = "replay", max_retries = 0,
      headers = { ["api-key"] = "azure-SECRET-key" }, query = { key = "query-SECRET-key", mode = "fast" } }
    local again, err = r:chat { model = "m", messages = { { role = "user", content = "hi" } } }
    assert.is_nil(err)
    assert.equal("your key [REDACTED] and crumb [REDACTED] and [REDACTED]", again.choices[1].message.content)
  end)

  it("replays instantly by default; cassette_timing = 'recorded' keeps the gaps", function()
    srv:script { { sse = { chunk { content = "a" }, { json = chunk({ content = "b" }).json, delay = 0.4 } }, done = true } }
    assert.truthy(client("record", { cassette_timing = "recorded" }):stream { model = "m",
      messages = { { role = "user", content = "t" } } })
    local t = lines(path)
    assert.is_true(t[1].response.times[2] >= 0.35)
    assert.is_true(t[1].response.seconds >= 0.35)
    srv:stop()
    srv = nil
    cassette.reset()
    local c = client("replay", { cassette_timing = "recorded" })
    local t0 = core.now()
    local final = c:stream { model = "m", messages = { { role = "user", content = "t" } } }
    assert.equal("ab", final.choices[1].message.content)
    assert.is_true(core.now() - t0 >= 0.35)
    cassette.reset()
    local texts = {}
    final = client("replay"):stream({ model = "m", messages = { { role = "user", content = "t" } } },
      { on_text = function(x) texts[#texts + 1] = x end })
    assert.same({ "a", "b" }, texts) -- instant by default (no bound on time asserted)
    assert.equal("ab", final.choices[1].message.content)
  end)

  it("a cassette that cannot be read or holds a bad line is a 'cassette' error", function()
    srv:stop()
    srv = nil
    local c = client("replay")
    local _, err = c:chat { model = "m", messages = {} }
    assert.equal("cassette", err.kind)
    assert.matches("^cassette .* cannot be read %(", err.message)
    proc.write_file(path, '{"request":{"method":"GET","path":"x"},"response":{"status":200,"body":"{}"}}\nnot json\n')
    cassette.reset()
    _, err = client("replay"):get("x")
    assert.equal("cassette", err.kind)
    assert.matches("line 2 is not an exchange: invalid JSON", err.message, 1, true)
  end)

  it("a cassette that cannot be written fails before the request is sent", function()
    srv:script { reply("x") }
    local c = luachat.client { base_url = base_url, api_key = KEY, cassette = dir .. "/no/such/dir/t.jsonl",
      cassette_mode = "record" }
    local res, err = c:chat { model = "m", messages = { { role = "user", content = "x" } } }
    assert.is_nil(res)
    assert.equal("cassette", err.kind)
    assert.equal("cassette " .. dir .. "/no/such/dir/t.jsonl cannot be written (" .. dir
      .. "/no/such/dir/t.jsonl: No such file or directory)", err.message)
    assert.equal(0, #srv:requests())
  end)

  it("options are checked", function()
    local ok, e = pcall(luachat.client, { cassette_mode = "replay!" })
    assert.is_false(ok)
    assert.matches("field 'cassette_mode' must be record, replay or auto", e)
    ok, e = pcall(luachat.client, { cassette_timing = "slow" })
    assert.matches("field 'cassette_timing' must be instant or recorded", e)
    ok, e = pcall(luachat.client, { cassette = 3 })
    assert.matches("field 'cassette' must be a path %(or false for none%)", e)
    ok, e = pcall(luachat.client, { casette = "x" })
    assert.matches("did you mean 'cassette'", e)
  end)

  it("the documented example (an agent with tools against a cassette) passes under busted #once", function()
    local out, err, code = proc.run(string.format("busted --lua=%s %s", shell_quote(HOST),
      shell_quote("examples/cassette/weather_agent_spec.lua")))
    assert.equal(0, code, out .. err)
    assert.matches("2 successes / 0 failures / 0 errors", out, 1, true)
  end)

  describe("the CLI", function()
    local function cli(args, env)
      local vars = { OPENAI_BASE_URL = srv and srv.base_url or "http://127.0.0.1:9/v1", OPENAI_API_KEY = KEY,
        HOME = dir, XDG_CONFIG_HOME = dir .. "/config", XDG_STATE_HOME = dir .. "/state",
        LUACHAT_PROFILE = "", LUACHAT_MODEL = "", LUACHAT_BASE_URL = "", NO_COLOR = "" }
      for k, v in pairs(env or {}) do vars[k] = v end
      local names = {}
      for k in pairs(vars) do names[#names + 1] = k end
      table.sort(names)
      local parts = { "env" }
      for _, k in ipairs(names) do parts[#parts + 1] = k .. "=" .. shell_quote(vars[k]) end
      return proc.run(string.format("%s %s %s", table.concat(parts, " "), HOST, args))
    end

    it("luachat -p records with LUACHAT_CASSETTE and replays with the server stopped #once", function()
      srv:script { streamed("Hello from the tape") }
      local out, err, code = cli("-p hi", { LUACHAT_CASSETTE = path })
      assert.equal("", err)
      assert.equal(0, code)
      assert.equal("Hello from the tape\n", out)
      assert.equal(1, #srv:requests())
      assert.is_nil(read(path):find(KEY, 1, true))
      srv:stop()
      srv = nil
      local out2, err2, code2 = cli("-p hi", { LUACHAT_CASSETTE = path, LUACHAT_CASSETTE_MODE = "replay" })
      assert.equal("", err2)
      assert.equal(0, code2)
      assert.equal(out, out2)
      local out3, err3, code3 = cli("-p other", { LUACHAT_CASSETTE = path, LUACHAT_CASSETTE_MODE = "replay" })
      assert.equal("", out3)
      assert.equal(1, code3)
      assert.matches("no recorded exchange for POST chat/completions", err3, 1, true)
      assert.matches('recorded "hi", sent "other"', err3, 1, true)
    end)

    it("a bad LUACHAT_CASSETTE_MODE names the variable #once", function()
      local _, err, code = cli("-p hi", { LUACHAT_CASSETTE = path, LUACHAT_CASSETTE_MODE = "replya" })
      assert.equal(2, code) -- a configuration error, as for any bad environment value
      assert.matches("environment variable LUACHAT_CASSETTE_MODE must be record, replay or auto, got 'replya'", err, 1, true)
    end)
  end)
end)

-- Start-up compiles what a script uses: a client without a cassette never loads
-- luachat.cassette, and no module loads luachat.schema before a schema is sent.
describe("cassettes: loaded on demand", function()
  local probe = "local l = require 'luachat'; l.client { api_key = 'k', base_url = 'http://127.0.0.1:9/v1' }; "
    .. "io.write(tostring(package.loaded['luachat.cassette'] ~= nil), ' ', tostring(package.loaded['luachat.schema'] ~= nil))"
  local function run(env)
    local p = io.popen(string.format("env -u LUACHAT_CASSETTE %s %s -e %s 2>&1", env, HOST, shell_quote(probe)))
    local out = p:read("a")
    p:close()
    return out
  end

  it("a client without one loads neither luachat.cassette nor luachat.schema", function()
    assert.equal("false false", run(""))
  end)

  it("LUACHAT_CASSETTE loads it", function()
    local dir = proc.tmpdir()
    assert.equal("true false", run("LUACHAT_CASSETTE=" .. shell_quote(dir .. "/c.jsonl")))
    os.execute("rm -rf " .. shell_quote(dir))
  end)
end)
