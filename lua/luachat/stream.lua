-- luachat.stream: turns the chunks of a streamed chat completion into one
-- final message shaped like a non-streamed `chat.completion`.
--
-- Owns: accumulation rules that hold across providers (see README
-- "Streaming"): choices by index, text/refusal/reasoning concatenated,
-- first non-empty id/model/type/name (first non-zero created), arguments concatenated byte for byte,
-- last non-null finish_reason and usage, nulls never overwriting values.
-- Never: re-serialises tool arguments, or fails on a chunk shape it does not know.
local json = require "luachat.json"

local null = json.null
local concat = table.concat

local M = {}

local Acc = {}
Acc.__index = Acc

function M.accumulator()
  return setmetatable({ by_index = {}, order = {}, cache = nil, need_head = true }, Acc)
end

local function nonempty(v)
  return type(v) == "string" and v ~= ""
end

local function one_line(s)
  return (s:gsub("[\r\n]+", " "))
end

-- An in-band error (`{"error": ...}` in a chunk) as {message, code, type, param}.
local function error_description(e)
  if type(e) == "string" then
    return { message = e ~= "" and one_line(e) or "error in the stream" }
  end
  if type(e) ~= "table" then return { message = "error in the stream" } end
  local msg = e.message
  if not nonempty(msg) then
    local ok, enc = pcall(json.encode, e)
    msg = ok and enc or "error in the stream"
  end
  local function val(v) if v == null then return nil end return v end
  return { message = one_line(msg), code = val(e.code), type = val(e.type), param = val(e.param) }
end
M.error_description = error_description

