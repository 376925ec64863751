-- luachat.cassette: record and replay HTTP exchanges (JSON Lines cassettes),
-- so agent scripts can be tested offline, fast and deterministically.
--
-- Owns: the cassette file (one exchange a line: the request as data, the
-- response as received: status, useful headers, the body or the list of SSE
-- events), matching a request against it (method + path + the JSON body as
-- data, identical requests in recorded order), the replay object that stands
-- in for a luachat.Transfer (take/take_one/has_events/done/result/cancel/
-- close), the recorder that wraps a real transfer and writes its exchange when
-- it is closed, and the "cassette" error naming the closest recorded request.
-- Streams replay their recorded events: the same strings (or {event=, data=}
-- tables) the C transfer hands Lua, so they go through the same chunk
-- parsing and accumulator path as live ones.
-- Never: writes a credential (the API key, Authorization, api-key, x-api-key,
-- cookies, secret-named query parameters, URL userinfo: luachat.redact's rule),
-- touches the network in replay, or keeps a request's secrets after the call.
local core = require "luachat.core"
local json = require "luachat.json"
local redact = require "luachat.redact"
local sched = require "luachat.sched"
local options = require "luachat.options"

local M = {}

-- The options, their rules and variables: luachat.cassette_options (the client checks them
-- without loading this module).
local cassette_options = require "luachat.cassette_options"
M.MODES, M.TIMINGS = cassette_options.MODES, cassette_options.TIMINGS
M.OPTIONS, M.ENV = cassette_options.OPTIONS, cassette_options.ENV

-- The cassette variables' values: value | nil (unset) | nil, problem, where
-- problem names the variable and what it may be, worded for a command-line
-- user ("environment variable LUACHAT_CASSETTE_MODE must be record, replay or
-- auto, got 'bogus'"). for_client raises it as a bad argument; the CLI checks
-- first (M.check_env) and prints it as a usage error.
local function env_value(key)
  local name = M.ENV[key]
  local v, why = options.env_value(name, os.getenv(name))
  if why then return nil, why end
  if v ~= nil and key ~= "cassette" and not M.OPTIONS[key].ok(v) then
    return nil, string.format("environment variable %s must be %s, got '%s'", name, M.OPTIONS[key].what, v)
  end
  return v
end

-- check_env() -> nil | problem: the first bad cassette variable (see env_value).
function M.check_env()
  for _, key in ipairs { "cassette", "cassette_mode", "cassette_timing" } do
    local _, why = env_value(key)
    if why then return why end
  end
  return nil
end

-- Request headers never written (besides secret-named ones): they change every
-- run or every release and would make every recording a diff.
local SKIP_HEADERS = { ["user-agent"] = true, ["idempotency-key"] = true }
-- Response fields of t:result() kept (the useful headers), besides status.
local RESULT_FIELDS = { "request_id", "content_type", "retry_after", "retry_after_ms", "should_retry",
  "location", "mcp_session_id", "ratelimit_remaining_requests", "ratelimit_remaining_tokens",
  "ratelimit_reset_requests", "ratelimit_reset_tokens", "failure", "message" }

local function error_of(message, extra)
  local e = { kind = "cassette", message = (tostring(message):gsub("[\r\n]+", " ")) }
  for k, v in pairs(extra or {}) do e[k] = v end
  return core.error(e)
end

------------------------------------------------------------------------------
-- Tapes: one per path, shared by every client using it (a script's clients and
-- the CLI's replay one recorded order).

local Tape = {}
Tape.__index = Tape

local tapes = {}

-- The tape for path in mode (one object per path and mode).
function M.tape(path, mode, timing)
  local key = path .. "\0" .. mode .. "\0" .. timing
  local t = tapes[key]
  if not t then
    t = setmetatable({ path = path, mode = mode, timing = timing, loaded = false, entries = {} }, Tape)
    tapes[key] = t
  end
  return t
end

-- Forget every tape (specs: a new run reads the file again).
function M.reset()
  tapes = {}
end

-- Read the file once (record mode starts empty and truncates on its first write).
-- -> true | nil, err
function Tape:load()
  if self.loaded then return self.load_err == nil, self.load_err end
  self.loaded = true
  if self.mode == "record" then return true end
  local f, ferr = io.open(self.path, "rb")
  if not f then
    if self.mode == "replay" then
      self.load_err = error_of(string.format("cassette %s cannot be read (%s)", self.path, tostring(ferr)))
      return nil, self.load_err
    end
    return true -- auto: a new cassette
  end
  local n = 0
  for line in f:lines() do
    n = n + 1
    if line:find("%S") then
      local e, derr = json.decode(line)
      if type(e) ~= "table" or type(e.request) ~= "table" or type(e.response) ~= "table" then
        f:close()
        self.load_err = error_of(string.format("cassette %s line %d is not an exchange: %s", self.path, n,
          derr or "expected {\"request\": {...}, \"response\": {...}}"))
        return nil, self.load_err
      end
      e.line = n
      self.entries[#self.entries + 1] = e
    end
  end
  f:close()
  self.lines = n
  return true
end

-- Append one exchange (a JSON text, secrets already removed) to the file.
function Tape:write(line)
  local mode = "ab"
  if self.mode == "record" and not self.truncated then mode = "wb" end
  local f, ferr = io.open(self.path, mode)
  if not f then return nil, ferr end
  self.truncated = true
  local ok, werr = f:write(line, "\n")
  f:close()
  if not ok then return nil, werr end
  self.lines = (self.lines or 0) + 1
  return self.lines
end

------------------------------------------------------------------------------
-- A request as a cassette sees it.

local function header_table(lines)
  local h = {}
  for _, line in ipairs(lines or {}) do
    local name, value = tostring(line):match("^([^:]+):%s*(.-)%s*$")
    if name then h[name] = value end
  end
  return h
end

local function split_query(q)
  local list = {}
  for pair in (q or ""):gmatch("[^&]+") do list[#list + 1] = pair end
  return list
end

local function percent_decode(s)
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

-- The path of url relative to base_url, with the query the call added: the
-- base URL's own query and every secret-named parameter left out.
local function relative_path(url, base_url)
  local base, base_q = tostring(base_url or ""):match("^([^?#]*)%??([^#]*)")
  base = (base or ""):gsub("/+$", "")
  local u, q = tostring(url):match("^([^?#]*)%??([^#]*)")
  local path
  if base ~= "" and u:sub(1, #base + 1) == base .. "/" then
    path = u:sub(#base + 2)
  else
    path = redact.url(u) -- another host: the whole URL, userinfo masked
  end
  local skip = {}
  for _, pair in ipairs(split_query(base_q)) do skip[pair] = true end
  local keep = {}
  for _, pair in ipairs(split_query(q)) do
    local name = percent_decode(pair:match("^([^=]*)"))
    if not skip[pair] and not redact.is_secret_name(name) then keep[#keep + 1] = pair end
  end
  if #keep > 0 then path = path .. "?" .. table.concat(keep, "&") end
  return path
end

-- What the cassette records and matches of a transfer spec, with the list of
-- secrets it sends (kept only for this call).
local function describe(spec, base_url)
  local headers = header_table(spec.headers)
  local secrets = redact.secrets { url = spec.url, headers = { headers } }
  local kept = {}
  for name, value in pairs(headers) do
    if not redact.is_secret_name(name) and not SKIP_HEADERS[name:lower()] then kept[name] = value end
  end
  local req = { method = spec.method, path = relative_path(spec.url, base_url), headers = json.object(kept) }
  if spec.stream then req.stream = true end
  local body = spec.body
  if body ~= nil then
    body = redact.text(body, secrets)
    local value = json.decode(body)
    if value ~= nil then req.body = value else req.body_text = body end
  end
  return req, secrets
end
M.relative_path = relative_path

------------------------------------------------------------------------------
-- Matching.

local function is_array(v)
  return type(v) == "table" and (getmetatable(v) == json.array_mt or json.is_array(v))
end

local function show(v)
  local ok, s = pcall(json.encode, v)
  s = ok and s or tostring(v)
  if #s > 60 then s = s:sub(1, 57) .. "..." end
  return s
end

-- The first place a and b differ: nil when equal as data, else "$.path: recorded X, sent Y".
-- count: a table counting the differing leaves (for "closest"), up to a bound.
local function diff(rec, sent, path, count)
  if rec == sent then return nil end
  local tr, ts = type(rec), type(sent)
  if tr ~= "table" or ts ~= "table" or is_array(rec) ~= is_array(sent) then
    if count then count.n = count.n + 1 end
    return string.format("%s: recorded %s, sent %s", path, rec == nil and "nothing" or show(rec),
      sent == nil and "nothing" or show(sent))
  end
  local first
  if is_array(rec) then
    for i = 1, math.max(#rec, #sent) do
      local d = diff(rec[i], sent[i], string.format("%s[%d]", path, i - 1), count)
      first = first or d
      if d and (not count or count.n > 1000) then return first end
    end
    return first
  end
  local keys, seen = {}, {}
  for k in pairs(rec) do keys[#keys + 1] = tostring(k); seen[tostring(k)] = true end
  for k in pairs(sent) do if not seen[tostring(k)] then keys[#keys + 1] = tostring(k) end end
  table.sort(keys)
  for _, k in ipairs(keys) do
    local d = diff(rec[k], sent[k], path .. "." .. k, count)
    first = first or d
    if d and (not count or count.n > 1000) then return first end
  end
  return first
end
M.diff = function(a, b) return diff(a, b, "$") end

local function body_of(r)
  if r.body ~= nil then return r.body end
  return r.body_text
end

local function same_request(e, req)
  local r = e.request
  return r.method == req.method and r.path == req.path
    and (r.body_text ~= nil) == (req.body_text ~= nil)
    and diff(body_of(r), body_of(req), "$") == nil
end

-- The first recorded exchange matching req that `used` (a client's set) lacks, or nil.
function Tape:find(req, used)
  for _, e in ipairs(self.entries) do
    if not used[e] and same_request(e, req) then return e end
  end
  return nil
end

-- The miss error: why nothing matched, naming the closest recorded request.
function Tape:miss(req, used_by)
  local what = req.method .. " " .. req.path
  local head = string.format("cassette %s (mode %s): no recorded exchange for %s", self.path, self.mode, what)
  local used = {}
  for _, e in ipairs(self.entries) do
    if same_request(e, req) then used[#used + 1] = tostring(e.line) end
  end
  if #used > 0 then
    return error_of(string.format("%s: it was recorded %d time%s (line%s %s), and this client replayed every one already",
      head, #used, #used == 1 and "" or "s", #used == 1 and "" or "s", table.concat(used, ", ")))
  end
  if #self.entries == 0 then
    return error_of(head .. ": the cassette has no exchange" .. (self.mode == "replay"
      and " (record it with cassette_mode = \"record\" or \"auto\")" or ""))
  end
  local best, best_score, best_why
  for _, e in ipairs(self.entries) do
    local r = e.request
    local count = { n = 0 }
    local why
    if r.method ~= req.method then
      why = string.format("the method differs: recorded %s, sent %s", tostring(r.method), req.method)
    elseif r.path ~= req.path then
      why = string.format("the path differs: recorded %s, sent %s", tostring(r.path), req.path)
    else
      why = "the body differs at " .. tostring(diff(body_of(r), body_of(req), "$", count))
    end
    local score = (r.method ~= req.method and 2e6 or 0) + (r.path ~= req.path and 1e6 or 0) + count.n
      + (used_by[e] and 0.5 or 0)
    if not best or score < best_score then best, best_score, best_why = e, score, why end
  end
  return error_of(string.format("%s; closest: line %d (%s %s%s): %s", head, best.line,
    tostring(best.request.method), tostring(best.request.path), used_by[best] and ", already replayed" or "", best_why))
end

------------------------------------------------------------------------------
-- Replay: a stand-in for a luachat.Transfer that never touches the network.

local Replay = {}
Replay.__index = Replay
Replay.__name = "luachat.CassetteReplay"

local function check_open(self)
  if self.closed then error("attempt to use a closed transfer", 3) end
end

local function copy_event(ev)
  if type(ev) == "table" then return { event = ev.event, data = ev.data } end
  return ev
end

-- A written event back as the C transfer hands it: a string, or {event=, data=}.
local function event_in(ev)
  if type(ev) == "table" and ev.json ~= nil then return json.encode(ev.json) end
  return copy_event(ev)
end

-- With recorded timing, wait until `offset` seconds after the start (sched.sleep:
-- yields in a task, drives the loop outside one).
function Replay:wait_until(offset)
  if not self.timing or type(offset) ~= "number" then return end
  local left = self.started + offset - core.now()
  if left > 0 then sched.sleep(left) end
end

function Replay:take_one()
  check_open(self)
  if self.cancelled then return nil end
  local i = self.pos
  local ev = self.events[i]
  if ev == nil then return nil end
  self:wait_until(self.times and self.times[i])
  self.pos = i + 1
  return event_in(ev)
end

function Replay:take()
  check_open(self)
  local list = {}
  while true do
    local ev = self:take_one()
    if ev == nil then break end
    list[#list + 1] = ev
    if self.timing then break end -- one at a time: the next is not due yet
  end
  return #list > 0 and list or nil
end

function Replay:has_events()
  check_open(self)
  if self.cancelled or self.events[self.pos] == nil then return false end
  self:wait_until(self.times and self.times[self.pos])
  return true
end

function Replay:done()
  if self.closed or self.cancelled then return true end
  if self.events[self.pos] ~= nil then return false end
  self:wait_until(self.seconds)
  return true
end

function Replay:result()
  check_open(self)
  local r = {}
  for _, k in ipairs(RESULT_FIELDS) do
    if self.response[k] ~= nil and self.response[k] ~= json.null then r[k] = self.response[k] end
  end
  r.status = math.tointeger(self.response.status) or 0
  local body = self.response.body
  if body == nil and self.response.json ~= nil then body = json.encode(self.response.json) end
  r.body = self.sse and "" or (body or "")
  r.sse = self.sse
  r.body_started = r.status ~= 0
  r.bytes = #r.body
  r.seconds = self.timing and math.max(0, core.now() - self.started) or 0
  r.done = self:done()
  if self.cancelled and not r.failure then
    r.failure, r.message = "cancelled", "cancelled"
  end
  return r
end

function Replay:cancel() self.cancelled = true end
function Replay:close() self.closed = true end
Replay.__close = Replay.close

function Replay:__tostring()
  return string.format("luachat.CassetteReplay (line %d of %s)", self.entry.line or 0, self.tape.path)
end

local function replay(tape, entry)
  local res = entry.response
  local events = type(res.events) == "table" and res.events or {}
  return setmetatable({
    tape = tape, entry = entry, response = res, events = events,
    times = type(res.times) == "table" and res.times or nil, seconds = res.seconds,
    sse = res.sse == true or type(res.events) == "table",
    pos = 1, started = core.now(), timing = tape.timing == "recorded",
    cancelled = false, closed = false,
  }, Replay)
end

------------------------------------------------------------------------------
-- Record: a real transfer, its events noted as they are taken, written on close.

local Recorder = {}
Recorder.__index = Recorder
Recorder.__name = "luachat.CassetteRecorder"

local function round_ms(s)
  return math.floor(s * 1000 + 0.5) / 1000
end

-- For a readable cassette: s decoded, when s is a JSON object or array that
-- luachat.json re-encodes as the same data (no surrogate escape, which decodes
-- to U+FFFD, and no "error" member, whose text an err.body shows as received);
-- else nil and s is written as the string it was.
local function as_json(s)
  if type(s) ~= "string" or s:find("\\u[dD][89abcdefABCDEF]") then return nil end
  local first = s:match("^%s*(.)")
  if first ~= "{" and first ~= "[" then return nil end
  local v = json.decode(s)
  if type(v) ~= "table" or v.error ~= nil then return nil end
  return v
end

-- An event as written: its data decoded ({json = value}) when as_json allows.
local function event_out(ev)
  if type(ev) == "string" then
    local v = as_json(ev)
    if v ~= nil then return { json = v } end
  end
  return ev
end

function Recorder:note(ev)
  local n = #self.events + 1
  self.events[n] = copy_event(ev)
  self.times[n] = round_ms(core.now() - self.started)
end

function Recorder:take_one()
  local ev = self.t:take_one()
  if ev ~= nil then self:note(ev) end
  return ev
end

function Recorder:take()
  local list = self.t:take()
  if list then
    for _, ev in ipairs(list) do self:note(ev) end
  end
  return list
end

function Recorder:has_events() return self.t:has_events() end
function Recorder:done() return self.t:done() end
function Recorder:result() return self.t:result() end
function Recorder:cancel() return self.t:cancel() end

-- Close the real transfer, writing its exchange first (when the server answered).
function Recorder:close()
  if self.closed then return end
  self.closed = true
  local ok, r = pcall(self.t.result, self.t)
  self.t:close()
  sched.wake(self.t) -- the task passing wake-ups on sees closed and ends
  if not ok or (r.status or 0) == 0 then return end -- no answer from a server: nothing to replay
  local res = { status = r.status }
  -- Timing only when asked for (cassette_timing = "recorded"): it changes with every
  -- recording, and a re-recorded cassette with the same answers should not be a diff.
  local timing = self.tape.timing == "recorded"
  if timing then res.seconds = round_ms(r.seconds or (core.now() - self.started)) end
  for _, k in ipairs(RESULT_FIELDS) do
    if r[k] ~= nil then res[k] = r[k] end
  end
  if r.sse then
    res.sse = true
    local events = json.array {}
    for i, ev in ipairs(self.events) do events[i] = event_out(ev) end
    res.events = events
    if timing then res.times = json.array(self.times) end
  else
    local v = r.status >= 200 and r.status < 300 and as_json(r.body)
    if v then res.json = v else res.body = r.body end
  end
  if not r.done and not r.failure then res.incomplete = true end -- closed before its end
  local okl, line = pcall(json.encode, { request = self.request, response = res }, { sort_keys = true })
  if not okl then return end
  line = redact.text(line, self.secrets)
  self.secrets = nil
  local n = self.tape:write(line)
  if n then
    local e = json.decode(line)
    e.line = n
    self.tape.entries[#self.tape.entries + 1] = e
    self.used[e] = true -- the recording client has had it; another client may replay it
  end
end
Recorder.__close = Recorder.close
Recorder.__gc = function(self) pcall(Recorder.close, self) end

function Recorder:__tostring()
  return "luachat.CassetteRecorder (" .. tostring(self.t) .. ")"
end

local function recorder(tape, t, req, secrets, used)
  local self = setmetatable({ tape = tape, t = t, request = req, secrets = secrets, used = used,
    events = {}, times = {}, started = core.now(), closed = false }, Recorder)
  -- Whoever waits on the recorder (sched.wait_transfer) is woken when the real
  -- transfer has news: core.poll reports the transfer itself, not this wrapper,
  -- so a small task waits on the real one and passes each wake-up on. It ends
  -- when the transfer is done or the recorder closed (close wakes it).
  sched.spawn(function()
    while not self.closed do
      sched.wait_transfer(t)
      if self.closed then return end
      sched.wake(self)
      if t:done() then return end
    end
  end)
  return self
end

------------------------------------------------------------------------------
-- The hook: request.start calls this when the request's client has a cassette.

local Binding = {}
Binding.__index = Binding

-- start(spec, start_live) -> a transfer-like object | nil, err. start_live(spec)
-- starts a real transfer (record, or auto's misses).
function Binding:start(spec, start_live)
  local tape = self.tape
  local ok, lerr = tape:load()
  if not ok then return nil, lerr end
  local req, secrets = describe(spec, self.client.base_url)
  if tape.mode ~= "record" then
    local e = tape:find(req, self.used)
    if e then
      self.used[e] = true
      return replay(tape, e)
    end
    if tape.mode == "replay" then return nil, tape:miss(req, self.used) end
  end
  if not tape.writable then
    -- Find out now, not after the exchange, that the file cannot be written.
    local f, ferr = io.open(tape.path, "ab")
    if not f then
      return nil, error_of(string.format("cassette %s cannot be written (%s)", tape.path, tostring(ferr)))
    end
    f:close()
    tape.writable = true
  end
  local t, err = start_live(spec)
  if not t then return nil, err end
  return recorder(tape, t, req, secrets, self.used)
end

-- The cassette of a new client: its options, else the environment; nil when none.
-- Raises (like luaL_argerror) for a bad value in the environment, blaming the
-- line `level` frames above this function (1: its caller).
function M.for_client(client, opts, level)
  local function env(key)
    local v, why = env_value(key)
    if why then error("bad argument #1 to 'client' (" .. why .. ")", level + 2) end
    return v
  end
  local path = opts.cassette
  if path == false then return nil end
  path = path or env("cassette")
  if not path then return nil end
  local mode = opts.cassette_mode or env("cassette_mode") or "auto"
  local timing = opts.cassette_timing or env("cassette_timing") or "instant"
  -- Each client replays from the start of the cassette (its own set of exchanges had):
  -- a second test, or a second run in one process, replays the same conversation again.
  return setmetatable({ tape = M.tape(path, mode, timing), client = client, path = path, mode = mode,
    used = {} }, Binding)
end

return M
