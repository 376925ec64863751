-- luachat.luv(uv): luachat driven from a running libuv loop (Debian's lua-luv,
-- which scripts/deps.sh installs). Tasks spawned from the application's own uv
-- callbacks stream from the test server inside uv.run() while a uv timer keeps
-- firing; detach() removes the adapter's handles so uv.run() returns; a task's
-- error stays in its task. No timings: the streams are held at a server gate
-- that only a uv timer callback opens, once every stream has its first chunk.
local server = require "spec.helpers.server"
local luachat = require "luachat"
local core = require "luachat.core"
local json = luachat.json

local have_uv, uv = pcall(require, "luv")
if not have_uv then
  error("luachat.luv specs: the luv module is not installed (scripts/deps.sh installs lua-luv): " .. tostring(uv))
end

local function chunk(text, finish)
  return { json = { id = "c", object = "chat.completion.chunk", created = 1, model = "m",
    choices = { { index = 0, delta = text and { content = text } or {}, finish_reason = finish or json.null } } } }
end

-- A stream: "a", then (held at `gate` until released) "b", "c".
local function gated(gate)
  return { sse = { chunk("a"), { gate = gate, timeout = 20 }, chunk("b"), chunk("c"), chunk(nil, "stop") }, done = true }
end

-- Handles of this loop that are not closing (the adapter's, once attached).
local function live_handles()
  local n = 0
  uv.walk(function(h) if not h:is_closing() then n = n + 1 end end)
  return n
end

-- uv.run() until it returns, with a guard against a hang (an adapter that never
-- wakes would block forever): after 60 s the guard detaches and stops the loop,
-- and the case fails naming it. Then the close callbacks run.
local function run_loop(detach)
  local fired = false
  local guard = uv.new_timer()
  guard:start(60000, 0, function()
    fired = true
    detach()
    uv.walk(function(h) if not h:is_closing() then h:close() end end) -- the case's own timers too
  end)
  guard:unref() -- never what keeps the loop alive
  uv.run()
  if not guard:is_closing() then guard:close() end
  uv.run("nowait") -- the close callbacks
  assert.is_false(fired, "uv.run() was still running after 60 s: the adapter never woke luachat")
end

describe("luachat.luv", function()
    local srv, c

    setup(function() srv = server.start() end)
    teardown(function() if srv then srv:stop() end end)
    before_each(function()
      srv:reset()
      c = luachat.client { base_url = srv.base_url, api_key = "sk-luv-test", max_retries = 0, idle_timeout = 30 }
      assert.equal(0, live_handles(), "uv handles left from before")
    end)
    after_each(function()
      assert.equal(0, core.live(), "a transfer was left running")
      assert.equal(0, live_handles(), "the adapter left a uv handle")
    end)

    it("one adapter at a time; attach again after detach", function()
      local detach = luachat.luv(uv)
      local ok, msg = pcall(luachat.luv, uv)
      assert.is_false(ok)
      assert.matches("already attached", msg, 1, true)
      assert.equal(3, live_handles()) -- a poll on luachat.fd(), a timer, a prepare
      assert.is_true(detach())
      uv.run("nowait")
      assert.equal(0, live_handles())
      local again = luachat.luv(uv)
      again()
      uv.run("nowait")
    end)

    it("a failure of the loop itself goes to on_error; the adapter detaches and stops uv.run(), nothing exits", function()
      -- The failure: uv.run() called while luachat's own loop is being driven
      -- (t:wait() below resumed the task that runs it), so step refuses.
      local seen, detached, result
      local sleeper = luachat.spawn(function() luachat.sleep(0.001) return "slept" end)
      local t = luachat.spawn(function()
        luachat.sleep(0) -- from here on, the main chunk's t:wait() drives the loop
        local detach = luachat.luv(uv, { on_error = function(e) seen = e end })
        uv.run()
        uv.run("nowait")
        detached = { detach() }
        return "after"
      end)
      result = t:wait()
      assert.equal("after", result)
      assert.equal("environment", seen.kind)
      assert.matches("already running", seen.message, 1, true)
      assert.is_nil(detached[1])
      assert.equal(seen, detached[2])
      assert.equal("slept", (sleeper:wait()))
    end)

    it("runs streaming tasks spawned from uv callbacks inside uv.run() beside a uv timer; detach ends uv.run()", function()
      local N = 3
      srv:script { gated("g"), gated("g"), gated("g") }
      local detach = luachat.luv(uv)
      local firsts, texts, done, released, ticks, gate_state = 0, {}, 0, false, 0, nil
      local tasks = {}
      -- Spawned from a uv callback, when luachat has nothing pending: the adapter
      -- must notice the new transfers before libuv blocks.
      local start = uv.new_timer()
      start:start(0, 0, function()
        start:close()
        for i = 1, N do
          tasks[i] = luachat.spawn(function()
            local final, err = c:stream({ model = "m", messages = { { role = "user", content = "s" .. i } } },
              function(ch)
                if ch.choices[1].delta.content == "a" then firsts = firsts + 1 end
              end)
            texts[i] = final and final.choices[1].message.content
            done = done + 1
            if done == N then detach() end
            return final, err
          end)
        end
      end)
      -- The application's own timer: opens the gate once every stream has its first chunk.
      local tick = uv.new_timer()
      tick:start(5, 5, function()
        ticks = ticks + 1
        if not released and firsts == N then
          released = true
          gate_state = srv:release("g") -- (never raise in a uv callback: luv exits)
          tick:close()
        end
      end)
      run_loop(detach)
      if not tick:is_closing() then tick:close() end
      uv.run("nowait") -- the close callbacks
      assert.is_true(released, "the uv timer never saw every stream's first chunk")
      assert.equal("armed", gate_state) -- the server was still holding the rest back
      assert.is_true(ticks >= 1)
      assert.equal(N, done)
      for i = 1, N do
        assert.equal("abc", texts[i])
        local final, err = tasks[i]:wait()
        assert.is_nil(err)
        assert.equal("stop", final.choices[1].finish_reason)
      end
      assert.equal(N, #srv:requests())
    end)

    it("a task's error stays in the task: the loop goes on and the other task completes", function()
      srv:script { gated("g2"), { json = { id = "x", object = "chat.completion", created = 1, model = "m",
        choices = { { index = 0, message = { role = "assistant", content = "fine" }, finish_reason = "stop" } } } } }
      local detach = luachat.luv(uv)
      local bad, good
      local kick = uv.new_timer()
      kick:start(0, 0, function()
        kick:close()
        good = luachat.spawn(function()
          local final = assert(c:stream({ model = "m", messages = {} }))
          detach()
          return final.choices[1].message.content
        end)
      end)
      -- The failing task starts once the stream's request has reached the server
      -- (so the stream gets the gated answer, whichever connection is faster), and
      -- the gate opens only after it has failed, inside uv.run().
      local watch = uv.new_timer()
      watch:start(5, 5, function()
        if good and not bad and #srv:requests() >= 1 then
          bad = luachat.spawn(function()
            local res = assert(c:chat { model = "m", messages = {} })
            error("boom after " .. res.choices[1].message.content)
          end)
        elseif bad and bad:is_done() then
          watch:close()
          srv:release("g2")
        end
      end)
      run_loop(detach)
      if not watch:is_closing() then watch:close() end
      uv.run("nowait")
      local res, err = bad:wait()
      assert.is_nil(res)
      assert.equal("task", err.kind)
      assert.matches("boom after fine", err.message, 1, true)
      assert.equal("abc", (good:wait()))
    end)

    it("detach() while a stream is open makes uv.run() return; luachat's own loop then finishes it", function()
      srv:script { gated("g3") }
      local detach = luachat.luv(uv)
      local got_a, detached = false, nil
      local t = luachat.spawn(function()
        local s = assert(c:open_stream { model = "m", messages = {} })
        local parts = {}
        s:each(nil, function(text)
          parts[#parts + 1] = text
          if text == "a" then got_a = true end
        end)
        return table.concat(parts)
      end)
      local watch = uv.new_timer()
      watch:start(5, 5, function()
        if got_a then
          watch:close()
          detached = detach()
        end
      end)
      run_loop(detach) -- returns only because detach() closed the adapter's handles
      assert.is_true(got_a)
      assert.is_true(detached)
      assert.is_false(t:is_done())
      assert.equal(0, live_handles())
      srv:release("g3")
      assert.equal("abc", (t:wait())) -- driven by luachat's own loop now
      assert.is_true(detach()) -- idempotent
    end)

    it("refuses what is not the luv module", function()
      local ok, msg = pcall(luachat.luv, {})
      assert.is_false(ok)
      assert.matches("bad argument #1 to 'luv' (the luv module expected, got table)", msg, 1, true)
      ok, msg = pcall(luachat.luv, uv, { on_eror = print })
      assert.is_false(ok)
      assert.matches("unknown field 'on_eror'", msg, 1, true)
    end)
  end)
