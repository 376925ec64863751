-- What the server observes (issue 20 item 3): the Authorization and base URL a
-- client takes from the environment of a fresh process, empty arrays sent as
-- [] in every field the schema defines as an array, and flow control: a stream
-- the script holds unread stops the server's sending, not the client's memory.
-- Every assertion is on the server's request log or on its own send counter.
local server = require "spec.helpers.server"
local proc = require "spec.helpers.proc"
local luachat = require "luachat"
local core = require "luachat.core"

local completion = {
  id = "chatcmpl-1", object = "chat.completion", created = 1700000000, model = "m",
  choices = { { index = 0, message = { role = "assistant", content = "hello" }, finish_reason = "stop" } },
}

describe("on the wire", function()
  local srv
  setup(function() srv = server.start() end)
  teardown(function() if srv then srv:stop() end end)
  before_each(function() srv:reset() end)
  after_each(function() assert.equal(0, core.live(), "a transfer was left running") end)

  describe("the environment, read by a new process #once", function()
    -- luachat.client() in a child luachat with exactly these variables set (the
    -- rest of the luachat/OpenAI environment removed); returns its stdout.
    local function child(env, code)
      local names = { "OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID",
        "LUACHAT_MODEL", "LUACHAT_PROFILE", "LUACHAT_BASE_URL" }
      local unset = {}
      for _, n in ipairs(names) do unset[#unset + 1] = "-u " .. n end
      local set = {}
      for k, v in pairs(env) do set[#set + 1] = k .. "=" .. proc.shell_quote(v) end
      table.sort(set)
      local out, err, rc = proc.run(string.format("env %s %s %s -e %s", table.concat(unset, " "),
        table.concat(set, " "), proc.host, proc.shell_quote(code)))
      assert.equal(0, rc, err)
      return out
    end
    local CHAT = "local c = require('luachat').client(%s) local r, e = c:chat{model='m', messages={}}"
      .. " io.write(r and r.choices[1].message.content or tostring(e))"

    it("OPENAI_API_KEY becomes the Bearer token and OPENAI_BASE_URL the endpoint", function()
      srv:script { { json = completion } }
      local out = child({ OPENAI_API_KEY = "sk-from-env-0123456789", OPENAI_BASE_URL = srv.base_url },
        CHAT:format(""))
      assert.equal("hello", out)
      local reqs = srv:requests()
      assert.equal(1, #reqs)
      assert.equal("/v1/chat/completions", reqs[1].path)
      assert.equal("Bearer sk-from-env-0123456789", reqs[1].headers["authorization"])
      assert.is_nil(reqs[1].headers["openai-organization"])
      assert.is_nil(reqs[1].headers["openai-project"])
    end)

    it("OPENAI_ORG_ID and OPENAI_PROJECT_ID become their headers", function()
      srv:script { { json = completion } }
      child({ OPENAI_API_KEY = "sk-e", OPENAI_BASE_URL = srv.base_url, OPENAI_ORG_ID = "org-env",
        OPENAI_PROJECT_ID = "proj-env" }, CHAT:format(""))
      local h = srv:requests()[1].headers
      assert.equal("org-env", h["openai-organization"])
      assert.equal("proj-env", h["openai-project"])
    end)

    it("explicit options win over the environment; api_key = false sends no key", function()
      srv:script { { json = completion }, { json = completion } }
      child({ OPENAI_API_KEY = "sk-env", OPENAI_BASE_URL = "http://127.0.0.1:9/v1" },
        CHAT:format(string.format("{base_url=%q, api_key='sk-explicit'}", srv.base_url)))
      child({ OPENAI_API_KEY = "sk-env", OPENAI_BASE_URL = srv.base_url }, CHAT:format("{api_key=false}"))
      local reqs = srv:requests()
      assert.equal(2, #reqs)
      assert.equal("Bearer sk-explicit", reqs[1].headers["authorization"])
      assert.is_nil(reqs[2].headers["authorization"])
    end)

    it("without OPENAI_API_KEY no Authorization is sent and a 401 says to set it", function()
      srv:script { { status = 401, json = { error = { message = "missing key" } } } }
      local out = child({ OPENAI_BASE_URL = srv.base_url }, CHAT:format("{max_retries=0}"))
      assert.is_nil(srv:requests()[1].headers["authorization"])
      assert.matches("(no API key: set OPENAI_API_KEY)", out, 1, true)
    end)
  end)

  describe("empty arrays", function()
    -- Every field the chat-completions schema defines as an array, empty.
    local function request()
      return {
        model = "m",
        messages = {
          { role = "user", content = {} },
          { role = "assistant", content = "", tool_calls = {} },
        },
        tools = {},
        stop = {},
      }
    end
    local function request_with_tool()
      local r = request()
      r.tools = { { type = "function", ["function"] = { name = "f",
        parameters = { type = "object", properties = { x = { type = "string" } }, required = {} } } } }
      return r
    end

    -- The raw body the server received contains `"name":[]` (never `{}`).
    local function assert_arrays(body, names)
      for _, name in ipairs(names) do
        assert.is_nil(body:find('"' .. name .. '":{}', 1, true), name .. " sent as {}: " .. body)
        assert.truthy(body:find('"' .. name .. '":[]', 1, true), name .. " not sent as []: " .. body)
      end
    end

    local c
    before_each(function() c = luachat.client { base_url = srv.base_url, api_key = "sk-arrays", max_retries = 0 } end)

    it("chat sends messages, tools, stop, content and tool_calls as []", function()
      srv:script { { json = completion } }
      assert(c:chat { model = "m", messages = {} })
      srv:script { { json = completion } }
      assert(c:chat(request()))
      local reqs = srv:requests()
      assert_arrays(reqs[1].body, { "messages" })
      assert_arrays(reqs[2].body, { "tools", "stop", "content", "tool_calls" })
    end)

    it("a tool's parameters.required is sent as []", function()
      srv:script { { json = completion } }
      assert(c:chat(request_with_tool()))
      assert_arrays(srv:requests()[1].body, { "required", "stop", "content", "tool_calls" })
    end)

    it("a stream sends them as [] too", function()
      srv:script { { sse = { { json = { choices = { { index = 0, delta = { content = "x" } } } } } }, done = true } }
      local final, err = c:stream(request_with_tool())
      assert.is_nil(err)
      assert.equal("x", final.choices[1].message.content)
      assert_arrays(srv:requests()[1].body, { "required", "stop", "content", "tool_calls" })
    end)
  end)

  describe("a slow consumer", function()
    -- The server sends 40,000 chunks (about 10 MB) through a 16 KiB send
    -- buffer and counts what the kernel took. While the script holds the
    -- stream unread (driving the loop all the while), luachat must pause the
    -- transfer, so the server's count stops far below the whole stream; then
    -- the script reads everything.
    local CHUNKS = 40000

    it("stops the server's sending while unread, then delivers the whole stream", function()
      srv:script { { generate = { kind = "text", chunks = CHUNKS }, sndbuf = 16384 } }
      local c = luachat.client { base_url = srv.base_url, api_key = "sk-slow", max_retries = 0, idle_timeout = 60 }
      local s <close> = assert(c:open_stream { model = "m", messages = { { role = "user", content = "x" } } })
      -- Unread: drive the loop until the server's count stands still over three
      -- looks in a row, or the server finished (which is the failure).
      local p, prev, same = nil, -1, 0
      repeat
        luachat.sleep(0.1)
        p = assert(srv:progress()[1], "the server logged no progress")
        if p.sent == prev then same = same + 1 else same = 0 end
        prev = p.sent
      until p.done or same >= 3
      assert.is_false(p.done, "the server sent the whole stream to a consumer that read nothing")
      assert.is_true(p.sent < 2.5e6, "the server sent " .. p.sent .. " bytes to a consumer that read nothing")
      -- Now read it all: nothing lost while paused.
      local n, text = 0, 0
      for chunk in s:chunks() do
        n = n + 1
        text = text + #(luachat.delta_text(chunk) or "")
      end
      local final, err = s:result()
      assert.is_nil(err)
      assert.equal(CHUNKS + 2, n) -- the text chunks, the finish chunk, the usage chunk
      assert.equal("stop", final.choices[1].finish_reason)
      assert.equal(CHUNKS, final.usage.completion_tokens)
      assert.equal(text, #final.choices[1].message.content)
      assert.is_true(srv:progress()[1].done)
    end)
  end)
end)
