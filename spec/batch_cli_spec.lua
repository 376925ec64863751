-- `luachat batch` (issue 18) as a process: exit statuses, bad input refused
-- with nothing sent, kill -9 then --resume, Ctrl-C (SIGINT: 130, what
-- completed written, --resume continues), --shards from the scheduler's
-- environment, --remote and --remote-status against the test server's Files
-- and Batches API, --help. Events, not sleeps, say when to kill: the spec
-- waits until the results file has lines.
local server = require "spec.helpers.server"
local proc = require "spec.helpers.proc"
local cjson = require "cjson"

local HOST = proc.host
local q = proc.shell_quote

local function completion(tokens)
  return { json = { id = "chatcmpl-b", object = "chat.completion", model = "m",
    choices = { { index = 0, message = { role = "assistant", content = "hi" }, finish_reason = "stop" } },
    usage = { prompt_tokens = 1, completion_tokens = tokens - 1, total_tokens = tokens } } }
end

local function write_input(path, n)
  local f = assert(io.open(path, "wb"))
  for i = 1, n do
    f:write(cjson.encode { custom_id = "r" .. i, body = { model = "m", messages = { { role = "user", content = "q" .. i .. "." } } } }, "\n")
  end
  f:close()
end

local read_lines = proc.read_lines

-- Decoded lines by custom_id; fails on a duplicate id or a line that is not JSON.
local function results(path)
  local by, n = {}, 0
  for _, l in ipairs(read_lines(path)) do
    local ok, d = pcall(cjson.decode, l)
    assert(ok, "not JSON: " .. l)
    assert(by[d.custom_id] == nil, "custom_id written twice: " .. tostring(d.custom_id))
    by[d.custom_id] = d
    n = n + 1
  end
  return by, n
end

local function sent(reqs, i)
  local n = 0
  for _, r in ipairs(reqs) do
    if r.body:find('"q' .. i .. '."', 1, true) then n = n + 1 end
  end
  return n
end

