-- spec/testserver_spec.lua: scripts/testserver.py and spec/helpers/server.lua,
-- checked from outside with the curl command-line tool only.
-- Must never use luachat: this is the harness every integration spec trusts.
-- Run: busted spec/testserver_spec.lua (from the repository root).
-- run-tests: once (it never loads luachat; scripts/run-tests.sh)
local cjson = require "cjson"
local server = require "spec.helpers.server"

local proc = require "spec.helpers.proc"
local shell_quote, read_file, write_file = proc.shell_quote, proc.read_file, proc.write_file

local function sleep(s) os.execute("sleep " .. s) end

-- Headers of the last response in a curl -D file: { lower-case name = {values...} }.
local function parse_headers(text)
  local blocks = {}
  for block in (text or ""):gmatch("(HTTP/.-\r\n)\r\n") do blocks[#blocks + 1] = block end
  local last = blocks[#blocks] or ""
  local status = tonumber(last:match("^HTTP/[%d.]+ (%d+)"))
  local h = {}
  for name, value in last:gmatch("\n([^:\r\n]+):%s*([^\r\n]*)") do
    name = name:lower()
    h[name] = h[name] or {}
    table.insert(h[name], value)
  end
  return status, h
end

describe("test server", function()
  local srv, tmp, pid

  -- curl ARGS URL...: { code = exit status, status, headers (first value per
  -- name), all (every value), head (raw header bytes, every response), body
  -- (every response's, concatenated), out (stdout: -w) }.
  local function curl(args, ...)
    local urls, outs = {}, {}
    for i, u in ipairs { ... } do
      outs[i] = tmp .. "/body" .. i
      os.remove(outs[i])
      urls[i] = "-o " .. outs[i] .. " " .. shell_quote(u) -- -o applies to one URL
    end
    local hdr = tmp .. "/headers"
    os.remove(hdr)
    local p = io.popen(string.format("curl -s -N -D %s %s %s 2>/dev/null",
      hdr, args or "", table.concat(urls, " ")))
    local stdout = p:read("a")
    local _, _, code = p:close()
    local head = read_file(hdr) or ""
    local status, all = parse_headers(head)
    local first = {}
    for k, v in pairs(all) do first[k] = v[1] end
    local bodies = {}
    for i, o in ipairs(outs) do bodies[i] = read_file(o) or "" end
    return { code = code, status = status, headers = first, all = all, head = head,
      body = table.concat(bodies), out = stdout }
  end

  local function url(path) return srv.url .. (path or "/v1/chat/completions") end

  setup(function()
    tmp = os.tmpname()
    os.remove(tmp)
    assert(os.execute("mkdir -p " .. shell_quote(tmp)))
    srv = server.start()
    pid = srv.pid
  end)

  teardown(function()
    local dir = srv.dir
    assert.is_true(srv:stop(), "the server did not exit on SIGTERM")
    assert.is_false(server.alive(pid))
    assert.is_nil(read_file(dir .. "/port"))
    assert.is_true(srv:stop()) -- idempotent
    os.execute("rm -rf " .. shell_quote(tmp))
  end)

  before_each(function() srv:reset() end)

  it("starts on a free port and knows its own Lua process", function()
    assert.matches("^http://127%.0%.0%.1:%d+$", srv.url)
    assert.equal(srv.url .. "/v1", srv.base_url)
    assert.is_true(srv.port > 0)
    assert.is_true(server.alive(srv.pid))
    -- /proc/self/stat and the $PPID of a shell io.popen starts agree on our pid
    local p = io.popen("echo $PPID")
    local ppid = tonumber(p:read("l"))
    p:close()
    assert.equal(ppid, server.own_pid())
    -- and that pid is the process the server watches
    local cmdline = read_file("/proc/" .. srv.pid .. "/cmdline"):gsub("%z", " ")
    assert.matches("%-%-parent%-pid " .. ppid .. " ", cmdline .. " ")
  end)

  it("serves a canned JSON body with its headers", function()
    srv:script {
      { status = 201, json = { answer = 42, list = { 1, 2, 3 }, nested = { ok = true } },
        headers = { ["X-Custom"] = "yes" } },
      { json = { n = 2 }, headers = { ["X-Request-Id"] = "mine" }, content_type = "application/vnd.x+json" },
    }
    local r = curl(nil, url())
    assert.equal(0, r.code)
    assert.equal(201, r.status)
    assert.equal("application/json", r.headers["content-type"])
    assert.equal("yes", r.headers["x-custom"])
    assert.matches("^req_%d+$", r.headers["x-request-id"])
    assert.equal(tostring(#r.body), r.headers["content-length"])
    assert.is_nil(r.headers["transfer-encoding"])
    assert.is_nil(r.body:find(" ", 1, true)) -- compact
    assert.same({ answer = 42, list = { 1, 2, 3 }, nested = { ok = true } }, cjson.decode(r.body))
    r = curl(nil, url())
    assert.same({ "mine" }, r.all["x-request-id"]) -- the spec's own id replaces ours
    assert.same({ "application/vnd.x+json" }, r.all["content-type"])
    assert.equal('{"n":2}', r.body)
  end)

  it("records method, path, query, headers and body exactly", function()
    local raw = 'hello\n"world"\r\n\0end'
    write_file(tmp .. "/req1", raw)
    write_file(tmp .. "/req2", '{"model":"m","messages":[]}')
    curl("-X PUT -H 'X-Test: Some Value' --data-binary @" .. tmp .. "/req1", url("/v1/things?a=1&b=two%20x"))
    curl("-H 'Transfer-Encoding: chunked' -H 'Content-Type: application/json' --data-binary @" .. tmp .. "/req2", url())
    curl(nil, url("/v1/models"))
    curl("-X OPTIONS", url("/anything"))
    local reqs = srv:requests()
    assert.equal(4, #reqs) -- control calls are not recorded
    local a, b, c, d = reqs[1], reqs[2], reqs[3], reqs[4]
    assert.equal("PUT", a.method)
    assert.equal("/v1/things", a.path)
    assert.equal("a=1&b=two%20x", a.query)
    assert.equal("Some Value", a.headers["x-test"])
    assert.equal(tostring(#raw), a.headers["content-length"])
    assert.equal("127.0.0.1:" .. srv.port, a.headers["host"])
    assert.equal(raw, a.body)
    assert.is_nil(a.json)
    assert.equal("POST", b.method)
    assert.equal("chunked", b.headers["transfer-encoding"])
    assert.equal('{"model":"m","messages":[]}', b.body)
    assert.equal("m", b.json.model)
    assert.equal("GET", c.method)
    assert.equal("/v1/models", c.path)
    assert.equal("", c.query)
    assert.equal("", c.body)
    assert.equal("OPTIONS", d.method)
    for i, r in ipairs(reqs) do
      assert.equal("number", type(r.time))
      if i > 1 then assert.is_true(r.time >= reqs[i - 1].time) end
    end
  end)

  it("streams SSE in 7-byte writes with per-event delays, complete and in order", function()
    srv:script { {
      sse = {
        { json = { n = 1 } },
        { json = { n = 2 }, delay = 0.15 },
        ": ping\n\n",
        { data = "a\nb", event = "update", id = "7", retry = 1000, delay = 0.15 },
        "data: par", "tial\r\n\r\n",
      },
      write_size = 7, done = true,
    } }
    local r = curl("-w '%{time_total}'", url())
    assert.equal(0, r.code)
    assert.equal("text/event-stream", r.headers["content-type"])
    assert.equal("chunked", r.headers["transfer-encoding"])
    assert.equal('data: {"n":1}\n\ndata: {"n":2}\n\n: ping\n\n'
      .. "event: update\nid: 7\nretry: 1000\ndata: a\ndata: b\n\n"
      .. "data: partial\r\n\r\ndata: [DONE]\n\n", r.body)
    assert.is_true(tonumber(r.out) >= 0.3, "the event delays were not applied")
  end)

  it("appends [DONE] with the chosen line ends; chunked=false ends with the connection", function()
    srv:script {
      { sse = { { json = { x = 1 } } }, line_end = "\r\n", done = true },
      { sse = { { json = { x = 1 } } } },
      { sse = { { data = "y" } }, done = true, chunked = false },
    }
    assert.equal('data: {"x":1}\r\n\r\ndata: [DONE]\r\n\r\n', curl(nil, url()).body)
    assert.equal('data: {"x":1}\n\n', curl(nil, url()).body) -- no done: no [DONE]
    local r = curl(nil, url())
    assert.equal(0, r.code)
    assert.equal("data: y\n\ndata: [DONE]\n\n", r.body)
    assert.is_nil(r.headers["transfer-encoding"])
    assert.is_nil(r.headers["content-length"])
    assert.equal("close", r.headers["connection"])
  end)

  it("sends a 429 with Retry-After and an OpenAI-style error", function()
    srv:script { { status = 429, headers = { ["Retry-After"] = "2" },
      json = { error = { message = "Rate limit reached", type = "requests", code = "rate_limit_exceeded" } } } }
    local r = curl(nil, url())
    assert.equal(429, r.status)
    assert.equal("2", r.headers["retry-after"])
    assert.equal("Rate limit reached", cjson.decode(r.body).error.message)
  end)

  it("close_after cuts the response after N bytes, status line and headers included", function()
    local long = string.rep("x", 2000)
    srv:script { { json = { text = long }, close_after = 300 }, { sse = { { data = long } }, close_after = 400 },
      { json = { text = long }, close_after = 10 } }
    local r = curl(nil, url())
    assert.equal(18, r.code) -- CURLE_PARTIAL_FILE: fewer bytes than Content-Length
    assert.equal(300, #r.head + #r.body)
    r = curl(nil, url())
    assert.equal(18, r.code) -- the chunked body never ended
    assert.is_true(#r.body > 0 and #r.body < 2000)
    r = curl(nil, url())
    assert.is_true(r.code ~= 0)
    assert.equal(200, curl(nil, url("/_control/stats")).status) -- still serving
  end)

  it("stall_after pauses the response for `stall` seconds, then finishes it", function()
    local body = string.rep("0123456789", 50)
    -- curl gives up at 3 s, long before the 20 s stall ends (the first 300 bytes may be slow under load)
    srv:script { { body = body, stall_after = 300, stall = 20 }, { body = body, stall_after = 300, stall = 0.3 } }
    local r = curl("--max-time 3", url())
    assert.equal(28, r.code) -- CURLE_OPERATION_TIMEDOUT: stuck at the mark
    assert.equal(300, #r.head + #r.body)
    r = curl("-w '%{time_total}'", url())
    assert.equal(0, r.code)
    assert.equal(body, r.body)
    assert.is_true(tonumber(r.out) >= 0.3)
  end)

  it("raw writes bytes verbatim instead of a response", function()
    srv:script {
      { raw = "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Raw: 1\r\n\r\nhello" },
      { raw = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nmore" },
      { raw = "garbage\r\n\r\n" },
    }
    local r = curl(nil, url())
    assert.equal(0, r.code)
    assert.equal("hello", r.body)
    assert.equal("1", r.headers["x-raw"])
    assert.is_nil(r.headers["x-request-id"]) -- nothing added
    r = curl(nil, url())
    assert.equal(56, r.code) -- CURLE_RECV_ERROR: bad chunk size
    assert.equal("hello", r.body)
    r = curl(nil, url())
    assert.is_true(r.code ~= 0)
    assert.equal(3, #srv:requests())
  end)

  it("repeat serves one response N times; then the queue; then the default", function()
    srv:script { { json = { n = 1 }, ["repeat"] = 3 } }
    srv:append { { json = { n = 2 } } }
    local got = {}
    for i = 1, 5 do got[i] = curl(nil, url()).body end
    assert.same({ '{"n":1}', '{"n":1}', '{"n":1}', '{"n":2}',
      '{"error":{"message":"no scripted response","type":"invalid_request_error"}}' }, got)
  end)

  it("serves the default when the queue is empty, 404 until one is set", function()
    local r = curl(nil, url())
    assert.equal(404, r.status)
    assert.same({ error = { message = "no scripted response", type = "invalid_request_error" } }, cjson.decode(r.body))
    srv:default { json = { ok = true } }
    srv:script { { json = { n = 9 } } }
    assert.equal('{"n":9}', curl(nil, url()).body) -- the queue first
    assert.equal('{"ok":true}', curl(nil, url()).body)
    assert.equal('{"ok":true}', curl(nil, url("/other")).body) -- any path
    srv:default(nil)
    assert.equal(404, curl(nil, url()).status)
  end)

  it("answers a broken spec or control call with an error that names it", function()
    srv:script { { status = "abc" } }
    local r = curl(nil, url())
    assert.equal(500, r.status)
    assert.matches("bad response spec", r.body)
    assert.has_error(function() srv:control("/_control/script", { responses = "x" }) end)
    assert.has_error(function() srv:control("/_control/nope", {}) end)
  end)

  -- Parse an SSE body into decoded data events; the last must be [DONE].
  local function parse_sse(body)
    local events = {}
    for block in body:gmatch("(.-)\n\n") do
      local data = assert(block:match("^data: (.*)$"), "not one data line: " .. block)
      events[#events + 1] = data
    end
    assert.equal("[DONE]", table.remove(events))
    for i, e in ipairs(events) do events[i] = { json = cjson.decode(e), size = #e + 8 } end
    return events
  end

  it("generate builds N realistic text chunks with the advertised content bytes", function()
    srv:script { { generate = { kind = "text", chunks = 37, usage = true, model = "m1" } } }
    local r = curl(nil, url())
    assert.equal(0, r.code)
    assert.equal("37", r.headers["x-luachat-chunks"])
    local events = parse_sse(r.body)
    assert.equal(37 + 2, #events) -- content, finish, usage
    local bytes = 0
    for i = 1, 37 do
      local c = events[i].json
      assert.equal("chat.completion.chunk", c.object)
      assert.equal("m1", c.model)
      assert.is_string(c.id)
      assert.is_string(c.system_fingerprint)
      assert.equal(cjson.null, c.choices[1].finish_reason)
      assert.equal(cjson.null, c.choices[1].logprobs)
      assert.equal(i == 1 and "assistant" or nil, c.choices[1].delta.role)
      bytes = bytes + #c.choices[1].delta.content
      assert.is_true(events[i].size >= 200 and events[i].size <= 270, "chunk of " .. events[i].size .. " bytes")
    end
    assert.equal(tonumber(r.headers["x-luachat-content-bytes"]), bytes)
    assert.equal("stop", events[38].json.choices[1].finish_reason)
    assert.is_nil(next(events[39].json.choices))
    assert.equal(37, events[39].json.usage.completion_tokens)
    -- cached by parameters: the same bytes again
    srv:script { { generate = { kind = "text", chunks = 37, usage = true, model = "m1" } } }
    assert.equal(r.body, curl(nil, url()).body)
  end)

  it("generate tool_args sends one call whose arguments arrive in N fragments", function()
    srv:script { { generate = { kind = "tool_args", chunks = 20, usage = false } } }
    local r = curl(nil, url())
    local events = parse_sse(r.body)
    assert.equal(21, #events) -- no usage chunk
    local args = {}
    for i = 1, 20 do
      local call = events[i].json.choices[1].delta.tool_calls[1]
      assert.equal(0, call.index)
      if i == 1 then
        assert.is_string(call.id)
        assert.equal("function", call.type)
        assert.is_string(call["function"].name)
      else
        assert.is_nil(call.id)
      end
      args[i] = call["function"].arguments
    end
    local text = table.concat(args)
    assert.equal(tonumber(r.headers["x-luachat-content-bytes"]), #text)
    assert.is_table(cjson.decode(text))
    assert.equal("tool_calls", events[21].json.choices[1].finish_reason)
  end)

  it("keeps connections alive; close_connection closes one that looked keep-alive", function()
    srv:script { { json = { n = 1 } }, { json = { n = 2 } } }
    local before = srv:stats().connections
    local r = curl(nil, url(), url())
    local after = srv:stats().connections
    assert.equal('{"n":1}{"n":2}', r.body)
    assert.equal(2, after - before) -- one for curl's two requests, one for the stats call
    srv:script { { json = { n = 1 }, close_connection = true }, { json = { n = 2 } } }
    before = srv:stats().connections
    r = curl(nil, url(), url())
    after = srv:stats().connections
    assert.equal(0, r.code)
    assert.equal('{"n":1}{"n":2}', r.body)
    assert.is_nil(r.head:lower():find("connection: close", 1, true)) -- nothing announced it
    assert.equal(3, after - before) -- curl had to connect again
  end)

  it("hold_until answers once N requests have arrived; after hold_timeout, a 504 naming the count", function()
    srv:default { json = { ok = true }, hold_until = 2, hold_timeout = 30 }
    -- two requests at once, on two connections (no waiting to multiplex)
    local r = curl("-Z --parallel-immediate", url(), url())
    assert.equal(0, r.code)
    assert.equal('{"ok":true}{"ok":true}', r.body)
    assert.equal(2, #srv:requests())
    srv:reset() -- the count starts again from the reset
    srv:default { json = { ok = true }, hold_until = 2, hold_timeout = 0.2 }
    r = curl(nil, url())
    assert.equal(504, r.status)
    assert.same({ error = { type = "testserver_hold_timeout",
      message = "testserver: hold_until 2: only 1 requests arrived in 0.2 s" } }, cjson.decode(r.body))
  end)

  it("/_control/listen opens another port served by the same server", function()
    srv:script { { json = { n = 1 } } }
    local port = math.tointeger(srv:control("/_control/listen", {}).port) -- cjson decodes 1 as 1.0
    assert.is_true(port > 0 and port ~= srv.port)
    local r = curl(nil, "http://127.0.0.1:" .. port .. "/v1/chat/completions")
    assert.equal(200, r.status)
    assert.equal('{"n":1}', r.body)
    assert.equal(1, #srv:requests())
  end)

  it("reset clears the queue, the default and the request log", function()
    srv:script { { json = { n = 1 } }, { json = { n = 2 } } }
    srv:default { json = { ok = true } }
    curl(nil, url())
    assert.equal(1, #srv:requests())
    srv:reset()
    assert.equal(0, #srv:requests())
    assert.equal(404, curl(nil, url()).status)
  end)

  it("reports its CPU time, requests and connections", function()
    local a = srv:stats()
    curl(nil, url())
    local b = srv:stats()
    assert.is_number(a.cpu_seconds)
    assert.is_true(b.cpu_seconds >= a.cpu_seconds and a.cpu_seconds > 0)
    assert.equal(a.requests + 1, b.requests)
    assert.equal(a.connections + 2, b.connections)
  end)
end)

describe("test server lifetime", function()
  it("exits when --parent-pid is gone and after --max-lifetime", function()
    local p = io.popen("sleep 0.3 >/dev/null 2>&1 & echo $!")
    local parent = tonumber(p:read("l"))
    p:close()
    local orphan = server.start { parent_pid = parent }
    local short = server.start { args = "--max-lifetime 1" }
    local gone = {}
    for _ = 1, 600 do -- the watchdog checks every 0.5 s; a generous bound for a loaded machine
      gone.orphan = not orphan:alive()
      gone.short = not short:alive()
      if gone.orphan and gone.short then break end
      sleep(0.05)
    end
    orphan:stop()
    short:stop()
    assert.same({ orphan = true, short = true }, gone)
  end)

  it("fails clearly when the server cannot start", function()
    local ok, err = pcall(server.start, { args = "--port -5" })
    assert.is_false(ok)
    assert.matches("test server did not start", err)
  end)
end)
