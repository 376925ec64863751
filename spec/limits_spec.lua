-- Limits for a big fan-out (issue 16 item 4): the client option
-- max_connections (per host, for that client; the rest queue in order),
-- luachat.semaphore(n), and luachat.gather(list, { concurrency = n }).
-- No timings: order and overlap are read from the test server's request log
-- and connection count, and from counters the tasks keep.
local server = require "spec.helpers.server"
local luachat = require "luachat"
local core = require "luachat.core"
local limits = require "luachat.limits"
local json = luachat.json

local function reply(text, extra)
  local r = { json = { id = "x", object = "chat.completion", created = 1, model = "m",
    choices = { { index = 0, message = { role = "assistant", content = text }, finish_reason = "stop" } } } }
  for k, v in pairs(extra or {}) do r[k] = v end
  return r
end

local function chunk(text, finish)
  return { json = { id = "c", object = "chat.completion.chunk", created = 1, model = "m",
    choices = { { index = 0, delta = text and { content = text } or {}, finish_reason = finish or json.null } } } }
end

local function raised(fn, ...)
  local ok, err = pcall(fn, ...)
  assert.is_false(ok, "expected an error")
  return (tostring(err):gsub("^[^:]*:%d+: ", ""))
end

-- Connections the test server accepted while fn ran, not counting the control
-- channel's (each srv:stats() is one curl connection, counted as it arrives).
local function connections_during(srv, fn)
  local before = srv:stats().connections
  fn()
  return srv:stats().connections - before - 1
end

local function ask(c, i)
  local res, err = c:chat { model = "m", messages = { { role = "user", content = "q" .. i } } }
  return res and res.choices[1].message.content, err
end

