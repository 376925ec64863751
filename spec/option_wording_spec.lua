-- Option errors name what was wrong: an enum option with a wrong string says
-- which value ("got 'bogus'", not "got string"), and a bad cassette variable
-- reaches a command-line user as a usage error naming the variable and the
-- allowed values, not as "bad argument #1 to 'client'".
local luachat = require "luachat"
local proc = require "spec.helpers.proc"

describe("option wording", function()
  it("an enum option with a wrong string names the value", function()
    local ok, e = pcall(luachat.client, { cassette = "/nonexistent/c.jsonl", cassette_mode = "bogus" })
    assert.is_false(ok)
    assert.matches("field 'cassette_mode' must be record, replay or auto, got 'bogus'", e, 1, true)
    ok, e = pcall(luachat.client, { cassette = "/nonexistent/c.jsonl", cassette_timing = "soon\n" })
    assert.is_false(ok)
    assert.matches("field 'cassette_timing' must be instant or recorded, got 'soon\\n'", e, 1, true)
    ok, e = pcall(luachat.client, { cassette = "/nonexistent/c.jsonl", cassette_mode = 3 })
    assert.is_false(ok)
    assert.matches("field 'cassette_mode' must be record, replay or auto, got number", e, 1, true)
  end)

  it("LUACHAT_CASSETTE_MODE=bogus on the command line: a usage error naming the variable", function()
    local home = proc.tmpdir()
    local out, err, code = proc.run(string.format("env HOME=%s XDG_CONFIG_HOME=%s/c LUACHAT_PROFILE= "
      .. "OPENAI_API_KEY=sk-x OPENAI_BASE_URL=http://127.0.0.1:1/v1 LUACHAT_CASSETTE_MODE=bogus %s -p hi",
      proc.shell_quote(home), proc.shell_quote(home), proc.host))
    os.execute("rm -rf " .. proc.shell_quote(home))
    assert.equal("", out)
    assert.equal(2, code)
    assert.equal("luachat: environment variable LUACHAT_CASSETTE_MODE must be record, replay or auto, got 'bogus'\n", err)
  end)

  -- The host with LUACHAT_LOG set to value: stdout, stderr, exit code of args.
  local function with_log(value, args)
    local home = proc.tmpdir()
    local out, err, code = proc.run(string.format("env HOME=%s XDG_CONFIG_HOME=%s/c LUACHAT_PROFILE= "
      .. "OPENAI_API_KEY=sk-x OPENAI_BASE_URL=http://127.0.0.1:1/v1 LUACHAT_LOG=%s %s %s",
      proc.shell_quote(home), proc.shell_quote(home), proc.shell_quote(value), proc.host, args))
    os.execute("rm -rf " .. proc.shell_quote(home))
    return out, err, code
  end

  it("LUACHAT_LOG=bogus on the command line (chat and batch): a usage error naming the variable", function()
    local want = "luachat: environment variable LUACHAT_LOG must be debug (any case) or unset, got 'info'\n"
    assert.same({ "", want, 2 }, { with_log("info", "-p hi") })
    assert.same({ "", want, 2 }, { with_log(" info ", "batch /nonexistent/in.jsonl -o /nonexistent/out.jsonl") })
  end)

  it("LUACHAT_LOG takes debug in any case; a script told once of a bad value, not silence", function()
    local script = proc.shell_quote('local log = require "luachat.log"; log.debug("one %d", 1); log.debug("two")')
    for _, v in ipairs { "debug", "DEBUG", "Debug" } do
      assert.same({ "", "luachat[debug] one 1\nluachat[debug] two\n", 0 }, { with_log(v, "-e " .. script) }, v)
    end
    assert.same({ "", "", 0 }, { with_log("", "-e " .. script) })
    assert.same({ "", "luachat: environment variable LUACHAT_LOG must be debug (any case) or unset, got 'bogus'; "
      .. "no debug log\n", 0 }, { with_log("bogus", "-e " .. script) })
  end)
end)
