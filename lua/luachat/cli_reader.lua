-- luachat.cli_reader: the chat's input.
--
-- Owns: reading one input (a line, lines joined by a trailing \, or a """
-- block) with the host's line editor on a terminal, else plain stdin lines;
-- the prompts; the history file.
-- Never: interprets what was read (slash commands are luachat.cli_commands'),
-- or writes to stdout except the prompt on a terminal without the editor.
local term = require "luachat.cli_term"
local setup = require "luachat.cli_setup"

local rl = term.rl
local getenv = setup.getenv

local M = {}

-- Where the history lives; nil without XDG_STATE_HOME or HOME.
local function state_dir()
  local xdg = getenv("XDG_STATE_HOME")
  if xdg then return xdg .. "/luachat" end
  local home = getenv("HOME")
  if home then return home .. "/.local/state/luachat" end
  return nil
end

local function shell_quote(s)
  return "'" .. s:gsub("'", "'\\''") .. "'"
end

-- reader(ctx) -> r: r.input() gives one input or nil at EOF; r.save_history().
function M.reader(ctx)
  local r = {}
  local use_rl = rl and ctx.in_tty
  local color = ctx.ostyle("1", "x") ~= "x"
  -- \1 and \2 tell readline the escapes take no room on screen.
  local function prompt_text(p)
    if use_rl and color then return "\1\27[1;32m\2" .. p .. "\1\27[0m\2" end
    return p
  end
  r.prompt, r.cont = prompt_text("> "), prompt_text("… ")
  if use_rl then
    local dir = state_dir()
    if dir then
      r.history = dir .. "/history"
      rl.read_history(r.history)
    end
  end
  function r.line(prompt)
    if use_rl then return rl.readline(prompt) end
    if ctx.in_tty then
      io.stdout:write(prompt)
      io.stdout:flush()
    end
    return io.stdin:read("l")
  end
  function r.remember(line)
    if use_rl and line:match("%S") then rl.add_history(line) end
  end
  function r.save_history()
    if not r.history then return end
    os.execute("mkdir -p " .. shell_quote(r.history:match("^(.*)/")) .. " 2>/dev/null")
    rl.write_history(r.history, 1000)
  end
  -- One input: a line, lines joined by a trailing \, or a """ block. nil at EOF.
  -- History gets the whole input as one entry, so Up brings a multi-line
  -- prompt back whole (and the history file keeps it, see luachat.readline).
  function r.input()
    local text = r.read_input()
    if text ~= nil then r.remember(text) end
    return text
  end
  function r.read_input()
    local line = r.line(r.prompt)
    if line == nil then return nil end
    local opened = line:match('^%s*"""(.*)$')
    if opened then
      local one = opened:match('^(.-)"""%s*$')
      if one then return one end
      local parts = {}
      if opened ~= "" then parts[1] = opened end
      while true do
        local l = r.line(r.cont)
        if l == nil then break end
        local before = l:match('^(.-)"""%s*$')
        if before then
          if before ~= "" then parts[#parts + 1] = before end
          break
        end
        parts[#parts + 1] = l
      end
      return table.concat(parts, "\n")
    end
    local parts = {}
    while line:sub(-1) == "\\" do
      parts[#parts + 1] = line:sub(1, -2)
      line = r.line(r.cont)
      if line == nil then line = "" break end
    end
    parts[#parts + 1] = line
    return table.concat(parts, "\n")
  end
  return r
end

return M
