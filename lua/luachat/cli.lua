-- luachat.cli: the chat command line (`luachat -p PROMPT`, `luachat -c`).
--
-- Owns: parsing the chat options, picking the provider (luachat.profiles),
-- the one-shot answer, the interactive chat (prompt, multi-line input,
-- slash commands, Ctrl-C cancelling a reply), what goes to stdout (only the
-- answer) and stderr (spinner, tool calls, one-line errors), exit codes.
-- Never: prints an API key, writes anything but the answer to stdout, or
-- calls os.exit (main returns the exit code; the host exits with it).
--
-- Called by the host (src/main.c) as require("luachat.cli").main(args), args
-- being argv without argv[0]. Returns 0 done, 1 error, 2 usage, 130 interrupted.
local core = require "luachat.core"
local luachat = require "luachat"
local json = require "luachat.json"
local profiles = require "luachat.profiles"

local M = {}

local EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

-- The host's line editor; absent under a stock lua5.4.
local have_rl, rl = pcall(require, "luachat.readline")
if not have_rl then rl = nil end

-- A pcall that also reports (and clears) a pending Ctrl-C. The host's version
-- does the clearing in C, where the interrupt hook cannot fire in between.
local protect = rl and rl.protect or function(f, ...)
  local r = table.pack(pcall(f, ...))
  local intr = core.take_interrupt and core.take_interrupt() or false
  return r[1], intr, table.unpack(r, 2, r.n)
end

