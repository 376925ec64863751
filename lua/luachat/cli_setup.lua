-- luachat.cli_setup: the run context both chat modes share.
--
-- Owns: reading the config and the environment (via luachat.profiles), the
-- client, loading --tools, the output styles and spinner, and the agent a
-- context makes. A setup failure is one stderr line and an exit code.
-- Never: sends a request, writes to stdout, or prints an API key.
local luachat = require "luachat"
local profiles = require "luachat.profiles"
local options = require "luachat.cli_options"
local term = require "luachat.cli_term"
local util = require "luachat.util"

local EXIT = options.EXIT
local one_line = term.one_line

local M = {}

-- An environment variable as luachat reads every one (luachat.util.getenv:
-- trimmed, set but empty is unset); one with a control character inside is unset here.
function M.getenv(name)
  return (util.getenv(name))
end
local getenv = M.getenv

-- load_tools(path) -> list of tools | nil, message. A file returning one
-- tool (`return luachat.tool{...}`) gives a list of one; a plain table in the
-- list is made a tool here, so its error names the file, not luachat's lines.
-- Several values (`return tool1, tool2`) are refused: return one list.
local function load_tools(path)
  local chunk, err = loadfile(path, "t")
  if not chunk then return nil, "--tools: " .. err end
  local got = table.pack(xpcall(chunk, debug.traceback))
  local ok, res = got[1], got[2]
  if not ok then return nil, "--tools: " .. path .. ": " .. one_line(res, 400) end
  if got.n > 2 then
    return nil, string.format("--tools: %s returned %d values: return one list, { tool1, tool2 }", path, got.n - 1)
  end
  if type(res) ~= "table" then
    return nil, "--tools: " .. path .. " must return a list of luachat.tool{...}, got " .. type(res)
  end
  if luachat.agent.is_tool(res) then res = { res } end
  for i, t in ipairs(res) do
    if type(t) ~= "table" then
      return nil, string.format("--tools: %s: item %d is a %s, not a luachat.tool", path, i, type(t))
    end
    if getmetatable(t) ~= luachat.agent.Tool then
      local tok, tool = pcall(luachat.tool, t)
      if not tok then
        return nil, string.format("--tools: %s: item %d: %s", path, i, one_line(tostring(tool):gsub("^[^\n]-:%d+: ", ""), 400))
      end
      res[i] = tool
    end
  end
  return res
end

