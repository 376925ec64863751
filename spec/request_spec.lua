-- luachat.request and luachat.util (issue 15 items 4-7): one module for what the blocking
-- and the streaming calls both send and decide, no require cycle, one form of each
-- helper, Retry-After as an HTTP date, and transfers an error abandons closed at once.
local server = require "spec.helpers.server"
local luachat = require "luachat"
local core = require "luachat.core"
local json = require "luachat.json"
local sched = require "luachat.sched"
local util = require "luachat.util"
local request = require "luachat.request"

local completion = { id = "x", object = "chat.completion", created = 1, model = "m",
  choices = { { index = 0, message = { role = "assistant", content = "hi" }, finish_reason = "stop" } } }

local function chunk(delta, finish)
  return { id = "c1", object = "chat.completion.chunk", created = 1, model = "m",
    choices = { { index = 0, delta = delta, finish_reason = finish or json.null } } }
end

-- An HTTP date (RFC 9110 IMF-fixdate) `secs` seconds from now, without os.date's locale.
local DAYS = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" }
local MONTHS = { "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" }
local function http_date(secs)
  local t = os.date("!*t", os.time() + secs)
  return string.format("%s, %02d %s %04d %02d:%02d:%02d GMT", DAYS[t.wday], t.day, MONTHS[t.month], t.year,
    t.hour, t.min, t.sec)
end

