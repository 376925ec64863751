-- The examples/ agents, run as a user runs them (the host, a subprocess),
-- against the test server scripted as a model that calls their tools.
-- run-tests: once (it only runs the examples in the host; scripts/run-tests.sh)
local server = require "spec.helpers.server"
local json = require "luachat.json"

local proc = require "spec.helpers.proc"
local shell_quote = proc.shell_quote

-- Run an example; returns stdout, stderr, exit code.
local function run_example(srv, args)
  return proc.run(string.format("OPENAI_BASE_URL=%s OPENAI_API_KEY=sk-example LUACHAT_MODEL=m %s %s",
    srv.base_url, proc.host, args))
end

local function chunk(delta, finish)
  return { json = { id = "c", object = "chat.completion.chunk", created = 1, model = "m",
    choices = { { index = 0, delta = delta, finish_reason = finish or json.null } } } }
end

-- A streamed turn: text, then tool calls {name, arguments}.
local function turn(text, calls)
  local ev = { chunk { role = "assistant", content = text or "" } }
  for i, c in ipairs(calls or {}) do
    ev[#ev + 1] = chunk { tool_calls = { { index = i - 1, id = "call_" .. i, type = "function",
      ["function"] = { name = c[1], arguments = c[2] } } } }
  end
  ev[#ev + 1] = chunk({}, calls and "tool_calls" or "stop")
  return { sse = ev, done = true }
end

-- A non-streamed reply (sub-agents do not stream).
local function reply(text)
  return { json = { id = "r", object = "chat.completion", created = 1, model = "m",
    choices = { { index = 0, message = { role = "assistant", content = text }, finish_reason = "stop" } },
    usage = { prompt_tokens = 1, completion_tokens = 1, total_tokens = 2 } } }
end

describe("examples", function()
  local srv
  setup(function() srv = server.start() end)
  teardown(function() if srv then srv:stop() end end)
  before_each(function() srv:reset() end)

  it("calculator.lua computes with its tools", function()
    srv:script {
      turn("Working. ", { { "calculate", '{"expression":"(2 + 3) * 4"}' }, { "convert_units", '{"value":212,"from":"f","to":"c"}' },
        { "calculate", '{"expression":"os.exit(3)"}' }, { "calculate", '{"expression":"1/0"}' },
        { "calculate", '{"expression":"1//0"}' }, { "calculate", '{"expression":"7 % 0"}' } }),
      turn("{{tool:1:value}} and {{tool:2:result}} C; third: {{tool:3}}\nfourth: {{tool:4}}\nfifth: {{tool:5}}\nsixth: {{tool:6}}"),
    }
    local out, err, code = run_example(srv, "examples/calculator.lua 'sum?'")
    assert.equal(0, code, err)
    assert.matches("20 and 100 C; third: error: tool calculate failed: only numbers", out, 1, true)
    -- a division by zero is a result the model can act on, not "cannot encode an infinite number"
    assert.matches("\nfourth: error: tool calculate failed: division by zero (or a result too large for a number) in 1/0\n",
      out, 1, true)
    assert.matches("\nfifth: error: tool calculate failed: division by zero in 1//0\n", out, 1, true)
    assert.matches("\nsixth: error: tool calculate failed: division by zero in 7 % 0\n", out, 1, true)
    assert.matches("Working. \n20 and", out, 1, true) -- the turns' texts on their own lines
    assert.matches("-> calculate", err, 1, true)
    local reqs = srv:requests()
    assert.equal(2, #reqs)
    assert.equal("sum?", reqs[1].json.messages[2].content)
  end)

  it("files.lua stays inside its directory", function()
    local dir = os.tmpname()
    os.remove(dir)
    os.execute("mkdir -p " .. dir .. "/sub")
    local f = assert(io.open(dir .. "/sub/notes.txt", "w"))
    f:write("buy milk")
    f:close()
    srv:script {
      turn("Let me look.", { { "list_files", "" }, { "read_file", '{"path":"sub/notes.txt"}' },
        { "read_file", '{"path":"../../etc/passwd"}' }, { "read_file", '{"path":"/etc/passwd"}' },
        { "write_file", '{"path":"summary.txt","content":"milk"}' }, { "write_file", '{"path":"../escape.txt","content":"x"}' } }),
      turn("Files: {{tool:1}} | notes: {{tool:2}} | {{tool:3}} | {{tool:4}} | {{tool:6}}"),
    }
    local out, err, code = run_example(srv, "examples/files.lua " .. shell_quote(dir) .. " 'summarise'")
    assert.equal(0, code, err)
    assert.matches('{"files":["sub/notes.txt"]}', out, 1, true)
    -- the two turns' texts on their own lines ("Let me look.Files: ..." before), one newline at the end
    assert.matches("^> summarise\nLet me look.\nFiles: .*\n$", out)
    assert.not_matches("\n\n$", out)
    assert.matches("notes: buy milk", out, 1, true)
    assert.matches("error: tool read_file failed: path is outside the allowed directory: ../../etc/passwd", out, 1, true)
    assert.matches("error: tool read_file failed: absolute paths are not allowed: /etc/passwd", out, 1, true)
    assert.matches("error: tool write_file failed: path is outside the allowed directory: ../escape.txt", out, 1, true)
    local written = io.open(dir .. "/summary.txt")
    assert.truthy(written, "write_file inside the directory should work")
    assert.equal("milk", written:read("a"))
    written:close()
    assert.is_nil(io.open(dir .. "/../escape.txt"))
    os.execute("rm -rf " .. shell_quote(dir))
  end)

  it("research.lua fans out to sub-agents in parallel", function()
    srv:script {
      turn(nil, { { "research", '{"question":"What is Lua?"}' }, { "research", '{"question":"What is Go?"}' } }),
      reply("Answer to {{last_user}}"),
      reply("Answer to {{last_user}}"),
      turn("Synthesis: [{{tool:1}}] [{{tool:2}}]"),
    }
    local out, err, code = run_example(srv, "examples/research.lua 'compare'")
    assert.equal(0, code, err)
    assert.matches("Synthesis: [Answer to What is Lua?] [Answer to What is Go?]", out, 1, true)
    assert.matches("sub-agent answered", err, 1, true)
    local reqs = srv:requests()
    assert.equal(4, #reqs)
    -- the two sub-agent requests were both in flight before either answered
    local subs = { reqs[2].json.messages[2].content, reqs[3].json.messages[2].content }
    table.sort(subs)
    assert.same({ "What is Go?", "What is Lua?" }, subs)
  end)
end)
