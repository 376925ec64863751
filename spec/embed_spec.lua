-- Embedding luachat (docs/EMBEDDING.md): `make install` into a temporary
-- DESTDIR; then a stock lua5.4 pointed at that tree with LUA_PATH/LUA_CPATH,
-- a C program built with `pkg-config --cflags --libs luachat`, and a C
-- program that drives luachat.step from its own poll(2) loop all talk to
-- the local test server; `make uninstall` leaves no file behind.
-- run-tests: once (it only builds and runs programs; scripts/run-tests.sh)
local have_server, server = pcall(require, "spec.helpers.server")
if not have_server then have_server, server = pcall(dofile, "spec/helpers/server.lua") end

local PREFIX = "/usr/local"
local LUA_VER = "5.4"

local proc = require "spec.helpers.proc"
local q, slurp, spit, run = proc.shell_quote, proc.read_file, proc.write_file, proc.run

local function have(tool)
  local _, _, code = run("command -v " .. tool)
  return code == 0
end

-- Which of the tools are absent ("" when none).
local function absent(tools)
  local miss = {}
  for _, t in ipairs(tools) do
    if not have(t) then miss[#miss + 1] = t end
  end
  return table.concat(miss, ", ")
end

-- `make` as a child of the spec, not of a `make test` that may have set variables.
local MAKE = "env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make -s --no-print-directory"

local TEXT = { "Once ", "upon ", "a ", "time", "." }

local function sse_script(delay)
  local events = {}
  for i, t in ipairs(TEXT) do
    events[#events + 1] = { delay = delay, json = {
      id = "chatcmpl-e", object = "chat.completion.chunk", created = 1700000000, model = "m",
      choices = { { index = 0, delta = i == 1 and { role = "assistant", content = t } or { content = t } } } } }
  end
  events[#events + 1] = { json = {
    id = "chatcmpl-e", object = "chat.completion.chunk", created = 1700000000, model = "m",
    choices = { { index = 0, delta = {}, finish_reason = "stop" } } } }
  return { sse = events, done = true }
end

