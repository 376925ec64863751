-- luachat-scm-1.rockspec against the tree: it installs exactly the Lua
-- modules in lua/luachat/ (a new module missing from it, or a removed one
-- still listed, fails here) and builds luachat.core from the C sources the
-- Makefile's core.so is linked from, with its defines. Plain Lua: the
-- rockspec is read as luarocks reads it (a chunk of assignments), and
-- `luarocks lint` runs when luarocks is installed.
-- (Named batch_* because it belongs to the helper that keeps the rockspec;
-- it checks no batch behaviour.)
local proc = require "spec.helpers.proc"

local ROCKSPEC = "luachat-scm-1.rockspec"

local function load_rockspec()
  local env = {}
  local chunk = assert(loadfile(ROCKSPEC, "t", env))
  chunk()
  return env
end

local function sorted_keys(t)
  local out = {}
  for k in pairs(t) do out[#out + 1] = k end
  table.sort(out)
  return out
end

-- The Makefile's value of a `NAME := ...` (or `?=`, `=`) variable, as words.
local function make_var(text, name)
  local value = text:match("\n" .. name .. "%s*[:?]?=%s*([^\n]*)")
  assert(value, "no " .. name .. " in the Makefile")
  local words = {}
  for w in value:gmatch("%S+") do words[#words + 1] = w end
  return words
end

describe("luachat-scm-1.rockspec", function()
  local spec = load_rockspec()
  local modules = spec.build.modules

  it("lists exactly the Lua modules of lua/luachat/", function()
    local want = {}
    local p = io.popen("ls lua/luachat/*.lua")
    for file in p:lines() do
      local name = file:match("^lua/luachat/([%w_]+)%.lua$")
      assert(name, "odd module file name: " .. file)
      want[name == "init" and "luachat" or ("luachat." .. name)] = file
    end
    p:close()
    assert.is_not_nil(want["luachat.batch"], "ls found no modules")
    local have = {}
    for name, v in pairs(modules) do
      if type(v) == "string" then have[name] = v end
    end
    assert.same(sorted_keys(want), sorted_keys(have))
    assert.same(want, have)
  end)

  it("builds luachat.core from the sources and defines of the Makefile's core.so", function()
    local mk = "\n" .. assert(proc.read_file("Makefile"))
    assert.same({ "$(BUILD)/luachat/core.so" }, make_var(mk, "MODULE"))
    -- core.so links ENGINE_OBJ: the objects of these source lists
    local src = {}
    for _, obj in ipairs(make_var(mk, "ENGINE_OBJ")) do
      local list = assert(obj:match("^%$%((%u+)_OBJ%)$"), "odd ENGINE_OBJ word: " .. obj)
      for _, file in ipairs(make_var(mk, list .. "_SRC")) do src[#src + 1] = file end
    end
    table.sort(src)
    local core = modules["luachat.core"]
    assert.is_table(core)
    local have = { table.unpack(core.sources) }
    table.sort(have)
    assert.same(src, have)
    local defines = {}
    for d in mk:match("\nALL_CFLAGS%s*=%s*([^\n]*)"):gmatch("%-D(%S+)") do defines[#defines + 1] = d end
    assert.same(defines, core.defines)
    for _, file in ipairs(src) do assert.is_not_nil(proc.read_file(file), file .. " does not exist") end
  end)

  it("has a source.url luarocks can parse, and passes luarocks lint when luarocks is installed", function()
    assert.matches("^git%+[%a]+://.", spec.source.url)
    assert.equal("scm-1", spec.version)
    if os.execute("command -v luarocks >/dev/null 2>&1") then
      local out, err, code = proc.run("luarocks lint " .. ROCKSPEC)
      assert.equal(0, code, out .. err)
    end
  end)
end)
