-- luachat.cli_oneshot: `luachat -p PROMPT`, one answer.
--
-- Owns: the prompt (with piped stdin), one request (or the agent's tool loop
-- with --tools), streaming the answer or printing --json, and the exit code.
-- Never: reads more than one input, or writes anything but the answer (or
-- the JSON) to stdout.
local json = require "luachat.json"
local options = require "luachat.cli_options"
local term = require "luachat.cli_term"
local cli_error = require "luachat.cli_error"
local setup = require "luachat.cli_setup"

local EXIT = options.EXIT
local out, end_line = term.out, term.end_line

local M = {}

-- The prompt, with the text piped on stdin after a blank line (the piped
-- text alone when -p is empty).
local function full_prompt(ctx)
  local text = ctx.o.prompt
  if not ctx.in_tty then
    local piped = io.stdin:read("a")
    if piped and piped:match("%S") then
      text = text:match("%S") and (text .. "\n\n" .. piped) or piped
    end
  end
  return text
end

local function print_json(ctx, v)
  -- redacted as text: an echoed key inside any string (JSON-escaped too) is gone
  local ok, why, errno = io.stdout:write(term.redact(ctx, json.encode(v, { sort_keys = true })), "\n")
  if ok then ok, why, errno = io.stdout:flush() end
  if not ok then term.stdout_failed(ctx, why, errno) end
end

-- The end both paths share once the spinner has stopped: close the answer's
-- line, then an exit code if stdout went away or err is set; nil to go on.
-- A reader that left (`luachat -p ... | head -2`) ends it quietly with 141,
-- as cat and grep end; any other failed write is an error saying why.
local function finish(ctx, err)
  end_line(ctx)
  if ctx.stdout_pipe_closed then return EXIT.closed_pipe end
  if ctx.stdout_gone then
    io.stderr:write("luachat: cannot write the answer to stdout: ", tostring(ctx.stdout_gone), "\n")
    return EXIT.error
  end
  if err then
    io.stderr:write(cli_error.format_error(err, ctx.s), "\n")
    return EXIT.error
  end
  return nil
end

-- A refusal is shown on stderr (not with --json: the JSON carries it); one
-- with no answer beside it is a failure for the exit status.
local function refused(ctx, msg)
  if type(msg) ~= "table" then return false end
  if not ctx.o.json then term.show_refusal(ctx, msg) end
  local content = msg.content
  return type(msg.refusal) == "string" and msg.refusal ~= ""
    and (type(content) ~= "string" or content == "")
end

-- No tools: one chat request, streamed unless --no-stream.
local function one_shot_direct(ctx, prompt)
  local messages = {}
  if ctx.system then messages[#messages + 1] = { role = "system", content = ctx.system } end
  messages[#messages + 1] = { role = "user", content = prompt }
  local req = { model = ctx.model, messages = messages }
  local res, err
  ctx.spinner.start()
  if ctx.o.no_stream then
    res, err = ctx.client:chat(req)
    ctx.spinner.stop()
    if res and not ctx.o.json then
      local choice = type(res.choices) == "table" and res.choices[1]
      local msg = choice and choice.message
      out(ctx, msg and type(msg.content) == "string" and msg.content or "")
    end
  else
    local join = require("luachat.accumulate").text_joiner() -- whole characters, even split across chunks
    -- The text path (no chunk tables for text-only chunks); --json prints only the final.
    res, err = ctx.client:stream(req, not ctx.o.json and { on_text = function(piece, index)
      if index ~= 0 then return end
      local t = join(piece)
      if t ~= "" then
        if not out(ctx, t) then return false end
      end
    end } or nil)
    ctx.spinner.stop()
    local rest = join(nil)
    if rest ~= "" and not ctx.o.json then out(ctx, rest) end
  end
  local code = finish(ctx, err)
  if code then return code end
  local choice = type(res) == "table" and type(res.choices) == "table" and res.choices[1]
  local msg = type(choice) == "table" and choice.message or nil
  if ctx.o.json then
    print_json(ctx, res)
    code = finish(ctx)
    if code then return code end
  else
    term.warn_finish(ctx, choice and choice.finish_reason)
  end
  return refused(ctx, msg) and EXIT.error or EXIT.ok
end

-- --tools: the agent's loop, each tool call shown on stderr.
local function one_shot_agent(ctx, prompt)
  ctx.partial = {}
  local agent = setup.new_agent(ctx)
  ctx.spinner.start()
  local result, err = agent:run(prompt)
  ctx.spinner.stop()
  local code = finish(ctx, err)
  if code then return code end
  if ctx.o.json then
    print_json(ctx, {
      content = result.content, finish_reason = result.finish_reason,
      turns = result.turns, usage = result.usage, messages = result.messages,
    })
    code = finish(ctx)
    if code then return code end
  else
    -- Without streaming (or a silent on_text), the answer comes whole at the end.
    if #ctx.partial == 0 and type(result.content) == "string" then
      out(ctx, result.content)
      code = finish(ctx)
      if code then return code end
    end
    term.warn_finish(ctx, result.finish_reason)
  end
  local msgs = result.messages
  return refused(ctx, type(msgs) == "table" and msgs[#msgs]) and EXIT.error or EXIT.ok
end

-- run(ctx) -> exit code.
function M.run(ctx)
  local prompt = full_prompt(ctx)
  if not prompt:match("%S") then
    io.stderr:write("luachat: the prompt is empty: give -p TEXT (or pipe text on stdin)\n", options.USAGE, "\n")
    return EXIT.usage
  end
  local ok, intr, code = term.protect(function()
    if ctx.tools then return one_shot_agent(ctx, prompt) end
    return one_shot_direct(ctx, prompt)
  end)
  if intr then
    ctx.spinner.stop()
    end_line(ctx)
    io.stderr:write("luachat: interrupted\n")
    return EXIT.interrupted
  end
  if not ok then
    ctx.spinner.stop()
    end_line(ctx)
    io.stderr:write(cli_error.format_error(code, ctx.s), "\n")
    return EXIT.error
  end
  return code
end

return M
