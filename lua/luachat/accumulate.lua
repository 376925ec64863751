-- luachat.accumulate: turns the chunks of a streamed chat completion into one
-- final message shaped like a non-streamed `chat.completion`.
--
-- Owns: the accumulator and every merge rule (M.RULES below; the same table is in
-- docs/DESIGN.md "Merge rules"): choices by index, text fields concatenated, lists that
-- arrive in pieces concatenated, tool calls by index, first non-empty id/model/created,
-- and for every other field, known or not, objects merged key by key and other values
-- replaced by the last non-null one. Nothing a provider sends is dropped.
-- The accumulator's state is private: C (core.scan_text) only hands it text through the
-- public acc:add_text, and everything else through acc:add(chunk).
-- Never: re-serialises tool arguments, or fails on a chunk shape it does not know.
local json = require "luachat.json"
local core = require "luachat.core"

local null = json.null
local concat = table.concat
local is_array = json.is_array

local M = {}

-- The merge rule of each field, by where it appears. "*" is the rule of every field not
-- named: "merge" = an object merges key by key (recursively), any other value is replaced
-- by the last non-null one. "text": strings concatenate; "list": arrays concatenate;
-- "first": the first non-empty value stays; "last": the last non-empty string.
M.RULES = {
  chunk = { id = "first", model = "first", created = "first (non-zero)", object = "fixed (chat.completion)",
    choices = "by index", error = "merged first, then reported", ["*"] = "merge" },
  choice = { index = "key", delta = "into message", message = "into message", finish_reason = "last",
    logprobs = "logprobs", ["*"] = "merge" },
  delta = { content = "text", refusal = "text", reasoning_content = "text (one per delta, as reasoning_content)",
    reasoning = "text (one per delta, as reasoning_content)", role = "first", tool_calls = "by index",
    annotations = "list", audio = "audio", ["*"] = "merge" },
  logprobs = { content = "list", refusal = "list", ["*"] = "merge" },
  audio = { transcript = "text", data = "text", ["*"] = "merge" },
  tool_call = { index = "key (Ollama: a new id at a used index is a new call; none: the last call)",
    id = "first", type = "first", ["function"] = "function", ["*"] = "merge" },
  ["function"] = { name = "first", arguments = "text", ["*"] = "merge" },
}

local Acc = {}
Acc.__index = Acc

