-- luachat.batch: run a file of requests in the OpenAI Batch format (one JSON
-- request a line) through a client, at a bounded concurrency, resumably.
--
-- Owns: validating the input (before anything is sent), the worker pool that
-- pulls lines from the streamed input, the shared rate limiter (--rpm,
-- --tpm, 429s, x-ratelimit-* headers), retries of one request, the output
-- lines (OpenAI Batch output format, appended and flushed in completion
-- order), resuming from an output file, and shard selection.
-- Never: reads the input or the output whole into memory (only the set of
-- custom ids is kept), writes a custom id twice to one output, sends
-- anything when the input has a problem, counts a line that is not a result
-- as answered, reports success for requests it never sent, writes a
-- credential the server echoes, or prints (luachat.batch_cli does).
--
--   luachat.batch.run{ client = c, input = "in.jsonl", output = "out.jsonl",
--     concurrency = 64, rpm = N, tpm = N, resume = true, shard = {k, n},
--     max_retries = N, model = "...", on_result = function(line, info) end,
--     on_progress = function(summary) end }
--   -> { total, ok, failed, skipped, tokens } | nil, err
local core = require "luachat.core"
local json = require "luachat.json"
local sched = require "luachat.sched"
local client_mod = require "luachat.client"
local request = require "luachat.request"
local redact = require "luachat.redact"
local util = require "luachat.util"
local idset = require "luachat.batch_idset"
local log = require "luachat.log"

local M = {}

local now = core.now
local decode, encode = json.decode, json.encode
local null = json.null

local id_hash = idset.hash

local DEFAULT_URL = "/v1/chat/completions"
local MAX_PROBLEMS = 20 -- input problems listed; the rest are counted

local function input_error(message, problems, headline)
  return core.error { kind = "input", message = message, problems = problems, headline = headline }
end

---------------------------------------------------------------------------
-- Shards: the K-th (0-based) of N disjoint slices, by a hash of custom_id,
-- so a line keeps its shard whatever its position in the file.

-- 32-bit FNV-1a of s.
local function fnv1a(s)
  local h = 2166136261
  for i = 1, #s do
    h = ((h ~ s:byte(i)) * 16777619) & 0xffffffff
  end
  return h
end
M.hash = fnv1a

-- Is custom id `id` in shard k of n (k in 0..n-1)?
function M.in_shard(id, k, n)
  if not n or n <= 1 then return true end
  return fnv1a(id) % n == k
end

-- "K/N" -> k, n | nil, message.
function M.parse_shard(s)
  local k, n = tostring(s):match("^(%d+)/(%d+)$")
  k, n = tonumber(k), tonumber(n)
  if not k or n < 1 or k >= n then
    return nil, string.format("--shard wants K/N with 0 <= K < N (e.g. 0/4), got '%s'", tostring(s))
  end
  return k, n
end

---------------------------------------------------------------------------
-- URLs: a line's url against the client's base URL. "/v1/x" with a base URL
-- whose path ends in /v1 is "x" under the base; any other path is under the
-- base URL as is ("/v1/x" with "http://host" is "http://host/v1/x"). A line's
-- query follows the base URL's (request.url); a name both give is the line's.

