-- luachat.client: clients of an OpenAI-compatible API.
--
-- Owns: configuration (explicit or from the environment), option checks, and
-- the blocking calls chat/get/post. What a request sends and how its outcome
-- becomes an error or a retry is luachat.request's, shared with streaming
-- calls (luachat.chat_stream, loaded on the first stream so scripts that never stream do
-- not compile it); neither requires this module.
-- Never: stores the API key (luachat.request keeps it, out of reach of
-- pairs() and tostring()), puts it in an error or a log line, or follows a redirect.
local core = require "luachat.core"
local json = require "luachat.json"
local log = require "luachat.log"
local options = require "luachat.options"
local redact = require "luachat.redact"
local request = require "luachat.request"
local util = require "luachat.util"
local cassette_options = require "luachat.cassette_options"

local M = {}

local Client = {}
Client.__index = Client
Client.__name = "luachat.Client"

local DEFAULTS = {
  timeout = 600, connect_timeout = 10, idle_timeout = 120, max_retries = 2,
}

local function argerror(fname, msg, level)
  error(string.format("bad argument #1 to '%s' (%s)", fname, msg), (level or 2) + 1)
end

local header_table = request.header_table

-- Options of one call (client:chat(req, opts), get, post, stream, open_stream).
local CALL_OPTIONS = {
  headers = header_table, query = options.table,
  timeout = options.seconds, idle_timeout = options.seconds,
}

local CLIENT_OPTIONS = {
  base_url = options.text, ca_file = options.string,
  api_key = options.either(options.text, options.rule("false", function(v) return v == false end),
    "a string (or false for none)"),
  organization = options.text, project = options.text,
  headers = header_table, query = options.table,
  timeout = options.seconds, connect_timeout = options.seconds, idle_timeout = options.seconds,
  max_retries = options.integer(0, 100),
  max_body = options.integer(1), max_event = options.integer(1),
  max_connections = options.integer(1), -- per host, for this client (luachat.limits)
  -- record/replay (luachat.cassette)
  cassette = cassette_options.OPTIONS.cassette, cassette_mode = cassette_options.OPTIONS.cassette_mode,
  cassette_timing = cassette_options.OPTIONS.cassette_timing,
}

-- Check a call's options; raises at the caller of the method calling this.
local function check_call_options(opts, fname, argn)
  if opts == nil then return end
  if type(opts) ~= "table" then
    error(string.format("bad argument #%d to '%s' (options table expected, got %s)", argn, fname, type(opts)), 3)
  end
  options.check(fname, opts, CALL_OPTIONS, 3, argn)
end
M.check_call_options = check_call_options

-- An environment variable (util.getenv: trimmed, empty is unset); a control
-- character inside raises, blaming the caller of luachat.client.
local function getenv(name)
  local v, why = util.getenv(name)
  if why then argerror("client", why, 3) end
  return v
end

