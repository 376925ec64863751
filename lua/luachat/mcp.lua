-- luachat.mcp: Model Context Protocol client sessions (luachat.mcp.connect).
--
-- Owns: the connect options, the MCP lifecycle (initialize with version
-- negotiation, notifications/initialized, close), the tool list (tools/list
-- with pagination, refreshed on notifications/tools/list_changed), tools/call,
-- what the client answers a server's requests (ping, sampling/createMessage
-- with the connection's `sampling` option, else a JSON-RPC error) and where
-- server notifications go (log messages to the debug log, progress to
-- on_progress).
-- Never: frames or transports bytes (luachat.mcp_rpc, luachat.mcp_stdio,
-- luachat.mcp_http), maps results for models (luachat.mcp_tools), runs a
-- command through a shell.
local core = require "luachat.core"
local json = require "luachat.json"
local log = require "luachat.log"
local options = require "luachat.options"
local sched = require "luachat.sched"
local redact = require "luachat.redact"
local rpc_mod = require "luachat.mcp_rpc"
local mcp_tools = require "luachat.mcp_tools"

local M = {}

-- The protocol revisions luachat speaks, newest first: the current one and the one before.
M.PROTOCOL_VERSIONS = { "2025-11-25", "2025-06-18" }
M.DEFAULT_TIMEOUT = 60
-- Seconds close() gives a stdio server to exit after its stdin closes (then
-- SIGTERM, as long again, then SIGKILL), and an HTTP server to answer DELETE.
M.CLOSE_GRACE = 1

local Session = {}
Session.__index = Session
Session.__name = "luachat.McpSession"
M.Session = Session

local function argerror(msg, level)
  error("bad argument #1 to 'mcp.connect' (" .. msg .. ")", (level or 2) + 1)
end

local argv_rule = options.rule("a list of strings (the command and its arguments)", function(v)
  if type(v) ~= "table" or #v == 0 then return nil, "must be a non-empty list of strings (the command and its arguments)" end
  local n = 0
  for _ in pairs(v) do n = n + 1 end
  if n ~= #v then return nil, "must be a list of strings (no other keys)" end
  for i, a in ipairs(v) do
    if type(a) ~= "string" then return nil, string.format("item %d is a %s, not a string", i, type(a)) end
    if a:find("%z") then return nil, string.format("item %d contains a NUL byte", i) end
  end
  if v[1] == "" then return nil, "the command (item 1) is empty" end
  return true
end)

local env_rule = options.rule("a table of variable names to strings", function(v)
  if type(v) ~= "table" then return nil end
  for k, val in pairs(v) do
    if type(k) ~= "string" or k == "" or k:find("[=%z]") then
      return nil, "has a variable name that is not a non-empty string without '=': " .. tostring(k)
    end
    if type(val) ~= "string" and val ~= false then
      return nil, string.format("has a %s value for '%s' (expected a string, or false to unset)", type(val), k)
    end
    if type(val) == "string" and val:find("%z") then return nil, "has a NUL byte in '" .. k .. "'" end
  end
  return true
end)

