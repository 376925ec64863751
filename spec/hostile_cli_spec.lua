-- The command line against hostile input (issue 13 items 4 and 5), run as a
-- subprocess: terminal escapes from a server are made visible on a terminal
-- (error lines always, the answer when stdout is a terminal, via `script` for
-- a pty), piped answers stay exact, a config file's unknown key or wrong type
-- is named with the file, a key from the environment is trimmed, /load is bounded.
-- run-tests: once (it only drives the host as a subprocess; scripts/run-tests.sh)
package.path = "lua/?.lua;lua/?/init.lua;" .. package.path

local proc = require "spec.helpers.proc"
local server = require "spec.helpers.server"
local HOST, shell_quote = proc.host, proc.shell_quote

local ESCAPES = "\27]0;pwned\7\27[2J\27]52;c;aGk=\7"
local SHOWN = "^[]0;pwned^G^[[2J^[]52;c;aGk=^G"

local function chunk(delta)
  return { id = "chatcmpl-1", object = "chat.completion.chunk", created = 1700000000, model = "gpt-test",
    choices = { { index = 0, delta = delta } } }
end

local function text_sse(...)
  local events = {}
  for i, t in ipairs { ... } do events[i] = { json = chunk { content = t } } end
  return { sse = events, done = true }
end

-- A shell word that sets NAME to value (any bytes, trailing newlines kept) and exports it.
local function export(name, value)
  local oct = value:gsub(".", function(ch) return string.format("\\%03o", ch:byte()) end)
  return string.format("%s=$(printf '%s_'); %s=${%s%%_}; export %s; ", name, oct, name, name, name)
end

