-- luachat.batch (issue 18), in process: validation before anything is sent,
-- mixed outcomes (400 kept, 500 and 429 retried), the shared pause after a
-- 429, resume (a cut last line dropped, finished ids never re-sent), shards,
-- --rpm and --tpm pacing, URL resolution and other endpoints.
-- The test server answers each request by its body (/_control/rules), so the
-- order concurrent requests arrive in does not matter; pacing is asserted on
-- the server's own arrival times, lower bounds only.
local server = require "spec.helpers.server"
local proc = require "spec.helpers.proc"
local luachat = require "luachat"
local core = require "luachat.core"
local batch = require "luachat.batch"
local json = luachat.json

local function completion(tokens)
  return { json = { id = "chatcmpl-b", object = "chat.completion", model = "m",
    choices = { { index = 0, message = { role = "assistant", content = "hi" }, finish_reason = "stop" } },
    usage = { prompt_tokens = 1, completion_tokens = tokens - 1, total_tokens = tokens } } }
end

-- A requests file of n lines; line i asks "q<i>." (so a body names its id).
local function write_input(path, n, extra)
  local f = assert(io.open(path, "wb"))
  for i = 1, n do
    local line = { custom_id = "r" .. i, method = "POST", url = "/v1/chat/completions",
      body = { model = "m", messages = { { role = "user", content = "q" .. i .. "." } } } }
    if extra then extra(line, i) end
    f:write(json.encode(line), "\n")
  end
  f:close()
end

local read_lines = proc.read_lines

-- The output lines decoded, by custom_id; raises on a duplicate id.
local function results(path)
  local by = {}
  for _, l in ipairs(read_lines(path)) do
    local d = assert(json.decode(l), "not JSON: " .. l)
    assert(by[d.custom_id] == nil, "custom_id written twice: " .. tostring(d.custom_id))
    by[d.custom_id] = d
  end
  return by
end

local function count(t) local n = 0 for _ in pairs(t) do n = n + 1 end return n end

-- How many logged requests ask "q<i>."
local function sent(reqs, i)
  local n = 0
  for _, r in ipairs(reqs) do
    if r.body:find('"q' .. i .. '."', 1, true) then n = n + 1 end
  end
  return n
end

