#!/bin/sh
# fuzz.sh: build the libFuzzer targets with clang and run each for
# FUZZ_SECONDS (default 60) from the seed corpus in spec/fixtures/sse:
# the SSE parser alone, and stream accumulation (parser + JSON + the Lua accumulator).
# A crash fails the run and leaves its input in BUILD/fuzz/ (BUILD: the
# build directory, default build; `make fuzz BUILD=dir` passes it): add it to
# spec/fixtures/fuzz/, where spec/fuzz_regressions_spec.lua replays every file.
set -eu
seconds=${FUZZ_SECONDS:-60}
build=${BUILD:-build}
out=$build/fuzz
mkdir -p "$out/corpus_sse"
command -v clang >/dev/null || { echo "fuzz.sh: clang is needed (apt-get install clang)" >&2; exit 1; }
flags="-std=c11 -D_POSIX_C_SOURCE=200809L -g -O1 -fsanitize=fuzzer,address,undefined -Isrc"
clang $flags spec/c/fuzz_sse.c src/sse.c src/buf.c -o "$out/fuzz_sse"
cp spec/fixtures/sse/*.sse "$out/corpus_sse/" 2>/dev/null || true
# Run one target; a crash fails the run and leaves its input in $out/.
run_target() { # name, then extra arguments
	name=$1
	shift
	echo "== $name for ${seconds}s"
	if ! "./$out/$name" -max_total_time="$seconds" -print_final_stats=1 -artifact_prefix="$out/" "$@" \
		>"$out/$name.log" 2>&1; then
		tail -n 30 "$out/$name.log"
		echo "fuzz: $name found a crash (input saved in $out/); add it to spec/fixtures/fuzz/" >&2
		exit 1
	fi
	tail -n 6 "$out/$name.log"
}
run_target fuzz_sse "$out/corpus_sse"
# Stream accumulation: the C parser feeding the Lua accumulator (links the engine).
make -s BUILD="$build" "$build/lchat_config.h" >/dev/null # the one generated header it needs
engine=$(ls src/*.c | grep -v -e '/main\.c$' -e '/lchat_readline\.c$') # everything but the host
# shellcheck disable=SC2086
clang $flags -Iinclude -I"$build" $(pkg-config --cflags lua5.4 libcurl) spec/c/fuzz_accumulate.c $engine \
	-o "$out/fuzz_accumulate" $(pkg-config --libs lua5.4 libcurl) -lm
cp spec/fixtures/fuzz/* "$out/corpus_sse/" 2>/dev/null || true
run_target fuzz_accumulate -rss_limit_mb=4096 "$out/corpus_sse"
echo "fuzz: no crash in ${seconds}s per target"
