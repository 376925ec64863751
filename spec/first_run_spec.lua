-- The first run on a fresh machine (issue 13 item 1): `make demo` and
-- `make test` must pass the first time on a machine without the packages,
-- although make reads `pkg-config` when it parses the Makefile, before
-- scripts/deps.sh has installed anything. CI's machine has the packages, so
-- this spec plays the fresh machine in a copy of the tree: a `pkg-config` on
-- PATH that fails (exit 1, no output) until a fake deps.sh (make DEPS=...)
-- has "installed" the packages by creating a marker file, and the real
-- pkg-config after that. `make test` runs a stub scripts/run-tests.sh in the
-- copy (the suite is not run recursively): what matters is its build.
-- run-tests: once (it only runs make in a copy of the tree; scripts/run-tests.sh)
local proc = require "spec.helpers.proc"
local q, run, spit, slurp = proc.shell_quote, proc.run, proc.write_file, proc.read_file

-- make as a child of the spec, not of a `make test` that may have set variables.
local MAKE = "env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make -j2 --no-print-directory"

-- The source tree (no build output) copied to dst: what git knows, tracked or
-- new and not ignored, as it is in the working tree; outside a git work tree
-- (a scratch copy) everything but the build directories and the host.
local function copy_tree(dst)
  local list, _, code = run("git ls-files -z --cached --others --exclude-standard")
  if code == 0 and list ~= "" then
    local keep = {}
    for path in list:gmatch("([^%z]+)%z") do
      if not path:match("^build") and slurp(path) then keep[#keep + 1] = path end
    end
    local lf = dst .. ".list"
    spit(lf, table.concat(keep, "\0") .. "\0")
    local _, err, c = run(string.format("tar --null -T %s -cf - | tar -xf - -C %s", q(lf), q(dst)))
    os.remove(lf)
    assert(c == 0, "copying the tree failed: " .. err)
  else
    local _, err, c = run(string.format(
      "tar --exclude=./.git --exclude='./build*' --exclude=./luachat -cf - . | tar -xf - -C %s", q(dst)))
    assert(c == 0, "copying the tree failed: " .. err)
  end
end

describe("the first run on a fresh machine", function()
  local tmp, tree, marker, calls

  local function reset()
    os.remove(marker)
    os.remove(calls)
    assert(os.execute("rm -rf " .. q(tree .. "/build") .. " " .. q(tree .. "/luachat")))
  end

  -- make TARGET in the copy as on a fresh machine; stdout+stderr, exit code.
  local function fresh_make(target)
    reset()
    local out, err, code = run(string.format("cd %s && PATH=%s:\"$PATH\" %s DEPS=%s %s 2>&1",
      q(tree), q(tmp .. "/bin"), MAKE, q(tmp .. "/deps.sh"), target))
    return out .. err, code
  end

  -- What the fake pkg-config saw: calls before the "install", the install, calls after.
  local function seen()
    local before, installed, after = 0, 0, 0
    for line in (slurp(calls) or ""):gmatch("[^\n]+") do
      if line:match("^missing ") then
        before = before + 1
      elseif line == "deps: installed" then
        installed = installed + 1
      else
        after = after + 1
      end
    end
    return { before = before > 0, installed = installed, after = after > 0 }
  end

  setup(function()
    local real = (run("command -v pkg-config"))
    real = real:match("^(%S+)")
    assert(real, "pkg-config is not installed (scripts/deps.sh installs it)")
    tmp = proc.tmpdir()
    tree = tmp .. "/tree"
    marker = tmp .. "/installed"
    calls = tmp .. "/calls"
    assert(os.execute("mkdir -p " .. q(tree) .. " " .. q(tmp .. "/bin")))
    copy_tree(tree)
    spit(tmp .. "/bin/pkg-config", string.format([[#!/bin/sh
# pkg-config on a machine where the packages are not installed yet
if [ ! -e %s ]; then echo "missing $*" >>%s; exit 1; fi
echo "found $*" >>%s
exec %s "$@"
]], q(marker), q(calls), q(calls), q(real)))
    spit(tmp .. "/deps.sh", string.format("#!/bin/sh\necho 'deps: installed' >>%s\ntouch %s\n", q(calls), q(marker)))
    -- make test in the copy: check what it built, do not run the suite again.
    spit(tree .. "/scripts/run-tests.sh", [[#!/bin/sh
echo "stub run-tests.sh $1"
test -x ./luachat && test -f "$1/luachat/core.so" && test -x "$1/spec/test_sse" && ./luachat -e 'print(require("luachat").version)'
]])
    -- Nor install the MCP specs' node servers (npm) in the copy.
    spit(tree .. "/scripts/mcp-peers.sh", "#!/bin/sh\necho 'stub mcp-peers.sh'\n")
    assert(os.execute(string.format("chmod +x %s %s %s %s", q(tmp .. "/bin/pkg-config"), q(tmp .. "/deps.sh"),
      q(tree .. "/scripts/run-tests.sh"), q(tree .. "/scripts/mcp-peers.sh"))))
  end)

  teardown(function()
    if tmp then os.execute("rm -rf " .. q(tmp)) end
  end)

  it("the fake machine has no packages until deps runs", function()
    reset()
    local out, _, code = run(string.format("PATH=%s:\"$PATH\" pkg-config --cflags lua5.4", q(tmp .. "/bin")))
    assert.equal(1, code)
    assert.equal("", out)
    local _, err, c2 = run(string.format("cd %s && PATH=%s:\"$PATH\" %s all", q(tree), q(tmp .. "/bin"), MAKE))
    assert.are_not.equal(0, c2)
    assert.matches("pkg-config finds no lua5.4 or libcurl: run 'make deps'", err, 1, true)
  end)

  it("make demo passes the first time", function()
    local out, code = fresh_make("demo")
    assert.equal(0, code, out)
    assert.same({ before = true, installed = 1, after = true }, seen())
    assert.matches("luachat demo: an agent with two tools", out, 1, true)
    assert.matches("The server received 2 requests", out, 1, true)
    assert.is_nil(out:find("No such file", 1, true), out)
  end)

  it("make test builds everything the first time", function()
    local out, code = fresh_make("test")
    assert.equal(0, code, out)
    assert.same({ before = true, installed = 1, after = true }, seen())
    assert.matches("stub run%-tests%.sh build\n%d+%.%d+%.%d+\n", out)
  end)
end)
