-- A request body streamed from a file (core.start's body_file, body_prefix,
-- body_suffix) and `luachat batch --remote`'s upload through it: the server
-- gets prefix, every byte of the file, suffix, with Content-Length; every
-- retry (a 500 or 429 answered by luachat, a dead reused connection by curl)
-- sends the whole body again; a file that shrinks mid-upload is a clear
-- error (kind "input"), one whose name goes keeps uploading; the transfer's
-- descriptor is gone after success, failure, cancel and Ctrl-C; and the
-- upload's memory does not grow with the file (peak RSS of a 50 MB upload).
-- Events, not sleeps: spec/helpers/upload_server.py says when it has read
-- the first MB, and acts on the file then.
local server = require "spec.helpers.server"
local proc = require "spec.helpers.proc"
local core = require "luachat.core"
local luachat = require "luachat"
local request = require "luachat.request"
local remote = require "luachat.batch_remote"

local q = proc.shell_quote
local HOST = proc.host
local MB = 1 << 20
local UPLOAD_SERVER = (debug.getinfo(1, "S").source:match("^@(.*)/spec/[^/]*$") or ".") .. "/spec/helpers/upload_server.py"

-- n bytes of JSONL whose lines differ (a byte out of place shows).
local function jsonl(n_lines, pad)
  local t = {}
  for i = 1, n_lines do
    t[i] = string.format('{"custom_id":"r%d","method":"POST","url":"/v1/chat/completions","body":{"model":"m",'
      .. '"messages":[{"role":"user","content":"q%d %s"}]}}\n', i, i, string.rep(string.char(97 + i % 26), pad))
  end
  return table.concat(t)
end

