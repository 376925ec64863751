-- spec/helpers/proc.lua: files and subprocesses for the specs (plain Lua 5.4,
-- no luachat: a bug under test cannot hide in the harness). One meaning per
-- helper: read_file never deletes, run always cleans up its temp files,
-- tmpdir always hands back a fresh empty directory or raises.
local M = {}

-- The luachat binary under test (make asan points this at the ASan build).
M.host = os.getenv("LUACHAT_HOST") or "./luachat"

-- s as one single-quoted sh word.
function M.shell_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

-- The file's bytes, or nil when it cannot be read.
function M.read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

-- Replace the file's content with data; raises when it cannot be written.
-- The lines of a file ({} when it does not exist).
function M.read_lines(path)
  local out = {}
  local f = io.open(path, "rb")
  if not f then return out end
  for l in f:lines() do out[#out + 1] = l end
  f:close()
  return out
end

function M.write_file(path, data)
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
end

-- Run a shell command line (stdin: the given text, else /dev/null).
-- Returns stdout, stderr and the exit code.
function M.run(cmdline, stdin)
  local out, err = os.tmpname(), os.tmpname()
  local input = "/dev/null"
  if stdin then
    input = os.tmpname()
    M.write_file(input, stdin)
  end
  local _, _, code = os.execute(string.format("( %s ) <%s >%s 2>%s", cmdline, input, out, err))
  local o, e = M.read_file(out) or "", M.read_file(err) or ""
  os.remove(out)
  os.remove(err)
  if stdin then os.remove(input) end
  return o, e, code
end

-- A new empty directory (the caller removes it); raises when it cannot be made.
function M.tmpdir()
  local p = os.tmpname()
  os.remove(p)
  assert(os.execute("mkdir -p " .. M.shell_quote(p)), "cannot create a temp directory")
  return p
end

-- p made absolute against the working directory (a leading "./" dropped),
-- for commands that run after a `cd`.
function M.abspath(p)
  if p:sub(1, 1) == "/" then return p end
  local pwd = os.getenv("PWD")
  if not pwd then
    local pipe = io.popen("pwd")
    pwd = pipe:read("l")
    pipe:close()
  end
  return pwd .. "/" .. p:gsub("^%./", "")
end

return M
