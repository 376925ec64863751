-- Partial delivery: text reaches the script while the stream is still open.
-- The test server holds the rest of the stream behind gates (scripts/README.md,
-- "sse gates"): the events before a gate are sent, the rest wait until the
-- client signals. Each reader signals from its first text ("Hel", handed over
-- by the Lua path: the chunk carries the head fields) and again from the next
-- ("lo", a plain chunk: the C fast path), and the server answers that the gate
-- was still "armed", i.e. the last event had not been sent. A client that
-- buffers the stream (or its output) until the end cannot signal in time: the
-- gate times out, the server sends an in-band error, and the spec fails. No
-- sleeps and no time bounds: the gate timeout only keeps such a failure from
-- hanging.
local server = require "spec.helpers.server"
local proc = require "spec.helpers.proc"
local luachat = require "luachat"
local core = require "luachat.core"
local json = luachat.json

local GATE_TIMEOUT = 30 -- seconds a gate waits before it gives up (a failure, never a pass)

local function chunk(delta, finish)
  return { id = "chatcmpl-pd", object = "chat.completion.chunk", created = 1700000000, model = "m",
    choices = { { index = 0, delta = delta, finish_reason = finish or json.null } } }
end

-- A stream of "Hel" | gate 1 | "lo" | gate 2 | " world", finish, [DONE].
local function gated(g1, g2)
  return {
    sse = {
      { json = chunk { role = "assistant", content = "Hel" } },
      { gate = g1, timeout = GATE_TIMEOUT },
      { json = chunk { content = "lo" } },
      { gate = g2, timeout = GATE_TIMEOUT },
      { json = chunk { content = " world" } },
      { json = chunk({}, "stop") },
    },
    done = true,
  }
end

