-- luachat.cli_term: the chat command line's terminal.
--
-- Owns: what reaches stdout (the answer, ended by a newline) and stderr
-- (spinner, tool calls, notes, warnings), colour, and the two host hooks the
-- modes share: the line editor (luachat.readline) and a Ctrl-C-aware pcall.
-- Never: writes anything but answer text to stdout, or builds error lines
-- (luachat.cli_error does).
local core = require "luachat.core"
local luachat = require "luachat"
local json = require "luachat.json"
local util = require "luachat.util"
local redact = require "luachat.redact"

local M = {}

-- The host's line editor; absent under a stock lua5.4.
local have_rl, rl = pcall(require, "luachat.readline")
if not have_rl then rl = nil end
M.rl = rl

-- A pcall that also reports (and clears) a pending Ctrl-C. The host's version
-- does the clearing in C, where the interrupt hook cannot fire in between.
M.protect = rl and rl.protect or function(f, ...)
  local r = table.pack(pcall(f, ...))
  local intr = core.take_interrupt and core.take_interrupt() or false
  return r[1], intr, table.unpack(r, 2, r.n)
end

function M.isatty(fd)
  return core.isatty and core.isatty(fd) or false
end

-- A styling function: wraps text in an SGR code when colour is on.
function M.styler(on)
  return function(code, s)
    if on then return "\27[" .. code .. "m" .. s .. "\27[0m" end
    return s
  end
end

