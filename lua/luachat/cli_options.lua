-- luachat.cli_options: the chat command line's contract: its options, the
-- --help text and the exit statuses.
--
-- Owns: turning argv into an options table, or a usage message.
-- Never: reads the environment or the config (luachat.cli_setup does), writes
-- output, or decides what an option does.
local M = {}

-- What main returns; the host exits with it. The help text documents these.
-- closed_pipe: stdout's reader left (`| head`): 128 + SIGPIPE, the status a
-- shell shows for cat or grep killed by SIGPIPE, with no message as theirs.
M.EXIT = { ok = 0, error = 1, usage = 2, interrupted = 130, closed_pipe = 141 }

M.HELP = [[
usage: luachat -p PROMPT [options]      one answer, streamed to stdout
       luachat -c [options]             interactive chat

Modes:
  -p, --prompt TEXT    ask once; text piped on stdin is appended after a blank line
                       (git diff | luachat -p "review this"); an empty prompt with
                       nothing piped is a usage error; a refusal goes to stderr, exit 1
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
  --tools FILE.lua     a Lua file returning a list of luachat.tool{...} (or one
                       tool; not several values): the model may call them (each
                       call is shown on stderr). Ctrl-C during a call ends the
                       turn: a handler running Lua stops at once, one blocked
                       in a command (os.execute) when the command returns
  --json               print the final result as JSON instead of the text (-p);
                       with --tools, the agent's result {content, finish_reason,
                       turns, usage, messages}
  --no-stream          one request/response, no streaming
  --max-turns N        with --tools: model calls per answer before giving up (10)
  --mcp 'CMD ARGS'     tools from an MCP server run as CMD ARGS over stdio
                       (repeatable; the value is split like shell words, with
                       '...', "..." and \ quoting, and never run by a shell):
                       --mcp 'npx -y @modelcontextprotocol/server-filesystem /srv';
                       each call is shown on stderr, /tools lists them; the
                       server sees only HOME LOGNAME PATH SHELL TERM USER
                       of the environment (no API keys)
  -h, --help           this help

Chat commands: /help /model NAME /system TEXT /tools /reset /save FILE
               /load FILE /usage /quit   (//text sends "/text"; ~ in FILE is $HOME)

Every long option also takes its value as --name=VALUE (--model=gpt-4o).

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
                                 model = "...", headers = {}, query = {},
                                 mcp = { fs = { command = { "mcp-server", "/srv" } } } } } }
History: $XDG_STATE_HOME/luachat/history (default ~/.local/state/luachat/history)
Cassette: LUACHAT_CASSETTE=FILE.jsonl records every request to FILE or replays it
  (LUACHAT_CASSETTE_MODE=auto (default), record or replay; docs/CASSETTES.md)
Colour only on a terminal, and never when NO_COLOR is set.
Exit status: 0 done, 1 error, 2 usage, 130 interrupted, 143/129 SIGTERM/SIGHUP (children
  stopped first), 141 stdout's reader left (| head).
]]

-- The one-line reminder printed after a usage error.
M.USAGE = "usage: luachat -p PROMPT [options] | luachat -c [options]  (try 'luachat -p --help')"

local VALUE_OPTS = {
  ["-p"] = "prompt", ["--prompt"] = "prompt",
  ["-m"] = "model", ["--model"] = "model",
  ["-s"] = "system", ["--system"] = "system",
  ["-P"] = "profile", ["--profile"] = "profile",
  ["--base-url"] = "base_url",
  ["--tools"] = "tools",
  ["--max-turns"] = "max_turns",
  ["--mcp"] = "mcp",
}
-- Options that may be given more than once: each value is kept, in order.
local LIST_OPTS = { mcp = true }
local FLAG_OPTS = {
  ["-c"] = "chat", ["--chat"] = "chat",
  ["--json"] = "json",
  ["--no-stream"] = "no_stream",
  ["-h"] = "help", ["--help"] = "help",
}

-- An --mcp value as the user could type it again: '...' unless it holds a ',
-- then "..." with \ before " \ $ `.
function M.mcp_label(text)
  if not text:find("'", 1, true) then return "'" .. text .. "'" end
  return '"' .. text:gsub('[\\"$`]', "\\%0") .. '"'
end

