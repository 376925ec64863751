-- luachat.agent: tools and the tool-calling loop.
--
-- Owns: tool definitions, the conversation transcript, the loop (post with
-- tools, run each call, answer with `tool` messages, repeat until a reply
-- has no calls), turning every model or tool mistake into a tool message the
-- model can act on, parallel calls as tasks, usage sums, save/load, and
-- re-asking a final answer that fails output_schema (output_retries).
-- Never: lets a handler, a callback or a model's output crash the run;
-- re-serialises the model's tool calls (they are sent back as received).
--
-- Failure policy: whatever the model sends (bad JSON, unknown tool, arguments
-- that fail the schema) and whatever a handler does (raises, returns nil, err,
-- returns something JSON cannot hold) becomes a `tool` message starting with
-- "error: " and the loop goes on. An error in a user callback (on_text,
-- on_tool_call, on_tool_result) is the script's bug, not the model's: the run
-- stops with nil, err (kind "callback", traceback in the message) and
-- err.result holding the transcript so far.
local core = require "luachat.core"
local json = require "luachat.json"
local sched = require "luachat.sched"
local schema = require "luachat.schema"
local stream = require "luachat.accumulate"
local options = require "luachat.options"
local structured = require "luachat.structured"
local util = require "luachat.util"

local null = json.null
local traceback = debug.traceback

local M = {}
setmetatable(M, { __call = function(_, opts) return M.new(opts) end })

local Tool = {}
Tool.__index = Tool
Tool.__name = "luachat.Tool"

local Agent = {}
Agent.__index = Agent
Agent.__name = "luachat.Agent"

local function argerror(fname, msg)
  error(string.format("bad argument #1 to '%s' (%s)", fname, msg), 3)
end

-- The fields of luachat.tool{...} and luachat.agent{...} (luachat.options:
-- an unknown key or a wrong type is an error naming the key).
local TOOL_OPTIONS = {
  name = options.with(options.rule("a tool name", function(v)
    return type(v) == "string" and v:match("^[%w_%-]+$") ~= nil and #v <= 64
  end), { required = true, must = "must match ^[a-zA-Z0-9_-]{1,64}$" }),
  handler = options.with(options.func, { required = true, must = "must be a function" }),
  description = options.string,
  parameters = options.with(options.table, { must = "must be a JSON Schema table" }),
  strict = options.boolean,
}

local AGENT_OPTIONS = {
  client = options.with(options.rule("a luachat client", function(v)
    return type(v) == "table" and type(v.chat) == "function"
  end), { required = true, must = "must be a luachat client" }),
  model = options.with(options.rule("a non-empty string", function(v)
    return type(v) == "string" and v ~= ""
  end), { required = true, must = "must be a non-empty string" }),
  system = options.string,
  tools = options.table,
  max_turns = options.with(options.integer(1), { must = "must be a positive integer" }),
  stream = options.boolean,
  parallel = options.boolean,
  prefix = options.boolean, -- MCP sessions' tools are named server__tool
  request = options.with(options.table, { must = "must be a table" }),
  on_text = options.with(options.func, { must = "must be a function" }),
  on_tool_call = options.with(options.func, { must = "must be a function" }),
  on_tool_result = options.with(options.func, { must = "must be a function" }),
  output_schema = options.with(options.table, { must = "must be a JSON Schema table" }),
  output_retries = options.integer(0, 100), -- re-asks after a final answer fails output_schema
}

-- luachat.tool{name=, description=, parameters=, handler=, strict=} -> a tool.
function M.tool(def)
  if type(def) ~= "table" then argerror("tool", "table expected, got " .. type(def)) end
  options.check("tool", def, TOOL_OPTIONS)
  local params = def.parameters or { type = "object", properties = json.object {} }
  schema.normalize(params) -- empty lists at any depth go out as [], empty maps as {}
  return setmetatable({ name = def.name, description = def.description, parameters = params,
    handler = def.handler, strict = def.strict }, Tool)
end

-- Is v one tool (luachat.tool{...}, or a plain definition with a name and a
-- handler) rather than a list of them? `tools = one_tool` means a list of one.
function M.is_tool(v)
  if getmetatable(v) == Tool then return true end
  return type(v) == "table" and rawget(v, 1) == nil and type(rawget(v, "name")) == "string"
    and type(rawget(v, "handler")) == "function"