describe("client max_connections", function()
  local srv

  setup(function() srv = server.start() end)
  teardown(function() if srv then srv:stop() end end)
  before_each(function() srv:reset() end)
  after_each(function() assert.equal(0, core.live(), "a transfer was left running") end)

  -- A client of a fresh port of the test server (same state, but no
  -- connection of an earlier case in curl's cache to reuse).
  local function fresh_url()
    return "http://127.0.0.1:" .. math.tointeger(srv:control("/_control/listen", {}).port) .. "/v1"
  end

  local function client(extra)
    local o = { base_url = fresh_url(), api_key = "sk-limits", max_retries = 0, idle_timeout = 30, timeout = 60 }
    for k, v in pairs(extra or {}) do o[k] = v end
    return luachat.client(o)
  end

  it("is checked like every client option", function()
    assert.equal("bad argument #1 to 'client' (field 'max_connections' must be an integer of at least 1, got 0)",
      raised(luachat.client, { max_connections = 0 }))
    assert.equal("bad argument #1 to 'client' (unknown field 'max_conections' (did you mean 'max_connections'?))",
      raised(luachat.client, { max_conections = 4 }))
    assert.is_nil(client().max_connections) -- the default: no bound of luachat's own
    assert.equal(3, client { max_connections = 3.0 }.max_connections)
  end)

  it("1: requests spawned together reach the server one at a time, in the order asked, on one connection", function()
    local c = client { max_connections = 1 }
    local replies = {}
    for i = 1, 5 do replies[i] = reply("r" .. i) end
    srv:script(replies)
    local out
    assert.equal(1, connections_during(srv, function()
      local tasks = {}
      for i = 1, 5 do tasks[i] = luachat.spawn(ask, c, i) end
      local st = limits.stats(c, c.base_url)
      assert.equal(1, st.running)
      assert.equal(4, st.queued)
      assert.equal(1, core.live())
      out = luachat.gather(tasks)
    end))
    for i = 1, 5 do
      assert.is_nil(out[i][2])
    end
    local reqs = srv:requests()
    assert.equal(5, #reqs)
    for i = 1, 5 do assert.equal("q" .. i, reqs[i].json.messages[1].content) end
  end)

  it("2: two requests run at once (the server holds both answers until both arrive), five use two connections", function()
    local c = client { max_connections = 2 }
    srv:script { reply("a", { hold_until = 2, hold_timeout = 20 }), reply("b", { hold_until = 2, hold_timeout = 20 }),
      reply("c"), reply("d"), reply("e") }
    local fns = {}
    for i = 1, 5 do fns[i] = function() return ask(c, i) end end
    local out
    assert.equal(2, connections_during(srv, function() out = luachat.gather(fns) end))
    local got = {}
    for i = 1, 5 do
      assert.is_nil(out[i][2], tostring(out[i][2]))
      got[#got + 1] = out[i][1]
    end
    table.sort(got)
    assert.same({ "a", "b", "c", "d", "e" }, got) -- no 504 from the hold
  end)

  it("without it, the same five requests open five connections", function()
    local c = client()
    local replies = {}
    for i = 1, 5 do replies[i] = reply("r" .. i, { hold_until = 5, hold_timeout = 20 }) end
    srv:script(replies)
    local fns = {}
    for i = 1, 5 do fns[i] = function() return ask(c, i) end end
    assert.equal(5, connections_during(srv, function()
      for _, r in ipairs(luachat.gather(fns)) do assert.is_nil(r[2], tostring(r[2])) end
    end))
  end)

  it("an open stream holds its slot until closed; then the queued request starts", function()
    local c = client { max_connections = 1 }
    srv:script { { sse = { chunk("a"), { gate = "lim", timeout = 20 }, chunk("b"), chunk(nil, "stop") }, done = true },
      reply("after") }
    local s = assert(c:open_stream { model = "m", messages = {} })
    local t = luachat.spawn(ask, c, 2)
    assert.equal(1, limits.stats(c, c.base_url).queued)
    assert.equal(1, core.live()) -- only the stream's transfer
    s:close() -- cancelled: the slot is free; the queued chat goes out
    assert.equal("after", (t:wait()))
    assert.equal(2, #srv:requests())
    srv:release("lim")
  end)

  it("a slot freed before the queue's turn goes to the queue, not to a later request", function()
    local c = client { max_connections = 1 }
    srv:script { { sse = { chunk("a"), { gate = "ff", timeout = 20 }, chunk(nil, "stop") }, done = true },
      reply("queued first"), reply("asked later") }
    local s = assert(c:open_stream { model = "m", messages = {} })
    local t = luachat.spawn(ask, c, 1) -- queued behind the stream
    s:close() -- the slot is free now; no turn of the loop has handed it on yet
    assert.equal("asked later", (ask(c, 2))) -- from the main chunk: must wait behind t
    assert.equal("queued first", (t:wait()))
    local reqs = srv:requests()
    assert.equal("q1", reqs[2].json.messages[1].content)
    assert.equal("q2", reqs[3].json.messages[1].content)
    srv:release("ff")
  end)

  it("a cancelled task leaves the queue, even after a slot was handed to it", function()
    local c = client { max_connections = 1 }
    srv:script { { sse = { chunk("a"), { gate = "cq", timeout = 20 }, chunk(nil, "stop") }, done = true }, reply("third") }
    local s = assert(c:open_stream { model = "m", messages = {} })
    local t1 = luachat.spawn(ask, c, 1)
    local t2 = luachat.spawn(ask, c, 2)
    local t3 = luachat.spawn(ask, c, 3)
    assert.equal(3, limits.stats(c, c.base_url).queued)
    t1:cancel()
    s:close()
    luachat.next_timeout() -- a turn's checks: the freed slot is handed to t2 (runnable, not yet run)
    t2:cancel()
    assert.equal("third", (t3:wait()))
    assert.equal(2, #srv:requests())
    assert.equal("q3", srv:requests()[2].json.messages[1].content)
    srv:release("cq")
  end)

  it("the queue is per host: another host:port of the same client is not held up", function()
    local c = client { max_connections = 1 }
    local other = fresh_url()
    srv:script { { sse = { chunk("a"), { gate = "ph", timeout = 20 }, chunk(nil, "stop") }, done = true }, reply("x") }
    local s = assert(c:open_stream { model = "m", messages = {} })
    -- c's slot for srv is taken; a request of c to the other port starts at once.
    c.base_url = other
    local t = luachat.spawn(ask, c, 1)
    assert.equal(2, core.live())
    local x, err = t:wait()
    assert.is_nil(err, tostring(err))
    assert.equal("x", x)
    s:close()
    srv:release("ph")
  end)

  it("a request waiting outside any task drives the loop until a slot frees", function()
    local c = client { max_connections = 1 }
    srv:script { reply("first", { hold_until = 1 }), reply("second") }
    local t = luachat.spawn(ask, c, 1)
    assert.equal("second", (ask(c, 2))) -- queued behind the task's request, from the main chunk
    assert.equal("first", (t:wait()))
    local reqs = srv:requests()
    assert.equal("q1", reqs[1].json.messages[1].content)
    assert.equal("q2", reqs[2].json.messages[1].content)
  end)
end)

describe("luachat.semaphore", function()
  after_each(function() assert.equal(0, core.live()) end)

  it("hands permits to waiters in order; a release goes to the queue, not the pool", function()
    local sem = luachat.semaphore(1)
    local held = assert(sem:acquire()) -- main chunk: free, so at once
    local order, tasks = {}, {}
    for i = 1, 5 do
      tasks[i] = luachat.spawn(function()
        local p <close> = sem:acquire()
        order[#order + 1] = i
        luachat.sleep(0)
      end)
    end
    assert.equal(5, sem:waiting())
    held:release()
    assert.equal(0, sem:available()) -- given to task 1, not back to the pool
    held:release() -- a permit releases once
    assert.equal(0, sem:available())
    luachat.gather(tasks)
    assert.same({ 1, 2, 3, 4, 5 }, order)
    assert.equal(1, sem:available())
    assert.equal(0, sem:waiting())
  end)

  it("at most n holders at once", function()
    local sem = luachat.semaphore(3)
    local running, most = 0, 0
    local fns = {}
    for i = 1, 10 do
      fns[i] = function()
        return sem:with(function()
          running = running + 1
          most = math.max(most, running)
          luachat.sleep(0.001)
          running = running - 1
          return i
        end)
      end
    end
    local out = luachat.gather(fns)
    assert.equal(3, most)
    for i = 1, 10 do assert.equal(i, out[i][1]) end
    assert.equal(3, sem:available())
  end)

  it("a task that fails holding a permit gives it back (<close>, and with())", function()
    local sem = luachat.semaphore(1)
    local t1 = luachat.spawn(function()
      local p <close> = sem:acquire()
      luachat.sleep(0)
      error("held and failed")
    end)
    local t2 = luachat.spawn(function()
      return sem:with(function() error("inside with") end)
    end)
    local _, e1 = t1:wait()
    local _, e2 = t2:wait()
    assert.matches("held and failed", e1.message, 1, true)
    assert.matches("inside with", e2.message, 1, true)
    assert.equal(1, sem:available())
  end)

  it("Task:cancel is safe: a cancelled holder gives its permit back; a cancelled waiter passes on one handed to it", function()
    local sem = luachat.semaphore(1)
    local holder = luachat.spawn(function()
      local p <close> = sem:acquire()
      luachat.sleep(3600)
    end)
    local got = {}
    local w1 = luachat.spawn(function() local p <close> = sem:acquire() got[#got + 1] = 1 end)
    local w2 = luachat.spawn(function() local p <close> = sem:acquire() got[#got + 1] = 2 end)
    local w3 = luachat.spawn(function() local p <close> = sem:acquire() got[#got + 1] = 3 end)
    assert.equal(3, sem:waiting())
    assert.is_true(w2:cancel()) -- queued: leaves the queue
    assert.equal(2, sem:waiting())
    assert.is_true(holder:cancel()) -- its <close> permit goes to w1 (runnable, not yet run)
    assert.equal(0, sem:available())
    assert.is_true(w1:cancel()) -- handed a permit it never took: w3 gets it
    luachat.gather { w3 }
    assert.same({ 3 }, got)
    assert.equal(1, sem:available())
    assert.equal("cancelled", select(2, w1:wait()).kind)
    -- The cancelled holder's hour-long sleep waits for nothing: waiting with
    -- nothing else to run is a deadlock at once, not an hour's wait.
    assert.equal(0, luachat.step(0)) -- nothing pending
    local p = sem:acquire()
    assert.matches("deadlock: waiting for a semaphore permit", raised(sem.acquire, sem), 1, true)
    p:release()
  end)

  it("acquire(timeout) gives up with a timeout error and never takes a permit afterwards", function()
    local sem = luachat.semaphore(1)
    local held = assert(sem:acquire())
    local t = luachat.spawn(function() return sem:acquire(0.01) end)
    local p, err = t:wait()
    assert.is_nil(p)
    assert.equal("timeout", err.kind)
    assert.matches("semaphore: no permit free within 0.01 s", err.message, 1, true)
    local p2, err2 = sem:acquire(0.01) -- outside a task: drives the loop, same answer
    assert.is_nil(p2)
    assert.equal("timeout", err2.kind)
    held:release()
    assert.equal(1, sem:available()) -- the waiters that gave up were skipped
  end)

  it("refuses bad counts, over-release, and waiting with nothing to run", function()
    assert.equal("bad argument #1 to 'semaphore' (an integer of at least 1 expected, got 0)", raised(luachat.semaphore, 0))
    assert.equal("bad argument #1 to 'semaphore' (an integer of at least 1 expected, got nil)", raised(luachat.semaphore))
    local sem = luachat.semaphore(1)
    assert.equal("luachat.semaphore: release without a permit held", raised(sem.release, sem))
    assert.equal(0, luachat.step(0)) -- nothing pending
    local p = sem:acquire()
    assert.matches("deadlock: waiting for a semaphore permit", raised(sem.acquire, sem), 1, true)
    assert.equal(0, sem:waiting()) -- the main chunk's failed wait left the queue
    sem:release(p)
    assert.equal(1, sem:available())
  end)
end)

describe("luachat.gather with concurrency", function()
  local srv
  setup(function() srv = server.start() end)
  teardown(function() if srv then srv:stop() end end)
  before_each(function() srv:reset() end)
  after_each(function() assert.equal(0, core.live(), "a transfer was left running") end)

  it("runs at most n of the functions at once, starting them in list order; results in list order", function()
    local c = luachat.client { base_url = srv.base_url, api_key = "k", max_retries = 0 }
    srv:default(reply("ok"))
    local running, most, started = 0, 0, {}
    local fns = {}
    for i = 1, 12 do
      fns[i] = function()
        started[#started + 1] = i
        running = running + 1
        most = math.max(most, running)
        local text, err = ask(c, i)
        running = running - 1
        if i == 7 then error("seven fails") end
        return text .. i, err
      end
    end
    local out = luachat.gather(fns, { concurrency = 4 })
    assert.equal(4, most)
    for i = 1, 12 do
      if i == 7 then
        assert.is_nil(out[i][1])
        assert.equal("task", out[i][2].kind)
        assert.matches("seven fails", out[i][2].message, 1, true)
      else
        assert.equal("ok" .. i, out[i][1])
      end
    end
    assert.same({ 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12 }, started)
    assert.equal(12, #srv:requests())
  end)

  it("keeps the old shape (a list of running tasks) and mixes tasks and functions", function()
    local t = luachat.spawn(function() luachat.sleep(0) return "task" end)
    local out = luachat.gather { t, function() return "fn" end }
    assert.same({ { "task" }, { "fn" } }, out)
    assert.same({ { "t2" } }, luachat.gather({ luachat.spawn(function() return "t2" end) }, { concurrency = 1 }))
  end)

  it("checks its options", function()
    assert.equal("bad argument #2 to 'gather' (unknown field 'concurency' (did you mean 'concurrency'?))",
      raised(luachat.gather, {}, { concurency = 2 }))
    assert.equal("bad argument #2 to 'gather' (field 'concurrency' must be an integer of at least 1, got 0)",
      raised(luachat.gather, {}, { concurrency = 0 }))
    assert.equal("bad argument #2 to 'gather' (options table expected, got number)", raised(luachat.gather, {}, 3))
    assert.equal("bad argument #1 to 'gather' (list of tasks expected, item 1 is a number)", raised(luachat.gather, { 1 }))
  end)
end)