-- The MCP servers of --mcp (argv lists) and of the profile's `mcp` table
-- (by name), connected in that order: list of sessions | nil, message (the
-- ones already connected are closed then).
function M.connect_mcp(o, s)
  local specs = {}
  for i, argv in ipairs(o.mcp or {}) do
    local text = o.mcp_text and o.mcp_text[i] or table.concat(argv, " ")
    specs[#specs + 1] = { what = "--mcp " .. require("luachat.cli_options").mcp_label(text), opts = { command = argv } }
  end
  local names = {}
  for name in pairs(s.mcp or {}) do names[#names + 1] = name end
  table.sort(names)
  for _, name in ipairs(names) do
    local c = {}
    for k, v in pairs(s.mcp[name]) do c[k] = v end
    c.name = c.name or name
    -- connect's errors name the server already ("mcp server 'fs': ...").
    specs[#specs + 1] = { what = "profile " .. s.profile, opts = c }
  end
  local sessions, used = {}, {}
  for _, spec in ipairs(specs) do
    -- Two --mcp servers named alike (the same program) get name, name_2, ...
    local base = spec.opts.name or luachat.mcp.default_name(spec.opts)
    local name, n = base, 1
    while used[name] do
      n = n + 1
      name = base .. "_" .. n
    end
    used[name] = true
    spec.opts.name = name
    local ok, session, err = pcall(luachat.mcp.connect, spec.opts)
    if not ok or not session then
      M.close_mcp { mcp = sessions }
      local why = ok and err or session
      why = type(why) == "table" and why.message or tostring(why):gsub("^[^\n]-:%d+: ", "")
      return nil, one_line(spec.what .. ": " .. tostring(why), 600)
    end
    sessions[#sessions + 1] = session
  end
  return sessions
end

-- End the context's MCP sessions (stdio servers are asked to exit, then ended).
function M.close_mcp(ctx)
  for _, session in ipairs(ctx.mcp or {}) do session:close() end
end

-- setup(opts) -> ctx | nil, exit code. ctx: everything a run needs:
-- settings, client, tools, output styles, spinner.
function M.setup(o)
  local env_names = { XDG_CONFIG_HOME = getenv("XDG_CONFIG_HOME"), HOME = getenv("HOME") }
  local config, cerr = profiles.load_config(profiles.config_path(env_names))
  if not config then
    io.stderr:write("luachat: ", one_line(cerr, 400), "\n")
    return nil, EXIT.error
  end
  local s, err, kind = profiles.resolve(
    { profile = o.profile, base_url = o.base_url, model = o.model, system = o.system },
    profiles.environment(config), config)
  if not s then
    io.stderr:write("luachat: ", err, "\n")
    return nil, kind == "usage" and EXIT.usage or EXIT.error
  end
  local cassette_problem = require("luachat.cassette").check_env() -- a CLI-worded usage error
    or require("luachat.log").check_env() -- LUACHAT_LOG=bogus is one too
  if cassette_problem then
    io.stderr:write("luachat: ", one_line(cassette_problem, 400), "\n")
    return nil, EXIT.usage
  end
  local ok, client = pcall(luachat.client, {
    base_url = s.base_url, api_key = s.api_key, headers = s.headers, query = s.query,
    organization = s.organization, project = s.project,
  })
  if not ok then
    io.stderr:write("luachat: ", s.profile, ": ", one_line((tostring(client):gsub("^.-bad argument", "bad argument"))), "\n")
    return nil, EXIT.usage
  end
  local tools
  if o.tools then
    local terr
    tools, terr = load_tools(o.tools)
    if not tools then
      io.stderr:write("luachat: ", terr, "\n")
      return nil, EXIT.error
    end
  end
  local sessions, merr = M.connect_mcp(o, s)
  if not sessions then
    io.stderr:write("luachat: ", merr, "\n")
    return nil, EXIT.error
  end
  if #sessions > 0 then
    tools = tools or {}
    for _, session in ipairs(sessions) do tools[#tools + 1] = session end
    -- A name two servers offer: said now, not when the agent is made.
    local eok, eerr = pcall(require("luachat.mcp_tools").expand, tools)
    if not eok then
      M.close_mcp { mcp = sessions }
      local msg = type(eerr) == "table" and eerr.message or tostring(eerr)
      if type(eerr) == "table" and eerr.tool_name then
        -- The library's hint names Lua options; on the command line prefix = true lives in a profile.
        msg = msg:gsub(" %(connect with prefix = true.*%)$", "") .. " (list the servers in a config profile's "
          .. "mcp = { NAME = {...} } with prefix = true to name them " .. eerr.prefixed .. "; see docs/MCP.md)"
      end
      io.stderr:write("luachat: ", one_line(msg, 600), "\n")
      return nil, EXIT.error
    end
  end
  local color = getenv("NO_COLOR") == nil
  local ctx = {
    o = o, s = s, client = client, tools = tools, mcp = sessions,
    model = s.model, system = s.system,
    err_tty = term.isatty(2), out_tty = term.isatty(1), in_tty = term.isatty(0),
  }
  ctx.estyle = term.styler(color and ctx.err_tty)
  ctx.ostyle = term.styler(color and ctx.out_tty)
  ctx.spinner = term.spinner(ctx.err_tty, ctx.estyle)
  return ctx
end

-- An agent's options: this context's model, system prompt, tools, and
-- callbacks that show the reply and the tool calls (text also goes to
-- ctx.partial, which the caller resets per run).
function M.agent_options(ctx)
  return {
    client = ctx.client,
    model = ctx.model,
    system = ctx.system,
    tools = ctx.tools,
    max_turns = ctx.o.max_turns,
    stream = not ctx.o.no_stream,
    on_text = function(text)
      ctx.partial[#ctx.partial + 1] = text
      if not ctx.o.json then term.out(ctx, text) end
    end,
    on_tool_call = function(call) term.show_tool_call(ctx, call) end,
    on_tool_result = function(call, result, err_text) term.show_tool_result(ctx, call, result, err_text) end,
  }
end

function M.new_agent(ctx)
  return luachat.agent(M.agent_options(ctx))
end

return M
