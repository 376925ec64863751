-- bench/luachat_client.lua: the luachat contender of `make bench`, run by ./luachat.
--
-- Owns: one workload per process, in the callback form (client:stream) or the
-- pull form (client:open_stream + s:chunks()), counting what arrived and
-- printing one JSON line {chunks=, content_bytes=, requests=, tool_calls=} for
-- scripts/bench/run.py to check.
-- Consumes a stream as the README shows: luachat.delta_text(chunk) for the
-- text as it arrives, the final message for tool calls (their arguments are
-- counted there, so a lost fragment fails the check). FORM "tables" reads
-- every chunk's fields instead (chunk.choices[1].delta...), which decodes each
-- chunk into tables: the cost a script pays when it wants them. FORM "text" is the
-- text path (issue 14): on_text only, so text-only chunks are never built as tables.
-- Never: times itself (the harness measures the whole process with wait4).
--
-- Usage: luachat bench/luachat_client.lua WORKLOAD FORM BASE_URL N [M]
--   stream_text|stream_tool  FORM=callback|pull|tables|text  N ignored (the server decides)
--   nonstream                FORM=callback       N requests in sequence
--   concurrent               FORM=callback|pull  N streams at once
--   agent                    FORM=callback       N runs of M turns each
local luachat = require "luachat"

local workload, form, base_url = arg[1], arg[2], arg[3]
local n, m = tonumber(arg[4] or "1"), tonumber(arg[5] or "1")

local client = luachat.client { base_url = base_url, api_key = "sk-bench", max_retries = 0 }
local request = {
  model = "bench",
  messages = { { role = "user", content = "Tell me a long story." } },
  stream_options = { include_usage = true },
}

local chunks, content_bytes, requests, tool_calls = 0, 0, 0, 0

local function fail(err)
  io.stderr:write("luachat_client: ", tostring(err), "\n")
  os.exit(1)
end

local delta_text = luachat.delta_text

-- Count one chunk and its text, as a script printing the reply would.
local function count(chunk)
  chunks = chunks + 1
  content_bytes = content_bytes + #delta_text(chunk)
end

-- Count one chunk from its decoded fields: text deltas, or tool-call argument fragments.
local function count_fields(chunk)
  chunks = chunks + 1
  local choice = chunk.choices[1]
  if choice then
    local delta = choice.delta
    local text = delta.content
    if type(text) == "string" then content_bytes = content_bytes + #text end
    local calls = delta.tool_calls
    if type(calls) == "table" then
      for i = 1, #calls do
        local args = calls[i]["function"] and calls[i]["function"].arguments
        if type(args) == "string" then content_bytes = content_bytes + #args end
      end
    end
  end
end

-- Tool-call arguments from the final message (fields form: counted per chunk instead).
local function count_final(final)
  if form == "tables" then return end
  for _, call in ipairs(final.choices[1].message.tool_calls or {}) do
    content_bytes = content_bytes + #call["function"].arguments
  end
end

local function one_stream()
  requests = requests + 1
  local final, err
  if form == "pull" then
    local s <close> = assert(client:open_stream(request))
    for chunk in s:chunks() do count(chunk) end
    final, err = s:result()
  elseif form == "text" then
    local s <close> = assert(client:open_stream(request))
    s:each(nil, function(text) content_bytes = content_bytes + #text end)
    final, err = s:result()
    chunks = chunks + s.nevents - (s.done_seen and 1 or 0) -- events handled as chunks
  else
    final, err = client:stream(request, form == "tables" and count_fields or count)
  end
  if err or not final then fail(err) end
  count_final(final)
end

if workload == "stream_text" or workload == "stream_tool" then
  one_stream()
elseif workload == "nonstream" then
  local req = { model = "bench", messages = request.messages }
  for _ = 1, n do
    local res, err = client:chat(req)
    if not res then fail(err) end
    requests = requests + 1
    content_bytes = content_bytes + #res.choices[1].message.content
  end
elseif workload == "concurrent" then
  local tasks = {}
  for i = 1, n do tasks[i] = luachat.spawn(one_stream) end
  for _, r in ipairs(luachat.gather(tasks)) do
    if r[1] == nil and r[2] then fail(r[2]) end
  end
elseif workload == "agent" then
  local agent = luachat.agent {
    client = client, model = "bench", max_turns = m,
    tools = { luachat.tool {
      name = "search", description = "Search the notes.",
      parameters = { type = "object", properties = { q = { type = "string" } }, required = { "q" } },
      handler = function(args)
        tool_calls = tool_calls + 1
        return { hits = 1, first = args.q }
      end,
    } },
  }
  for _ = 1, n do
    agent:reset()
    local res, err = agent:run("Look this up.")
    -- The server always answers with a tool call, so every run must end at max_turns.
    if res or err.kind ~= "max_turns" then fail(err or "the agent stopped before max_turns") end
    requests = requests + err.result.turns
  end
else
  error("unknown workload " .. tostring(workload))
end

print(string.format('{"chunks":%d,"content_bytes":%d,"requests":%d,"tool_calls":%d}',
  chunks, content_bytes, requests, tool_calls))
