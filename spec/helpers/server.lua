-- spec/helpers/server.lua: start, script and stop scripts/testserver.py from busted.
-- Plain Lua + cjson + the curl command-line tool: it never uses luachat itself,
-- so a bug under test cannot hide in the harness.
local cjson = require "cjson"

local M = {}
local Server = {}
Server.__index = Server

local function shell_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

local function sleep(s)
  os.execute("sleep " .. s)
end

-- The pid of this Lua process: the parent of a shell it spawns.
local function own_pid()
  local p = io.popen("echo $PPID")
  local pid = p:read("l")
  p:close()
  return tonumber(pid)
end

function M.start()
  local dir = os.tmpname()
  os.remove(dir)
  assert(os.execute("mkdir -p " .. shell_quote(dir)))
  local port_file = dir .. "/port"
  local cmd = string.format("python3 scripts/testserver.py --port-file %s --parent-pid %d >%s 2>&1 & echo $!",
    shell_quote(port_file), own_pid(), shell_quote(dir .. "/log"))
  local p = io.popen(cmd)
  local pid = tonumber(p:read("l"))
  p:close()
  local port
  for _ = 1, 200 do
    port = tonumber(read_file(port_file) or "")
    if port then break end
    sleep(0.05)
  end
  if not port then
    os.execute("kill " .. (pid or 0) .. " 2>/dev/null")
    error("test server did not start: " .. (read_file(dir .. "/log") or "no log"))
  end
  local srv = setmetatable({ pid = pid, port = port, dir = dir,
    url = "http://127.0.0.1:" .. port, base_url = "http://127.0.0.1:" .. port .. "/v1" }, Server)
  return srv
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

-- POST/GET a control path; returns the decoded answer.
function Server:control(path, value)
  local body = self.dir .. "/control.json"
  local data = ""
  if value ~= nil then
    data = "--data-binary @" .. shell_quote(body) .. " -H 'Content-Type: application/json'"
    local f = assert(io.open(body, "wb"))
    f:write(value == cjson.null and "null" or encode(value))
    f:close()
  end
  local p = io.popen(string.format("curl -sS --max-time 30 %s %s", data, shell_quote(self.url .. path)))
  local out = p:read("a")
  p:close()
  local ok, doc = pcall(cjson.decode, out)
  if not ok then error("test server control " .. path .. " failed: " .. tostring(out)) end
  return doc
end

function Server:script(responses) self:control("/_control/script", { responses = responses }) end
function Server:append(responses) self:control("/_control/append", { responses = responses }) end
function Server:default(response) self:control("/_control/default", response == nil and cjson.null or response) end
function Server:reset() self:control("/_control/reset", {}) end
function Server:stats() return self:control("/_control/stats") end

function Server:requests()
  local list = self:control("/_control/requests")
  for _, r in ipairs(list) do
    local ok, doc = pcall(cjson.decode, r.body)
    if ok and type(doc) == "table" then r.json = doc end
  end
  return list
end

function Server:alive()
  return os.execute("kill -0 " .. self.pid .. " 2>/dev/null") == true
end

function Server:stop()
  if self.stopped then return end
  self.stopped = true
  os.execute("kill " .. self.pid .. " 2>/dev/null")
  for _ = 1, 100 do
    if not self:alive() then break end
    sleep(0.05)
  end
  if self:alive() then os.execute("kill -9 " .. self.pid .. " 2>/dev/null") end
  os.execute("rm -rf " .. shell_quote(self.dir))
end

return M
