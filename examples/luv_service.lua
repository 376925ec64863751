-- luv_service.lua: a small TCP service on a libuv loop (luv, as in Neovim and
-- Luvit). Each line a client sends is a prompt; the reply streams back as the
-- model writes it, then a newline. luachat runs inside uv.run() beside the
-- service's own handles (luachat.luv); lines of one connection are answered in
-- order, connections at the same time.
--   luachat examples/luv_service.lua [port]      (or: lua5.4 examples/luv_service.lua)
--   printf 'Why is the sky blue?\n' | nc 127.0.0.1 PORT
-- Uses OPENAI_BASE_URL / OPENAI_API_KEY; LUACHAT_MODEL picks the model.
-- SIGTERM or SIGINT: stop listening, detach from the loop, exit 0.
local uv = require "luv"
local luachat = require "luachat"

local client = luachat.client()
local model = os.getenv("LUACHAT_MODEL") or "gpt-4o-mini"
local detach = luachat.luv(uv)

-- Answer the queued lines of one connection, one after the other (a task).
local function answer(conn)
  while #conn.lines > 0 and not conn.closed do
    local line = table.remove(conn.lines, 1)
    local _, err = client:stream({ model = model, messages = { { role = "user", content = line } } }, {
      on_text = function(text)
        if conn.closed then return false end -- the client left: stop the stream
        conn.sock:write(text)
      end,
    })
    if err and not conn.closed then conn.sock:write("[error: " .. err.message .. "]") end
    if not conn.closed then conn.sock:write("\n") end
  end
  conn.busy = false
end

local server = uv.new_tcp()
assert(server:bind("127.0.0.1", tonumber(arg[1]) or 0))
assert(server:listen(64, function(err)
  if err then return end
  local conn = { sock = uv.new_tcp(), lines = {}, buf = "", busy = false, closed = false }
  server:accept(conn.sock)
  conn.sock:read_start(function(rerr, data)
    if rerr or not data then
      conn.closed = true
      conn.sock:close()
      return
    end
    conn.buf = conn.buf .. data
    for line in conn.buf:gmatch("([^\n]*)\n") do
      line = line:gsub("\r$", "")
      if line ~= "" then conn.lines[#conn.lines + 1] = line end
    end
    conn.buf = conn.buf:match("[^\n]*$")
    if not conn.busy and #conn.lines > 0 then
      conn.busy = true
      luachat.spawn(answer, conn) -- errors stay in the task; the service goes on
    end
  end)
end))
print(string.format("listening on 127.0.0.1:%d", server:getsockname().port))
io.stdout:flush()

-- The signal handles stay (unreferenced: they never keep the loop running), so
-- a second signal, as `timeout` sends, finds the handler rather than the default.
local signals = {}
local function stop()
  server:close()
  detach()
  uv.walk(function(h)
    if not h:is_closing() and not signals[h] then h:close() end
  end)
end
for _, name in ipairs { "sigterm", "sigint" } do
  local sig = uv.new_signal()
  sig:start(name, stop)
  sig:unref()
  signals[sig] = true
end

uv.run()