function M.resolve_path(base_url, url)
  local base_path = (base_url:match("^[a-zA-Z][%w+.-]*://[^/?#]*([^?#]*)") or ""):gsub("/+$", "")
  local path = url
  local tail = base_path:match("(/[^/]+)$")
  if tail and path:sub(1, #tail + 1) == tail .. "/" then
    path = path:sub(#tail + 2)
  end
  return (path:gsub("^/+", ""))
end

-- url (a request URL, maybe with a query) with the line's query added:
-- parameters after the URL's own, a name in both sent once, as the line has it.
M.with_query = request.with_query

---------------------------------------------------------------------------
-- Reading the input.

-- One input line -> request table | nil, problem. A request: {custom_id,
-- method, url, body (a table)}.
local function parse_line(text)
  local doc, derr = decode(text)
  if doc == nil then
    derr = tostring(derr)
    return nil, derr:find("^invalid JSON") and derr or ("invalid JSON: " .. derr)
  end
  if type(doc) ~= "table" or json.is_array(doc) then return nil, "not a JSON object" end
  local id = doc.custom_id
  if id == nil or id == null then return nil, "no custom_id" end
  if type(id) ~= "string" or id == "" then return nil, "custom_id must be a non-empty string" end
  local body = doc.body
  if body == nil or body == null then return nil, "no body (custom_id '" .. id .. "')" end
  if type(body) ~= "table" or json.is_array(body) then return nil, "body must be a JSON object (custom_id '" .. id .. "')" end
  if body.stream == true then
    return nil, "body asks for a stream (\"stream\": true); batch requests are answered whole (custom_id '" .. id .. "')"
  end
  local method = doc.method
  if method == nil or method == null then method = "POST" end
  if type(method) ~= "string" or not method:match("^%u+$") then
    return nil, "method must be an HTTP method such as \"POST\" (custom_id '" .. id .. "')"
  end
  local url = doc.url
  if url == nil or url == null then url = DEFAULT_URL end
  -- The path is checked without the query (Azure's "...?api-version=..."); a
  -- fragment is never sent.
  local path, query = nil, ""
  if type(url) == "string" then path, query = url:match("^([^?#]*)%??([^#]*)") end
  if not path or path:sub(1, 1) ~= "/" then
    return nil, "url must be a path such as \"/v1/chat/completions\" (custom_id '" .. id .. "')"
  end
  if url:find("[%s%c]") then
    return nil, "url must be a path such as \"/v1/chat/completions\" without spaces or control characters (custom_id '"
      .. id .. "')"
  end
  -- "/.." and "/." (also as %2E) would leave the base URL's path, or be resolved by some
  -- and not by others: refused, as curl and servers would each read them their own way
  -- A server may also decode %2F or %5C, or take "\" for "/" (IIS, in front of Azure).
  local dotted = "/" .. path:gsub("%%2[Ee]", "."):gsub("%%2[Ff]", "/"):gsub("%%5[Cc]", "/"):gsub("\\", "/") .. "/"
  if dotted:find("/%.%.?/") then
    return nil, "url must be a path without '.' or '..' segments (custom_id '" .. id .. "')"
  end
  return { custom_id = id, method = method, url = url, path = path, query = query, body = body }
end
M.parse_line = parse_line

-- Iterate the lines of a file: for lineno, text in lines(f). Blank lines are
-- skipped (they still count for line numbers). A read error ends the
-- iteration; the second result, read_error(), returns it (nil when none).
local function each_line(f)
  local n = 0
  local rerr
  return function()
    while true do
      local text, err = f:read("l")
      if text == nil then
        rerr = err
        return nil
      end
      n = n + 1
      if n == 1 and text:sub(1, 3) == "\239\187\191" then text = text:sub(4) end -- a UTF-8 BOM
      if text:find("%S") then return n, (text:gsub("\r$", "")) end
    end
  end, function() return rerr end
end

-- Open a file for reading and read from it once: a directory (which opens)
-- fails here, with the system's words. -> f | nil, message.
local function open_readable(path)
  local f, oerr = io.open(path, "rb")
  if not f then return nil, tostring(oerr) end
  local ok, rerr = f:read(0)
  if ok == nil and rerr then
    f:close()
    return nil, path .. ": " .. tostring(rerr)
  end
  return f
end

-- An input read more than once (checked, then sent; --remote reads it three
-- times): src.name is the name the user gave (for messages); src:open() ->
-- a handle at its start | nil, message; src:release(f) after each pass;
-- src:close() at the end. A regular file is opened anew for each pass; a
-- pipe's copy is one handle that is rewound (its name is gone: see open_input).
local Source = {}
Source.__index = Source

function Source:open()
  if self.spool then
    local ok, err = self.spool:seek("set", 0)
    if not ok then return nil, self.name .. ": " .. tostring(err) end
    return self.spool
  end
  return open_readable(self.name)
end

function Source:release(f)
  if f ~= self.spool then f:close() end
end

function Source:close()
  if self.spool then
    self.spool:close()
    self.spool = nil
  end
end

-- A regular file as a source (read where it is).
function M.file_source(path)
  return setmetatable({ name = path }, Source)
end

-- The input as a source that can be read more than once: a pipe, a FIFO or
-- /dev/stdin is copied first (streamed, never whole in memory) into
-- io.tmpfile(): C's tmpfile(), which on Linux opens an O_TMPFILE file that
-- never has a name (elsewhere it unlinks the file it creates at once), so
-- no copy is left behind, even by kill -9. Every later read goes through
-- that one handle. -> src | nil, err (kind "input").
function M.open_input(path)
  local f, oerr
  if path == "-" then -- standard input (as `luachat -` reads a script): always copied, its name is "-"
    f, path = io.stdin, "standard input"
  else
    f, oerr = open_readable(path)
    if not f then return nil, input_error("cannot read the input: " .. oerr) end
  end
  if f ~= io.stdin and f:seek("cur") then -- a regular file: read it where it is
    f:close()
    return M.file_source(path)
  end
  local dst, derr = io.tmpfile()
  if not dst then
    if f ~= io.stdin then f:close() end
    return nil, input_error("cannot copy the input (not a regular file) to a temporary file: " .. tostring(derr))
  end
  while true do
    local chunk, rerr = f:read(1 << 16)
    if not chunk then
      if rerr then
        if f ~= io.stdin then f:close() end
        dst:close()
        return nil, input_error("cannot read the input: " .. path .. ": " .. tostring(rerr))
      end
      break
    end
    local ok, werr = dst:write(chunk)
    if not ok then
      if f ~= io.stdin then f:close() end
      dst:close()
      return nil, input_error("cannot copy the input (not a regular file) to a temporary file: " .. tostring(werr))
    end
  end
  if f ~= io.stdin then f:close() end
  local ok, ferr = dst:flush()
  if not ok then
    dst:close()
    return nil, input_error("cannot copy the input (not a regular file) to a temporary file: " .. tostring(ferr))
  end
  return setmetatable({ name = path, spool = dst }, Source)
end

-- The validation pass: reads the input once, streaming, keeping only a
-- compact set of id hashes (luachat.batch_idset, 8 bytes an id); when it
-- finds a problem, a second pass lists the problems in line order, each
-- duplicate confirmed on the ids themselves. Returns { lines, selected,
-- skipped } | nil, err (kind "input" with err.problems, one string per
-- problem, at most MAX_PROBLEMS and a count). input: a file name or a
-- source (open_input). `done`: the idset of the ids the output already
-- answers (or nil); shard = {k, n} or nil.
function M.validate(input, shard, done)
  local src = type(input) == "string" and M.file_source(input) or input
  local path = src.name
  local f, oerr = src:open()
  if not f then return nil, input_error("cannot read the input: " .. oerr) end
  local seen = idset.new()
  local nbad = 0
  local count, selected, skipped = 0, 0, 0
  local k, n = shard and shard[1], shard and shard[2]
  local lines, read_error = each_line(f)
  for _, text in lines do
    count = count + 1
    local req = parse_line(text)
    if not req then
      nbad = nbad + 1
    else
      local id = req.custom_id
      local h = id_hash(id)
      seen:add(h)
      if M.in_shard(id, k, n) then
        selected = selected + 1
        if done and done:has(h) then skipped = skipped + 1 end
      end
    end
  end
  src:release(f)
  if read_error() then return nil, input_error("cannot read the input: " .. path .. ": " .. tostring(read_error())) end
  local dups = seen:finish()
  seen = nil
  local result = { lines = count, selected = selected, skipped = skipped }
  if nbad == 0 and next(dups) == nil then return result end

  local problems, nproblems = {}, 0
  local function problem(s)
    nproblems = nproblems + 1
    if nproblems <= MAX_PROBLEMS then problems[#problems + 1] = s end
  end
  local first = {} -- id -> its first line, only for ids whose hash came twice
  f, oerr = src:open()
  if not f then return nil, input_error("cannot read the input: " .. tostring(oerr)) end
  for lineno, text in each_line(f) do
    local req, why = parse_line(text)
    if not req then
      problem(string.format("line %d: %s", lineno, why))
    else
      local id = req.custom_id
      if dups[id_hash(id)] then
        local at = first[id]
        if at then
          problem(string.format("line %d: duplicate custom_id '%s' (first on line %d)", lineno, id, at))
        else
          first[id] = lineno
        end
      end
    end
  end
  src:release(f)
  if nproblems == 0 then return result end -- two ids with one hash, no duplicate
  if nproblems > #problems then
    problems[#problems + 1] = string.format("... and %d more", nproblems - #problems)
  end
  local headline = string.format("%s: %d problem%s in the input, nothing was sent", path, nproblems,
    nproblems == 1 and "" or "s")
  return nil, input_error(headline .. ": " .. problems[1], problems, headline)
end

---------------------------------------------------------------------------
-- The output file.

-- What a results-file line is: "result" (a custom_id with a response or an
-- error object: a final answer), "request" (a custom_id and a body: an input
-- line), or nil and why not.
local function line_kind(doc)
  if type(doc) ~= "table" or json.is_array(doc) then return nil, "not a JSON object" end
  if type(doc.custom_id) ~= "string" then return nil, "no custom_id" end
  if type(doc.response) == "table" or type(doc.error) == "table" then return "result" end
  if doc.body ~= nil then return "request" end
  return nil, "no response and no error"
end
M.line_kind = line_kind

local function not_results_error(path, problems, nproblems, request_seen)
  if nproblems > #problems then
    problems[#problems + 1] = string.format("... and %d more", nproblems - #problems)
  end
  local headline = string.format("%s: %d line%s %s not a batch result, nothing was sent%s", path, nproblems,
    nproblems == 1 and "" or "s", nproblems == 1 and "is" or "are",
    request_seen and " (is it the requests file?)" or " (fix or remove them, then run again with resume = true)")
  return input_error(headline .. ": " .. problems[1], problems, headline)
end

-- The custom ids an existing output file answers, repairing a last line cut
-- short by a crash (no newline: it is dropped, its request runs again).
-- Only result lines count (a custom_id with a response or an error); any
-- other line (a request line, a line that is not JSON) anywhere before the
-- cut last line is refused: err.kind "input", with err.problems naming the
-- lines. Returns the finished idset of their hashes and the number of lines
-- | nil, err. A missing file is empty.
function M.scan_output(path)
  local done, n = idset.new(), 0
  local f, oerr = open_readable(path)
  if not f then
    done:finish()
    if tostring(oerr):find("No such file", 1, true) then return done, 0 end
    return nil, core.error { kind = "usage", message = "cannot read the results file: " .. tostring(oerr) }
  end
  local problems, nproblems, request_seen = {}, 0, false
  local pos, last_start, cut, lineno = 0, 0, false, 0
  local pending -- the problem of the line before, kept until we know it is not the cut last one
  for text in f:lines("L") do
    if pending then
      nproblems = nproblems + 1
      if nproblems <= MAX_PROBLEMS then problems[#problems + 1] = pending end
      pending = nil
    end
    lineno = lineno + 1
    last_start = pos
    pos = pos + #text
    cut = text:sub(-1) ~= "\n"
    if text:find("%S") then
      local doc, derr = decode(text)
      local kind, why = line_kind(doc)
      if doc == nil then why = "invalid JSON: " .. tostring(derr):gsub("^invalid JSON: ", "") end
      if kind == "result" then
        done:add(id_hash(doc.custom_id))
        n = n + 1
      elseif cut and kind ~= "request" then
        -- a last line cut short by a crash: dropped below
      else
        if kind == "request" then
          request_seen = true
          why = "a request (custom_id '" .. doc.custom_id .. "' with a body), not a result"
        end
        pending = string.format("line %d: %s", lineno, why)
      end
    end
  end
  f:close()
  if pending then
    nproblems = nproblems + 1
    if nproblems <= MAX_PROBLEMS then problems[#problems + 1] = pending end
  end
  done:finish()
  if nproblems > 0 then return nil, not_results_error(path, problems, nproblems, request_seen) end
  -- The last line is cut short (no newline): drop it.
  if cut then
    local ok, err = M.truncate(path, last_start)
    if not ok then return nil, err end
  end
  return done, n
end

-- The first non-blank line of a non-empty output file, as line_kind says:
-- "request" when it is an input line (-o names the requests file).
local function first_line_kind(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  for text in f:lines() do
    if text:find("%S") then
      f:close()
      return (line_kind(decode(text)))
    end
  end
  f:close()
  return nil
end

-- Can the results be written to path? A directory, or a file that cannot be
-- read, is refused (kind "usage": nothing was sent). A file that does not
-- exist yet is made, under its own name and as the run makes it (io.open "ab":
-- O_APPEND|O_CREAT, never a truncation), then removed at once: its directory
-- must exist and let this user make that very file (permissions, a read-only
-- file system). No file of another name is made: a probe name of luachat's
-- own (what this replaces) could be guessed, and io.open, without O_EXCL or
-- O_NOFOLLOW, would follow a symlink planted under it and make or truncate
-- the file it names. Only a name that did not exist is removed:
-- os.rename(path, path) does nothing and succeeds for any name that exists
-- (POSIX), a symlink to a missing file included, and that one is left to the
-- run, which writes through it (the check neither makes its target nor
-- removes the link).
local function check_output_path(path)
  local f, oerr = open_readable(path)
  if f then
    f:close()
    return true
  end
  if tostring(oerr):find("No such file", 1, true) then
    local there, rerr = os.rename(path, path)
    if there then return true end -- a symlink to a missing file
    -- rerr is ENOENT, or EROFS (a read-only file system: the file cannot be made,
    -- unless the name is a symlink to elsewhere, whose target, made below, stays)
    local absent = tostring(rerr):find("No such file", 1, true) ~= nil
    -- The file made is removed however this ends (a Ctrl-C raised between the
    -- open and the removal included), and only while it is empty.
    local opening = false
    local _ <close> = setmetatable({}, { __close = function()
      if opening and absent then
        local g = io.open(path, "rb")
        local size = g and g:seek("end")
        if g then g:close() end
        if size == 0 then os.remove(path) end
      end
    end })
    opening = true
    local made, merr = io.open(path, "ab")
    if made then
      made:close()
      return true
    end
    oerr = merr -- the system's words, naming the output
  end
  return nil, core.error { kind = "usage", message = "cannot write the results to " .. tostring(oerr) }
end

-- The same file by name (after "./" and "//" are tidied).
local function same_name(a, b)
  local function tidy(p)
    p = p:gsub("/+", "/"):gsub("/%./", "/"):gsub("^%./", "")
    return p
  end
  return tidy(a) == tidy(b)
end

-- Cut file `path` to its first `size` bytes (copy and rename: Lua has no ftruncate).
function M.truncate(path, size)
  local src, err = io.open(path, "rb")
  if not src then return nil, core.error { kind = "environment", message = tostring(err) } end
  local tmp = path .. ".luachat-repair"
  local dst, derr = io.open(tmp, "wb")
  if not dst then
    src:close()
    return nil, core.error { kind = "environment", message = "cannot repair the output: " .. tostring(derr) }
  end
  local left = size
  while left > 0 do
    local chunk = src:read(math.min(left, 1 << 20))
    if not chunk then break end
    dst:write(chunk)
    left = left - #chunk
  end
  src:close()
  local ok, werr = dst:close()
  if not ok then return nil, core.error { kind = "environment", message = tostring(werr) } end
  local rok, rerr = os.rename(tmp, path)
  if not rok then return nil, core.error { kind = "environment", message = tostring(rerr) } end
  return true
end

-- A response body as JSON text on one line: the server's own text when it is
-- JSON (its newlines can only be whitespace), else the text as a JSON string.
local function body_json(text, doc)
  if doc ~= nil then
    if text:find("[\r\n]") then text = text:gsub("[\r\n]+", " ") end
    return text
  end
  return encode(text or "")
end

-- The output line for one request: OpenAI Batch output format.
-- r: the transfer result of the last attempt (nil when none got an answer);
-- doc: its decoded body; err: the final error (nil on success). redact: a
-- function applied to the body's text (a client's redact: an echoed key never
-- reaches the file), or nil.
function M.output_line(id, custom_id, r, doc, err, redact)
  local response = "null"
  if r and r.status and r.status > 0 then
    local text = r.body or ""
    if redact then text = redact(text) end
    response = string.format('{"status_code":%d,"request_id":%s,"body":%s}', r.status,
      r.request_id and encode(r.request_id) or "null", body_json(text, doc))
  end
  local error = "null"
  if err then
    local code = err.kind
    local e = type(doc) == "table" and doc.error
    if type(e) == "table" and type(e.code) == "string" then code = e.code
    elseif type(e) == "table" and type(e.type) == "string" then code = e.type end
    error = string.format('{"code":%s,"message":%s}', encode(code), encode(tostring(err.message)))
  end
  return string.format('{"id":%s,"custom_id":%s,"response":%s,"error":%s}', encode(id), encode(custom_id),
    response, error)
end

---------------------------------------------------------------------------
-- The shared rate limiter: one per run, so a 429 or an exhausted
-- x-ratelimit-remaining-* pauses every worker, not just the one that saw it.
-- rpm: request starts spaced 60/rpm s apart. tpm: each request's estimated
-- tokens cost est*60/tpm s of a virtual clock, corrected by its usage.

local Limiter = {}
Limiter.__index = Limiter

function M.limiter(rpm, tpm)
  return setmetatable({ rpm = rpm, tpm = tpm, next_req = 0, next_tok = 0, pause_until = 0 }, Limiter)
end

-- Wait until a request estimated at `est` tokens may start, and book it.
function Limiter:acquire(est)
  while true do
    local t = now()
    local wait = self.pause_until - t
    if self.rpm then wait = math.max(wait, self.next_req - t) end
    if self.tpm then wait = math.max(wait, self.next_tok - t) end
    if wait <= 0 then break end
    sched.sleep(wait)
  end
  local t = now()
  if self.rpm then self.next_req = math.max(self.next_req, t) + 60 / self.rpm end
  if self.tpm then self.next_tok = math.max(self.next_tok, t) + est * 60 / self.tpm end
end

-- A request's real token count is known: correct the booking.
function Limiter:correct(est, actual)
  if self.tpm and actual then self.next_tok = self.next_tok + (actual - est) * 60 / self.tpm end
end

-- Pause every worker for `seconds` (a 429, an exhausted rate-limit window).
function Limiter:pause(seconds)
  if seconds and seconds > 0 then self.pause_until = math.max(self.pause_until, now() + seconds) end
end

-- "6m0s", "1.5s", "20ms", "2h3m", or plain seconds -> seconds | nil.
function M.parse_duration(s)
  if type(s) ~= "string" then return nil end
  s = s:match("^%s*(.-)%s*$")
  if s:match("^%d+%.?%d*$") then return tonumber(s) end
  local total, matched = 0, false
  local rest = s:gsub("(%d+%.?%d*)(%a+)", function(num, unit)
    local mult = ({ h = 3600, m = 60, s = 1, ms = 0.001, us = 1e-6, ns = 1e-9 })[unit]
    if mult then
      total = total + tonumber(num) * mult
      matched = true
      return ""
    end
  end)
  if not matched or rest ~= "" then return nil end
  return total
end

-- Headers of a response that speak of the provider's limits (when the
-- transfer result carries them): an exhausted window pauses the run until
-- its reset.
function Limiter:observe(r)
  for _, what in ipairs { "requests", "tokens" } do
    local left = tonumber(r["ratelimit_remaining_" .. what])
    if left and left <= 0 then
      local reset = M.parse_duration(r["ratelimit_reset_" .. what])
      if reset and reset <= 60 then self:pause(reset) end
    end
  end
end

---------------------------------------------------------------------------
-- One request, with retries.

local RETRY_CAP = 60

-- Seconds before retry n (0-based): the server's Retry-After(-Ms) when sane,
-- else exponential backoff with jitter.
local function retry_delay(r, n)
  if r then
    local ms = type(r.retry_after_ms) == "string" and tonumber(r.retry_after_ms:match("^%s*(%d+%.?%d*)%s*$"))
    if ms and ms / 1000 <= RETRY_CAP then return ms / 1000 end
    local secs = type(r.retry_after) == "string" and client_mod.retry_after_seconds(r.retry_after)
    if secs and secs >= 0 and secs <= RETRY_CAP then return secs end
  end
  local base = math.min(0.5 * 2 ^ n, 8)
  return base * (1 - 0.25 * math.random())
end
M.retry_delay = retry_delay

local function retryable(r, err)
  local sr = r and r.should_retry
  if sr == "true" then return true end
  if sr == "false" then return false end
  return err.retryable and err.kind ~= "cancelled"
end

-- A rough token count of a request body: its JSON length / 4, plus the
-- completion it may ask for (max_tokens, max_completion_tokens).
function M.estimate_tokens(body_text, body)
  local est = #body_text // 4 + 1
  local max = body.max_completion_tokens or body.max_tokens
  if math.type(max) == "integer" and max > 0 then est = est + max end
  return est
end

---------------------------------------------------------------------------
-- The run.

local function check_opts(o)
  if type(o) ~= "table" then error("bad argument #1 to 'batch.run' (table expected, got " .. type(o) .. ")", 3) end
  local function bad(msg) error("bad argument #1 to 'batch.run' (" .. msg .. ")", 4) end
  if type(o.input) ~= "string" then bad("field 'input' must be a file name") end
  if o.output ~= nil and type(o.output) ~= "string" then bad("field 'output' must be a file name") end
  for _, f in ipairs { "concurrency", "rpm", "tpm", "max_retries" } do
    local v = o[f]
    if v ~= nil and (math.type(v) ~= "integer" or v < (f == "max_retries" and 0 or 1)) then
      bad(string.format("field '%s' must be a %s integer", f, f == "max_retries" and "non-negative" or "positive"))
    end
  end
  if o.shard ~= nil then
    local s = o.shard
    if type(s) == "string" then
      local k, n = M.parse_shard(s)
      if not k then bad(n) end
      o.shard = { k, n }
    elseif type(s) ~= "table" or math.type(s[1]) ~= "integer" or math.type(s[2]) ~= "integer"
        or s[2] < 1 or s[1] < 0 or s[1] >= s[2] then
      bad("field 'shard' must be {k, n} with 0 <= k < n, or \"k/n\"")
    end
  end
  for _, f in ipairs { "on_result", "on_progress" } do
    if o[f] ~= nil and type(o[f]) ~= "function" then bad("field '" .. f .. "' must be a function") end
  end
end

-- The output's checks: not the input, not a directory; without resume it must be
-- new (or empty), so no id is written twice; with resume, only result lines.
-- -> done (an idset, or nil) | nil, err.
local function check_output(o, output)
  if output == "-" then
    return nil, core.error { kind = "usage", message =
      "the results cannot go to standard output (resume = true reads them back): give a file as the output" }
  end
  if o.input and same_name(output, o.input) then
    return nil, core.error { kind = "usage", message = output .. " is the requests file: give another results file (-o)" }
  end
  local okp, perr = check_output_path(output)
  if not okp then return nil, perr end
  local done -- the idset of ids the output answers (resume)
  local existing = io.open(output, "rb")
  if existing then
    local size = existing:seek("end") or 0
    existing:close()
    if size > 0 and first_line_kind(output) == "request" then
      return nil, core.error { kind = "usage", message = output
        .. " holds requests, not results (is it the requests file?): give another results file (-o)" }
    end
    if size > 0 and not o.resume then
      return nil, core.error { kind = "usage",
        message = output .. " already has results: pass resume = true to continue it, or remove it" }
    end
    if o.resume then
      local d, serr = M.scan_output(output)
      if not d then return nil, serr end
      done = d
    end
  end
  return done or false
end
M.check_output = check_output

-- run(opts) -> summary | nil, err. See the top of the file.
function M.run(o)
  check_opts(o)
  local client = o.client or require("luachat").client()
  if o.output == nil and o.input == "-" then
    return nil, core.error { kind = "usage", message = "the input is standard input: give the output's name (output = ...)" }
  end
  local output = o.output or (o.input:gsub("%.jsonl$", "") .. ".results.jsonl")
  local done, cerr = check_output(o, output)
  if done == nil then return nil, cerr end
  local src, serr = M.open_input(o.input)
  if not src then return nil, serr end
  local res = table.pack(pcall(M.run_checked, o, client, output, done or nil, src))
  src:close()
  if not res[1] then error(res[2], 0) end
  return table.unpack(res, 2, res.n)
end

function M.run_checked(o, client, output, done, src)
  local concurrency = o.concurrency or 64
  local max_retries = o.max_retries or client.max_retries or 2

  local v, verr = M.validate(src, o.shard, done)
  if not v then return nil, verr end
  collectgarbage()

  local summary = { total = v.selected, ok = 0, failed = 0, skipped = v.skipped, tokens = 0,
    lines = v.lines, output = output }
  local out, oerr = io.open(output, "ab")
  if not out then return nil, core.error { kind = "environment", message = "cannot open the output: " .. tostring(oerr) } end
  -- Each line leaves in one write(2) (up to 1 MiB): O_APPEND keeps lines whole even when
  -- several processes append to one file.
  out:setvbuf("full", 1 << 20)
  local input, ierr = src:open()
  if not input then
    out:close()
    return nil, input_error("cannot read the input: " .. tostring(ierr))
  end
  local next_line = each_line(input)

  local limiter = M.limiter(o.rpm, o.tpm)
  local run_id = util.random_hex(6)
  local seq = 0
  local k, n = o.shard and o.shard[1], o.shard and o.shard[2]
  local model = o.model
  local on_result, on_progress = o.on_result, o.on_progress
  local stop_err -- the first failure that stops the run (a callback's error)
  local started = now()
  summary.started = started

  -- Next request of this run (in shard, not done), or nil at the end.
  local function next_request()
    while true do
      local lineno, text = next_line()
      if not lineno then return nil end
      local req = parse_line(text) -- validated: never nil here
      if req and M.in_shard(req.custom_id, k, n) and not (done and done:has(id_hash(req.custom_id))) then
        req.line = lineno
        return req
      end
    end
  end

  -- Every credential the client sends, out of the bodies written (luachat.redact's rule).
  local secrets = request.secrets(client) -- built once, not per line
  local function redact_body(text) return redact.text(text, secrets) end

  local function finish(req, r, doc, err)
    seq = seq + 1
    local redactor = redact_body
    if req.query ~= "" then
      -- A line's own query may carry a credential (?key=...): out of its result too.
      local own = redact.secrets { url = "?" .. req.query }
      if own[1] then
        redactor = function(text) return redact.text(redact_body(text), own) end
        if err then
          if type(err.message) == "string" then err.message = redact.text(err.message, own) end
          if type(err.body) == "string" then err.body = redact.text(err.body, own) end
        end
      end
    end
    local line = M.output_line(string.format("batch_req_%s%07d", run_id, seq), req.custom_id, r, doc, err, redactor)
    local ok_w, werr = out:write(line, "\n")
    if ok_w then ok_w, werr = out:flush() end
    if not ok_w then
      stop_err = stop_err or core.error { kind = "environment", message = "cannot write " .. output .. ": " .. tostring(werr) }
      return
    end
    if err then summary.failed = summary.failed + 1 else summary.ok = summary.ok + 1 end
    if on_result then
      local info = { custom_id = req.custom_id, line = req.line, status = r and r.status ~= 0 and r.status or nil,
        ok = err == nil, error = err }
      local cok, cerr = xpcall(on_result, debug.traceback, line, info)
      if not cok then
        stop_err = stop_err or core.error { kind = "callback", message = "batch on_result: " .. tostring(cerr) }
      end
    end
    if on_progress then
      local cok, cerr = xpcall(on_progress, debug.traceback, summary)
      if not cok then
        stop_err = stop_err or core.error { kind = "callback", message = "batch on_progress: " .. tostring(cerr) }
      end
    end
  end

  -- Send one request until it has a final answer; write its line.
  local function process(req)
    local body = req.body
    if model and body.model == nil then body.model = model end
    local body_text = encode(body)
    local est = M.estimate_tokens(body_text, body)
    local path = M.resolve_path(client.base_url, req.path)
    local has_body = req.method ~= "GET" and req.method ~= "HEAD"
    local idem = has_body and ("luachat-batch-" .. run_id .. "-" .. req.line) or nil
    local attempt = 0
    while true do
      limiter:acquire(est)
      local spec = client:transfer_spec(req.method, path, has_body and body_text or nil, nil, false, idem)
      spec.url = M.with_query(spec.url, req.query)
      local what = client_mod.describe(spec)
      local r, err
      local t, serr = core.start(spec)
      if not t then
        err = serr
      else
        r = request.wait_result(t)
        log.debug("batch %s: %s -> %s in %.3fs%s%s", req.custom_id, what, r.failure or r.status, r.seconds or 0,
          r.request_id and (" (request " .. r.request_id .. ")") or "", attempt > 0 and (" [attempt " .. attempt + 1 .. "]") or "")
        err = client:error_for(r, what)
        limiter:observe(r)
      end
      local doc
      if r and r.body ~= "" then doc = decode(r.body) end
      if not err and doc == nil then
        err = core.error { kind = "deserialise", status = r.status, request_id = r.request_id,
          message = what .. ": response is not valid JSON (content-type " .. tostring(r.content_type or "none") .. ")" }
      end
      if not err then
        local usage = type(doc) == "table" and doc.usage
        local used = type(usage) == "table" and math.tointeger(usage.total_tokens)
        if used then
          summary.tokens = summary.tokens + used
          limiter:correct(est, used)
        end
        return finish(req, r, doc, nil)
      end
      err.retries = attempt
      if attempt >= max_retries or not retryable(r, err) then
        log.debug("batch %s: %s; not retrying", req.custom_id, err.message)
        if r and r.status == 0 then r = nil end
        return finish(req, r, doc, err)
      end
      local delay = retry_delay(r, attempt)
      log.debug("batch %s: %s; retry %d of %d in %.2fs", req.custom_id, err.message, attempt + 1, max_retries, delay)
      if r and r.status == 429 then limiter:pause(delay) end
      sched.sleep(delay)
      attempt = attempt + 1
    end
  end

  local function worker()
    while not stop_err do
      local req = next_request()
      if not req then return end
      process(req)
    end
  end

  local workers = {}
  for i = 1, math.min(concurrency, math.max(v.selected - v.skipped, 1)) do
    workers[i] = sched.spawn(worker)
  end
  local worker_err
  local ok, perr = pcall(function()
    for _, w in ipairs(workers) do
      local _, werr = w:wait()
      if werr and not worker_err then worker_err = werr end
    end
  end)
  src:release(input)
  out:close()
  summary.seconds = now() - started
  if not ok then error(perr, 0) end -- interrupted (Ctrl-C) or the loop failed: raise as is
  if worker_err then
    if tostring(worker_err.message):find("interrupted", 1, true) then error("interrupted", 0) end
    return nil, worker_err
  end
  if stop_err then return nil, stop_err end
  local answered = summary.ok + summary.failed + summary.skipped
  if answered < summary.total then
    -- the input changed (or could not be read) between the check and the send pass
    return nil, input_error(string.format("%s: %d of %d requests were not sent: the input changed or could not be read "
      .. "while it was being sent (resume = true sends the rest)", o.input, summary.total - answered, summary.total))
  end
  return summary
end

return M
