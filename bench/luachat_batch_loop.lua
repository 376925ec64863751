-- bench/luachat_batch_loop.lua: the "plain luachat.spawn loop" contender of the
-- batch workload in `make bench`: what a script would write without
-- luachat.batch: CONCURRENCY tasks pulling lines from the requests file,
-- client:post for each body, one output line written per answer.
-- No validation, resume, rate limits or retries: the floor luachat.batch adds to.
-- Never: times itself (the harness measures the whole process with wait4).
--
-- Usage: luachat bench/luachat_batch_loop.lua IN.jsonl OUT.jsonl BASE_URL CONCURRENCY
-- Prints {"requests": N, "ok": N}.
local luachat = require "luachat"
local json = luachat.json

local input, output, base_url, conc = arg[1], arg[2], arg[3], tonumber(arg[4] or "64")
local client = luachat.client { base_url = base_url, api_key = "sk-bench", max_retries = 0 }
local out = assert(io.open(output, "wb"))
local lines = io.lines(input)
local n, ok = 0, 0

local function worker()
  for line in lines do
    local req = json.decode(line)
    local res, err = client:post("chat/completions", req.body)
    n = n + 1
    if res then ok = ok + 1 end
    out:write(json.encode { custom_id = req.custom_id,
      response = res and { status_code = 200, body = res } or json.null,
      error = err and { code = err.kind, message = err.message } or json.null }, "\n")
    out:flush()
  end
end

local tasks = {}
for i = 1, conc do tasks[i] = luachat.spawn(worker) end
for _, t in ipairs(tasks) do assert(t:wait() ~= nil or true) end
out:close()
print(json.encode { requests = n, ok = ok })