describe("luachat.batch", function()
  local srv, dir, client
  setup(function()
    srv = server.start()
    client = luachat.client { base_url = srv.base_url, api_key = "sk-batch" }
  end)
  teardown(function() srv:stop() end)
  before_each(function()
    srv:reset()
    srv:default(completion(10))
    dir = proc.tmpdir()
  end)
  after_each(function()
    os.execute("rm -rf " .. proc.shell_quote(dir))
    assert.equal(0, core.live(), "a transfer was left running")
  end)

  it("keeps a 400, retries a 500 and a 429, writes every id once in the Batch output format", function()
    write_input(dir .. "/in.jsonl", 10)
    srv:control("/_control/rules", { rules = {
      { contains = '"q3."', response = { status = 400, json = { error = { message = "bad request", code = "bad_thing" } } } },
      { contains = '"q5."', times = 1, response = { status = 500, headers = { ["Retry-After"] = "0" },
        json = { error = { message = "oops" } } } },
      { contains = '"q7."', times = 1, response = { status = 429, headers = { ["Retry-After"] = "0" },
        json = { error = { message = "slow down" } } } },
    } })
    local got = {}
    local s = assert(batch.run { client = client, input = dir .. "/in.jsonl", output = dir .. "/out.jsonl",
      concurrency = 4, max_retries = 3, on_result = function(line, info) got[info.custom_id] = { line, info } end })
    assert.same({ 10, 9, 1, 0, 90 }, { s.total, s.ok, s.failed, s.skipped, s.tokens })
    local by = results(dir .. "/out.jsonl")
    assert.equal(10, count(by))
    local r3 = by.r3
    assert.equal(400, r3.response.status_code)
    assert.equal("bad request", r3.response.body.error.message) -- the server's body is kept
    assert.equal("bad_thing", r3.error.code)
    assert.matches("HTTP 400", r3.error.message)
    assert.matches("^batch_req_", r3.id)
    assert.equal(200, by.r5.response.status_code)
    assert.equal(json.null, by.r5.error)
    assert.equal(200, by.r7.response.status_code)
    assert.equal("hi", by.r1.response.body.choices[1].message.content)
    assert.is_string(by.r1.response.request_id)
    -- on_result saw every line, as written
    assert.equal(10, count(got))
    assert.is_false(got.r3[2].ok)
    assert.equal(400, got.r3[2].status)
    assert.same(json.decode(got.r3[1]), r3)
    local reqs = srv:requests()
    assert.same({ 1, 2, 2 }, { sent(reqs, 3), sent(reqs, 5), sent(reqs, 7) })
    assert.equal(12, #reqs)
    assert.equal(1, sent(reqs, 3))  -- a 400 is final
    assert.equal(2, sent(reqs, 5))  -- 500, then 200
    assert.equal(2, sent(reqs, 7))  -- 429, then 200
    assert.equal("/v1/chat/completions", reqs[1].path)
    assert.equal("Bearer sk-batch", reqs[1].headers.authorization)
  end)

  it("gives up after max_retries and writes the last answer with the error", function()
    write_input(dir .. "/in.jsonl", 2)
    srv:control("/_control/rules", { rules = {
      { contains = '"q2."', response = { status = 503, headers = { ["Retry-After"] = "0" }, json = { error = { message = "down" } } } },
    } })
    local s = assert(batch.run { client = client, input = dir .. "/in.jsonl", output = dir .. "/out.jsonl", max_retries = 2 })
    assert.same({ 1, 1 }, { s.ok, s.failed })
    local r2 = results(dir .. "/out.jsonl").r2
    assert.equal(503, r2.response.status_code)
    assert.equal("down", r2.response.body.error.message)
    assert.equal("api", r2.error.code)
    assert.equal(3, sent(srv:requests(), 2))
  end)

  it("writes a network failure with a null response", function()
    write_input(dir .. "/in.jsonl", 1)
    -- a port nobody listens on: the server's own, after it closed? use a fresh closed one
    local c = luachat.client { base_url = "http://127.0.0.1:1/v1", api_key = "k" }
    local s = assert(batch.run { client = c, input = dir .. "/in.jsonl", output = dir .. "/out.jsonl", max_retries = 0 })
    assert.same({ 0, 1 }, { s.ok, s.failed })
    local r1 = results(dir .. "/out.jsonl").r1
    assert.equal(json.null, r1.response)
    assert.equal("network", r1.error.code)
  end)

  it("refuses bad input with nothing sent, naming the lines and the duplicate ids", function()
    local f = assert(io.open(dir .. "/in.jsonl", "wb"))
    f:write('{"custom_id":"a","body":{"model":"m"}}\n',
      'not json\n',
      '\n',
      '{"custom_id":"a","body":{"model":"m"}}\n',
      '{"body":{"model":"m"}}\n',
      '{"custom_id":"c"}\n',
      '{"custom_id":"d","body":{},"url":"v1/x"}\n',
      '{"custom_id":"e","body":{"model":"m","stream":true}}\n')
    f:close()
    local s, err = batch.run { client = client, input = dir .. "/in.jsonl", output = dir .. "/out.jsonl" }
    assert.is_nil(s)
    assert.equal("input", err.kind)
    assert.same({
      "line 2: invalid JSON: expected a value at character 1",
      "line 4: duplicate custom_id 'a' (first on line 1)",
      "line 5: no custom_id",
      "line 6: no body (custom_id 'c')",
      "line 7: url must be a path such as \"/v1/chat/completions\" (custom_id 'd')",
      "line 8: body asks for a stream (\"stream\": true); batch requests are answered whole (custom_id 'e')",
    }, err.problems)
    assert.matches("6 problems in the input, nothing was sent", err.message, 1, true)
    assert.equal(0, #srv:requests())
    assert.is_nil(io.open(dir .. "/out.jsonl"))
  end)

  it("refuses an output that already has results unless resuming", function()
    write_input(dir .. "/in.jsonl", 2)
    proc.write_file(dir .. "/out.jsonl", '{"custom_id":"r1"}\n')
    local s, err = batch.run { client = client, input = dir .. "/in.jsonl", output = dir .. "/out.jsonl" }
    assert.is_nil(s)
    assert.equal("usage", err.kind)
    -- the Lua API's words, not the command line's
    assert.equal(dir .. "/out.jsonl already has results: pass resume = true to continue it, or remove it", err.message)
    assert.equal(0, #srv:requests())
  end)

  it("resumes: skips answered ids, drops a cut last line, writes every id once", function()
    write_input(dir .. "/in.jsonl", 6)
    local out = dir .. "/out.jsonl"
    assert(batch.run { client = client, input = dir .. "/in.jsonl", output = out, concurrency = 1 })
    -- keep r1..r3 whole, cut r4's line in the middle (a crash mid-write)
    local lines = read_lines(out)
    local keep, cut = {}, nil
    for _, l in ipairs(lines) do
      local id = json.decode(l).custom_id
      if id == "r1" or id == "r2" or id == "r3" then keep[#keep + 1] = l end
      if id == "r4" then cut = l:sub(1, 30) end
    end
    proc.write_file(out, table.concat(keep, "\n") .. "\n" .. cut)
    srv:reset()
    srv:default(completion(10))
    local s = assert(batch.run { client = client, input = dir .. "/in.jsonl", output = out, resume = true })
    assert.same({ 6, 3, 0, 3 }, { s.total, s.ok, s.failed, s.skipped })
    local by = results(out)
    assert.equal(6, count(by))
    local reqs = srv:requests()
    for i = 1, 3 do assert.equal(0, sent(reqs, i), "r" .. i .. " was sent again") end
    for i = 4, 6 do assert.equal(1, sent(reqs, i)) end
    -- a finished output: resuming sends nothing
    srv:reset()
    s = assert(batch.run { client = client, input = dir .. "/in.jsonl", output = out, resume = true })
    assert.same({ 6, 0, 6 }, { s.total, s.ok, s.skipped })
    assert.equal(0, #srv:requests())
    assert.equal(6, #read_lines(out))
  end)

  it("resume counts only result lines: request lines and corrupt lines are refused, naming them, nothing sent", function()
    write_input(dir .. "/in.jsonl", 3)
    local out = dir .. "/out.jsonl"
    assert(batch.run { client = client, input = dir .. "/in.jsonl", output = out, concurrency = 1 })
    local lines = read_lines(out)
    srv:reset()
    srv:default(completion(10))
    -- a corrupt line in the middle (not the cut last line of a crash)
    local corrupt = lines[1] .. "\n" .. '{"custom_id":"r2","resp' .. "\n" .. lines[3] .. "\n"
    proc.write_file(out, corrupt)
    local s, err = batch.run { client = client, input = dir .. "/in.jsonl", output = out, resume = true }
    assert.is_nil(s)
    assert.equal("input", err.kind)
    assert.matches("out.jsonl: 1 line is not a batch result, nothing was sent", err.headline, 1, true)
    assert.matches("^line 2: invalid JSON", err.problems[1])
    assert.equal(corrupt, proc.read_file(out)) -- kept as it was
    -- a request line copied into the results file is not an answer
    local input2 = '{"custom_id":"r2","body":{"model":"m","messages":[]}}'
    proc.write_file(out, lines[1] .. "\n" .. input2 .. "\n")
    s, err = batch.run { client = client, input = dir .. "/in.jsonl", output = out, resume = true }
    assert.is_nil(s)
    assert.equal("input", err.kind)
    assert.equal("line 2: a request (custom_id 'r2' with a body), not a result", err.problems[1])
    assert.matches("is it the requests file?", err.headline, 1, true)
    -- a line with a custom_id and neither response nor error
    proc.write_file(out, lines[1] .. "\n" .. '{"custom_id":"r2"}' .. "\n" .. lines[3] .. "\n")
    s, err = batch.run { client = client, input = dir .. "/in.jsonl", output = out, resume = true }
    assert.is_nil(s)
    assert.equal("line 2: no response and no error", err.problems[1])
    assert.equal(0, #srv:requests())
    -- a failure line (response null, an error) is an answer
    proc.write_file(out, lines[1] .. "\n" .. '{"id":"x","custom_id":"r2","response":null,"error":{"code":"network","message":"m"}}\n')
    s = assert(batch.run { client = client, input = dir .. "/in.jsonl", output = out, resume = true })
    assert.same({ 3, 1, 2 }, { s.total, s.ok, s.skipped })
    assert.equal(1, sent(srv:requests(), 3))
  end)

  it("refuses a results file that is the input, or holds its requests (a copy)", function()
    write_input(dir .. "/in.jsonl", 3)
    local input = proc.read_file(dir .. "/in.jsonl")
    for _, resume in ipairs { false, true } do
      local s, err = batch.run { client = client, input = dir .. "/in.jsonl", output = dir .. "/./in.jsonl", resume = resume }
      assert.is_nil(s)
      assert.equal("usage", err.kind)
      assert.matches("is the requests file", err.message, 1, true)
      proc.write_file(dir .. "/copy.jsonl", input)
      s, err = batch.run { client = client, input = dir .. "/in.jsonl", output = dir .. "/copy.jsonl", resume = resume }
      assert.is_nil(s)
      assert.equal("usage", err.kind)
      assert.matches("copy.jsonl holds requests, not results", err.message, 1, true)
    end
    assert.equal(input, proc.read_file(dir .. "/in.jsonl"))
    assert.equal(input, proc.read_file(dir .. "/copy.jsonl"))
    assert.equal(0, #srv:requests())
  end)

  it("names file problems: a missing input, a directory as input or output", function()
    write_input(dir .. "/in.jsonl", 1)
    local s, err = batch.run { client = client, input = dir .. "/nope.jsonl", output = dir .. "/out.jsonl" }
    assert.is_nil(s)
    assert.equal("input", err.kind)
    assert.equal("cannot read the input: " .. dir .. "/nope.jsonl: No such file or directory", err.message)
    s, err = batch.run { client = client, input = dir, output = dir .. "/out.jsonl" }
    assert.is_nil(s)
    assert.equal("input", err.kind)
    assert.equal("cannot read the input: " .. dir .. ": Is a directory", err.message)
    for _, resume in ipairs { false, true } do
      s, err = batch.run { client = client, input = dir .. "/in.jsonl", output = dir, resume = resume }
      assert.is_nil(s)
      assert.equal("usage", err.kind)
      assert.equal("cannot write the results to " .. dir .. ": Is a directory", err.message)
    end
    -- an output whose directory is missing (or is a file) is refused before the input is read
    -- (its problems are not reported), and a new output in a writable directory is not left behind
    proc.write_file(dir .. "/bad.jsonl", "not json\n")
    s, err = batch.run { client = client, input = dir .. "/bad.jsonl", output = dir .. "/nodir/out.jsonl" }
    assert.same({ "usage", "cannot write the results to " .. dir .. "/nodir/out.jsonl: No such file or directory" },
      { err.kind, err.message })
    s, err = batch.run { client = client, input = dir .. "/bad.jsonl", output = dir .. "/in.jsonl/out.jsonl" }
    assert.same({ "usage", "cannot write the results to " .. dir .. "/in.jsonl/out.jsonl: Not a directory" },
      { err.kind, err.message })
    s, err = batch.run { client = client, input = dir .. "/bad.jsonl", output = dir .. "/new.jsonl" }
    assert.equal("input", err.kind)
    assert.is_nil(io.open(dir .. "/new.jsonl"), "the check left the output behind")
    -- nothing is left in that directory, and an output that is a symlink to a missing file
    -- is left as it is (the check makes neither the link's target nor removes the link)
    assert(os.execute("ln -s " .. dir .. "/target.jsonl " .. dir .. "/link.jsonl"))
    s, err = batch.run { client = client, input = dir .. "/bad.jsonl", output = dir .. "/link.jsonl" }
    assert.equal("input", err.kind)
    assert.is_true(os.execute("test -L " .. dir .. "/link.jsonl"), "the symlink was removed")
    local ls = io.popen("ls -A " .. dir)
    assert.equal("bad.jsonl\nin.jsonl\nlink.jsonl\n", ls:read("a"))
    ls:close()
    -- "-" is standard input, not a file; as the output it is refused (the results are a file: resume reads them)
    s, err = batch.run { client = client, input = dir .. "/in.jsonl", output = "-" }
    assert.equal("usage", err.kind)
    assert.matches("results cannot go to standard output", err.message, 1, true)
    assert.equal(0, #srv:requests())
  end)

  it("the output check makes no file of another name: a symlink planted in the output's directory is not followed", function()
    -- A probe file of luachat's own was made with io.open(name, "wb"): it followed a symlink
    -- planted under that name and truncated (or made) the file the link names; its name came
    -- from math.random, known to whoever knows the seed. Plant links under the names such a
    -- probe would get after math.randomseed(7), and under the output's own name a link to a
    -- missing file, then run (a bad input, then a good one) with that seed.
    local util = require "luachat.util"
    proc.write_file(dir .. "/victim", "precious\n")
    math.randomseed(7)
    local planted = {}
    for i = 1, 3 do
      planted[i] = dir .. "/.luachat-batch-probe-" .. util.random_hex(8)
      assert(os.execute("ln -s " .. proc.shell_quote(dir .. "/victim") .. " " .. proc.shell_quote(planted[i])))
    end
    assert(os.execute("ln -s " .. proc.shell_quote(dir .. "/made") .. " "
      .. proc.shell_quote(dir .. "/.luachat-batch-probe-" .. util.random_hex(8))))
    proc.write_file(dir .. "/bad.jsonl", "not json\n")
    write_input(dir .. "/in.jsonl", 2)
    local function listing()
      local ls = io.popen("ls -A " .. proc.shell_quote(dir))
      local t = ls:read("a")
      ls:close()
      return t
    end
    local before = listing()
    math.randomseed(7)
    local s, err = batch.run { client = client, input = dir .. "/bad.jsonl", output = dir .. "/out.jsonl" }
    assert.is_nil(s)
    assert.equal("input", err.kind)
    assert.equal("precious\n", proc.read_file(dir .. "/victim"), "a planted symlink was followed")
    assert.equal(before, listing()) -- nothing made, nothing removed (the links are there)
    math.randomseed(7)
    s, err = batch.run { client = client, input = dir .. "/in.jsonl", output = dir .. "/out.jsonl" }
    math.randomseed()
    assert.is_table(s, tostring(err))
    assert.equal(2, s.ok)
    assert.equal("precious\n", proc.read_file(dir .. "/victim"), "a planted symlink was followed")
    for _, name in ipairs(planted) do
      assert.is_true(os.execute("test -L " .. proc.shell_quote(name)), "a planted symlink was removed")
    end
    assert.equal(2, #read_lines(dir .. "/out.jsonl"))
    local ls = io.popen("ls -A " .. proc.shell_quote(dir) .. " | grep -v '^\\.luachat-batch-probe-'")
    assert.equal("bad.jsonl\nin.jsonl\nout.jsonl\nvictim\n", ls:read("a")) -- "made" was not made
    ls:close()
  end)

  it("a Ctrl-C raised while the output check has made the output leaves no file behind", function()
    -- the check makes the output under its own name and removes it; the "interrupted" error
    -- the count hook raises may come between the two: here it comes right after the open
    proc.write_file(dir .. "/bad.jsonl", "not json\n")
    local out = dir .. "/out.jsonl"
    local real_open = io.open
    local raised = false
    io.open = function(name, mode)
      local f, e = real_open(name, mode)
      if name == out and mode == "ab" and not raised then
        raised = true
        if f then f:close() end
        error("interrupted", 0)
      end
      return f, e
    end
    local ok, err = pcall(batch.run, { client = client, input = dir .. "/bad.jsonl", output = out })
    io.open = real_open
    assert.same({ false, "interrupted", true }, { ok, err, raised })
    local ls = io.popen("ls -A " .. proc.shell_quote(dir))
    assert.equal("bad.jsonl\n", ls:read("a"), "the output made by the check was left behind")
    ls:close()
  end)

  it("an input that shrinks while it is sent fails the run: requests never sent are not a success", function()
    write_input(dir .. "/in.jsonl", 3000)
    local truncated = false
    local s, err = batch.run { client = client, input = dir .. "/in.jsonl", output = dir .. "/out.jsonl", concurrency = 1,
      on_result = function()
        if not truncated then
          truncated = true
          proc.write_file(dir .. "/in.jsonl", "")
        end
      end }
    assert.is_nil(s)
    assert.equal("input", err.kind)
    assert.matches("of 3000 requests were not sent: the input changed", err.message, 1, true)
  end)

  it("writes response bodies with the client's key redacted (a server that echoes it)", function()
    write_input(dir .. "/in.jsonl", 2)
    srv:default { status = 401, json = { error = { message = "bad auth {{header:authorization}}" } } }
    local keyed = luachat.client { base_url = srv.base_url, api_key = "sk-test-SECRET123" }
    local s = assert(batch.run { client = keyed, input = dir .. "/in.jsonl", output = dir .. "/out.jsonl" })
    assert.equal(2, s.failed)
    local text = proc.read_file(dir .. "/out.jsonl")
    assert.not_matches("SECRET123", text, 1, true)
    local by = results(dir .. "/out.jsonl")
    assert.equal("bad auth Bearer [REDACTED]", by.r1.response.body.error.message)
    assert.equal(401, by.r1.response.status_code)
  end)

  it("a credential in a line's own query (?key=...) is redacted from the body written, like the client's key", function()
    proc.write_file(dir .. "/in.jsonl", '{"custom_id":"k1","url":"/v1/chat/completions?key=LINE-SECRET-456","body":{"model":"m"}}\n'
      .. '{"custom_id":"k2","url":"/v1/chat/completions?note=PLAIN-VALUE-789","body":{"model":"m"}}\n')
    srv:default { status = 400, json = { error = { message = "bad request {{query}}" } } }
    local s = assert(batch.run { client = client, input = dir .. "/in.jsonl", output = dir .. "/out.jsonl" })
    assert.equal(2, s.failed)
    assert.not_matches("LINE-SECRET-456", proc.read_file(dir .. "/out.jsonl"), 1, true)
    local by = results(dir .. "/out.jsonl")
    assert.equal("bad request key=[REDACTED]", by.k1.response.body.error.message)
    assert.equal("bad request note=PLAIN-VALUE-789", by.k2.response.body.error.message) -- not a secret's name
  end)

  it("shards cover the input exactly once, stable for the file", function()
    write_input(dir .. "/in.jsonl", 30)
    local all, sizes = {}, {}
    for k = 0, 2 do
      local out = dir .. "/out" .. k .. ".jsonl"
      local s = assert(batch.run { client = client, input = dir .. "/in.jsonl", output = out, shard = { k, 3 } })
      sizes[#sizes + 1] = s.total
      for id in pairs(results(out)) do
        assert.is_nil(all[id], id .. " in two shards")
        all[id] = k
        assert.equal(k, batch.hash(id) % 3) -- the documented rule: FNV-1a of custom_id mod N
      end
    end
    assert.equal(30, count(all))
    assert.equal(30, #srv:requests())
    for _, n in ipairs(sizes) do assert.is_true(n > 0) end
    -- "k/n" works too
    local s = assert(batch.run { client = client, input = dir .. "/in.jsonl", output = dir .. "/again.jsonl", shard = "1/3" })
    assert.equal(sizes[2], s.total)
  end)

  it("--rpm spaces request starts 60/rpm apart (server arrival times)", function()
    -- 8 requests 0.1 s apart span 0.7 s; unpaced, they arrive within a few ms. The
    -- bound leaves room for the server logging one of them late on a loaded machine.
    write_input(dir .. "/in.jsonl", 8)
    assert(batch.run { client = client, input = dir .. "/in.jsonl", output = dir .. "/out.jsonl",
      concurrency = 4, rpm = 600 })
    local reqs = srv:requests()
    assert.equal(8, #reqs)
    table.sort(reqs, function(a, b) return a.time < b.time end)
    local span = reqs[#reqs].time - reqs[1].time
    assert.is_true(span >= 0.5, string.format("8 requests at rpm 600 arrived within %.3f s", span))
  end)

  it("--tpm spaces requests by their estimated tokens", function()
    -- each body asks max_tokens = 100: about 125 tokens estimated; 125 * 600 a minute = 0.1 s each
    write_input(dir .. "/in.jsonl", 8, function(line) line.body.max_tokens = 100 end)
    local body = json.encode({ model = "m", messages = { { role = "user", content = "q1." } }, max_tokens = 100 })
    local est = batch.estimate_tokens(body, { max_tokens = 100 })
    srv:default(completion(est)) -- usage equal to the estimate: no correction
    assert(batch.run { client = client, input = dir .. "/in.jsonl", output = dir .. "/out.jsonl",
      concurrency = 4, tpm = est * 600 })
    local reqs = srv:requests()
    assert.equal(8, #reqs)
    table.sort(reqs, function(a, b) return a.time < b.time end)
    local span = reqs[#reqs].time - reqs[1].time
    assert.is_true(span >= 0.5, string.format("8 requests at 0.1 s of tokens each arrived within %.3f s", span))
  end)

  it("a 429 pauses every worker, not just the one that got it", function()
    -- 4 workers, answers take 50 ms: without a shared pause requests keep arriving
    -- while the 429's Retry-After (2 s) runs; with it, none arrive in that window.
    write_input(dir .. "/in.jsonl", 80)
    local ok = completion(10)
    ok.delay = 0.05
    srv:default(ok)
    srv:control("/_control/rules", { rules = {
      { contains = '"q9."', times = 1, response = { status = 429, headers = { ["Retry-After"] = "2" },
        json = { error = { message = "rate limited" } } } },
    } })
    local s = assert(batch.run { client = client, input = dir .. "/in.jsonl", output = dir .. "/out.jsonl",
      concurrency = 4, max_retries = 2 })
    assert.same({ 80, 0 }, { s.ok, s.failed })
    local reqs = srv:requests()
    local t429
    for _, r in ipairs(reqs) do
      if r.body:find('"q9."', 1, true) then t429 = t429 or r.time end
    end
    local during = 0
    for _, r in ipairs(reqs) do
      if r.time > t429 + 0.5 and r.time < t429 + 1.9 then during = during + 1 end
    end
    -- at most the 3 other workers' requests already in flight (logged late on a loaded machine)
    assert.is_true(during <= 3, during .. " requests arrived during the pause")
  end)

  it("x-ratelimit-remaining-requests: 0 pauses every worker until x-ratelimit-reset-requests", function()
    write_input(dir .. "/in.jsonl", 80)
    local ok = completion(10)
    ok.delay = 0.05
    srv:default(ok)
    local last = completion(10)
    last.headers = { ["x-ratelimit-remaining-requests"] = "0", ["x-ratelimit-reset-requests"] = "2s",
      ["x-ratelimit-remaining-tokens"] = "5000", ["x-ratelimit-reset-tokens"] = "1ms" }
    srv:control("/_control/rules", { rules = { { contains = '"q9."', response = last } } })
    local s = assert(batch.run { client = client, input = dir .. "/in.jsonl", output = dir .. "/out.jsonl", concurrency = 4 })
    assert.same({ 80, 0 }, { s.ok, s.failed })
    local reqs = srv:requests()
    local t0
    for _, r in ipairs(reqs) do
      if r.body:find('"q9."', 1, true) then t0 = r.time end
    end
    local during = 0
    for _, r in ipairs(reqs) do
      if r.time > t0 + 0.5 and r.time < t0 + 1.9 then during = during + 1 end
    end
    assert.is_true(during <= 3, during .. " requests arrived during the pause")
  end)

  it("resolves url against the base URL, and other endpoints work", function()
    assert.equal("chat/completions", batch.resolve_path("http://h/v1", "/v1/chat/completions"))
    assert.equal("embeddings", batch.resolve_path("http://h/v1/", "/v1/embeddings"))
    assert.equal("v1/embeddings", batch.resolve_path("http://h", "/v1/embeddings"))
    assert.equal("openai/v1/x", batch.resolve_path("http://h/api", "/openai/v1/x"))
    local f = assert(io.open(dir .. "/in.jsonl", "wb"))
    f:write('{"custom_id":"e1","url":"/v1/embeddings","body":{"model":"e","input":"hello"}}\n')
    f:write('{"custom_id":"c1","body":{"messages":[{"role":"user","content":"hi"}]}}\n')
    f:close()
    srv:control("/_control/rules", { rules = {
      { contains = '"input"', response = { json = { object = "list", data = { { object = "embedding", index = 0,
        embedding = { 0.5, -0.25 } } }, usage = { prompt_tokens = 2, total_tokens = 2 } } } },
    } })
    local s = assert(batch.run { client = client, input = dir .. "/in.jsonl", output = dir .. "/out.jsonl", model = "dflt" })
    assert.same({ 2, 0, 12 }, { s.ok, s.failed, s.tokens })
    local by = results(dir .. "/out.jsonl")
    assert.same({ 0.5, -0.25 }, by.e1.response.body.data[1].embedding)
    local paths = {}
    for _, r in ipairs(srv:requests()) do paths[r.path] = r.json end
    assert.equal("e", paths["/v1/embeddings"].model)
    assert.equal("dflt", paths["/v1/chat/completions"].model) -- model fills a body without one
  end)

  it("a url with its own query (Azure's ?api-version=): the path is resolved, the query sent, merged with the base URL's", function()
    local f = assert(io.open(dir .. "/in.jsonl", "wb"))
    f:write('{"custom_id":"q1","url":"/v1/chat/completions?api-version=2024-10-21","body":{"model":"m","messages":[]}}\n')
    f:write('{"custom_id":"e1","url":"/v1/embeddings?dimensions=2&a%20b=c%26d#frag","body":{"model":"e","input":"x"}}\n')
    f:write('{"custom_id":"c1","body":{"model":"m","messages":[]}}\n')
    f:close()
    -- the base URL's query comes first; a name the line gives too is the line's (one api-version, not two)
    local c = luachat.client { base_url = srv.base_url .. "?api-version=2024-02-01&x=1", api_key = "sk-batch" }
    local s = assert(batch.run { client = c, input = dir .. "/in.jsonl", output = dir .. "/out.jsonl" })
    assert.same({ 3, 0 }, { s.ok, s.failed })
    local by = {}
    for _, r in ipairs(srv:requests()) do
      local id = r.path == "/v1/embeddings" and "e1" or (r.query:find("2024-10-21", 1, true) and "q1" or "c1")
      by[id] = r
    end
    assert.same({ "/v1/chat/completions", "x=1&api-version=2024-10-21" }, { by.q1.path, by.q1.query })
    assert.same({ "/v1/embeddings", "api-version=2024-02-01&x=1&dimensions=2&a%20b=c%26d" }, { by.e1.path, by.e1.query })
    assert.same({ "/v1/chat/completions", "api-version=2024-02-01&x=1" }, { by.c1.path, by.c1.query })
    -- a base URL without a query: the line's query as it is
    proc.write_file(dir .. "/in2.jsonl", '{"custom_id":"z","url":"/v1/chat/completions?foo=bar","body":{"model":"m"}}\n')
    srv:reset()
    srv:default(completion(10))
    assert(batch.run { client = client, input = dir .. "/in2.jsonl", output = dir .. "/out2.jsonl" })
    local reqs = srv:requests()
    assert.same({ "/v1/chat/completions", "foo=bar" }, { reqs[1].path, reqs[1].query })
    -- the path is checked without the query, and a bad url still names its line
    proc.write_file(dir .. "/in3.jsonl", '{"custom_id":"a","url":"/v1/chat/completions?x=1","body":{}}\n'
      .. '{"custom_id":"b","url":"v1/chat/completions?x=1","body":{}}\n'
      .. '{"custom_id":"c","url":"?x=1","body":{}}\n'
      .. '{"custom_id":"d","url":"/v1/chat/completions?x=a b","body":{}}\n'
      .. '{"custom_id":"e","url":"/../../etc","body":{}}\n'
      .. '{"custom_id":"f","url":"/v1/../x?y=1","body":{}}\n'
      .. '{"custom_id":"g","url":"/v1/./chat/completions","body":{}}\n'
      .. '{"custom_id":"h","url":"/v1/%2E%2e/x","body":{}}\n'
      .. '{"custom_id":"i","url":"/v1/..","body":{}}\n'
      .. '{"custom_id":"j","url":"/v1/a..b/.x/x.?k=../..","body":{}}\n'
      .. '{"custom_id":"k","url":"/v1/..%2Fx","body":{}}\n'
      .. '{"custom_id":"l","url":"/v1/..\\\\x","body":{}}\n'
      .. '{"custom_id":"m","url":"/v1/%2e%2e%5cx","body":{}}\n')
    srv:reset()
    local s3, err = batch.run { client = client, input = dir .. "/in3.jsonl", output = dir .. "/out3.jsonl" }
    assert.is_nil(s3)
    assert.same({
      "line 2: url must be a path such as \"/v1/chat/completions\" (custom_id 'b')",
      "line 3: url must be a path such as \"/v1/chat/completions\" (custom_id 'c')",
      "line 4: url must be a path such as \"/v1/chat/completions\" without spaces or control characters (custom_id 'd')",
      "line 5: url must be a path without '.' or '..' segments (custom_id 'e')",
      "line 6: url must be a path without '.' or '..' segments (custom_id 'f')",
      "line 7: url must be a path without '.' or '..' segments (custom_id 'g')",
      "line 8: url must be a path without '.' or '..' segments (custom_id 'h')",
      "line 9: url must be a path without '.' or '..' segments (custom_id 'i')",
      "line 11: url must be a path without '.' or '..' segments (custom_id 'k')",
      "line 12: url must be a path without '.' or '..' segments (custom_id 'l')",
      "line 13: url must be a path without '.' or '..' segments (custom_id 'm')",
    }, err.problems)
    assert.equal(0, #srv:requests())
  end)

  it("--remote: the batch's endpoint is the lines' path without their query", function()
    local remote = require "luachat.batch_remote"
    proc.write_file(dir .. "/in.jsonl", '{"custom_id":"a","url":"/v1/chat/completions?api-version=2024-10-21","body":{"model":"m"}}\n'
      .. '{"custom_id":"b","url":"/v1/chat/completions?api-version=2024-10-21","body":{"model":"m"}}\n')
    srv:control("/_control/batch_polls", { n = 0 })
    local s = assert(remote.run { client = client, input = dir .. "/in.jsonl", output = dir .. "/out.jsonl", poll_interval = 0.05 })
    assert.same({ 2, 0 }, { s.ok, s.failed })
    local create
    for _, r in ipairs(srv:requests()) do if r.path == "/v1/batches" then create = r.json end end
    assert.equal("/v1/chat/completions", create.endpoint)
  end)

  it("keeps custom ids as 64-bit hashes in a compact set (8 bytes an id)", function()
    local idset = require "luachat.batch_idset"
    local set = idset.new()
    for i = 1, 20000 do set:add(idset.hash("request-" .. i)) end
    set:add(idset.hash("request-77"))
    local dups = set:finish()
    assert.same({ [idset.hash("request-77")] = true }, dups)
    for i = 1, 20000, 97 do assert.is_true(set:has(idset.hash("request-" .. i))) end
    assert.is_false(set:has(idset.hash("request-0")))
    assert.is_false(set:has(idset.hash("request-20001")))
    assert.are_not.equal(idset.hash("a"), idset.hash("a\0")) -- the length counts, not only the bytes
    assert.are_not.equal(idset.hash("abcdefgh1"), idset.hash("abcdefgh2"))
    assert.equal(20001, set.count)
  end)

  it("stops when on_result raises: err.kind 'callback', what was written stays, nothing more is sent", function()
    write_input(dir .. "/in.jsonl", 20)
    local calls = 0
    local s, err = luachat.batch.run { client = client, input = dir .. "/in.jsonl", output = dir .. "/out.jsonl",
      concurrency = 1, on_result = function()
        calls = calls + 1
        if calls == 3 then error("no more") end
      end }
    assert.is_nil(s)
    assert.equal("callback", err.kind)
    assert.matches("batch on_result: .*no more", err.message)
    assert.equal(3, calls)
    assert.equal(3, #read_lines(dir .. "/out.jsonl"))
    assert.equal(3, #srv:requests())
  end)

  it("reads CRLF lines and a UTF-8 BOM", function()
    proc.write_file(dir .. "/in.jsonl", '\239\187\191{"custom_id":"a","body":{"model":"m","messages":[]}}\r\n'
      .. '{"custom_id":"b","body":{"model":"m","messages":[]}}\r\n')
    local s = assert(batch.run { client = client, input = dir .. "/in.jsonl", output = dir .. "/out.jsonl" })
    assert.same({ 2, 0 }, { s.ok, s.failed })
  end)

  it("--tpm corrects each booking with the answer's usage", function()
    -- estimated 125 tokens each at 125 * 600 a minute (0.1 s), but each answer says it used
    -- 1250: the clock moves 1 s a request, so 4 requests span at least ~2 s (3 s expected)
    write_input(dir .. "/in.jsonl", 4, function(line) line.body.max_tokens = 100 end)
    local body = json.encode({ model = "m", messages = { { role = "user", content = "q1." } }, max_tokens = 100 })
    local est = batch.estimate_tokens(body, { max_tokens = 100 })
    srv:default(completion(est * 10))
    assert(batch.run { client = client, input = dir .. "/in.jsonl", output = dir .. "/out.jsonl",
      concurrency = 4, tpm = est * 600 })
    local reqs = srv:requests()
    table.sort(reqs, function(a, b) return a.time < b.time end)
    local span = reqs[#reqs].time - reqs[1].time
    assert.is_true(span >= 2, string.format("4 requests using 10x their estimate arrived within %.3f s", span))
  end)

  it("writes next to the input when no output is given", function()
    write_input(dir .. "/in.jsonl", 2)
    local s = assert(batch.run { client = client, input = dir .. "/in.jsonl" })
    assert.equal(dir .. "/in.results.jsonl", s.output)
    assert.equal(2, #read_lines(dir .. "/in.results.jsonl"))
  end)

  it("checks its options", function()
    assert.has_error(function() batch.run { input = 1 } end, "bad argument #1 to 'batch.run' (field 'input' must be a file name)")
    assert.has_error(function() batch.run { input = "x", concurrency = 0 } end,
      "bad argument #1 to 'batch.run' (field 'concurrency' must be a positive integer)")
    assert.has_error(function() batch.run { input = "x", shard = { 3, 3 } } end,
      "bad argument #1 to 'batch.run' (field 'shard' must be {k, n} with 0 <= k < n, or \"k/n\")")
    assert.same({ nil, "--shard wants K/N with 0 <= K < N (e.g. 0/4), got '4/4'" }, { batch.parse_shard("4/4") })
    assert.equal(360, batch.parse_duration("6m0s"))
    assert.equal(0.02, batch.parse_duration("20ms"))
    assert.is_nil(batch.parse_duration("soon"))
  end)
end)
