#!/bin/sh
# fuzz.sh: build the libFuzzer targets with clang and run each for
# FUZZ_SECONDS (default 60) from the seed corpus in spec/fixtures/sse:
# the SSE parser alone, and stream accumulation (parser + JSON + the Lua accumulator).
# A crash leaves its input in build/fuzz/; turn it into a test in spec/c/test_sse.c.
set -eu
seconds=${FUZZ_SECONDS:-60}
out=build/fuzz
mkdir -p "$out/corpus_sse"
command -v clang >/dev/null || { echo "fuzz.sh: clang is needed (apt-get install clang)" >&2; exit 1; }
flags="-std=c11 -D_POSIX_C_SOURCE=200809L -g -O1 -fsanitize=fuzzer,address,undefined -Isrc"
clang $flags spec/c/fuzz_sse.c src/sse.c src/buf.c -o "$out/fuzz_sse"
cp spec/fixtures/sse/*.sse "$out/corpus_sse/" 2>/dev/null || true
echo "== fuzz_sse for ${seconds}s"
(cd "$out" && ./fuzz_sse -max_total_time="$seconds" -print_final_stats=1 corpus_sse 2>&1 | tail -n 12)
# Stream accumulation: the C parser feeding the Lua accumulator (links the engine).
make -s all >/dev/null
engine="src/buf.c src/sse.c src/http.c src/lchat_core.c src/lchat_transfer.c src/lchat_err.c src/lchat_json.c src/lchat_api.c"
# shellcheck disable=SC2086
clang $flags -Iinclude -Ibuild $(pkg-config --cflags lua5.4 libcurl) spec/c/fuzz_accumulate.c $engine \
	-o "$out/fuzz_accumulate" $(pkg-config --libs lua5.4 libcurl) -lm
echo "== fuzz_accumulate for ${seconds}s"
./"$out/fuzz_accumulate" -max_total_time="$seconds" -print_final_stats=1 -rss_limit_mb=4096 \
	"$out/corpus_sse" 2>&1 | tail -n 8
echo "fuzz: no crash in ${seconds}s per target"
