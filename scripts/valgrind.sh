#!/bin/sh
# valgrind.sh [BUILD_DIR [HOST]]: the C tests of BUILD_DIR, then the streaming
# (fast path included) and agent specs under HOST (default ./luachat), all
# under valgrind memcheck. Fails on any memory error or definite leak. Slow
# (valgrind is ~30x): run by hand or `make valgrind` (BUILD=... HOST=...).
# Valgrind 3.19 knows no pidfd_open (syscall 434): the engine falls back to
# waitpid, and its five-line warning per call is shown once, as one line.
set -u
build=${1:-build}
host=${2:-./luachat}
case $host in */*) ;; *) host=./$host ;; esac # make's HOST=luachat: the file here, not one on PATH
vg="valgrind --quiet --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite --show-leak-kinds=definite --track-fds=no"
status=0
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT
# Run "$@" with its stderr filtered (stdout untouched); its exit status is returned.
filtered() {
	{ { "$@" 2>&1 1>&3 3>&-; echo $? >"$tmp/rc"; } | awk '
		/WARNING: unhandled amd64-linux syscall: 434$/ {
			if (!seen++) print "valgrind: no pidfd_open (syscall 434) under valgrind: waitpid fallback"
			skip = 4; next }
		skip > 0 { skip--; next }
		{ print }' >&2; } 3>&1
	return "$(cat "$tmp/rc")"
}
for t in "$build"/spec/test_*; do
	[ -x "$t" ] || continue
	echo "== valgrind $t"
	filtered $vg "$t" spec/fixtures/sse >/dev/null || { echo "valgrind: $t failed"; status=1; }
done
specs=${VALGRIND_SPECS:-"spec/stream_spec.lua spec/chunk_fast_path_spec.lua spec/agent_spec.lua spec/client_spec.lua"}
for s in $specs; do
	[ -f "$s" ] || continue
	echo "== valgrind $host busted $s"
	# busted runs in-process under the host, so the whole engine is checked.
	filtered env LUACHAT_UNDER_VALGRIND=1 $vg "$host" /usr/bin/busted --ignore-lua -o utfTerminal "$s" || { echo "valgrind: $s failed"; status=1; }
done
[ $status -eq 0 ] && echo "valgrind: clean"
exit $status
