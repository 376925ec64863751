#!/bin/sh
# bench.sh: `make bench`. Installs what the benchmark needs (node, npm, GNU time
# through deps.sh --bench; the pinned openai npm package with `npm ci`), then
# runs scripts/bench/run.py, which prints the table and writes bench/RESULTS.md.
# Never a pass/fail test: it fails only when the harness itself cannot run.
# Environment: BENCH_RUNS=N (3), BENCH_QUICK=1 (smoke run, ~1 min, writes
# build/bench-quick.md), BENCH_ONLY=stream_text,nonstream,... (a subset),
# BENCH_PROFILE=0|1 (callgrind profile never / always; default: full runs, and quick runs
# that miss a target).
set -eu
cd "$(dirname "$0")/.."

# deps.sh --bench checks Debian packages; a node from elsewhere (nodesource
# bundles npm) is fine too, so ask it only when a command is missing, and
# go on without the node contenders if it cannot help.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
	scripts/deps.sh --bench || echo "bench.sh: no node/npm: the node contenders will be marked n/a" >&2
fi

# npm ci only when node_modules does not match the lockfile's openai version.
want=$(python3 -c 'import json;print(json.load(open("bench/package-lock.json"))["packages"]["node_modules/openai"]["version"])')
have=$(python3 -c 'import json;print(json.load(open("bench/node_modules/openai/package.json"))["version"])' 2>/dev/null || true)
if [ "$want" != "$have" ]; then
	echo "bench.sh: npm ci (openai $want) in bench/" >&2
	if ! (cd bench && npm ci --no-audit --no-fund --loglevel=error >&2); then
		echo "bench.sh: npm ci failed: the node contenders will be marked n/a" >&2
	fi
fi

# The process meter: forks from a small process so each contender's peak RSS is its own.
mkdir -p build/bench
if [ ! -x build/bench/measure ] || [ scripts/bench/measure.c -nt build/bench/measure ]; then
	${CC:-cc} -std=c11 -D_POSIX_C_SOURCE=200809L -Wall -Wextra -Wpedantic -Werror -Wshadow \
		-Wwrite-strings -Wmissing-prototypes -Wstrict-prototypes -O2 -g \
		-o build/bench/measure scripts/bench/measure.c
fi

exec python3 scripts/bench/run.py
