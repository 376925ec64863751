#!/bin/sh
# valgrind.sh BUILD_DIR: the C tests, then the streaming (fast path included) and agent specs
# under the host, all under valgrind memcheck. Fails on any memory error or
# definite leak. Slow (valgrind is ~30x): run by hand or `make valgrind`.
set -u
build=${1:-build}
vg="valgrind --quiet --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite --show-leak-kinds=definite --track-fds=no"
status=0
for t in "$build"/spec/test_*; do
	[ -x "$t" ] || continue
	echo "== valgrind $t"
	$vg "$t" spec/fixtures/sse >/dev/null || { echo "valgrind: $t failed"; status=1; }
done
specs=${VALGRIND_SPECS:-"spec/stream_spec.lua spec/chunk_fast_path_spec.lua spec/agent_spec.lua spec/client_spec.lua"}
for s in $specs; do
	[ -f "$s" ] || continue
	echo "== valgrind ./luachat busted $s"
	# busted runs in-process under the host, so the whole engine is checked.
	LUACHAT_UNDER_VALGRIND=1 $vg ./luachat /usr/bin/busted --ignore-lua -o utfTerminal "$s" || { echo "valgrind: $s failed"; status=1; }
done
[ $status -eq 0 ] && echo "valgrind: clean"
exit $status
