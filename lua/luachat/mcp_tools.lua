-- luachat.mcp_tools: an MCP server's tools as luachat.tool objects, and a
-- CallToolResult as the text a model reads.
--
-- Owns: the mapping both ways: MCP tool -> luachat.tool (name, description,
-- parameters = inputSchema, a handler calling the server), and a result's
-- content -> one string (text joined, structuredContent as JSON when there is
-- no text, a short note for images and audio, embedded resources' text;
-- isError -> the handler's failure, which the agent shows the model).
-- Never: talks to the server itself (the session's call does), or changes the
-- result table a script gets from session:call.
local json = require "luachat.json"

local M = {}

local null = json.null

-- A model-facing tool name: ^[a-zA-Z0-9_-]{1,64}$ (OpenAI's rule). MCP allows
-- more (dots, slashes): each other byte becomes "_", and the name is cut at 64.
function M.model_name(name)
  local s = tostring(name):gsub("[^%w_%-]", "_")
  if s == "" then s = "_" end
  return s:sub(1, 64)
end

-- Bytes in a base64 string, without decoding it.
local function base64_bytes(s)
  if type(s) ~= "string" then return 0 end
  s = s:gsub("%s", "")
  local pad = select(2, s:gsub("=", ""))
  return math.max(0, #s // 4 * 3 - pad)
end

local function note(kind, mime, data)
  return string.format("[%s: %s, %d bytes]", kind, type(mime) == "string" and mime or "unknown type", base64_bytes(data))
end

-- One content block as text, or nil when it has none.
local function block_text(b)
  if type(b) ~= "table" then return nil end
  local t = b.type
  if t == "text" then
    return type(b.text) == "string" and b.text or nil
  elseif t == "image" or t == "audio" then
    return note(t, b.mimeType, b.data)
  elseif t == "resource" then
    local r = type(b.resource) == "table" and b.resource or {}
    if type(r.text) == "string" then return r.text end
    return string.format("[resource: %s, %s, %d bytes]", tostring(r.uri), type(r.mimeType) == "string" and r.mimeType
      or "unknown type", base64_bytes(r.blob))
  elseif t == "resource_link" then
    local s = "[resource link: " .. tostring(b.uri)
    if type(b.name) == "string" then s = s .. " (" .. b.name .. ")" end
    return s .. "]"
  end
  return nil
end

-- A CallToolResult as the text a model reads: text | nil, error text (isError).
function M.result_text(result)
  if type(result) ~= "table" then return "" end
  local parts = {}
  local has_text = false
  if type(result.content) == "table" then
    for _, b in ipairs(result.content) do
      local s = block_text(b)
      if s then
        parts[#parts + 1] = s
        if type(b) == "table" and b.type == "text" then has_text = true end
      end
    end
  end
  local sc = result.structuredContent
  if not has_text and sc ~= nil and sc ~= null then
    local ok, s = pcall(json.encode, sc, { sort_keys = true })
    if ok then table.insert(parts, 1, s) end
  end
  local text = table.concat(parts, "\n")
  if result.isError == true then
    if text == "" then text = "the tool reported an error" end
    return nil, text
  end
  return text
end

-- The luachat.tool objects for a session's MCP tools (list: tools/list entries).
-- prefix: names become server__tool. Each tool also carries `server` (the
-- session's name) and `mcp_name` (the server's own name for it).
function M.make_tools(session, list, prefix)
  local agent = require "luachat.agent"
  local out = {}
  for _, t in ipairs(list) do
    if type(t) == "table" and type(t.name) == "string" then
      local mcp_name = t.name
      local name = M.model_name(prefix and (session.name .. "__" .. mcp_name) or mcp_name)
      local params = type(t.inputSchema) == "table" and t.inputSchema or nil
      local tool = agent.tool {
        name = name,
        description = type(t.description) == "string" and t.description or nil,
        parameters = params,
        handler = function(args)
          local result, err = session:call(mcp_name, args)
          -- The message alone: the agent says "tool NAME failed: " before it.
          if not result then return nil, type(err) == "table" and err.message or tostring(err) end
          return M.result_text(result)
        end,
      }
      tool.server = session.name
      tool.mcp_name = mcp_name
      tool.session = session
      out[#out + 1] = tool
    end
  end
  return out
end

local function is_session(v)
  local mt = type(v) == "table" and getmetatable(v)
  return type(mt) == "table" and rawget(mt, "__name") == "luachat.McpSession"
end
M.is_session = is_session

-- An agent's `tools` list with every MCP session replaced by all its tools.
-- A name two MCP servers both offer (or one a Lua tool has too) raises a
-- luachat error (kind "mcp") naming both, unless prefix is true: then every
-- session's tools are named server__tool. A session whose tool list cannot
-- be read raises its error. Lists without sessions come back as given.
function M.expand(tools, prefix, agent)
  local sessions = {}
  for _, t in ipairs(tools) do
    if is_session(t) then sessions[#sessions + 1] = t end
  end
  if #sessions == 0 then return tools end
  if agent then
    -- What M.refresh needs to notice a changed tool list (tools/list_changed).
    agent.mcp_sessions, agent.mcp_prefix = sessions, prefix
    agent.mcp_generation = 0
    for _, s in ipairs(sessions) do agent.mcp_generation = agent.mcp_generation + (s.generation or 0) end
  end
  local out, origin = {}, {}
  local function add(t, from)
    local name = type(t) == "table" and rawget(t, "name")
    if type(name) == "string" and origin[name] and (from or origin[name].server) then
      local a, b = origin[name].server, from
      local function who(s) return s and ("MCP server '" .. s .. "'") or "a Lua tool" end
      local prefixed = a and b and (a .. "__" .. t.mcp_name .. " and " .. b .. "__" .. t.mcp_name) or "server__tool"
      local hint = string.format("connect with prefix = true, or pass prefix = true to luachat.agent, to name them %s",
        prefixed)
      -- tool_name, prefixed: for a caller that words its own hint (the command line).
      error(require("luachat.core").error { kind = "mcp", tool_name = name, prefixed = prefixed, message = string.format(
        "two tools are named '%s': one from %s, one from %s (%s)", name, who(a), who(b), hint) }, 0)
    end
    if type(name) == "string" then origin[name] = { server = from } end
    out[#out + 1] = t
  end
  for _, t in ipairs(tools) do
    if is_session(t) then
      local list, err = t:tools(prefix and { prefix = true } or nil)
      if not list then error(err, 0) end
      for _, tool in ipairs(list) do add(tool, t.name) end
    else
      add(t, nil)
    end
  end
  return out
end

-- Before each model call of an agent made with sessions: when a server said
-- its tool list changed, the agent's tools from that server are replaced by
-- the new list (read now if the refresh has not run yet). A new name that
-- clashes with another tool is left out, with a debug log line: the run goes on.
function M.refresh(agent)
  local gen = 0
  for _, s in ipairs(agent.mcp_sessions) do
    if s.tools_stale and not s.closed then s:list_tools() end
    -- A server that is gone counts too: its tools are no longer offered.
    gen = gen + (s.generation or 0) + (s.gone and s:gone() and 2 ^ 40 or 0)
  end
  if gen == agent.mcp_generation then return end
  agent.mcp_generation = gen
  local mine = {}
  for _, s in ipairs(agent.mcp_sessions) do mine[s] = true end
  local tools, by_name = {}, {}
  for _, t in ipairs(agent.tools) do
    if not mine[t.session] then
      tools[#tools + 1] = t
      by_name[t.name] = t
    end
  end
  for _, s in ipairs(agent.mcp_sessions) do
    local list = not (s.gone and s:gone()) and s:tools(agent.mcp_prefix and { prefix = true } or nil) or {}
    for _, t in ipairs(list) do
      if by_name[t.name] then
        require("luachat.log").debug("mcp %s: tool %s left out: another tool has its name", s.name, t.name)
      else
        tools[#tools + 1] = t
        by_name[t.name] = t
      end
    end
  end
  agent.tools, agent.tools_by_name = tools, by_name
end

return M