-- luachat.client{...}: every field optional (see README).
function M.new(opts)
  opts = opts or {}
  if type(opts) ~= "table" then argerror("client", "table expected, got " .. type(opts)) end
  options.check("client", opts, CLIENT_OPTIONS)
  local base_url = opts.base_url or getenv("OPENAI_BASE_URL") or "https://api.openai.com/v1"
  if not base_url:lower():match("^https?://[^/]") then
    -- Shown without any credential the client would send: a key pasted into
    -- OPENAI_BASE_URL (or --base-url) must not be printed back.
    local key = opts.api_key
    local secrets = redact.secrets { key = type(key) == "string" and key or nil,
      headers = { opts.headers or {} }, query = { opts.query or {} } }
    local env_key = getenv("OPENAI_API_KEY")
    for _, v in ipairs(redact.secrets { key = env_key }) do secrets[#secrets + 1] = v end
    argerror("client", "base_url must start with http:// or https://, got '"
      .. redact.text(redact.url(base_url), secrets) .. "'")
  end
  base_url = base_url:gsub("^%a+", string.lower) -- the scheme is case-insensitive (RFC 3986)
  local c = setmetatable({
    base_url = base_url:gsub("/+$", ""),
    headers = opts.headers or {},
    query = opts.query or {},
    timeout = opts.timeout or DEFAULTS.timeout,
    connect_timeout = opts.connect_timeout or DEFAULTS.connect_timeout,
    idle_timeout = opts.idle_timeout or DEFAULTS.idle_timeout,
    max_retries = math.tointeger(opts.max_retries or DEFAULTS.max_retries),
    max_body = opts.max_body and math.tointeger(opts.max_body),
    max_event = opts.max_event and math.tointeger(opts.max_event),
    max_connections = opts.max_connections and math.tointeger(opts.max_connections),
    ca_file = opts.ca_file,
    organization = opts.organization or getenv("OPENAI_ORG_ID"),
    project = opts.project or getenv("OPENAI_PROJECT_ID"),
  }, Client)
  if opts.api_key == false then
    request.set_key(c, nil) -- explicitly none, whatever the environment says
  else
    request.set_key(c, opts.api_key or getenv("OPENAI_API_KEY"), opts.api_key == nil)
  end
  if cassette_options.wanted(opts) then -- LUACHAT_CASSETTE or cassette = path: record/replay
    c.cassette = require("luachat.cassette").for_client(c, opts, 2)
  end
  return c
end

function Client:__tostring()
  return string.format("luachat.Client (%s, key %s)", redact.url(self.base_url), request.has_key(self) and "set" or "not set")
end

-- client:redact(s [, opts [, cut]]): s with every occurrence of every credential
-- the client (and a call with these opts) sends replaced by "[REDACTED]"; see
-- luachat.redact. cut = true: s was already cut at its end.
function Client:redact(s, opts, cut)
  return request.redact(self, s, opts, cut)
end

-- base_url may carry a query (Azure's "...?api-version=..."): the path goes
-- before it, and it comes first in the query sent; a fragment is dropped.
function Client:url(path, query)
  return request.url(self, path, query)
end

-- The wire and retry helpers, as methods for scripts that used them (luachat.request owns them).
function Client:header_lines(accept, has_body, idempotency_key, extra)
  return request.header_lines(self, accept, has_body, idempotency_key, extra)
end
function Client:error_for(r, what, opts) return request.error_for(self, r, what, opts) end
function Client:should_retry(r, err, n) return request.should_retry(self, r, err, n) end
function Client:transfer_spec(method, path, body, opts, stream, idempotency_key)
  return request.transfer_spec(self, method, path, body, opts, stream, idempotency_key)
end
function Client:with_retries(spec, start_once) return request.with_retries(self, spec, start_once) end
M.server_message = request.server_message
M.describe = request.describe
M.http_date_delay = request.http_date_delay
M.retry_after_seconds = request.retry_after_seconds

-- One blocking request with retries. Returns the decoded JSON body | nil, err.
function Client:request(method, path, body_value, opts)
  local body
  if body_value ~= nil then
    body = type(body_value) == "string" and body_value or json.encode(body_value)
  end
  local idem = (method ~= "GET" and method ~= "HEAD") and request.idempotency_key() or nil
  local spec = request.transfer_spec(self, method, path, body, opts, false, idem)
  local what = request.describe(spec)
  return request.with_retries(self, spec, function(attempt)
    local t, serr = request.start(spec)
    if not t then return nil, nil, serr end
    local r = request.wait_result(t)
    log.debug("%s -> %s in %.3fs%s%s", what, r.failure or r.status, r.seconds,
      r.request_id and (" (request " .. r.request_id .. ")") or "", attempt > 0 and (" [attempt " .. attempt + 1 .. "]") or "")
    local err = request.error_for(self, r, what, opts, spec.url) -- a path's own query (?key=) too
    if err then return nil, r, err end
    if r.body == "" and method == "HEAD" then return {}, r end
    local doc, derr = json.decode(r.body)
    if doc == nil then
      return nil, r, core.error {
        kind = "deserialise",
        message = util.one_line(request.redact(self, string.format("%s: response is not valid JSON (%s, content-type %s)",
          what, derr, r.content_type or "none"), opts, false, spec.url)),
        status = r.status, request_id = r.request_id,
        body = request.redact(self, r.body, opts, false, spec.url):sub(1, 65536), -- redact, then cut
      }
    end
    return doc, r
  end)
end

function Client:get(path, opts)
  check_call_options(opts, "get", 2)
  return self:request("GET", path, nil, opts)
end

function Client:post(path, body, opts)
  check_call_options(opts, "post", 3)
  if body ~= nil and type(body) ~= "string" then body = M.encode_body(body, "post", 2) end
  return self:request("POST", path, body, opts)
end

M.mark_array_fields = request.mark_array_fields
M.check_chat_request = request.check_chat_request
M.encode_body = request.encode_body

-- client:chat{model=, messages=, ...} -> chat.completion | nil, err.
-- Every field given is sent as is; `stream = true` gives a streamed call's final result.
function Client:chat(req, opts)
  M.check_chat_request(req, "chat")
  check_call_options(opts, "chat", 2)
  if req.stream == true then return self:stream(req, nil, opts) end
  return self:request("POST", "chat/completions", M.encode_body(req, "chat", 1), opts)
end

function Client:stream(req, on_chunk, opts)
  M.check_chat_request(req, "stream")
  check_call_options(opts, "stream", 3)
  return require("luachat.chat_stream").stream(self, req, on_chunk, opts)
end

function Client:open_stream(req, opts)
  M.check_chat_request(req, "open_stream")
  check_call_options(opts, "open_stream", 2)
  return require("luachat.chat_stream").open(self, req, opts)
end

-- client:parse(request, schema [, opts [, call_opts]]) -> value, err, res (luachat.structured).
function Client:parse(req, schema, opts, call_opts)
  return require("luachat.structured").parse(self, req, schema, opts, call_opts)
end

M.Client = Client
return M
