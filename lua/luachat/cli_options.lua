-- luachat.cli_options: the chat command line's contract: its options, the
-- --help text and the exit statuses.
--
-- Owns: turning argv into an options table, or a usage message.
-- Never: reads the environment or the config (luachat.cli_setup does), writes
-- output, or decides what an option does.
local M = {}

-- What main returns; the host exits with it. The help text documents these.
M.EXIT = { ok = 0, error = 1, usage = 2, interrupted = 130 }

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
                                 model = "...", headers = {}, query = {} } } }
History: $XDG_STATE_HOME/luachat/history (default ~/.local/state/luachat/history)
Colour only on a terminal, and never when NO_COLOR is set.
Exit status: 0 done, 1 error, 2 usage, 130 interrupted.
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
  -- --help wins over any other mistake on the line.
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
    elseif FLAG_OPTS[name] then
      return nil, string.format("option '%s' takes no value", name)
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
