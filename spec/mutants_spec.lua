-- scripts/mutants.lua (`make mutants`): the mutant lists parse, and the
-- parser is strict. `make mutants` itself takes minutes; this spec checks in
-- seconds that every entry still finds its code exactly once, so a refactor
-- that moves the code fails `make test` until its mutant is updated.
-- run-tests: once (it only runs lua5.4 scripts/mutants.lua --list; scripts/run-tests.sh)
local proc = require "spec.helpers.proc"
local q = proc.shell_quote

local function list(dir)
  return proc.run(string.format("cd %s && lua5.4 scripts/mutants.lua --list", q(dir)))
end

describe("make mutants", function()
  it("every entry of the repository's lists is well formed", function()
    local out, err, code = list(".")
    assert.equal("", err)
    assert.is_nil(out:find("MALFORMED", 1, true), out)
    assert.equal(0, code, out)
    local n = tonumber(out:match("(%d+) mutants listed, 0 malformed entries\n$"))
    assert.is_true(n and n > 0, out)
  end)

  describe("the parser", function()
    local dir
    before_each(function()
      dir = proc.tmpdir()
      assert(os.execute(string.format("mkdir -p %s/scripts %s/src %s/spec/c && cp scripts/mutants.lua %s/scripts/",
        q(dir), q(dir), q(dir), q(dir))))
      proc.write_file(dir .. "/src/x.c", "int a;\nint a;\nint b;\n")
      proc.write_file(dir .. "/spec/a_spec.lua", "")
      proc.write_file(dir .. "/spec/c/test_x.c", "")
    end)
    after_each(function() os.execute("rm -rf " .. q(dir)) end)

    local function parse(text)
      proc.write_file(dir .. "/src/mutants.txt", text)
      return list(dir)
    end

    it("accepts comments, \\n in find, an empty replace and C tests", function()
      local out, _, code = parse([[
# a comment block: only '#' lines
# more comment

# first
# a comment line inside the block
file: src/x.c
find: int a;\nint b;
replace:
specs: spec/a_spec.lua build:spec/test_x
]])
      assert.equal(0, code, out)
      assert.equal("first  [src/x.c -> spec/a_spec.lua build:spec/test_x]\n1 mutants listed, 0 malformed entries\n", out)
    end)

    it("names the entry whose find occurs twice or not at all", function()
      local out, _, code = parse([[
# twice
file: src/x.c
find: int a;
replace: int c;
specs: spec/a_spec.lua

# never
file: src/x.c
find: int z;
replace:
specs: spec/a_spec.lua
]])
      assert.equal(1, code)
      assert.matches("MALFORMED  src/mutants.txt:1 (twice): 'find:' occurs 2 times in src/x.c (must be exactly once): int a;",
        out, 1, true)
      assert.matches("MALFORMED  src/mutants.txt:7 (never): 'find:' occurs 0 times in src/x.c", out, 1, true)
      assert.matches("0 mutants listed, 2 malformed entries\n$", out)
    end)

    it("refuses a missing name, key or file, an unknown key, a duplicate name, a missing spec", function()
      local out, _, code = parse([[
file: src/x.c
find: int b;
replace: int c;
specs: spec/a_spec.lua

# keys
file: src/x.c
find: int b;
bogus: 1

# dup
file: src/x.c
find: int b;
replace: int c;
specs: spec/a_spec.lua

# dup
file: src/none.c
find: int b;
replace: int c;
specs: spec/none_spec.lua build:spec/test_none
]])
      assert.equal(1, code)
      for _, line in ipairs {
        "MALFORMED  src/mutants.txt:1: the block's first line must be '# name', got: file: src/x.c",
        "MALFORMED  src/mutants.txt:6 (keys): unknown line: bogus: 1",
        "MALFORMED  src/mutants.txt:6 (keys): missing 'replace:'",
        "MALFORMED  src/mutants.txt:6 (keys): missing 'specs:'",
        "MALFORMED  src/mutants.txt:17 (dup): duplicate name (also src/mutants.txt:11 (dup))",
        "MALFORMED  src/mutants.txt:17 (dup): no such file: src/none.c",
        "MALFORMED  src/mutants.txt:17 (dup): no such spec file: spec/none_spec.lua",
        "MALFORMED  src/mutants.txt:17 (dup): no C test source for build:spec/test_none (spec/c/<name>.c)",
      } do
        assert.matches(line, out, 1, true)
      end
      assert.matches("\n1 mutants listed, 3 malformed entries\n$", out)
    end)
  end)
  -- A tiny tree of its own: make all writes ./luachat (lua5.4), one Lua file
  -- to mutate, and specs that pass, fail once, or always fail.
  describe("the baseline", function()
    local dir, mark
    before_each(function()
      dir = proc.tmpdir()
      mark = dir .. ".mark"
      os.remove(mark)
      assert(os.execute(string.format("mkdir -p %s/scripts %s/src %s/spec && cp scripts/mutants.lua %s/scripts/",
        q(dir), q(dir), q(dir), q(dir))))
      proc.write_file(dir .. "/Makefile",
        "all:\n\tprintf '#!/bin/sh\\nexec lua5.4 \"$$@\"\\n' >luachat && chmod +x luachat\n")
      proc.write_file(dir .. "/src/thing.lua", "return { one = 1 }\n")
      -- Fails the first time it runs (it leaves a mark beside the tree), then
      -- checks thing.lua like a real spec.
      proc.write_file(dir .. "/spec/flaky_spec.lua", string.format([[
describe("flaky", function()
  it("fails once", function()
    local f = io.open(%q)
    if not f then io.open(%q, "w"):close(); error("a flake") end
    f:close()
    assert.equal(1, dofile("src/thing.lua").one)
  end)
end)
]], mark, mark))
      proc.write_file(dir .. "/spec/broken_spec.lua",
        'describe("broken", function() it("always fails", function() error("broken") end) end)\n')
      assert(os.execute(string.format("cd %s && git init -q && git add -A", q(dir))))
    end)
    after_each(function()
      os.execute("rm -rf " .. q(dir))
      os.remove(mark)
    end)

    local function mutants(specs)
      proc.write_file(dir .. "/src/mutants.txt",
        "# one is two\nfile: src/thing.lua\nfind: one = 1\nreplace: one = 2\nspecs: " .. specs .. "\n")
      return proc.run(string.format("cd %s && lua5.4 scripts/mutants.lua 2>&1", q(dir)))
    end

    it("runs a spec that failed once more: passing then, it is FLAKY and still judges mutants", function()
      local out, _, code = mutants("spec/flaky_spec.lua")
      assert.matches("FLAKY  spec/flaky_spec.lua failed on the unmutated tree, then passed\n    " ..
        "spec/flaky_spec.lua @ 2 flaky fails once\n  | Error → spec/flaky_spec.lua @ 2", out, 1, true)
      assert.matches("a flake", out, 1, true)
      assert.matches("caught  one is two  (spec/flaky_spec.lua failed)", out, 1, true)
      -- repeated before the summary, where CI's tail shows it
      assert.matches("\nFLAKY  spec/flaky_spec.lua[^\n]*\n    [^\n]*\n1 mutants, 1 caught\n", out)
      assert.equal(0, code, out)
    end)

    it("fails the run when a spec fails twice on the unmutated tree (BASELINE)", function()
      local out, _, code = mutants("spec/broken_spec.lua")
      assert.matches("BASELINE  spec/broken_spec.lua fails on the unmutated tree, twice\n    " ..
        "spec/broken_spec.lua @ 1 broken always fails", out, 1, true)
      assert.matches("MISSED  one is two", out, 1, true)
      assert.equal(1, code, out)
    end)
  end)
end)
