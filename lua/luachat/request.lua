-- luachat.request: one request on the wire, as both luachat.client (blocking
-- calls) and luachat.chat_stream (streams) make it.
--
-- Owns: a client's credentials (the API key, kept out of the client table),
-- the wire contract (URL, header lines, Idempotency-Key, JSON body of a chat
-- request), starting a transfer (request.start: the one place every request
-- goes through), turning a transfer's result into a luachat error, and the
-- retry policy (Retry-After, backoff, with_retries).
-- Never: requires luachat.client or luachat.chat_stream (both require this),
-- stores the API key where pairs() or tostring() can reach it, puts it in an
-- error or a log line, or follows a redirect.
local core = require "luachat.core"
local json = require "luachat.json"
local sched = require "luachat.sched"
local log = require "luachat.log"
local options = require "luachat.options"
local redact = require "luachat.redact"
local util = require "luachat.util"
local limits = require "luachat.limits"

local M = {}

local one_line = util.one_line

-- Secrets live here, keyed by client, so no field of the client holds them.
local secrets = setmetatable({}, { __mode = "k" })
-- Clients that looked for the key in OPENAI_API_KEY (api_key not given): only
-- they get the "set OPENAI_API_KEY" hint on a 401.
local key_from_env = setmetatable({}, { __mode = "k" })

-- Set a client's API key (nil: none); from_env: it was looked for in OPENAI_API_KEY.
function M.set_key(client, key, from_env)
  secrets[client] = key
  key_from_env[client] = from_env or nil
end

function M.has_key(client)
  return secrets[client] ~= nil
end

-- Built on the first request: reading core.curl_version loads libcurl, which
-- a script that never makes a request should not pay for (see src/curl_dl.h).
local user_agent
local function get_user_agent()
  user_agent = user_agent or string.format("luachat/%s (%s; libcurl %s)", core.version, _VERSION,
    core.curl_version or "not loaded")
  return user_agent
end

local function argerror(fname, msg, level)
  error(string.format("bad argument #1 to '%s' (%s)", fname, msg), (level or 2) + 1)
end

-- Header names are tokens (RFC 9110 5.1); values carry no control character
-- but tab: a CR or LF would end the line and start a header of the server's choosing.
local HEADER_NAME = "^[%w!#$%%&'*+%-.^_`|~]+$"
local HEADER_VALUE_BAD = "[%z\1-\8\10-\31\127]"

local function show(s)
  return "'" .. tostring(s):gsub("[%z\1-\31\127]", function(c) return string.format("\\%d", c:byte()) end) .. "'"
end

-- Why header name: value cannot be sent, or nil when it can.
local function bad_header(name, value)
  if type(name) ~= "string" or not name:match(HEADER_NAME) then
    return "has a header name that is not a token: " .. show(name)
  end
  if type(value) ~= "string" and type(value) ~= "number" then
    return string.format("has a %s value for header '%s' (expected a string)", type(value), name)
  end
  if tostring(value):find(HEADER_VALUE_BAD) then
    return string.format("has a control character in header '%s'", name)
  end
  return nil
end

-- The option rule for a headers table (client and per-call options).
M.header_table = options.rule("a table of header names to values", function(h)
  if type(h) ~= "table" then return nil end
  for k, v in pairs(h) do
    local why = bad_header(k, v)
    if why then return nil, why end
  end
  return true
end)

-- What luachat.redact needs to know of the credentials a call sends: the
-- client's and the call's own (opts.headers, opts.query; url: the request's
-- URL when its path carried a query of its own). Built per use, never kept.
local function credentials(client, opts, url)
  return { key = secrets[client], url = url or client.base_url,
    headers = { client.headers or {}, opts and opts.headers or {} },
    query = { client.query or {}, opts and opts.query or {} } }
end

-- s with every credential the client (and a call with these opts, to this
-- url) sends replaced by "[REDACTED]"; cut = true: s was already cut at its end.
function M.redact(client, s, opts, cut, url)
  if type(s) ~= "string" then return s end
  return redact.text(s, redact.secrets(credentials(client, opts, url)), cut)
