-- luachat.batch_remote: `luachat batch --remote`: hand a requests file to the
-- provider's own Batch API, wait for it, and download its results.
--
-- Owns: the multipart upload to /files (purpose=batch), creating the batch
-- (/batches: endpoint, completion_window "24h"), polling its status, and
-- writing the output and error files into the results file in the same
-- format as a local run (luachat.batch), each custom id once.
-- Never: uploads an input that luachat.batch.validate refuses, or writes a
-- custom id the results file already has.
--
--   remote.run{ client =, input = "in.jsonl" | batch_id = "batch_...", output =,
--     poll_interval = 10, max_retries = 5, resume = bool,
--     on_created = function(batch) end, on_status = function(batch) end }
--   -> { total, ok, failed, skipped, tokens, batch_id } | nil, err
local core = require "luachat.core"
local json = require "luachat.json"
local sched = require "luachat.sched"
local client_mod = require "luachat.client"
local request = require "luachat.request"
local redact = require "luachat.redact"
local batch = require "luachat.batch"
local idset = require "luachat.batch_idset"
local log = require "luachat.log"

local M = {}

local TERMINAL = { completed = true, failed = true, expired = true, cancelled = true }

-- One request with a raw body and content type; returns the transfer result
-- (body as bytes) | nil, err. Retries as a local run does. body: a string, or
-- { prefix, file, suffix }: prefix .. the bytes of file (an open handle of a
-- regular file) .. suffix, streamed from the file by the engine (core.start's
-- body_file), every attempt from its first byte.
local function raw(client, method, path, body, content_type, max_retries)
  local idem = method == "POST" and ("luachat-batch-" .. string.format("%08x", math.random(0, 0x7fffffff))) or nil
  local attempt = 0
  local streamed = type(body) == "table"
  while true do
    local spec = client:transfer_spec(method, path, not streamed and body or nil, nil, false, idem)
    if streamed then
      spec.body_prefix, spec.body_file, spec.body_suffix = body[1], body[2], body[3]
    end
    if content_type then
      local set = false
      for i, h in ipairs(spec.headers) do
        if h:lower():find("^content%-type:") then
          spec.headers[i] = "Content-Type: " .. content_type
          set = true
        end
      end
      if not set then spec.headers[#spec.headers + 1] = "Content-Type: " .. content_type end
    end
    local what = client_mod.describe(spec)
    local r, err
    local t, serr = core.start(spec)
    if not t then
      err = serr
    else
      r = request.wait_result(t)
      err = client:error_for(r, what)
    end
    if r then
      log.debug("%s -> %s in %.3fs%s", what, r.failure or r.status, r.seconds or 0, attempt > 0 and (" [attempt " .. attempt + 1 .. "]") or "")
    end
    if not err then return r end
    err.retries = attempt
    local sr = r and r.should_retry
    local again = sr == "true" or (sr ~= "false" and err.retryable and err.kind ~= "cancelled")
    if attempt >= max_retries or not again then
      log.debug("%s; not retrying", err.message)
      return nil, err
    end
    local delay = batch.retry_delay(r, attempt)
    log.debug("%s; retry %d of %d in %.2fs", err.message, attempt + 1, max_retries, delay)
    sched.sleep(delay)
    attempt = attempt + 1
  end
end

local function json_call(client, method, path, value, max_retries)
  local r, err = raw(client, method, path, value ~= nil and json.encode(value) or nil, nil, max_retries)
  if not r then return nil, err end
  local doc, derr = json.decode(r.body)
  if type(doc) ~= "table" then
    return nil, core.error { kind = "deserialise", status = r.status, request_id = r.request_id,
      message = method .. " " .. path .. ": response is not a JSON object (" .. tostring(derr) .. ")" }
  end
  return doc
end

-- A multipart/form-data body: fields { {name, value [, filename, type]} }
-- -> body, content type. boundary: random unless given.
-- A value `false` is a file's bytes the caller streams: then the answer is
-- the text before them and the text after them (prefix, suffix, content
-- type), and prefix .. bytes .. suffix is the body M.multipart makes with
-- those bytes as the value, byte for byte.
function M.multipart(fields, boundary)
  boundary = boundary or ("luachat-" .. string.format("%08x%08x", math.random(0, 0x7fffffff), math.random(0, 0x7fffffff)))
  local pieces, parts = {}, {}
  for _, f in ipairs(fields) do
    local disp = 'form-data; name="' .. f[1] .. '"'
    if f[3] then disp = disp .. '; filename="' .. f[3]:gsub('["\r\n]', "_") .. '"' end
    parts[#parts + 1] = "--" .. boundary .. "\r\nContent-Disposition: " .. disp .. "\r\n"
      .. (f[4] and ("Content-Type: " .. f[4] .. "\r\n") or "") .. "\r\n"
    if f[2] == false then
      pieces[#pieces + 1] = table.concat(parts)
      parts = {}
    else
      parts[#parts + 1] = f[2]
    end
    parts[#parts + 1] = "\r\n"
  end
  parts[#parts + 1] = "--" .. boundary .. "--\r\n"
  pieces[#pieces + 1] = table.concat(parts)
  pieces[#pieces + 1] = "multipart/form-data; boundary=" .. boundary
  return table.unpack(pieces)
end

-- The one endpoint every line of the input names (a provider batch has one):
-- the lines' path, without a query (the file keeps each line's url as it is).
local function endpoint_of(src)
  local eps, n = {}, 0
  local f, oerr = src:open()
  if not f then return nil, core.error { kind = "input", message = "cannot read the input: " .. tostring(oerr) } end
  for text in f:lines() do
    if text:find("%S") then
      local req = batch.parse_line(text)
      if req and not eps[req.path] then
        eps[req.path] = true
        n = n + 1
      end
    end
  end
  src:release(f)
  if n ~= 1 then
    local list = {}
    for u in pairs(eps) do list[#list + 1] = u end
    table.sort(list)
    return nil, core.error { kind = "input", message = string.format(
      "%s: a remote batch has one endpoint, the input names %d: %s", src.name, n, table.concat(list, ", ")) }
  end
  return next(eps)
end

-- run(opts) -> summary | nil, err. See the top of the file.
function M.run(o)
  if o.input == nil then return M.run_checked(o, nil) end
  local src, serr = batch.open_input(o.input) -- a pipe is copied: the input is read three times
  if not src then return nil, serr end
  local res = table.pack(pcall(M.run_checked, o, src))
  src:close()
  if not res[1] then error(res[2], 0) end
  return table.unpack(res, 2, res.n)
end

function M.run_checked(o, src)
  local client = o.client or require("luachat").client()
  local started = core.now()
  local max_retries = o.max_retries or 5
  local interval = o.poll_interval or 10
  local output = o.output
  local done -- ids the output answers: an idset (luachat.batch_idset)
  local written = {} -- ids written by this run
  -- as for a local run: not the input, not a directory, no results without resume, only result lines
  local d, cerr = batch.check_output(o, output)
  if d == nil then return nil, cerr end
  done = d or nil

  local b, err
  if o.batch_id then
    b, err = json_call(client, "GET", "batches/" .. o.batch_id, nil, max_retries)
    if not b then return nil, err end
  else
    local v, verr = batch.validate(src, nil, nil)
    if not v then return nil, verr end
    local endpoint, eerr = endpoint_of(src)
    if not endpoint then return nil, eerr end
    local f, ferr = src:open()
    if not f then return nil, core.error { kind = "input", message = "cannot read the input: " .. tostring(ferr) } end
    local name = o.input == "-" and "stdin.jsonl" or o.input:match("([^/]*)$")
    local prefix, suffix, ctype = M.multipart { { "purpose", "batch" }, { "file", false, name, "application/jsonl" } }
    -- The file is streamed from f (a regular file, or standard input's
    -- unnamed copy): never read into memory. f is released however raw ends.
    local r, uerr
    do
      local _ <close> = setmetatable({}, { __close = function() src:release(f) end })
      r, uerr = raw(client, "POST", "files", { prefix, f, suffix }, ctype, max_retries)
    end
    if not r then return nil, uerr end
    local file = json.decode(r.body)
    if type(file) ~= "table" or type(file.id) ~= "string" then
      return nil, core.error { kind = "deserialise", message = "POST files: no file id in the answer" }
    end
    b, err = json_call(client, "POST", "batches",
      { input_file_id = file.id, endpoint = endpoint, completion_window = "24h" }, max_retries)
    if not b then return nil, err end
    if o.on_created then o.on_created(b) end
  end
  if type(b.id) ~= "string" then
    return nil, core.error { kind = "deserialise", message = "the batch has no id" }
  end
  local id = b.id
  while not TERMINAL[b.status] do
    if o.on_status then o.on_status(b) end
    sched.sleep(interval)
    b, err = json_call(client, "GET", "batches/" .. id, nil, max_retries)
    if not b then return nil, err end
  end
  if o.on_status then o.on_status(b) end

  local counts = type(b.request_counts) == "table" and b.request_counts or {}
  local summary = { total = math.tointeger(counts.total) or 0, ok = 0, failed = 0, skipped = 0, tokens = 0,
    batch_id = id, status = b.status, output = output }
  local out, oerr = io.open(output, "ab")
  if not out then return nil, core.error { kind = "environment", message = "cannot open the output: " .. tostring(oerr) } end
  local seen = 0
  local secrets = request.secrets(client) -- an echoed credential never reaches the file
  for _, key in ipairs { "output_file_id", "error_file_id" } do
    local fid = b[key]
    if type(fid) == "string" then
      local r, ferr = raw(client, "GET", "files/" .. fid .. "/content", nil, nil, max_retries)
      if not r then
        out:close()
        return nil, ferr
      end
      for line in r.body:gmatch("[^\n]+") do
        local doc = json.decode(line)
        local cid = type(doc) == "table" and doc.custom_id
        if type(cid) == "string" then
          seen = seen + 1
          if written[cid] or (done and done:has(idset.hash(cid))) then
            summary.skipped = summary.skipped + 1
          else
            written[cid] = true
            out:write(redact.text((line:gsub("\r$", "")), secrets), "\n")
            out:flush()
            local resp = type(doc.response) == "table" and doc.response or {}
            local status = math.tointeger(resp.status_code)
            if (doc.error == nil or doc.error == json.null) and status and status >= 200 and status < 300 then
              summary.ok = summary.ok + 1
            else
              summary.failed = summary.failed + 1
            end
            local usage = type(resp.body) == "table" and resp.body.usage
            local used = type(usage) == "table" and math.tointeger(usage.total_tokens)
            if used then summary.tokens = summary.tokens + used end
          end
        end
      end
    end
  end
  out:close()
  if summary.total < seen then summary.total = seen end
  summary.seconds = core.now() - started
  -- Requests the provider never answered (expired, cancelled) count as failed.
  summary.failed = summary.failed + math.max(0, summary.total - seen)
  if b.status == "failed" then
    local errs = type(b.errors) == "table" and type(b.errors.data) == "table" and b.errors.data or {}
    local first = type(errs[1]) == "table" and errs[1].message or "no reason given"
    return nil, core.error { kind = "api", message = "batch " .. id .. " failed: " .. tostring(first) }
  end
  return summary
end

return M
