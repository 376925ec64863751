-- luachat.profiles: provider profiles for the command line (`luachat -P NAME`).
--
-- Owns: the built-in table of OpenAI-compatible providers, reading the
-- user's config file, and `resolve`, the one place the precedence between
-- flags, environment and profiles is decided (pure: no I/O, so it is
-- unit-tested with plain tables).
-- Never: reads the environment or files inside `resolve`, prints, or puts an
-- API key anywhere but the `api_key` field it returns.
local options = require "luachat.options"

local M = {}

-- Each provider's documented OpenAI-compatible base URL.
--   key_env        variable holding the API key
--   key_optional   a local server that usually runs without a key
--   base_url_env   a provider-specific override of base_url
--   model          default model (nil: the user must give one)
M.builtin = {
  openai = {
    base_url = "https://api.openai.com/v1", base_url_env = "OPENAI_BASE_URL",
    key_env = "OPENAI_API_KEY", model = "gpt-4o-mini",
  },
  openrouter = {
    base_url = "https://openrouter.ai/api/v1",
    key_env = "OPENROUTER_API_KEY", model = "openai/gpt-4o-mini",
  },
  groq = {
    base_url = "https://api.groq.com/openai/v1",
    key_env = "GROQ_API_KEY", model = "llama-3.3-70b-versatile",
  },
  deepseek = {
    base_url = "https://api.deepseek.com",
    key_env = "DEEPSEEK_API_KEY", model = "deepseek-chat",
  },
  mistral = {
    base_url = "https://api.mistral.ai/v1",
    key_env = "MISTRAL_API_KEY", model = "mistral-small-latest",
  },
  together = {
    base_url = "https://api.together.xyz/v1",
    key_env = "TOGETHER_API_KEY", model = "meta-llama/Llama-3.3-70B-Instruct-Turbo",
  },
  ollama = {
    base_url = "http://localhost:11434/v1",
    key_env = "OLLAMA_API_KEY", key_optional = true, model = "llama3.2",
  },
  llamacpp = {
    -- llama-server serves whatever model it loaded and ignores the name.
    base_url = "http://localhost:8080/v1",
    key_env = "LLAMA_API_KEY", key_optional = true, model = "default",
  },
  vllm = {
    -- vLLM wants the served model's name: no default.
    base_url = "http://localhost:8000/v1",
    key_env = "VLLM_API_KEY", key_optional = true,
  },
  azure = {
    -- {endpoint}/openai/deployments/{deployment}/chat/completions?api-version=...
    azure = true,
    key_env = "AZURE_OPENAI_API_KEY", key_header = "api-key",
  },
}

M.DEFAULT_PROFILE = "openai"
M.AZURE_API_VERSION = "2024-10-21"

local function nonempty(v)
  if v == nil or v == "" then return nil end
  return v
end

local function copy(t)
  local c = {}
  for k, v in pairs(t or {}) do c[k] = v end
  return c
end

local function sorted_names(...)
  local seen, names = {}, {}
  for i = 1, select("#", ...) do
    for k in pairs(select(i, ...) or {}) do
      if not seen[k] then
        seen[k] = true
        names[#names + 1] = k
      end
    end
  end
  table.sort(names)
  return names
end

-- Every profile name, built-in and configured, sorted.
function M.names(config)
  return sorted_names(M.builtin, config and config.profiles)
end

local resolve -- below: the body of M.resolve, env read through getenv

--[[
resolve(opts, env, config) -> settings | nil, err, kind
  opts    flags: { profile=, base_url=, model=, system= }
  env     a table of environment variables (os.getenv is not consulted)
  config  the user's config table (may be nil)
Precedence (the first that is set wins):
  profile   -P  > LUACHAT_PROFILE > config.default_profile > "openai"
  base_url  --base-url > LUACHAT_BASE_URL > the profile's base_url_env
            (OPENAI_BASE_URL for openai) > the profile's base_url
  model     -m > LUACHAT_MODEL > the profile's model
  key       the profile's key_env variable (OPENAI_API_KEY for openai), or
            the profile's api_key from the config file; required (else an
            error) unless the profile is a local server (key_optional) or
            its URL was overridden
  system    -s > the profile's system
A configured profile with a built-in's name is merged over the built-in.
settings: { profile=, base_url=, model=, system=, api_key= string|false,
            key_env=, headers=, query=, organization=, project=, mcp= }.
Every value read from env is trimmed of surrounding whitespace; one with a
control character inside is a "config" error naming the variable. err kinds: "usage" (unknown profile,
no model) and "config" (a missing key or Azure endpoint, a bad config).
]]
function M.resolve(opts, env, config)
  opts, env, config = opts or {}, env or {}, config or {}
  -- Every value read from env goes through options.env_value (trimmed; a
  -- control character inside is a config error naming the variable, reported
  -- before anything else resolve would say without that variable).
  local env_err
  local function getenv(name)
    if not name then return nil end
    local v, why = options.env_value(name, env[name])
    env_err = env_err or why
    return v
  end
  local s, err, kind = resolve(opts, getenv, config)
  if env_err then return nil, env_err, "config" end
  return s, err, kind