end

-- The list luachat.redact.text takes for those credentials, for a caller that
-- redacts many texts with the same client (luachat batch: every results line).
function M.secrets(client, opts)
  return redact.secrets(credentials(client, opts))
end

local function urlencode(s)
  return (tostring(s):gsub("[^%w%-%._~]", function(c) return string.format("%%%02X", c:byte()) end))
end

local function query_string(...)
  local parts = {}
  for i = 1, select("#", ...) do
    local q = select(i, ...)
    if q then
      local keys = {}
      for k in pairs(q) do keys[#keys + 1] = tostring(k) end
      table.sort(keys)
      for _, k in ipairs(keys) do parts[#parts + 1] = urlencode(k) .. "=" .. urlencode(q[k]) end
    end
  end
  return #parts > 0 and ("?" .. table.concat(parts, "&")) or ""
end

-- The name of one "name=value" query parameter, decoded, to compare names.
local function param_name(part)
  return (part:match("^[^=]*"):gsub("%+", " "):gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

-- url (a request URL, maybe with a query) with `query` ("a=1&b=2", as sent)
-- added: its parameters after the URL's own, a name in both sent once, as
-- `query` has it.
function M.with_query(url, query)
  if query == nil or query == "" then return url end
  local base, q = url:match("^([^?]*)%??(.*)$")
  local mine = {}
  for part in query:gmatch("[^&]+") do mine[param_name(part)] = true end
  local parts = {}
  for part in q:gmatch("[^&]+") do
    if not mine[param_name(part)] then parts[#parts + 1] = part end
  end
  parts[#parts + 1] = query
  return base .. "?" .. table.concat(parts, "&")
end

-- The URL of path under the client's base_url. base_url may carry a query
-- (Azure's "...?api-version=..."): the path goes before it, and it comes first
-- in the query sent, then the client's and the call's `query`; a query in the
-- path itself ("models?limit=2") comes last, and a name it gives is sent once,
-- with its value. A fragment is dropped.
function M.url(client, path, query)
  local own
  path, own = tostring(path):gsub("^/+", ""):match("^([^?#]*)%??([^#]*)")
  local base, bq = client.base_url:match("^([^?#]*)%??([^#]*)")
  local qs = query_string(client.query, query)
  if bq ~= "" then qs = "?" .. bq .. (qs ~= "" and "&" .. qs:sub(2) or "") end
  return M.with_query(base:gsub("/+$", "") .. "/" .. path .. qs, own)
end

-- A new Idempotency-Key: "luachat-" and 32 hex digits (128 random bits), the
-- same for every request that sends one.
function M.idempotency_key()
  return "luachat-" .. util.random_hex(16)
end

function M.header_lines(client, accept, has_body, idempotency_key, extra)
  local h = {
    "User-Agent: " .. get_user_agent(),
    "Accept: " .. accept,
  }
  if has_body then h[#h + 1] = "Content-Type: application/json" end
  -- Every line below is checked when it is sent too (options were checked when
  -- given, but a script may change c.headers or c.organization later).
  local function add(name, value)
    local why = bad_header(name, value)
    if why then error("luachat.client: the request " .. why, 5) end
    h[#h + 1] = name .. ": " .. tostring(value)
  end
  local key = secrets[client]
  if key then add("Authorization", "Bearer " .. key) end
  if client.organization then add("OpenAI-Organization", client.organization) end
  if client.project then add("OpenAI-Project", client.project) end
  if idempotency_key then add("Idempotency-Key", idempotency_key) end
  for _, src in ipairs { client.headers, extra or {} } do
    local names = {}
    for k in pairs(src) do names[#names + 1] = tostring(k) end
    table.sort(names)
    for _, k in ipairs(names) do add(k, src[k]) end
  end
  return h
end

-- What core.start takes for one request of the client (see docs/DESIGN.md).
function M.transfer_spec(client, method, path, body, opts, stream, idempotency_key)
  opts = opts or {}
  return {
    method = method,
    url = M.url(client, path, opts.query),
    headers = M.header_lines(client, stream and "text/event-stream" or "application/json", body ~= nil,
      idempotency_key, opts.headers),
    body = body,
    stream = stream,
    timeout = opts.timeout or client.timeout,
    connect_timeout = client.connect_timeout,
    idle_timeout = opts.idle_timeout or client.idle_timeout,
    max_body = client.max_body,
    max_event = client.max_event,
    ca_file = client.ca_file,
    limits = limits.of(client), -- max_connections: luachat.limits queues past it
    cassette = client.cassette, -- record/replay (luachat.cassette), or nil
  }
end

-- Start one attempt of a request: every transfer of luachat.client and
-- luachat.chat_stream starts here. -> transfer | nil, err
function M.start(spec)
  -- A cassette replays (never touching the network) or records around limits.start.
  if spec.cassette then return spec.cassette:start(spec, limits.start) end
  return limits.start(spec) -- core.start, in a slot of spec.limits when given
end

-- `local guard <close> = request.owned(t)`: t is closed when the block is left
-- by an error (an interrupt while waiting, a failing callback) or a closed
-- coroutine, unless guard.keep = true says the caller hands t on. Abandoned
-- transfers are closed there and then, never left to the garbage collector.
local owned_mt = { __close = function(g) if not g.keep then g.t:close() end end }
function M.owned(t)
  return setmetatable({ t = t, keep = false }, owned_mt)
end

-- Wait until transfer t is done -> its result; t is closed on the way out,
-- an error while waiting (an interrupt) included.
function M.wait_result(t)
  local _ <close> = M.owned(t)
  while not t:done() do sched.wait_transfer(t) end
  return t:result()
end

-- Where a request goes, for messages and logs: method and URL without the
-- query, userinfo masked (luachat.redact.url).
function M.describe(spec)
  return spec.method .. " " .. redact.url(spec.url)
end
local describe = M.describe

-- Where a response says the server's error message: {"error": {"message": ...}} and kin.
local function server_message(body)
  if type(body) ~= "string" or body == "" then return nil end
  local doc = json.decode(body)
  if type(doc) == "table" then
    local e = doc.error
    if type(e) == "table" and type(e.message) == "string" then return e.message end
    if type(e) == "string" then return e end
    if type(doc.message) == "string" then return doc.message end
    if type(doc.detail) == "string" then return doc.detail end
  end
  local first = body:match("^%s*([^\r\n]*)")
  if first and #first > 200 then first = first:sub(1, 200) .. "..." end
  return first
end
M.server_message = server_message

-- Build a luachat error for a finished transfer's result `r` (nil when it succeeded).
-- opts: the call's options (their headers and query are redacted too).
-- The body is redacted before anything is cut from it; a body already cut (a
-- kept error body C stopped at 64 KiB: fewer bytes kept than received; or a
-- failed transfer's partial body) is redacted as cut text.
function M.error_for(client, r, what, opts, url)
  local body = r.body
  if type(body) == "string" and body ~= "" then
    body = M.redact(client, body, opts, r.failure ~= nil or (tonumber(r.bytes) or 0) > #body, url)
  end
  local f = r.failure
  if f then
    local kind = ({ timeout = "timeout", idle = "timeout", cancelled = "cancelled",
      too_large = "deserialise", no_memory = "environment", no_fds = "environment",
      body_file = "input" })[f] or "network"
    local msg = r.message or f
    if f == "tls" then
      msg = msg .. " (TLS verification failed: pass ca_file for a private CA)"
    end
    return core.error {
      kind = kind,
      message = one_line(M.redact(client, what .. ": " .. msg, opts, false, url)),
      status = r.status ~= 0 and r.status or nil,
      request_id = r.request_id,
      body = body ~= "" and body or nil,
      retryable = (f == "network" or f == "timeout" or f == "idle"),
    }
  end
  local status = r.status
  if status >= 200 and status < 300 then return nil end
  local smsg = server_message(body)
  local kind = status == 401 and "invalid_api_key" or "api"
  local msg = string.format("%s: HTTP %d%s", what, status, smsg and (": " .. smsg) or "")
  if status >= 300 and status < 400 then
    -- Following would send the key to wherever Location points: say where instead.
    msg = string.format("%s: HTTP %d redirect to %s, not followed (luachat never follows redirects; "
      .. "use the final URL as the base URL)", what, status, r.location or "(no Location header)")
  end
  if status == 401 and not secrets[client] and key_from_env[client]
      and not redact.has_credential(credentials(client, opts, url)) then
    msg = msg .. " (no API key: set OPENAI_API_KEY)"
  end
  local retryable = status == 408 or status == 409 or status == 429 or status >= 500
  return core.error {
    kind = kind,
    message = one_line(M.redact(client, msg, opts, false, url)),
    status = status,
    request_id = r.request_id,
    body = body,
    retryable = retryable,
  }
end

local RETRY_CAP = 60

local MONTHS = { Jan = 1, Feb = 2, Mar = 3, Apr = 4, May = 5, Jun = 6, Jul = 7, Aug = 8,
  Sep = 9, Oct = 10, Nov = 11, Dec = 12 }

-- Days from 1970-01-01 to a proleptic Gregorian date (H. Hinnant's days_from_civil).
local function days_from_civil(y, m, d)
  if m <= 2 then y = y - 1 end
  local era = y // 400
  local yoe = y - era * 400
  local doy = (153 * ((m + 9) % 12) + 2) // 5 + d - 1
  return era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468
end

-- Seconds since the epoch of an HTTP date, in any of RFC 9110's three forms
-- ("Wed, 21 Oct 2015 07:28:00 GMT", "Wednesday, 21-Oct-15 07:28:00 GMT",
-- "Wed Oct 21 07:28:00 2015"), or nil. Pure arithmetic: no os.time, which
-- raises on years it cannot represent; at most 4 year digits.
local function http_date_epoch(s)
  local d, mon, y, hh, mm, ss = s:match("^%a+, (%d%d?) (%a%a%a) (%d%d%d%d) (%d%d):(%d%d):(%d%d) GMT$")
  if not d then
    d, mon, y, hh, mm, ss = s:match("^%a+, (%d%d)%-(%a%a%a)%-(%d%d) (%d%d):(%d%d):(%d%d) GMT$")
    if y then y = tostring(tonumber(y) + (tonumber(y) < 70 and 2000 or 1900)) end
  end
  if not d then
    mon, d, hh, mm, ss, y = s:match("^%a%a%a (%a%a%a) +(%d%d?) (%d%d):(%d%d):(%d%d) (%d%d%d%d)$")
  end
  local m = MONTHS[mon or ""]
  if not d or not m then return nil end
  d, y, hh, mm, ss = tonumber(d), tonumber(y), tonumber(hh), tonumber(mm), tonumber(ss)
  if d < 1 or d > 31 or hh > 23 or mm > 59 or ss > 60 then return nil end
  return days_from_civil(y, m, d) * 86400 + hh * 3600 + mm * 60 + ss
end

-- Seconds from now until an HTTP date, or nil when s is not one.
local function http_date_delay(s)
  local t = http_date_epoch(s)
  return t and (t - os.time())
end
M.http_date_delay = http_date_delay

-- A Retry-After value in seconds: delta-seconds or an HTTP date; nil when it
-- is neither. Never raises, whatever the server sent.
local function retry_after_seconds(v)
  v = v:match("^%s*(.-)%s*$")
  if v:match("^%d+$") or v:match("^%d+%.%d+$") then return tonumber(v) end
  return http_date_delay(v)
end
M.retry_after_seconds = retry_after_seconds

-- Seconds to wait before retry number n (0-based), honouring the server's word
-- when it is sane (0 to RETRY_CAP s); anything else gets the usual backoff.
local function retry_delay(r, n)
  if r then
    local ms = type(r.retry_after_ms) == "string" and r.retry_after_ms:match("^%s*(%d+%.?%d*)%s*$")
    ms = ms and tonumber(ms)
    if ms and ms / 1000 <= RETRY_CAP then return ms / 1000 end
    local secs = type(r.retry_after) == "string" and retry_after_seconds(r.retry_after)
    if secs and secs >= 0 and secs <= RETRY_CAP then return secs end
  end
  local base = math.min(0.5 * 2 ^ n, 8)
  return base * (1 - 0.25 * math.random())
end
M.retry_delay = retry_delay

function M.should_retry(client, r, err, n)
  if n >= client.max_retries then return false end
  local sr = r and r.should_retry
  if sr == "true" then return true end
  if sr == "false" then return false end
  return err.retryable and err.kind ~= "cancelled"
end

-- Run attempts of one call until success, a final error, or retries run out.
-- `start_once(attempt_no)` starts a transfer and waits; it returns
-- (value, result, err): value on success, else the result and the error.
function M.with_retries(client, spec, start_once)
  local n = 0
  while true do
    local value, r, err = start_once(n)
    if value ~= nil or not err then return value, nil end
    err.retries = n
    -- err.message names the request already ("POST url: ..."); say it once.
    local where = describe(spec)
    local what = tostring(err.message)
    if what:sub(1, #where) ~= where then what = where .. ": " .. what end
    if not M.should_retry(client, r, err, n) then
      log.debug("%s; not retrying", what)
      return nil, err
    end
    local delay = retry_delay(r, n)
    log.debug("%s; retry %d of %d in %.2fs", what, n + 1, client.max_retries, delay)
    sched.sleep(delay)
    n = n + 1
  end
end

local json_array = json.array

-- Mark t as a JSON array if it is an empty, unmarked table (so `{}` is sent as `[]`).
local function mark_empty(t)
  if type(t) == "table" and next(t) == nil and getmetatable(t) == nil then json_array(t) end
end

-- JSON Schemas (tool parameters, response_format's) at any depth: luachat.schema.normalize (H6),
-- loaded with the first request that has one (start-up compiles less).
local function normalize_schema(t)
  return require("luachat.schema").normalize(t)
end

-- Fields the chat-completions schema defines as arrays: an empty Lua table there means `[]`.
function M.mark_array_fields(req)
  mark_empty(req.messages)
  mark_empty(req.tools)
  mark_empty(req.stop)
  for _, m in ipairs(req.messages) do
    if type(m) == "table" then
      mark_empty(m.tool_calls)
      mark_empty(m.content)
    end
  end
  if type(req.tools) == "table" then
    for _, tool in ipairs(req.tools) do
      local fn = type(tool) == "table" and tool["function"]
      local params = type(fn) == "table" and fn.parameters
      if type(params) == "table" then normalize_schema(params) end
    end
  end
  local rf = req.response_format
  local js = type(rf) == "table" and rf.json_schema
  if type(js) == "table" and type(js.schema) == "table" then normalize_schema(js.schema) end
end

-- Programming errors in a chat request raise, naming the function and blaming
-- the line that called it: level 1 is the function calling this (the default
-- is its caller's line, 2; pass more for each frame in between).
function M.check_chat_request(req, fname, level)
  level = (level or 2) + 1
  if type(req) ~= "table" then argerror(fname, "request table expected, got " .. type(req), level) end
  if type(req.model) ~= "string" or req.model == "" then
    argerror(fname, "field 'model' must be a non-empty string", level)
  end
  if type(req.messages) ~= "table" then
    argerror(fname, "field 'messages' must be a list of messages", level)
  end
  M.mark_array_fields(req)
end

-- json.encode(v) for a request body. A value JSON cannot hold (NaN, a
-- function) is the caller's programming error: "bad argument #argn to 'fname'
-- (cannot encode NaN at $.temperature)", blaming the line `level` frames up
-- (1: the function calling this; 2, the default: its caller).
function M.encode_body(v, fname, argn, level)
  local ok, s = pcall(json.encode, v)
  if ok then return s end
  s = tostring(s):gsub("^[^\n]-:%d+: ", "")
  error(string.format("bad argument #%d to '%s' (%s)", argn, fname, s), (level or 2) + 1)
end

return M
