-- luachat.cli_chat: `luachat -c`, the interactive chat loop.
--
-- Owns: the loop (read an input, run a command or a turn), one turn of the
-- agent with the reply streamed to stdout, Ctrl-C cancelling a reply while
-- keeping what arrived, and the session's token count.
-- Never: ends the session on an error (it shows one line and reads on), or
-- writes anything but replies to stdout.
local luachat = require "luachat"
local options = require "luachat.cli_options"
local term = require "luachat.cli_term"
local cli_error = require "luachat.cli_error"
local setup = require "luachat.cli_setup"
local cli_reader = require "luachat.cli_reader"
local commands = require "luachat.cli_commands"
local util = require "luachat.util"

local EXIT = options.EXIT
local note, end_line = term.note, term.end_line

local M = {}

local add_usage = util.add_usage

-- After Ctrl-C or a failure mid-reply: keep the question and what arrived of
-- the answer, and drop an assistant turn whose tool calls never got their
-- results. When no text arrived, the whole turn is rolled back, so the next
-- request does not carry two user messages in a row.
function M.keep_partial(agent, start_len, text, partial)
  local msgs = agent.messages
  if type(msgs) ~= "table" then return end
  if partial == "" then
    for i = #msgs, start_len + 1, -1 do msgs[i] = nil end
    return
  end
  if #msgs <= start_len then
    msgs[#msgs + 1] = { role = "user", content = text }
  end
  local answered = {}
  for i = start_len + 1, #msgs do
    local m = msgs[i]
    if m.role == "tool" and m.tool_call_id then answered[m.tool_call_id] = true end
  end
  local last = msgs[#msgs]
  if last and last.role == "assistant" and type(last.tool_calls) == "table" then
    for _, c in ipairs(last.tool_calls) do
      if not answered[c.id] then
        msgs[#msgs] = nil
        break
      end
    end
  end
  last = msgs[#msgs]
  if partial ~= "" then
    if last and last.role == "assistant" and last.content == partial then return end
    msgs[#msgs + 1] = { role = "assistant", content = partial }
  end
end

-- One chat turn: the agent runs; the reply streams to stdout.
local function chat_turn(ctx, text)
  ctx.partial = {}
  ctx.turn_start = type(ctx.agent.messages) == "table" and #ctx.agent.messages or 0
  ctx.turn_text = text
  ctx.spinner.start()
  local result, err = ctx.agent:run(text)
  ctx.spinner.stop()
  if result and #ctx.partial == 0 and type(result.content) == "string" then
    term.out(ctx, result.content) -- not streamed: the whole reply at once
  end
  end_line(ctx)
  if err then
    M.keep_partial(ctx.agent, ctx.turn_start, text, table.concat(ctx.partial))
    io.stderr:write(cli_error.format_error(err, ctx.s), "\n")
    return
  end
  term.show_refusal(ctx, result.messages and result.messages[#result.messages])
  ctx.last_usage = result.usage
  add_usage(ctx.usage, result.usage)
  term.warn_finish(ctx, result.finish_reason)
end

-- Read one input and act on it; "quit" at the end.
local function chat_step(ctx, reader)
  local text = reader.input()
  if text == nil then return "quit" end
  if not text:match("%S") then return end
  if text:match("^/[^/]") or text == "/" then return commands.run(ctx, text) end
  if text:sub(1, 2) == "//" then text = text:sub(2) end
  ctx.in_turn = true
  chat_turn(ctx, text)
  ctx.in_turn = false
end

-- run(ctx) -> exit code (0: the session ends only at EOF or /quit).
function M.run(ctx)
  ctx.usage = {}
  ctx.agent = setup.new_agent(ctx)
  local reader = cli_reader.reader(ctx)
  if ctx.in_tty and ctx.err_tty then
    note(ctx, string.format("luachat %s — %s via %s. /help for commands, Ctrl-D to leave.",
      luachat.version or "", ctx.model, ctx.s.profile))
  end
  while true do
    ctx.in_turn = false
    local ok, intr, res = term.protect(chat_step, ctx, reader)
    if intr or (not ok and ctx.in_turn) then
      ctx.spinner.stop()
      end_line(ctx)
      if ctx.in_turn then
        M.keep_partial(ctx.agent, ctx.turn_start, ctx.turn_text, table.concat(ctx.partial or {}))
        if intr then note(ctx, "[reply cancelled]") end
      end
      if not ok and not intr then io.stderr:write(cli_error.format_error(res, ctx.s), "\n") end
    elseif not ok then
      io.stderr:write(cli_error.format_error(res, ctx.s), "\n")
    elseif res == "quit" then
      break
    end
  end
  if ctx.in_tty then io.stdout:write("\n") end
  reader.save_history()
  return EXIT.ok
end

return M