describe("luachat batch", function()
  local srv, dir, env
  setup(function() srv = server.start() end)
  teardown(function() srv:stop() end)
  before_each(function()
    srv:reset()
    srv:default(completion(10))
    dir = proc.tmpdir()
    env = "env -u LUACHAT_PROFILE -u OPENAI_BASE_URL XDG_CONFIG_HOME=" .. q(dir) .. " OPENAI_API_KEY=sk-batch-cli "
  end)
  after_each(function() os.execute("rm -rf " .. q(dir)) end)

  local function batch(args)
    return proc.run(string.format("%s%s batch %s --base-url %s", env, q(HOST), args, q(srv.base_url)))
  end

  it("exits 0 when every request succeeded, writes the summary on stderr, nothing on stdout", function()
    write_input(dir .. "/in.jsonl", 20)
    local out, err, code = batch(q(dir .. "/in.jsonl") .. " -o " .. q(dir .. "/out.jsonl") .. " --concurrency 3")
    assert.equal(0, code)
    assert.equal("", out)
    assert.matches("^luachat: batch: 20 requests: 20 ok, 0 failed, 0 skipped, 200 tokens in [%d.]+ s", err)
    assert.not_matches("\r", err) -- no progress line: stderr is not a terminal
    local by, n = results(dir .. "/out.jsonl")
    assert.equal(20, n)
    assert.equal(200, by.r1.response.status_code)
    -- --quiet: nothing at all
    out, err, code = batch(q(dir .. "/in.jsonl") .. " -o " .. q(dir .. "/out.jsonl") .. " --resume --quiet")
    assert.same({ "", "", 0 }, { out, err, code })
  end)

  it("one request: \"1 request\" in the summary, not \"1 requests\"", function()
    write_input(dir .. "/in.jsonl", 1)
    local out, err, code = batch(q(dir .. "/in.jsonl") .. " -o " .. q(dir .. "/out.jsonl"))
    assert.equal(0, code)
    assert.equal("", out)
    assert.matches("^luachat: batch: 1 request: 1 ok, 0 failed, 0 skipped, 10 tokens in [%d.]+ s", err)
  end)

  it("exits 1 when some failed, their lines written too", function()
    write_input(dir .. "/in.jsonl", 5)
    srv:control("/_control/rules", { rules = {
      { contains = '"q2."', response = { status = 400, json = { error = { message = "no" } } } } } })
    local _, err, code = batch(q(dir .. "/in.jsonl") .. " -o " .. q(dir .. "/out.jsonl"))
    assert.equal(1, code)
    assert.matches("5 requests: 4 ok, 1 failed", err, 1, true)
    local by, n = results(dir .. "/out.jsonl")
    assert.equal(5, n)
    assert.equal(400, by.r2.response.status_code)
  end)

  it("refuses bad input with exit 2, naming the lines and duplicate ids, nothing sent", function()
    proc.write_file(dir .. "/in.jsonl", '{"custom_id":"a","body":{}}\n{"custom_id":"a","body":{}}\n{"custom_id":"b","body":{}\n')
    local out, err, code = batch(q(dir .. "/in.jsonl") .. " -o " .. q(dir .. "/out.jsonl"))
    assert.equal(2, code)
    assert.equal("", out)
    assert.matches("in.jsonl: 2 problems in the input, nothing was sent:\n", err, 1, true)
    assert.matches("  line 2: duplicate custom_id 'a' (first on line 1)\n", err, 1, true)
    assert.matches("  line 3: invalid JSON", err, 1, true)
    assert.equal(0, #srv:requests())
    assert.is_nil(io.open(dir .. "/out.jsonl"))
  end)

  it("a profile with no default model (vllm) needs no -m: the bodies name theirs", function()
    proc.write_file(dir .. "/in.jsonl", '{"custom_id":"a","body":{"model":"served","messages":[]}}\n'
      .. '{"custom_id":"b","body":{"messages":[]}}\n')
    local _, err, code = proc.run(string.format("%s%s batch %s -o %s -P vllm --base-url %s", env, q(HOST),
      q(dir .. "/in.jsonl"), q(dir .. "/out.jsonl"), q(srv.base_url)))
    assert.equal(0, code, err)
    local models = {}
    for _, r in ipairs(srv:requests()) do models[#models + 1] = tostring(r.json.model) end
    table.sort(models)
    assert.same({ "nil", "served" }, models) -- nothing filled in
    -- with -m, bodies without a model get it
    _, err, code = proc.run(string.format("%s%s batch %s -o %s -P vllm -m mine --base-url %s", env, q(HOST),
      q(dir .. "/in.jsonl"), q(dir .. "/out2.jsonl"), q(srv.base_url)))
    assert.equal(0, code, err)
    local reqs = srv:requests()
    models = { tostring(reqs[3].json.model), tostring(reqs[4].json.model) }
    table.sort(models)
    assert.same({ "mine", "served" }, models)
  end)

  it("usage errors exit 2", function()
    write_input(dir .. "/in.jsonl", 1)
    local cases = {
      { "", "give the requests file: luachat batch REQUESTS.jsonl" },
      { "-o x.jsonl", "give the requests file" },
      { q(dir .. "/in.jsonl"), "give the results file: -o RESULTS.jsonl" },
      { q(dir .. "/in.jsonl") .. " -o " .. q(dir .. "/x-{shard}.jsonl"), "-o names {shard} but no shard is given" },
      { q(dir .. "/in.jsonl") .. " -o x --shard 4/4", "--shard wants K/N with 0 <= K < N" },
      { q(dir .. "/in.jsonl") .. " -o x --concurrency 0", "--concurrency needs a positive whole number, got '0'" },
      { q(dir .. "/in.jsonl") .. " -o x --shards 2", "--shards needs JOB_COMPLETION_INDEX" },
      { q(dir .. "/in.jsonl") .. " -o x --frobnicate", "unrecognized option '--frobnicate'" },
      { q(dir .. "/in.jsonl") .. " -o x --remote --rpm 5", "--remote sends the whole file" },
    }
    for _, c in ipairs(cases) do
      local _, err, code = batch(c[1])
      assert.equal(2, code, c[1])
      assert.matches(c[2], err, 1, true)
    end
    assert.equal(0, #srv:requests())
    assert.is_nil(io.open(dir .. "/x-{shard}.jsonl"))
  end)

  it("reads an input that can be read only once (a pipe, /dev/stdin, <(...)): every request sent", function()
    write_input(dir .. "/in.jsonl", 20)
    local _, err, code = proc.run(string.format("cat %s | %s%s batch /dev/stdin -o %s --base-url %s", q(dir .. "/in.jsonl"),
      env, q(HOST), q(dir .. "/o1.jsonl"), q(srv.base_url)))
    assert.equal(0, code, err)
    assert.matches("20 requests: 20 ok, 0 failed, 0 skipped", err, 1, true)
    local _, n = results(dir .. "/o1.jsonl")
    assert.equal(20, n)
    _, err, code = proc.run(string.format("bash -c %s", q(string.format("%s%s batch <(cat %s) -o %s --base-url %s",
      env, q(HOST), q(dir .. "/in.jsonl"), q(dir .. "/o2.jsonl"), q(srv.base_url)))))
    assert.equal(0, code, err)
    _, n = results(dir .. "/o2.jsonl")
    assert.equal(20, n)
    assert.equal(40, #srv:requests())
    -- --remote reads it three times (check, endpoint, upload)
    srv:control("/_control/batch_polls", { n = 0 })
    _, err, code = proc.run(string.format("cat %s | %s%s batch /dev/stdin -o %s --remote --poll-interval 0.05 --base-url %s",
      q(dir .. "/in.jsonl"), env, q(HOST), q(dir .. "/o4.jsonl"), q(srv.base_url)))
    assert.equal(0, code, err)
    assert.matches("20 requests: 20 ok, 0 failed", err, 1, true)
    _, n = results(dir .. "/o4.jsonl")
    assert.equal(20, n)
    -- "-" is standard input, copied as /dev/stdin is (and named so); an existing results
    -- file is refused in the command line's words
    _, err, code = proc.run(string.format("cat %s | %s%s batch - -o %s --base-url %s",
      q(dir .. "/in.jsonl"), env, q(HOST), q(dir .. "/o5.jsonl"), q(srv.base_url)))
    assert.equal(0, code, err)
    _, n = results(dir .. "/o5.jsonl")
    assert.equal(20, n)
    _, err, code = proc.run(string.format("%s%s batch - -o %s --base-url %s <%s", env, q(HOST), q(dir .. "/o5.jsonl"),
      q(srv.base_url), q(dir .. "/in.jsonl")))
    assert.same({ 2, "luachat: batch: " .. dir .. "/o5.jsonl already has results: pass --resume to continue it, or remove it\n" },
      { code, err })
    _, err, code = proc.run(string.format("printf '{}\\n' | %s%s batch - -o %s --base-url %s", env, q(HOST),
      q(dir .. "/o6.jsonl"), q(srv.base_url)))
    assert.equal(2, code, err)
    assert.matches("luachat: batch: standard input: 1 problem in the input, nothing was sent:\n  line 1: no custom_id", err, 1, true)
    -- a bad piped input is refused as a file would be, naming the input
    _, err, code = proc.run(string.format("printf '{}\\n' | %s%s batch /dev/stdin -o %s --base-url %s", env, q(HOST),
      q(dir .. "/o3.jsonl"), q(srv.base_url)))
    assert.equal(2, code, err)
    assert.matches("luachat: batch: /dev/stdin: 1 problem in the input, nothing was sent:\n  line 1: no custom_id", err, 1, true)
  end)

  it("a piped input's temporary copy has no name while it is read: kill -9 leaves nothing behind", function()
    write_input(dir .. "/in.jsonl", 5)
    -- the first request is answered only once a second arrives, which --concurrency 1 never
    -- sends: the run is mid-way, on both passes' one handle, until it is killed
    local held = completion(10)
    held.hold_until, held.hold_timeout = 2, 60
    srv:default(held)
    local out, pidfile = dir .. "/out.jsonl", dir .. "/pid"
    assert(os.execute(string.format("cat %s | %s%s batch /dev/stdin -o %s --concurrency 1 --base-url %s "
      .. ">/dev/null 2>&1 & echo $! >%s", q(dir .. "/in.jsonl"), env, q(HOST), q(out), q(srv.base_url), q(pidfile))))
    local pid = assert(tonumber(proc.read_file(pidfile)), "no pid")
    local function kill()
      os.execute("kill -9 " .. pid .. " 2>/dev/null")
      while server.alive(pid) do os.execute("sleep 0.02") end
    end
    -- the server has the first request: the copy is made and checked, the send pass is reading it
    while #srv:requests() == 0 and server.alive(pid) do os.execute("sleep 0.02") end
    local files = {} -- what the process has open that is a file of a file system
    local p = io.popen("for f in /proc/" .. pid .. "/fd/*; do readlink \"$f\"; done 2>/dev/null")
    for l in p:lines() do
      if l:sub(1, 1) == "/" and not l:find("^/dev/") and l ~= out then files[#files + 1] = l end
    end
    p:close()
    local alive = server.alive(pid)
    kill()
    assert.is_true(alive, "luachat batch ended before it was killed")
    assert.equal(1, #files, "open files: " .. table.concat(files, ", "))
    assert.matches(" %(deleted%)$", files[1]) -- unlinked from the start (or O_TMPFILE: never linked)
    assert.is_nil(io.open((files[1]:gsub(" %(deleted%)$", "")), "rb"), "the copy is still there: " .. files[1])
    assert.same({}, read_lines(out)) -- nothing was answered
    -- nothing of the run's beside its results: no copy of the input, no file of the output check
    -- (C's tmpfile() does not consult TMPDIR, so an empty TMPDIR would prove nothing)
    local ls = io.popen("ls -A " .. q(dir))
    assert.equal("in.jsonl\nout.jsonl\npid\n", ls:read("a"), "files left in the output's directory")
    ls:close()
    -- killed while it copies its input (the writer keeps the pipe open): the output check's file
    -- is gone before the copy starts, and the copy has no name
    local _, err, code = proc.run(string.format("(cat %s; sh -c 'echo $$ >%s; exec sleep 60') | %s%s batch - -o %s --base-url %s & "
      .. "pid=$!; until [ -s %s ] && ls -l /proc/$pid/fd 2>/dev/null | grep -q deleted || ! kill -0 $pid 2>/dev/null; do sleep 0.02; done; "
      .. "kill -9 $pid; kill $(cat %s); wait $pid",
      q(dir .. "/in.jsonl"), q(dir .. "/spid"), env, q(HOST), q(dir .. "/new.jsonl"), q(srv.base_url), q(dir .. "/spid"), q(dir .. "/spid")))
    assert.equal(128 + 9, code, err) -- killed, not ended
    ls = io.popen("ls -A " .. q(dir))
    assert.equal("in.jsonl\nout.jsonl\npid\nspid\n", ls:read("a"), "files left in the output's directory")
    ls:close()
  end)

  it("--resume refuses a results file that is the input or a copy of it, or has a corrupt line; nothing sent", function()
    write_input(dir .. "/in.jsonl", 5)
    os.execute("cp " .. q(dir .. "/in.jsonl") .. " " .. q(dir .. "/same.jsonl"))
    local _, err, code = batch(q(dir .. "/same.jsonl") .. " -o " .. q(dir .. "/same.jsonl") .. " --resume")
    assert.equal(2, code, err)
    assert.matches("luachat: batch: " .. dir .. "/same.jsonl is the requests file", err, 1, true)
    _, err, code = batch(q(dir .. "/in.jsonl") .. " -o " .. q(dir .. "/same.jsonl") .. " --resume")
    assert.equal(2, code, err)
    assert.matches("same.jsonl holds requests, not results", err, 1, true)
    assert.equal(0, #srv:requests())
    -- a corrupt line in the middle
    assert.equal(0, select(3, batch(q(dir .. "/in.jsonl") .. " -o " .. q(dir .. "/out.jsonl"))))
    local lines = read_lines(dir .. "/out.jsonl")
    lines[2] = "garbage"
    proc.write_file(dir .. "/out.jsonl", table.concat(lines, "\n") .. "\n")
    srv:reset()
    _, err, code = batch(q(dir .. "/in.jsonl") .. " -o " .. q(dir .. "/out.jsonl") .. " --resume")
    assert.equal(2, code, err)
    assert.matches("out.jsonl: 1 line is not a batch result, nothing was sent (fix or remove them, then run again with --resume):\n"
      .. "  line 2: invalid JSON", err, 1, true)
    assert.equal(0, #srv:requests())
  end)

  it("file problems: exit 2, 'luachat: batch:' and the system's words, no internal paths", function()
    write_input(dir .. "/in.jsonl", 1)
    local cases = {
      { q(dir .. "/nope.jsonl") .. " -o " .. q(dir .. "/o.jsonl"),
        "luachat: batch: cannot read the input: " .. dir .. "/nope.jsonl: No such file or directory\n" },
      { q(dir) .. " -o " .. q(dir .. "/o.jsonl"), "luachat: batch: cannot read the input: " .. dir .. ": Is a directory\n" },
      { q(dir .. "/in.jsonl") .. " -o " .. q(dir), "luachat: batch: cannot write the results to " .. dir .. ": Is a directory\n" },
      { q(dir .. "/in.jsonl") .. " -o " .. q(dir) .. " --resume",
        "luachat: batch: cannot write the results to " .. dir .. ": Is a directory\n" },
      { q(dir .. "/in.jsonl") .. " -o " .. q(dir) .. " --remote",
        "luachat: batch: cannot write the results to " .. dir .. ": Is a directory\n" },
      { q(dir .. "/in.jsonl") .. " -o " .. q(dir .. "/in.jsonl") .. " --remote --resume",
        "luachat: batch: " .. dir .. "/in.jsonl is the requests file: give another results file (-o)\n" },
      -- a missing directory: refused before the input is read (bad.jsonl's problem is not reported)
      { q(dir .. "/bad.jsonl") .. " -o " .. q(dir .. "/nodir/x.jsonl"),
        "luachat: batch: cannot write the results to " .. dir .. "/nodir/x.jsonl: No such file or directory\n" },
      { q(dir .. "/bad.jsonl") .. " -o " .. q(dir .. "/nodir/x.jsonl") .. " --remote",
        "luachat: batch: cannot write the results to " .. dir .. "/nodir/x.jsonl: No such file or directory\n" },
      { q(dir .. "/bad.jsonl") .. " -o " .. q(dir .. "/in.jsonl/x.jsonl") .. " --resume",
        "luachat: batch: cannot write the results to " .. dir .. "/in.jsonl/x.jsonl: Not a directory\n" },
      { q(dir .. "/in.jsonl") .. " -o -",
        "luachat batch: -o -: the results cannot go to standard output (--resume reads them back): give a file\n"
        .. "usage: luachat batch REQUESTS.jsonl -o RESULTS.jsonl [options]  (try 'luachat batch --help')\n" },
    }
    proc.write_file(dir .. "/bad.jsonl", "not json\n")
    for _, c in ipairs(cases) do
      local out, err, code = batch(c[1])
      assert.same({ "", c[2], 2 }, { out, err, code })
    end
    -- a directory no file can be made in (sysfs: not even by root), refused before the input is read
    local out, err, code = batch(q(dir .. "/bad.jsonl") .. " -o /sys/luachat-batch.jsonl")
    assert.same({ "", 2 }, { out, code }, err)
    local why = err:match("^luachat: batch: cannot write the results to /sys/luachat%-batch%.jsonl: ([^\n]*)\n$")
    assert.is_true(why == "Permission denied" or why == "Read-only file system", err)
    assert.equal(0, #srv:requests())
  end)

  it("LUACHAT_LOG=debug traces each request, its status and each retry decision", function()
    write_input(dir .. "/in.jsonl", 2)
    srv:control("/_control/rules", { rules = {
      { contains = '"q2."', response = { status = 500, json = { error = { message = "down" } }, headers = { ["retry-after-ms"] = "1" } } } } })
    local _, err, code = proc.run(string.format("LUACHAT_LOG=debug %s%s batch %s -o %s --max-retries 1 --concurrency 1 --base-url %s",
      env, q(HOST), q(dir .. "/in.jsonl"), q(dir .. "/out.jsonl"), q(srv.base_url)))
    assert.equal(1, code, err)
    assert.matches("luachat[debug] batch r1: POST " .. srv.base_url .. "/chat/completions -> 200 in", err, 1, true)
    assert.matches("luachat%[debug%] batch r2: POST [^\n]* %-> 500 in [^\n]*\n", err)
    assert.matches("luachat%[debug%] batch r2: POST [^\n]*: HTTP 500[^\n]*; retry 1 of 1 in 0%.00s\n", err)
    assert.matches("luachat%[debug%] batch r2: POST [^\n]* %-> 500 in [^\n]*%[attempt 2%]\n", err)
    assert.matches("luachat%[debug%] batch r2: POST [^\n]*; not retrying\n", err)
    assert.not_matches("sk%-batch%-cli", err)
  end)

  it("--remote-status with an unknown batch id: the hint names the batch id, not the model", function()
    local _, err, code = batch("--remote-status batch_nope -o " .. q(dir .. "/x.jsonl"))
    assert.equal(1, code, err)
    assert.matches("HTTP 404", err, 1, true)
    assert.matches("check the batch id (batch_nope) and the base URL", err, 1, true)
    assert.not_matches("model name", err, 1, true)
  end)

  it("on a terminal: a progress line on stderr (done/total, ok/failed, req/s, tokens, ETA), cleared before the summary", function()
    if os.execute("command -v script >/dev/null 2>&1") ~= true then
      pending("util-linux script(1) is not installed")
      return
    end
    write_input(dir .. "/in.jsonl", 5)
    -- script(1) gives the command a pseudo-terminal: stderr is a tty
    local cmd = string.format("%s%s batch %s -o %s --concurrency 1 --base-url %s", env, q(HOST), q(dir .. "/in.jsonl"),
      q(dir .. "/out.jsonl"), q(srv.base_url))
    local out, _, code = proc.run("script -qec " .. q(cmd) .. " /dev/null")
    assert.equal(0, code)
    assert.matches("\r\27%[K1/5 done, 1 ok, 0 failed, [%d.]+ req/s, 10 tokens, ETA %d+s", out)
    assert.matches("\r\27%[Kluachat: batch: 5 requests: 5 ok", out)
    out, _, code = proc.run("script -qec " .. q(cmd:gsub("%-o (%S+)", "-o %1 --resume --quiet")) .. " /dev/null")
    assert.equal(0, code)
    assert.equal("", out)
  end)

  it("--help describes the command; luachat --help names it", function()
    local out, _, code = proc.run(q(HOST) .. " batch --help")
    assert.equal(0, code)
    assert.matches("usage: luachat batch REQUESTS.jsonl -o RESULTS.jsonl", out, 1, true)
    for _, opt in ipairs { "--concurrency", "--rpm", "--tpm", "--resume", "--shard K/N", "--shards N",
      "--remote", "--poll-interval", "--max-retries", "--remote-status", "--quiet", "REQUESTS.jsonl is -, " } do
      assert.matches(opt, out, 1, true)
    end
    out = proc.run(q(HOST) .. " --help")
    assert.matches("batch FILE -o OUT", out, 1, true)
  end)

  it("kill -9, then --resume: every id exactly once, finished ones not sent again", function()
    write_input(dir .. "/in.jsonl", 40)
    local slow = completion(10)
    slow.delay = 0.05
    srv:default(slow)
    local out = dir .. "/out.jsonl"
    -- kill as soon as 10 lines are written
    proc.run(string.format("%s%s batch %s -o %s --concurrency 2 --base-url %s & pid=$!; "
      .. "while [ \"$(cat %s 2>/dev/null | wc -l)\" -lt 10 ] && kill -0 $pid 2>/dev/null; do sleep 0.02; done; "
      .. "kill -9 $pid; wait $pid", env, q(HOST), q(dir .. "/in.jsonl"), q(out), q(srv.base_url), q(out)))
    local before = results(out)
    local n_before = 0
    for _ in pairs(before) do n_before = n_before + 1 end
    assert.is_true(n_before >= 10 and n_before < 40, "lines before the kill: " .. n_before)
    local logged = #srv:requests()
    srv:default(completion(10))
    local _, err, code = batch(q(dir .. "/in.jsonl") .. " -o " .. q(out) .. " --resume")
    assert.equal(0, code, err)
    assert.matches("skipped", err)
    local after, n = results(out)
    assert.equal(40, n)
    for i = 1, 40 do assert.is_table(after["r" .. i]) end
    local reqs = srv:requests()
    for i = logged + 1, #reqs do
      local id = reqs[i].body:match('"q(%d+)%."')
      assert.is_nil(before["r" .. id], "r" .. id .. " was finished before the kill but sent again")
    end
  end)

  it("Ctrl-C: exit 130, what completed is written, --resume finishes", function()
    write_input(dir .. "/in.jsonl", 30)
    local slow = completion(10)
    slow.delay = 0.1
    srv:default(slow)
    local out = dir .. "/out.jsonl"
    local _, err, code = proc.run(string.format("%s%s batch %s -o %s --concurrency 2 --base-url %s & pid=$!; "
      .. "while [ \"$(cat %s 2>/dev/null | wc -l)\" -lt 4 ] && kill -0 $pid 2>/dev/null; do sleep 0.02; done; "
      .. "kill -INT $pid; wait $pid", env, q(HOST), q(dir .. "/in.jsonl"), q(out), q(srv.base_url), q(out)))
    assert.equal(130, code, err)
    assert.matches("^luachat: batch: interrupted; what completed is in", err)
    assert.not_matches("\27", err, 1, true) -- stderr is not a terminal: no escapes
    local before, n_before = results(out) -- every line whole
    assert.is_true(n_before >= 4 and n_before < 30, "lines: " .. n_before)
    local logged = #srv:requests()
    srv:default(completion(10))
    local _, err2, code2 = batch(q(dir .. "/in.jsonl") .. " -o " .. q(out) .. " --resume")
    assert.equal(0, code2, err2)
    local _, n = results(out)
    assert.equal(30, n)
    local reqs = srv:requests()
    for i = logged + 1, #reqs do
      local id = reqs[i].body:match('"q(%d+)%."')
      assert.is_nil(before["r" .. id], "r" .. id .. " sent again")
    end
  end)

  it("Ctrl-C before anything completed (the input still being copied): exit 130, says nothing completed", function()
    write_input(dir .. "/in.jsonl", 3)
    local out, spid = dir .. "/out.jsonl", dir .. "/spid"
    -- the writer sends the input and keeps the pipe open; once luachat holds its copy (an open
    -- file with no name), Ctrl-C goes to both, as a terminal sends it to the whole pipeline
    -- (luachat first: the end of its input comes after the signal)
    local _, err, code = proc.run(string.format("(cat %s; sh -c 'echo $$ >%s; exec sleep 60') | %s%s batch - -o %s --base-url %s & "
      .. "pid=$!; until [ -s %s ] && ls -l /proc/$pid/fd 2>/dev/null | grep -q deleted || ! kill -0 $pid 2>/dev/null; do sleep 0.02; done; "
      .. "kill -INT $pid $(cat %s); wait $pid",
      q(dir .. "/in.jsonl"), q(spid), env, q(HOST), q(out), q(srv.base_url), q(spid), q(spid)))
    assert.equal(130, code, err)
    assert.equal("luachat: batch: interrupted before any request completed; nothing was written\n", err)
    assert.is_nil(io.open(out), "the results file was made")
    assert.equal(0, #srv:requests())
  end)

  it("--shards takes K from JOB_COMPLETION_INDEX or SLURM_ARRAY_TASK_ID; the shards cover the input once", function()
    write_input(dir .. "/in.jsonl", 30)
    local seen = {}
    local total = 0
    for k = 0, 2 do
      local var = k == 1 and ("SLURM_ARRAY_TASK_ID=" .. (k + 1) .. " SLURM_ARRAY_TASK_MIN=1") or ("JOB_COMPLETION_INDEX=" .. k)
      local _, err, code = proc.run(string.format("%s%s %s batch %s -o %s --shards 3 --base-url %s", env, var, q(HOST),
        q(dir .. "/in.jsonl"), q(dir .. "/out-{shard}.jsonl"), q(srv.base_url)))
      assert.equal(0, code, err)
      local by, n = results(dir .. "/out-" .. k .. ".jsonl")
      assert.is_true(n > 0)
      total = total + n
      for id in pairs(by) do
        assert.is_nil(seen[id], id .. " in two shards")
        seen[id] = true
      end
    end
    assert.equal(30, total)
    assert.equal(30, #srv:requests())
    -- the same slice as --shard K/N
    local _, _, code = batch(q(dir .. "/in.jsonl") .. " -o " .. q(dir .. "/s1.jsonl") .. " --shard 1/3")
    assert.equal(0, code)
    local a = results(dir .. "/out-1.jsonl")
    local b = results(dir .. "/s1.jsonl")
    for id in pairs(a) do assert.is_table(b[id]) end
    for id in pairs(b) do assert.is_table(a[id]) end
  end)

  it("--remote: upload, create, poll, download into -o; --remote-status downloads it again", function()
    write_input(dir .. "/in.jsonl", 6)
    srv:control("/_control/batch_polls", { n = 2 })
    srv:control("/_control/rules", { rules = {
      { contains = '"q4."', response = { status = 400, json = { error = { message = "bad line" } } } } } })
    local out = dir .. "/out.jsonl"
    local _, err, code = batch(q(dir .. "/in.jsonl") .. " -o " .. q(out) .. " --remote --poll-interval 0.05")
    assert.equal(1, code, err)
    local id = err:match("created (batch_%d+)")
    assert.is_string(id, err)
    assert.matches("6 requests: 5 ok, 1 failed", err, 1, true)
    local by, n = results(out)
    assert.equal(6, n)
    assert.equal(400, by.r4.response.status_code)
    assert.equal("hi", by.r1.response.body.choices[1].message.content)
    local reqs = srv:requests()
    local upload = reqs[1]
    assert.equal("/v1/files", upload.path)
    assert.matches("^multipart/form%-data; boundary=", upload.headers["content-type"])
    assert.matches('name="purpose"\r\n\r\nbatch\r\n', upload.body, 1, true)
    assert.matches('"custom_id":"r6"', upload.body, 1, true)
    assert.equal("/v1/batches", reqs[2].path)
    local create = cjson.decode(reqs[2].body)
    assert.same({ "/v1/chat/completions", "24h" }, { create.endpoint, create.completion_window })
    local polls = 0
    for _, r in ipairs(reqs) do if r.path == "/v1/batches/" .. id then polls = polls + 1 end end
    assert.equal(3, polls) -- in_progress twice, then completed
    -- later, from the batch id alone
    local out2 = dir .. "/again.jsonl"
    _, err, code = batch("--remote-status " .. id .. " -o " .. q(out2))
    assert.equal(1, code, err)
    local by2, n2 = results(out2)
    assert.equal(6, n2)
    assert.same(by.r2, by2.r2)
  end)

  it("--remote: an expired batch's unanswered requests count as failed", function()
    write_input(dir .. "/in.jsonl", 6)
    srv:control("/_control/batch_polls", { n = 0, status = "expired", limit = 4 })
    local out = dir .. "/out.jsonl"
    local _, err, code = batch(q(dir .. "/in.jsonl") .. " -o " .. q(out) .. " --remote --poll-interval 0.05")
    assert.equal(1, code, err)
    assert.matches("6 requests: 4 ok, 2 failed", err, 1, true)
    local _, n = results(out)
    assert.equal(4, n)
  end)

  it("--remote refuses bad input before uploading", function()
    proc.write_file(dir .. "/in.jsonl", '{"custom_id":"a","body":{}}\n{"custom_id":"a","body":{}}\n')
    local _, err, code = batch(q(dir .. "/in.jsonl") .. " -o " .. q(dir .. "/out.jsonl") .. " --remote")
    assert.equal(2, code)
    assert.matches("duplicate custom_id 'a'", err, 1, true)
    assert.equal(0, #srv:requests())
  end)
end)

describe("luachat batch: the summary and progress wording", function()
  local batch_cli = require "luachat.batch_cli"
  local function run(t) -- a finished run's summary
    local s = { total = 1, ok = 1, failed = 0, skipped = 0, tokens = 10, seconds = 2.5, output = "out.jsonl" }
    for k, v in pairs(t or {}) do s[k] = v end
    return s
  end

  it("one request is \"1 request\"; a rate below 10 per second has one decimal (0.4, not 0)", function()
    assert.equal("luachat: batch: 1 request: 1 ok, 0 failed, 0 skipped, 10 tokens in 2.5 s (0.4 req/s) -> out.jsonl",
      batch_cli.summary_text(run()))
    assert.equal("luachat: batch: 2 requests: 1 ok, 1 failed, 0 skipped, 10 tokens in 2.5 s (0.8 req/s) -> out.jsonl",
      batch_cli.summary_text(run { total = 2, failed = 1 }))
    assert.equal("luachat: batch: 0 requests: 0 ok, 0 failed, 0 skipped, 0 tokens in 0.0 s -> out.jsonl",
      batch_cli.summary_text(run { total = 0, ok = 0, tokens = 0, seconds = 0 }))
  end)

  it("from 10 per second up the rate is a whole number", function()
    assert.equal("9.9", batch_cli.rate_text(9.9))
    assert.equal("10", batch_cli.rate_text(9.96)) -- not "10.0"
    assert.equal("2322", batch_cli.rate_text(2322.4))
    assert.matches("(40 req/s)", batch_cli.summary_text(run { total = 100, ok = 100 }), 1, true)
    assert.matches(", 0.4 req/s, ", batch_cli.progress_text(run { total = 5, started = 0 }, 2.5), 1, true)
  end)
end)
