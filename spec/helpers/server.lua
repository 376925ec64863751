-- spec/helpers/server.lua: start, script and stop scripts/testserver.py from busted.
-- Owns: the server process (spawned with --parent-pid of this Lua process, so
-- it dies with us), its temp directory, and the control API calls.
-- Must never use luachat itself (plain Lua 5.4 + lua-cjson + the curl
-- command-line tool), so a bug under test cannot hide in the harness.
--
--   local srv = server.start()   srv.url, srv.base_url, srv.pid
--   srv:script{R...}  srv:append{R...}  srv:default(R or nil)  srv:reset()
--   srv:requests()    srv:stats()       srv:progress()    srv:stop()
--   srv:release(gate) srv:gates()      (sse gates: partial-delivery specs)
--
-- Lua tables go to the server as JSON via cjson, and Debian's cjson 2.1.0
-- encodes an empty table as {}: an empty `sse = {}` is unusual anyway; a table
-- carrying a metatable with __jsontype = "array" (luachat.json.array) is sent
-- as [], and a `json` body needing [] can also be given pre-encoded as
-- `body = "[]", content_type = "application/json"`.
local cjson = require "cjson"

local M = {}
local Server = {}
Server.__index = Server

local proc = require "spec.helpers.proc"
local shell_quote, read_file = proc.shell_quote, proc.read_file

local function sleep(s)
  os.execute("sleep " .. s)
end

-- Wall clock with sub-second resolution (os.clock is CPU time, os.time whole seconds).
local function now()
  local p = io.popen("date +%s.%N")
  local t = tonumber(p:read("l"))
  p:close()
  return t or os.time()
end

-- The repository root, from this file's own path (spec/helpers/server.lua),
-- so specs may run from anywhere; "." when the path is not known.
local function repo_root()
  local src = debug.getinfo(1, "S").source
  local dir = src:match("^@(.*)/spec/helpers/[^/]*$")
  return dir or (src:match("^@spec/helpers/") and ".") or "."
end

