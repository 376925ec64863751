-- bench/luachat_core_fanout.lua: the engine floor of `make bench`'s scale rows:
-- N streams started at once on luachat.core alone (curl multi handles + SSE
-- parser + one Lua string per event), each drained until done, with no client,
-- request building, JSON, accumulator or tasks. Run by ./luachat; the profile
-- section compares it with the same N streams through client:stream.
-- Never: a contender (no retries, no errors handled beyond a failed check).
--
-- Usage: luachat bench/luachat_core_fanout.lua BASE_URL N
local core = require "luachat.core"

local base_url, n = arg[1], tonumber(arg[2])
-- The body and headers client:stream sends for bench/luachat_client.lua's request.
local body = '{"model":"bench","messages":[{"role":"user","content":"Tell me a long story."}],'
  .. '"stream":true,"stream_options":{"include_usage":true}}'
local spec = {
  method = "POST", url = base_url .. "/chat/completions", stream = true, body = body,
  headers = { "Accept: text/event-stream", "Content-Type: application/json", "Authorization: Bearer sk-bench" },
}

local open, left, events = {}, n, 0
for _ = 1, n do open[assert(core.start(spec))] = true end
while left > 0 do
  local ready = assert(core.poll(1))
  for i = 1, #ready do
    local t = ready[i]
    if open[t] then
      local evs = t:take()
      while evs do
        events = events + #evs
        evs = t:take()
      end
      if t:done() then
        local status = t:result().status
        if status ~= 200 then error("HTTP status " .. tostring(status)) end
        t:close()
        open[t] = nil
        left = left - 1
      end
    end
  end
end
print(string.format('{"events":%d,"requests":%d}', events, n))
