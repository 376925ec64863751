-- luachat.cli_error: the chat command line's error line.
--
-- Owns: turning an error table (or a message) into one line that names the
-- provider, the status or message, and what to do.
-- Never: writes it anywhere, or shows the API key (only the key's variable).
local term = require "luachat.cli_term"
local redact = require "luachat.redact"

local one_line = term.one_line

local M = {}

-- The provider's own message in an error body, if luachat.client can find one.
local function server_message(body)
  local ok, client_mod = pcall(require, "luachat.client")
  if not ok or not client_mod.server_message then return nil end
  local ok2, msg = pcall(client_mod.server_message, body)
  return ok2 and msg or nil
end

-- What to do about e, given the settings s; nil when there is nothing to say.
local function hint_for(e, s)
  local key_env = s.key_env or "the API key variable"
  local status = tonumber(e.status)
  local base_url = s.base_url and redact.url(s.base_url) -- no userinfo on the terminal
  if e.kind == "invalid_api_key" or status == 401 or status == 403 then
    -- A key in a header (Azure's api-key, x-api-key, Authorization) or the URL counts.
    if s.api_key or redact.has_credential { headers = { s.headers or {} }, url = s.base_url } then
      return "check " .. key_env .. " (the key was refused)"
    end
    return "set " .. key_env
  elseif status and status >= 300 and status < 400 then
    return nil -- the message says where it points and what to do
  elseif status == 404 then
    return "check the model name (-m) and the base URL (" .. (base_url or "?") .. ")"
  elseif status == 429 then
    return "rate limited or out of credits: wait and retry, or check your plan"
  elseif status and status >= 500 then
    return "the provider is failing: try again later"
  elseif status and status >= 400 then
    return "the provider refused the request: check the model and options"
  elseif tonumber(e.events) and tonumber(e.events) > 0 then
    -- A stream cut after events: the server was reached, the network is not the question.
    return "the server was reached but the stream broke off; the partial answer was kept"
  elseif e.kind == "max_turns" then
    return "the tool loop hit its limit: raise it with --max-turns N"
  elseif e.kind == "timeout" then
    return "no answer in time: try again, or check the server"
  elseif e.kind == "network" then
    return "cannot reach " .. (base_url or "the server") .. ": check the URL (--base-url) and your network"
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
  -- Every credential these settings send, gone before the line is cut (luachat.redact).
  what = redact.text(what, redact.secrets { key = s.api_key or nil, url = s.base_url,
    headers = { s.headers or {} }, query = { s.query or {} } })
  local hint = hint_for(e, s)
  local line = string.format("luachat: %s: %s", s.profile or "error", one_line(what, 240))
  if hint then line = line .. " — " .. hint end
  return line
end

return M
