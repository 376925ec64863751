-- Known answers: every provider fixture in spec/fixtures/sse/NAME.sse has its
-- final result, derived by hand from the events, in NAME.expected.lua. Each
-- fixture is streamed from the test server whole and cut into writes of 1, 2,
-- 3, 5, 7 and 64 bytes (with 1, every byte offset is a write boundary), and
-- read in these forms:
--   callback: client:stream(req, fn), fn reading the decoded fields;
--   pull:     client:open_stream(req), s:chunks(), s:result();
--   text:     client:stream(req, fn), fn calling only luachat.delta_text;
--   task:     the text form inside luachat.spawn (waits yield to the scheduler);
--   on_text:  client:stream(req, { on_text = fn }) (the text path: text-only chunks are
--             never built as tables; no chunk count);
--   both:     client:stream(req, { on_text = fn, on_chunk = fn2 });
--   text_pull: for text, index in s:text() (the text path, pull form; no chunk count).
-- The text checked is choice 0's (with n = 2, choice 1's is in text_1 when given).
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

-- The text of choice `index` (default 0) read from a decoded chunk's fields.
local function field_text(ch, index)
  index = index or 0
  for _, c in ipairs(type(ch.choices) == "table" and ch.choices or {}) do
    local i = type(c) == "table" and c.index
    if type(i) ~= "number" then i = 0 end
    if i == index then
      local d = type(c.delta) == "table" and c.delta
      local t = d and d.content
      return type(t) == "string" and t or ""
    end
  end
  return ""
end

-- Texts by choice index, from (text, index) pairs.
local function texts()
  local by = {}
  return by, function(text, index)
    assert.is_string(text)
    assert.is_number(index)
    by[index] = (by[index] or "") .. text
  end
end

local forms = {
  callback = function(c, req)
    local n, text, text1 = 0, {}, {}
    local final, err = c:stream(req, function(ch)
      n = n + 1
      text[#text + 1] = field_text(ch)
      text1[#text1 + 1] = field_text(ch, 1)
    end)
    return final, err, n, table.concat(text), table.concat(text1)
  end,
  pull = function(c, req)
    local s, oerr = c:open_stream(req)
    if not s then return nil, oerr, 0, "" end
    local n, text, text1 = 0, {}, {}
    for ch in s:chunks() do
      n = n + 1
      text[#text + 1] = luachat.delta_text(ch)
      text1[#text1 + 1] = luachat.delta_text(ch, 1)
    end
    local final, err = s:result()
    s:close()
    return final, err, n, table.concat(text), table.concat(text1)
  end,
  text = function(c, req)
    local n, text, text1 = 0, {}, {}
    local final, err = c:stream(req, function(ch)
      n = n + 1
      text[#text + 1] = luachat.delta_text(ch)
      text1[#text1 + 1] = luachat.delta_text(ch, 1)
    end)
    return final, err, n, table.concat(text), table.concat(text1)
  end,
  on_text = function(c, req)
    local by, add = texts()
    local final, err = c:stream(req, { on_text = add })
    return final, err, nil, by[0] or "", by[1] or ""
  end,
  both = function(c, req)
    local by, add = texts()
    local n = 0
    local final, err = c:stream(req, { on_text = add, on_chunk = function(ch)
      assert.is_nil(getmetatable(ch))
      n = n + 1
    end })
    return final, err, n, by[0] or "", by[1] or ""
  end,
  text_pull = function(c, req)
    local s, oerr = c:open_stream(req)
    if not s then return nil, oerr, nil, "" end
    local by, add = texts()
    for text, index in s:text() do add(text, index) end
    local final, err = s:result()
    s:close()
    return final, err, nil, by[0] or "", by[1] or ""
  end,
}
-- The text form inside a task: every wait yields to the scheduler instead of driving the loop.
forms.task = function(c, req)
  return luachat.spawn(function() return forms.text(c, req) end):wait()
end
local form_names = { "callback", "pull", "text", "task", "on_text", "both", "text_pull" }

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
          local final, err, n, text, text1 = forms[form](c, req)
          if exp.err then
            assert.is_table(err, where .. ": expected an error")
            assert.equal(exp.err.kind, err.kind, where)
            assert.matches(exp.err.message_has, err.message, 1, true)
          else
            assert.is_nil(err, where .. ": " .. tostring(err))
          end
          assert.is_table(final, where)
          assert.same(exp.final, final, where)
          if n then assert.equal(exp.chunks, n, where .. ": chunks") end
          assert.equal(exp.text, text, where .. ": text")
          assert.equal(exp.text_1 or "", text1, where .. ": text of choice 1")
        end
        assert.equal(#SPLITS, #srv:requests())
      end)
    end
  end
end)
