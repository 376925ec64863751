-- HTTP/2 multiplexing against a real HTTP/2 server (issue 16 item 5): nghttpx
-- (Debian's nghttp2-proxy, which scripts/deps.sh installs) terminates TLS with a
-- certificate made here by openssl and passes each request to the test server
-- over HTTP/1.1. 200 streamed completions started together must all be in
-- flight at once (the test server holds every answer until all 200 have
-- arrived: a client that sends them in turn gets 504s, never a hang) and share
-- one TLS connection, verified with the client's ca_file.
-- Connections are counted on luachat's side of the proxy: nghttpx's access log
-- records, for every request, the source port of the TLS connection it came on
-- ($remote_port) and the protocol it negotiated ($alpn). The connections are
-- open at the same time, so distinct ports are distinct connections.
local server = require "spec.helpers.server"
local proc = require "spec.helpers.proc"
local luachat = require "luachat"
local core = require "luachat.core"
local json = luachat.json

local q = proc.shell_quote

local function have(cmd) return os.execute("command -v " .. cmd .. " >/dev/null 2>&1") == true end
for _, tool in ipairs { "nghttpx", "openssl" } do
  if not have(tool) then
    error("HTTP/2 spec: " .. tool .. " is not installed (scripts/deps.sh installs nghttp2-proxy and openssl)")
  end
end

local N = 200
-- Generous: once all N requests are in, the hold ends at the last arrival.
local HOLD = 60

local function chunk(text, finish)
  return { json = { id = "c", object = "chat.completion.chunk", created = 1, model = "m",
    choices = { { index = 0, delta = text and { content = text } or {}, finish_reason = finish or json.null } } } }
end

local function free_port()
  local p = io.popen("python3 -c 'import socket; s = socket.socket(); s.bind((\"127.0.0.1\", 0)); "
    .. "print(s.getsockname()[1])'")
  local port = tonumber(p:read("l"))
  p:close()
  return port
end

describe("HTTP/2 through nghttpx", function()
  local dir, srv, pid, port

  setup(function()
    dir = proc.tmpdir()
    assert(os.execute(string.format("openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 "
      .. "-addext subjectAltName=IP:127.0.0.1 -days 1 -keyout %s/key.pem -out %s/cert.pem >/dev/null 2>&1",
      q(dir), q(dir))))
    srv = server.start()
  end)
  teardown(function()
    if srv then srv:stop() end
    os.execute("rm -rf " .. q(dir))
  end)

  -- A new nghttpx for every case (curl's connection cache is per host:port).
  -- It allows 256 streams per connection (its default is 100) and as many
  -- connections to the test server as there are requests (default 8), so the
  -- held answers can all be pending at once. `timeout`: never left running.
  before_each(function()
    srv:reset()
    port = free_port()
    os.remove(dir .. "/access.log")
    os.remove(dir .. "/error.log")
    local p = io.popen(string.format("timeout 600 nghttpx --conf=/dev/null --no-ocsp --single-thread "
      .. "-f127.0.0.1,%d -b127.0.0.1,%d --backend-connections-per-host=%d "
      .. "--frontend-http2-max-concurrent-streams=256 "
      .. "--accesslog-file=%s --accesslog-format='$remote_port $alpn $status $request' --errorlog-file=%s "
      .. "%s %s >/dev/null 2>&1 & echo $!", port, srv.port, N + 16, q(dir .. "/access.log"), q(dir .. "/error.log"),
      q(dir .. "/key.pem"), q(dir .. "/cert.pem")))
    pid = tonumber(p:read("l"))
    p:close()
    local listening = "Listening on 127.0.0.1:" .. port
    for _ = 1, 200 do -- <= 10 s
      if (proc.read_file(dir .. "/error.log") or ""):find(listening, 1, true) then break end
      os.execute("sleep 0.05")
    end
    assert.truthy((proc.read_file(dir .. "/error.log") or ""):find(listening, 1, true), proc.read_file(dir .. "/error.log"))
  end)

  -- nghttpx writes its access log as requests end; stop it before reading.
  local function stop_proxy()
    if pid then
      os.execute("kill " .. pid .. " 2>/dev/null; while kill -0 " .. pid .. " 2>/dev/null; do sleep 0.05; done")
      pid = nil
    end
  end
  after_each(function()
    stop_proxy()
    assert.equal(0, core.live(), "a transfer was left running")
  end)

  -- { {port=, alpn=, status=, request=}, ... } from nghttpx's access log.
  local function access_log()
    local out = {}
    for line in (proc.read_file(dir .. "/access.log") or ""):gmatch("[^\n]+") do
      local rport, alpn, status, request = line:match("^(%d+) (%S+) (%d+) (.*)$")
      out[#out + 1] = { port = rport, alpn = alpn, status = tonumber(status), request = request }
    end
    return out
  end

  it("200 streams started together are all in flight at once over one TLS connection, and all complete", function()
    local held = {}
    for i = 1, N do
      held[i] = { sse = { chunk("a"), chunk("b"), chunk(nil, "stop") }, done = true, hold_until = N, hold_timeout = HOLD }
    end
    srv:script(held)
    local c = luachat.client { base_url = "https://127.0.0.1:" .. port .. "/v1", api_key = "sk-h2", max_retries = 0,
      ca_file = dir .. "/cert.pem", timeout = 2 * HOLD + 30, idle_timeout = HOLD + 20 }
    local fns = {}
    for i = 1, N do
      fns[i] = function()
        local final, err = c:stream { model = "m", messages = { { role = "user", content = "n" .. i } } }
        return final and final.choices[1].message.content, err
      end
    end
    local out = luachat.gather(fns)
    for i = 1, N do
      assert.is_nil(out[i][2], "stream " .. i .. ": " .. tostring(out[i][2]))
      assert.equal("ab", out[i][1])
    end
    assert.equal(N, #srv:requests())
    stop_proxy()
    local log = access_log()
    assert.equal(N, #log)
    local ports, conns = {}, 0
    for _, r in ipairs(log) do
      assert.equal("h2", r.alpn)
      assert.equal(200, r.status)
      assert.equal("POST /v1/chat/completions HTTP/2", r.request)
      if not ports[r.port] then ports[r.port], conns = true, conns + 1 end
    end
    assert.equal(1, conns)
  end)
end)