describe("partial delivery", function()
  local srv, c
  local req = { model = "m", messages = { { role = "user", content = "hi" } } }

  setup(function() srv = server.start() end)
  teardown(function() if srv then srv:stop() end end)
  before_each(function()
    srv:reset()
    c = luachat.client { base_url = srv.base_url, api_key = "sk-partial", max_retries = 0 }
  end)
  after_each(function() assert.equal(0, core.live(), "a transfer was left running") end)

  -- A reader's view of one text piece: releases the gate its text stands before.
  local function watcher()
    local w = { states = {}, texts = {} }
    function w.on_text(t)
      w.texts[#w.texts + 1] = t
      if t == "Hel" then w.states[1] = srv:release("g1") end
      if t == "lo" then w.states[2] = srv:release("g2") end
    end
    return w
  end

  local function check(w, final, err)
    assert.is_nil(err, tostring(err))
    assert.same({ "armed", "armed" }, w.states) -- each text arrived while the rest was held back
    assert.same({ g1 = "released", g2 = "released" }, srv:gates())
    assert.equal("Hello world", table.concat(w.texts))
    if final then assert.equal("Hello world", final.choices[1].message.content) end
  end

  it("the callback form gets each chunk before the server sends the next", function()
    srv:script { gated("g1", "g2") }
    local w = watcher()
    local final, err = c:stream(req, function(ch)
      local d = ch.choices[1] and ch.choices[1].delta -- decoded fields
      if d and type(d.content) == "string" and d.content ~= "" then w.on_text(d.content) end
    end)
    check(w, final, err)
  end)

  it("the text form (delta_text only, chunks left undecoded) too", function()
    srv:script { gated("g1", "g2") }
    local w = watcher()
    local final, err = c:stream(req, function(ch)
      local t = luachat.delta_text(ch)
      if t ~= "" then w.on_text(t) end
    end)
    check(w, final, err)
  end)

  it("the pull form too", function()
    srv:script { gated("g1", "g2") }
    local w = watcher()
    local s = assert(c:open_stream(req))
    for ch in s:chunks() do
      local t = luachat.delta_text(ch)
      if t ~= "" then w.on_text(t) end
    end
    local final, err = s:result()
    s:close()
    check(w, final, err)
  end)

  it("a stream inside a task too (its waits yield to the scheduler)", function()
    srv:script { gated("g1", "g2") }
    local w = watcher()
    local final, err = luachat.spawn(function()
      return c:stream(req, function(ch)
        local t = luachat.delta_text(ch)
        if t ~= "" then w.on_text(t) end
      end)
    end):wait()
    check(w, final, err)
  end)

  it("a streaming agent's on_text too", function()
    srv:script { gated("g1", "g2") }
    local w = watcher()
    local agent = luachat.agent { client = c, model = "m", stream = true, on_text = w.on_text }
    local result, err = agent:run("hi")
    check(w, nil, err)
    assert.equal("Hello world", result.content)
  end)

  it("a gate a client never signals times out: the stream fails, it does not hang", function()
    -- What a buffering client would see; a short timeout here, the spec's own check.
    srv:script { { sse = { { json = chunk { role = "assistant", content = "Hel" } }, { gate = "never", timeout = 0.2 },
      { json = chunk { content = "lo" } } }, done = true } }
    local final, err = c:stream(req)
    assert.equal("api", err and err.kind)
    assert.matches("gate never timed out", err.message, 1, true)
    assert.equal("Hel", final.choices[1].message.content)
    assert.same({ never = "timed_out" }, srv:gates())
    assert.equal("timed_out", srv:release("never")) -- too late: the answer says so
  end)

  describe("luachat -p (a subprocess) #once", function()
    local home
    setup(function() home = proc.tmpdir() end)
    teardown(function() if home then os.execute("rm -rf " .. proc.shell_quote(home)) end end)

    -- Runs `luachat ARGS -p hi` into a pipe reader that takes exactly "Hel" off the
    -- pipe (dd: one byte per read), signals, takes "lo", signals, then copies the
    -- rest: a CLI that holds its output back until the end leaves dd waiting past
    -- the gate's timeout.
    local function run_cli(args)
      srv:script { gated("cli1", "cli2") }
      local q = proc.shell_quote
      local env = {
        "OPENAI_BASE_URL=" .. q(srv.base_url), "OPENAI_API_KEY=sk-dummy-partial",
        "HOME=" .. q(home), "XDG_CONFIG_HOME=" .. q(home .. "/config"), "XDG_STATE_HOME=" .. q(home .. "/state"),
        "LUACHAT_PROFILE=", "LUACHAT_MODEL=", "LUACHAT_BASE_URL=", "NO_COLOR=1",
      }
      local function release(gate, file)
        return string.format("curl -sS --max-time 60 -H 'Content-Type: application/json' --data-binary %s %s >%s",
          q('{"gate":"' .. gate .. '"}'), q(srv.url .. "/_control/release"), q(home .. "/" .. file))
      end
      local cmd = string.format("{ env %s %s %s -p hi 2>%s; echo $? >%s; } | "
        .. "{ dd bs=1 count=3 status=none; %s; dd bs=1 count=2 status=none; %s; cat; } >%s",
        table.concat(env, " "), proc.host, args, q(home .. "/err"), q(home .. "/code"),
        release("cli1", "rel1"), release("cli2", "rel2"), q(home .. "/out"))
      os.execute(cmd)
      local function file(name) return proc.read_file(home .. "/" .. name) or "" end
      assert.equal("", file("err"))
      assert.equal("0", (file("code"):gsub("%s+$", "")))
      assert.equal("Hello world\n", file("out"))
      assert.equal("armed", json.decode(file("rel1")).state)
      assert.equal("armed", json.decode(file("rel2")).state)
      assert.same({ cli1 = "released", cli2 = "released" }, srv:gates())
    end

    it("writes the first bytes of the answer to stdout before the server sends the last event", function()
      run_cli("")
    end)

    it("with --tools (the agent's on_text) too", function()
      local tools = home .. "/tools.lua"
      proc.write_file(tools, 'local luachat = require "luachat"\n'
        .. 'return luachat.tool { name = "noop", description = "does nothing",\n'
        .. '  handler = function() return "ok" end }\n')
      run_cli("--tools " .. proc.shell_quote(tools))
      assert.equal("noop", srv:requests()[1].json.tools[1]["function"].name)
    end)
  end)
end)
