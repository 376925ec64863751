-- files.lua: a file agent confined to one directory.
--   luachat examples/files.lua DIR "Summarise the notes in this folder"
-- The tools list, read and write files under DIR only: any path that would
-- leave it (absolute, "..", a symlink pointing out) is refused.
local luachat = require "luachat"

local root = assert(arg[1], "usage: files.lua DIR [request]")
local request = arg[2] or "List the files and summarise what they contain."

local function shell_quote(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

-- The real path of p (symlinks resolved), or nil.
local function realpath(p)
  local h = io.popen("realpath -m -- " .. shell_quote(p) .. " 2>/dev/null")
  local out = h and h:read("l")
  if h then h:close() end
  return out
end

local real_root = assert(realpath(root), "cannot resolve " .. root)

-- Resolve a path given by the model; refuse anything outside the root.
local function confine(rel)
  if type(rel) ~= "string" or rel == "" then return nil, "a relative path is required" end
  if rel:sub(1, 1) == "/" then return nil, "absolute paths are not allowed: " .. rel end
  local full = realpath(real_root .. "/" .. rel)
  if not full or (full ~= real_root and full:sub(1, #real_root + 1) ~= real_root .. "/") then
    return nil, "path is outside the allowed directory: " .. rel
  end
  return full
end

local list_files = luachat.tool {
  name = "list_files",
  description = "List the files in the working directory (recursively)",
  parameters = { type = "object", properties = {} },
  handler = function()
    local h = io.popen("cd " .. shell_quote(real_root) .. " && find . -type f | sort | head -200")
    local names = {}
    for line in h:lines() do names[#names + 1] = line:gsub("^%./", "") end
    h:close()
    return { files = luachat.json.array(names) }
  end,
}

local read_file = luachat.tool {
  name = "read_file",
  description = "Read a text file (at most 64 KiB) by its path relative to the working directory",
  parameters = { type = "object", properties = { path = { type = "string" } }, required = { "path" } },
  handler = function(args)
    local full, err = confine(args.path)
    if not full then return nil, err end
    local f, ferr = io.open(full, "rb")
    if not f then return nil, ferr end
    local data = f:read(65536) or ""
    f:close()
    return data
  end,
}

local write_file = luachat.tool {
  name = "write_file",
  description = "Create or replace a text file by its path relative to the working directory",
  parameters = {
    type = "object",
    properties = { path = { type = "string" }, content = { type = "string" } },
    required = { "path", "content" },
  },
  handler = function(args)
    local full, err = confine(args.path)
    if not full then return nil, err end
    local f, ferr = io.open(full, "wb")
    if not f then return nil, ferr end
    f:write(args.content)
    f:close()
    return { written = args.path, bytes = #args.content }
  end,
}

local mid_line = false -- the streamed text has not ended its line yet

local agent = luachat.agent {
  client = luachat.client(),
  model = os.getenv("LUACHAT_MODEL") or "gpt-4o-mini",
  system = "You manage files in one working directory. Use relative paths only.",
  tools = { list_files, read_file, write_file },
  stream = true,
  on_text = function(text)
    io.write(text)
    io.stdout:flush()
    mid_line = text:sub(-1) ~= "\n"
  end,
  on_tool_call = function(call)
    -- the text before the calls ends its line: the next turn's text starts a new one
    if mid_line then io.write("\n") io.stdout:flush() mid_line = false end
    io.stderr:write("  -> ", call.name, " ", call.arguments, "\n")
    return true
  end,
  on_tool_result = function(_, result, err)
    io.stderr:write("  <- ", err and ("error: " .. err) or (#result > 120 and result:sub(1, 117) .. "..." or result), "\n")
  end,
}

print("> " .. request)
local result, err = agent:run(request)
if mid_line then print() end
if not result then
  io.stderr:write(tostring(err), "\n")
  os.exit(1)
end
