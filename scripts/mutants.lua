-- scripts/mutants.lua: `make mutants`. Applies each deliberate breakage listed
-- in the mutant list files, in a scratch copy of the tree under /tmp, runs the
-- specs that must catch it, and prints one line per mutant, then
-- "N mutants, N caught". Exits non-zero when a mutant is missed, a list entry
-- is malformed, or a mutant does not build.
--
--   lua5.4 scripts/mutants.lua [options] [NAME-FILTER...]
--     NAME-FILTER        run only mutants whose name contains one of these (plain text, any case)
--     --list             parse and check every entry, print the names, run nothing
--     --jobs N           run N mutants at once (default: MUTANT_JOBS, else 1)
--     --timeout S        per spec run (default 300 s)
--     --no-baseline      skip the check that each spec passes on the unmutated tree
--     --keep             keep the scratch directory (its path is printed)
--
-- List files (blocks separated by blank lines; a block's first line "# name"):
--   src/mutants.txt  lua/luachat/mutants.txt  scripts/mutants.txt
--     # Ollama: a new id at a used index starts a new tool call
--     file: lua/luachat/stream.lua
--     find: if tc.id and slot.id and tc.id ~= slot.id then
--     replace: if false then
--     specs: spec/stream_spec.lua spec/agent_unit_spec.lua
-- `find` and `replace` are literal text in which \n means a newline, \t a tab
-- and \\ a backslash; `replace:` alone deletes. `find` must occur exactly once
-- in `file`: 0 or 2+ times is a hard error naming the entry, so a refactor that
-- moves the code has to update its mutant. `specs`: busted spec files, or
-- `build:spec/test_x` for a C test built by `make all`. Further lines starting
-- with '#' in a block are comments; a block of only '#' lines is a comment.
-- A malformed entry is printed as MALFORMED, never run, and counts as a
-- mutant not caught.
--
-- How: the tree (git ls-files, cached and untracked-not-ignored, with the
-- working-tree content; build directories left out) is copied once to
-- /tmp/luachat-mutants.XXXXXX/base and built there (`make all`); each spec is
-- run there once unmutated (a spec that already fails proves nothing). Each
-- mutant gets a fresh `cp -a` of base, so make sees only the mutated file as
-- newer and a C mutant recompiles one object and relinks. Specs run under the
-- copy's own ./luachat (LUACHAT_HOST is cleared), one file at a time, each
-- under `timeout`; the first failing spec catches the mutant (busted stops at
-- its first failure when the spec passed unmutated).
-- A spec run that times out counts as caught: the mutant hung the suite, which
-- `make test` (per-file timeouts) reports as a failure too; the line says
-- "timed out" so a hang stays visible.

local LIST_FILES = { "src/mutants.txt", "lua/luachat/mutants.txt", "scripts/mutants.txt" }

local function q(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

local function write_file(path, data)
  local f = assert(io.open(path, "wb"))
  f:write(data)
  f:close()
end

-- Run a shell command; true when it exited 0, plus the exit code.
local function sh(cmd)
  local ok, how, code = os.execute(cmd)
  if how == "signal" then code = 128 + code end
  return ok == true, code
end

local function capture(cmd)
  local p = assert(io.popen(cmd))
  local out = p:read("a")
  p:close()
  return out
end

local function now()
  return tonumber(capture("date +%s.%N")) or os.time()
end

-- \n, \t, \\ in list text; any other backslash is kept as is.
local function unescape(s)
  return (s:gsub("\\(.)", function(c)
    if c == "n" then return "\n" elseif c == "t" then return "\t" elseif c == "\\" then return "\\" end
    return "\\" .. c
  end))
end

local function count_plain(hay, needle)
  local n, i = 0, 1
  while true do
    local a, b = hay:find(needle, i, true)
    if not a then return n end
    n = n + 1
    i = b + 1
  end
end

-- Options and filters.
local opts = { timeout = 300, baseline = true, keep = false, list = false, filters = {},
  jobs = tonumber(os.getenv("MUTANT_JOBS") or "") or 1 }
do
  local i = 1
  while i <= #arg do
    local a = arg[i]
    if a == "--timeout" then
      i = i + 1
      opts.timeout = tonumber(arg[i]) or error("--timeout wants seconds")
    elseif a == "--jobs" or a == "-j" then
      i = i + 1
      opts.jobs = math.tointeger(tonumber(arg[i])) or error("--jobs wants a whole number")
      if opts.jobs < 1 then error("--jobs wants 1 or more") end
    elseif a == "--no-baseline" then opts.baseline = false
    elseif a == "--keep" then opts.keep = true
    elseif a == "--list" then opts.list = true
    elseif a == "-h" or a == "--help" then
      io.write("usage: lua5.4 scripts/mutants.lua [--list] [--jobs N] [--timeout S] [--no-baseline] [--keep] [NAME-FILTER...]\n")
      os.exit(0)
    elseif a:sub(1, 2) == "--" then
      io.stderr:write("mutants: unknown option ", a, "\n")
      os.exit(2)
    else
      opts.filters[#opts.filters + 1] = a:lower()
    end
    i = i + 1
  end
end

if not read_file("scripts/mutants.lua") then
  io.stderr:write("mutants: run me from the repository root (make mutants)\n")
  os.exit(2)
end

-- Parse every list file strictly; problems are collected, each naming its entry.
local problems = {}
local mutants = {}
local names = {}

local current -- the entry being parsed: a problem marks it malformed (never run)
local function problem(where, msg)
  problems[#problems + 1] = where .. ": " .. msg
  if current then current.bad = true end
end

local KEYS = { file = true, find = true, replace = true, specs = true }

for _, list in ipairs(LIST_FILES) do
  local text = read_file(list)
  if text then
    local blocks, cur, start = {}, nil, nil
    local lineno = 0
    for line in (text .. "\n"):gmatch("([^\n]*)\n") do
      lineno = lineno + 1
      if line:match("^%s*$") then
        if cur then blocks[#blocks + 1] = { lines = cur, line = start } end
        cur = nil
      else
        if not cur then cur, start = {}, lineno end
        cur[#cur + 1] = line
      end
    end
    if cur then blocks[#blocks + 1] = { lines = cur, line = start } end
    for _, b in ipairs(blocks) do
      local where = list .. ":" .. b.line
      local only_comments = true
      for _, l in ipairs(b.lines) do
        if l:sub(1, 1) ~= "#" then only_comments = false end
      end
      if not only_comments then
        local m = { list = list, line = b.line }
        current = m
        local first = b.lines[1]
        if first:sub(1, 1) ~= "#" then
          problem(where, "the block's first line must be '# name', got: " .. first)
        else
          m.name = first:gsub("^#%s*", ""):gsub("%s+$", "")
          if m.name == "" then problem(where, "empty mutant name") end
          where = where .. " (" .. m.name .. ")"
        end
        for k = 2, #b.lines do
          local l = b.lines[k]
          if l:sub(1, 1) ~= "#" then
            local key, value = l:match("^(%a+):%s?(.*)$")
            if not key or not KEYS[key] then
              problem(where, "unknown line: " .. l)
            elseif m[key] ~= nil then
              problem(where, "'" .. key .. ":' given twice")
            else
              m[key] = value
            end
          end
        end
        for _, key in ipairs { "file", "find", "replace", "specs" } do
          if m[key] == nil then problem(where, "missing '" .. key .. ":'") end
        end
        if m.name and names[m.name] then
          problem(where, "duplicate name (also " .. names[m.name] .. ")")
        end
        if m.name then names[m.name] = where end
        if m.file and m.find and m.replace and m.specs then
          m.file = m.file:gsub("%s+$", "")
          m.find, m.replace = unescape(m.find), unescape(m.replace)
          m.spec_list = {}
          for s in m.specs:gmatch("%S+") do m.spec_list[#m.spec_list + 1] = s end
          local src = read_file(m.file)
          if m.find == "" then
            problem(where, "empty 'find:'")
          elseif m.find == m.replace then
            problem(where, "'replace:' equals 'find:' (no change)")
          elseif not src then
            problem(where, "no such file: " .. m.file)
          else
            local n = count_plain(src, m.find)
            if n ~= 1 then
              problem(where, string.format("'find:' occurs %d times in %s (must be exactly once): %s",
                n, m.file, m.find))
            end
          end
          if #m.spec_list == 0 then problem(where, "no specs") end
          for _, s in ipairs(m.spec_list) do
            local c = s:match("^build:(.+)$")
            if c then
              if not read_file(c:gsub("^spec/", "spec/c/") .. ".c") then
                problem(where, "no C test source for " .. s .. " (spec/c/<name>.c)")
              end
            elseif not read_file(s) then
              problem(where, "no such spec file: " .. s)
            end
          end
          m.is_c = m.file:match("%.[ch]$") ~= nil
        end
        mutants[#mutants + 1] = m
        current = nil
      end
    end
  end
end

-- Selected by the filters; malformed entries are never run but count as not
-- caught (an entry without a name always counts).
local selected, malformed = {}, 0
for _, m in ipairs(mutants) do
  local keep = #opts.filters == 0 or not m.name
  for _, f in ipairs(opts.filters) do
    if m.name and m.name:lower():find(f, 1, true) then keep = true end
  end
  if keep and m.bad then
    malformed = malformed + 1
  elseif keep then
    selected[#selected + 1] = m
  end
end

for _, p in ipairs(problems) do io.write("MALFORMED  ", p, "\n") end

if opts.list then
  for _, m in ipairs(selected) do io.write(m.name, "  [", m.file, " -> ", m.specs, "]\n") end
  io.write(#selected, " mutants listed, ", malformed, " malformed entries\n")
  os.exit(#problems == 0 and 0 or 1)
end

if #selected == 0 then
  io.write(string.format("%d mutants, 0 caught\n", malformed))
  os.exit(#problems == 0 and 0 or 1)
end

-- The scratch copy.
local root = capture("mktemp -d /tmp/luachat-mutants.XXXXXX"):gsub("%s+$", "")
assert(root ~= "", "mktemp failed")
local base = root .. "/base"
local logdir = root .. "/logs"
sh("mkdir -p " .. q(base) .. " " .. q(logdir))
local function cleanup()
  if opts.keep then
    io.write("scratch kept: ", root, "\n")
  else
    sh("rm -rf " .. q(root))
  end
end

local t0 = now()
if not sh("git rev-parse --is-inside-work-tree >/dev/null 2>&1") then
  io.write("mutants: not in a git work tree (the scratch copy is made from git ls-files)\n")
  cleanup()
  os.exit(2)
end
-- Tracked files plus untracked ones not ignored, as they are in the working
-- tree now; build output (build*/, the host binary) and deleted files left out.
local copied = sh(string.format(
  "git ls-files -z --cached --others --exclude-standard | " ..
  "tr '\\0' '\\n' | grep -v -E '^(build[^/]*/|luachat$|bench/node_modules/)' | " ..
  "while IFS= read -r f; do [ -f \"$f\" ] && printf '%%s\\n' \"$f\"; done | " ..
  "tar -cf - -T - | tar -xf - -C %s", q(base)))
if not copied then
  io.write("mutants: could not copy the tree to ", base, "\n")
  cleanup()
  os.exit(2)
end
-- The MCP specs' npm peers (git-ignored, installed by make test): copied so
-- the baseline does not run npm ci, which needs the registry or its cache.
if sh("test -d spec/mcp/node_modules") and
   not sh(string.format("cp -a spec/mcp/node_modules %s/spec/mcp/", q(base))) then
  io.write("mutants: could not copy spec/mcp/node_modules to ", base, "\n")
  cleanup()
  os.exit(2)
end

local MAKE = "make --no-print-directory -j2 all"
local function build(dir, log)
  return sh(string.format("cd %s && %s >%s 2>&1", q(dir), MAKE, q(log)))
end

io.write(string.format("mutants: building the unmutated tree in %s\n", base))
io.flush()
if not build(base, logdir .. "/base-build.log") then
  io.write("mutants: the unmutated tree does not build:\n", read_file(logdir .. "/base-build.log") or "", "\n")
  cleanup()
  os.exit(2)
end

-- The failing tests of a busted log, as a set of "file @ line name" (utfTerminal
-- prints "Failure → spec/x_spec.lua @ 12" and the test's full name below it).
local function failures(log)
  local set, n = {}, 0
  local prev
  for line in ((read_file(log) or "") .. "\n"):gmatch("([^\n]*)\n") do
    if prev then
      set[prev .. " " .. line] = true
      n = n + 1
      prev = nil
    end
    local loc = line:match("^Failure → (.*)$") or line:match("^Error → (.*)$")
    if loc then prev = loc end
  end
  return set, n
end

-- Run one spec in dir: "pass", "fail" or "timeout", the failing tests (a
-- set, see failures) and the log path.
local function spec_command(spec, stop_early)
  local c = spec:match("^build:(.+)$")
  if c then return string.format("build/%s spec/fixtures/sse", c) end
  -- stop_early: the first failure is news (the spec passed unmutated), so stop there
  return "busted --lua=./luachat -o utfTerminal " .. (stop_early and "--no-keep-going " or "") .. q(spec)
end

local seq = 0
local function run_spec(dir, spec, stop_early)
  seq = seq + 1
  local log = string.format("%s/%03d-%s.log", logdir, seq, spec:gsub("[^%w]", "_"))
  local cmd = spec_command(spec, stop_early)
  -- timeout runs the spec in its own process group and kills all of it;
  -- -k: a spec that ignores TERM is killed 10 s later.
  local ok, code = sh(string.format(
    "cd %s && env -u LUACHAT_HOST -u LUACHAT_SKIP_STOCK_LUA timeout -k 10 %d %s </dev/null >%s 2>&1",
    q(dir), opts.timeout, cmd, q(log)))
  local fails, n = failures(log)
  if ok and n == 0 then return "pass", {}, log end -- (busted's status is its failure count mod 256)
  if code == 124 or code == 137 then return "timeout", {}, log end
  return "fail", fails, log
end

-- Baseline: each spec the selected mutants name, run unmutated. A test that
-- fails there proves nothing, so only new failures catch a mutant; a spec
-- that times out unmutated is not used at all. A spec that fails is run once
-- more: failing again, the tree is broken (BASELINE, the run fails); passing,
-- the spec is flaky (FLAKY, printed with its failures, and again at the end).
-- A flaky spec still judges mutants, as one that passed: a mutant it catches
-- fails it every time, a flake seldom.
local baseline = {} -- spec -> set of failing tests, or false when it timed out
local baseline_bad, flaky = 0, 0
local baseline_lines = {} -- the BASELINE and FLAKY lines, repeated at the end

-- What a failing spec printed about its failures: busted's lines from the
-- first "Failure →"/"Error →" on (or the log's tail if it names none), at most
-- 40 lines, indented.
local function log_excerpt(log)
  local lines, from = {}, nil
  for l in ((read_file(log) or "") .. "\n"):gmatch("([^\n]*)\n") do
    lines[#lines + 1] = l
    if not from and (l:find("^Failure →") or l:find("^Error →")) then from = #lines end
  end
  from = from or math.max(1, #lines - 40)
  local out = {}
  for i = from, math.min(#lines, from + 39) do out[#out + 1] = "  | " .. lines[i] end
  return table.concat(out, "\n")
end
local function test_list(fails)
  local list = {}
  for id in pairs(fails) do list[#list + 1] = "\n    " .. id end
  table.sort(list)
  return table.concat(list)
end
local seen = {}
for _, m in ipairs(selected) do
  for _, s in ipairs(m.spec_list) do
    if not seen[s] then
      seen[s] = true
      if opts.baseline then
        local st, fails, log = run_spec(base, s)
        if st ~= "pass" then
          local st2, fails2, log2 = run_spec(base, s)
          local line
          if st2 == "pass" then
            flaky = flaky + 1
            line = string.format("FLAKY  %s %s on the unmutated tree, then passed%s", s,
              st == "timeout" and "timed out" or "failed", test_list(fails))
            st, fails = "flaky", {}
          else
            baseline_bad = baseline_bad + 1
            st = st2
            for id in pairs(fails2) do fails[id] = true end
            line = string.format("BASELINE  %s %s on the unmutated tree, twice%s", s,
              st == "timeout" and "times out" or "fails", test_list(fails))
          end
          -- The log goes with the scratch directory: its failures are printed
          -- here, and the line again at the end (CI may keep only the tail).
          io.write(line, "\n", log_excerpt(log), "\n")
          io.flush()
          baseline_lines[#baseline_lines + 1] = line
        end
        baseline[s] = st ~= "timeout" and fails
      else
        baseline[s] = {}
      end
    end
  end
end

-- The mutants themselves, opts.jobs at a time: each runs in the background as
-- one shell script in its own copy (build if C, then its specs one by one,
-- stopping at the first that fails), and leaves a "done" file; the verdict is
-- taken here from its logs, against the baseline, as each one finishes.
-- Spec runs mostly wait on servers and subprocesses, so a few at once on two
-- cores cost little more CPU and much less time.
local function start_mutant(i, m)
  local dir = string.format("%s/m%03d", root, i)
  sh(string.format("cp -a %s %s", q(base), q(dir)))
  local path = dir .. "/" .. m.file
  local src = read_file(path)
  local a, b = src:find(m.find, 1, true)
  write_file(path, src:sub(1, a - 1) .. m.replace .. src:sub(b + 1))
  local job = { i = i, m = m, dir = dir, runs = {}, unused = {} }
  local lines = { "cd " .. q(dir) }
  if m.is_c then
    job.build_log = string.format("%s/m%03d-build.log", logdir, i)
    lines[#lines + 1] = string.format("%s >%s 2>&1 || { echo broken >%s/verdict; touch %s/done; exit 0; }",
      MAKE, q(job.build_log), q(dir), q(dir))
  end
  for k, s in ipairs(m.spec_list) do
    local known = baseline[s]
    if known == false then
      job.unused[#job.unused + 1] = s
    else
      local log = string.format("%s/m%03d-%d-%s.log", logdir, i, k, s:gsub("[^%w]", "_"))
      job.runs[#job.runs + 1] = { spec = s, log = log, known = known }
      -- timeout runs the spec in its own process group and kills all of it;
      -- -k: a spec that ignores TERM is killed 10 s later.
      lines[#lines + 1] = string.format(
        "env -u LUACHAT_HOST -u LUACHAT_SKIP_STOCK_LUA timeout -k 10 %d %s </dev/null >%s 2>&1; rc=$?; echo $rc >%s.rc; [ $rc -eq 0 ] || { touch %s/done; exit 0; }",
        opts.timeout, spec_command(s, next(known) == nil), q(log), q(log), q(dir))
    end
  end
  lines[#lines + 1] = "touch " .. q(dir .. "/done")
  write_file(root .. string.format("/m%03d.sh", i), table.concat(lines, "\n") .. "\n")
  sh(string.format("sh %s >/dev/null 2>&1 </dev/null &", q(root .. string.format("/m%03d.sh", i))))
  return job
end

-- The verdict line of a finished job.
local caught, missed, broken = 0, {}, 0
local function judge(job)
  local m = job.m
  if (read_file(job.dir .. "/verdict") or ""):match("broken") then
    broken = broken + 1
    return string.format("BROKEN  %s  (does not build: %s)", m.name, job.build_log)
  end
  local why
  for _, r in ipairs(job.runs) do
    local rc = tonumber((read_file(r.log .. ".rc") or ""):match("%d+"))
    if not rc then break end -- not run: an earlier spec failed (and was judged below)
    local fails, n = failures(r.log)
    if rc == 124 or rc == 137 then
      why = string.format("%s timed out after %d s", r.spec, opts.timeout)
    elseif not (rc == 0 and n == 0) then
      local new = next(fails) == nil -- failed without naming a test: a crash, a load error
      for id in pairs(fails) do
        if not r.known[id] then new = true end
      end
      if new then why = r.spec .. " failed" end
    end
    if why then break end
  end
  if why then
    caught = caught + 1
    return string.format("caught  %s  (%s)", m.name, why)
  end
  missed[#missed + 1] = m.name
  return string.format("MISSED  %s%s", m.name,
    #job.unused > 0 and ("  (not run: " .. table.concat(job.unused, " ") .. " times out unmutated)") or "")
end

local running, nexti = {}, 1
while nexti <= #selected or #running > 0 do
  while nexti <= #selected and #running < opts.jobs do
    running[#running + 1] = start_mutant(nexti, selected[nexti])
    nexti = nexti + 1
  end
  local finished = false
  for k = #running, 1, -1 do
    local job = running[k]
    if read_file(job.dir .. "/done") then
      table.remove(running, k)
      io.write(judge(job), "\n")
      io.flush()
      sh("rm -rf " .. q(job.dir))
      finished = true
    end
  end
  if not finished then sh("sleep 0.5") end
end

cleanup()
for _, line in ipairs(baseline_lines) do io.write(line, "\n") end
io.write(string.format("%d mutants, %d caught\n", #selected + malformed, caught))
io.stderr:write(string.format("mutants: %.0f s%s%s\n", now() - t0,
  #problems > 0 and string.format(", %d malformed entries", #problems) or "",
  flaky > 0 and string.format(", %d flaky spec(s): see FLAKY above", flaky) or ""))
os.exit((#missed == 0 and broken == 0 and #problems == 0 and baseline_bad == 0) and 0 or 1)