-- Header names are tokens; values carry no control character but tab (a CR or
-- LF would start a header of the server's choosing).
local header_rule = options.rule("a table of header names to values", function(h)
  if type(h) ~= "table" then return nil end
  for k, v in pairs(h) do
    if type(k) ~= "string" or not k:match("^[%w!#$%%&'*+%-.^_`|~]+$") then
      return nil, "has a header name that is not a token: " .. tostring(k)
    end
    if type(v) ~= "string" and type(v) ~= "number" then
      return nil, string.format("has a %s value for header '%s' (expected a string)", type(v), k)
    end
    if tostring(v):find("[%z\1-\8\10-\31\127]") then
      return nil, string.format("has a control character in header '%s'", k)
    end
  end
  return true
end)

local sampling_rule = options.rule("a table { client = c, model = \"m\" }", function(v)
  if type(v) ~= "table" then return nil end
  if type(v.client) ~= "table" or type(v.client.chat) ~= "function" then
    return nil, "must have client = a luachat client"
  end
  if type(v.model) ~= "string" or v.model == "" then return nil, "must have model = a non-empty string" end
  for k in pairs(v) do
    if k ~= "client" and k ~= "model" and k ~= "max_tokens" then
      return nil, "has an unknown key '" .. tostring(k) .. "' (client, model, max_tokens)"
    end
  end
  return true
end)

M.CONNECT_OPTIONS = {
  command = argv_rule, env = env_rule, cwd = options.string, inherit_env = options.boolean,
  url = options.rule("an http:// or https:// URL", function(v)
    if type(v) ~= "string" or not v:match("^https?://[^/]") then return nil, "must start with http:// or https://" end
    if v:find(options.CONTROL) then return nil, "contains a control character" end
    return true
  end),
  headers = header_rule, ca_file = options.string,
  timeout = options.seconds,
  name = options.rule("a name", function(v)
    if type(v) ~= "string" or v == "" then return nil, "must be a non-empty string" end
    if v:find(options.CONTROL) then return nil, "contains a control character" end
    return true
  end),
  sampling = sampling_rule,
  on_progress = options.func,
  prefix = options.boolean,
  listen = options.boolean,
}

-- A label for a server when none is given: the package or script a command
-- runs ("npx -y @modelcontextprotocol/server-filesystem /srv" -> server-filesystem),
-- or a URL's host.
local RUNNERS = { npx = true, node = true, uvx = true, uv = true, python = true, python3 = true,
  bunx = true, bun = true, deno = true, docker = true, pipx = true, nodejs = true }
function M.default_name(opts)
  if opts.url then
    local host = opts.url:match("^https?://([^/?#]+)") or "http"
    host = host:gsub("^.*@", "")
    return (host:gsub("[^%w_%-%.]", "_"))
  end
  local cmd = opts.command
  local pick = cmd[1]
  if RUNNERS[pick:match("[^/]+$") or pick] then
    for i = 2, #cmd do
      if not cmd[i]:match("^%-") and cmd[i] ~= "run" and cmd[i] ~= "exec" then
        pick = cmd[i]
        break
      end
    end
  end
  -- .../server-everything/dist/index.js: the package, not "index".
  local generic = { index = true, main = true, cli = true, server = true }
  local dirs = { dist = true, build = true, lib = true, bin = true, src = true, out = true }
  local parts = {}
  for part in pick:gmatch("[^/]+") do parts[#parts + 1] = part end
  local i = #parts
  if i > 1 and generic[(parts[i]:gsub("%.[^.]*$", ""))] then
    i = i - 1
    while i > 1 and dirs[parts[i]] do i = i - 1 end
  end
  local base = parts[i] or pick
  base = base:gsub("(.)@.*$", "%1"):gsub("%.[cm]?[jt]s$", ""):gsub("%.py$", "")
  base = base:gsub("[^%w_%-]", "_")
  return base ~= "" and base or "mcp"
end

-- Text of a sampling message's content (a block or a list of blocks).
local function sampling_text(content)
  if type(content) ~= "table" then return "" end
  if content.type then content = { content } end
  local parts = {}
  for _, b in ipairs(content) do
    if type(b) == "table" then
      if b.type == "text" and type(b.text) == "string" then
        parts[#parts + 1] = b.text
      elseif b.type == "image" or b.type == "audio" then
        parts[#parts + 1] = mcp_tools.result_text { content = { b } }
      end
    end
  end
  return table.concat(parts, "\n")
end

-- sampling/createMessage answered with the connection's model.
function Session:sample(params)
  local s = self.sampling
  if not s then
    return nil, { code = rpc_mod.METHOD_NOT_FOUND, message = "sampling is not offered by this client" }
  end
  params = type(params) == "table" and params or {}
  local messages = json.array {}
  if type(params.systemPrompt) == "string" and params.systemPrompt ~= "" then
    messages[#messages + 1] = { role = "system", content = params.systemPrompt }
  end
  for _, m in ipairs(type(params.messages) == "table" and params.messages or {}) do
    if type(m) == "table" then
      messages[#messages + 1] = { role = m.role == "assistant" and "assistant" or "user", content = sampling_text(m.content) }
    end
  end
  local req = { model = s.model, messages = messages }
  local max = math.tointeger(params.maxTokens) or s.max_tokens
  if max then req.max_tokens = max end
  if type(params.temperature) == "number" then req.temperature = params.temperature end
  if type(params.stopSequences) == "table" and #params.stopSequences > 0 then req.stop = params.stopSequences end
  local res, err = s.client:chat(req)
  if not res then
    return nil, { code = rpc_mod.INTERNAL_ERROR, message = "sampling failed: " .. tostring(err and err.message or err) }
  end
  local choice = type(res.choices) == "table" and res.choices[1] or {}
  local msg = type(choice) == "table" and choice.message or {}
  local text = type(msg) == "table" and type(msg.content) == "string" and msg.content or ""
  return {
    role = "assistant", content = { type = "text", text = text },
    model = type(res.model) == "string" and res.model or s.model,
    stopReason = choice.finish_reason == "length" and "maxTokens" or "endTurn",
  }
end

function Session:on_request(method, params)
  if method == "sampling/createMessage" then return self:sample(params) end
  return nil, { code = rpc_mod.METHOD_NOT_FOUND, message = "method not found: " .. tostring(method) }
end

local function data_text(d)
  if type(d) == "string" then return d end
  local ok, s = pcall(json.encode, d, { sort_keys = true })
  return ok and s or tostring(d)
end

function Session:on_notification(method, params)
  params = type(params) == "table" and params or {}
  if method == "notifications/message" then
    log.debug("mcp %s: [%s%s] %s", self.name, tostring(params.level),
      type(params.logger) == "string" and (" " .. params.logger) or "", rpc_mod.excerpt(data_text(params.data), 1000))
  elseif method == "notifications/tools/list_changed" then
    log.debug("mcp %s: the tool list changed", self.name)
    self.tools_stale = true
    if not self.refreshing and not self.closed then
      self.refreshing = true
      sched.spawn(function()
        local _, err = self:list_tools(true)
        self.refreshing = false
        if err then log.debug("mcp %s: refreshing the tool list failed: %s", self.name, err.message) end
      end)
    end
  else
    log.debug("mcp %s: notification %s", self.name, method)
  end
end

-- The server's tools as MCP describes them (tools/list, every page).
-- refresh: ask again even when nothing said the list changed. -> list | nil, err
function Session:list_tools(refresh)
  if self.tool_list and not refresh and not self.tools_stale then return self.tool_list end
  if self.closed then return nil, rpc_mod.error(self.name, "the session is closed") end
  local list, cursor, seen = {}, nil, {}
  while true do
    local res, err = self.rpc:request("tools/list", cursor and { cursor = cursor } or nil, { timeout = self.timeout })
    if not res then return nil, err end
    for _, t in ipairs(type(res.tools) == "table" and res.tools or {}) do list[#list + 1] = t end
    cursor = res.nextCursor
    if cursor == nil or cursor == json.null then break end
    if type(cursor) ~= "string" or seen[cursor] then
      return nil, rpc_mod.error(self.name, "tools/list: the server repeated the page cursor %s", rpc_mod.excerpt(tostring(cursor)))
    end
    seen[cursor] = true
  end
  self.tools_stale = false
  self.tool_list = list
  self.tool_objects = nil
  self.generation = self.generation + 1
  return list
end

-- The tools as luachat.tool objects (name, description, parameters = inputSchema,
-- a handler that calls the server). opts.prefix: names are server__tool.
-- -> list | nil, err
function Session:tools(opts)
  local prefix = self.prefix
  if type(opts) == "table" and opts.prefix ~= nil then prefix = opts.prefix end
  local list, err = self:list_tools()
  if not list then return nil, err end
  if not self.tool_objects or self.tool_objects_prefix ~= prefix then
    self.tool_objects = mcp_tools.make_tools(self, list, prefix)
    self.tool_objects_prefix = prefix
  end
  local out = {}
  for i, t in ipairs(self.tool_objects) do out[i] = t end
  return out
end

-- tools/call: the CallToolResult table | nil, err (isError results are results).
-- opts: timeout (s), on_progress (function(progress, total, message)).
function Session:call(name, args, opts)
  if type(name) ~= "string" then error("bad argument #1 to 'call' (tool name expected, got " .. type(name) .. ")", 2) end
  if args ~= nil and type(args) ~= "table" then
    error("bad argument #2 to 'call' (table of arguments expected, got " .. type(args) .. ")", 2)
  end
  if opts ~= nil and type(opts) ~= "table" then
    error("bad argument #3 to 'call' (options table expected, got " .. type(opts) .. ")", 2)
  end
  opts = opts or {}
  if self.closed then return nil, rpc_mod.error(self.name, "tools/call %s: the session is closed", name) end
  local ok, params = pcall(function()
    local a = args or {}
    if next(a) == nil then a = json.object {} end
    json.encode(a) -- a function or NaN in the arguments is the caller's mistake
    return { name = name, arguments = a }
  end)
  if not ok then
    error("bad argument #2 to 'call' (" .. tostring(params):gsub("^[^\n]-:%d+: ", "") .. ")", 2)
  end
  return self.rpc:request("tools/call", params, {
    timeout = opts.timeout or self.timeout,
    on_progress = opts.on_progress or self.on_progress,
  })
end

-- ping: true | nil, err.
function Session:ping(timeout)
  local res, err = self.rpc:request("ping", nil, { timeout = timeout or self.timeout })
  if not res then return nil, err end
  return true
end

-- Why the server can no longer answer (it died, or a failure ended the
-- session), or nil while it can: "the server exited with status 3".
-- Noticed without a request: a stdio server's exit is seen by the loop.
function Session:gone()
  local dead = self.rpc and self.rpc.dead
  if dead then return (tostring(dead.message or dead):gsub("^mcp server '.-': ", "")) end
  local t = self.transport
  if t and t.proc and not t.closed and t.proc:exit_status() then return "the server " .. t:exit_text() end
  return nil
end

-- The last lines the server wrote to stderr (stdio servers), or "".
function Session:stderr()
  return self.transport.stderr_tail and self.transport:stderr_tail() or ""
end

-- End the session: pending calls fail, the server is told (stdin closed, or
-- DELETE), then a stdio server is terminated if it does not exit. Idempotent.
function Session:close()
  if self.closed then return end
  self.closed = true
  self.rpc:fail_all(rpc_mod.error(self.name, "the session is closed"))
  self.transport:close(M.CLOSE_GRACE)
end

-- Garbage collection: no waiting (no DELETE); the child is still ended.
function Session:__gc()
  if self.closed then return end
  self.closed = true
  self.rpc:fail_all(rpc_mod.error(self.name, "the session is closed"))
  self.transport:close(nil)
end
Session.__close = Session.close

function Session:__tostring()
  return string.format("luachat.McpSession (%s, %s%s)", self.name, self.where, self.closed and ", closed" or "")
end

-- luachat.mcp.connect{ command = {...} | url = "...", ... } -> session | nil, err
function M.connect(opts)
  if type(opts) ~= "table" then argerror("table expected, got " .. type(opts)) end
  options.check("mcp.connect", opts, M.CONNECT_OPTIONS)
  if (opts.command == nil) == (opts.url == nil) then
    argerror("give exactly one of command (a stdio server) and url (Streamable HTTP)")
  end
  if opts.url and (opts.env or opts.cwd or opts.inherit_env ~= nil) then
    argerror("env, inherit_env and cwd are for command (stdio) servers")
  end
  if opts.command and (opts.headers or opts.ca_file or opts.listen ~= nil) then
    argerror("headers, ca_file and listen are for url (Streamable HTTP) servers")
  end
  local name = opts.name or M.default_name(opts)
  local timeout = opts.timeout or M.DEFAULT_TIMEOUT
  local self = setmetatable({
    name = name, timeout = timeout, sampling = opts.sampling, on_progress = opts.on_progress,
    prefix = opts.prefix or false, generation = 0, closed = false,
    where = opts.url and redact.url(opts.url) or table.concat(opts.command, " "),
  }, Session)
  local transport, terr
  if opts.url then
    transport = require("luachat.mcp_http").new { name = name, url = opts.url, headers = opts.headers,
      timeout = timeout, ca_file = opts.ca_file }
  else
    transport, terr = require("luachat.mcp_stdio").new { name = name, command = opts.command, env = opts.env,
      cwd = opts.cwd, inherit_env = opts.inherit_env }
    if not transport then
      self.closed = true
      return nil, terr
    end
  end
  self.transport = transport
  self.rpc = rpc_mod.new {
    name = name, transport = transport,
    on_request = function(method, params) return self:on_request(method, params) end,
    on_notification = function(method, params) return self:on_notification(method, params) end,
  }
  transport:attach(self.rpc)
  local function fail(err)
    self:close()
    return nil, err
  end
  local caps = json.object {}
  if self.sampling then caps.sampling = json.object {} end
  local init, err = self.rpc:request("initialize", {
    protocolVersion = M.PROTOCOL_VERSIONS[1],
    capabilities = caps,
    clientInfo = { name = "luachat", version = core.version },
  }, { timeout = timeout })
  if not init then return fail(err) end
  local version = init.protocolVersion
  local known = false
  for _, v in ipairs(M.PROTOCOL_VERSIONS) do known = known or v == version end
  if not known then
    return fail(rpc_mod.error(name, "initialize: the server speaks MCP protocol version %s; luachat speaks %s",
      rpc_mod.excerpt(tostring(version)), table.concat(M.PROTOCOL_VERSIONS, " and ")))
  end
  self.protocol_version = version
  transport.protocol_version = version
  self.capabilities = type(init.capabilities) == "table" and init.capabilities or {}
  self.server_info = type(init.serverInfo) == "table" and init.serverInfo or {}
  self.instructions = type(init.instructions) == "string" and init.instructions or nil
  local nok, nerr = self.rpc:notify("notifications/initialized")
  if not nok then return fail(nerr) end
  if transport.flush then transport:flush() end -- nothing may overtake it on another connection
  if opts.listen and transport.listen then transport:listen() end
  if self.capabilities.tools ~= nil then
    local list, lerr = self:list_tools(true)
    if not list then return fail(lerr) end
  else
    self.tool_list = {}
  end
  log.debug("mcp %s: connected (%s, protocol %s, %d tools)", name, self.where, version, #self.tool_list)
  return self
end

-- Is v a session (for luachat.agent's tools list)?
function M.is_session(v)
  return getmetatable(v) == Session
end

return M