end

function Tool:definition()
  local fn = { name = self.name, description = self.description, parameters = self.parameters }
  if self.strict ~= nil then fn.strict = self.strict end
  return { type = "function", ["function"] = fn }
end

local function error_of(kind, message, extra)
  local e = { kind = kind, message = message }
  for k, v in pairs(extra or {}) do e[k] = v end
  return core.error(e)
end

-- luachat.agent{client=, model=, system=, tools=, ...} -> an agent.
function M.new(opts)
  if type(opts) ~= "table" then argerror("agent", "table expected, got " .. type(opts)) end
  options.check("agent", opts, AGENT_OPTIONS)
  local self = setmetatable({
    client = opts.client, model = opts.model, system = opts.system,
    max_turns = math.tointeger(opts.max_turns or 10), stream = opts.stream or false,
    parallel = opts.parallel ~= false, request = opts.request or {},
    on_text = opts.on_text, on_tool_call = opts.on_tool_call, on_tool_result = opts.on_tool_result,
    tools = {}, tools_by_name = {}, messages = json.array {},
    usage = { prompt_tokens = 0, completion_tokens = 0, total_tokens = 0 },
  }, Agent)
  local tools = opts.tools
  if M.is_tool(tools) then tools = { tools } end
  -- An MCP session (luachat.mcp.connect) in the list stands for all its tools.
  if type(tools) == "table" then tools = require("luachat.mcp_tools").expand(tools, opts.prefix, self) end
  for i, t in ipairs(tools or {}) do
    if getmetatable(t) ~= Tool then
      -- A plain definition's error blames the line calling luachat.agent, not this one.
      local ok, tool = pcall(M.tool, t)
      if not ok then error((tostring(tool):gsub("^[^\n]-:%d+: ", "")), 2) end
      t = tool
    end
    if self.tools_by_name[t.name] then argerror("agent", "two tools are named '" .. t.name .. "'") end
    self.tools[i] = t
    self.tools_by_name[t.name] = t
  end
  if self.system then self.messages[1] = { role = "system", content = self.system } end
  self.output_schema = opts.output_schema -- the final answer is read as JSON (result.parsed)
  self.output_retries = math.tointeger(opts.output_retries or 0)
  return self
end

-- Forget the conversation (the system prompt stays).
function Agent:reset()
  self.messages = json.array {}
  if self.system then self.messages[1] = { role = "system", content = self.system } end
  self.usage = { prompt_tokens = 0, completion_tokens = 0, total_tokens = 0 }
end

local add_usage = util.add_usage

-- The messages as sent: every message exactly as in the transcript, extra provider
-- fields included. Reasoning must go back with the tool calls it led to (DeepSeek's
-- thinking mode answers 400 without it; Kimi likewise); providers that do not need it
-- ignore it. A new array, so nothing the client does to the list touches the transcript.
local function outgoing(messages)
  local out = json.array {}
  for i, m in ipairs(messages) do out[i] = m end
  return out
end

function Agent:build_request()
  if self.mcp_sessions then require("luachat.mcp_tools").refresh(self) end -- a server's list changed
  local req = {}
  for k, v in pairs(self.request) do req[k] = v end
  req.model = self.model
  req.messages = outgoing(self.messages)
  if #self.tools > 0 then
    local defs = json.array {}
    for i, t in ipairs(self.tools) do defs[i] = t:definition() end
    req.tools = defs
  end
  if self.output_schema then req.response_format = structured.response_format(self.output_schema) end
  return req
end

-- Run a user callback; a failure becomes a "callback" error for the run.
local function call_back(name, fn, ...)
  local ok, a, b = xpcall(fn, traceback, ...)
  if not ok then return nil, error_of("callback", name .. " failed: " .. tostring(a)) end
  return true, a, b
end

