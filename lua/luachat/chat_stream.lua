-- luachat.chat_stream: streamed chat completions (the luachat.Stream object).
--
-- Owns: starting a streaming request (retried only until the first event
-- arrives), turning SSE events into chunks, in-band errors, the end of a
-- stream ([DONE], a clean close, a cut), and handing back one accumulated
-- final message beside any error, so nothing that arrived is lost.
-- Every chunk is a plain decoded table, accumulated by luachat.accumulate's
-- accumulator (luachat.accumulate, the one owner of the merge rules). The text path (on_text,
-- s:text()) may skip building tables: core.scan_text reads a text-only chunk
-- (an allow-list of keys) and the accumulator takes its text via acc:add_text;
-- any other chunk is decoded and goes through acc:add as usual.
-- What a request sends, its errors and retries are luachat.request's (shared
-- with luachat.client, which requires this module; this one never requires it).
-- Never: retries once data has been delivered, or lets a callback error
-- leave a transfer running.
local core = require "luachat.core"
local json = require "luachat.json"
local sched = require "luachat.sched"
local accumulate = require "luachat.accumulate"
local request = require "luachat.request"
local log = require "luachat.log"
local util = require "luachat.util"
local options = require "luachat.options"

local M = {}

local Stream = {}
Stream.__index = Stream
Stream.__name = "luachat.Stream"

local decode = json.decode
local scan_text = core.scan_text
local type = type -- the per-event paths call it on every event: a local, not a global lookup
local traceback = debug.traceback
-- Chunks keep a surrogate half at a string's edge as WTF-8 bytes: its partner may start the
-- next chunk, and the accumulator joins them (luachat.accumulate, join_surrogate_halves).
local CHUNK_DECODE = { surrogates = "wtf8" }
local is_done_data = accumulate.is_done_data
local AFTER_DONE_GRACE = 1.0 -- seconds to let the body end cleanly after [DONE], for keep-alive

local one_line = util.one_line

local function copy(t)
  local c = {}
  for k, v in pairs(t) do c[k] = v end
  return setmetatable(c, getmetatable(t))
end

-- The JSON body of a streaming request: stream=true, usage included by default.
-- A value JSON cannot hold raises as a bad argument to fname, `level` frames up.
local function stream_body(req, fname, level)
  local body = copy(req)
  body.stream = true
  if body.stream_options == nil then
    body.stream_options = { include_usage = true }
  elseif body.stream_options == false then
    body.stream_options = nil -- for servers that reject the field
  end
  local encoded = request.encode_body(body, fname, 1, level + 1) -- not a tail call: keeps the levels
  return encoded
end

-- s without any credential this stream's request sent (the client's and the call's own).
function Stream:redact(s, cut)
  return request.redact(self.client, s, self.opts, cut)
end

function Stream:fail(kind, message, extra)
  local e = { kind = kind, message = one_line(self:redact(self.what .. ": " .. message)) }
  for k, v in pairs(extra or {}) do e[k] = v end
  self:finish(core.error(e))
end

-- End the stream (err may be nil), releasing the transfer.
function Stream:finish(err)
  if self.finished then return end
  self.finished = true
  self.err = err
  local t = self.transfer
  if t then
    if self.done_seen and not t:done() then
      -- Let the body end so the connection can be reused; bounded.
      local deadline = core.now() + AFTER_DONE_GRACE
      while not t:done() and core.now() < deadline do
        if t:take() == nil then sched.wait_transfer(t, deadline - core.now()) end
      end
    end
    t:close()
  end
  log.debug("%s: stream ended after %d events in %.3fs%s", self.what, self.nevents,
    core.now() - (self.started or core.now()), err and (": " .. err.message) or "")
end

local function api_error_text(data)
  local msg = request.server_message(data)
  return msg or "error event without a message"
end

