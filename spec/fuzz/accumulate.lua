-- accumulate.lua: the Lua half of the accumulation fuzzer (spec/c/fuzz_accumulate.c).
-- Returns check(events): decode each SSE data string, feed the accumulator,
-- and raise "invariant: ..." when a property that must hold does not.
-- Also differential: a second accumulator takes plain chunks through the C
-- text path (acc:add_data: core.scan_text, then acc:add_text) and must end with the same result.
local core = require "luachat.core"
local json = require "luachat.json"
local stream = require "luachat.stream"

local CHUNK_DECODE = { surrogates = "wtf8" } -- as chat_stream.lua decodes events

return function(events)
  local acc, fast = stream.accumulator(), stream.accumulator()
  local text = {}
  for _, data in ipairs(events) do
    if not fast:add_data(data) then
      local c = json.decode(data, CHUNK_DECODE)
      if type(c) == "table" then fast:add(c) end
    end
    local chunk = json.decode(data, CHUNK_DECODE)
    if type(chunk) == "table" then
      local err = acc:add(chunk)
      -- an error chunk is merged like any other (nothing it carries is lost), then reported
      if err and (type(err.message) ~= "string" or err.message == "" or err.message:find("\n")) then
        error("invariant: error message must be one non-empty line")
      end
      if type(chunk.choices) == "table" then
        for _, c in ipairs(chunk.choices) do
          if type(c) == "table" then
            local idx = type(c.index) == "number" and c.index or 0
            local d = type(c.delta) == "table" and c.delta or (type(c.message) == "table" and c.message) or nil
            if idx == 0 and d and type(d.content) == "string" then text[#text + 1] = d.content end
          end
        end
      end
    end
  end
  local final = acc:result()
  if type(final) ~= "table" or final.object ~= "chat.completion" then error("invariant: final shape") end
  if json.encode(final, { sort_keys = true }) ~= json.encode(fast:result(), { sort_keys = true }) then
    error("invariant: the C fast path and the Lua path accumulated different results")
  end
  -- (surrogate halves split across deltas are joined, leftovers become U+FFFD)
  local expected = stream.join_surrogate_halves(table.concat(text))
  for _, c in ipairs(final.choices) do
    if c.index == 0 then
      local got = c.message.content
      if got == json.null then got = "" end
      if got ~= expected then error("invariant: content is not the concatenation of the deltas") end
      for _, call in ipairs(c.message.tool_calls or {}) do
        if type(call["function"].arguments) ~= "string" then error("invariant: arguments must be a string") end
      end
    end
  end
  -- the final must always be sendable back as JSON, and read back the same
  local ok, text_json = pcall(json.encode, final, { sort_keys = true })
  if not ok then error("invariant: final cannot be encoded: " .. tostring(text_json)) end
  local back = json.decode(text_json)
  if json.encode(back, { sort_keys = true }) ~= text_json then error("invariant: final does not round-trip") end
end