end

function resolve(opts, getenv, config)
  local cprofiles = config.profiles or {}
  if type(cprofiles) ~= "table" then
    return nil, "config: 'profiles' must be a table", "config"
  end
  local name = nonempty(opts.profile) or getenv("LUACHAT_PROFILE")
    or nonempty(config.default_profile) or M.DEFAULT_PROFILE
  local base, user = M.builtin[name], cprofiles[name]
  if base == nil and user == nil then
    return nil, string.format("unknown profile '%s' (known: %s)", name,
      table.concat(M.names(config), ", ")), "usage"
  end
  if user ~= nil and type(user) ~= "table" then
    return nil, string.format("config: profile '%s' must be a table", name), "config"
  end
  local p = copy(base)
  for k, v in pairs(user or {}) do p[k] = v end
  local headers, query = copy(base and base.headers), copy(base and base.query)
  for k, v in pairs(user and user.headers or {}) do headers[k] = v end
  for k, v in pairs(user and user.query or {}) do query[k] = v end

  local s = {
    profile = name,
    model = nonempty(opts.model) or getenv("LUACHAT_MODEL") or p.model,
    system = nonempty(opts.system) or p.system,
    key_env = p.key_env,
    headers = headers,
    query = query,
    organization = getenv("OPENAI_ORG_ID"), project = getenv("OPENAI_PROJECT_ID"),
    mcp = p.mcp, -- { name = luachat.mcp.connect options } (cli_setup connects them)
  }

  -- A key read from the environment loses surrounding whitespace (a trailing
  -- newline from a secret file is common); one with a control character left
  -- inside would break the request line it goes in.
  local key = getenv(p.key_env) or nonempty(p.api_key)
  local explicit_url = nonempty(opts.base_url) or getenv("LUACHAT_BASE_URL")
  local own_url = not explicit_url and not getenv(p.base_url_env)
  -- A key is required at the provider's own URL; a redirected one may not need it.
  if not key and not p.key_optional and p.key_env and own_url then
    return nil, string.format("%s: no API key: set %s", name, p.key_env), "config"
  end

  if p.azure then
    -- The deployment is part of the URL; the body's model is informational.
    local deployment = getenv("AZURE_OPENAI_DEPLOYMENT") or p.deployment or s.model
    if not deployment then
      return nil, "azure: no deployment: set AZURE_OPENAI_DEPLOYMENT or pass -m DEPLOYMENT", "usage"
    end
    s.model = s.model or deployment
    if explicit_url then
      s.base_url = explicit_url
    else
      local endpoint = getenv("AZURE_OPENAI_ENDPOINT") or nonempty(p.endpoint)
      if not endpoint then
        return nil, "azure: no endpoint: set AZURE_OPENAI_ENDPOINT (https://NAME.openai.azure.com)", "config"
      end
      s.base_url = endpoint:gsub("/+$", "") .. "/openai/deployments/" .. deployment
    end
    if query["api-version"] == nil then
      query["api-version"] = getenv("AZURE_OPENAI_API_VERSION") or M.AZURE_API_VERSION
    end
  else
    s.base_url = explicit_url or getenv(p.base_url_env) or nonempty(p.base_url)
    if not s.base_url then
      return nil, string.format("profile '%s' has no base_url", name), "config"
    end
  end

  if p.key_header then
    -- Azure: the key goes in its own header, no Authorization: Bearer.
    if key then headers[p.key_header] = key end
    s.api_key = false
  else
    s.api_key = key or false -- never let the client fall back to OPENAI_API_KEY
  end

  if not s.model then
    return nil, string.format("%s: no model: pass -m MODEL or set LUACHAT_MODEL", name), "usage"
  end
  return s
end

