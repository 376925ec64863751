-- The command line prints nothing secret, whatever the server echoes back:
-- the test server answers with the client's own API key inside the model's
-- text, split across stream chunks, and -p (streamed, --no-stream, --json)
-- and -c must show [REDACTED] instead (luachat.redact's rule, in cli_term).
local server = require "spec.helpers.server"
local proc = require "spec.helpers.proc"
local HOST, shell_quote, tmpdir = proc.host, proc.shell_quote, proc.tmpdir

local KEY = "sk-echo-SECRET-9876543210"

local function chunk(text)
  return { json = { id = "chatcmpl-r", object = "chat.completion.chunk", created = 1, model = "m",
    choices = { { index = 0, delta = { content = text } } } } }
end

-- An answer echoing the key split in three chunks, then the key again whole,
-- then text ending in a prefix of the key at the very end of the stream.
local function echo_sse()
  return { sse = {
    chunk("your key is sk-ec"), chunk("ho-SECRET-98"), chunk("76543210 and "),
    chunk(KEY .. ", bye sk-"),
    { json = { id = "chatcmpl-r", object = "chat.completion.chunk", created = 1, model = "m",
      choices = { { index = 0, delta = {}, finish_reason = "stop" } } } },
  }, done = true }
end
local EXPECTED = "your key is [REDACTED] and [REDACTED], bye sk-"

describe("the command line redacts an echoed key", function()
  local srv, home
  setup(function()
    srv = server.start()
    home = tmpdir()
  end)
  teardown(function()
    if srv then srv:stop() end
    if home then os.execute("rm -rf " .. shell_quote(home)) end
  end)
  before_each(function() srv:reset() end)

  local function run(args, stdin)
    local env = string.format("env OPENAI_BASE_URL=%s OPENAI_API_KEY=%s HOME=%s XDG_CONFIG_HOME=%s XDG_STATE_HOME=%s "
      .. "LUACHAT_PROFILE= LUACHAT_MODEL= LUACHAT_BASE_URL= NO_COLOR=", shell_quote(srv.base_url), KEY,
      shell_quote(home), shell_quote(home .. "/config"), shell_quote(home .. "/state"))
    return proc.run(env .. " " .. HOST .. " " .. args, stdin or "")
  end

  it("-p, streamed: a key split across chunks is caught, other text is kept", function()
    srv:script { echo_sse() }
    local out, err, code = run("-p hi")
    assert.equal(0, code, err)
    assert.equal(EXPECTED .. "\n", out)
    assert.is_nil((out .. err):find("SECRET", 1, true))
  end)

  it("-p --no-stream", function()
    srv:script { { json = { id = "x", object = "chat.completion", created = 1, model = "m",
      choices = { { index = 0, message = { role = "assistant", content = "echo {{header:authorization}}!" },
        finish_reason = "stop" } } } } }
    local out, err, code = run("-p hi --no-stream")
    assert.equal(0, code, err)
    assert.equal("echo Bearer [REDACTED]!\n", out)
  end)

  it("-p --json: the JSON stays valid and carries [REDACTED]", function()
    srv:script { echo_sse() }
    local out, err, code = run("-p hi --json")
    assert.equal(0, code, err)
    assert.is_nil((out .. err):find("SECRET", 1, true))
    local res = require("luachat.json").decode(out)
    assert.equal(EXPECTED, res.choices[1].message.content)
  end)

  it("-c: a streamed reply", function()
    srv:script { echo_sse() }
    local out, err, code = run("-c", "hello\n")
    assert.equal(0, code, err)
    assert.matches(EXPECTED, out, 1, true)
    assert.is_nil((out .. err):find("SECRET", 1, true))
  end)
end)

describe("cli_term.out", function()
  local term = require "luachat.cli_term"
  -- Everything written through term.out + term.end_line, with stdout captured.
  local function shown(pieces)
    local got = {}
    local real = io.stdout
    io.stdout = { write = function(self, s) got[#got + 1] = s return self end, flush = function(self) return self end }
    local ctx = { s = { api_key = KEY }, spinner = { stop = function() end } }
    local ok, err = pcall(function()
      for _, p in ipairs(pieces) do assert(term.out(ctx, p)) end
      term.end_line(ctx)
    end)
    io.stdout = real
    assert(ok, err)
    return table.concat(got)
  end

  it("catches the key split at every offset, in two or three pieces, and keeps the rest exact", function()
    local text = "a " .. KEY .. " b sk-e"
    for i = 1, #text - 1 do
      assert.equal("a [REDACTED] b sk-e\n", shown { text:sub(1, i), text:sub(i + 1) })
      for j = i + 1, #text - 1 do
        assert.equal("a [REDACTED] b sk-e\n", shown { text:sub(1, i), text:sub(i + 1, j), text:sub(j + 1) })
      end
    end
    assert.equal("plain text, nothing held\n", shown { "plain text, ", "nothing held" })
  end)

  it("holds back only a tail that could begin the key, and only until the next piece", function()
    local got = {}
    local real = io.stdout
    io.stdout = { write = function(self, s) got[#got + 1] = s return self end, flush = function(self) return self end }
    local ctx = { s = { api_key = KEY }, spinner = { stop = function() end } }
    local steps = {}
    for _, p in ipairs { "hello ", "world sk-ec", "ho!", "done" } do
      term.out(ctx, p)
      steps[#steps + 1] = table.concat(got)
    end
    io.stdout = real
    assert.same({ "hello ", "hello world ", "hello world sk-echo!", "hello world sk-echo!done" }, steps)
  end)
end)