-- Descriptors of this process open on path (readlink of /proc/PID/fd/*).
local function fds_on(path)
  local pid = server.own_pid()
  local p = io.popen("for f in /proc/" .. pid .. "/fd/*; do readlink \"$f\"; done 2>/dev/null")
  local n = 0
  for l in p:lines() do
    if l == path or l == path .. " (deleted)" then n = n + 1 end
  end
  p:close()
  return n
end

local function wait_for_file(path, what)
  for _ = 1, 3000 do
    local f = io.open(path, "rb")
    if f then
      f:close()
      return
    end
    core.poll(0.01) -- the engine keeps sending meanwhile
  end
  error("waited 30 s for " .. what)
end

-- A sparse file of n bytes (zeros; nothing on disk).
local function sparse(path, n)
  local f = assert(io.open(path, "wb"))
  f:seek("set", n - 1)
  f:write("\0")
  f:close()
end

describe("a request body from a file", function()
  local srv, dir, client
  setup(function() srv = server.start() end)
  teardown(function() srv:stop() end)
  before_each(function()
    srv:reset()
    srv:default({ json = { ok = true } })
    dir = proc.tmpdir()
    client = luachat.client { base_url = srv.base_url, api_key = "sk-upload", max_retries = 0 }
  end)
  after_each(function()
    os.execute("rm -rf " .. q(dir))
    assert.equal(0, core.live())
  end)

  local function start(fields)
    local spec = client:transfer_spec("POST", "upload", nil, nil, false, nil)
    for k, v in pairs(fields) do spec[k] = v end
    return assert(core.start(spec))
  end

  it("sends prefix, the file's bytes and suffix with their Content-Length; the handle may close at once", function()
    local data = jsonl(30000, 80) -- ~4.5 MB
    proc.write_file(dir .. "/in.jsonl", data)
    local f = assert(io.open(dir .. "/in.jsonl", "rb"))
    f:seek("set", 7)
    local t = start { body_prefix = "<<head>>", body_file = f, body_suffix = "<<tail>>" }
    assert.equal(7, f:seek("cur")) -- the engine reads at its own offsets
    f:close() -- the transfer has its own descriptor
    local r = request.wait_result(t)
    assert.equal(200, r.status)
    local got = srv:requests()[1]
    assert.equal(tostring(#data + 16), got.headers["content-length"])
    assert.is_nil(got.headers["transfer-encoding"])
    assert.is_true(got.body == "<<head>>" .. data .. "<<tail>>", "the body differs")
    assert.equal(0, fds_on(dir .. "/in.jsonl"))
    -- an empty file, no prefix or suffix: an empty body
    proc.write_file(dir .. "/empty", "")
    f = assert(io.open(dir .. "/empty", "rb"))
    r = request.wait_result(start { body_file = f })
    f:close()
    assert.equal(200, r.status)
    got = srv:requests()[2]
    assert.same({ "0", "" }, { got.headers["content-length"], got.body })
  end)

  it("what a script wrote and has not flushed is sent", function()
    local f = assert(io.tmpfile())
    f:write("written, not flushed")
    local r = request.wait_result(start { body_file = f })
    f:close()
    assert.equal(200, r.status)
    assert.equal("written, not flushed", srv:requests()[1].body)
  end)

  it("a reused connection that died before answering: curl sends the whole body again", function()
    local data = jsonl(2000, 100)
    proc.write_file(dir .. "/in.jsonl", data)
    -- the GET leaves its connection for reuse; the server reads the POST, then closes it unanswered
    srv:script { { json = { first = true } }, { raw = "" }, { json = { ok = "again" } } }
    local r = request.wait_result(assert(core.start(client:transfer_spec("GET", "warm", nil, nil, false, nil))))
    assert.equal(200, r.status)
    local f = assert(io.open(dir .. "/in.jsonl", "rb"))
    r = request.wait_result(start { body_prefix = "A", body_file = f, body_suffix = "Z" })
    f:close()
    assert.is_nil(r.failure, r.message)
    assert.equal(200, r.status)
    assert.matches("again", r.body)
    local reqs = srv:requests()
    assert.equal(3, #reqs)
    assert.is_true(reqs[2].body == "A" .. data .. "Z", "the first send differs")
    assert.is_true(reqs[3].body == "A" .. data .. "Z", "the second send differs")
    assert.equal(0, fds_on(dir .. "/in.jsonl"))
  end)

  -- upload_server.py on path with action; -> its dir, base url
  local function upload_server(action, path)
    local d = dir .. "/us"
    os.execute("mkdir -p " .. q(d))
    assert(os.execute(string.format("python3 %s %s %s %s %d </dev/null >/dev/null 2>&1 &", q(UPLOAD_SERVER), q(d),
      q(action), q(path), MB)))
    for _ = 1, 1000 do
      local port = proc.read_file(d .. "/port")
      if port then return d, "http://127.0.0.1:" .. port .. "/v1" end
      os.execute("sleep 0.01")
    end
    error("upload_server.py did not start")
  end

  local function report(d)
    wait_for_file(d .. "/report", "the upload server's report")
    return require("luachat.json").decode(proc.read_file(d .. "/report"))
  end

  -- An upload of a sparse file of n bytes (dir/big) to an upload server doing
  -- `action`, with the extra transfer fields given: the started transfer, the
  -- server's directory, the client and the file's path. The script's own handle
  -- is closed once the transfer has started (the transfer holds a descriptor of its own).
  local function start_upload(n, action, fields)
    local path = dir .. "/big"
    sparse(path, n)
    local d, url = upload_server(action, path)
    local c = luachat.client { base_url = url, api_key = "sk-upload" }
    local f = assert(io.open(path, "rb"))
    local spec = c:transfer_spec("POST", "files", nil, nil, false, nil)
    for k, v in pairs(fields or {}) do spec[k] = v end
    spec.body_file = f
    local t = assert(core.start(spec))
    f:close()
    return t, d, c, path
  end

  it("a file that shrinks during the upload: failure body_file, err kind input, never retried", function()
    local t, d, c, path = start_upload(64 * MB, "truncate:" .. (32 * MB), { body_prefix = "P", body_suffix = "S" })
    local r = request.wait_result(t)
    assert.equal("body_file", r.failure)
    assert.equal("the request body's file ended at byte 33554432 of 67108864: it shrank during the upload", r.message)
    local err = c:error_for(r, "POST /v1/files")
    assert.same({ "input", false }, { err.kind, err.retryable })
    assert.equal("POST /v1/files: the request body's file ended at byte 33554432 of 67108864: it shrank during the upload",
      err.message)
    local rep = report(d)
    assert.is_false(rep.complete)
    assert.equal(64 * MB + 2, rep.length)
    assert.is_true(rep.received < rep.length)
    assert.equal(0, fds_on(path))
  end)

  it("a file whose name is removed during the upload is sent whole (the transfer holds it open)", function()
    local t, d, _, path = start_upload(8 * MB, "unlink")
    local r = request.wait_result(t)
    assert.is_nil(r.failure, r.message)
    assert.equal(200, r.status)
    local rep = report(d)
    assert.same({ true, 8 * MB, 8 * MB }, { rep.complete, rep.length, rep.received })
    assert.is_nil(io.open(path))
    assert.equal(0, fds_on(path))
  end)

  it("cancelled mid-upload: the transfer's descriptor is closed at once", function()
    local t, d, _, path = start_upload(16 * MB, "hold")
    wait_for_file(d .. "/started", "the upload to start")
    assert.equal(1, fds_on(path)) -- the transfer's own
    t:close()
    assert.equal(0, fds_on(path))
    assert.equal(0, core.live())
    proc.write_file(d .. "/go", "")
    assert.is_false(report(d).complete)
  end)

  it("refuses what is not an open regular file, and body with body_file", function()
    local spec = client:transfer_spec("POST", "upload", nil, nil, false, nil)
    spec.body_file = dir
    assert.error_matches(function() core.start(spec) end, "field 'body_file' must be a file handle")
    local f = assert(io.open(dir .. "/x", "wb"))
    f:close()
    spec.body_file = f
    assert.error_matches(function() core.start(spec) end, "field 'body_file' is a closed file")
    local p = io.popen("true")
    spec.body_file = p
    assert.error_matches(function() core.start(spec) end, "field 'body_file' must be a regular file")
    p:close()
    f = assert(io.open(dir .. "/x", "wb")) -- open, regular, but not for reading
    spec.body_file = f
    assert.error_matches(function() core.start(spec) end, "field 'body_file' must be open for reading")
    f:close()
    f = assert(io.open(dir .. "/x", "rb"))
    spec.body_file, spec.body = f, "x"
    assert.error_matches(function() core.start(spec) end, "fields 'body' and 'body_file' cannot both be given")
    spec.body_file, spec.body_suffix = nil, "s"
    assert.error_matches(function() core.start(spec) end, "need 'body_file'")
    f:close()
    assert.equal(0, #srv:requests())
  end)

  describe("luachat batch --remote", function()
    local function boundary_of(req)
      return req.headers["content-type"]:match("^multipart/form%-data; boundary=(.+)$")
    end

    local function expected(req, data, name)
      return (remote.multipart({ { "purpose", "batch" }, { "file", data, name, "application/jsonl" } }, boundary_of(req)))
    end

    local function run(input)
      return remote.run { client = client, input = input, output = dir .. "/out.jsonl", poll_interval = 0.01 }
    end

    it("uploads byte for byte what M.multipart makes of the file (small and multi-megabyte)", function()
      for i, data in ipairs { jsonl(3, 10), jsonl(25000, 150) } do
        srv:reset()
        proc.write_file(dir .. "/in.jsonl", data)
        os.remove(dir .. "/out.jsonl")
        local s = assert(run(dir .. "/in.jsonl"))
        assert.equal(i == 1 and 3 or 25000, s.total)
        local up = srv:requests()[1]
        assert.equal("/v1/files", up.path)
        local want = expected(up, data, "in.jsonl")
        assert.equal(tostring(#want), up.headers["content-length"])
        assert.is_true(up.body == want, "the upload differs from M.multipart's body")
        assert.matches('name="file"; filename="in.jsonl"\r\nContent-Type: application/jsonl\r\n\r\n{"custom_id":"r1"',
          up.body, 1, true)
      end
      -- the prefix and suffix are M.multipart's body around the file, byte for byte
      local prefix, suffix, ctype = remote.multipart({ { "purpose", "batch" }, { "file", false, "x", "t" } }, "B")
      assert.equal(remote.multipart({ { "purpose", "batch" }, { "file", "DATA", "x", "t" } }, "B"), prefix .. "DATA" .. suffix)
      assert.equal("multipart/form-data; boundary=B", ctype)
    end)

    it("a 500 then a 429 on the upload: each retry sends the whole body again", function()
      local data = jsonl(5000, 150) -- ~1 MB
      proc.write_file(dir .. "/in.jsonl", data)
      srv:control("/_control/rules", { rules = {
        { path = "/v1/files", times = 1, response = { status = 500, headers = { ["retry-after-ms"] = "10" },
          json = { error = { message = "try again" } } } },
        { path = "/v1/files", times = 1, response = { status = 429, headers = { ["retry-after-ms"] = "10" },
          json = { error = { message = "slow down" } } } } } })
      local s = assert(run(dir .. "/in.jsonl"))
      assert.equal(5000, s.total)
      local ups = {}
      for _, r in ipairs(srv:requests()) do
        if r.path == "/v1/files" then ups[#ups + 1] = r end
      end
      assert.equal(3, #ups)
      local want = expected(ups[1], data, "in.jsonl")
      for i, up in ipairs(ups) do
        assert.is_true(up.body == want, "attempt " .. i .. " sent another body")
        assert.equal(tostring(#want), up.headers["content-length"])
        assert.equal(ups[1].headers["idempotency-key"], up.headers["idempotency-key"])
      end
      assert.equal(0, fds_on(dir .. "/in.jsonl"))
    end)

    it("standard input (-) is uploaded from its unnamed copy, whole #once", function()
      local data = jsonl(20000, 150) -- ~3.5 MB
      proc.write_file(dir .. "/in.jsonl", data)
      local env = "env -u LUACHAT_PROFILE -u OPENAI_BASE_URL XDG_CONFIG_HOME=" .. q(dir) .. " OPENAI_API_KEY=sk-upload "
      local _, err, code = proc.run(string.format("cat %s | %s%s batch - -o %s --remote --poll-interval 0.01 --base-url %s",
        q(dir .. "/in.jsonl"), env, q(HOST), q(dir .. "/out.jsonl"), q(srv.base_url)))
      assert.equal(0, code, err)
      local up = srv:requests()[1]
      assert.is_true(up.body == expected(up, data, "stdin.jsonl"), "the upload differs")
    end)

    it("Ctrl-C mid-upload: exit 130 #once", function()
      -- 16 MB: more than the socket buffers hold past the server's first MB, so it is mid-upload
      local data = jsonl(160, 100000)
      proc.write_file(dir .. "/in.jsonl", data)
      local d, url = upload_server("hold", dir .. "/in.jsonl")
      local env = "env -u LUACHAT_PROFILE -u OPENAI_BASE_URL XDG_CONFIG_HOME=" .. q(dir) .. " OPENAI_API_KEY=sk-upload "
      local _, err, code = proc.run(string.format("%s%s batch %s -o %s --remote --base-url %s & pid=$!; "
        .. "until [ -e %s ] || ! kill -0 $pid 2>/dev/null; do sleep 0.02; done; kill -INT $pid; wait $pid",
        env, q(HOST), q(dir .. "/in.jsonl"), q(dir .. "/out.jsonl"), q(url), q(d .. "/started")))
      proc.write_file(d .. "/go", "")
      assert.equal(130, code, err)
      assert.matches("interrupted", err)
      assert.is_false(report(d).complete)
    end)

    it("memory: a 50 MB input is uploaded with a peak RSS far below its size #once", function()
      local script = dir .. "/peak.lua"
      proc.write_file(script, [[
local remote = require "luachat.batch_remote"
local c = require("luachat").client { base_url = arg[2], api_key = "sk-upload" }
local s = assert(remote.run { client = c, input = arg[1], output = arg[3], poll_interval = 0.01 })
local st = io.open("/proc/self/status"):read("a")
io.write(s.total, " ", st:match("VmHWM:%s*(%d+) kB"), "\n")
]])
      local function peak(input, n)
        os.remove(dir .. "/out.jsonl")
        -- ASan's quarantine would keep every freed line: a peak of the allocator, not of the upload
        local out, err, code = proc.run(string.format("ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}quarantine_size_mb=1 %s %s %s %s %s",
          q(HOST), q(script), q(input), q(srv.base_url), q(dir .. "/out.jsonl")))
        assert.equal(0, code, err)
        local total, kb = out:match("^(%d+) (%d+)\n$")
        assert.equal(n, tonumber(total), out)
        return tonumber(kb) * 1024
      end
      local line = string.format('{"custom_id":"r%%d","body":{"model":"m","messages":[{"role":"user","content":"%s"}]}}\n',
        string.rep("x", 100000))
      local f = assert(io.open(dir .. "/big.jsonl", "wb"))
      for i = 1, 500 do f:write(line:format(i)) end
      local size = f:seek("end")
      f:close()
      proc.write_file(dir .. "/small.jsonl", line:format(1))
      local base = peak(dir .. "/small.jsonl", 1)
      srv:reset()
      srv:default({ json = { ok = true } })
      local big = peak(dir .. "/big.jsonl", 500)
      assert.is_true(size > 50e6)
      assert.is_true(big - base < size / 4, string.format("peak RSS %d bytes over the base %d for a %d-byte file",
        big - base, base, size))
      -- and the server has all of it
      local p = io.popen("curl -s " .. q(srv.base_url .. "/files/file-1"))
      local meta = require("luachat.json").decode(p:read("a"))
      p:close()
      assert.equal(size, meta.bytes)
    end)
  end)
end)