-- Where the user's config lives: $XDG_CONFIG_HOME/luachat/config.lua, else ~/.config/...
function M.config_path(env)
  local xdg = nonempty(env.XDG_CONFIG_HOME)
  if xdg then return xdg .. "/luachat/config.lua" end
  local home = nonempty(env.HOME)
  if home then return home .. "/.config/luachat/config.lua" end
  return nil
end

-- What a config file may hold (luachat.options: unknown keys and wrong types
-- are errors naming the key and the file). Profile fields are those of the
-- built-ins above plus api_key, system, headers, query, deployment, endpoint.
local PROFILE_FIELDS = {
  base_url = options.text, base_url_env = options.string,
  key_env = options.string, key_optional = options.boolean, key_header = options.string,
  api_key = options.text, model = options.string, system = options.string,
  headers = options.table, query = options.table,
  azure = options.boolean, deployment = options.string, endpoint = options.text,
  -- MCP servers whose tools the model may use: { name = luachat.mcp.connect options }.
  mcp = options.rule("a table of MCP server names to luachat.mcp.connect options", function(v)
    if type(v) ~= "table" then return nil end
    local names = {}
    for name in pairs(v) do names[#names + 1] = name end
    table.sort(names, function(a, b) return tostring(a) < tostring(b) end)
    for _, name in ipairs(names) do
      local server = v[name]
      if type(name) ~= "string" then return nil, "has a server name that is not a string: " .. tostring(name) end
      if type(server) ~= "table" then return nil, string.format("server '%s' must be a table, got %s", name, type(server)) end
      local ok, why = options.validate(server, require("luachat.mcp").CONNECT_OPTIONS)
      if not ok then return nil, string.format("server '%s': %s", name, why) end
      if (server.command == nil) == (server.url == nil) then
        return nil, string.format("server '%s': give exactly one of command and url", name)
      end
    end
    return true
  end),
}
local CONFIG_FIELDS = { default_profile = options.string, profiles = options.table }

-- check_config(config, path) -> true | nil, "config: PATH: ..." naming the key.
function M.check_config(config, path)
  local where = "config: " .. tostring(path) .. ": "
  local ok, msg = options.validate(config, CONFIG_FIELDS)
  if not ok then return nil, where .. msg end
  local names = {}
  for name in pairs(config.profiles or {}) do names[#names + 1] = name end
  table.sort(names, function(a, b) return tostring(a) < tostring(b) end)
  for _, name in ipairs(names) do
    local p = config.profiles[name]
    if type(name) ~= "string" then
      return nil, where .. "profiles: a profile's name must be a string, got " .. type(name)
    end
    if type(p) ~= "table" then
      return nil, string.format("%sprofile '%s' must be a table, got %s", where, name, type(p))
    end
    ok, msg = options.validate(p, PROFILE_FIELDS)
    if not ok then return nil, string.format("%sprofile '%s': %s", where, name, msg) end
  end
  return true
end

-- Load the config file: config table (empty when there is none) | nil, err.
function M.load_config(path)
  if not path then return {} end
  local f = io.open(path, "r")
  if not f then return {} end
  f:close()
  local chunk, err = loadfile(path, "t")
  if not chunk then return nil, "config: " .. err end
  local ok, res = pcall(chunk)
  if not ok then return nil, "config: " .. path .. ": " .. tostring(res) end
  if res == nil then return {} end
  if type(res) ~= "table" then
    return nil, "config: " .. path .. " must return a table, got " .. type(res)
  end
  local valid, verr = M.check_config(res, path)
  if not valid then return nil, verr end
  return res
end

-- The environment variables resolve() reads, as a table.
function M.environment(config)
  local names = { "LUACHAT_PROFILE", "LUACHAT_BASE_URL", "LUACHAT_MODEL", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID",
    "AZURE_OPENAI_DEPLOYMENT", "AZURE_OPENAI_ENDPOINT", "AZURE_OPENAI_API_VERSION",
    "XDG_CONFIG_HOME", "XDG_STATE_HOME", "HOME" }
  for _, src in ipairs { M.builtin, config and config.profiles or {} } do
    for _, p in pairs(src) do
      if type(p) == "table" then
        if p.key_env then names[#names + 1] = p.key_env end
        if p.base_url_env then names[#names + 1] = p.base_url_env end
      end
    end
  end
  local env = {}
  for _, n in ipairs(names) do env[n] = os.getenv(n) end
  return env
end

return M
