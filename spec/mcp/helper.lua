-- spec/mcp/helper.lua: the MCP servers the MCP specs talk to.
-- Owns: installing the pinned reference servers (scripts/mcp-peers.sh, cached),
-- their command lines, the fault server's, and starting server-everything's
-- Streamable HTTP mode on a free port (stopped by the caller; a watchdog ends
-- it if this process dies first).
-- Never uses luachat itself to start or watch a server.
local proc = require "spec.helpers.proc"
local q, read_file = proc.shell_quote, proc.read_file

local M = {}

local function root()
  local src = debug.getinfo(1, "S").source
  local dir = src:match("^@(.*)/spec/mcp/[^/]*$")
  if dir and dir:sub(1, 1) ~= "/" then dir = proc.abspath(dir) end
  return ((dir or proc.abspath(".")):gsub("/%.$", ""))
end
M.root = root()

local NM = M.root .. "/spec/mcp/node_modules/@modelcontextprotocol/"
M.EVERYTHING = NM .. "server-everything/dist/index.js"
M.FILESYSTEM = NM .. "server-filesystem/dist/index.js"
M.FAULT = M.root .. "/spec/mcp/fault_server.mjs"

-- Install the reference servers if needed; an error (never a skip) when npm cannot.
function M.peers()
  local out, err, code = proc.run(q(M.root .. "/scripts/mcp-peers.sh") .. " 2>&1")
  assert(code == 0, "scripts/mcp-peers.sh failed: " .. tostring(out) .. tostring(err))
end

function M.everything() return { "node", M.EVERYTHING, "stdio" } end
function M.filesystem(dir) return { "node", M.FILESYSTEM, dir } end
function M.fault(...) return { "node", M.FAULT, ... } end

-- Run a shell command line, its output as a string.
local function sh(cmd)
  local p = io.popen(cmd)
  local s = p:read("a")
  p:close()
  return s
end

local function free_port()
  return tonumber(sh([[python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])']]))
end

local function own_pid()
  return tonumber((read_file("/proc/self/stat") or ""):match("^(%d+)"))
end

local function alive(pid)
  local stat = read_file("/proc/" .. pid .. "/stat")
  local state = stat and stat:match("%)%s+(%a)")
  return state ~= nil and state ~= "Z" and state ~= "X"
end
M.alive = alive

-- server-everything's Streamable HTTP mode: { url=, pid=, log=, stop=, kill= }.
-- Ready when it says it listens (its log), within 60 s.
function M.everything_http()
  local dir = proc.tmpdir()
  local log = dir .. "/log"
  for _ = 1, 5 do
    local port = free_port()
    -- The watchdog shell ends node when this process (busted) is gone.
    local pid = tonumber(sh(string.format(
      "PORT=%d node %s streamableHttp >%s 2>&1 & n=$!; " ..
      "(while kill -0 %d 2>/dev/null && kill -0 $n 2>/dev/null; do sleep 1; done; kill $n 2>/dev/null) " ..
      ">/dev/null 2>&1 & echo $n",
      port, q(M.EVERYTHING), q(log), own_pid())))
    local deadline = os.time() + 60
    while os.time() <= deadline do
      local text = read_file(log) or ""
      if text:find("listening on port") then
        local srv = { url = string.format("http://127.0.0.1:%d/mcp", port), pid = pid, log = log, dir = dir }
        function srv.kill() os.execute("kill -9 " .. pid .. " 2>/dev/null") end
        function srv.stop()
          os.execute("kill " .. pid .. " 2>/dev/null")
          os.execute("rm -rf " .. q(dir))
        end
        function srv.text() return read_file(log) or "" end
        return srv
      end
      if text:find("EADDRINUSE") or text:find("already in use") or not alive(pid) then break end
      os.execute("sleep 0.1")
    end
    os.execute("kill -9 " .. pid .. " 2>/dev/null")
  end
  error("server-everything streamableHttp did not start: " .. (read_file(log) or "no output"))
end

-- Lines of a fault server's --log file, decoded.
function M.log_lines(path)
  local json = require "luachat.json"
  local out = {}
  for line in (read_file(path) or ""):gmatch("[^\n]+") do out[#out + 1] = json.decode(line) end
  return out
end

-- A scripted model turn for the test server: tool calls (helper.call) or text.
function M.call(id, name, arguments)
  return { id = id, type = "function", ["function"] = { name = name, arguments = arguments } }
end

function M.reply(calls, text)
  return { json = {
    id = "chatcmpl-a", object = "chat.completion", created = 1, model = "m",
    choices = { { index = 0, finish_reason = calls and "tool_calls" or "stop",
      message = { role = "assistant", content = text or require("cjson").null, tool_calls = calls } } },
    usage = { prompt_tokens = 10, completion_tokens = 5, total_tokens = 15 },
  } }
end

return M