-- The pid of this Lua process. Linux: the first field of /proc/self/stat as
-- read by this very process. Elsewhere: $PPID of the shell io.popen starts
-- (that shell's parent is us).
function M.own_pid()
  local stat = read_file("/proc/self/stat")
  local pid = stat and tonumber(stat:match("^(%d+)"))
  if pid then return pid end
  local p = io.popen("echo $PPID")
  pid = tonumber(p:read("l"))
  p:close()
  return pid
end

-- Is pid running? kill -0 succeeds on a zombie, and here an orphaned server
-- that exited stays a zombie when nobody reaps it: read its state as well.
function M.alive(pid)
  local stat = read_file("/proc/" .. pid .. "/stat")
  if stat then
    local state = stat:match("%)%s+(%a)")
    return state ~= "Z" and state ~= "X"
  end
  return os.execute("kill -0 " .. pid .. " 2>/dev/null") == true
end

-- Spawn the server in the background and wait (<= 10 s) for its port file.
-- opts (optional): { args = "extra command-line arguments", parent_pid = pid to
-- watch instead of this process, tls = { cert = path, key = path } for HTTPS }.
function M.start(opts)
  opts = opts or {}
  local scheme = "http"
  if opts.tls then
    scheme = "https"
    opts.args = string.format("%s --tls-cert %s --tls-key %s", opts.args or "", shell_quote(opts.tls.cert),
      shell_quote(opts.tls.key))
  end
  local dir = os.tmpname()
  os.remove(dir)
  assert(os.execute("mkdir -p " .. shell_quote(dir)), "cannot create a temp directory")
  local port_file = dir .. "/port"
  local log = dir .. "/log"
  local cmd = string.format("python3 %s --port-file %s --parent-pid %d %s >%s 2>&1 & echo $!",
    shell_quote(repo_root() .. "/scripts/testserver.py"), shell_quote(port_file), opts.parent_pid or M.own_pid(),
    opts.args or "", shell_quote(log))
  local p = io.popen(cmd)
  local pid = tonumber(p:read("l"))
  p:close()
  if not pid then
    os.execute("rm -rf " .. shell_quote(dir))
    error("test server: could not spawn python3")
  end
  local port
  local deadline = now() + 10
  repeat
    port = tonumber(read_file(port_file) or "")
    if port or not M.alive(pid) then break end
    sleep(0.05)
  until now() > deadline
  if not port then
    local why = M.alive(pid) and "no port file after 10 s" or "it exited"
    os.execute("kill -9 " .. pid .. " 2>/dev/null")
    local text = read_file(log) or ""
    os.execute("rm -rf " .. shell_quote(dir))
    error("test server did not start (" .. why .. "): " .. (text ~= "" and text or "no output"), 2)
  end
  return setmetatable({ pid = pid, port = port, dir = dir, log = log,
    url = scheme .. "://127.0.0.1:" .. port, base_url = scheme .. "://127.0.0.1:" .. port .. "/v1" }, Server)
end

-- cjson 2.1.0 sends every empty table as {}: tables marked as arrays (a
-- metatable with __jsontype = "array", as luachat.json.array gives) are
-- swapped for a sentinel, then the sentinel for [] in the text.
local EMPTY = "\1luachat-empty-array\1"
local function prepare(v)
  if type(v) ~= "table" then return v end
  local mt = getmetatable(v)
  if next(v) == nil and mt and mt.__jsontype == "array" then return EMPTY end
  local c = {}
  for k, x in pairs(v) do c[k] = prepare(x) end
  return c
end

local function encode(v)
  return (cjson.encode(prepare(v)):gsub('"\\u0001luachat%-empty%-array\\u0001"', "[]"))
end
M.encode = encode

-- POST (value given; the body goes through a temp file) or GET a control
-- path; returns the decoded answer, raises on a transport or control error.
function Server:control(path, value)
  assert(not self.stopped, "test server already stopped")
  local body = self.dir .. "/control.json"
  local data = ""
  if value ~= nil then
    data = "--data-binary @" .. shell_quote(body) .. " -H 'Content-Type: application/json'"
    local f = assert(io.open(body, "wb"))
    f:write(value == cjson.null and "null" or encode(value))
    f:close()
  end
  -- -k: the control channel of a TLS test server uses its throwaway certificate
  local p = io.popen(string.format("curl -sSk --max-time 30 %s %s 2>&1", data, shell_quote(self.url .. path)))
  local out = p:read("a")
  p:close()
  local ok, doc = pcall(cjson.decode, out)
  if not ok then error("test server control " .. path .. " failed: " .. tostring(out), 3) end
  if type(doc) == "table" and type(doc.error) == "table" then
    error("test server control " .. path .. ": " .. tostring(doc.error.message), 3)
  end
  return doc
end

function Server:script(responses) self:control("/_control/script", { responses = responses }) end
function Server:append(responses) self:control("/_control/append", { responses = responses }) end
function Server:default(response)
  self:control("/_control/default", response == nil and cjson.null or response)
end
function Server:reset() self:control("/_control/reset", {}) end
-- sse gates (scripts/README.md): release one, getting its state before the call
-- ("armed": the server was still holding back the events after it); all states.
function Server:release(gate) return self:control("/_control/release", { gate = gate }).state end
function Server:gates() return self:control("/_control/gates") end
function Server:stats() return self:control("/_control/stats") end
-- Responses served with `sndbuf`: { {request = n, sent = bytes the kernel took, done = bool}, ... }
function Server:progress() return self:control("/_control/progress") end

-- The request log; each entry also gets .json, the decoded body when it is JSON.
function Server:requests()
  local list = self:control("/_control/requests")
  for _, r in ipairs(list) do
    if r.body ~= "" then
      local ok, doc = pcall(cjson.decode, r.body)
      if ok and doc ~= nil then r.json = doc end
    end
  end
  return list
end

function Server:alive()
  return M.alive(self.pid)
end

-- SIGTERM, wait until the process is gone (<= 5 s, then SIGKILL), remove the
-- temp files. Idempotent; returns true when SIGTERM alone was enough.
function Server:stop()
  if self.stopped then return self.clean_exit end
  self.stopped = true
  os.execute("kill " .. self.pid .. " 2>/dev/null")
  local deadline = now() + 5
  while self:alive() and now() < deadline do sleep(0.05) end
  self.clean_exit = not self:alive()
  if not self.clean_exit then
    os.execute("kill -9 " .. self.pid .. " 2>/dev/null")
    for _ = 1, 40 do
      if not self:alive() then break end
      sleep(0.05)
    end
  end
  os.execute("rm -rf " .. shell_quote(self.dir))
  return self.clean_exit
end

-- `local srv <close> = server.start()` works, and a forgotten server is
-- stopped when the state closes.
Server.__close = Server.stop
Server.__gc = Server.stop

return M