function M.accumulator()
  -- missing: head fields (bits as core.scan_text's head) still unset: 1 id, 2 model, 4 created.
  return setmetatable({ by_index = {}, order = {}, top = {}, cache = nil, missing = 7 }, Acc)
end

local function nonempty(v)
  return type(v) == "string" and v ~= ""
end

local one_line = require("luachat.util").one_line

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

-- A deep copy (keeping array/object marks), so the accumulator never shares a chunk's tables.
local function copy_value(v)
  if type(v) ~= "table" then return v end
  local c = {}
  for k, x in pairs(v) do c[k] = copy_value(x) end
  return setmetatable(c, getmetatable(v))
end

M.copy_value = copy_value

local function is_object(v)
  return type(v) == "table" and not is_array(v)
end

-- The rule of every field not named: objects merge key by key, other values are replaced by
-- the last non-null one.
local function merge(dst, k, v)
  if v == nil or v == null then return end
  if type(v) ~= "table" then dst[k] = v; return end -- the common case: no copy, no array test
  local cur = dst[k]
  if is_object(v) and is_object(cur) then
    for k2, v2 in pairs(v) do merge(cur, k2, v2) end
  else
    dst[k] = copy_value(v)
  end
end
M.merge = merge

local function choice_state(self, index)
  local st = self.by_index[index]
  if not st then
    st = { index = index, content = {}, refusal = {}, reasoning = {}, calls = {}, call_by_index = {},
      extra = {}, msg = {} }
    self.by_index[index] = st
    self.order[#self.order + 1] = index
  end
  return st
end

local TOOL_CALL_KNOWN = { index = true, id = true, type = true, ["function"] = true }
local FUNCTION_KNOWN = { name = true, arguments = true }

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
    call = { args = {}, extra = {}, fn_extra = {} }
    st.calls[#st.calls + 1] = call
    if type(idx) == "number" then st.call_by_index[idx] = call end
  end
  st.last_call = call
  if id and not call.id then call.id = id end
  if not call.type and nonempty(tc.type) then call.type = tc.type end
  for k, v in pairs(tc) do
    if not TOOL_CALL_KNOWN[k] then merge(call.extra, k, v) end
  end
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
    for k, v in pairs(fn) do
      if not FUNCTION_KNOWN[k] then merge(call.fn_extra, k, v) end
    end
  end
end

-- Append the items of list v (an array) to the list at st[key].
local function append_list(st, key, v)
  if type(v) ~= "table" then return false end
  local list = st[key]
  if not list then list = {}; st[key] = list end
  for j = 1, #v do list[#list + 1] = copy_value(v[j]) end
  return true
end

local DELTA_TEXT = { content = "content", refusal = "refusal" }

-- One delta (or a whole message) into choice state st.
local function add_delta(st, delta)
  for k, v in pairs(delta) do
    local parts = DELTA_TEXT[k]
    if parts then
      if type(v) == "string" then
        if v ~= "" then local p = st[parts]; p[#p + 1] = v end
      else
        merge(st.msg, k, v)
      end
    elseif k == "role" then
      if not st.role and nonempty(v) then st.role = v end
    elseif k == "reasoning_content" or k == "reasoning" then
      -- Some providers send both shapes of the same reasoning: take one per delta (below).
      if type(v) ~= "string" then merge(st.msg, k, v) end
    elseif k == "tool_calls" then
      if type(v) == "table" then
        for j = 1, #v do merge_tool_call(st, v[j]) end
      end
    elseif k == "annotations" then
      if not append_list(st, "annotations", v) then merge(st.msg, k, v) end
    elseif k == "audio" then
      if type(v) == "table" then
        local a = st.audio
        if not a then a = { transcript = {}, data = {}, extra = {} }; st.audio = a end
        for ak, av in pairs(v) do
          if (ak == "transcript" or ak == "data") and type(av) == "string" then
            if av ~= "" then local p = a[ak]; p[#p + 1] = av end
          else
            merge(a.extra, ak, av)
          end
        end
      end
    else
      merge(st.msg, k, v)
    end
  end
  local r = delta.reasoning_content
  if type(r) ~= "string" or r == "" then r = delta.reasoning end
  if type(r) == "string" and r ~= "" then st.reasoning[#st.reasoning + 1] = r end
end

local function add_logprobs(st, lp)
  local s = st.logprobs
  if not s then s = { extra = {} }; st.logprobs = s end
  for k, v in pairs(lp) do
    if (k == "content" or k == "refusal") and type(v) == "table" then
      append_list(s, k, v)
    else
      merge(s.extra, k, v)
    end
  end
end

local function add_choice(self, c)
  local index = c.index
  if type(index) ~= "number" then index = 0 end
  local st = self.by_index[index] or choice_state(self, index)
  -- A whole message in a stream is the delta when there is none (Perplexity sends both: the
  -- message then holds the text so far, which the deltas already carry).
  local delta = c.delta
  if type(delta) ~= "table" then delta = c.message end
  if type(delta) == "table" then add_delta(st, delta) end
  for k, v in pairs(c) do
    if k == "delta" or k == "message" then -- luacheck: ignore 542 (taken above)
    elseif k == "finish_reason" then
      if type(v) == "string" and v ~= "" then st.finish_reason = v end
    elseif k == "logprobs" then
      if type(v) == "table" then add_logprobs(st, v) end
    elseif k ~= "index" then
      merge(st.extra, k, v)
    end
  end
end

-- Add one decoded chunk: every field merged by M.RULES. Returns nil, or an error description
-- when the chunk carries an in-band error (merged first: nothing it carries is lost).
function Acc:add(chunk)
  if type(chunk) ~= "table" then return nil end
  self.cache = nil
  local top = self.top
  for k, v in pairs(chunk) do
    if k == "choices" then
      if type(v) == "table" then
        for i = 1, #v do
          local c = v[i]
          if type(c) == "table" then add_choice(self, c) end
        end
      end
    elseif k == "id" then
      if self.id == nil and nonempty(v) then self.id = v; self.missing = self.missing & ~1 end
    elseif k == "model" then
      if self.model == nil and nonempty(v) then self.model = v; self.missing = self.missing & ~2 end
    elseif k == "created" then
      -- 0 is a placeholder (Azure's prompt-filter chunk), as "" is for id and model
      if self.created == nil and type(v) == "number" and v > 0 then self.created = v; self.missing = self.missing & ~4 end
    elseif k ~= "object" and k ~= "error" and v ~= null then
      if type(v) == "table" then merge(top, k, v) else top[k] = v end -- merge, inlined for scalars
    end
  end
  local e = chunk.error
  if e ~= nil and e ~= null then return error_description(e) end
  return nil
end

-- The text path (core.scan_text's results, see chat_stream.lua): take the text of a chunk
-- whose only effect is text, when no rule needs the chunk itself (the choice and tool call
-- already exist, no head field or role is still unset). Returns false, changing nothing,
-- when the chunk must go through acc:add instead. index false: a chunk without a choice.
-- fingerprint, service_tier: the chunk's (last-non-null fields): taken only when equal to ours.
function Acc:add_text(index, content, refusal, reasoning, tool_index, args, head, has_role, fingerprint, service_tier)
  if head and head & self.missing ~= 0 then return false end
  if fingerprint and self.top.system_fingerprint ~= fingerprint then return false end
  if service_tier and self.top.service_tier ~= service_tier then return false end
  if not index then return true end
  local st = self.by_index[index]
  if not st then return false end
  if has_role and not st.role then return false end
  local call
  if tool_index then
    call = st.call_by_index[tool_index]
    if not call then return false end
  end
  self.cache = nil
  if content then local p = st.content; p[#p + 1] = content end
  if refusal then local p = st.refusal; p[#p + 1] = refusal end
  if reasoning then local p = st.reasoning; p[#p + 1] = reasoning end
  if call then
    if args then local p = call.args; p[#p + 1] = args end
    st.last_call = call
  end
  return true
end

-- acc:add_data(json) -> whether json was a text-only chunk now in acc (via core.scan_text and
-- acc:add_text); nothing changes otherwise. For tests and fuzzers: acc:add(decoded) must agree.
local scan_text = core.scan_text
function Acc:add_data(data)
  local index, content, refusal, reasoning, tool_index, args, head, has_role, fingerprint, tier = scan_text(data)
  if index == nil then return false end
  return self:add_text(index, content, refusal, reasoning, tool_index, args, head, has_role, fingerprint, tier)
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
  local msg = copy_value(st.msg)
  msg.role = st.role or "assistant"
  msg.content = #st.content > 0 and text_of(st.content) or (msg.content ~= nil and msg.content or null)
  if #st.refusal > 0 then msg.refusal = text_of(st.refusal) end
  if #st.reasoning > 0 then msg.reasoning_content = text_of(st.reasoning) end
  if st.annotations then msg.annotations = json.array(st.annotations) end
  if st.audio then
    local a = copy_value(st.audio.extra)
    if #st.audio.transcript > 0 then a.transcript = concat(st.audio.transcript) end
    if #st.audio.data > 0 then a.data = concat(st.audio.data) end
    msg.audio = a
  end
  if #st.calls > 0 then
    local calls = json.array {}
    for i, call in ipairs(st.calls) do
      local out = copy_value(call.extra)
      local fn = copy_value(call.fn_extra)
      fn.name = call.name or ""
      fn.arguments = text_of(call.args)
      out.type = call.type or "function"
      out["function"] = fn
      out.id = call.id
      calls[i] = out
    end
    msg.tool_calls = calls
  end
  local choice = copy_value(st.extra)
  choice.index = st.index
  choice.message = msg
  choice.finish_reason = st.finish_reason or null
  local lp = st.logprobs
  if lp then
    local out = copy_value(lp.extra)
    if lp.content then out.content = json.array(lp.content) end
    if lp.refusal then out.refusal = json.array(lp.refusal) end
    choice.logprobs = out
  end
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
  local final = copy_value(self.top)
  final.id = self.id
  final.object = "chat.completion"
  final.created = self.created
  final.model = self.model
  final.choices = choices
  self.cache = final
  return final
end

-- The text of choice `index` (default 0; a choice without an index is 0) in a chunk's
-- delta, "" when that choice has none in the chunk.
function M.delta_text(chunk, index)
  if type(chunk) ~= "table" then return "" end
  local choices = chunk.choices
  if type(choices) ~= "table" then return "" end
  index = index or 0
  for i = 1, #choices do
    local c = choices[i]
    if type(c) == "table" then
      local ci = c.index
      if type(ci) ~= "number" then ci = 0 end
      if ci == index then
        local d = c.delta
        local t = type(d) == "table" and d.content
        return type(t) == "string" and t or ""
      end
    end
  end
  return ""
end

-- Is this SSE data the end marker?
function M.is_done_data(data)
  if data == "[DONE]" then return true end
  return type(data) == "string" and #data < 16 and data:match("^%s*%[DONE%]%s*$") ~= nil
end

return M
