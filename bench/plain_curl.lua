-- bench/plain_curl.lua: the "plain Lua" contender of `make bench`, run by stock lua5.4.
--
-- Owns: the approach of popular editor plugins: spawn `curl -sN` with
-- io.popen, split the SSE stream into lines in Lua, decode each `data:` line
-- with lua-cjson, count chunks and content bytes, print one JSON line.
-- Never: uses luachat (this is the baseline it is compared with).
--
-- Usage: lua5.4 bench/plain_curl.lua WORKLOAD BASE_URL BODY_FILE
--   WORKLOAD = stream_text | stream_tool | startup
local cjson = require "cjson"

local workload, base_url, body_file = arg[1], arg[2], arg[3]
if workload == "startup" then
  print('{"ok":true}')
  return
end

local decode = cjson.decode
local cmd = string.format("curl -sN -X POST -H 'Content-Type: application/json' " ..
  "-H 'Authorization: Bearer sk-bench' --data-binary @%s %s/chat/completions", body_file, base_url)
local p = assert(io.popen(cmd, "r"))

local chunks, content_bytes = 0, 0
for line in p:lines() do
  if line:sub(1, 6) == "data: " then
    local data = line:sub(7)
    if data == "[DONE]" then break end
    local chunk = decode(data)
    chunks = chunks + 1
    local choice = chunk.choices[1]
    if choice then
      local delta = choice.delta
      if type(delta.content) == "string" then content_bytes = content_bytes + #delta.content end
      if type(delta.tool_calls) == "table" then
        for _, call in ipairs(delta.tool_calls) do
          local fn = call["function"]
          if fn and type(fn.arguments) == "string" then content_bytes = content_bytes + #fn.arguments end
        end
      end
    end
  end
end
local ok = p:close()
if not ok then
  io.stderr:write("plain_curl: curl failed\n")
  os.exit(1)
end
print(string.format('{"chunks":%d,"content_bytes":%d,"requests":1,"tool_calls":0}', chunks, content_bytes))
