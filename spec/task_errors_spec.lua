-- A task's error: one line in err.message and tostring(err), the stack in
-- err.traceback; a failed task whose error nobody retrieved is reported on
-- stderr when it is collected or the Lua state closes (the host's exit), never
-- when wait/gather retrieved it, never for a cancelled task.
local luachat = require "luachat"
local proc = require "spec.helpers.proc"

-- Run a script under the host: stdout, stderr, exit code.
local function host(script)
  local f = os.tmpname()
  proc.write_file(f, script)
  local out, err, code = proc.run(proc.host .. " " .. f)
  os.remove(f)
  return out, err, code
end

describe("task errors", function()
  it("err.message and tostring(err) are one line; err.traceback has the stack", function()
    local t = luachat.spawn(function() error("first line\nsecond line") end)
    local res, err = t:wait()
    assert.is_nil(res)
    assert.equal("task", err.kind)
    assert.matches("first line second line$", err.message)
    assert.is_nil(err.message:find("\n", 1, true))
    assert.is_nil(tostring(err):find("\n", 1, true))
    assert.matches("first line\nsecond line\nstack traceback:", err.traceback, 1, true)
  end)

  it("a failed task nobody waits for is reported on stderr at exit", function()
    local out, err, code = host('luachat.spawn(function() error("boom") end); luachat.run()\n')
    assert.equal(0, code)
    assert.equal("", out)
    assert.matches("^luachat: a task failed and nobody waited for it: [^\n]*: boom\n$", err)
  end)

  it("a failed task is reported when it is collected", function()
    local out, err = host([[
luachat.spawn(function() error("collected") end)
collectgarbage(); collectgarbage()
io.stderr:write("after gc\n")
]])
    assert.equal("", out)
    assert.matches("^luachat: a task failed and nobody waited for it: [^\n]*: collected\nafter gc\n$", err)
  end)

  it("never for errors retrieved by wait or gather, nor for cancelled tasks", function()
    local out, err, code = host([[
local t = luachat.spawn(function() luachat.sleep(0) error("waited") end)
local _, e = t:wait()
local g = luachat.gather { function() error("gathered") end }
local c = luachat.spawn(function() luachat.sleep(10) end)
c:cancel()
print(e.kind, g[1][2].kind)
]])
    assert.equal(0, code)
    assert.equal("task\ttask\n", out)
    assert.equal("", err)
  end)
end)

describe("docs/EMBEDDING.md's luv snippet", function()
  local server = require "spec.helpers.server"
  local srv
  setup(function() srv = server.start() end)
  teardown(function() if srv then srv:stop() end end)

  it("runs as written: streams the answer, detaches, uv.run() returns", function()
    local doc = assert(proc.read_file("docs/EMBEDDING.md"))
    local snippet = assert(doc:match("### A libuv loop.-```lua\n(.-)```"))
    srv:default { sse = { { json = { id = "c", object = "chat.completion.chunk", created = 1, model = "m",
      choices = { { index = 0, delta = { content = "hello from luv" } } } } } }, done = true }
    local f = os.tmpname()
    proc.write_file(f, snippet)
    local out, err, code = proc.run(string.format("env OPENAI_BASE_URL=%s OPENAI_API_KEY=sk-x timeout 60 %s %s",
      proc.shell_quote(srv.base_url), proc.host, f))
    os.remove(f)
    assert.equal("", err)
    assert.equal(0, code)
    assert.equal("hello from luv", out)
  end)
end)
