-- examples/luv_service.lua as a user runs it (a subprocess): under the host in
-- the host run of this file, under stock lua5.4 with this run's core.so in the
-- stock run. A TCP client (python3) sends two lines; the replies stream back
-- from the test server through luachat inside uv.run(). Streaming is shown
-- without timings: the first reply's stream is held at a server gate until the
-- client has received its first piece. SIGTERM ends the service with exit 0.
local server = require "spec.helpers.server"
local proc = require "spec.helpers.proc"
local json = require "luachat.json"

local q = proc.shell_quote

local function chunk(text, finish)
  return { json = { id = "c", object = "chat.completion.chunk", created = 1, model = "m",
    choices = { { index = 0, delta = text and { content = text } or {}, finish_reason = finish or json.null } } } }
end

-- Poll (<= seconds) until fn() returns a value.
local function await(seconds, fn)
  for _ = 1, seconds * 20 do
    local v = fn()
    if v then return v end
    os.execute("sleep 0.05")
  end
  return fn()
end

-- How to run a Lua script here: the host, or (in the stock lua5.4 run, where
-- this process found core.so on package.cpath) lua5.4 with the same paths.
local function lua_command()
  if package.searchpath("luachat.core", package.cpath) and not package.preload["luachat.core"] then
    local cpath = package.cpath:gsub("%./", proc.abspath(".") .. "/")
    return string.format("env LUA_PATH=%s LUA_CPATH=%s lua5.4", q("lua/?.lua;lua/?/init.lua;;"), q(cpath .. ";;")), "lua5.4"
  end
  return q(proc.host), "the host"
end

local CLIENT = [[
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(b"hello\nsecond\n")
got = b""
with open(sys.argv[2], "wb") as f:
    while got.count(b"\n") < 2:
        data = s.recv(4096)
        if not data:
            break
        got += data
        f.write(data)
        f.flush()
open(sys.argv[2] + ".done", "w").close()
]]

local cmd, how = lua_command()

describe("examples/luv_service.lua under " .. how, function()
  local srv, dir

  setup(function()
    srv = server.start()
    dir = proc.tmpdir()
    proc.write_file(dir .. "/client.py", CLIENT)
  end)
  teardown(function()
    if srv then srv:stop() end
    os.execute("rm -rf " .. q(dir))
  end)

  it("answers each line with a streamed completion, in order, and stops on SIGTERM", function()
    srv:script {
      { sse = { chunk("Hel"), { gate = "svc", timeout = 30 }, chunk("lo"), chunk(" world"), chunk(nil, "stop") }, done = true },
      { sse = { chunk("Bye"), chunk(nil, "stop") }, done = true },
    }
    -- The service in the background; its pid and, when it ends, its exit code in files.
    os.execute(string.format("sh -c %s >/dev/null 2>&1 &", q(string.format(
      "OPENAI_BASE_URL=%s OPENAI_API_KEY=sk-svc LUACHAT_MODEL=m timeout --foreground 120 %s examples/luv_service.lua 0 >%s 2>%s & "
        .. "echo $! >%s; wait $!; echo $? >%s",
      q(srv.base_url), cmd, q(dir .. "/out"), q(dir .. "/err"), q(dir .. "/pid"), q(dir .. "/code")))))
    local port = await(20, function() return (proc.read_file(dir .. "/out") or ""):match("listening on 127%.0%.0%.1:(%d+)") end)
    assert.truthy(port, "the service did not start: " .. tostring(proc.read_file(dir .. "/err")))
    local pid = await(5, function() return (proc.read_file(dir .. "/pid") or ""):match("%d+") end)

    os.execute(string.format("timeout 60 python3 %s %s %s >/dev/null 2>&1 &", q(dir .. "/client.py"), port,
      q(dir .. "/recv")))
    -- The first piece reaches the TCP client while the server still holds the rest.
    assert.truthy(await(30, function() return (proc.read_file(dir .. "/recv") or ""):find("Hel", 1, true) end),
      "no streamed piece: " .. tostring(proc.read_file(dir .. "/err")))
    assert.equal("Hel", proc.read_file(dir .. "/recv"))
    assert.equal("armed", srv:release("svc"))
    assert.truthy(await(30, function() return proc.read_file(dir .. "/recv.done") end))
    assert.equal("Hello world\nBye\n", proc.read_file(dir .. "/recv"))

    local reqs = srv:requests()
    assert.equal(2, #reqs)
    assert.equal("hello", reqs[1].json.messages[1].content)
    assert.equal("second", reqs[2].json.messages[1].content)
    assert.equal("m", reqs[1].json.model)
    assert.is_true(reqs[1].json.stream)

    os.execute("kill -TERM " .. pid)
    local code = await(20, function() return (proc.read_file(dir .. "/code") or ""):match("%d+") end)
    assert.equal("0", code, proc.read_file(dir .. "/err"))
  end)
end)
