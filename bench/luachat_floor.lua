-- bench/luachat_floor.lua: the layers under luachat's stream API, for the
-- profile section of `make bench`: luachat.core alone (curl multi + SSE
-- parser + one Lua string per event), optionally decoding each event with
-- luachat.json (cjson + fix-ups) or plain cjson. Run by ./luachat.
-- Never: a contender (it skips accumulation, errors and retries on purpose).
--
-- Usage: luachat bench/luachat_floor.lua BASE_URL none|cjson|luachat
local core = require "luachat.core"

local base_url, mode = arg[1], arg[2] or "none"
local decode = (mode == "cjson" and require("cjson").decode) or (mode == "luachat" and core.json_decode) or nil
local t = core.start {
  method = "POST", url = base_url .. "/chat/completions", stream = true,
  headers = { "Content-Type: application/json" }, body = '{"model":"bench","stream":true}',
}
local events = 0
while true do
  local evs = t:take()
  if evs then
    for i = 1, #evs do
      events = events + 1
      local ev = evs[i]
      if decode and ev ~= "[DONE]" then assert(decode(ev)) end
    end
  elseif t:done() then
    break
  else
    core.poll(1)
  end
end
assert(t:result().status == 200)
print(string.format('{"events":%d}', events))
