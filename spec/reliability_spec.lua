-- Faults and bad inputs (spec/fixtures/faults.lua): each case asserts the
-- exact outcome, what was kept, that no transfer is left and that the next
-- request works. docs/RELIABILITY.md is generated from the same table.
local server = require "spec.helpers.server"
local luachat = require "luachat"
local core = require "luachat.core"
local cases = dofile("spec/fixtures/faults.lua")

local HOST = os.getenv("LUACHAT_HOST") or "./luachat"
local ok_completion = { json = { id = "x", object = "chat.completion", created = 1, model = "m",
  choices = { { index = 0, message = { role = "assistant", content = "healthy" }, finish_reason = "stop" } } } }

local function peak_rss_mb()
  local f = io.open("/proc/self/status")
  if not f then return 0 end
  local kb = f:read("a"):match("VmHWM:%s*(%d+)")
  f:close()
  return tonumber(kb or 0) / 1024
end

describe("reliability", function()
  local srv
  setup(function() srv = server.start() end)
  teardown(function() if srv then srv:stop() end end)

  for _, case in ipairs(cases) do
    it(case.name, function()
      srv:reset()
      srv:default(case.response) -- retries meet the same fault
      -- A short idle timeout only where it is under test (stalls; the drip keeps resetting it):
      -- elsewhere a loaded machine may pause the server for longer than that.
      local idle = case.expect == "timeout" and 0.4 or case.response.drip and 1 or 10
      local opts = { base_url = srv.base_url, api_key = "sk-fault", idle_timeout = idle, max_retries = 1 }
      for k, v in pairs(case.client or {}) do opts[k] = v end
      local c = luachat.client(opts)
      local req = { model = "m", messages = { { role = "user", content = "x" } } }
      local res, err
      if case.call == "stream" then res, err = c:stream(req) else res, err = c:chat(req) end
      if case.expect then
        assert.is_table(err, "expected a " .. case.expect .. " error")
        assert.equal(case.expect, err.kind, tostring(err))
        assert.is_string(err.message)
        assert.is_nil(err.message:find("\n", 1, true), "one-line message")
      else
        assert.is_nil(err, tostring(err))
      end
      if case.kept then
        assert.equal(case.kept, res.choices[1].message.content)
      end
      if case.kept_content then
        assert.equal(case.kept_content, res.choices[1].message.content)
      end
      if case.kept_prefix then
        local content = res and res.choices[1].message.content
        assert.equal(case.kept_prefix, type(content) == "string" and content:sub(1, #case.kept_prefix) or content)
      end
      -- the retry outcome: every case says how many requests the server must see
      assert.is_number(case.requests, "the case gives no request count")
      assert.equal(case.requests, #srv:requests(), "requests the server saw")
      if err then assert.equal(case.requests - 1, err.retries, "err.retries") end
      if case.max_rss_mb then
        assert.is_true(peak_rss_mb() < case.max_rss_mb, "peak RSS " .. peak_rss_mb() .. " MB")
      end
      assert.equal(0, core.live(), "a transfer was left running")
      -- the process is healthy: the next request works
      srv:default(ok_completion)
      local again = assert(luachat.client { base_url = srv.base_url, max_retries = 0 }:chat(req))
      assert.equal("healthy", again.choices[1].message.content)
    end)
  end

  it("a keep-alive connection closed by the server between two requests is replaced transparently", function()
    srv:reset()
    srv:script { { json = ok_completion.json, close_connection = true }, ok_completion, ok_completion }
    local c = luachat.client { base_url = srv.base_url, max_retries = 0 }
    for _ = 1, 3 do assert.equal("healthy", assert(c:chat { model = "m", messages = {} }).choices[1].message.content) end
    assert.equal(3, #srv:requests())
  end)

  describe("script-side faults #once", function()
    local function run(cmd)
      local out = os.tmpname()
      local _, _, code = os.execute("(" .. cmd .. ") >" .. out .. " 2>&1")
      local f = io.open(out)
      local text = f:read("a")
      f:close()
      os.remove(out)
      return text, code
    end

    it("os.exit inside a stream callback exits with that code", function()
      srv:reset()
      srv:default { sse = { { data = '{"choices":[{"index":0,"delta":{"content":"a"}}]}' } }, done = true }
      local text, code = run(string.format("%s -e %q", HOST, string.format(
        "local c = require('luachat').client{base_url=%q} c:stream({model='m', messages={}}, function() io.write('cb ') os.exit(7) end)",
        srv.base_url)))
      assert.equal(7, code)
      assert.equal("cb ", text)
    end)

    it("SIGINT at random points of a streaming agent run: exit 130, output so far flushed", function()
      srv:reset()
      local ev = {}
      for i = 1, 40 do ev[i] = { data = '{"choices":[{"index":0,"delta":{"content":"w' .. i .. ' "}}]}', delay = 0.02 } end
      srv:default { sse = ev, done = true }
      local script = string.format([[
        local luachat = require "luachat"
        io.stdout:setvbuf("no")
        local agent = luachat.agent{ client = luachat.client{base_url=%q}, model = "m", stream = true,
          on_text = function(t) io.write(t) end }
        io.write("start ")
        io.open(%q, "w"):close() -- ready: the delays below count from here
        for i = 1, 100 do agent:run("go") end
      ]], srv.base_url, srv.dir .. "/sigint-ready")
      local path = os.tmpname()
      local f = io.open(path, "w")
      f:write(script)
      f:close()
      for _, ms in ipairs { 50, 170, 330, 500 } do
        os.remove(srv.dir .. "/sigint-ready")
        local text, code = run(string.format("%s %s & pid=$!; while [ ! -e %s ] && kill -0 $pid 2>/dev/null; do sleep 0.01; done; "
          .. "sleep %.3f; kill -INT $pid; wait $pid", HOST, path, srv.dir .. "/sigint-ready", ms / 1000))
        assert.equal(130, code, text)
        assert.matches("^start ", text)
        assert.matches("luachat: interrupted", text, 1, true)
        assert.is_nil(text:find("Segmentation", 1, true))
      end
      os.remove(path)
    end)
  end)
end)

describe("docs/RELIABILITY.md", function()
  it("matches the table the suite runs", function()
    local p = io.popen("lua5.4 scripts/gen-reliability.lua")
    local generated = p:read("a")
    p:close()
    local f = assert(io.open("docs/RELIABILITY.md"))
    local doc = f:read("a")
    f:close()
    assert.equal(generated, doc, "regenerate: lua5.4 scripts/gen-reliability.lua > docs/RELIABILITY.md")
  end)
end)