describe("luachat CLI against hostile input", function()
  local srv, home

  setup(function()
    srv = server.start()
    home = proc.tmpdir() -- an empty HOME/XDG_CONFIG_HOME: no user config
  end)
  teardown(function()
    if srv then srv:stop() end
    if home then os.execute("rm -rf " .. shell_quote(home)) end
  end)
  before_each(function() srv:reset() end)

  -- The command line that runs the host with args; env: extra variables
  -- (values may hold any byte). tty = true: inside `script`, so stdin, stdout
  -- and stderr are a terminal (script's output is what the terminal got).
  local function command(args, env, tty)
    local vars = {
      OPENAI_BASE_URL = srv.base_url, OPENAI_API_KEY = "sk-h5-cli",
      HOME = home, XDG_CONFIG_HOME = home .. "/config", XDG_STATE_HOME = home .. "/state",
      LUACHAT_PROFILE = "", LUACHAT_MODEL = "", LUACHAT_BASE_URL = "", NO_COLOR = "1", LUACHAT_LOG = "",
    }
    for k, v in pairs(env or {}) do vars[k] = v end
    local names = {}
    for k in pairs(vars) do names[#names + 1] = k end
    table.sort(names)
    local parts = {}
    for _, k in ipairs(names) do parts[#parts + 1] = export(k, vars[k]) end
    local cmd = table.concat(parts) .. HOST .. " " .. args
    if tty then
      -- -e: the host's exit code; -q: no banner. TERM so the host sees a usable terminal.
      return "TERM=dumb script -qec " .. shell_quote(cmd) .. " /dev/null"
    end
    return cmd
  end

  local function run(args, stdin, env, tty)
    return proc.run(command(args, env, tty), stdin or "")
  end

  describe("terminal escapes from a server are shown, not obeyed", function()
    it("in the error line, also when stderr is not a terminal", function()
      srv:script { { status = 400, json = { error = { message = "bad " .. ESCAPES .. " request" } } } }
      local out, err, code = run("-p hi")
      assert.equal(1, code)
      assert.equal("", out)
      assert.matches("bad " .. SHOWN .. " request", err, 1, true)
      assert.is_nil(err:find("\27", 1, true), "a raw ESC reached stderr")
    end)

    it("in the answer on a terminal (a C1 control split across chunks too); tab and newline stay", function()
      srv:script { text_sse("a" .. ESCAPES .. "\tb\n", "c\194", "\155" .. "2Jd\r\ne\127") }
      local out, err, code = run("-p hi", nil, nil, true)
      assert.equal("", err) -- script merges the terminal's output into stdout
      assert.equal(0, code)
      assert.is_nil(out:find("\27", 1, true), "a raw ESC reached the terminal")
      assert.is_nil(out:find("\194\155", 1, true), "a raw C1 CSI reached the terminal")
      -- The terminal turns \n into \r\n (onlcr).
      assert.matches("a" .. SHOWN .. "\tb\r\ncM-^[2Jd\r\ne^?", out, 1, true)
    end)

    it("piped, the answer stays exact", function()
      local text = "a" .. ESCAPES .. "\tb\r\nc\194\155"
      srv:script { text_sse(text) }
      local out, err, code = run("-p hi")
      assert.equal("", err)
      assert.equal(0, code)
      assert.equal(text .. "\n", out)
    end)

    it("in a refusal shown on stderr", function()
      srv:script { { sse = { { json = chunk { refusal = "no " .. ESCAPES } } }, done = true } }
      local _, err, code = run("-p hi")
      assert.equal(1, code)
      assert.matches("no " .. SHOWN, err, 1, true)
      assert.is_nil(err:find("\27", 1, true), "a raw ESC reached stderr")
    end)
  end)

  it("OPENAI_API_KEY with surrounding whitespace (a mounted secret file's newline) is trimmed", function()
    srv:script { text_sse("ok") }
    local out, err, code = run("-p hi", nil, { OPENAI_API_KEY = "  sk-h5-cli \n" })
    assert.equal("", err)
    assert.equal(0, code)
    assert.equal("ok\n", out)
    assert.equal("Bearer sk-h5-cli", srv:requests()[1].headers["authorization"])
  end)

  it("every value read from the environment is trimmed; a control character inside names the variable #once", function()
    srv:default(text_sse("ok"))
    local out, err, code = run("-p hi", nil, { OPENAI_BASE_URL = srv.base_url .. "\n", LUACHAT_MODEL = " m-env\n",
      OPENAI_ORG_ID = "org-1\r\n", OPENAI_PROJECT_ID = "\tproj-1 " })
    assert.equal("", err)
    assert.equal(0, code)
    assert.equal("ok\n", out)
    local req = srv:requests()[1]
    assert.equal("m-env", req.json.model)
    assert.equal("org-1", req.headers["openai-organization"])
    assert.equal("proj-1", req.headers["openai-project"])
    for name, value in pairs { OPENAI_BASE_URL = srv.base_url .. "\nx", LUACHAT_BASE_URL = srv.base_url .. "\rx",
      LUACHAT_MODEL = "m\rx", OPENAI_ORG_ID = "o\r\nX-Evil: 1", OPENAI_PROJECT_ID = "p\nX-Evil: 1",
      OPENAI_API_KEY = "sk\r\nX-Evil: 1", LUACHAT_PROFILE = "openai\n\27" } do
      out, err, code = run("-p hi", nil, { [name] = value })
      assert.equal("luachat: environment variable " .. name .. " contains a control character\n", err)
      assert.equal(1, code, name)
      assert.equal("", out)
    end
    assert.equal(1, #srv:requests())
  end)

  it("--tools: a plain table's error names the file, not luachat's lines; several returned values are refused #once", function()
    local path = home .. "/tools.lua"
    proc.write_file(path, "return { { name = 'x' } }")
    local out, err, code = run("--tools " .. shell_quote(path) .. " -p hi")
    assert.equal(1, code)
    assert.equal("", out)
    assert.equal("luachat: --tools: " .. path .. ": item 1: bad argument #1 to 'tool' (field 'handler' must be a function)\n", err)
    proc.write_file(path, "local luachat = require 'luachat'\nlocal h = function() return 'ok' end\n"
      .. "return luachat.tool { name = 'a', handler = h }, luachat.tool { name = 'b', handler = h }")
    out, err, code = run("--tools " .. shell_quote(path) .. " -p hi")
    assert.equal(1, code)
    assert.equal("luachat: --tools: " .. path .. " returned 2 values: return one list, { tool1, tool2 }\n", err)
    srv:script { text_sse("ok") }
    proc.write_file(path, "return { { name = 'x', handler = function() return 'ok' end } }")
    out, err, code = run("--tools " .. shell_quote(path) .. " -p hi")
    os.remove(path)
    assert.equal("", err)
    assert.equal(0, code)
    assert.equal("x", srv:requests()[1].json.tools[1]["function"].name)
  end)

  it("--no-stream=1 and --chat=1: the option takes no value #once", function()
    for _, opt in ipairs { "--no-stream", "--chat" } do
      local out, err, code = run(opt .. "=1 -p hi")
      assert.equal(2, code)
      assert.equal("", out)
      assert.matches("option '" .. opt .. "' takes no value", err, 1, true)
    end
    assert.equal(0, #srv:requests())
  end)

  it("a config file's unknown key or wrong type is an error naming the file and the key", function()
    local dir = home .. "/config/luachat"
    os.execute("mkdir -p " .. shell_quote(dir))
    local path = dir .. "/config.lua"
    proc.write_file(path, "return { profiles = { work = { base_url = 5, model = 'm', key_optional = true } } }")
    local out, err, code = run("-P work -p hi")
    assert.equal(1, code)
    assert.equal("", out)
    assert.equal("luachat: config: " .. path .. ": profile 'work': field 'base_url' must be a string, got number\n", err)
    proc.write_file(path, string.format(
      "return { profiles = { work = { baseurl = %q, model = 'm', key_optional = true } } }", srv.base_url))
    out, err, code = run("-P work -p hi")
    os.remove(path)
    assert.equal(1, code)
    assert.equal("luachat: config: " .. path .. ": profile 'work': unknown field 'baseurl' (did you mean 'base_url'?)\n",
      err)
    assert.equal(0, #srv:requests())
  end)

  it("/load of a file over 64 MiB says so, and the chat goes on", function()
    local big = home .. "/big.json"
    -- A sparse file: 65 MiB of zero bytes in no time (like /dev/zero, but finite).
    assert.is_true(os.execute("truncate -s 65M " .. shell_quote(big)) == true)
    srv:script { text_sse("still here") }
    local out, err, code = run("-c", "/load " .. big .. "\nhello\n")
    os.remove(big)
    assert.equal(0, code)
    assert.matches("is larger than 64 MiB, the limit for a transcript", err, 1, true)
    assert.matches("still here", out, 1, true)
  end)
end)