-- One model call; returns the reply (chat.completion shape) or nil, err.
function Agent:call_model(req)
  if not self.stream then
    local res, err = self.client:chat(req)
    if res and self.on_text then
      local msg = res.choices and res.choices[1] and res.choices[1].message
      if msg and type(msg.content) == "string" and msg.content ~= "" then
        local ok, cerr = call_back("on_text", self.on_text, msg.content)
        if not ok then return nil, cerr end
      end
    end
    return res, err
  end
  local cb_err
  local on_text = self.on_text
  local join = stream.text_joiner() -- on_text gets whole characters (a pair split across chunks)
  -- The text path: chunks that only carry text are never built as tables.
  local final, err = self.client:stream(req, on_text and { on_text = function(piece, index)
    if index ~= 0 then return end -- the agent reads choice 0
    local text = join(piece)
    if text ~= "" then
      local ok, e = call_back("on_text", on_text, text)
      if not ok then
        cb_err = e
        return false
      end
    end
  end } or nil)
  local rest = not cb_err and on_text and join(nil) or ""
  if rest ~= "" then
    local ok, e = call_back("on_text", on_text, rest)
    if not ok then cb_err = e end
  end
  if cb_err then return nil, cb_err, final end
  if err then return nil, err, final end
  return final
end

local function result_string(value)
  local t = type(value)
  if t == "string" then return value end
  if t == "nil" then return "" end
  if t == "table" then
    -- Sorted keys: the same result gives the same bytes, so providers' prompt caches hit.
    local ok, s = pcall(json.encode, value, { sort_keys = true })
    if ok then return s end
    return nil, "its result cannot be sent as JSON: " .. tostring(s)
  end
  if value == null then return "null" end
  return tostring(value)
end

-- A handler's error for the model: its first line, without the "file.lua:12: "
-- locations Lua puts in front (the model has no use for internal paths).
local function first_line(s)
  s = tostring(s)
  s = s:match("^[^\n]*") or s
  for _ = 1, 4 do
    local rest = s:match("^[^:\n]+:%d+: (.*)$")
    if not rest then break end
    s = rest
  end
  return s
end

-- Ctrl-C in the host while a handler ran (a blocking os.execute, a cancelled
-- luachat.sleep): the turn stops here instead of telling the model.
local function check_interrupt()
  if core.interrupted and core.interrupted() then error("interrupted", 0) end
end

