-- Known answers: every provider fixture in spec/fixtures/sse/NAME.sse has its
-- final result, derived by hand from the events, in NAME.expected.lua. Each
-- fixture is streamed from the test server whole and cut into writes of 1, 2,
-- 3, 5, 7 and 64 bytes (with 1, every byte offset is a write boundary), and
-- read in four forms:
--   callback: client:stream(req, fn), fn reading the decoded fields;
--   pull:     client:open_stream(req), s:chunks(), s:result();
--   text:     client:stream(req, fn), fn calling only luachat.delta_text
--             (the lazy-chunk fast path, as the CLI and the agent use it);
--   task:     the text form inside luachat.spawn (waits yield to the scheduler).
-- Each must give exactly the expected final (no field more or less), the
-- expected number of chunks, the expected text and the expected error.
-- Comparing paths with each other cannot catch a rule broken in all of them;
-- these answers do (see lua/luachat/mutants.txt).
local server = require "spec.helpers.server"
local luachat = require "luachat"
local core = require "luachat.core"
local json = luachat.json

local DIR = "spec/fixtures/sse/"
local SPLITS = { false, 1, 2, 3, 5, 7, 64 } -- false: the body in one write

local function fixture_names()
  local names = {}
  local p = io.popen("ls " .. DIR .. " 2>/dev/null")
  for line in p:lines() do
    local name = line:match("^(.+)%.sse$")
    if name then names[#names + 1] = name end
  end
  p:close()
  table.sort(names)
  return names
end

local function read(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

-- NAME.expected.lua, run with `null` = luachat.json.null in scope.
local function expected(name)
  local path = DIR .. name .. ".expected.lua"
  local fn, err = loadfile(path, "t", { null = json.null })
  if not fn then return nil, err end
  return fn()
end

-- The text of choices[1].delta.content read from a decoded chunk's fields.
local function field_text(ch)
  local c1 = type(ch.choices) == "table" and ch.choices[1]
  local d = type(c1) == "table" and c1.delta
  local t = type(d) == "table" and d.content
  return type(t) == "string" and t or ""
end

local forms = {
  callback = function(c, req)
    local n, text = 0, {}
    local final, err = c:stream(req, function(ch)
      n = n + 1
      text[#text + 1] = field_text(ch)
    end)
    return final, err, n, table.concat(text)
  end,
  pull = function(c, req)
    local s, oerr = c:open_stream(req)
    if not s then return nil, oerr, 0, "" end
    local n, text = 0, {}
    for ch in s:chunks() do
      n = n + 1
      text[#text + 1] = luachat.delta_text(ch)
    end
    local final, err = s:result()
    s:close()
    return final, err, n, table.concat(text)
  end,
  text = function(c, req)
    local n, text = 0, {}
    local final, err = c:stream(req, function(ch)
      n = n + 1
      text[#text + 1] = luachat.delta_text(ch)
    end)
    return final, err, n, table.concat(text)
  end,
}
-- The text form inside a task: every wait yields to the scheduler instead of driving the loop.
forms.task = function(c, req)
  return luachat.spawn(function() return forms.text(c, req) end):wait()
end
local form_names = { "callback", "pull", "text", "task" }

-- Fields issue 14 will keep: absent today, and equal to the hand answer once present.
local function check_later(actual, later, where)
  for k, v in pairs(later) do
    local a = type(actual) == "table" and actual[k] or nil
    if a ~= nil then
      if type(v) == "table" and type(a) == "table" then
        check_later(a, v, where .. "." .. tostring(k))
      else
        assert.same(v, a, where .. "." .. tostring(k))
      end
    end
  end
end

describe("known answers", function()
  local srv, c
  local req = { model = "m", messages = { { role = "user", content = "hi" } } }

  setup(function() srv = server.start() end)
  teardown(function() if srv then srv:stop() end end)
  before_each(function()
    srv:reset()
    c = luachat.client { base_url = srv.base_url, api_key = "sk-known-answers", idle_timeout = 10, max_retries = 0 }
  end)
  after_each(function() assert.equal(0, core.live(), "a transfer was left running") end)

  local names = fixture_names()

  it("the corpus has its fixtures, each with a hand-derived answer", function()
    assert.is_true(#names >= 16, "expected at least 16 fixtures in " .. DIR)
    for _, name in ipairs(names) do
      local exp, err = expected(name)
      assert.is_table(exp, name .. ".expected.lua: " .. tostring(err))
      assert.is_table(exp.final, name)
      assert.is_number(exp.chunks, name)
      assert.is_string(exp.text, name)
    end
  end)

  for _, name in ipairs(names) do
    for _, form in ipairs(form_names) do
      it(name .. " (" .. form .. " form, every split)", function()
        local exp = assert(expected(name))
        local body = assert(read(DIR .. name .. ".sse"))
        local script = {}
        for i, size in ipairs(SPLITS) do
          script[i] = { body = body, content_type = "text/event-stream", write_size = size or nil }
        end
        srv:script(script)
        for _, size in ipairs(SPLITS) do
          local where = string.format("%s, %s form, %s", name, form, size and (size .. "-byte writes") or "whole")
          local final, err, n, text = forms[form](c, req)
          if exp.err then
            assert.is_table(err, where .. ": expected an error")
            assert.equal(exp.err.kind, err.kind, where)
            assert.matches(exp.err.message_has, err.message, 1, true)
          else
            assert.is_nil(err, where .. ": " .. tostring(err))
          end
          assert.is_table(final, where)
          assert.same(exp.final, final, where)
          assert.equal(exp.chunks, n, where .. ": chunks")
          assert.equal(exp.text, text, where .. ": text")
          if exp.later then check_later(final, exp.later, where) end
        end
        assert.equal(#SPLITS, #srv:requests())
      end)
    end
  end
end)