M.HELP = [[
usage: luachat -p PROMPT [options]      one answer, streamed to stdout
       luachat -c [options]             interactive chat

Modes:
  -p, --prompt TEXT    ask once; text piped on stdin is appended after a blank line
                       (git diff | luachat -p "review this")
  -c, --chat           interactive chat: line editing, history, streamed replies;
                       a line ending in \ continues, """ opens/closes a block;
                       Ctrl-C cancels the reply in progress, Ctrl-D leaves
Options:
  -m, --model NAME     the model
  -s, --system TEXT    the system prompt
  -P, --profile NAME   the provider: openai (default), openrouter, groq, deepseek,
                       mistral, together, ollama, llamacpp, vllm, azure, or one
                       from the config file
  --base-url URL       the API's base URL (e.g. http://localhost:8080/v1)
  --tools FILE.lua     a Lua file returning a list of luachat.tool{...}: the model
                       may call them (each call is shown on stderr)
  --json               print the final result as JSON instead of the text (-p);
                       with --tools, the agent's result {content, finish_reason,
                       turns, usage, messages}
  --no-stream          one request/response, no streaming
  -h, --help           this help

Chat commands: /help /model NAME /system TEXT /tools /reset /save FILE
               /load FILE /usage /quit   (//text sends "/text")

Settings, first found wins:
  profile   -P  > LUACHAT_PROFILE > default_profile in the config > openai
  base URL  --base-url > LUACHAT_BASE_URL > the profile's own variable
            (OPENAI_BASE_URL for openai) > the profile's base_url
  model     -m > LUACHAT_MODEL > the profile's model
  API key   the profile's key variable: OPENAI_API_KEY, OPENROUTER_API_KEY,
            GROQ_API_KEY, DEEPSEEK_API_KEY, MISTRAL_API_KEY, TOGETHER_API_KEY,
            OLLAMA_API_KEY, LLAMA_API_KEY, VLLM_API_KEY, AZURE_OPENAI_API_KEY
            (or api_key in the config's profile)
  azure     AZURE_OPENAI_ENDPOINT, AZURE_OPENAI_DEPLOYMENT (or -m),
            AZURE_OPENAI_API_VERSION; the key goes in the api-key header
Config: $XDG_CONFIG_HOME/luachat/config.lua (default ~/.config/luachat/config.lua)
  return { default_profile = "work",
           profiles = { work = { base_url = "https://...", key_env = "WORK_KEY",
                                 model = "...", headers = {}, query = {} } } }
History: $XDG_STATE_HOME/luachat/history (default ~/.local/state/luachat/history)
Colour only on a terminal, and never when NO_COLOR is set.
Exit status: 0 done, 1 error, 2 usage, 130 interrupted.
]]

---------------------------------------------------------------------------
-- Options

local VALUE_OPTS = {
  ["-p"] = "prompt", ["--prompt"] = "prompt",
  ["-m"] = "model", ["--model"] = "model",
  ["-s"] = "system", ["--system"] = "system",
  ["-P"] = "profile", ["--profile"] = "profile",
  ["--base-url"] = "base_url",
  ["--tools"] = "tools",
}
local FLAG_OPTS = {
  ["-c"] = "chat", ["--chat"] = "chat",
  ["--json"] = "json",
  ["--no-stream"] = "no_stream",
  ["-h"] = "help", ["--help"] = "help",
}

-- parse(args) -> opts | nil, message (a usage error).
function M.parse(args)
  local o = {}
  for _, a in ipairs(args) do
    if a == "-h" or a == "--help" then return { help = true } end
  end
  local i = 1
  while i <= #args do
    local a = args[i]
    local name, inline = a:match("^(%-%-[%w-]+)=(.*)$")
    if not name then name = a end
    if VALUE_OPTS[name] then
      local v = inline
      if v == nil then
        i = i + 1
        v = args[i]
        if v == nil then return nil, string.format("option '%s' needs an argument", name) end
      end
      o[VALUE_OPTS[name]] = v
    elseif FLAG_OPTS[name] and inline == nil then
      o[FLAG_OPTS[name]] = true
    elseif a:sub(1, 1) == "-" and a ~= "-" then
      return nil, string.format("unrecognized option '%s'", a)
    else
      return nil, string.format("unexpected argument '%s'", a)
    end
    i = i + 1
  end
  if o.prompt and o.chat then return nil, "-p and -c cannot be used together" end
  if not o.prompt and not o.chat then return nil, "give -p PROMPT or -c" end
  if o.json and o.chat then return nil, "--json goes with -p, not -c" end
  return o
end

---------------------------------------------------------------------------
-- Terminal output

local function getenv(name)
  local v = os.getenv(name)
  if v == "" then return nil end
  return v
end

local function isatty(fd)
  return core.isatty and core.isatty(fd) or false
end

-- A styling function: wraps text in an SGR code when colour is on.
local function styler(on)
  return function(code, s)
    if on then return "\27[" .. code .. "m" .. s .. "\27[0m" end
    return s
  end
end

local function one_line(s, max)
  s = tostring(s):gsub("%s*[\r\n]+%s*", " ")
  max = max or 300
  if #s > max then
    -- Cut on a UTF-8 character boundary.
    local cut = max
    while cut > 1 and (s:byte(cut + 1) or 0) & 0xC0 == 0x80 do cut = cut - 1 end
    s = s:sub(1, cut) .. "…"
  end
  return s
end
M.one_line = one_line

-- The waiting indicator: a task redrawing one stderr line until the first token.
local FRAMES = { "⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏" }

local function spinner(enabled, style)
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

---------------------------------------------------------------------------
-- Errors: one line, naming the provider, the status and what to do.

local function server_message(body)
  local ok, client_mod = pcall(require, "luachat.client")
  if not ok or not client_mod.server_message then return nil end
  local ok2, msg = pcall(client_mod.server_message, body)
  return ok2 and msg or nil
end

local function hint_for(e, s)
  local key_env = s.key_env or "the API key variable"
  local status = tonumber(e.status)
  if e.kind == "invalid_api_key" or status == 401 or status == 403 then
    if s.api_key or (s.headers and s.headers["api-key"]) then
      return "check " .. key_env .. " (the key was refused)"
    end
    return "set " .. key_env
  elseif status == 404 then
    return "check the model name (-m) and the base URL (" .. (s.base_url or "?") .. ")"
  elseif status == 429 then
    return "rate limited or out of credits: wait and retry, or check your plan"
  elseif status and status >= 500 then
    return "the provider is failing: try again later"
  elseif status and status >= 400 then
    return "the provider refused the request: check the model and options"
  elseif e.kind == "timeout" then
    return "no answer in time: try again, or check the server"
  elseif e.kind == "network" then
    return "cannot reach " .. (s.base_url or "the server") .. ": check the URL (--base-url) and your network"
  elseif e.kind == "deserialise" then
    return "the answer is not an OpenAI-compatible one: check the base URL"
  end
  return nil
end

-- format_error(err, settings) -> "luachat: openai: HTTP 401 bad key — set OPENAI_API_KEY"
function M.format_error(err, s)
  s = s or {}
  local e = type(err) == "table" and err or { message = tostring(err) }
  local what
  local status = tonumber(e.status)
  if status and status >= 400 then
    local smsg = server_message(e.body)
    what = string.format("HTTP %d%s", status, smsg and (" " .. smsg) or "")
  else
    what = tostring(e.message or err)
  end
  local hint = hint_for(e, s)
  local line = string.format("luachat: %s: %s", s.profile or "error", one_line(what, 240))
  if hint then line = line .. " — " .. hint end
  return line
end

---------------------------------------------------------------------------
-- Setup shared by both modes

local function load_tools(path)
  local chunk, err = loadfile(path, "t")
  if not chunk then return nil, "--tools: " .. err end
  local ok, res = xpcall(chunk, debug.traceback)
  if not ok then return nil, "--tools: " .. path .. ": " .. one_line(res, 400) end
  if type(res) ~= "table" then
    return nil, "--tools: " .. path .. " must return a list of luachat.tool{...}, got " .. type(res)
  end
  for i, t in ipairs(res) do
    if type(t) ~= "table" then
      return nil, string.format("--tools: %s: item %d is a %s, not a luachat.tool", path, i, type(t))
    end
  end
  return res
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

-- Everything a run needs: settings, client, tools, output styles.
local function setup(o)
  local env_names = { XDG_CONFIG_HOME = getenv("XDG_CONFIG_HOME"), HOME = getenv("HOME") }
  local config, cerr = profiles.load_config(profiles.config_path(env_names))
  if not config then
    io.stderr:write("luachat: ", one_line(cerr, 400), "\n")
    return nil, EXIT_ERROR
  end
  local s, err, kind = profiles.resolve(
    { profile = o.profile, base_url = o.base_url, model = o.model, system = o.system },
    profiles.environment(config), config)
  if not s then
    io.stderr:write("luachat: ", err, "\n")
    return nil, kind == "usage" and EXIT_USAGE or EXIT_ERROR
  end
  local ok, client = pcall(luachat.client, {
    base_url = s.base_url, api_key = s.api_key, headers = s.headers, query = s.query,
  })
  if not ok then
    io.stderr:write("luachat: ", s.profile, ": ", one_line((tostring(client):gsub("^.-bad argument", "bad argument"))), "\n")
    return nil, EXIT_USAGE
  end
  local tools
  if o.tools then
    local terr
    tools, terr = load_tools(o.tools)
    if not tools then
      io.stderr:write("luachat: ", terr, "\n")
      return nil, EXIT_ERROR
    end
  end
  local color = getenv("NO_COLOR") == nil
  local ctx = {
    o = o, s = s, client = client, tools = tools,
    model = s.model, system = s.system,
    err_tty = isatty(2), out_tty = isatty(1), in_tty = isatty(0),
  }
  ctx.estyle = styler(color and ctx.err_tty)
  ctx.ostyle = styler(color and ctx.out_tty)
  ctx.spinner = spinner(ctx.err_tty, ctx.estyle)
  return ctx
end

-- Write answer text to stdout; false when stdout is gone (a closed pipe).
local function out(ctx, text)
  if text == nil or text == "" then return true end
  ctx.spinner.stop()
  local ok = io.stdout:write(text)
  io.stdout:flush()
  if not ok then
    ctx.stdout_gone = true
    return false
  end
  ctx.last_char = text:sub(-1)
  ctx.wrote = true
  return true
end

-- End the answer with a newline if it has none.
local function end_line(ctx)
  if ctx.wrote and ctx.last_char ~= "\n" and not ctx.stdout_gone then
    io.stdout:write("\n")
    io.stdout:flush()
  end
  ctx.wrote, ctx.last_char = false, nil
end

local function show_tool_call(ctx, call)
  ctx.spinner.stop()
  end_line(ctx)
  local name, args = call_parts(call)
  io.stderr:write(ctx.estyle("36", "→ " .. name .. " " .. one_line(args, 200)), "\n")
end

-- on_tool_result(info, content, err_text): err_text when the call failed.
local function show_tool_result(ctx, call, result, err_text)
  local text = one_line(err_text and ("error: " .. tostring(err_text)) or result_text(result), 120)
  io.stderr:write(ctx.estyle("2", "← " .. text), "\n")
  ctx.spinner.start()
end

-- An agent with this context's model, system prompt, tools and display callbacks.
local function agent_options(ctx)
  return {
    client = ctx.client,
    model = ctx.model,
    system = ctx.system,
    tools = ctx.tools,
    stream = not ctx.o.no_stream,
    on_text = function(text)
      ctx.partial[#ctx.partial + 1] = text
      if not ctx.o.json then out(ctx, text) end
    end,
    on_tool_call = function(call) show_tool_call(ctx, call) end,
    on_tool_result = function(call, result, err_text) show_tool_result(ctx, call, result, err_text) end,
  }
end

local function new_agent(ctx)
  return luachat.agent(agent_options(ctx))
end

local function warn_finish(ctx, reason)
  if reason == "length" then
    io.stderr:write(ctx.estyle("33", "luachat: the answer was cut at the token limit (finish_reason: length)"), "\n")
  elseif reason == "content_filter" then
    io.stderr:write(ctx.estyle("33", "luachat: the answer was stopped by the provider's content filter"), "\n")
  end
end

---------------------------------------------------------------------------
-- One-shot: luachat -p PROMPT

-- The prompt, with the text piped on stdin after a blank line.
local function full_prompt(ctx)
  local text = ctx.o.prompt
  if not ctx.in_tty then
    local piped = io.stdin:read("a")
    if piped and piped:match("%S") then
      text = text .. "\n\n" .. piped
    end
  end
  return text
end

local function print_json(v)
  io.stdout:write(json.encode(v, { sort_keys = true }), "\n")
  io.stdout:flush()
end

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
    res, err = ctx.client:stream(req, function(chunk)
      if ctx.o.json then return end
      local t = luachat.delta_text(chunk)
      if t and t ~= "" then
        if not out(ctx, t) then return false end
      end
    end)
    ctx.spinner.stop()
  end
  end_line(ctx)
  if ctx.stdout_gone then return EXIT_ERROR end
  if err then
    io.stderr:write(M.format_error(err, ctx.s), "\n")
    return EXIT_ERROR
  end
  if ctx.o.json then
    print_json(res)
  else
    local choice = type(res) == "table" and type(res.choices) == "table" and res.choices[1]
    warn_finish(ctx, choice and choice.finish_reason)
  end
  return EXIT_OK
end

local function one_shot_agent(ctx, prompt)
  ctx.partial = {}
  local agent = new_agent(ctx)
  ctx.spinner.start()
  local result, err = agent:run(prompt)
  ctx.spinner.stop()
  end_line(ctx)
  if ctx.stdout_gone then return EXIT_ERROR end
  if err then
    io.stderr:write(M.format_error(err, ctx.s), "\n")
    return EXIT_ERROR
  end
  if ctx.o.json then
    print_json {
      content = result.content, finish_reason = result.finish_reason,
      turns = result.turns, usage = result.usage, messages = result.messages,
    }
  else
    -- Without streaming (or a silent on_text), the answer comes whole at the end.
    if #ctx.partial == 0 and type(result.content) == "string" then
      out(ctx, result.content)
      end_line(ctx)
    end
    warn_finish(ctx, result.finish_reason)
  end
  return EXIT_OK
end

local function one_shot(ctx)
  local prompt = full_prompt(ctx)
  local ok, intr, code = protect(function()
    if ctx.tools then return one_shot_agent(ctx, prompt) end
    return one_shot_direct(ctx, prompt)
  end)
  if intr then
    ctx.spinner.stop()
    end_line(ctx)
    io.stderr:write("luachat: interrupted\n")
    return EXIT_INTERRUPTED
  end
  if not ok then
    ctx.spinner.stop()
    end_line(ctx)
    io.stderr:write(M.format_error(code, ctx.s), "\n")
    return EXIT_ERROR
  end
  return code
end

---------------------------------------------------------------------------
-- Chat: luachat -c

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

-- Line input: readline on a terminal, else plain lines from stdin.
local function make_reader(ctx)
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
  function r.input()
    local line = r.line(r.prompt)
    if line == nil then return nil end
    r.remember(line)
    local opened = line:match('^%s*"""(.*)$')
    if opened then
      local one = opened:match('^(.-)"""%s*$')
      if one then return one end
      local parts = {}
      if opened ~= "" then parts[1] = opened end
      while true do
        local l = r.line(r.cont)
        if l == nil then break end
        r.remember(l)
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
      r.remember(line)
    end
    parts[#parts + 1] = line
    return table.concat(parts, "\n")
  end
  return r
end

local function note(ctx, s)
  io.stderr:write(ctx.estyle("2", s), "\n")
end

local function add_usage(total, u)
  if type(u) ~= "table" then return end
  for _, k in ipairs { "prompt_tokens", "completion_tokens", "total_tokens" } do
    total[k] = (total[k] or 0) + (tonumber(u[k]) or 0)
  end
end

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

-- After Ctrl-C mid-reply: keep the question and what arrived of the answer,
-- and drop an assistant turn whose tool calls never got their results.
local function keep_partial(agent, start_len, text, partial)
  local msgs = agent.messages
  if type(msgs) ~= "table" then return end
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

local commands = {}

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
  -- A transcript that starts with a system message carries it.
  local first = type(ctx.agent.messages) == "table" and ctx.agent.messages[1]
  if first and first.role == "system" then first.content = arg end
  note(ctx, "system prompt set")
end

function commands.tools(ctx)
  if not ctx.tools or #ctx.tools == 0 then
    note(ctx, "no tools (load some with --tools FILE.lua)")
    return
  end
  for _, t in ipairs(ctx.tools) do
    local desc = t.description or (t["function"] and t["function"].description) or ""
    local name = t.name or (t["function"] and t["function"].name) or "?"
    note(ctx, string.format("%-20s %s", name, one_line(desc, 90)))
  end
end

function commands.reset(ctx)
  ctx.agent = new_agent(ctx)
  note(ctx, "conversation cleared")
end

function commands.save(ctx, arg)
  if arg == "" then note(ctx, "usage: /save FILE") return end
  local ok, err = ctx.agent:save(arg)
  if ok == nil and err then
    note(ctx, "cannot save: " .. one_line(tostring(err)))
  else
    note(ctx, string.format("saved %d messages to %s", #ctx.agent.messages, arg))
  end
end

function commands.load(ctx, arg)
  if arg == "" then note(ctx, "usage: /load FILE") return end
  local agent, err = luachat.agent.load(arg, agent_options(ctx))
  if not agent then
    note(ctx, "cannot load: " .. one_line(tostring(err)))
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

local function run_command(ctx, text)
  local name, arg = text:match("^/(%S+)%s*(.-)%s*$")
  local fn = commands[name]
  if not fn then
    note(ctx, "unknown command /" .. tostring(name) .. " (/help lists them)")
    return
  end
  return fn(ctx, arg)
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
    out(ctx, result.content) -- not streamed: the whole reply at once
  end
  end_line(ctx)
  if err then
    io.stderr:write(M.format_error(err, ctx.s), "\n")
    return
  end
  ctx.last_usage = result.usage
  add_usage(ctx.usage, result.usage)
  warn_finish(ctx, result.finish_reason)
end

-- Read one input and act on it; "quit" at the end.
local function chat_step(ctx, reader)
  local text = reader.input()
  if text == nil then return "quit" end
  if not text:match("%S") then return end
  if text:match("^/[^/]") or text == "/" then return run_command(ctx, text) end
  if text:sub(1, 2) == "//" then text = text:sub(2) end
  ctx.in_turn = true
  chat_turn(ctx, text)
  ctx.in_turn = false
end

local function chat(ctx)
  ctx.usage = {}
  ctx.agent = new_agent(ctx)
  local reader = make_reader(ctx)
  if ctx.in_tty and ctx.err_tty then
    note(ctx, string.format("luachat %s — %s via %s. /help for commands, Ctrl-D to leave.",
      luachat.version or "", ctx.model, ctx.s.profile))
  end
  while true do
    ctx.in_turn = false
    local ok, intr, res = protect(chat_step, ctx, reader)
    if intr or (not ok and ctx.in_turn) then
      ctx.spinner.stop()
      end_line(ctx)
      if ctx.in_turn then
        keep_partial(ctx.agent, ctx.turn_start, ctx.turn_text, table.concat(ctx.partial or {}))
        if intr then note(ctx, "[reply cancelled]") end
      end
      collectgarbage() -- close the abandoned stream's transfer now
      if not ok and not intr then io.stderr:write(M.format_error(res, ctx.s), "\n") end
    elseif not ok then
      io.stderr:write(M.format_error(res, ctx.s), "\n")
    elseif res == "quit" then
      break
    end
  end
  if ctx.in_tty then io.stdout:write("\n") end
  reader.save_history()
  return EXIT_OK
end

---------------------------------------------------------------------------

-- main(args) -> exit code. args: argv without the program name.
function M.main(args)
  local o, uerr = M.parse(args or {})
  if not o then
    io.stderr:write("luachat: ", uerr, "\nusage: luachat -p PROMPT [options] | luachat -c [options]  (try 'luachat -p --help')\n")
    return EXIT_USAGE
  end
  if o.help then
    io.stdout:write(M.HELP)
    return EXIT_OK
  end
  local ctx, code = setup(o)
  if not ctx then return code end
  if o.chat then return chat(ctx) end
  return one_shot(ctx)
end

-- For tests.
M.keep_partial = keep_partial

return M