describe("embedding", function()
  local missing = absent { "make", "cc", "lua5.4" }
  if missing ~= "" or not have_server then
    error("embedding specs cannot run: " .. (missing ~= "" and (missing .. " not found")
      or "spec/helpers/server.lua not available"))
    return
  end
  local no_pkgconfig = absent { "pkg-config" }

  local tmp, dest, root, srv, installed, install_log

  -- `it`, or a failing test when a tool it needs is absent.
  local function it_with_pkgconfig(name, fn)
    if no_pkgconfig ~= "" then
      it(name, function() error("pkg-config not found (scripts/deps.sh installs it)") end)
    else
      it(name, fn)
    end
  end

  setup(function()
    tmp = proc.tmpdir()
    dest = tmp .. "/dest"
    root = dest .. PREFIX
    os.execute("mkdir -p " .. q(tmp .. "/bin") .. " " .. q(tmp .. "/work"))
    local out, err, code = run(string.format("%s install PREFIX=%s DESTDIR=%s", MAKE, PREFIX, q(dest)))
    installed = code == 0
    install_log = out .. err
    srv = server.start()
  end)

  teardown(function()
    if srv then srv:stop() end
    if tmp then os.execute("rm -rf " .. q(tmp)) end
  end)

  before_each(function()
    assert(installed, "make install failed:\n" .. tostring(install_log))
    srv:reset()
  end)

  local function exists(path)
    local _, _, code = run("test -e " .. q(path) .. " || test -L " .. q(path))
    return code == 0
  end

  -- Environment for the programs under test: the test server, no stray Lua paths.
  local function env(extra)
    local parts = { "cd " .. q(tmp .. "/work") .. " && env -u LUA_PATH -u LUA_CPATH -u LUA_PATH_5_4 -u LUA_CPATH_5_4 -u LUA_INIT -u LUA_INIT_5_4",
                    "OPENAI_BASE_URL=" .. q(srv.base_url), "OPENAI_API_KEY=sk-embed-test", "LUACHAT_MODEL=m" }
    for _, kv in ipairs(extra or {}) do parts[#parts + 1] = kv end
    return table.concat(parts, " ")
  end

  -- cc FILE with the installed luachat.pc; returns the binary path.
  local function build_example(name)
    local pc = "PKG_CONFIG_PATH=" .. q(root .. "/lib/pkgconfig")
    -- --define-prefix relocates luachat.pc to the DESTDIR tree; its Requires
    -- (lua5.4, libcurl) are asked for as installed on the system.
    local own, e1, c1 = run(pc .. " pkg-config --define-prefix --maximum-traverse-depth=2 --cflags --libs luachat")
    assert.equal(0, c1, e1)
    local req, e2, c2 = run(pc .. " pkg-config --print-requires luachat")
    assert.equal(0, c2, e2)
    assert.matches("lua5%.4", req)
    assert.matches("libcurl", req)
    local sys, e3, c3 = run("pkg-config --cflags --libs " .. req:gsub("%s+", " "))
    assert.equal(0, c3, e3)
    assert.matches("-I" .. root:gsub("%p", "%%%0") .. "/include", own)
    local bin = tmp .. "/bin/" .. name
    local _, err, code = run(string.format("cc -std=c11 -D_POSIX_C_SOURCE=200809L -Wall -Werror examples/%s.c %s %s -lm -o %s",
      name, own:gsub("\n", " "), sys:gsub("\n", " "), q(bin)))
    assert.equal(0, code, err)
    return bin
  end

  it("make install puts every piece under DESTDIR/PREFIX", function()
    local want = {
      "bin/luachat",
      "lib/lua/" .. LUA_VER .. "/luachat/core.so",
      "share/lua/" .. LUA_VER .. "/luachat/init.lua",
      "share/lua/" .. LUA_VER .. "/luachat/sched.lua",
      "include/luachat.h",
      "lib/libluachat.a",
      "lib/libluachat.so.0.1.0",
      "lib/libluachat.so.0",
      "lib/libluachat.so",
      "lib/pkgconfig/luachat.pc",
    }
    if exists("luachat.1") then want[#want + 1] = "share/man/man1/luachat.1" end
    for _, f in ipairs(want) do
      assert.is_true(exists(root .. "/" .. f), f .. " not installed")
    end
    local link = run("readlink " .. q(root .. "/lib/libluachat.so"))
    assert.equal("libluachat.so.0\n", link)
    link = run("readlink " .. q(root .. "/lib/libluachat.so.0"))
    assert.equal("libluachat.so.0.1.0\n", link)
    local pc = slurp(root .. "/lib/pkgconfig/luachat.pc")
    assert.matches("\nprefix=" .. PREFIX:gsub("%p", "%%%0") .. "\n", pc)
    assert.matches("\nRequires: lua5%.4 libcurl\n", pc)
    assert.matches("\nLibs: %-L%${libdir} %-lluachat\n", pc)
  end)

  it("stock lua5.4 requires the installed luachat through LUA_PATH/LUA_CPATH and chats", function()
    srv:script { { json = {
      id = "chatcmpl-1", object = "chat.completion", created = 1700000000, model = "m",
      choices = { { index = 0, message = { role = "assistant", content = "installed hello" }, finish_reason = "stop" } },
      usage = { prompt_tokens = 1, completion_tokens = 2, total_tokens = 3 } } } }
    local script = tmp .. "/work/chat.lua"
    spit(script, [[
local luachat = require "luachat"
print(package.searchpath("luachat", package.path))
print(package.searchpath("luachat.core", package.cpath))
print(luachat.version, type(luachat.step), type(luachat.fds), type(luachat.next_timeout))
local res, err = luachat.client():chat { model = "m", messages = { { role = "user", content = "hi" } } }
if not res then error(tostring(err), 0) end
print(res.choices[1].message.content, math.type(res.usage.total_tokens))
]])
    local share, lib = root .. "/share/lua/" .. LUA_VER, root .. "/lib/lua/" .. LUA_VER
    local out, err, code = run(string.format("%s LUA_PATH=%s LUA_CPATH=%s lua5.4 %s", env(), q(share .. "/?.lua;" .. share .. "/?/init.lua;;"), q(lib .. "/?.so;;"), q(script)))
    assert.equal("", err)
    assert.equal(0, code)
    assert.equal(table.concat({
      share .. "/luachat/init.lua",
      lib .. "/luachat/core.so",
      "0.1.0\tfunction\tfunction\tfunction",
      "installed hello\tinteger", "" }, "\n"), out)
    local reqs = srv:requests()
    assert.equal(1, #reqs)
    assert.equal("/v1/chat/completions", reqs[1].path)
  end)

  it_with_pkgconfig("a C program built with pkg-config --cflags --libs luachat streams a completion", function()
    srv:script { sse_script(0.01) }
    local bin = build_example("embed")
    -- No LUA_PATH: the library finds PREFIX/share/lua/5.4 beside itself.
    local out, err, code = run(env { "LD_LIBRARY_PATH=" .. q(root .. "/lib") } .. " " .. q(bin) .. " 'Tell me'")
    assert.equal("", err)
    assert.equal(0, code)
    assert.equal(table.concat(TEXT) .. "\n", out)
    local reqs = srv:requests()
    assert.equal(1, #reqs)
    assert.is_true(reqs[1].json.stream)
    assert.equal("Tell me", reqs[1].json.messages[1].content)
    -- dynamically linked to the installed library, by its soname
    local ldd = run(string.format("LD_LIBRARY_PATH=%s ldd %s", q(root .. "/lib"), q(bin)))
    assert.matches("libluachat%.so%.0 => " .. root:gsub("%p", "%%%0") .. "/lib/libluachat%.so%.0", ldd)
  end)

  it_with_pkgconfig("luachat_dofile runs a file with luachat loaded, and reports errors with a traceback", function()
    local bin = build_example("embed")
    local ok_script, bad_script = tmp .. "/work/ok.lua", tmp .. "/work/bad.lua"
    spit(ok_script, [[
assert(luachat == require "luachat", "luaopen_luachat and require give one table")
print(package.searchpath("luachat", package.path))
print(package.preload["luachat.core"] ~= nil)
]])
    spit(bad_script, "local function f() error('boom') end\nf()\n")
    local ld = "LD_LIBRARY_PATH=" .. q(root .. "/lib")
    local out, err, code = run(env { ld } .. " " .. q(bin) .. " --file " .. q(ok_script))
    assert.equal("", err)
    assert.equal(0, code)
    assert.equal(root .. "/share/lua/" .. LUA_VER .. "/luachat/init.lua\ntrue\n", out)
    out, err, code = run(env { ld } .. " " .. q(bin) .. " --file " .. q(bad_script))
    assert.equal("", out)
    assert.equal(1, code)
    assert.matches("^luachat: [^\n]*bad%.lua:1: boom\nstack traceback:\n", err)
    out, err, code = run(env { ld } .. " " .. q(bin) .. " --file " .. q(tmp .. "/work/none.lua"))
    assert.equal(1, code)
    assert.matches("^luachat: cannot open [^\n]*none%.lua", err)
  end)

  it_with_pkgconfig("an application's own poll(2) loop drives luachat.step while the stream arrives", function()
    srv:script { sse_script(0.1) }
    local bin = build_example("poll_loop")
    local out, err, code = run(env { "LD_LIBRARY_PATH=" .. q(root .. "/lib") } .. " " .. q(bin) .. " 'A story'")
    assert.equal("", err)
    assert.equal(0, code)
    local text, chunks, turns, text_turns = out:match("^(.-)\n%-%- (%d+) chunks in (%d+) loop turns %((%d+) of them brought text%)")
    assert.equal(table.concat(TEXT), text)
    assert.equal(#TEXT, tonumber(chunks))
    assert.is_true(tonumber(turns) > 1, "the loop turned " .. tostring(turns) .. " times")
    -- the chunks came in over several turns of the app's loop, not all at the end
    assert.is_true(tonumber(text_turns) >= 2, out)
    assert.equal(1, #srv:requests())
  end)

  it("make uninstall removes every file install put there", function()
    local _, err, code = run(string.format("%s uninstall PREFIX=%s DESTDIR=%s", MAKE, PREFIX, q(dest)))
    assert.equal(0, code, err)
    local left = run("find " .. q(dest) .. " ! -type d")
    assert.equal("", left)
    installed = true -- nothing further needs it
  end)
end)
