-- luachat.batch_cli: `luachat batch`: the command line of luachat.batch and
-- luachat.batch_remote.
--
-- Owns: the batch options and their --help text, the shard from the
-- environment (--shards), the progress line and the summary on stderr, and
-- the exit status (0 every request answered, 1 some failed, 2 usage or
-- input, 130 interrupted).
-- Never: writes to stdout (but --help), prints an API key, or calls os.exit.
local luachat = require "luachat"
local batch = require "luachat.batch"
local options = require "luachat.cli_options"
local term = require "luachat.cli_term"
local cli_error = require "luachat.cli_error"

local EXIT = options.EXIT

local M = {}

M.HELP = [[
usage: luachat batch REQUESTS.jsonl -o RESULTS.jsonl [options]
       luachat batch --remote-status BATCH_ID -o RESULTS.jsonl [options]

Runs every request of a file in the OpenAI Batch input format, one a line:
  {"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions", "body": {...}}
(method and url optional; url is resolved against the base URL, so /v1/... works
with a base URL ending in /v1; a query in url, ?api-version=..., follows the
base URL's) and writes one line per request to RESULTS in the OpenAI Batch
output format, in completion order, each line flushed as it comes.
The input is checked before anything is sent (exit 2 naming the lines); a pipe
(/dev/stdin, <(...)) is copied to a temporary file first (one with no name, in
/tmp: nothing is left behind, even by kill -9). REQUESTS.jsonl is -, standard
input, the same way: cat requests.jsonl | luachat batch - -o results.jsonl.

Options:
  -o, --output FILE      the results (required, not the input, not -: --resume
                         reads them back); its directory must exist; {shard}
                         in the name becomes K
  --concurrency N        requests in flight at once (64)
  --rpm N                at most N requests a minute (requests evenly spaced)
  --tpm N                at most N tokens a minute (estimated from each body,
                         corrected by the answer's usage)
  --resume               continue: skip every custom_id RESULTS already answers
                         (a cut last line is dropped and its request runs again;
                         a line that is not a result is refused, exit 2)
  --shard K/N            only the K-th of N slices of the input (0 <= K < N; by
                         a hash of custom_id, the same for every machine)
  --shards N             the same, K from JOB_COMPLETION_INDEX (Kubernetes
                         Indexed Job) or SLURM_ARRAY_TASK_ID (minus
                         SLURM_ARRAY_TASK_MIN when set)
  --max-retries N        retries of a request on 429, 5xx and network errors,
                         after Retry-After (5); a 429 pauses every request
  --remote               hand the file to the provider's Batch API instead: upload
                         (/files), create (/batches), wait, download into RESULTS
  --poll-interval S      with --remote: seconds between status checks (10)
  --remote-status ID     wait for a batch created earlier, download its results
  --quiet                no progress line and no summary
  -m, --model NAME       the model for lines whose body has none (default: as for -p:
                         LUACHAT_MODEL, the profile's model)
  -P, --profile NAME     the provider (see luachat -p --help)
  --base-url URL         the API's base URL
  -h, --help             this help

Progress (done/total, ok/failed, requests/s, tokens, ETA) goes to stderr when it
is a terminal; a summary at the end. Exit status: 0 every request answered, 1 some
failed (their lines are written too), 2 usage, input or file error, 130 interrupted
(what completed is written; --resume continues). See docs/BATCH.md.
]]

M.USAGE = "usage: luachat batch REQUESTS.jsonl -o RESULTS.jsonl [options]  (try 'luachat batch --help')"

local VALUE_OPTS = {
  ["-o"] = "output", ["--output"] = "output",
  ["--concurrency"] = "concurrency", ["--rpm"] = "rpm", ["--tpm"] = "tpm",
  ["--shard"] = "shard", ["--shards"] = "shards",
  ["--max-retries"] = "max_retries", ["--poll-interval"] = "poll_interval",
  ["--remote-status"] = "remote_status",
  ["-m"] = "model", ["--model"] = "model",
  ["-P"] = "profile", ["--profile"] = "profile",
  ["--base-url"] = "base_url",
}
local FLAG_OPTS = {
  ["--resume"] = "resume", ["--remote"] = "remote", ["--quiet"] = "quiet",
  ["-h"] = "help", ["--help"] = "help",
}
local INTEGERS = { concurrency = 1, rpm = 1, tpm = 1, max_retries = 0, shards = 1 }

-- parse(args) -> opts | nil, message. args: what follows "batch".
-- env: a getenv function (for --shards).
local BATCH_RULES = {
  values = VALUE_OPTS, flags = FLAG_OPTS,
  positional = function(o, a)
    if o.input then return string.format("unexpected argument '%s' (one input file)", a) end
    o.input = a
  end,
}

function M.parse(args, env)
  env = env or os.getenv
  local o, uerr = options.scan(args, BATCH_RULES)
  if not o or o.help then return o, uerr end
  for f, min in pairs(INTEGERS) do
    if o[f] then
      local n = tonumber(o[f])
      if math.type(n) ~= "integer" or n < min then
        return nil, string.format("--%s needs a %s whole number, got '%s'", f:gsub("_", "-"),
          min == 0 and "non-negative" or "positive", o[f])
      end
      o[f] = n
    end
  end
  if o.poll_interval then
    local s = tonumber(o.poll_interval)
    if not s or s ~= s or s <= 0 or s == math.huge then
      return nil, string.format("--poll-interval needs a positive number of seconds, got '%s'", o.poll_interval)
    end
    o.poll_interval = s
  end
  if o.remote_status then
    if o.input then return nil, "--remote-status takes no input file" end
  elseif not o.input then
    return nil, "give the requests file: luachat batch REQUESTS.jsonl -o RESULTS.jsonl"
  end
  if not o.output then return nil, "give the results file: -o RESULTS.jsonl" end
  if o.output == "-" then
    return nil, "-o -: the results cannot go to standard output (--resume reads them back): give a file"
  end
  if o.shard and o.shards then return nil, "--shard and --shards cannot be used together" end
  if o.shard then
    local k, n = batch.parse_shard(o.shard)
    if not k then return nil, n end
    o.shard = { k, n }
  elseif o.shards then
    local v, from = env("JOB_COMPLETION_INDEX"), "JOB_COMPLETION_INDEX"
    if v == nil or v == "" then v, from = env("SLURM_ARRAY_TASK_ID"), "SLURM_ARRAY_TASK_ID" end
    if v == nil or v == "" then
      return nil, "--shards needs JOB_COMPLETION_INDEX (Kubernetes) or SLURM_ARRAY_TASK_ID (Slurm) set; or give --shard K/N"
    end
    local k = tonumber(v)
    local min = from == "SLURM_ARRAY_TASK_ID" and tonumber(env("SLURM_ARRAY_TASK_MIN") or "") or 0
    if math.type(k) ~= "integer" or not math.type(min) then
      return nil, string.format("%s is not a whole number: '%s'", from, v)
    end
    k = k - min
    if k < 0 or k >= o.shards then
      return nil, string.format("%s=%s gives shard %d, not in 0..%d (--shards %d)", from, v, k, o.shards - 1, o.shards)
    end
    o.shard = { k, o.shards }
  end
  if o.remote and (o.shard or o.rpm or o.tpm) then
    return nil, "--remote sends the whole file to the provider: no --shard, --rpm or --tpm"
  end
  if o.shard then
    o.output = o.output:gsub("{shard}", tostring(o.shard[1]))
  elseif o.output:find("{shard}", 1, true) then
    return nil, "-o names {shard} but no shard is given: add --shard K/N or --shards N, or drop {shard}"
  end
  return o
end

local function fmt_secs(s)
  if s ~= s or s == math.huge then return "?" end
  s = math.floor(s + 0.5)
  if s >= 3600 then return string.format("%dh%02dm", s // 3600, s % 3600 // 60) end
  if s >= 60 then return string.format("%dm%02ds", s // 60, s % 60) end
  return string.format("%ds", s)
end

-- A rate as the progress and summary lines show it: one decimal below 10
-- (0.4, not 0), whole numbers from 10 up.
function M.rate_text(rate)
  return string.format(rate < 9.95 and "%.1f" or "%.0f", rate)
end

-- The progress line's text for a running summary.
function M.progress_text(s, elapsed)
  local done = s.ok + s.failed
  local todo = s.total - s.skipped
  local rate = elapsed > 0 and done / elapsed or 0
  local eta = rate > 0 and (todo - done) / rate or math.huge
  return string.format("%d/%d done, %d ok, %d failed%s, %s req/s, %d tokens, ETA %s", done + s.skipped, s.total,
    s.ok, s.failed, s.skipped > 0 and (", " .. s.skipped .. " skipped") or "", M.rate_text(rate), s.tokens, fmt_secs(eta))
end

-- A progress writer: redraws one stderr line at most 5 times a second.
local function progress(show)
  if not show then return nil, function() end end
  local last = 0
  local shown = false
  local function update(s)
    local t = luachat.now()
    if t - last < 0.2 then return end
    last = t
    io.stderr:write("\r\27[K", M.progress_text(s, t - s.started))
    io.stderr:flush()
    shown = true
  end
  local function clear()
    if shown then
      io.stderr:write("\r\27[K")
      io.stderr:flush()
    end
  end
  return update, clear
end

-- The summary line's text for a finished run: "1 request" / "2 requests", the
-- rate as M.rate_text shows it.
function M.summary_text(s)
  local secs = s.seconds or 0
  local done = s.ok + s.failed
  return string.format("luachat: batch: %d request%s: %d ok, %d failed, %d skipped, %d tokens in %.1f s%s -> %s",
    s.total, s.total == 1 and "" or "s", s.ok, s.failed, s.skipped, s.tokens, secs,
    secs > 0 and done > 0 and string.format(" (%s req/s)", M.rate_text(done / secs)) or "", s.output)
end

local function summary_line(s, quiet)
  if quiet then return end
  io.stderr:write(M.summary_text(s), "\n")
end

-- The library's words for its resume option, in the command line's.
local function cli_words(s)
  return (tostring(s):gsub("resume = true", "--resume"))
end

-- The message of a run's error, problems listed one a line. File problems
-- (input, usage: nothing was sent) exit 2 and a file that cannot be written
-- exits 1, each as "luachat: batch: ..."; the provider's errors (--remote)
-- name the profile. o: the options (a --remote 404 names the batch id).
local function report_error(err, s, o)
  if type(err) == "table" and err.kind == "input" and type(err.problems) == "table" then
    io.stderr:write("luachat: batch: ", term.one_line(cli_words(err.headline or err.message), 400), ":\n")
    for _, p in ipairs(err.problems) do io.stderr:write("  ", term.one_line(p, 400), "\n") end
    return EXIT.usage
  end
  if type(err) == "table" and (err.kind == "usage" or err.kind == "input" or err.kind == "environment") then
    io.stderr:write("luachat: batch: ", term.one_line(cli_words(err.message), 400), "\n")
    return err.kind == "environment" and EXIT.error or EXIT.usage
  end
  if type(err) == "table" and tonumber(err.status) == 404 and o and (o.remote or o.remote_status) then
    -- not a model name: a batch id the provider does not know, or no Batch API at this base URL
    local line = cli_error.format_error({ kind = err.kind, message = err.message }, s)
    io.stderr:write(line, " — ", o.remote_status and ("check the batch id (" .. term.one_line(o.remote_status, 80)
      .. ") and the base URL") or "check that the base URL's provider has a Batch API (/files, /batches)", "\n")
    return EXIT.error
  end
  io.stderr:write(cli_error.format_error(err, s), "\n")
  return EXIT.error
end

-- The run context (luachat.cli_setup). The bodies name their model, so a
-- profile with no default model (vllm) needs no -m here: when the settings
-- lack only a model, a placeholder satisfies the check and nothing is filled in.
local function setup_context(o)
  local setup = require "luachat.cli_setup"
  local profiles = require "luachat.profiles"
  local model, none = o.model, false
  if not model then
    local getenv = setup.getenv
    local config = profiles.load_config(profiles.config_path { XDG_CONFIG_HOME = getenv("XDG_CONFIG_HOME"),
      HOME = getenv("HOME") })
    if config then
      local s, err = profiles.resolve({ profile = o.profile, base_url = o.base_url }, profiles.environment(config), config)
      if not s and tostring(err):find(": no model: ", 1, true) then model, none = "-", true end
    end
  end
  local ctx, code = setup.setup { profile = o.profile, base_url = o.base_url, model = model }
  if ctx and none then ctx.model = nil end
  return ctx, code
end

-- main(args) -> exit code. args: argv without the program name, args[1] == "batch".
function M.main(args)
  local rest = table.move(args, 2, #args, 1, {})
  local o, uerr = M.parse(rest)
  if not o then
    io.stderr:write("luachat batch: ", uerr, "\n", M.USAGE, "\n")
    return EXIT.usage
  end
  if o.help then
    io.stdout:write(M.HELP)
    return EXIT.ok
  end
  local ctx, code = setup_context(o)
  if not ctx then return code end
  local show = not o.quiet and ctx.err_tty
  local update, clear = progress(show)
  local ok, intr, res, rerr = term.protect(function()
    if o.remote or o.remote_status then
      local remote = require "luachat.batch_remote"
      return remote.run {
        client = ctx.client, input = o.input, output = o.output, batch_id = o.remote_status,
        poll_interval = o.poll_interval, max_retries = o.max_retries or 5, model = ctx.model,
        resume = o.resume,
        on_created = function(b)
          o.remote_status = o.remote_status or b.id -- for the Ctrl-C message
          if o.quiet then return end
          io.stderr:write(string.format("luachat: batch: created %s (if this stops: luachat batch --remote-status %s -o %s)\n",
            tostring(b.id), tostring(b.id), o.output))
        end,
        on_status = show and function(b)
          local c = type(b.request_counts) == "table" and b.request_counts or {}
          io.stderr:write("\r\27[K", string.format("batch %s: %s, %s/%s done, %s failed", tostring(b.id),
            tostring(b.status), tostring(c.completed or 0), tostring(c.total or "?"), tostring(c.failed or 0)))
          io.stderr:flush()
        end or nil,
      }
    end
    return batch.run {
      client = ctx.client, input = o.input, output = o.output, concurrency = o.concurrency,
      rpm = o.rpm, tpm = o.tpm, resume = o.resume, shard = o.shard, model = ctx.model,
      max_retries = o.max_retries or 5, on_progress = show and update or nil,
    }
  end)
  clear()
  if intr then
    -- on a terminal, the line starts clean (after "^C"); elsewhere no escapes
    local bol = ctx.err_tty and "\r\27[K" or ""
    if o.remote or o.remote_status then
      io.stderr:write(bol, "luachat: batch: interrupted", o.remote_status and string.format(
        "; the batch goes on: luachat batch --remote-status %s -o %s", o.remote_status, o.output) or "", "\n")
      return EXIT.interrupted
    end
    -- nothing completed (Ctrl-C while the input was copied or checked, or before a first
    -- answer): the results file is missing or empty, and there is nothing to resume
    local f = io.open(o.output, "rb")
    local size = f and f:seek("end") or 0
    if f then f:close() end
    if size == 0 then
      io.stderr:write(bol, "luachat: batch: interrupted before any request completed; nothing was written\n")
      return EXIT.interrupted
    end
    io.stderr:write(bol, "luachat: batch: interrupted; what completed is in ", o.output, " (--resume continues)\n")
    return EXIT.interrupted
  end
  if not ok then
    io.stderr:write(cli_error.format_error(res, ctx.s), "\n")
    return EXIT.error
  end
  if not res then return report_error(rerr, ctx.s, o) end
  summary_line(res, o.quiet)
  return res.failed > 0 and EXIT.error or EXIT.ok
end

return M