-- Run one tool call; returns the tool message content, or nil, fatal_err (a callback failed).
function Agent:run_call(call)
  if type(call) ~= "table" then call = {} end -- junk in tool_calls: reported as an unknown tool
  local fn = type(call["function"]) == "table" and call["function"] or {}
  local info = { id = call.id, name = fn.name, arguments = fn.arguments }
  local content, err_text
  local tool = self.tools_by_name[info.name]
  local allowed = true
  if self.on_tool_call then
    local ok, res = call_back("on_tool_call", self.on_tool_call, info)
    if not ok then return nil, res end
    allowed = res ~= false
  end
  if not tool then
    local names = {}
    for i, t in ipairs(self.tools) do names[i] = t.name end
    err_text = string.format("unknown tool %q; available tools: %s", tostring(info.name),
      #names > 0 and table.concat(names, ", ") or "none")
  elseif not allowed then
    err_text = "the call to " .. tool.name .. " was refused by the user; do not retry it"
  else
    local raw = info.arguments
    local args, derr
    if raw == nil or raw == null or raw == "" then
      args = {}
    elseif type(raw) == "table" then
      args = raw
    else
      args, derr = json.decode(tostring(raw))
    end
    if args == nil then
      err_text = string.format("invalid JSON arguments for %s (%s); send the arguments as one JSON object",
        tool.name, derr)
    elseif type(args) ~= "table" or json.is_array(args) then
      err_text = string.format("arguments for %s must be a JSON object, got %s", tool.name, tostring(raw))
    else
      local valid, verr = schema.validate(args, tool.parameters)
      if not valid then
        err_text = string.format("invalid arguments for %s: %s", tool.name, verr)
      else
        local ok, r1, r2 = xpcall(tool.handler, traceback, args, info)
        check_interrupt()
        if not ok then
          err_text = string.format("tool %s failed: %s", tool.name, first_line(r1))
        elseif r1 == nil and r2 ~= nil then
          err_text = string.format("tool %s failed: %s", tool.name, first_line(r2))
        else
          content, err_text = result_string(r1)
          if err_text then err_text = "tool " .. tool.name .. " failed: " .. err_text end
        end
      end
    end
  end
  if err_text then content = "error: " .. err_text end
  if self.on_tool_result then
    local ok, cerr = call_back("on_tool_result", self.on_tool_result, info,
      not err_text and content or nil, err_text)
    if not ok then return nil, cerr end
  end
  return content
end

-- Run a turn's calls (concurrently as tasks when parallel); contents in call order.
function Agent:run_calls(calls)
  local contents = {}
  if self.parallel and #calls > 1 then
    local tasks = {}
    for i, call in ipairs(calls) do tasks[i] = sched.spawn(self.run_call, self, call) end
    -- Wait for all of them even when one fails: no handler is left running after run returns.
    local results = sched.gather(tasks)
    for i, r in ipairs(results) do
      if r[1] == nil then
        local err = r[2]
        if type(err) ~= "table" then err = error_of("callback", tostring(err)) end
        return nil, err
      end
      contents[i] = r[1]
    end
  else
    for i, call in ipairs(calls) do
      local content, err = self:run_call(call)
      if content == nil then return nil, err end
      contents[i] = content
    end
  end
  return contents
end

function Agent:snapshot(turns, content, finish_reason)
  return {
    content = content or "", messages = self.messages, turns = turns,
    usage = { prompt_tokens = self.run_usage.prompt_tokens, completion_tokens = self.run_usage.completion_tokens,
      total_tokens = self.run_usage.total_tokens },
    finish_reason = finish_reason,
  }
end

-- Does the transcript hold anything to answer (a message other than the system prompt)?
local function has_conversation(messages)
  for _, m in ipairs(messages) do
    if type(m) ~= "table" or m.role ~= "system" then return true end
  end
  return false
end

-- agent:run(text or list of messages) -> result | nil, err (err.result: the transcript so far).
-- Without input it answers the transcript as it stands, which must then hold a message.
function Agent:run(input)
  if input == "" or (type(input) == "string" and not input:find("%S")) then
    error("bad argument #1 to 'run' (the message is empty)", 2)
  end
  if (input == nil or (type(input) == "table" and next(input) == nil)) and not has_conversation(self.messages) then
    error("bad argument #1 to 'run' (no input, and the transcript has no message to answer)", 2)
  end
  if type(input) == "string" then
    self.messages[#self.messages + 1] = { role = "user", content = input }
  elseif type(input) == "table" then
    for _, m in ipairs(input) do self.messages[#self.messages + 1] = m end
  elseif input ~= nil then
    error("bad argument #1 to 'run' (string or list of messages expected, got " .. type(input) .. ")", 2)
  end
  self.run_usage = { prompt_tokens = 0, completion_tokens = 0, total_tokens = 0 }
  local turns, last_finish, reasks = 0, nil, 0
  while true do
    if turns >= self.max_turns then
      local err = error_of("max_turns", string.format("the model was still calling tools after %d turns", turns))
      err.result = self:snapshot(turns, nil, last_finish)
      return nil, err
    end
    local reply, err, partial = self:call_model(self:build_request())
    if not reply then
      -- A client that breaks its contract (no error, or a string) still ends the run cleanly.
      if type(err) ~= "table" then
        err = error_of("api", err ~= nil and tostring(err) or "the client returned no reply and no error")
      end
      local content
      local pm = partial and partial.choices and partial.choices[1] and partial.choices[1].message
      if pm and type(pm.content) == "string" then content = pm.content end
      err.result = self:snapshot(turns, content)
      err.result.partial = partial
      return nil, err
    end
    turns = turns + 1
    add_usage(self.run_usage, reply.usage)
    add_usage(self.usage, reply.usage)
    local choice = type(reply.choices) == "table" and reply.choices[1]
    local msg = type(choice) == "table" and choice.message
    if type(msg) ~= "table" then
      local e = error_of("deserialise", "the reply has no choices[1].message")
      e.result = self:snapshot(turns)
      return nil, e
    end
    if msg.role == nil then msg.role = "assistant" end
    local finish = choice.finish_reason ~= null and choice.finish_reason or nil
    last_finish = finish
    self.messages[#self.messages + 1] = msg
    local calls = msg.tool_calls
    -- Tool calls decide, whatever finish_reason says (some providers send "stop").
    if type(calls) ~= "table" or #calls == 0 then
      local content = type(msg.content) == "string" and msg.content or ""
      local result = self:snapshot(turns, content, finish)
      if self.output_schema then
        local value, perr = structured.read(msg, self.output_schema, finish)
        if value == nil then
          -- Re-ask (output_retries): the bad answer stays in the transcript, a user
          -- message says what was wrong. A re-ask is a turn; with no turn left the
          -- run ends with this error, not a max_turns one that would hide it.
          if structured.reaskable(perr, finish) and reasks < self.output_retries and turns < self.max_turns then
            reasks = reasks + 1
            self.messages[#self.messages + 1] = structured.reask_message(self.client, perr)
            goto continue
          end
          perr.retries = reasks
          if reasks > 0 then
            perr.message = string.format("%s (after %d re-ask%s)", perr.message, reasks, reasks == 1 and "" or "s")
          end
          perr.result = result
          return nil, perr
        end
        result.parsed = value
      end
      return result
    end
    for i, call in ipairs(calls) do
      if type(call) ~= "table" then
        call = { id = string.format("call_%d_%d", turns, i) } -- junk entry: still answered, in order
        calls[i] = call
      elseif (call.id == nil or call.id == null or call.id == "") then
        call.id = string.format("call_%d_%d", turns, i) -- some servers omit ids; tool messages need one
      end
    end
    local contents, cerr = self:run_calls(calls)
    check_interrupt() -- a parallel call's task may have caught it
    if not contents then
      cerr.result = self:snapshot(turns)
      return nil, cerr
    end
    for i, call in ipairs(calls) do
      self.messages[#self.messages + 1] = { role = "tool", tool_call_id = call.id, content = contents[i] }
    end
    ::continue::
  end
end

-- Save the conversation as JSON: {version=1, model=, system=, messages=[...]}.
function Agent:save(path)
  local ok, text = pcall(json.encode, { version = 1, model = self.model, system = self.system,
    messages = self.messages }, { sort_keys = true })
  if not ok then return nil, error_of("environment", "cannot save the transcript: " .. tostring(text)) end
  local f, ferr = io.open(path, "wb")
  if not f then return nil, error_of("environment", "cannot save the transcript: " .. tostring(ferr)) end
  local wok, werr = f:write(text, "\n")
  f:close()
  if not wok then return nil, error_of("environment", "cannot save the transcript: " .. tostring(werr)) end
  return true
end

-- The most a transcript file may hold (bytes): agent.load (and the chat's /load) reads no more.
M.MAX_TRANSCRIPT = 64 * 1024 * 1024

-- luachat.agent.load(path, opts) -> an agent continuing the saved conversation | nil, err.
function M.load(path, opts)
  local f, ferr = io.open(path, "rb")
  if not f then return nil, error_of("environment", "cannot load the transcript: " .. tostring(ferr)) end
  -- Bounded: /dev/zero or a huge file must not fill memory. One byte more
  -- than the limit tells "too large" from "exactly the limit".
  local text, rerr = f:read(M.MAX_TRANSCRIPT + 1)
  f:close()
  if text == nil and rerr then
    return nil, error_of("environment", "cannot load the transcript: " .. tostring(rerr))
  end
  text = text or ""
  if #text > M.MAX_TRANSCRIPT then
    local limit = M.MAX_TRANSCRIPT % (1024 * 1024) == 0
      and string.format("%d MiB", M.MAX_TRANSCRIPT // (1024 * 1024)) or string.format("%d bytes", M.MAX_TRANSCRIPT)
    return nil, error_of("environment", string.format(
      "cannot load the transcript: %s is larger than %s, the limit for a transcript", path, limit))
  end
  local data, derr = json.decode(text)
  if type(data) ~= "table" or type(data.messages) ~= "table"
    or (next(data.messages) ~= nil and not json.is_array(data.messages)) then
    return nil, error_of("deserialise", string.format("%s is not a luachat transcript: %s", path,
      derr or "no list of messages"))
  end
  if data.version ~= 1 then
    return nil, error_of("deserialise", string.format("%s: unsupported transcript version %s", path,
      tostring(data.version)))
  end
  local o = {}
  for k, v in pairs(opts or {}) do o[k] = v end
  o.model = o.model or data.model
  o.system = nil -- the saved messages carry it
  local agent = M.new(o)
  agent.system = data.system ~= null and data.system or nil
  agent.messages = json.array(data.messages)
  return agent
end

M.Tool, M.Agent = Tool, Agent
return M
