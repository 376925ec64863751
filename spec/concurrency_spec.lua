-- Concurrent requests to one host (issue 13 item 2). Local servers (llama.cpp,
-- Ollama, vLLM) speak plain HTTP/1.1: requests started together must reach the
-- server together, each on its own connection, never one after another while
-- curl waits to learn whether the first connection can multiplex (HTTP/2).
-- No timings: the test server holds every answer until it has received N
-- requests (`hold_until`), so a client that sends them one at a time gets a
-- 504 from the server after `hold_timeout` and the spec fails cleanly; the
-- clients' idle_timeout bounds the deadlock case the same way.
local server = require "spec.helpers.server"
local proc = require "spec.helpers.proc"
local luachat = require "luachat"
local core = require "luachat.core"
local json = luachat.json

local KEY = "sk-concurrency-0123456789"
-- Generous: once fixed, every request arrives at once and a hold ends at the
-- last arrival; unfixed, the first request waits this long, then gets a 504.
local HOLD = 15

local completion = {
  id = "chatcmpl-c", object = "chat.completion", created = 1700000000, model = "m",
  choices = { { index = 0, message = { role = "assistant", content = "hello" }, finish_reason = "stop" } },
}

local function text_chunk(text)
  return { id = "chatcmpl-s", object = "chat.completion.chunk", created = 1700000000, model = "m",
    choices = { { index = 0, delta = { content = text }, finish_reason = json.null } } }
end

local function have(cmd) return os.execute("command -v " .. cmd .. " >/dev/null 2>&1") == true end

-- `close`: answer with "Connection: close" and close, so no connection is reused.
local function closing(spec, close)
  if close then
    spec.headers = { Connection = "close" }
    spec.close_connection = true
  end
  return spec
end

-- A response spec held until `n` requests have arrived.
local function held(spec, n, close)
  spec.hold_until, spec.hold_timeout = n, HOLD
  return closing(spec, close)
end

local function stream_body()
  return { sse = { { json = text_chunk("a") }, { json = text_chunk("b") }, { json = text_chunk("c") } }, done = true }
end

