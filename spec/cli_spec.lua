-- The chat command line: provider profiles (pure unit tests of
-- luachat.profiles.resolve), option parsing, error lines, and `luachat -p`
-- run as a subprocess against the local test server.
-- run-tests: once (the CLI runs only in the host; the rest are subprocesses; scripts/run-tests.sh)
package.path = "lua/?.lua;lua/?/init.lua;" .. package.path

local profiles = require "luachat.profiles"

local proc = require "spec.helpers.proc"
local HOST, shell_quote, spit, tmpdir = proc.host, proc.shell_quote, proc.write_file, proc.tmpdir

describe("luachat.profiles.resolve", function()
  local resolve = profiles.resolve

  it("defaults to openai with OPENAI_API_KEY and its documented URL", function()
    local s = assert(resolve({}, { OPENAI_API_KEY = "sk-1" }, nil))
    assert.equal("openai", s.profile)
    assert.equal("https://api.openai.com/v1", s.base_url)
    assert.equal("sk-1", s.api_key)
    assert.equal("gpt-4o-mini", s.model)
    assert.equal("OPENAI_API_KEY", s.key_env)
  end)

  it("openai honours OPENAI_BASE_URL, and the key then becomes optional", function()
    local s = assert(resolve({}, { OPENAI_BASE_URL = "http://127.0.0.1:9/v1" }, nil))
    assert.equal("http://127.0.0.1:9/v1", s.base_url)
    assert.is_false(s.api_key) -- false, never nil: the client must not fall back
  end)

  it("base_url: --base-url > LUACHAT_BASE_URL > OPENAI_BASE_URL > profile", function()
    local env = { OPENAI_API_KEY = "k", OPENAI_BASE_URL = "http://a/v1", LUACHAT_BASE_URL = "http://b/v1" }
    assert.equal("http://c/v1", resolve({ base_url = "http://c/v1" }, env).base_url)
    assert.equal("http://b/v1", resolve({}, env).base_url)
    env.LUACHAT_BASE_URL = ""
    assert.equal("http://a/v1", resolve({}, env).base_url)
  end)

  it("model: -m > LUACHAT_MODEL > the profile's", function()
    local env = { GROQ_API_KEY = "g", LUACHAT_MODEL = "env-model" }
    assert.equal("flag-model", resolve({ profile = "groq", model = "flag-model" }, env).model)
    assert.equal("env-model", resolve({ profile = "groq" }, env).model)
    env.LUACHAT_MODEL = nil
    assert.equal("llama-3.3-70b-versatile", resolve({ profile = "groq" }, env).model)
  end)

  it("profile: -P > LUACHAT_PROFILE > default_profile > openai", function()
    local env = { LUACHAT_PROFILE = "ollama", MISTRAL_API_KEY = "m", OPENAI_API_KEY = "o" }
    local config = { default_profile = "mistral" }
    assert.equal("groq", select(1, resolve({ profile = "groq" }, { GROQ_API_KEY = "g" }, config)).profile)
    assert.equal("ollama", resolve({}, env, config).profile)
    env.LUACHAT_PROFILE = nil
    assert.equal("mistral", resolve({}, env, config).profile)
    assert.equal("https://api.mistral.ai/v1", resolve({}, env, config).base_url)
    assert.equal("openai", resolve({}, env, {}).profile)
  end)

  it("each provider uses its own key variable, never OPENAI_API_KEY", function()
    local s = assert(resolve({ profile = "openrouter" }, { OPENROUTER_API_KEY = "or-1", OPENAI_API_KEY = "sk" }))
    assert.equal("https://openrouter.ai/api/v1", s.base_url)
    assert.equal("or-1", s.api_key)
    local s2, err, kind = resolve({ profile = "deepseek" }, { OPENAI_API_KEY = "sk" })
    assert.is_nil(s2)
    assert.equal("deepseek: no API key: set DEEPSEEK_API_KEY", err)
    assert.equal("config", kind)
  end)

  it("local servers need no key", function()
    for name, url in pairs { ollama = "http://localhost:11434/v1", llamacpp = "http://localhost:8080/v1" } do
      local s = assert(resolve({ profile = name }, {}))
      assert.equal(url, s.base_url)
      assert.is_false(s.api_key)
    end
  end)

  it("vllm has no default model: a usage error until -m is given", function()
    local s, err, kind = resolve({ profile = "vllm" }, {})
    assert.is_nil(s)
    assert.equal("vllm: no model: pass -m MODEL or set LUACHAT_MODEL", err)
    assert.equal("usage", kind)
    assert.equal("Qwen/Qwen2.5-7B", resolve({ profile = "vllm", model = "Qwen/Qwen2.5-7B" }, {}).model)
  end)

  it("an unknown profile is a usage error listing the known ones", function()
    local s, err, kind = resolve({ profile = "nope" }, {}, { profiles = { mine = { base_url = "http://x" } } })
    assert.is_nil(s)
    assert.equal("usage", kind)
    assert.matches("unknown profile 'nope'", err, 1, true)
    assert.matches("mine", err, 1, true)
    assert.matches("openai", err, 1, true)
  end)

  it("azure builds the deployment URL, api-key header and api-version query", function()
    local env = { AZURE_OPENAI_ENDPOINT = "https://res.openai.azure.com/", AZURE_OPENAI_API_KEY = "az",
      AZURE_OPENAI_DEPLOYMENT = "gpt4o-dep", OPENAI_API_KEY = "sk" }
    local s = assert(resolve({ profile = "azure" }, env))
    assert.equal("https://res.openai.azure.com/openai/deployments/gpt4o-dep", s.base_url)
    assert.is_false(s.api_key) -- no Authorization: Bearer
    assert.equal("az", s.headers["api-key"])
    assert.equal(profiles.AZURE_API_VERSION, s.query["api-version"])
    assert.equal("gpt4o-dep", s.model)
    env.AZURE_OPENAI_API_VERSION = "2025-01-01-preview"
    env.AZURE_OPENAI_DEPLOYMENT = nil
    s = assert(resolve({ profile = "azure", model = "other" }, env))
    assert.equal("https://res.openai.azure.com/openai/deployments/other", s.base_url)
    assert.equal("2025-01-01-preview", s.query["api-version"])
    local _, err = resolve({ profile = "azure", model = "x" }, { AZURE_OPENAI_API_KEY = "az" })
    assert.matches("AZURE_OPENAI_ENDPOINT", err, 1, true)
  end)

  it("config profiles add providers and merge over built-ins", function()
    local config = {
      default_profile = "work",
      profiles = {
        work = { base_url = "https://llm.corp/v1", key_env = "WORK_KEY", model = "corp-1",
          headers = { ["X-Team"] = "ml" }, query = { tenant = "a" } },
        groq = { model = "mixtral" },
      },
    }
    local s = assert(resolve({}, { WORK_KEY = "w" }, config))
    assert.equal("work", s.profile)
    assert.equal("https://llm.corp/v1", s.base_url)
    assert.equal("w", s.api_key)
    assert.equal("corp-1", s.model)
    assert.same({ ["X-Team"] = "ml" }, s.headers)
    assert.same({ tenant = "a" }, s.query)
    local g = assert(resolve({ profile = "groq" }, { GROQ_API_KEY = "g" }, config))
    assert.equal("mixtral", g.model)
    assert.equal("https://api.groq.com/openai/v1", g.base_url)
    -- -m and LUACHAT_BASE_URL still win over a configured profile
    local o = assert(resolve({ model = "m2" }, { WORK_KEY = "w", LUACHAT_BASE_URL = "http://x/v1" }, config))
    assert.equal("m2", o.model)
    assert.equal("http://x/v1", o.base_url)
  end)

  it("does not modify the built-in table or the config", function()
    local config = { profiles = { groq = { headers = { A = "1" } } } }
    local s = assert(resolve({ profile = "groq" }, { GROQ_API_KEY = "g" }, config))
    s.headers.B = "2"
    assert.is_nil(profiles.builtin.groq.headers)
    assert.same({ A = "1" }, config.profiles.groq.headers)
  end)

  it("config_path honours XDG_CONFIG_HOME, then HOME", function()
    assert.equal("/x/luachat/config.lua", profiles.config_path { XDG_CONFIG_HOME = "/x", HOME = "/h" })
    assert.equal("/h/.config/luachat/config.lua", profiles.config_path { HOME = "/h" })
    assert.is_nil(profiles.config_path {})
  end)

  it("load_config: none is {}, a table is returned, garbage is an error", function()
    local dir = tmpdir()
    assert.same({}, profiles.load_config(dir .. "/missing.lua"))
    spit(dir .. "/ok.lua", "return { default_profile = 'groq' }")
    assert.same({ default_profile = "groq" }, profiles.load_config(dir .. "/ok.lua"))
    spit(dir .. "/bad.lua", "return 42")
    local c, err = profiles.load_config(dir .. "/bad.lua")
    assert.is_nil(c)
    assert.matches("must return a table, got number", err, 1, true)
    spit(dir .. "/syntax.lua", "return {")
    c, err = profiles.load_config(dir .. "/syntax.lua")
    assert.is_nil(c)
    assert.matches("^config: ", err)
    os.execute("rm -rf " .. shell_quote(dir))
  end)
end)