local function choice_state(self, index)
  local st = self.by_index[index]
  if not st then
    st = { index = index, content = {}, refusal = {}, reasoning = {}, calls = {}, call_by_index = {} }
    self.by_index[index] = st
    self.order[#self.order + 1] = index
  end
  return st
end

local function merge_tool_call(st, tc)
  if type(tc) ~= "table" then return end
  local idx = tc.index
  local id = tc.id
  if not nonempty(id) then id = nil end
  local call
  if type(idx) == "number" then
    call = st.call_by_index[idx]
    -- Ollama reuses index 0 for every call: a different id is a new call.
    if call and id and call.id and id ~= call.id then call = nil end
  elseif not id then
    call = st.last_call -- no index, no id: a continuation of the last call
  end
  if not call then
    call = { args = {} }
    st.calls[#st.calls + 1] = call
    if type(idx) == "number" then st.call_by_index[idx] = call end
  end
  st.last_call = call
  if id and not call.id then call.id = id end
  if not call.type and nonempty(tc.type) then call.type = tc.type end
  local fn = tc["function"]
  if type(fn) == "table" then
    if not call.name and nonempty(fn.name) then call.name = fn.name end
    local a = fn.arguments
    if type(a) == "string" then
      if a ~= "" then call.args[#call.args + 1] = a end
    elseif type(a) == "table" then
      -- A provider that sends parsed arguments: keep them as JSON text.
      call.args[#call.args + 1] = json.encode(a)
    end
  end
end

-- Add one decoded chunk. Returns nil, or an error description when the chunk is an error.
function Acc:add(chunk)
  if type(chunk) ~= "table" then return nil end
  local e = chunk.error
  if e ~= nil and e ~= null then return error_description(e) end
  self.cache = nil
  -- Hot path (once per chunk): plain type tests inline, no helper calls.
  if self.need_head then
    local v = chunk.id
    if self.id == nil and type(v) == "string" and v ~= "" then self.id = v end
    v = chunk.model
    if self.model == nil and type(v) == "string" and v ~= "" then self.model = v end
    v = chunk.created
    -- 0 is a placeholder (Azure's prompt-filter chunk), as "" is for id and model
    if self.created == nil and type(v) == "number" and v > 0 then self.created = v end
    v = chunk.system_fingerprint
    if self.fingerprint == nil and type(v) == "string" and v ~= "" then self.fingerprint = v end
    self.need_head = self.id == nil or self.model == nil or self.created == nil or self.fingerprint == nil
  end
  local usage = chunk.usage
  if type(usage) == "table" then self.usage = usage end
  local choices = chunk.choices
  if type(choices) ~= "table" then return nil end
  for i = 1, #choices do
    local c = choices[i]
    if type(c) == "table" then
      local index = c.index
      if type(index) ~= "number" then index = 0 end
      local st = self.by_index[index] or choice_state(self, index)
      local delta = c.delta
      if type(delta) ~= "table" then delta = c.message end -- a whole message in a stream
      if type(delta) == "table" then
        local text = delta.content
        if type(text) == "string" and text ~= "" then
          local parts = st.content
          parts[#parts + 1] = text
        end
        if not st.role then
          local role = delta.role
          if type(role) == "string" and role ~= "" then st.role = role end
        end
        local refusal = delta.refusal
        if type(refusal) == "string" and refusal ~= "" then st.refusal[#st.refusal + 1] = refusal end
        -- Some providers send both shapes of the same reasoning: take one per delta.
        local r = delta.reasoning_content
        if type(r) ~= "string" or r == "" then r = delta.reasoning end
        if type(r) == "string" and r ~= "" then st.reasoning[#st.reasoning + 1] = r end
        local tcs = delta.tool_calls
        if type(tcs) == "table" then
          for j = 1, #tcs do merge_tool_call(st, tcs[j]) end
        end
      end
      local fr = c.finish_reason
      if type(fr) == "string" and fr ~= "" then st.finish_reason = fr end
      local lp = c.logprobs
      if type(lp) == "table" and type(lp.content) == "table" then
        st.logprobs = st.logprobs or {}
        for j = 1, #lp.content do st.logprobs[#st.logprobs + 1] = lp.content[j] end
      end
    end
  end
  return nil
end

-- A surrogate pair split across chunks ("\ud83d" ending one delta, "\ude00" starting the
-- next) reaches the parts as the WTF-8 bytes of each half (ED A0-BF xx, see the stream
-- decoder in chat_stream.lua). Joined here, on the whole text, so the C fast path and
-- the Lua path (which append the same parts) agree by construction: a high half followed by
-- a low half becomes the real character; any other half becomes U+FFFD. Other bytes are
-- untouched.
local function surrogate(b2, b3)
  return 0xD000 | ((b2:byte() & 0x3F) << 6) | (b3:byte() & 0x3F)
end

local function join_pair(h2, h3, l2, l3)
  return utf8.char(0x10000 + ((surrogate(h2, h3) - 0xD800) << 10) + (surrogate(l2, l3) - 0xDC00))
end

function M.join_surrogate_halves(s)
  if not s:find("\xED", 1, true) then return s end -- the common case: one memchr
  s = s:gsub("\xED([\xA0-\xAF])([\x80-\xBF])\xED([\xB0-\xBF])([\x80-\xBF])", join_pair)
  return (s:gsub("\xED[\xA0-\xBF][\x80-\xBF]", "\u{FFFD}"))
end
local join_halves = M.join_surrogate_halves

local function text_of(parts)
  return join_halves(concat(parts))
end

-- For printing text as it arrives (the CLI, the agent's on_text): returns feed(text), which
-- returns what can be shown now. A high half ending text is held back until the next text,
-- whose leading low half it joins; feed(nil) at the end returns what is still held (U+FFFD).
function M.text_joiner()
  local held
  return function(text)
    local last = text == nil
    if held then
      text, held = held .. (text or ""), nil
    elseif last then
      return ""
    end
    local n = #text
    if not last and n >= 3 and text:byte(n - 2) == 0xED then
      local b = text:byte(n - 1)
      if b >= 0xA0 and b <= 0xAF then
        held, text = text:sub(n - 2), text:sub(1, n - 3)
      end
    end
    return join_halves(text)
  end
end

local function build_choice(st)
  local msg = { role = st.role or "assistant" }
  msg.content = #st.content > 0 and text_of(st.content) or null
  if #st.refusal > 0 then msg.refusal = text_of(st.refusal) end
  if #st.reasoning > 0 then msg.reasoning_content = text_of(st.reasoning) end
  if #st.calls > 0 then
    local calls = json.array {}
    for i, call in ipairs(st.calls) do
      local out = { type = call.type or "function",
        ["function"] = { name = call.name or "", arguments = text_of(call.args) } }
      out.id = call.id
      calls[i] = out
    end
    msg.tool_calls = calls
  end
  local choice = { index = st.index, message = msg, finish_reason = st.finish_reason or null }
  if st.logprobs then choice.logprobs = { content = json.array(st.logprobs) } end
  return choice
end

-- Everything so far as a chat.completion; valid at any time, also after an error.
function Acc:result()
  if self.cache then return self.cache end
  local order = {}
  for i, idx in ipairs(self.order) do order[i] = idx end
  table.sort(order)
  local choices = json.array {}
  for i, idx in ipairs(order) do choices[i] = build_choice(self.by_index[idx]) end
  local final = {
    id = self.id, object = "chat.completion", created = self.created, model = self.model,
    system_fingerprint = self.fingerprint, choices = choices, usage = self.usage,
  }
  self.cache = final
  return final
end

-- The text of the first choice's delta, "" when there is none. In C (luachat.core):
-- it reads a lazy chunk's text without decoding the chunk.
M.delta_text = require("luachat.core").delta_text

-- Is this SSE data the end marker?
function M.is_done_data(data)
  if data == "[DONE]" then return true end
  return type(data) == "string" and #data < 16 and data:match("^%s*%[DONE%]%s*$") ~= nil
end

return M
