-- luachat.structured: structured outputs. client:parse(request, schema, opts)
-- asks for JSON matching a JSON Schema (response_format json_schema), decodes
-- the reply's content with luachat.json and checks it with luachat.schema;
-- the agent's output_schema reads its final answer the same way.
--
-- Owns: the response_format sent for a schema, reading one reply (refusal,
-- not JSON, not matching: each an error naming why, with the JSON path), and
-- re-asking the model with the validation error (retries = N here, the
-- agent's output_retries): which failures are re-asked, and the message.
-- Never: changes the caller's request table (a copy is sent), or retries a
-- refusal, a reply cut at max_tokens or stopped by a content filter, or an
-- API error (client:chat has its own retries for those).
local core = require "luachat.core"
local json = require "luachat.json"
local schema_mod = require "luachat.schema"
local options = require "luachat.options"
local util = require "luachat.util"

local null = json.null

local M = {}

local NAME = "^[%w_%-]+$"

M.OPTIONS = {
  name = options.with(options.rule("a schema name", function(v)
    return type(v) == "string" and v:match(NAME) ~= nil and #v <= 64
  end), { must = "must match ^[a-zA-Z0-9_-]{1,64}$" }),
  strict = options.boolean,
  retries = options.integer(0, 100),
  description = options.string,
}

local MAX_KEPT = 65536 -- bytes of a bad output kept in err.body

local function one_line(s)
  return (tostring(s):gsub("[\r\n]+", " "))
end

-- The response_format for a schema (normalised in place: empty lists go out as []).
function M.response_format(schema, name, strict, description)
  schema_mod.normalize(schema)
  local js = { name = name or "output", schema = schema, strict = strict ~= false }
  if description then js.description = description end
  return { type = "json_schema", json_schema = js }
end

local function error_of(kind, message, extra)
  local e = { kind = kind, message = one_line(message) }
  for k, v in pairs(extra or {}) do e[k] = v end
  return core.error(e)
end

-- read(msg, schema) -> value | nil, err: one assistant message as structured output.
-- err.kind "refusal" (err.refusal: the model's words) or "invalid_output" (err.body:
-- the content as received, err.reason: the validation message, for a re-ask).
function M.read(msg, schema, finish_reason)
  if type(msg) ~= "table" then
    return nil, error_of("invalid_output", "the reply has no message", { reason = "no message" })
  end
  local refusal = msg.refusal
  if type(refusal) == "string" and refusal ~= "" then
    return nil, error_of("refusal", "the model refused: " .. refusal, { refusal = refusal })
  end
  local content = msg.content
  if type(content) ~= "string" or content == "" then
    local why = "the reply has no content"
    if finish_reason == "length" then why = why .. " (finish_reason length: raise max_tokens)" end
    return nil, error_of("invalid_output", why, { reason = why })
  end
  local value, derr = json.decode(content)
  if value == nil then
    local why = "the output is not JSON: " .. tostring(derr)
    if finish_reason == "length" then why = why .. " (finish_reason length: the output was cut; raise max_tokens)" end
    return nil, error_of("invalid_output", why, { body = content:sub(1, MAX_KEPT), reason = why })
  end
  local ok, verr = schema_mod.validate(value, schema)
  if not ok then
    return nil, error_of("invalid_output", "the output does not match the schema: " .. verr,
      { body = content:sub(1, MAX_KEPT), reason = verr })
  end
  return value
end

local function first_choice(res)
  local choice = type(res) == "table" and type(res.choices) == "table" and res.choices[1]
  if type(choice) ~= "table" then return nil, nil end
  local finish = choice.finish_reason ~= null and choice.finish_reason or nil
  return choice.message, finish
end

-- The message re-asking the model after an output failed the schema.
function M.reask_text(reason)
  return "Your reply was not valid: " .. reason
    .. ". Answer again with only the JSON value, matching the JSON schema given."
end

-- The most bytes of a validation error a re-ask sends back to the model.
M.MAX_REASK_REASON = 1000

-- Should an output that failed the schema be re-asked? Only an invalid_output
-- the model can fix by answering again: not a refusal (the model chose not to
-- answer), not a reply cut at max_tokens (finish_reason "length": the same
-- limit cuts the next one; the error says to raise it), not one the
-- provider's filter stopped ("content_filter").
function M.reaskable(perr, finish)
  return perr.kind == "invalid_output" and finish ~= "length" and finish ~= "content_filter"
end

-- The user message re-asking the model: reask_text around the error, every
-- credential the client sends taken out (a model may echo one), on one line
-- and cut to MAX_REASK_REASON bytes (a property name can be of any length).
function M.reask_message(client, perr)
  local reason = tostring(perr.reason or perr.message)
  if type(client.redact) == "function" then reason = client:redact(reason) end
  return { role = "user", content = M.reask_text(util.one_line(reason, M.MAX_REASK_REASON)) }
end

-- client:parse(request, schema [, opts [, call_opts]]) -> value, nil, res | nil, err, res.
-- opts: name ("output"), strict (true), retries (0), description. call_opts: as client:chat's.
function M.parse(client, req, schema, opts, call_opts)
  require("luachat.client").check_chat_request(req, "parse", 2)
  if type(schema) ~= "table" then
    error("bad argument #2 to 'parse' (JSON Schema table expected, got " .. type(schema) .. ")", 2)
  end
  if opts ~= nil and type(opts) ~= "table" then
    error("bad argument #3 to 'parse' (options table expected, got " .. type(opts) .. ")", 2)
  end
  opts = opts or {}
  options.check("parse", opts, M.OPTIONS, 2, 3)
  require("luachat.client").check_call_options(call_opts, "parse", 4)
  local retries = math.tointeger(opts.retries or 0)
  local body = {}
  for k, v in pairs(req) do body[k] = v end
  body.response_format = M.response_format(schema, opts.name, opts.strict, opts.description)
  local messages = json.array {}
  for i, m in ipairs(req.messages) do messages[i] = m end
  body.messages = messages
  local attempt = 0
  while true do
    local res, err = client:chat(body, call_opts)
    if not res then return nil, err, nil end
    local msg, finish = first_choice(res)
    local value, perr = M.read(msg, schema, finish)
    if value ~= nil then return value, nil, res end
    perr.retries = attempt
    if not M.reaskable(perr, finish) or attempt >= retries then
      if attempt > 0 then
        perr.message = string.format("%s (after %d re-ask%s)", perr.message, attempt, attempt == 1 and "" or "s")
      end
      return nil, perr, res
    end
    attempt = attempt + 1
    messages[#messages + 1] = { role = "assistant", content = type(msg) == "table" and msg.content or "" }
    messages[#messages + 1] = M.reask_message(client, perr)
  end
end

return M