-- split_words(s) -> list of words | nil, why: s split as a POSIX shell splits
-- a simple command's words, without running anything or expanding anything:
-- blanks separate words; '...' keeps everything literally; "..." keeps all
-- but \" \\ \$ \` (backslash-escaped) and a backslash-newline (removed);
-- outside quotes a backslash keeps the next character. No $VAR, ~ or globs.
function M.split_words(s)
  local words, cur, have = {}, {}, false
  local i, n = 1, #s
  while i <= n do
    local c = s:sub(i, i)
    if c == " " or c == "\t" or c == "\n" then
      if have then
        words[#words + 1] = table.concat(cur)
        cur, have = {}, false
      end
    elseif c == "'" then
      local j = s:find("'", i + 1, true)
      if not j then return nil, "unterminated ' quote" end
      cur[#cur + 1] = s:sub(i + 1, j - 1)
      have = true
      i = j
    elseif c == '"' then
      have = true
      i = i + 1
      while true do
        if i > n then return nil, 'unterminated " quote' end
        local d = s:sub(i, i)
        if d == '"' then break end
        if d == "\\" and i < n and s:sub(i + 1, i + 1):match('["\\$`\n]') then
          if s:sub(i + 1, i + 1) ~= "\n" then cur[#cur + 1] = s:sub(i + 1, i + 1) end
          i = i + 1
        else
          cur[#cur + 1] = d
        end
        i = i + 1
      end
    elseif c == "\\" then
      if i == n then return nil, "a backslash at the end" end
      if s:sub(i + 1, i + 1) ~= "\n" then cur[#cur + 1] = s:sub(i + 1, i + 1) end
      have = true
      i = i + 1
    else
      cur[#cur + 1] = c
      have = true
    end
    i = i + 1
  end
  if have then words[#words + 1] = table.concat(cur) end
  return words
end

-- scan(args, rules) -> opts | nil, message (a usage error): the option loop of
-- every luachat command line (chat here, `luachat batch` in batch_cli).
-- rules.values / rules.flags: option name -> key; rules.lists: keys that may
-- repeat (a list); rules.positional(o, word) -> nil | message, for a word that
-- is not an option. --NAME=VALUE works for long options. --help (or -h)
-- anywhere wins over any other mistake on the line: { help = true }.
function M.scan(args, rules)
  for _, a in ipairs(args) do
    if a == "-h" or a == "--help" then return { help = true } end
  end
  local o = {}
  local i = 1
  while i <= #args do
    local a = args[i]
    local name, inline = a:match("^(%-%-[%w-]+)=(.*)$")
    if not name then name = a end
    local key, flag = rules.values[name], rules.flags[name]
    if key then
      local v = inline
      if v == nil then
        i = i + 1
        v = args[i]
        if v == nil then return nil, string.format("option '%s' needs an argument", name) end
      end
      if rules.lists and rules.lists[key] then
        o[key] = o[key] or {}
        o[key][#o[key] + 1] = v
      else
        o[key] = v
      end
    elseif flag and inline == nil then
      o[flag] = true
    elseif flag then
      return nil, string.format("option '%s' takes no value", name)
    elseif a:sub(1, 1) == "-" and a ~= "-" then
      return nil, string.format("unrecognized option '%s'", a)
    else
      local perr = rules.positional(o, a)
      if perr then return nil, perr end
    end
    i = i + 1
  end
  return o
end

local CHAT_RULES = {
  values = VALUE_OPTS, flags = FLAG_OPTS, lists = LIST_OPTS,
  positional = function(_, a) return string.format("unexpected argument '%s'", a) end,
}

-- parse(args) -> opts | nil, message (a usage error).
function M.parse(args)
  local o, uerr = M.scan(args, CHAT_RULES)
  if not o or o.help then return o, uerr end
  if o.prompt and o.chat then return nil, "-p and -c cannot be used together" end
  if not o.prompt and not o.chat then return nil, "give -p PROMPT or -c" end
  if o.json and o.chat then return nil, "--json goes with -p, not -c" end
  for i, cmd in ipairs(o.mcp or {}) do
    local argv, why = M.split_words(cmd)
    if not argv then return nil, string.format("--mcp '%s': %s", cmd, why) end
    if #argv == 0 then return nil, "--mcp needs a command (--mcp 'CMD ARGS')" end
    if argv[1] == "" then return nil, string.format("--mcp %s: the command (its first word) is empty", M.mcp_label(cmd)) end
    o.mcp_text = o.mcp_text or {}
    o.mcp_text[i] = cmd -- as typed, for messages (cli_setup)
    o.mcp[i] = argv
  end
  if o.max_turns then
    local n = tonumber(o.max_turns)
    if math.type(n) ~= "integer" or n < 1 then
      return nil, string.format("--max-turns needs a positive whole number, got '%s'", o.max_turns)
    end
    o.max_turns = n
  end
  return o
end

return M