describe("luachat.request", function()
  it("luachat.chat_stream and luachat.request load without luachat.client (no cycle)", function()
    local names = { "luachat.client", "luachat.chat_stream", "luachat.request" }
    local saved = {}
    for _, n in ipairs(names) do saved[n] = package.loaded[n]; package.loaded[n] = nil end
    local real_preload = package.preload["luachat.client"]
    package.preload["luachat.client"] = function() error("luachat.client required") end
    -- the searcher order: preload first, so any require of the client hits the error above
    local ok, err = pcall(function()
      local r = require "luachat.request"
      local cs = require "luachat.chat_stream"
      assert.is_function(r.transfer_spec)
      assert.is_function(cs.open)
    end)
    package.preload["luachat.client"] = real_preload
    for _, n in ipairs(names) do package.loaded[n] = saved[n] end
    assert.is_true(ok, tostring(err))
  end)

  it("luachat.stream is the old name of luachat.accumulate (the same module)", function()
    assert.equal(require "luachat.accumulate", require "luachat.stream")
    assert.is_function(require("luachat.stream").accumulator)
  end)

  it("an Idempotency-Key is 'luachat-' and 32 hex digits for blocking and streaming calls alike", function()
    local key = request.idempotency_key()
    assert.matches("^luachat%-" .. string.rep("%x", 32) .. "$", key)
    assert.not_equal(key, request.idempotency_key())
  end)

  describe("on the wire", function()
    local srv, c
    setup(function() srv = server.start() end)
    teardown(function() if srv then srv:stop() end end)
    before_each(function()
      srv:reset()
      c = luachat.client { base_url = srv.base_url, api_key = "sk-request", max_retries = 1 }
    end)
    after_each(function() assert.equal(0, core.live(), "a transfer was left running") end)

    it("chat and stream send the same form of Idempotency-Key, kept across a retry", function()
      srv:script {
        { json = completion },
        { status = 503, json = { error = { message = "busy" } }, headers = { ["retry-after"] = "0" } },
        { sse = { { json = chunk { role = "assistant", content = "hi" } }, { json = chunk({}, "stop") } }, done = true },
      }
      assert.truthy(c:chat { model = "m", messages = {} })
      local final, err = c:stream { model = "m", messages = {} }
      assert.is_nil(err)
      assert.equal("hi", final.choices[1].message.content)
      local reqs = srv:requests()
      assert.equal(3, #reqs)
      local pattern = "^luachat%-" .. string.rep("%x", 32) .. "$"
      for i = 1, 3 do assert.matches(pattern, reqs[i].headers["idempotency-key"]) end
      assert.not_equal(reqs[1].headers["idempotency-key"], reqs[2].headers["idempotency-key"])
      assert.equal(reqs[2].headers["idempotency-key"], reqs[3].headers["idempotency-key"])
    end)

    -- The delays the client waits before retrying, seen at sched.sleep (no clock bound).
    local function slept_during(fn)
      local real_sleep, slept = sched.sleep, {}
      sched.sleep = function(s, ...) slept[#slept + 1] = s return real_sleep(0, ...) end
      local ok, a, b = pcall(fn)
      sched.sleep = real_sleep
      assert(ok, a)
      return slept, a, b
    end

    it("Retry-After as an HTTP date is the wait before the retry (chat and stream)", function()
      for _, call in ipairs { "chat", "stream" } do
        srv:reset()
        srv:script {
          { status = 429, headers = { ["Retry-After"] = http_date(3) }, json = { error = { message = "slow down" } } },
          call == "chat" and { json = completion }
            or { sse = { { json = chunk { role = "assistant", content = "hi" } } }, done = true },
        }
        local slept, res, err = slept_during(function() return c[call](c, { model = "m", messages = {} }) end)
        assert.is_nil(err)
        assert.truthy(res)
        assert.equal(1, #slept, call)
        -- 3 s from the date's whole second, read a moment later: 1 to 3 s, never the backoff's
        -- 0.375-0.5 s for a first retry.
        assert.is_true(slept[1] >= 1 and slept[1] <= 3, call .. ": slept " .. tostring(slept[1]))
        assert.equal(2, #srv:requests())
      end
    end)

    it("Retry-After as an HTTP date too far ahead (over 60 s) or malformed gets the usual backoff", function()
      for _, value in ipairs { http_date(3600), "Wed, 32 Oct 2015 07:28:00 GMT", "soon" } do
        srv:reset()
        srv:script {
          { status = 429, headers = { ["Retry-After"] = value }, json = { error = { message = "slow down" } } },
          { json = completion },
        }
        local slept, res = slept_during(function() return c:chat { model = "m", messages = {} } end)
        assert.truthy(res)
        assert.equal(1, #slept)
        assert.is_true(slept[1] >= 0.375 and slept[1] <= 0.5, value .. ": slept " .. tostring(slept[1]))
      end
    end)

    -- Raise from the wait, as the Ctrl-C hook does, once `when()` is true; nothing may be
    -- left to the garbage collector (stopped here).
    local function interrupted(when, fn)
      local real_wait = sched.wait_transfer
      sched.wait_transfer = function(...)
        if when() then error("interrupted", 0) end
        return real_wait(...)
      end
      collectgarbage("stop")
      local ok, err = pcall(fn)
      sched.wait_transfer = real_wait
      local live = core.live()
      collectgarbage("restart")
      return ok, err, live
    end

    it("an error while a blocking call waits closes its transfer at once", function()
      srv:script { { delay = 1, json = completion } }
      local ok, err, live = interrupted(function() return true end,
        function() return c:chat { model = "m", messages = {} } end)
      assert.is_false(ok)
      assert.equal("interrupted", err)
      assert.equal(0, live)
    end)

    it("an error while a stream waits for its first event closes its transfer at once", function()
      srv:script { { delay = 1, sse = { { json = chunk { content = "late" } } }, done = true } }
      local ok, err, live = interrupted(function() return true end,
        function() return c:stream({ model = "m", messages = {} }, { on_text = function() end }) end)
      assert.is_false(ok)
      assert.equal("interrupted", err)
      assert.equal(0, live)
    end)

    it("an error while a stream waits mid-reply closes the stream and its transfer at once", function()
      srv:script { { sse = {
        { json = chunk { role = "assistant", content = "Hel" } },
        { gate = "g", timeout = 30 },
        { json = chunk { content = "lo" } },
      }, done = true } }
      local text = {}
      local ok, err, live = interrupted(function() return #text > 0 end,
        function()
          return c:stream({ model = "m", messages = {} }, { on_text = function(t) text[#text + 1] = t end })
        end)
      srv:release("g")
      assert.is_false(ok)
      assert.equal("interrupted", err)
      assert.same({ "Hel" }, text)
      assert.equal(0, live)
    end)
  end)
end)

describe("luachat.util", function()
  it("one_line: each run of line breaks, with the whitespace around it, is one space; nothing else changes", function()
    assert.equal("a b", util.one_line("a \r\n\n  b"))
    assert.equal("a b c", util.one_line("a\nb\r\nc"))
    assert.equal("a\tb \27[31m", util.one_line("a\tb \27[31m")) -- tab, ESC: the display's business
    assert.equal("42", util.one_line(42))
    assert.equal(" x ", util.one_line("\nx\n"))
  end)

  it("one_line(s, max) and cut: at most max bytes, on a UTF-8 character boundary, then '…'", function()
    assert.equal("abc", util.cut("abc", 3))
    assert.equal("ab…", util.cut("abcd", 2))
    assert.equal("a…", util.cut("aéb", 2)) -- 'é' is 2 bytes: not split
    assert.equal("a b…", util.one_line("a\nbcdef", 3))
  end)

  it("a stream's error message from the server is on one line", function()
    local srv = server.start()
    srv:script { { sse = { { json = { error = { message = "line one\n  line two" } } } }, done = true } }
    local c = luachat.client { base_url = srv.base_url, api_key = "sk-x", max_retries = 0 }
    local _, err = c:stream { model = "m", messages = {} }
    srv:stop()
    assert.equal("api", err.kind)
    assert.matches("error in the stream: line one line two", err.message, 1, true)
  end)

  it("add_usage: the three token counts, created at 0; only numbers count", function()
    local sum = {}
    util.add_usage(sum, { prompt_tokens = 3, completion_tokens = "4", total_tokens = 7, cached = 9 })
    assert.same({ prompt_tokens = 3, completion_tokens = 0, total_tokens = 7 }, sum)
    util.add_usage(sum, { prompt_tokens = 1, completion_tokens = 2, total_tokens = json.null })
    assert.same({ prompt_tokens = 4, completion_tokens = 2, total_tokens = 7 }, sum)
    util.add_usage(sum, nil)
    util.add_usage(sum, "12")
    assert.same({ prompt_tokens = 4, completion_tokens = 2, total_tokens = 7 }, sum)
  end)

  it("getenv: trimmed, empty is unset, a control character inside is refused naming the variable", function()
    local real = os.getenv
    local env = { A = "  v \n", B = "", C = "x\1y" }
    os.getenv = function(n) return env[n] end -- luachat.util reads os.getenv at each call
    local a, b = util.getenv("A"), util.getenv("B")
    local v, why = util.getenv("C")
    os.getenv = real
    assert.equal("v", a)
    assert.is_nil(b)
    assert.is_nil(v)
    assert.equal("environment variable C contains a control character", why)
  end)
end)
