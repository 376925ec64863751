#!/bin/sh
# run-tests.sh BUILD_DIR: the C unit tests, then each busted spec file on its
# own, then one summary line "N passed, N failed, N skipped", always the last
# line of output. Exits non-zero on any failure.
#
# - Library specs run twice: under the host and under stock lua5.4 with
#   BUILD_DIR/luachat/core.so. A spec whose header has a line
#   "-- run-tests: once" (it only drives subprocesses, e.g. the CLI) runs
#   once, under the host; so do the tests of other specs whose description
#   carries the busted tag #once (they only run the host as a subprocess).
# - Nothing is skipped silently: a missing build directory, host, C test,
#   core.so or tool is a failure, and so is a pending test anywhere except in
#   spec/provider_spec.lua (the real-provider spec, pending without
#   OPENAI_API_KEY); those are the "skipped".
# - Each C test and spec file runs under `timeout` (LUACHAT_SPEC_TIMEOUT
#   seconds, default 600), so a hang is a failure that names the file.
# - A spec file that runs no test at all is a failure.
#
# LUACHAT_HOST overrides the host binary (make asan uses build-asan/bin/luachat);
# LUACHAT_SKIP_STOCK_LUA=1 drops the stock lua5.4 runs (make asan).
set -u
build=${1:-build}
host=${LUACHAT_HOST:-./luachat}
limit=${LUACHAT_SPEC_TIMEOUT:-600}
may_pend="spec/provider_spec.lua"
# Every tool some spec or the test server uses (scripts/deps.sh installs them).
tools="busted lua5.4 python3 curl openssl tmux nghttpd nghttpx script make cc pkg-config timeout node npm"
passed=0
failed=0
skipped=0
log=$(mktemp)
trap 'rm -f "$log"' EXIT

problems=""
note() { # message: remembered for the list printed before the summary
	problems="$problems
  $*"
}
fail() { # message: one failure that is not a test's own
	echo "run-tests: FAILED: $*"
	failed=$((failed + 1))
	note "$*"
}

# Run a command under the time limit; its output goes to $log, then to stdout.
# Sets rc (124 when the limit was hit).
limited() {
	timeout -k 10 "$limit" "$@" >"$log" 2>&1 </dev/null
	rc=$?
	cat "$log"
	[ $rc -eq 137 ] && rc=124 # needed the KILL after the TERM
}

for t in $tools; do
	command -v "$t" >/dev/null 2>&1 || fail "$t is not installed (scripts/deps.sh installs it)"
done
command -v timeout >/dev/null 2>&1 || limited() { "$@" >"$log" 2>&1 </dev/null; rc=$?; cat "$log"; }

count_line() { # "name: N passed, N failed" -> add to the totals
	p=$(echo "$1" | sed -n 's/.*[^0-9]\([0-9][0-9]*\) passed, \([0-9][0-9]*\) failed.*/\1/p')
	f=$(echo "$1" | sed -n 's/.*[^0-9]\([0-9][0-9]*\) passed, \([0-9][0-9]*\) failed.*/\2/p')
	passed=$((passed + ${p:-0}))
	failed=$((failed + ${f:-0}))
}

if [ ! -d "$build" ]; then
	fail "no build directory '$build' (run make test, which builds it)"
fi
[ -x "$host" ] || fail "no host binary '$host' (run make test, which builds it)"

ctests=0
for t in "$build"/spec/test_*; do
	[ -x "$t" ] || continue
	ctests=$((ctests + 1))
	limited "$t" spec/fixtures/sse
	line=$(grep -E '[0-9]+ passed, [0-9]+ failed' "$log" | tail -n 1)
	if [ $rc -eq 124 ]; then
		fail "$t: timed out after $limit s"
	elif [ -n "$line" ]; then
		count_line "$line"
		[ "$f" != 0 ] && note "$t: $f failed"
		[ $rc -ne 0 ] && [ "$(echo "$line" | sed -n 's/.* \([0-9]*\) failed.*/\1/p')" = 0 ] && fail "$t: exit $rc"
	else
		fail "$t: crashed or printed no summary (exit $rc)"
	fi
done
[ -d "$build" ] && [ $ctests -eq 0 ] && fail "no C tests in $build/spec (run make test, which builds them)"

run_busted() { # file, label, then the busted command
	file=$1
	label=$2
	shift 2
	echo "== $file ($label)"
	limited "$@"
	if [ $rc -eq 124 ]; then
		fail "$file ($label): timed out after $limit s"
		return
	fi
	# "12 successes / 0 failures / 0 errors / 1 pending : 2.5 seconds"
	s=$(grep -E '[0-9]+ success(es)? / [0-9]+ failures? / [0-9]+ errors?' "$log" | tail -n 1)
	if [ -z "$s" ]; then
		fail "$file ($label): busted printed no summary (exit $rc)"
		return
	fi
	ok=$(echo "$s" | sed 's/^[^0-9]*\([0-9][0-9]*\) success.*/\1/')
	bad=$(echo "$s" | sed 's/.* \([0-9][0-9]*\) failures\{0,1\} \/ \([0-9][0-9]*\) errors\{0,1\}.*/\1 \2/')
	pend=$(echo "$s" | sed -n 's/.* \([0-9][0-9]*\) pending.*/\1/p')
	pend=${pend:-0}
	passed=$((passed + ok))
	nbad=0
	for n in $bad; do nbad=$((nbad + n)); done
	failed=$((failed + nbad))
	[ $nbad -gt 0 ] && note "$file ($label): $nbad failed"
	if [ "$pend" -gt 0 ]; then
		if [ "$file" = "$may_pend" ]; then
			skipped=$((skipped + pend))
		else
			fail "$file ($label): $pend pending: only $may_pend may be pending (a missing tool is a failure)"
		fi
	fi
	if [ $((ok + nbad + pend)) -eq 0 ]; then
		fail "$file ($label): ran no tests"
	elif [ $rc -ne 0 ] && [ $nbad -eq 0 ]; then
		fail "$file ($label): busted exit $rc"
	fi
}

stock=yes
[ -n "${LUACHAT_SKIP_STOCK_LUA:-}" ] && stock=""
# (make asan skips the stock run: an ASan module in an uninstrumented lua5.4 would need the
# runtime preloaded into every child process too; the host run covers the same code.)
if [ -n "$stock" ] && [ ! -f "$build/luachat/core.so" ]; then
	fail "no $build/luachat/core.so for the stock lua5.4 runs (run make test, which builds it)"
	stock=""
fi

nspecs=0
for f in spec/*_spec.lua; do
	[ -f "$f" ] || continue
	nspecs=$((nspecs + 1))
	run_busted "$f" "host $host" busted --lua="$host" -o utfTerminal "$f"
	if [ -n "$stock" ] && ! grep -q '^-- run-tests: once' "$f"; then
		run_busted "$f" "stock lua5.4 + $build/luachat/core.so" \
			busted --lua=lua5.4 --cpath="$build/?.so" --exclude-tags=once -o utfTerminal "$f"
	fi
done
[ $nspecs -eq 0 ] && fail "no spec files (spec/*_spec.lua)"

[ -n "$problems" ] && printf 'run-tests: what failed:%s\n' "$problems"
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