-- n non-streamed chats and m streams spawned together: { {res, err}, ... }.
-- The streams go through sc when given (another base URL on the same host).
local function run_together(c, n, m, sc)
  sc = sc or c
  local tasks = {}
  for i = 1, n do
    tasks[#tasks + 1] = luachat.spawn(function()
      local res, err = c:chat { model = "m", messages = { { role = "user", content = "chat " .. i } } }
      return res and res.choices[1].message.content, err
    end)
  end
  for i = 1, m do
    tasks[#tasks + 1] = luachat.spawn(function()
      local chunks = {}
      local final, err = sc:stream({ model = "m", messages = { { role = "user", content = "stream " .. i } } },
        function(chunk) chunks[#chunks + 1] = luachat.delta_text(chunk) end)
      -- every chunk reached the callback, and the final holds them all
      return final and table.concat(chunks) .. "/" .. final.choices[1].message.content, err
    end)
  end
  return luachat.gather(tasks)
end

local function assert_all_ok(all, n, m)
  assert.equal(n + m, #all)
  for i = 1, n do
    assert.is_nil(all[i][2], "chat " .. i .. ": " .. tostring(all[i][2]))
    assert.equal("hello", all[i][1])
  end
  for i = n + 1, n + m do
    assert.is_nil(all[i][2], "stream " .. (i - n) .. ": " .. tostring(all[i][2]))
    assert.equal("abc/abc", all[i][1])
  end
end

-- The cases, for one way of reaching the server: start() gives a server,
-- client(target) a client for target.base_url.
local function cases(start, client)
  local srv, target

  -- One server, and a new port of it for every case (/_control/listen: the same
  -- server state): curl's connection cache knows a host:port once it has
  -- answered, and the first requests to a new host are the ones a client may
  -- hold back.
  setup(function() srv = start() end)
  teardown(function() if srv then srv:stop() end end)
  before_each(function()
    srv:reset()
    local port = srv:control("/_control/listen", {}).port
    target = { base_url = string.format("%s://127.0.0.1:%d/v1", srv.url:match("^(%a+):"), port) }
  end)
  after_each(function() assert.equal(0, core.live(), "a transfer was left running") end)

  for _, close in ipairs { false, true } do
    local variant = close and " (Connection: close)" or " (keep-alive)"

    it("4 chats started together all reach the server before any answer" .. variant, function()
      srv:default(held({ json = completion }, 4, close))
      assert_all_ok(run_together(client(target), 4, 0), 4, 0)
      local reqs = srv:requests()
      assert.equal(4, #reqs)
      for _, r in ipairs(reqs) do
        assert.equal("/v1/chat/completions", r.path)
        -- HTTP/1.1 as is: no h2c upgrade offer (HTTP/2 is for TLS only)
        assert.is_nil(r.headers["upgrade"])
        assert.is_nil(r.headers["http2-settings"])
      end
    end)

    it("5 streams started together all reach the server before any answer" .. variant, function()
      srv:default(held(stream_body(), 5, close))
      assert_all_ok(run_together(client(target), 0, 5), 0, 5)
      assert.equal(5, #srv:requests())
    end)

    -- 2,000 events (about 200 KB): far past the 48 KiB of unread events at
    -- which a stream's transfer pauses while its callback is busy.
    -- hold_n: answer only once that many requests have arrived.
    local function big_stream(hold_n)
      local events = {}
      for i = 1, 2000 do events[i] = { json = text_chunk(string.format("%04d,", i)) } end
      local spec = { sse = events, done = true }
      if hold_n then return held(spec, hold_n, close) end
      return closing(spec, close)
    end

    -- Runs the outer stream in a task; its first callback calls wait_inner().
    local function outer_stream(c, wait_inner)
      local calls = 0
      local t = luachat.spawn(function()
        return c:stream({ model = "m", messages = { { role = "user", content = "outer" } } }, function()
          calls = calls + 1
          if calls == 1 then wait_inner() end
        end)
      end)
      return t, function() return calls end
    end

    local function assert_outer_ok(final, err, calls)
      assert.is_nil(err, "the stream: " .. tostring(err))
      assert.equal(2000, calls)
      local content = final.choices[1].message.content
      assert.equal(2000 * 5, #content)
      assert.equal("0001,0002,", content:sub(1, 10))
      assert.equal("2000,", content:sub(-5))
      local reqs = srv:requests()
      assert.equal(2, #reqs)
      assert.equal("outer", reqs[1].json.messages[1].content)
      assert.equal("inner", reqs[2].json.messages[1].content)
    end

    local function inner_chat(c)
      return c:chat { model = "m", messages = { { role = "user", content = "inner" } } }
    end

    it("a stream callback waits on a request started just after the stream" .. variant, function()
      -- The stream's answer waits until the inner request has arrived too, so
      -- the inner request starts before the stream has any answer; the stream's
      -- callback then waits for it while the stream's unread events pile up.
      srv:script { big_stream(2), closing({ json = completion }, close) }
      local c = client(target)
      local inner, inner_res, inner_err
      -- spawn(inner) may turn the loop before it returns, so the stream's first
      -- callback can run before `inner` is assigned: it yields until then.
      local t, calls = outer_stream(c, function()
        while not inner do luachat.sleep(0) end
        inner_res, inner_err = inner:wait()
      end)
      -- The stream's request first (it takes the scripted stream): the two go
      -- over separate connections, and either could reach the server first.
      while #srv:requests() < 1 do luachat.sleep(0.01) end
      inner = luachat.spawn(inner_chat, c)
      local final, err = t:wait()
      assert.is_nil(err, "the stream: " .. tostring(err))
      assert.is_nil(inner_err, "the inner request: " .. tostring(inner_err))
      assert.equal("hello", inner_res.choices[1].message.content)
      assert_outer_ok(final, err, calls())
    end)

    it("a stream callback starts a second request and waits for it" .. variant, function()
      srv:script { big_stream(), closing({ json = completion }, close) }
      local c = client(target)
      local inner_res, inner_err
      local t, calls = outer_stream(c, function() inner_res, inner_err = inner_chat(c) end)
      local final, err = t:wait()
      assert.is_nil(inner_err, "the inner request: " .. tostring(inner_err))
      assert.equal("hello", inner_res.choices[1].message.content)
      assert_outer_ok(final, err, calls())
    end)
  end
end

-- Bounded, so a client that never sends a request fails rather than hangs.
local function client_opts(target, extra)
  local o = { base_url = target.base_url, api_key = KEY, max_retries = 0, timeout = 2 * HOLD + 10,
    idle_timeout = HOLD + 5 }
  for k, v in pairs(extra or {}) do o[k] = v end
  return o
end

describe("concurrency over plain HTTP", function()
  cases(server.start, function(target) return luachat.client(client_opts(target)) end)
end)

-- The Python test server speaks HTTP/1.1 only (no ALPN, no HTTP/2): over TLS
-- curl still waits for the first handshake to learn that, then must open a
-- connection per request as over plain HTTP. HTTP/2 itself: nghttpd, below.
local tls_dir
if not have("openssl") then
  error("concurrency over HTTPS: openssl is not installed (scripts/deps.sh installs it)")
else
  describe("concurrency over HTTPS to an HTTP/1.1 server", function()
    setup(function()
      tls_dir = os.tmpname()
      os.remove(tls_dir)
      assert(os.execute("mkdir -p " .. tls_dir))
      assert(os.execute(string.format("openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 "
        .. "-addext subjectAltName=IP:127.0.0.1 -days 1 -keyout %s/key.pem -out %s/cert.pem >/dev/null 2>&1",
        tls_dir, tls_dir)))
    end)
    teardown(function() os.execute("rm -rf " .. tls_dir) end)

    cases(function()
      return server.start { tls = { cert = tls_dir .. "/cert.pem", key = tls_dir .. "/key.pem" } }
    end, function(target)
      return luachat.client(client_opts(target, { ca_file = tls_dir .. "/cert.pem" }))
    end)
  end)
end

-- HTTP/2 over TLS, against nghttpd (Debian's nghttp2-server, which scripts/deps.sh
-- installs) serving files: requests started together to one host share one
-- multiplexed connection (curl's PIPEWAIT waits for the handshake to learn that
-- the server speaks h2), and a stream paused with unread events does not hold up
-- a request its callback waits for. Connections are counted in nghttpd's -v log.
if not have("nghttpd") then
  error("concurrency over HTTP/2: nghttpd is not installed (scripts/deps.sh installs nghttp2-server)")
end

describe("concurrency over HTTP/2 (nghttpd)", function()
  local dir, pid, port, log

  setup(function()
    dir = proc.tmpdir()
    assert(os.execute(string.format("openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 "
      .. "-addext subjectAltName=IP:127.0.0.1 -days 1 -keyout %s/key.pem -out %s/cert.pem >/dev/null 2>&1",
      dir, dir)))
    assert(os.execute("mkdir -p " .. dir .. "/root/v1/chat " .. dir .. "/root/v1/abc/chat " .. dir .. "/root/v1/sse/chat"))
    proc.write_file(dir .. "/root/v1/chat/completions", json.encode(completion))
    local abc = {}
    for _, t in ipairs { "a", "b", "c" } do abc[#abc + 1] = "data: " .. json.encode(text_chunk(t)) .. "\n\n" end
    proc.write_file(dir .. "/root/v1/abc/chat/completions", table.concat(abc) .. "data: [DONE]\n\n")
    local big = {}
    for i = 1, 2000 do big[i] = "data: " .. json.encode(text_chunk(string.format("%04d,", i))) .. "\n\n" end
    proc.write_file(dir .. "/root/v1/sse/chat/completions", table.concat(big) .. "data: [DONE]\n\n")
  end)
  teardown(function() os.execute("rm -rf " .. proc.shell_quote(dir)) end)

  -- A new nghttpd on a free port for every case (curl's connection cache is per host:port).
  before_each(function()
    local p = io.popen("python3 -c 'import socket; s = socket.socket(); s.bind((\"127.0.0.1\", 0)); "
      .. "print(s.getsockname()[1])'")
    port = tonumber(p:read("l"))
    p:close()
    log = dir .. "/nghttpd.log"
    os.remove(log)
    p = io.popen(string.format("nghttpd -a 127.0.0.1 -v -d %s/root %d %s/key.pem %s/cert.pem >%s 2>&1 & echo $!",
      dir, port, dir, dir, log))
    pid = tonumber(p:read("l"))
    p:close()
    for _ = 1, 200 do -- <= 10 s
      if (proc.read_file(log) or ""):find("listen 127.0.0.1:" .. port, 1, true) then break end
      os.execute("sleep 0.05")
    end
    assert.truthy((proc.read_file(log) or ""):find("listen 127.0.0.1:" .. port, 1, true), proc.read_file(log))
  end)
  after_each(function()
    os.execute("kill " .. pid .. " 2>/dev/null; while kill -0 " .. pid .. " 2>/dev/null; do sleep 0.05; done")
    assert.equal(0, core.live(), "a transfer was left running")
  end)

  local function client(path)
    return luachat.client { base_url = "https://127.0.0.1:" .. port .. path, api_key = KEY, max_retries = 0,
      ca_file = dir .. "/cert.pem", timeout = 2 * HOLD + 10, idle_timeout = HOLD + 5 }
  end

  -- Connections nghttpd saw (its sessions, "[id=N]") and the requests (HEADERS frames received).
  local function seen()
    local text = proc.read_file(log) or ""
    local ids, n = {}, 0
    for id in text:gmatch("%[id=(%d+)%]") do
      if not ids[id] then ids[id], n = true, n + 1 end
    end
    local _, requests = text:gsub("recv HEADERS frame", "")
    return n, requests
  end

  it("4 chats and 5 streams started together share one connection", function()
    assert_all_ok(run_together(client("/v1"), 4, 5, client("/v1/abc")), 4, 5)
    local conns, requests = seen()
    assert.equal(9, requests)
    assert.equal(1, conns)
  end)

  it("a paused stream's callback waits on a request started just after it, on the same connection", function()
    local c, sc = client("/v1"), client("/v1/sse")
    local inner, inner_res, inner_err
    local calls = 0
    local t = luachat.spawn(function()
      return sc:stream({ model = "m", messages = {} }, function()
        calls = calls + 1
        if calls == 1 then inner_res, inner_err = inner:wait() end
      end)
    end)
    inner = luachat.spawn(function() return c:chat { model = "m", messages = {} } end)
    local final, err = t:wait()
    assert.is_nil(inner_err, "the inner request: " .. tostring(inner_err))
    assert.equal("hello", inner_res.choices[1].message.content)
    assert.is_nil(err, "the stream: " .. tostring(err))
    assert.equal(2000, calls)
    assert.equal(2000 * 5, #final.choices[1].message.content)
    local conns, requests = seen()
    assert.equal(2, requests)
    assert.equal(1, conns)
  end)
end)