-- Everything below needs the engine (luachat.core).
local have_core = pcall(require, "luachat.core")

describe("luachat.cli", function()
  if not have_core then
    error("luachat.core is not available (build with make)")
    return
  end
  local cli = require "luachat.cli"

  it("parses modes and options, --opt=value too", function()
    local o = assert(cli.parse { "-p", "hi", "-m", "m1", "--system=be brief", "-P", "groq", "--json", "--no-stream" })
    assert.same({ prompt = "hi", model = "m1", system = "be brief", profile = "groq", json = true, no_stream = true }, o)
    assert.same({ chat = true, tools = "t.lua", base_url = "http://x" },
      assert(cli.parse { "-c", "--tools", "t.lua", "--base-url", "http://x" }))
    assert.same({ prompt = "-starts with a dash" }, assert(cli.parse { "-p", "-starts with a dash" }))
  end)

  it("reports usage errors", function()
    local cases = {
      { { "-p" }, "option '-p' needs an argument" },
      { { "-p", "x", "-c" }, "-p and -c cannot be used together" },
      { { "-p", "x", "--frobnicate" }, "unrecognized option '--frobnicate'" },
      { { "-p", "x", "extra" }, "unexpected argument 'extra'" },
      { { "-m", "x" }, "give -p PROMPT or -c" },
      { { "--json=yes", "-p", "x" }, "option '--json' takes no value" },
      { { "-c", "--json" }, "--json goes with -p, not -c" },
    }
    for _, c in ipairs(cases) do
      local o, err = cli.parse(c[1])
      assert.is_nil(o)
      assert.equal(c[2], err)
    end
    assert.same({ help = true }, cli.parse { "-p", "--help" })
  end)

  it("formats one error line with provider, status and a hint", function()
    local s = { profile = "openai", key_env = "OPENAI_API_KEY", api_key = false, base_url = "https://api.openai.com/v1" }
    local err = { kind = "invalid_api_key", status = 401, message = "POST x: HTTP 401",
      body = '{"error":{"message":"invalid API key"}}' }
    assert.equal("luachat: openai: HTTP 401 invalid API key — set OPENAI_API_KEY", cli.format_error(err, s))
    s.api_key = "sk"
    assert.equal("luachat: openai: HTTP 401 invalid API key — check OPENAI_API_KEY (the key was refused)",
      cli.format_error(err, s))
    local net = { kind = "network", message = "POST http://127.0.0.1:1/v1/chat/completions: Couldn't connect" }
    local line = cli.format_error(net, s)
    assert.matches("^luachat: openai: POST http://127.0.0.1:1/v1/chat/completions: Couldn't connect — cannot reach ", line)
    assert.is_nil(line:find("\n"))
  end)

  it("keeps a cancelled reply in the transcript, dropping unanswered tool calls", function()
    local agent = { messages = { { role = "user", content = "a" }, { role = "assistant", content = "b" } } }
    cli.keep_partial(agent, 2, "question", "half an ans")
    assert.same({ role = "user", content = "question" }, agent.messages[3])
    assert.same({ role = "assistant", content = "half an ans" }, agent.messages[4])
    agent.messages[5] = { role = "user", content = "q2" }
    agent.messages[6] = { role = "assistant", tool_calls = { { id = "c1" } } }
    cli.keep_partial(agent, 4, "q2", "some text")
    assert.equal(6, #agent.messages)
    assert.same({ role = "assistant", content = "some text" }, agent.messages[6])
  end)

  it("rolls back a turn that ended before any text (no two user messages in a row)", function()
    local agent = { messages = { { role = "user", content = "a" }, { role = "assistant", content = "b" },
      { role = "user", content = "q2" }, { role = "assistant", tool_calls = { { id = "c1" } } } } }
    cli.keep_partial(agent, 2, "q2", "")
    assert.equal(2, #agent.messages)
    cli.keep_partial(agent, 2, "q3", "")
    assert.equal(2, #agent.messages)
  end)
end)

-- `luachat -p` as a subprocess against the test server.
local have_server, server = pcall(require, "spec.helpers.server")
if not have_server then
  have_server, server = pcall(dofile, "spec/helpers/server.lua")
end

local function header(req, name)
  local h = req.headers or {}
  name = name:lower()
  for k, v in pairs(h) do
    if type(k) == "string" and k:lower() == name then return v end
    if type(v) == "string" then
      local hn, hv = v:match("^([^:]+):%s*(.*)$")
      if hn and hn:lower() == name then return hv end
    end
  end
  return nil
end

local function chunk(text, extra)
  local c = { id = "chatcmpl-1", object = "chat.completion.chunk", created = 1700000000, model = "gpt-test",
    choices = { { index = 0, delta = { content = text } } } }
  for k, v in pairs(extra or {}) do c[k] = v end
  return c
end

local function hello_sse()
  return { sse = {
    { json = chunk("Hello") },
    { json = chunk(" world") },
    { json = { id = "chatcmpl-1", object = "chat.completion.chunk", created = 1700000000, model = "gpt-test",
      choices = { { index = 0, delta = {}, finish_reason = "stop" } } } },
  }, done = true }
end

local COMPLETION = {
  id = "chatcmpl-2", object = "chat.completion", created = 1700000001, model = "gpt-test",
  choices = { { index = 0, message = { role = "assistant", content = "Plain answer." }, finish_reason = "stop" } },
  usage = { prompt_tokens = 5, completion_tokens = 2, total_tokens = 7 },
}

describe("luachat -p (subprocess)", function()
  if not have_server or not have_core then
    error("needs the engine and spec/helpers/server.lua")
    return
  end
  local json = require "luachat.json"
  local srv, home

  setup(function()
    srv = server.start()
    home = tmpdir() -- an empty HOME/XDG_CONFIG_HOME: no user config
  end)
  teardown(function()
    if srv then srv:stop() end
    if home then os.execute("rm -rf " .. shell_quote(home)) end
  end)
  before_each(function() srv:reset() end)

  -- Run the host; returns stdout, stderr, exit code. env: extra variables;
  -- pre: shell commands run first in the same shell (descriptors it opens stay open).
  local function luachat_p(args, stdin, env, pre)
    local vars = {
      OPENAI_BASE_URL = srv.base_url, OPENAI_API_KEY = "sk-dummy-test-key",
      HOME = home, XDG_CONFIG_HOME = home .. "/config", XDG_STATE_HOME = home .. "/state",
      LUACHAT_PROFILE = "", LUACHAT_MODEL = "", LUACHAT_BASE_URL = "", NO_COLOR = "",
    }
    for k, v in pairs(env or {}) do vars[k] = v end
    local names = {}
    for k in pairs(vars) do names[#names + 1] = k end
    table.sort(names)
    local parts = { "env" }
    for _, k in ipairs(names) do
      if vars[k] ~= false then parts[#parts + 1] = k .. "=" .. shell_quote(vars[k]) end
    end
    return proc.run(string.format("%s%s %s %s", pre or "", table.concat(parts, " "), HOST, args), stdin or "")
  end

  it("streams the answer to stdout and sends the prompt with piped stdin", function()
    srv:script { hello_sse() }
    local out, err, code = luachat_p("-p " .. shell_quote("review this"), "diff --git a/x b/x\n+1\n")
    assert.equal("", err)
    assert.equal(0, code)
    assert.equal("Hello world\n", out)
    local reqs = srv:requests()
    assert.equal(1, #reqs)
    local body = reqs[1].json
    assert.is_true(body.stream)
    assert.equal("gpt-4o-mini", body.model)
    assert.same({ { role = "user", content = "review this\n\ndiff --git a/x b/x\n+1\n" } }, body.messages)
    assert.equal("Bearer sk-dummy-test-key", header(reqs[1], "authorization"))
  end)

  it("a closed stdout is an error on stderr and exit 1, not a silent success", function()
    srv:script { hello_sse() }
    local out, err, code = luachat_p("-p hi >&-")
    assert.equal("", out)
    assert.equal(1, code)
    assert.matches("^luachat: cannot write the answer to stdout: ", err)
  end)

  -- stdout a pipe whose reader has already left, as `| head -2` leaves once it has its lines:
  -- a FIFO opened by a reader (fd 3) and a writer (fd 4), then the reader closed. Every write to
  -- fd 4 is EPIPE, with no race against a real reader's exit.
  local function reader_gone(dir)
    local fifo = shell_quote(dir .. "/fifo")
    return string.format("mkfifo %s && exec 3<>%s 4>%s 3<&- && ", fifo, fifo, fifo)
  end

  it("a reader that left (| head) ends the answer quietly with 141, as cat and grep end", function()
    local dir = tmpdir()
    for _, case in ipairs { { "-p hi", hello_sse() }, { "-p hi --json", hello_sse() },
        { "-p hi --no-stream", { json = COMPLETION } }, { "-p hi --no-stream --json", { json = COMPLETION } } } do
      local args = case[1]
      srv:script { case[2] }
      os.remove(dir .. "/fifo")
      local out, err, code = luachat_p(args .. " >&4", nil, nil, reader_gone(dir))
      assert.equal("", out)
      assert.equal("", err, args)
      assert.equal(141, code, args)
    end
    os.execute("rm -rf " .. shell_quote(dir))
  end)

  it("-m and -s set the model and the system message", function()
    srv:script { hello_sse() }
    local _, _, code = luachat_p("-m other-model -s " .. shell_quote("Be terse.") .. " -p hi")
    assert.equal(0, code)
    local body = srv:requests()[1].json
    assert.equal("other-model", body.model)
    assert.same({ { role = "system", content = "Be terse." }, { role = "user", content = "hi" } }, body.messages)
  end)

  it("LUACHAT_MODEL overrides the profile's model, and -m overrides it", function()
    srv:script { hello_sse(), hello_sse() }
    luachat_p("-p hi", nil, { LUACHAT_MODEL = "env-model" })
    luachat_p("-p hi -m flag-model", nil, { LUACHAT_MODEL = "env-model" })
    local reqs = srv:requests()
    assert.equal("env-model", reqs[1].json.model)
    assert.equal("flag-model", reqs[2].json.model)
  end)

  it("--json prints the accumulated final as JSON, and nothing else", function()
    srv:script { hello_sse() }
    local out, err, code = luachat_p("--json -p hi")
    assert.equal(0, code)
    assert.equal("", err)
    local doc = assert(json.decode(out))
    local acc = require("luachat.stream").accumulator()
    for _, ev in ipairs(hello_sse().sse) do acc:add(ev.json) end
    assert.same(json.decode(json.encode(acc:result())), doc)
    assert.equal("Hello world", doc.choices[1].message.content)
  end)

  it("--no-stream sends no stream field; --json then prints the completion itself", function()
    srv:script { { json = COMPLETION }, { json = COMPLETION } }
    local out, _, code = luachat_p("--no-stream -p hi")
    assert.equal(0, code)
    assert.equal("Plain answer.\n", out)
    local body = srv:requests()[1].json
    assert.is_nil(body.stream)
    assert.is_nil(body.stream_options)
    out, _, code = luachat_p("--no-stream --json -p hi")
    assert.equal(0, code)
    assert.same(COMPLETION, json.decode(out))
  end)

  it("a 401 exits 1 with one line naming provider, status and the key variable", function()
    srv:script { { status = 401, json = { error = { message = "invalid API key", type = "invalid_request_error" } } } }
    local out, err, code = luachat_p("-p hi")
    assert.equal(1, code)
    assert.equal("", out)
    assert.equal("luachat: openai: HTTP 401 invalid API key — check OPENAI_API_KEY (the key was refused)\n", err)
    assert.is_nil(err:find("sk-dummy-test-key", 1, true))
  end)

  it("an unreachable server exits 1 with one line", function()
    local out, err, code = luachat_p("-p hi", nil, { OPENAI_BASE_URL = "http://127.0.0.1:1/v1" })
    assert.equal(1, code)
    assert.equal("", out)
    assert.matches("^luachat: openai: [^\n]* — cannot reach http://127.0.0.1:1/v1[^\n]*\n$", err)
  end)

  it("bad usage exits 2 without a request", function()
    for _, args in ipairs { "-p", "-p hi -c", "-p hi --bogus", "-P nosuch -p hi", "-P vllm -p hi" } do
      local out, err, code = luachat_p(args)
      assert.equal(2, code, args)
      assert.equal("", out)
      assert.matches("^luachat: ", err)
    end
    assert.equal(0, #srv:requests())
  end)

  it("a missing key for the chosen provider exits 1 naming the variable", function()
    local _, err, code = luachat_p("-P groq -p hi", nil, { GROQ_API_KEY = "" })
    assert.equal(1, code)
    assert.equal("luachat: groq: no API key: set GROQ_API_KEY\n", err)
  end)

  it("-p --help prints the CLI help with the precedence, exit 0", function()
    local out, _, code = luachat_p("-p --help")
    assert.equal(0, code)
    assert.matches("--base-url > LUACHAT_BASE_URL", out, 1, true)
    assert.matches("-m > LUACHAT_MODEL", out, 1, true)
  end)

  it("reads profiles from $XDG_CONFIG_HOME/luachat/config.lua", function()
    os.execute("mkdir -p " .. shell_quote(home .. "/config/luachat"))
    spit(home .. "/config/luachat/config.lua", string.format([[
      return { default_profile = "mine",
        profiles = { mine = { base_url = %q, key_env = "MY_KEY", model = "my-model",
                              headers = { ["X-Extra"] = "yes" } } } }]], srv.base_url))
    srv:script { hello_sse() }
    local out, err, code = luachat_p("-p hi", nil, { MY_KEY = "my-secret" })
    os.remove(home .. "/config/luachat/config.lua")
    assert.equal("", err)
    assert.equal(0, code)
    assert.equal("Hello world\n", out)
    local req = srv:requests()[1]
    assert.equal("my-model", req.json.model)
    assert.equal("Bearer my-secret", header(req, "authorization"))
    assert.equal("yes", header(req, "x-extra"))
  end)

  it("--tools runs the tool loop, showing each call on stderr", function()
    local tools = home .. "/tools.lua"
    spit(tools, [[
      local luachat = require "luachat"
      return { luachat.tool {
        name = "get_weather", description = "Weather in a city",
        parameters = { type = "object", properties = { city = { type = "string" } }, required = { "city" } },
        handler = function(args) return "18C and sunny in " .. args.city end,
      } }]])
    srv:script {
      { json = {
        id = "c1", object = "chat.completion", created = 1, model = "gpt-test",
        choices = { { index = 0, finish_reason = "tool_calls", message = { role = "assistant", content = json.null,
          tool_calls = { { id = "call_1", type = "function",
            ["function"] = { name = "get_weather", arguments = '{"city":"Paris"}' } } } } } },
      } },
      { json = COMPLETION },
    }
    local out, err, code = luachat_p("--no-stream --tools " .. shell_quote(tools) .. " -p " .. shell_quote("weather?"))
    assert.equal(0, code, err)
    assert.equal("Plain answer.\n", out)
    assert.matches('→ get_weather {"city":"Paris"}', err, 1, true)
    assert.matches("← 18C and sunny in Paris", err, 1, true)
    local reqs = srv:requests()
    assert.equal(2, #reqs)
    assert.equal("get_weather", reqs[1].json.tools[1]["function"].name)
    local last = reqs[2].json.messages[#reqs[2].json.messages]
    assert.equal("tool", last.role)
    assert.equal("call_1", last.tool_call_id)
  end)

  -- issue 13, "The command line" --------------------------------------------

  local function sse_body(events)
    local parts = {}
    for _, e in ipairs(events) do parts[#parts + 1] = "data: " .. json.encode(e) .. "\n\n" end
    return table.concat(parts)
  end

  local function tool_call_reply(id)
    return { json = {
      id = "c" .. id, object = "chat.completion", created = 1, model = "gpt-test",
      choices = { { index = 0, finish_reason = "tool_calls", message = { role = "assistant", content = json.null,
        tool_calls = { { id = "call_" .. id, type = "function",
          ["function"] = { name = "get_weather", arguments = '{"city":"Paris"}' } } } } } },
    } }
  end

  it("every option takes --name=value", function()
    srv:script { hello_sse() }
    local out, err, code = luachat_p("--model=foo --system=" .. shell_quote("Be terse.") .. " --prompt=hi")
    assert.equal("", err)
    assert.equal(0, code)
    assert.equal("Hello world\n", out)
    local body = srv:requests()[1].json
    assert.equal("foo", body.model)
    assert.same({ { role = "system", content = "Be terse." }, { role = "user", content = "hi" } }, body.messages)
  end)

  it("-p with an empty prompt is a usage error; piped text alone is the prompt", function()
    for _, args in ipairs { "-p ''", "-p '  '", "--prompt=" } do
      local out, err, code = luachat_p(args)
      assert.equal(2, code, args)
      assert.equal("", out)
      assert.matches("^luachat: the prompt is empty: give %-p TEXT %(or pipe text on stdin%)\n", err)
    end
    assert.equal(0, #srv:requests())
    srv:script { hello_sse() }
    local _, err, code = luachat_p("-p ''", "just the piped text\n")
    assert.equal(0, code, err)
    assert.same({ { role = "user", content = "just the piped text\n" } }, srv:requests()[1].json.messages)
  end)

  it("a refusal-only answer is shown on stderr, marked, and exits 1", function()
    local function refusal(text)
      return chunk(nil, { choices = { { index = 0, delta = { refusal = text } } } })
    end
    srv:script { { sse = {
      { json = refusal("I can't help ") }, { json = refusal("with that.") },
      { json = chunk(nil, { choices = { { index = 0, delta = {}, finish_reason = "stop" } } }) },
    }, done = true } }
    local out, err, code = luachat_p("-p hi")
    assert.equal(1, code)
    assert.equal("", out)
    assert.equal("luachat: the model refused: I can't help with that.\n", err)
    -- not streamed: the same
    srv:script { { json = { id = "x", object = "chat.completion", created = 1, model = "m",
      choices = { { index = 0, finish_reason = "stop",
        message = { role = "assistant", content = json.null, refusal = "No." } } } } } }
    out, err, code = luachat_p("--no-stream -p hi")
    assert.equal(1, code)
    assert.equal("", out)
    assert.equal("luachat: the model refused: No.\n", err)
  end)

  it("a stream cut after events says so (the server was reached) and keeps the partial answer", function()
    local kept = sse_body { chunk("Hello"), chunk(" wor") }
    srv:script { { body = kept .. sse_body { chunk("ld, lost") }, content_type = "text/event-stream",
      chunked = false, close_after_body = #kept + 5 } }
    local out, err, code = luachat_p("-p hi")
    assert.equal(1, code)
    assert.equal("Hello wor\n", out)
    assert.matches("stream cut short after 2 events", err, 1, true)
    assert.matches("— the server was reached but the stream broke off; the partial answer was kept\n$", err)
    assert.is_nil(err:find("cannot reach", 1, true))
    assert.equal(1, #srv:requests())
  end)

  it("a connection failure names curl's reason once", function()
    local _, err = luachat_p("-p hi", nil, { OPENAI_BASE_URL = "http://127.0.0.1:1/v1" })
    local _, n = err:gsub("Couldn't connect to server", "")
    assert.equal(1, n, err)
  end)

  it("a redirect shows its Location and says it is not followed", function()
    srv:script { { status = 301, headers = { Location = "https://elsewhere.example/v1/chat/completions" }, body = "" } }
    local out, err, code = luachat_p("-p hi")
    assert.equal(1, code)
    assert.equal("", out)
    assert.matches("HTTP 301 redirect to https://elsewhere.example/v1/chat/completions, not followed", err, 1, true)
    assert.matches("not followed %(luachat never follows redirects; use the final URL as the base URL%)\n$", err)
    assert.is_nil(err:find("api error", 1, true))
    assert.equal(1, #srv:requests())
  end)

  it("a --tools file returning one tool gives that tool", function()
    local tools = home .. "/one_tool.lua"
    spit(tools, [[
      -- no require: the host gives --tools files the global luachat too
      return luachat.tool { name = "get_weather", description = "Weather in a city",
        parameters = { type = "object", properties = { city = { type = "string" } } },
        handler = function(args) return "sunny in " .. args.city end }]])
    srv:script { tool_call_reply(1), { json = COMPLETION } }
    local out, err, code = luachat_p("--no-stream --tools " .. shell_quote(tools) .. " -p weather")
    assert.equal(0, code, err)
    assert.equal("Plain answer.\n", out)
    local reqs = srv:requests()
    assert.equal(2, #reqs)
    assert.equal(1, #reqs[1].json.tools)
    assert.equal("sunny in Paris", reqs[2].json.messages[#reqs[2].json.messages].content)
  end)

  it("--max-turns bounds the tool loop", function()
    local tools = home .. "/loop_tool.lua"
    spit(tools, [[return { require("luachat").tool { name = "get_weather", handler = function() return "again" end } }]])
    srv:script { tool_call_reply(1), tool_call_reply(2), tool_call_reply(3) }
    local out, err, code = luachat_p("--no-stream --max-turns 2 --tools " .. shell_quote(tools) .. " -p weather")
    assert.equal(1, code)
    assert.equal("", out)
    assert.matches("the model was still calling tools after 2 turns", err, 1, true)
    assert.matches("raise it with --max-turns N", err, 1, true)
    assert.equal(2, #srv:requests())
    _, err, code = luachat_p("--max-turns 1.5 -p x")
    assert.equal(2, code)
    assert.matches("--max-turns needs a positive whole number, got '1.5'", err, 1, true)
  end)

  it("LUACHAT_LOG=debug: a streamed request logs status and timing; a retry names the URL once", function()
    srv:script {
      { status = 503, json = { error = { message = "busy" } }, headers = { ["retry-after-ms"] = "1" } },
      hello_sse(),
    }
    local out, err, code = luachat_p("-p hi", nil, { LUACHAT_LOG = "debug" })
    assert.equal(0, code, err)
    assert.equal("Hello world\n", out)
    local url = srv.base_url .. "/chat/completions"
    local retry = err:match("[^\n]*retry 1 of 2[^\n]*")
    assert.truthy(retry, err)
    local _, n = retry:gsub(url:gsub("%p", "%%%0"), "")
    assert.equal(1, n, retry)
    assert.matches("luachat[debug] POST " .. url .. " -> 503 in ", err, 1, true)
    local u = url:gsub("%p", "%%%0")
    assert.matches("luachat%[debug%] POST " .. u .. " %-> 200 in [%d.]+s %(first event%)", err)
    assert.matches("luachat%[debug%] POST " .. u .. ": stream ended after 4 events in [%d.]+s", err)
  end)

  -- `luachat -c` with stdin not a terminal: one input per line, no prompt.
  describe("-c from a pipe", function()
    it("/system applies from the next reply even without -s", function()
      srv:script { hello_sse(), hello_sse() }
      local out, err, code = luachat_p("-c", "hello\n/system Be brief.\nagain\n")
      assert.equal(0, code, err)
      assert.equal("Hello world\nHello world\n", out)
      local reqs = srv:requests()
      assert.same({ { role = "user", content = "hello" } }, reqs[1].json.messages)
      assert.same({ role = "system", content = "Be brief." }, reqs[2].json.messages[1])
      assert.equal(4, #reqs[2].json.messages)
      assert.equal("again", reqs[2].json.messages[4].content)
    end)

    it("a reply that failed before any text is rolled back; one cut after text is kept", function()
      local kept = sse_body { chunk("Half") }
      srv:script {
        { status = 400, json = { error = { message = "bad request" } } },
        { body = kept .. sse_body { chunk(" lost") }, content_type = "text/event-stream", chunked = false,
          close_after_body = #kept + 3 },
        hello_sse(),
      }
      local out, err, code = luachat_p("-c", "first\nsecond\nthird\n")
      assert.equal(0, code)
      assert.equal("Half\nHello world\n", out)
      assert.matches("HTTP 400 bad request", err, 1, true)
      local reqs = srv:requests()
      assert.equal(3, #reqs)
      assert.same({ { role = "user", content = "second" } }, reqs[2].json.messages)
      assert.same({ { role = "user", content = "second" }, { role = "assistant", content = "Half" },
        { role = "user", content = "third" } }, reqs[3].json.messages)
    end)

    it("/save and /load expand ~, and their errors say it once", function()
      srv:script { hello_sse() }
      local _, err, code = luachat_p("-c", "hello\n/save ~/saved.json\n/load ~/saved.json\n/load ~/missing.json\n")
      assert.equal(0, code, err)
      local saved = proc.read_file(home .. "/saved.json")
      assert.truthy(saved, err)
      assert.equal("hello", json.decode(saved).messages[1].content)
      assert.matches("saved 2 messages to " .. home .. "/saved.json", err, 1, true)
      assert.matches("loaded 2 messages from " .. home .. "/saved.json", err, 1, true)
      assert.matches("\n/load: cannot load the transcript: " .. home .. "/missing.json: No such file", err, 1, true)
      assert.is_nil(err:find("environment error", 1, true))
      os.remove(home .. "/saved.json")
    end)

    it("/tools lists the one tool a --tools file returned", function()
      local tools = home .. "/single.lua"
      spit(tools, [[return luachat.tool { name = "only_tool", description = "the one", handler = function() end }]])
      local out, err, code = luachat_p("-c --tools " .. shell_quote(tools), "/tools\n")
      assert.equal(0, code, err)
      assert.equal("", out)
      assert.matches("^only_tool%s+the one\n$", err)
    end)

    it("a refusal is shown on stderr, marked", function()
      srv:script { { sse = { { json = chunk(nil, { choices = { { index = 0, delta = { refusal = "No." } } } }) } },
        done = true } }
      local out, err, code = luachat_p("-c", "hello\n")
      assert.equal(0, code)
      assert.equal("", out)
      assert.equal("luachat: the model refused: No.\n", err)
    end)
  end)
end)
