#!/bin/sh
# run-tests.sh BUILD_DIR: the C unit tests, then the busted specs under the
# host (and under stock lua5.4 with the C module), then one summary line
# "N passed, N failed". Exits non-zero on any failure.
# LUACHAT_HOST overrides the host binary (make asan uses build-asan/bin/luachat).
set -u
build=${1:-build}
host=${LUACHAT_HOST:-./luachat}
passed=0
failed=0
skipped=0
log=$(mktemp)
trap 'rm -f "$log"' EXIT

count_line() { # "name: N passed, N failed" -> add to the totals
	p=$(echo "$1" | sed -n 's/.*[^0-9]\([0-9][0-9]*\) passed, \([0-9][0-9]*\) failed.*/\1/p')
	f=$(echo "$1" | sed -n 's/.*[^0-9]\([0-9][0-9]*\) passed, \([0-9][0-9]*\) failed.*/\2/p')
	passed=$((passed + ${p:-0}))
	failed=$((failed + ${f:-0}))
}

for t in "$build"/spec/test_*; do
	[ -x "$t" ] || continue
	"$t" spec/fixtures/sse >"$log" 2>&1
	rc=$?
	cat "$log"
	line=$(grep -E '[0-9]+ passed, [0-9]+ failed' "$log" | tail -n 1)
	if [ -n "$line" ]; then
		count_line "$line"
		[ $rc -ne 0 ] && [ "$(echo "$line" | sed -n 's/.* \([0-9]*\) failed.*/\1/p')" = 0 ] && failed=$((failed + 1))
	else
		echo "$t: crashed or printed no summary (exit $rc)"
		failed=$((failed + 1))
	fi
done

run_busted() { # label, then the busted command
	label=$1
	shift
	echo "== busted ($label)"
	"$@" >"$log" 2>&1
	rc=$?
	cat "$log"
	# "12 successes / 0 failures / 0 errors / 1 pending : 2.5 seconds"
	s=$(grep -E '[0-9]+ successes? / [0-9]+ failures? / [0-9]+ errors?' "$log" | tail -n 1)
	if [ -z "$s" ]; then
		echo "busted ($label): no summary (exit $rc)"
		failed=$((failed + 1))
		return
	fi
	ok=$(echo "$s" | sed 's/^[^0-9]*\([0-9][0-9]*\) success.*/\1/')
	bad=$(echo "$s" | sed 's/.* \([0-9][0-9]*\) failures\{0,1\} \/ \([0-9][0-9]*\) errors\{0,1\}.*/\1 \2/')
	passed=$((passed + ok))
	for n in $bad; do failed=$((failed + n)); done
	pend=$(echo "$s" | sed -n 's/.* \([0-9][0-9]*\) pending.*/\1/p')
	skipped=$((skipped + ${pend:-0}))
	if [ $rc -ne 0 ] && [ "$bad" = "0 0" ]; then failed=$((failed + 1)); fi
}

run_busted "host $host" busted --lua="$host" -o utfTerminal
if [ -z "${LUACHAT_SKIP_STOCK_LUA:-}" ] && [ -f "$build/luachat/core.so" ]; then
	# (make asan skips this run: an ASan module in an uninstrumented lua5.4 would need the
	# runtime preloaded into every child process too; the host run covers the same code.)
	run_busted "stock lua5.4 + $build/luachat/core.so" \
		busted --lua=lua5.4 --cpath="$build/?.so" -o utfTerminal
fi

echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