-- s with its control characters made visible (ESC as ^[): luachat.log owns
-- the rule, since its debug lines carry server text to stderr too.
M.visible = require("luachat.log").visible

-- s on one line (luachat.util.one_line), control characters visible, cut on a
-- character boundary to max bytes (300 by default).
local function one_line(s, max)
  s = util.one_line(s)
  s = M.visible(s)
  return util.cut(s, max or 300)
end
M.one_line = one_line

-- The waiting indicator: a task redrawing one stderr line until the first token.
local FRAMES = { "⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏" }

function M.spinner(enabled, style)
  local sp = { active = false, shown = false }
  function sp.start()
    if not enabled or sp.active then return end
    sp.active = true
    local me = {}
    sp.token = me
    luachat.spawn(function()
      local n = 0
      luachat.sleep(0.15) -- a fast answer shows no spinner at all
      while sp.active and sp.token == me do
        n = n + 1
        io.stderr:write("\r", style("2", FRAMES[(n - 1) % #FRAMES + 1] .. " waiting…"))
        io.stderr:flush()
        sp.shown = true
        luachat.sleep(0.1)
      end
    end)
  end
  function sp.stop()
    sp.active = false
    sp.token = nil
    if sp.shown then
      io.stderr:write("\r\27[K")
      io.stderr:flush()
      sp.shown = false
    end
  end
  return sp
end

-- Every credential the settings send (luachat.redact's rule), built once per ctx.
local function secrets(ctx)
  local list = ctx.secret_list
  if not list then
    local s = ctx.s or {}
    list = redact.secrets { key = s.api_key or nil, url = s.base_url,
      headers = { s.headers or {} }, query = { s.query or {} } }
    ctx.secret_list = list
  end
  return list
end

-- s with every credential replaced by [REDACTED]: nothing secret is printed,
-- whatever the server echoes back. For whole texts (stderr lines, --json).
function M.redact(ctx, s)
  return redact.text(s, secrets(ctx))
end

-- Streamed text: redacted with what was held back before; a tail that could
-- begin a secret (at most its length - 1 bytes) is held back until the next
-- piece or the end (M.end_line), so a key split across chunks is still caught.
local function redact_stream(ctx, text)
  local list = secrets(ctx)
  if #list == 0 then return text end
  text = redact.text((ctx.redact_held or "") .. text, list)
  ctx.redact_held = nil
  local hold = 0
  for _, secret in ipairs(list) do
    -- the earliest start of secret's first byte in the last #secret - 1 bytes: the longest tail
    local p = text:find(secret:sub(1, 1), math.max(1, #text - #secret + 2), true)
    while p do
      local k = #text - p + 1
      if k <= hold then break end
      if text:sub(p) == secret:sub(1, k) then
        hold = k
        break
      end
      p = text:find(secret:sub(1, 1), p + 1, true)
    end
  end
  if hold > 0 then
    ctx.redact_held = text:sub(-hold)
    text = text:sub(1, -hold - 1)
  end
  return text
end

local EPIPE = 32 -- Linux's errno: the reader of the pipe on stdout left (`| head`)

-- A write to stdout failed (io.stdout:write's why, errno): ctx.stdout_gone says
-- why; ctx.stdout_pipe_closed when the reader left, which ends the answer
-- quietly (as cat and grep end), unlike a closed or full stdout.
function M.stdout_failed(ctx, why, errno)
  ctx.stdout_gone = why or "write failed"
  ctx.stdout_pipe_closed = errno == EPIPE
end

-- Write answer text to stdout; false when stdout is gone (a closed pipe).
local function write_out(ctx, text)
  if text == nil or text == "" then return true end
  if ctx.out_tty then
    -- A terminal: the server's control characters are shown, not obeyed
    -- (piped output stays exact). A C1 control's first byte may end a chunk.
    text = (ctx.held_byte or "") .. text:gsub("\r\n", "\n")
    ctx.held_byte = nil
    if text:sub(-1) == "\194" then ctx.held_byte, text = "\194", text:sub(1, -2) end
    text = M.visible(text, true)
    if text == "" then return true end
  end
  ctx.spinner.stop()
  -- flush too: with stdout closed, write only fills the buffer and flush reports it
  local ok, why, errno = io.stdout:write(text)
  if ok then ok, why, errno = io.stdout:flush() end
  if not ok then
    M.stdout_failed(ctx, why, errno)
    return false
  end
  ctx.last_char = text:sub(-1)
  ctx.wrote = true
  return true
end

function M.out(ctx, text)
  if text == nil or text == "" then return true end
  return write_out(ctx, redact_stream(ctx, text))
end

-- End the answer with a newline if it has none.
function M.end_line(ctx)
  local held = ctx.redact_held -- the stream ended: no secret can complete this tail
  if held then
    ctx.redact_held = nil
    if not ctx.stdout_gone then write_out(ctx, held) end
  end
  if ctx.held_byte then -- a lone UTF-8 lead byte ended the answer: shown as cat -v does
    ctx.held_byte = nil
    if not ctx.stdout_gone and io.stdout:write("M-B") then ctx.wrote, ctx.last_char = true, "B" end
  end
  if ctx.wrote and ctx.last_char ~= "\n" and not ctx.stdout_gone then
    io.stdout:write("\n")
    io.stdout:flush()
  end
  ctx.wrote, ctx.last_char = false, nil
end

-- A dim line on stderr: chat notes, command output.
function M.note(ctx, s)
  io.stderr:write(ctx.estyle("2", s), "\n")
end

function M.warn_finish(ctx, reason)
  if reason == "length" then
    io.stderr:write(ctx.estyle("33", "luachat: the answer was cut at the token limit (finish_reason: length)"), "\n")
  elseif reason == "content_filter" then
    io.stderr:write(ctx.estyle("33", "luachat: the answer was stopped by the provider's content filter"), "\n")
  end
end

-- A refusal (message.refusal, from delta.refusal) goes to stderr, marked, since
-- it is not the answer. Returns true when msg carried one.
function M.show_refusal(ctx, msg)
  local text = type(msg) == "table" and msg.refusal
  if type(text) ~= "string" or text == "" then return false end
  ctx.spinner.stop()
  M.end_line(ctx)
  io.stderr:write(ctx.estyle("33", "luachat: the model refused: " .. M.visible(M.redact(ctx, text), true)), "\n")
  return true
end

-- The name of a tool call, and its arguments as text, whatever the shape.
local function call_parts(call)
  if type(call) ~= "table" then return tostring(call), "" end
  local fn = type(call["function"]) == "table" and call["function"] or call
  local args = fn.arguments
  if type(args) == "table" then
    local ok, s = pcall(json.encode, args)
    args = ok and s or "{…}"
  end
  return tostring(fn.name or "?"), tostring(args or "")
end

local function result_text(result)
  if type(result) == "table" then
    local ok, s = pcall(json.encode, result)
    return ok and s or tostring(result)
  end
  return tostring(result)
end

function M.show_tool_call(ctx, call)
  ctx.spinner.stop()
  M.end_line(ctx)
  local name, args = call_parts(call)
  io.stderr:write(ctx.estyle("36", "→ " .. one_line(M.redact(ctx, name), 64) .. " " .. one_line(M.redact(ctx, args), 200)), "\n")
end

-- on_tool_result(info, content, err_text): err_text when the call failed.
function M.show_tool_result(ctx, call, result, err_text)
  local text = one_line(M.redact(ctx, err_text and ("error: " .. tostring(err_text)) or result_text(result)), 120)
  io.stderr:write(ctx.estyle("2", "← " .. text), "\n")
  ctx.spinner.start()
end

return M