-- One SSE event: returns a decoded chunk, or nil (skipped, or the stream ended).
function Stream:handle(ev)
  local n = self.nevents + 1
  self.nevents = n
  local data = ev
  if type(ev) == "table" then
    data = ev.data
    if ev.event == "error" then
      local body = self:redact(data) -- before server_message cuts it
      self:fail("api", "error event in the stream: " .. api_error_text(body), { body = body })
      return nil
    end
    -- Only unnamed ("message") events are chunks (C queues those as plain
    -- strings); any other name (ping, keep-alive, a vendor's own) is not part
    -- of the completion: skipped.
    log.debug("%s: skipped a named event (%s) in the stream", self.what, (tostring(ev.event):gsub("%c", "?")))
    return nil
  end
  if data == "[DONE]" or (#data < 16 and is_done_data(data)) then
    self.done_seen = true
    self:finish(nil)
    return nil
  end
  -- A text-only chunk (core.scan_text) gives its text to the accumulator without the merge
  -- walk (acc:add_text); the script still gets the whole decoded table.
  local index, content, refusal, reasoning, tool_index, args, head, has_role, fingerprint, tier = scan_text(data)
  local taken = index ~= nil
    and self.acc:add_text(index, content, refusal, reasoning, tool_index, args, head, has_role, fingerprint, tier)
  local chunk, derr = decode(data, CHUNK_DECODE)
  if type(chunk) ~= "table" then
    self:fail("deserialise", string.format("invalid JSON in event %d: %s", n,
      derr or ("expected an object, got " .. type(chunk))), { body = self:redact(data):sub(1, 65536) })
    return nil
  end
  if taken then return chunk end
  local api_err = self.acc:add(chunk)
  if api_err then
    self:fail("api", "error in the stream: " .. tostring(api_err.message),
      { body = self:redact(data), code = self:redact(api_err.code) })
    return nil
  end
  return chunk
end

-- A whole completion (a server that ignored stream=true) as the one chunk that
-- would have carried it: every field kept, each choice's message as its delta
-- (tool calls given their index, as deltas number them). Made from a deep copy
-- (the accumulator's): a callback that changes the chunk does not change the final.
function M.chunk_of_completion(doc)
  local chunk = accumulate.copy_value(doc)
  chunk.object = "chat.completion.chunk"
  if type(chunk.choices) ~= "table" then chunk.choices = json.array {} end
  for _, choice in ipairs(chunk.choices) do
    if type(choice) == "table" then
      local msg = choice.message
      choice.message = nil
      if type(msg) == "table" then
        choice.delta = msg
        for j, tc in ipairs(type(msg.tool_calls) == "table" and msg.tool_calls or {}) do
          if type(tc) == "table" and tc.index == nil then
            tc.index = j - 1
          end
        end
      end
    end
  end
  return chunk
end

-- The transfer ended before [DONE]: a clean end completes the stream; a cut keeps what arrived.
-- Returns the one chunk of a whole completion (a server that ignored stream=true), else nothing.
function Stream:on_transfer_done()
  local r = self.transfer:result()
  if r.failure then
    local e = request.error_for(self.client, r, "stream", self.opts)
    local msg = string.format("stream cut short after %d event%s: %s", self.nevents, self.nevents == 1 and "" or "s", r.message)
    -- events: the server was reached and answered (what arrived is kept).
    self:fail(e.kind, msg, { status = r.status, request_id = r.request_id, events = self.nevents })
    return
  end
  if not r.sse then
    local err = request.error_for(self.client, r, "stream", self.opts)
    if err then
      err.message = one_line(self.what .. ": " .. err.message:gsub("^stream: ", ""))
      self:finish(err)
      return
    end
    -- A 2xx JSON body: the server ignored stream=true and sent the whole completion.
    -- It is the final as sent, and the callbacks and iterators get it as one chunk.
    local doc, derr = decode(r.body)
    if type(doc) == "table" and doc.choices then
      self.full = doc
      log.debug("%s: the server ignored stream=true (a whole completion): delivered as one chunk", self.what)
      self:finish(nil)
      return M.chunk_of_completion(doc)
    elseif type(doc) == "table" and doc.error then
      local body = self:redact(r.body)
      self:fail("api", api_error_text(body), { status = r.status, body = body })
    else
      self:fail("deserialise", "expected an event stream, got " .. (r.content_type or "no content-type")
        .. (derr and (" (" .. derr .. ")") or ""), { status = r.status, body = self:redact(r.body) })
    end
    return
  end
  if self.nevents == 0 then
    self:fail("deserialise", "the stream ended without any event (content-type "
      .. (r.content_type or "none") .. ")", { status = r.status })
    return
  end
  self:finish(nil) -- ended cleanly without [DONE]: complete
end

-- Nothing is queued: finish the stream when the transfer is done, else wait for an event.
-- The loops below take events themselves (t:take_one() per event, no other call between
-- events: a stream is 100,000 of them), and come here only when the queue is empty.
-- Returns the chunk of a whole completion when that is how the stream ended (see
-- on_transfer_done): the loops hand it on like any chunk.
function Stream:wait_or_finish()
  local t = self.transfer
  if t:done() then
    return self:on_transfer_done()
  end
  sched.wait_transfer(t)
  return nil
end

-- The next decoded chunk, or nil at the end (see :result() for the outcome).
function Stream:next()
  while not self.finished do
    local ev = self.transfer:take_one()
    local chunk
    if ev then
      chunk = self:handle(ev)
    else
      chunk = self:wait_or_finish()
    end
    if chunk then return chunk end
  end
  return nil
end

function Stream:chunks()
  return function() return self:next() end
end

-- emit(text, index) for each choice of chunk with non-empty content.
local function emit_text(chunk, emit)
  local choices = chunk.choices
  if type(choices) == "table" then
    for i = 1, #choices do
      local c = choices[i]
      local d = type(c) == "table" and c.delta
      local text = type(d) == "table" and d.content
      if type(text) == "string" and text ~= "" then
        local index = c.index
        emit(text, type(index) == "number" and index or 0)
      end
    end
  end
end

-- The text path's work on one event: emit(text, index) for each choice's non-empty content
-- (a text-only chunk skips the decode). Returns the decoded chunk when one was built (for
-- on_chunk), else nil.
function Stream:text_event(ev, emit, want_chunk)
  if not want_chunk and type(ev) == "string" then
    local index, content, refusal, reasoning, tool_index, args, head, has_role, fingerprint, tier = scan_text(ev)
    if index ~= nil
      and self.acc:add_text(index, content, refusal, reasoning, tool_index, args, head, has_role, fingerprint, tier) then
      self.nevents = self.nevents + 1
      if content then emit(content, index) end
      return nil
    end
  end
  local chunk = self:handle(ev)
  if chunk then emit_text(chunk, emit) end
  return chunk
end

-- for text, index in s:text() do ... end: the text of every choice as it arrives (no chunk tables
-- for text-only chunks); s:result() afterwards gives the final message and the error.
function Stream:text()
  local queue, head = {}, 1
  local function emit(text, index)
    queue[#queue + 1] = text
    queue[#queue + 1] = index
  end
  return function()
    while true do
      if head <= #queue then
        local text, index = queue[head], queue[head + 1]
        queue[head], queue[head + 1] = nil, nil
        head = head + 2
        if head > #queue then queue, head = {}, 1 end
        return text, index
      end
      if self.finished then return nil end
      local ev = self.transfer:take_one()
      if ev then
        self:text_event(ev, emit, false)
      else
        local whole = self:wait_or_finish()
        if whole then emit_text(whole, emit) end
      end
    end
  end
end

-- Hand every chunk to fn until the stream ends or fn returns false; a Lua error in fn
-- closes the stream and propagates with its traceback. With on_text, each choice's text
-- goes to on_text(text, index) first; without on_chunk, text-only chunks are never built.
function Stream:each(on_chunk, on_text)
  local status, err
  local function emit(text, index)
    if status then return end
    local ok, ret = xpcall(on_text, traceback, text, index)
    if not ok then
      status, err = "error", ret
    elseif ret == false then
      status = "stop"
    end
  end
  local t, want_chunk = self.transfer, on_chunk ~= nil
  while not self.finished do
    local ev, chunk = t:take_one(), nil
    if not ev then
      chunk = self:wait_or_finish()
      if chunk and on_text then emit_text(chunk, emit) end
    elseif on_text then
      chunk = self:text_event(ev, emit, want_chunk)
    else
      chunk = self:handle(ev)
    end
    if chunk and on_chunk and not status then
      local ok, ret = xpcall(on_chunk, traceback, chunk)
      if not ok then
        status, err = "error", ret
      elseif ret == false then
        status = "stop"
      end
    end
    if status == "error" then
      self:close()
      error(err, 0)
    elseif status == "stop" then
      self:fail("cancelled", string.format("stream cancelled by the callback after %d events", self.nevents))
      return
    end
  end
end

-- Drain what is left; return the accumulated final (always) and the error, if any.
function Stream:result()
  while self:next() do end
  return self.full or self.acc:result(), self.err
end

-- Stop early: the transfer is cancelled; result() keeps what arrived, err kind "cancelled".
function Stream:close()
  if not self.finished then
    self:fail("cancelled", string.format("stream closed by the script after %d events", self.nevents))
  end
end
Stream.__close = Stream.close
Stream.__gc = Stream.close

function Stream:__tostring()
  return string.format("luachat.Stream (%s, %d events)", self.finished and "finished" or "open", self.nevents)
end

-- client:open_stream(req) -> stream | nil, err (nothing arrived).
-- fname, up: the public function called, and how many luachat frames lie
-- above M.open before the user's (0: client:open_stream tail-calls M.open;
-- 1: M.stream). A request JSON cannot hold blames the user's line.
function M.open(client, req, opts, fname, up)
  request.check_chat_request(req, "open_stream")
  local spec = request.transfer_spec(client, "POST", "chat/completions",
    stream_body(req, fname or "open_stream", 2 + (up or 0)), opts, true, request.idempotency_key())
  local what = request.describe(spec)
  local started = core.now()
  local t, err = request.with_retries(client, spec, function(attempt)
    started = core.now()
    local tr, serr = request.start(spec)
    if not tr then return nil, nil, serr end
    local guard <close> = request.owned(tr)
    while not tr:has_events() and not tr:done() do
      sched.wait_transfer(tr)
    end
    local r = tr:result()
    log.debug("%s -> %s in %.3fs%s%s%s", what, r.failure or r.status, core.now() - started,
      tr:has_events() and " (first event)" or "", r.request_id and (" (request " .. r.request_id .. ")") or "",
      attempt > 0 and (" [attempt " .. attempt + 1 .. "]") or "")
    if tr:has_events() then guard.keep = true; return tr end
    local e = request.error_for(client, r, what, opts)
    if e then return nil, r, e end -- the guard closes tr
    guard.keep = true
    return tr
  end)
  if not t then return nil, err end
  return setmetatable({
    client = client, opts = opts, transfer = t, what = what, acc = accumulate.accumulator(),
    nevents = 0, finished = false, done_seen = false, started = started,
  }, Stream)
end

-- The handler table's fields (client:stream's second argument as a table).
local HANDLERS = {
  on_chunk = options.with(options.func, { must = "must be a function" }),
  on_text = options.with(options.func, { must = "must be a function" }),
}

-- client:stream(req, fn) -> final, err. fn(chunk) per chunk; return false to stop.
-- client:stream(req, { on_text = function(text, index) end, on_chunk = fn }): both optional;
-- with on_text alone, text-only chunks are never built as tables.
function M.stream(client, req, handlers, opts)
  local on_chunk, on_text
  if type(handlers) == "function" then
    on_chunk = handlers
  elseif type(handlers) == "table" then
    -- Level 2: client:stream tail-calls this, so its caller is the user's line.
    options.check("stream", handlers, HANDLERS, 2, 2)
    on_chunk, on_text = handlers.on_chunk, handlers.on_text
  elseif handlers ~= nil then
    error("bad argument #2 to 'stream' (function or table expected, got " .. type(handlers) .. ")", 2)
  end
  -- <close>: an error out of here (an interrupt while waiting) closes the stream and its
  -- transfer at once; after s:result() the stream is finished and closing it does nothing.
  local s <close>, err = M.open(client, req, opts, "stream", 1)
  if not s then return nil, err end
  if on_chunk or on_text then s:each(on_chunk, on_text) end
  return s:result()
end

M.Stream = Stream
return M
