-- luachat.cli_commands: the chat's slash commands (/help, /model, /save, ...).
--
-- Owns: what each command does to the chat context (ctx.agent, ctx.model,
-- ctx.system) and the notes it shows on stderr.
-- Never: sends a request or writes to stdout.
local luachat = require "luachat"
local term = require "luachat.cli_term"
local setup = require "luachat.cli_setup"

local note, one_line = term.note, term.one_line

local M = {}

local CHAT_HELP = [[
/help          this list
/model [NAME]  show or switch the model
/system [TEXT] show or set the system prompt (applies from the next reply)
/tools         list the tools the model may call
/reset         forget the conversation
/save FILE     write the transcript to FILE
/load FILE     continue the transcript in FILE
/usage         tokens used in this session
/quit          leave (so does Ctrl-D)
A line ending in \ continues on the next; """ opens and closes a block.
Ctrl-C cancels a reply in progress; //text sends "/text".]]

local commands = {}
local err_text -- below

function commands.help(ctx)
  note(ctx, CHAT_HELP)
end

function commands.model(ctx, arg)
  if arg == "" then
    note(ctx, "model: " .. tostring(ctx.model))
    return
  end
  ctx.model = arg
  ctx.agent.model = arg
  note(ctx, "model: " .. arg)
end

function commands.system(ctx, arg)
  if arg == "" then
    note(ctx, "system: " .. (ctx.system or "(none)"))
    return
  end
  ctx.system = arg
  ctx.agent.system = arg
  -- The transcript carries it: replace its system message, or put one first
  -- (a chat started without -s has none).
  local msgs = ctx.agent.messages
  if type(msgs) == "table" then
    local first = msgs[1]
    if type(first) == "table" and first.role == "system" then
      first.content = arg
    else
      table.insert(msgs, 1, { role = "system", content = arg })
    end
  end
  note(ctx, "system prompt set")
end

function commands.tools(ctx)
  if not ctx.tools or #ctx.tools == 0 then
    note(ctx, "no tools (load some with --tools FILE.lua or --mcp 'CMD ARGS')")
    return
  end
  local mcp_tools = require "luachat.mcp_tools"
  -- One line per tool, cut to the terminal's width (100 columns when stderr is not one);
  -- the name column as wide as the longest name, at most 30.
  local core = require "luachat.core"
  local width = ctx.err_tty and core.term_width and core.term_width(2) or 100
  local rows, col = {}, 4
  for _, t in ipairs(ctx.tools) do
    if mcp_tools.is_session(t) then
      -- An MCP server's tools, each with the server's name; a server that is gone says so.
      local gone = t:gone()
      local list, err
      if gone then
        rows[#rows + 1] = { line = string.format("MCP server %s is gone (%s): its tools are no longer offered", t.name, gone) }
      else
        list, err = t:tools()
        if not list then rows[#rows + 1] = { line = string.format("MCP server %s: %s", t.name, err_text(err)) } end
      end
      for _, tool in ipairs(list or {}) do
        rows[#rows + 1] = { name = tool.name, desc = "(MCP server " .. t.name .. ") " .. (tool.description or "") }
      end
    else
      local desc = t.description or (t["function"] and t["function"].description) or ""
      rows[#rows + 1] = { name = t.name or (t["function"] and t["function"].name) or "?", desc = desc }
    end
  end
  for _, r in ipairs(rows) do
    if r.name and #r.name > col then col = math.min(#r.name, 30) end
  end
  for _, r in ipairs(rows) do
    local line = r.line or string.format("%-" .. col .. "s  %s", r.name, one_line(r.desc, 100000))
    note(ctx, one_line(line, math.max(width - 2, 20))) -- "…" ends a cut line
  end
end

function commands.reset(ctx)
  ctx.agent = setup.new_agent(ctx)
  note(ctx, "conversation cleared")
end

-- A file name as a shell would read it: a leading ~ or ~/ is $HOME.
local function expand_home(path)
  local home = setup.getenv("HOME")
  if home and (path == "~" or path:sub(1, 2) == "~/") then return home .. path:sub(2) end
  return path
end
M.expand_home = expand_home

-- An error's own words (its message), not its tostring, which repeats "luachat: kind error:".
function err_text(err)
  if type(err) == "table" and err.message ~= nil then return tostring(err.message) end
  return tostring(err)
end

function commands.save(ctx, arg)
  if arg == "" then note(ctx, "usage: /save FILE") return end
  arg = expand_home(arg)
  local ok, err = ctx.agent:save(arg)
  if ok == nil and err then
    note(ctx, "/save: " .. one_line(err_text(err)))
  else
    note(ctx, string.format("saved %d messages to %s", #ctx.agent.messages, arg))
  end
end

function commands.load(ctx, arg)
  if arg == "" then note(ctx, "usage: /load FILE") return end
  arg = expand_home(arg)
  local agent, err = luachat.agent.load(arg, setup.agent_options(ctx))
  if not agent then
    note(ctx, "/load: " .. one_line(err_text(err)))
    return
  end
  ctx.agent = agent
  ctx.system = agent.system
  note(ctx, string.format("loaded %d messages from %s", #agent.messages, arg))
end

function commands.usage(ctx)
  local u, l = ctx.usage, ctx.last_usage or {}
  note(ctx, string.format("session: %d prompt + %d completion = %d tokens; last reply: %d",
    u.prompt_tokens or 0, u.completion_tokens or 0, u.total_tokens or 0, l.total_tokens or 0))
end

commands.quit = function() return "quit" end
commands.exit = commands.quit

-- run(ctx, text) -> "quit" to leave, else nothing. text: "/name args".
function M.run(ctx, text)
  local name, arg = text:match("^/(%S+)%s*(.-)%s*$")
  local fn = commands[name]
  if not fn then
    note(ctx, "unknown command /" .. tostring(name) .. " (/help lists them)")
    return
  end
  return fn(ctx, arg)
end

return M
