-- scripts/run-tests.sh, the runner of `make test` and `make asan` (issue 20
-- items 4 and 5), run on small made-up trees: every spec file on its own under
-- a time limit, library specs under the host and stock lua5.4, "once" specs
-- only under the host, nothing skipped silently, and the last line of output
-- "N passed, N failed, N skipped".
-- run-tests: once (it only runs the runner; scripts/run-tests.sh)
local proc = require "spec.helpers.proc"
local q, run, spit = proc.shell_quote, proc.run, proc.write_file

local RUNNER = proc.abspath("scripts/run-tests.sh")
local HOST = proc.abspath(proc.host)

local PASS2 = 'describe("a", function() it("one", function() end) it("two", function() end) end)\n'
local ONCE = '-- run-tests: once (test)\ndescribe("o", function() it("runs", function() end) end)\n'

describe("scripts/run-tests.sh", function()
  local dirs = {}
  teardown(function()
    for _, d in ipairs(dirs) do os.execute("rm -rf " .. q(d)) end
  end)

  -- A tree with the given spec files (name -> source), a build directory
  -- with one C test ("3 passed, 0 failed") and a core.so, and ./luachat, the
  -- host under test. opts.build = false leaves the build directory out.
  -- Runs the runner there; returns its output, exit code and last line.
  local function runner(specs, opts)
    opts = opts or {}
    local dir = proc.tmpdir()
    dirs[#dirs + 1] = dir
    assert(os.execute(string.format("mkdir -p %s/spec && ln -s %s %s/luachat", q(dir), q(HOST), q(dir))))
    for name, src in pairs(specs) do spit(dir .. "/spec/" .. name, src) end
    if opts.build ~= false then
      assert(os.execute(string.format("mkdir -p %s/build/spec %s/build/luachat && touch %s/build/luachat/core.so",
        q(dir), q(dir), q(dir))))
      spit(dir .. "/build/spec/test_fake", "#!/bin/sh\necho 'fake: 3 passed, 0 failed'\n")
      assert(os.execute("chmod +x " .. q(dir .. "/build/spec/test_fake")))
      if opts.ctest then
        spit(dir .. "/build/spec/test_other", "#!/bin/sh\n" .. opts.ctest .. "\n")
        assert(os.execute("chmod +x " .. q(dir .. "/build/spec/test_other")))
      end
    end
    local out, err, code = run(string.format("cd %s && env -u LUACHAT_HOST -u LUACHAT_SKIP_STOCK_LUA %s %s build 2>&1",
      q(dir), opts.env or "", q(RUNNER)))
    out = out .. err
    return out, code, out:match("([^\n]*)\n?$")
  end

  it("runs library specs under both Lua configurations and 'once' specs once; the summary is the last line", function()
    local out, code, last = runner { ["a_spec.lua"] = PASS2, ["once_spec.lua"] = ONCE }
    assert.equal(0, code, out)
    assert.equal("8 passed, 0 failed, 0 skipped", last) -- 3 C + 2 x 2 + 1
    assert.matches("== spec/a_spec.lua (host ./luachat)", out, 1, true)
    assert.matches("== spec/a_spec.lua (stock lua5.4 + build/luachat/core.so)", out, 1, true)
    assert.matches("== spec/once_spec.lua (host ./luachat)", out, 1, true)
    assert.is_nil(out:find("== spec/once_spec.lua (stock", 1, true), out)
  end)

  it("tests tagged #once run under the host only, the rest of their file under both", function()
    local mixed = 'describe("m", function() it("in process", function() end) it("a subprocess #once", function() end) end)\n'
    local out, code, last = runner { ["mixed_spec.lua"] = mixed }
    assert.equal(0, code, out)
    assert.equal("6 passed, 0 failed, 0 skipped", last) -- 3 C + 2 under the host + 1 under lua5.4
    assert.matches("== spec/mixed_spec.lua (stock lua5.4", out, 1, true)
  end)

  it("LUACHAT_SKIP_STOCK_LUA=1 (make asan) runs every spec once, under the host", function()
    local out, code, last = runner({ ["a_spec.lua"] = PASS2 }, { env = "LUACHAT_SKIP_STOCK_LUA=1" })
    assert.equal(0, code, out)
    assert.equal("5 passed, 0 failed, 0 skipped", last)
    assert.is_nil(out:find("(stock", 1, true), out)
  end)

  it("a failing test fails the run and is listed by file", function()
    local out, code, last = runner { ["bad_spec.lua"] = ONCE .. 'describe("b", function() it("fails", function() assert.equal(1, 2) end) end)\n' }
    assert.are_not.equal(0, code)
    assert.equal("4 passed, 1 failed, 0 skipped", last) -- 3 C + the one in ONCE
    assert.matches("spec/bad_spec.lua (host ./luachat): 1 failed", out, 1, true)
  end)

  it("a missing build directory is a failure, not a pass", function()
    local out, code, last = runner({ ["a_spec.lua"] = PASS2 }, { build = false })
    assert.are_not.equal(0, code)
    assert.matches("no build directory 'build'", out, 1, true)
    assert.matches("^2 passed, [1-9]%d* failed, 0 skipped$", last)
  end)

  it("a pending test is a failure, except in spec/provider_spec.lua, where it is skipped", function()
    local pend = '-- run-tests: once (test)\ndescribe("p", function() pending("tmux is not installed") end)\n'
    local out, code, last = runner { ["tmux_spec.lua"] = pend }
    assert.are_not.equal(0, code)
    assert.matches("spec/tmux_spec.lua (host ./luachat): 1 pending: only spec/provider_spec.lua may be pending", out, 1, true)
    assert.equal("3 passed, 1 failed, 0 skipped", last)
    out, code, last = runner { ["provider_spec.lua"] = pend .. 'describe("q", function() it("x", function() end) end)\n' }
    assert.equal(0, code, out)
    assert.equal("4 passed, 0 failed, 1 skipped", last)
  end)

  it("a spec file that runs no test fails", function()
    local out, code, last = runner { ["empty_spec.lua"] = "-- run-tests: once (test)\nlocal x = 1\n" }
    assert.are_not.equal(0, code)
    assert.matches("spec/empty_spec.lua (host ./luachat): ran no tests", out, 1, true)
    assert.equal("3 passed, 1 failed, 0 skipped", last)
  end)

  it("a spec file that does not load fails", function()
    local out, code, last = runner { ["broken_spec.lua"] = "-- run-tests: once (test)\ndescribe(\n" }
    assert.are_not.equal(0, code)
    assert.matches("^3 passed, [1-9]%d* failed, 0 skipped$", last)
    assert.matches("spec/broken_spec.lua (host ./luachat)", out, 1, true)
  end)

  it("a hanging spec file is stopped by the time limit and named", function()
    local hang = '-- run-tests: once (test)\ndescribe("h", function() it("hangs", function() os.execute("sleep 30") end) end)\n'
    local out, code, last = runner({ ["hang_spec.lua"] = hang, ["a_spec.lua"] = PASS2 },
      { env = "LUACHAT_SPEC_TIMEOUT=2" })
    assert.are_not.equal(0, code)
    assert.matches("spec/hang_spec.lua (host ./luachat): timed out after 2 s", out, 1, true)
    assert.equal("7 passed, 1 failed, 0 skipped", last) -- the other files still ran
  end)

  it("a C test that crashes or prints no summary fails", function()
    local out, code, last = runner({ ["a_spec.lua"] = PASS2 }, { ctest = "echo 'half a line'; kill -SEGV $$" })
    assert.are_not.equal(0, code)
    assert.matches("build/spec/test_other: crashed or printed no summary", out, 1, true)
    assert.equal("7 passed, 1 failed, 0 skipped", last)
  end)
end)
