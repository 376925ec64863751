-- demo.lua: `make demo`. Starts the local test server, scripts it as a model
-- that calls tools (streamed), and runs examples/calculator.lua against it.
-- The model is a script; the tools are real: the final answer is filled in
-- by the server from the tool results luachat sent back.
-- Run by the host: ./luachat scripts/demo.lua
local luachat = require "luachat"
local json = luachat.json

local HOST = arg[1] or "./luachat"
local QUESTION = "What is 23 * 19, and how many miles are 100 km?"

local function shell_quote(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

-- Start the server; it exits by itself when this process does.
local dir = os.tmpname()
os.remove(dir)
os.execute("mkdir -p " .. shell_quote(dir))
local pid_of_shell = io.popen("echo $PPID"):read("l")
local server_pid = io.popen(string.format(
  "python3 scripts/testserver.py --port-file %s/port --parent-pid %s >/dev/null 2>&1 & echo $!",
  shell_quote(dir), pid_of_shell)):read("l")
local port
for _ = 1, 200 do
  local f = io.open(dir .. "/port")
  port = f and tonumber(f:read("a"))
  if f then f:close() end
  if port then break end
  luachat.sleep(0.05)
end
assert(port, "the test server did not start")
local function cleanup()
  os.execute("kill " .. server_pid .. " 2>/dev/null; rm -rf " .. shell_quote(dir))
end

-- One streamed turn: text in small pieces, then tool calls with arguments in fragments.
local function chunk(delta, finish)
  return { json = { id = "chatcmpl-demo", object = "chat.completion.chunk", created = os.time(), model = "demo-model",
    choices = { { index = 0, delta = delta, finish_reason = finish or json.null } } }, delay = 0.03 }
end

local function turn(text, calls)
  local events = { chunk { role = "assistant", content = "" } }
  for piece in text:gmatch("%S+%s*") do events[#events + 1] = chunk { content = piece } end
  for i, c in ipairs(calls or {}) do
    events[#events + 1] = chunk { tool_calls = { { index = i - 1, id = "call_" .. i, type = "function",
      ["function"] = { name = c.name, arguments = "" } } } }
    for frag in c.arguments:gmatch(".?.?.?.?.?.?") do
      if frag ~= "" then
        events[#events + 1] = chunk { tool_calls = { { index = i - 1, ["function"] = { arguments = frag } } } }
      end
    end
  end
  events[#events + 1] = chunk({}, calls and "tool_calls" or "stop")
  events[#events + 1] = { json = { id = "chatcmpl-demo", object = "chat.completion.chunk", created = os.time(),
    model = "demo-model", choices = json.array {}, usage = { prompt_tokens = 120, completion_tokens = 40, total_tokens = 160 } } }
  return { sse = events, done = true }
end

local control = luachat.client { base_url = "http://127.0.0.1:" .. port, api_key = false, max_retries = 0 }
local _, err = control:post("_control/script", { responses = {
  turn("I'll work both out with the tools. ", {
    { name = "calculate", arguments = '{"expression": "23 * 19"}' },
    { name = "convert_units", arguments = '{"value": 100, "from": "km", "to": "mi"}' },
  }),
  -- {{tool:N:field}}: the server reads it from the Nth tool message it received.
  turn("23 × 19 = {{tool:1:value}}, and 100 km is about {{tool:2:result}} miles."),
} })
if err then
  cleanup()
  error(err)
end

print("luachat demo: an agent with two tools, streaming, against the local test server")
print("(the server plays a scripted model; the tools run for real)\n")
local ok = os.execute(string.format(
  "OPENAI_BASE_URL=http://127.0.0.1:%d/v1 OPENAI_API_KEY=demo-key LUACHAT_MODEL=demo-model %s examples/calculator.lua %s",
  port, HOST, shell_quote(QUESTION)))

local reqs = control:get("_control/requests") or {}
cleanup()
print(string.format("\nThe server received %d requests; the second carried %d messages (system, user, assistant with tool calls, 2 tool results).",
  #reqs, reqs[2] and reqs[2].body and #(json.decode(reqs[2].body) or { messages = {} }).messages or 0))
os.exit(ok and 0 or 1)
