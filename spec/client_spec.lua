-- The engine against the local test server: wire contract, errors, retries,
-- timeouts, limits, JSON fidelity, tasks. The server records what it got.
local server = require "spec.helpers.server"
local luachat = require "luachat"
local core = require "luachat.core"
local json = luachat.json

local KEY = "sk-test-SECRET-0123456789abcdef"

describe("client", function()
  local srv

  setup(function() srv = server.start() end)
  teardown(function() if srv then srv:stop() end end)
  before_each(function() srv:reset() end)
  after_each(function() assert.equal(0, core.live(), "a transfer was left running") end)

  local function client(opts)
    opts = opts or {}
    opts.base_url = opts.base_url or srv.base_url
    if opts.api_key == nil then opts.api_key = KEY end
    return luachat.client(opts)
  end

  local completion = {
    id = "chatcmpl-1", object = "chat.completion", created = 1700000000, model = "m",
    choices = { { index = 0, message = { role = "assistant", content = "hello" }, finish_reason = "stop" } },
    usage = { prompt_tokens = 3, completion_tokens = 1, total_tokens = 4 },
  }

  describe("wire contract", function()
    it("posts to {base_url}/chat/completions with the exact body and headers", function()
      srv:script { { json = completion } }
      local res, err = client():chat { model = "m", messages = { { role = "user", content = "hi" } } }
      assert.is_nil(err)
      assert.equal("hello", res.choices[1].message.content)
      assert.equal(4, res.usage.total_tokens)
      assert.equal("integer", math.type(res.usage.total_tokens))
      local reqs = srv:requests()
      assert.equal(1, #reqs)
      local r = reqs[1]
      assert.equal("POST", r.method)
      assert.equal("/v1/chat/completions", r.path)
      assert.equal("Bearer " .. KEY, r.headers["authorization"])
      assert.equal("application/json", r.headers["content-type"])
      assert.matches("^luachat/%d+%.%d+%.%d+", r.headers["user-agent"])
      assert.truthy(r.headers["idempotency-key"])
      -- exactly the fields the script set, nothing else
      assert.same({ model = "m", messages = { { role = "user", content = "hi" } } }, r.json)
      assert.is_nil(r.body:find("stream", 1, true))
    end)

    it("passes through any field the script sets, and omits Authorization without a key", function()
      srv:script { { json = completion } }
      -- api_key = false: no key even when OPENAI_API_KEY is set
      local c = luachat.client { base_url = srv.base_url, api_key = false }
      local res = c:chat { model = "m", messages = {}, temperature = 0.5, seed = 42, new_field = { x = json.null } }
      assert.truthy(res)
      local r = srv:requests()[1]
      assert.is_nil(r.headers["authorization"])
      assert.equal(0.5, r.json.temperature)
      assert.equal(42, r.json.seed)
      assert.matches('"new_field":{"x":null}', r.body, 1, true)
      assert.matches('"messages":[]', r.body, 1, true)
    end)

    it("sends extra headers and query parameters (Azure style)", function()
      srv:script { { json = completion } }
      local c = client { headers = { ["api-key"] = "azure-key" }, query = { ["api-version"] = "2024-10-21" } }
      assert.truthy(c:chat { model = "m", messages = { { role = "user", content = "x" } } })
      local r = srv:requests()[1]
      assert.equal("azure-key", r.headers["api-key"])
      assert.equal("api-version=2024-10-21", r.query)
    end)

    it("a query in the path joins the client's (one '?', the path's value wins a shared name)", function()
      srv:default { json = { object = "list", data = {} } }
      local c = client { query = { ["api-version"] = "2024-10-21" } }
      assert(c:get("models?limit=2"))
      assert(c:post("chat/completions?foo=1&api-version=2025-01-01", { model = "m", messages = {} }))
      local b = luachat.client { base_url = srv.base_url .. "?api-version=2024-02-01", api_key = "k" }
      assert(b:get("/models?limit=3#frag"))
      local reqs = srv:requests()
      assert.same({ "/v1/models", "api-version=2024-10-21&limit=2" }, { reqs[1].path, reqs[1].query })
      assert.same({ "/v1/chat/completions", "foo=1&api-version=2025-01-01" }, { reqs[2].path, reqs[2].query })
      assert.same({ "/v1/models", "api-version=2024-02-01&limit=3" }, { reqs[3].path, reqs[3].query })
    end)

    it("a credential in the path's own query (?api_key=) is redacted from the error, as the client's are", function()
      srv:script { { status = 400, json = { error = { message = "bad {{query}}" } } },
        { status = 200, body = "not json {{query}}", headers = { ["content-type"] = "text/plain" } } }
      local c = client()
      local res, err = c:get("models?api_key=PATH-SECRET-1")
      assert.is_nil(res)
      assert.equal("api", err.kind)
      assert.not_matches("PATH-SECRET-1", err.message .. tostring(err.body), 1, true)
      assert.matches("bad api_key=[REDACTED]", err.message, 1, true)
      res, err = c:get("models?token=PATH-SECRET-2")
      assert.is_nil(res)
      assert.equal("deserialise", err.kind)
      assert.not_matches("PATH-SECRET-2", err.message .. tostring(err.body), 1, true)
    end)

    it("get and post reach any endpoint", function()
      srv:script { { json = { object = "list", data = { { id = "m1" } } } }, { json = { data = { { embedding = { 0.5 } } } } } }
      local c = client()
      local models, err = c:get("models")
      assert.is_nil(err)
      assert.equal("m1", models.data[1].id)
      local emb = c:post("embeddings", { model = "e", input = "x" })
      assert.equal(0.5, emb.data[1].embedding[1])
      local reqs = srv:requests()
      assert.equal("GET", reqs[1].method)
      assert.equal("/v1/models", reqs[1].path)
      assert.equal("/v1/embeddings", reqs[2].path)
      assert.same({ model = "e", input = "x" }, reqs[2].json)
    end)

    it("reuses one keep-alive connection across sequential requests", function()
      srv:default { json = completion }
      local c = client()
      local before = srv:stats().connections
      for _ = 1, 5 do assert(c:chat { model = "m", messages = {} }) end
      -- srv:stats() itself opens one connection (the curl tool); the engine's cache may
      -- already hold one from an earlier test: five requests, at most one new connection
      local opened = srv:stats().connections - before - 1
      assert.is_true(opened <= 1, "5 sequential requests opened " .. opened .. " connections")
      assert.equal(5, #srv:requests())
    end)

    it("honours http_proxy and no_proxy as curl does #once", function()
      srv:script { { json = completion }, { json = completion } }
      local host = os.getenv("LUACHAT_HOST") or "./luachat"
      local script = "local c = require('luachat').client{base_url='http://api.example.invalid/v1', api_key='k', max_retries=0}"
        .. " local r, e = c:chat{model='m', messages={}} io.write(r and 'ok' or tostring(e))"
      local p = io.popen(string.format("http_proxy=%s %s -e %q 2>&1", srv.url, host, script))
      local out = p:read("a")
      p:close()
      assert.equal("ok", out)
      local r = srv:requests()[1]
      assert.equal("http://api.example.invalid/v1/chat/completions", r.path) -- absolute-form: a proxy request
      assert.equal("Bearer k", r.headers["authorization"])
      p = io.popen(string.format("http_proxy=%s no_proxy=example.invalid %s -e %q 2>&1", srv.url, host, script))
      out = p:read("a")
      p:close()
      assert.matches("^luachat: network error", out) -- not proxied: the name does not resolve
      assert.equal(1, #srv:requests())
    end)

    it("reads base_url and api_key from the environment by default", function()
      local c = luachat.client()
      local env = os.getenv("OPENAI_BASE_URL")
      assert.equal((env and env ~= "" and env or "https://api.openai.com/v1"):gsub("/+$", ""), c.base_url)
    end)
  end)

  describe("programming errors raise", function()
    it("without model or messages, or with wrong types", function()
      local c = client()
      assert.has_error(function() c:chat { messages = {} } end,
        "bad argument #1 to 'chat' (field 'model' must be a non-empty string)")
      assert.has_error(function() c:chat { model = "m" } end,
        "bad argument #1 to 'chat' (field 'messages' must be a list of messages)")
      assert.has_error(function() luachat.client { timeout = "x" } end)
      assert.has_error(function() luachat.client { base_url = "ftp://x" } end)
    end)

    it("takes the URL scheme in any case (RFC 3986), sent in lower case", function()
      srv:script { { json = { id = "x", object = "chat.completion", created = 1, model = "m",
        choices = { { index = 0, message = { role = "assistant", content = "ok" }, finish_reason = "stop" } } } } }
      local c = luachat.client { base_url = srv.base_url:gsub("^http", "HTTP"), api_key = "k", max_retries = 0 }
      assert.equal(srv.base_url, c.base_url)
      assert.equal("ok", assert(c:chat { model = "m", messages = {} }).choices[1].message.content)
    end)
  end)

  describe("errors", function()
    it("400 with an OpenAI error body is an api error with the server's message", function()
      srv:script { { status = 400, json = { error = { message = "Invalid 'messages': empty.", type = "invalid_request_error" } },
        headers = { ["x-request-id"] = "req_abc" } } }
      local res, err = client():chat { model = "m", messages = {} }
      assert.is_nil(res)
      assert.equal("api", err.kind)
      assert.equal(400, err.status)
      assert.equal("req_abc", err.request_id)
      assert.is_false(err.retryable)
      assert.equal(0, err.retries)
      assert.matches("Invalid 'messages': empty.", err.message, 1, true)
      assert.matches("invalid_request_error", err.body, 1, true)
      assert.matches("^luachat: api error 400 %(request req_abc%): ", tostring(err))
      assert.equal(1, #srv:requests())
    end)

    it("401 is invalid_api_key, not retried", function()
      srv:script { { status = 401, json = { error = { message = "Incorrect API key provided" } } } }
      local _, err = client():chat { model = "m", messages = {} }
      assert.equal("invalid_api_key", err.kind)
      assert.equal(401, err.status)
      assert.equal(1, #srv:requests())
    end)

    it("404 is an api error", function()
      srv:script { { status = 404, body = "not here", content_type = "text/plain" } }
      local _, err = client():get("nope")
      assert.equal("api", err.kind)
      assert.equal(404, err.status)
      assert.matches("not here", err.message, 1, true)
    end)

    it("429 with Retry-After is retried after that delay, with the same Idempotency-Key", function()
      srv:script {
        { status = 429, headers = { ["retry-after"] = "1" }, json = { error = { message = "slow down" } } },
        { json = completion },
      }
      local res, err = client():chat { model = "m", messages = {} }
      assert.is_nil(err)
      assert.truthy(res)
      local reqs = srv:requests()
      assert.equal(2, #reqs)
      assert.is_true(reqs[2].time - reqs[1].time >= 0.9)
      assert.equal(reqs[1].headers["idempotency-key"], reqs[2].headers["idempotency-key"])
    end)

    it("retry-after-ms wins over retry-after", function()
      srv:script {
        { status = 503, headers = { ["retry-after-ms"] = "50", ["retry-after"] = "30" }, json = { error = { message = "busy" } } },
        { json = completion },
      }
      -- the delays the client waits before retrying, seen at sched.sleep (no clock bound)
      local sched = require "luachat.sched"
      local real_sleep, slept = sched.sleep, {}
      sched.sleep = function(s, ...) slept[#slept + 1] = s return real_sleep(s, ...) end
      local ok, res = pcall(function() return client():chat { model = "m", messages = {} } end)
      sched.sleep = real_sleep
      assert(ok, res)
      assert.truthy(res)
      assert.same({ 0.05 }, slept)
      assert.equal(2, #srv:requests())
    end)

    it("500 then success returns the success; retries bounded by max_retries", function()
      srv:script { { status = 500, json = { error = { message = "oops" } }, headers = { ["retry-after-ms"] = "10" } }, { json = completion } }
      local res = client():chat { model = "m", messages = {} }
      assert.equal("hello", res.choices[1].message.content)
      srv:reset()
      srv:default { status = 500, json = { error = { message = "down" } }, headers = { ["retry-after-ms"] = "10" } }
      local _, err = client { max_retries = 3 }:chat { model = "m", messages = {} }
      assert.equal("api", err.kind)
      assert.equal(500, err.status)
      assert.equal(3, err.retries)
      assert.is_true(err.retryable)
      assert.equal(4, #srv:requests())
      assert.matches("%[retries: 3%]$", tostring(err))
    end)

    it("x-should-retry overrides the status", function()
      srv:script { { status = 500, headers = { ["x-should-retry"] = "false" }, json = { error = { message = "no" } } } }
      local _, err = client():chat { model = "m", messages = {} }
      assert.equal(1, #srv:requests())
      assert.equal(0, err.retries)
      srv:reset()
      srv:script { { status = 400, headers = { ["x-should-retry"] = "true", ["retry-after-ms"] = "1" }, json = { error = { message = "again" } } },
        { json = completion } }
      assert.truthy(client():chat { model = "m", messages = {} })
      assert.equal(2, #srv:requests())
    end)

    it("connection refused is a retryable network error", function()
      local c = luachat.client { base_url = "http://127.0.0.1:1/v1", api_key = KEY, max_retries = 1 }
      local _, err = c:chat { model = "m", messages = {} }
      assert.equal("network", err.kind)
      assert.is_true(err.retryable)
      assert.equal(1, err.retries)
      assert.is_nil(err.message:find(KEY, 1, true))
    end)

    it("a stall is ended by the idle timeout", function()
      srv:script { { json = completion, stall_after = 0, stall = 3 } }
      local _, err = client { idle_timeout = 0.3, max_retries = 0 }:chat { model = "m", messages = {} }
      assert.equal("timeout", err.kind)
      assert.matches("idle timeout", err.message, 1, true)
    end)

    it("the idle timer keeps applying while a body is received", function()
      srv:script { { body = string.rep("x", 400), content_type = "application/json", stall_after = 200, stall = 3 } }
      local _, err = client { idle_timeout = 0.3, max_retries = 0 }:chat { model = "m", messages = {} }
      assert.equal("timeout", err.kind)
    end)

    it("the total timeout ends a slow response", function()
      srv:script { { json = completion, delay = 3 } }
      local _, err = client { timeout = 0.3, max_retries = 0 }:chat { model = "m", messages = {} }
      assert.equal("timeout", err.kind)
    end)

    it("a non-JSON body is a deserialise error keeping the body", function()
      srv:script { { body = "<html>oops</html>", content_type = "text/html" } }
      local _, err = client():chat { model = "m", messages = {} }
      assert.equal("deserialise", err.kind)
      assert.equal(200, err.status)
      assert.equal("<html>oops</html>", err.body)
      assert.matches("not valid JSON", err.message, 1, true)
    end)

    it("a body over the cap ends with a clear error", function()
      srv:script { { body = '"' .. string.rep("a", 300000) .. '"', content_type = "application/json" } }
      local _, err = client { max_body = 100000 }:get("big")
      assert.equal("deserialise", err.kind)
      assert.matches("over the 100000%-byte limit", err.message)
    end)
  end)

  describe("JSON fidelity", function()
    it("a decoded response with empty arrays and nulls is sent back exactly", function()
      local body = '{"id":"x","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,'
        .. '"message":{"role":"assistant","content":null,"refusal":null,"annotations":[],'
        .. '"tool_calls":[{"id":"call_1","type":"function","function":{"name":"f","arguments":"{}"}}]},'
        .. '"logprobs":null,"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}'
      srv:script { { body = body, content_type = "application/json" }, { json = completion } }
      local c = client()
      local res = assert(c:chat { model = "m", messages = {} })
      local msg = res.choices[1].message
      assert.equal(json.null, msg.content)
      assert.is_true(json.is_array(msg.annotations))
      assert(c:chat { model = "m", messages = { msg } })
      local sent = srv:requests()[2].body
      local original = body:match('"message":(%b{})')
      local resent = sent:match('"messages":%[(%b{})%]')
      assert.same(json.decode(original), json.decode(resent))
      assert.matches('"annotations":[]', resent, 1, true)
      assert.matches('"content":null', resent, 1, true)
      assert.matches('"arguments":"{}"', resent, 1, true)
    end)
  end)

  describe("tasks", function()
    it("50 tasks' requests run concurrently: the server answers none until all 50 arrived", function()
      srv:default { json = completion, hold_until = 50, hold_timeout = 60 } -- one at a time: a 504 after 60 s
      local c = client()
      local tasks = {}
      for i = 1, 50 do
        tasks[i] = luachat.spawn(function(n)
          local res, err = c:chat { model = "m", messages = { { role = "user", content = tostring(n) } } }
          return res and res.choices[1].message.content, err
        end, i)
      end
      local all = luachat.gather(tasks)
      assert.equal(50, #all)
      for i = 1, 50 do assert.equal("hello", all[i][1]) end
      local reqs = srv:requests()
      assert.equal(50, #reqs)
    end)

    it("a task's error is returned by wait, never lost", function()
      local t = luachat.spawn(function() error("boom") end)
      local res, err = t:wait()
      assert.is_nil(res)
      assert.equal("task", err.kind)
      assert.matches("boom", err.message)
      assert.matches("traceback", err.traceback) -- the stack: err.traceback (err.message is one line)
    end)

    it("wait returns every result; gather keeps order", function()
      local t = luachat.spawn(function(a, b) luachat.sleep(0.01) return a, b, 3 end, 1, 2)
      assert.same({ 1, 2, 3 }, { t:wait() })
      local ts = {
        luachat.spawn(function() luachat.sleep(0.05) return "slow" end),
        luachat.spawn(function() return nil, "fast-err" end),
      }
      assert.same({ { "slow" }, { nil, "fast-err" } }, luachat.gather(ts))
    end)

    it("sleep inside tasks overlaps: all start sleeping before any wakes", function()
      local events = {}
      local ts = {}
      for i = 1, 5 do
        ts[i] = luachat.spawn(function()
          events[#events + 1] = "sleep"
          luachat.sleep(0.2)
          events[#events + 1] = "woke"
          return i
        end)
      end
      for i = 1, 5 do assert.equal(i, ts[i]:wait()) end
      assert.same({ "sleep", "sleep", "sleep", "sleep", "sleep", "woke", "woke", "woke", "woke", "woke" }, events)
    end)

    it("step advances transfers without blocking", function()
      srv:script { { json = completion, delay = 0.2 } }
      local c = client()
      local done
      luachat.spawn(function() done = c:chat { model = "m", messages = {} } end)
      local spins = 0
      while not done do
        luachat.step(0.05)
        spins = spins + 1
        assert.is_true(spins < 400)
      end
      assert.equal("hello", done.choices[1].message.content)
      assert.is_true(spins > 1)
    end)
  end)

  describe("secrets", function()
    it("tostring(client) and pairs(client) never show the key", function()
      local c = client()
      assert.is_nil(tostring(c):find(KEY, 1, true))
      for k, v in pairs(c) do
        assert.is_nil(tostring(v):find(KEY, 1, true), k)
      end
    end)

    it("an error body echoing the key is redacted", function()
      srv:script { { status = 401, json = { error = { message = "bad key " .. KEY } } } }
      local _, err = client():chat { model = "m", messages = {} }
      assert.is_nil(err.message:find(KEY, 1, true))
      assert.is_nil(err.body:find(KEY, 1, true))
      assert.is_nil(tostring(err):find(KEY, 1, true))
      assert.matches("[REDACTED]", err.message, 1, true)
    end)

    it("LUACHAT_LOG=debug traces requests on stderr without the key #once", function()
      srv:script { { status = 500, json = { error = { message = "x" } }, headers = { ["retry-after-ms"] = "1" } }, { json = completion } }
      local host = os.getenv("LUACHAT_HOST") or "./luachat"
      local errfile = os.tmpname()
      local script = string.format(
        "local c = require('luachat').client{base_url=%q, api_key=%q}; assert(c:chat{model='m', messages={}})",
        srv.base_url, KEY)
      local ok = os.execute(string.format("LUACHAT_LOG=debug %s -e %q 2>%s", host, script, errfile))
      local f = io.open(errfile)
      local log = f:read("a")
      f:close()
      os.remove(errfile)
      assert.is_true(ok)
      assert.is_nil(log:find(KEY, 1, true))
      assert.matches("POST http://127.0.0.1:%d+/v1/chat/completions %-> 500", log)
      assert.matches("retry 1 of 2", log, 1, true)
      assert.matches("-> 200", log, 1, true)
    end)
  end)
end)
