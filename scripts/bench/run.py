#!/usr/bin/env python3
"""scripts/bench/run.py: the harness behind `make bench` (started by scripts/bench.sh).

Owns: starting the local test server, running every workload with every
contender (alternately, BENCH_RUNS times), measuring each contender process
with wait4() rusage (user+sys CPU and peak RSS of that process and the
children it waited for, e.g. the curl a plain-Lua script spawns), checking
every result, printing the table of medians and writing it to bench/RESULTS.md,
and the callgrind profile of luachat when a target is missed.
Never: a pass/fail test (exit status is 0 whatever the numbers; only a harness
failure is an error), edits anything outside bench/RESULTS.md and build/,
or lets the server outlive it (--parent-pid, and it is killed on exit).

Environment: BENCH_RUNS=N (3), BENCH_QUICK=1 (small sizes, 1 run, writes
build/bench-quick.md instead), BENCH_ONLY=w1,w3 (a subset, written to build/bench-subset.md),
BENCH_PROFILE=0|1 (never / always run the callgrind profile; default: full runs,
and quick runs that miss a target), BENCH_OUT=path.
"""
import datetime
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from scale_profile import scale_profile  # noqa: E402 (beside this file)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BENCH = os.path.join(ROOT, "bench")
HOST = os.environ.get("BENCH_HOST") or os.path.join(ROOT, "luachat")  # BENCH_HOST: another build's host
QUICK = os.environ.get("BENCH_QUICK", "") not in ("", "0")
RUNS = int(os.environ.get("BENCH_RUNS", "1" if QUICK else "3"))
ONLY = [w for w in os.environ.get("BENCH_ONLY", "").split(",") if w]
PROFILE = os.environ.get("BENCH_PROFILE", "")
# Only a full run may replace bench/RESULTS.md (the README quotes it); quick and subset runs go to build/.
OUT = os.environ.get("BENCH_OUT") or os.path.join(
    ROOT, "build/bench-quick.md" if QUICK else "build/bench-subset.md" if ONLY else "bench/RESULTS.md")

# Sizes: full, quick.
SIZES = {
    "stream_chunks": (100_000, 10_000),
    "requests": (1000, 100),
    "streams": (200, 20),
    "stream_len": (1000, 1000),
    "startups": (20, 5),
    "agent_runs": (100, 10),
    "agent_turns": (10, 10),
    "profile_chunks": (20_000, 5_000),
    "batch_requests": (50_000, 2_000),  # luachat batch (issue 18)
    # Issue 16, scale: (concurrent streams, chunks each), the same 200,000 chunks split three ways.
    "scale": (((200, 1000), (2000, 100), (10000, 20)), ((20, 100), (200, 10), (1000, 2))),
}
S = {k: v[1] if QUICK else v[0] for k, v in SIZES.items()}

COMPLETION = {
    "id": "chatcmpl-bench0123456789abcdefghij", "object": "chat.completion", "created": 1700000000,
    "model": "bench", "system_fingerprint": "fp_bench01",
    "choices": [{"index": 0, "message": {"role": "assistant",
                 "content": "Hello from the bench server. This reply is the same every time, "
                            "about as long as a short answer.", "refusal": None},
                 "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 20, "completion_tokens": 24, "total_tokens": 44},
}
TOOL_COMPLETION = {
    "id": "chatcmpl-bench0123456789abcdefghij", "object": "chat.completion", "created": 1700000000,
    "model": "bench", "system_fingerprint": "fp_bench01",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_bench0001", "type": "function",
         "function": {"name": "search", "arguments": "{\"q\": \"lua coroutines\"}"}}]},
        "logprobs": None, "finish_reason": "tool_calls"}],
    "usage": {"prompt_tokens": 40, "completion_tokens": 12, "total_tokens": 52},
}

# A contender shown for information, not held to the targets: the callback form
# reading every chunk's fields (chunk.choices[1].delta...), so each chunk is decoded.
TABLES = "luachat callback, every chunk a table"

# Issue 14: on the two single-stream workloads the CPU target is the text path's (on_text), and
# the every-chunk-a-table row is held to plain Lua + cjson's CPU.
TEXT_PATH = "luachat text path"
TEXT_PATH_TARGET = ("stream_text", "stream_tool")

# Targets for luachat (callback and pull forms; the text path on the two streams): CPU seconds, RSS MB.
TARGETS = {
    "stream_text": {"cpu": 0.30}, "stream_tool": {"cpu": 0.30}, "nonstream": {"cpu": 0.5},
    "concurrent": {"cpu": 1.0, "rss_mb": 60}, "startup": {"wall_ms": 5.0},
    "batch": {"rate": 1000, "rss_mb": 60},  # issue 18: luachat batch, requests/s and peak RSS
}
BATCH_CONCURRENCY = 64


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# With two cores or more, the servers run on core 0 and every contender on core 1 (BENCH_PIN=0: no
# pinning). Unpinned, the scheduler sometimes put a contender beside the server on one core and
# the same 10,000-stream run cost 4.4 or 6.0 CPU-s; pinned, runs agree within a few percent.
PIN = (os.cpu_count() or 1) >= 2 and os.environ.get("BENCH_PIN", "1") != "0"


def pin_to(core):
    """A preexec_fn putting the child (and what it execs and forks) on one core, or None."""
    if not PIN:
        return None
    return lambda: os.sched_setaffinity(0, {core})


class Server:
    """The test server, its control API, and its CPU time."""

    def __init__(self, tmp):
        port_file = os.path.join(tmp, "port")
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "scripts/testserver.py"), "--port-file", port_file,
             "--parent-pid", str(os.getpid()), "--max-lifetime", "3600"], preexec_fn=pin_to(0))
        for _ in range(200):
            if os.path.exists(port_file):
                break
            time.sleep(0.05)
        with open(port_file) as f:
            self.port = int(f.read())
        self.base = "http://127.0.0.1:%d" % self.port
        self.api = self.base + "/v1"

    def control(self, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + "/_control/" + path, data=data,
                                     method="POST" if data is not None else "GET")
        with urllib.request.urlopen(req) as r:
            return json.loads(r.read())

    def stats(self):
        return self.control("stats")

    def fetch(self, body):
        """One request as a client would make it (not timed): (headers, body bytes)."""
        req = urllib.request.Request(self.api + "/chat/completions", data=body.encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(req) as r:
            return r.headers, r.read()

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


METER = os.environ.get("BENCH_METER") or os.path.join(ROOT, "build/bench/measure")


def measure(cmd, tmp, env=None, repeat=1):
    """Run cmd `repeat` times under build/bench/measure (scripts/bench/measure.c), which forks from a
    small process so ru_maxrss is the command's own; returns dict(wall, cpu, rss_kb, status, out, err)
    with wall and cpu summed over the repeats."""
    out_path, err_path, res_path = (os.path.join(tmp, x) for x in ("out", "err", "res"))
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        subprocess.run([METER, res_path, str(repeat)] + cmd, stdout=out, stderr=err, cwd=ROOT, env=env,
                       preexec_fn=pin_to(1))
    with open(res_path) as f:
        wall, user, sys_, rss, status = f.read().split()
    with open(out_path, "rb") as f:
        stdout = f.read().decode("utf-8", "replace")
    with open(err_path, "rb") as f:
        stderr = f.read().decode("utf-8", "replace")
    return {"wall": float(wall), "cpu": float(user) + float(sys_), "rss_kb": int(rss),
            "status": int(status), "out": stdout, "err": stderr}


def last_json(text):
    for line in reversed(text.strip().splitlines()):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None


def check_counts(expect):
    """A checker comparing the contender's JSON line with the expected counts."""
    def check(r):
        got = last_json(r["out"])
        if got is None:
            return "no result line"
        for k, v in expect.items():
            if got.get(k) != v:
                return "%s %s, expected %s" % (k, got.get(k), v)
        return None
    return check


def check_curl(code_size_lines, n):
    """curl -w '%{http_code} %{size_download}' lines: n of them, each '200 SIZE'."""
    def check(r):
        lines = [l for l in r["out"].splitlines() if l.strip()]
        if len(lines) != n:
            return "%d transfers, expected %d" % (len(lines), n)
        bad = [l for l in lines if l.strip() != code_size_lines]
        if bad:
            return "got '%s', expected '%s'" % (bad[0], code_size_lines)
        return None
    return check


def curl_config(path, url, body_file, n, stream):
    """A curl config file with n POSTs separated by `next`, so one process reuses one connection."""
    block = ['url = "%s"' % url, 'data-binary = "@%s"' % body_file,
             'header = "Content-Type: application/json"', 'header = "Authorization: Bearer sk-bench"',
             'output = "/dev/null"', 'write-out = "%{http_code} %{size_download}\\n"']
    if stream:
        block.append("no-buffer")
    with open(path, "w") as f:
        f.write("silent\n")
        for i in range(n):
            if i:
                f.write("next\n")
            f.write("\n".join(block) + "\n")


SCALE_SERVERS = []  # started on first need (the scale workloads), stopped by main


class ScaleServer(Server):
    """scripts/bench/scale_server.py: the same pre-rendered streams as the test server's
    generate spec, one asyncio loop for 10,000 connections (issue 16's scale rows)."""

    def __init__(self, tmp):
        port_file = os.path.join(tmp, "scale-port")
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "scripts/bench/scale_server.py"), "--port-file", port_file,
             "--parent-pid", str(os.getpid())], preexec_fn=pin_to(0))
        for _ in range(200):
            if os.path.exists(port_file):
                break
            time.sleep(0.05)
        with open(port_file) as f:
            self.port = int(f.read())
        self.base = "http://127.0.0.1:%d" % self.port
        self.api = self.base + "/v1"
        SCALE_SERVERS.append(self)


class Bench:
    def __init__(self, tmp, server):
        self.tmp, self.srv = tmp, server
        self.have_node = bool(shutil.which("node")) and os.path.exists(
            os.path.join(BENCH, "node_modules/openai/package.json"))
        self.stream_body = os.path.join(tmp, "stream.json")
        self.plain_body = os.path.join(tmp, "plain.json")
        msgs = [{"role": "user", "content": "Tell me a long story."}]
        with open(self.stream_body, "w") as f:
            json.dump({"model": "bench", "messages": msgs, "stream": True,
                       "stream_options": {"include_usage": True}}, f)
        with open(self.plain_body, "w") as f:
            json.dump({"model": "bench", "messages": msgs}, f)
        self.results = []  # (workload, info, rows)

    # Contender command lines ------------------------------------------------
    def luachat(self, *args):
        return [HOST, "bench/luachat_client.lua"] + [str(a) for a in args]

    def node(self, *args):
        return ["node", "bench/node_sdk.mjs"] + [str(a) for a in args]

    def curl_one(self):
        return ["curl", "-sN", "-o", "/dev/null", "-w", "%{http_code} %{size_download}\\n", "-X", "POST",
                "-H", "Content-Type: application/json", "-H", "Authorization: Bearer sk-bench",
                "--data-binary", "@" + self.stream_body, self.srv.api + "/chat/completions"]

    # Workloads ----------------------------------------------------------------
    def workloads(self):
        api = self.srv.api
        n_req, n_streams, stream_len = S["requests"], S["streams"], S["stream_len"]
        runs, turns = S["agent_runs"], S["agent_turns"]
        w = []

        for name, kind, title in (("stream_text", "text", "(1) one stream of %d text chunks"),
                                  ("stream_tool", "tool_args", "(2) one stream, one tool call's arguments in %d deltas")):
            n = S["stream_chunks"]
            spec = {"generate": {"kind": kind, "chunks": n, "usage": True}}
            self.srv.control("default", spec)
            hdr, body = self.srv.fetch(open(self.stream_body).read())
            cbytes = int(hdr["x-luachat-content-bytes"])
            expect = {"chunks": n + 2, "content_bytes": cbytes}
            w.append({
                "id": name, "title": title % n, "spec": spec, "rate": ("chunks/s", n + 2), "requests": 1,
                "info": "%d events (%d chunks + finish + usage), %.1f MB body, %d content bytes" % (
                    n + 2, n, len(body) / 1e6, cbytes),
                "contenders": [
                    ("curl", self.curl_one(), check_curl("200 %d" % len(body), 1)),
                    ("plain Lua + curl", ["lua5.4", "bench/plain_curl.lua", name, api, self.stream_body],
                     check_counts(expect)),
                    ("node openai create()", self.node(name, "create", api), check_counts(expect)),
                    ("node openai stream()", self.node(name, "helper", api), check_counts(expect)),
                    ("luachat callback", self.luachat(name, "callback", api), check_counts(expect)),
                    ("luachat pull", self.luachat(name, "pull", api), check_counts(expect)),
                    # Not a target row: the price of reading every chunk's fields (each is decoded).
                    (TABLES, self.luachat(name, "tables", api), check_counts(expect)),
                    # The text path (issue 14): on_text only, no tables for text-only chunks.
                    (TEXT_PATH, self.luachat(name, "text", api), check_counts(expect)),
                ]})

        spec = {"json": COMPLETION}
        self.srv.control("default", spec)
        _, body = self.srv.fetch(open(self.plain_body).read())
        cfg = os.path.join(self.tmp, "nonstream.curl")
        curl_config(cfg, api + "/chat/completions", self.plain_body, n_req, False)
        content = len(COMPLETION["choices"][0]["message"]["content"])
        expect = {"requests": n_req, "content_bytes": n_req * content}
        w.append({
            "id": "nonstream", "title": "(3) %d sequential non-stream requests (keep-alive)" % n_req,
            "spec": spec, "rate": ("req/s", n_req), "requests": n_req,
            "info": "%d-byte chat.completion each" % len(body),
            "contenders": [
                ("curl", ["curl", "-K", cfg], check_curl("200 %d" % len(body), n_req)),
                ("plain Lua + curl", None, None),
                ("node openai create()", self.node("nonstream", "create", api, n_req), check_counts(expect)),
                ("node openai stream()", None, None),
                ("luachat callback", self.luachat("nonstream", "callback", api, n_req), check_counts(expect)),
                ("luachat pull", None, None),
            ]})

        spec = {"generate": {"kind": "text", "chunks": stream_len, "usage": True}}
        self.srv.control("default", spec)
        hdr, body = self.srv.fetch(open(self.stream_body).read())
        cbytes = int(hdr["x-luachat-content-bytes"])
        cfg = os.path.join(self.tmp, "concurrent.curl")
        curl_config(cfg, api + "/chat/completions", self.stream_body, n_streams, True)
        expect = {"chunks": n_streams * (stream_len + 2), "content_bytes": n_streams * cbytes,
                  "requests": n_streams}
        w.append({
            "id": "concurrent", "title": "(4) %d concurrent streams of %d chunks, one process" % (n_streams, stream_len),
            "spec": spec, "rate": ("chunks/s", n_streams * (stream_len + 2)), "requests": n_streams,
            "info": "%d events in all, %.1f MB" % (n_streams * (stream_len + 2), n_streams * len(body) / 1e6),
            "contenders": [
                ("curl", ["curl", "--parallel", "--parallel-immediate", "--parallel-max", str(n_streams), "-K", cfg],
                 check_curl("200 %d" % len(body), n_streams)),
                ("plain Lua + curl", None, None),
                ("node openai create()", self.node("concurrent", "create", api, n_streams), check_counts(expect)),
                ("node openai stream()", self.node("concurrent", "helper", api, n_streams), check_counts(expect)),
                ("luachat callback", self.luachat("concurrent", "callback", api, n_streams), check_counts(expect)),
                ("luachat pull", self.luachat("concurrent", "pull", api, n_streams), check_counts(expect)),
            ]})

        ok = check_counts({"ok": True})
        k = S["startups"]
        w.append({
            "id": "startup", "title": "(5) start-up: load the library, make a client, exit (x%d per run)" % k,
            "spec": None, "rate": None, "repeat": k, "requests": 0,
            "info": "times are per start-up (a run is %d start-ups in sequence)" % k,
            "contenders": [
                ("curl", None, None),
                ("plain Lua + curl", ["lua5.4", "bench/plain_curl.lua", "startup"], ok),
                ("node openai create()", ["node", "bench/node_sdk.mjs", "startup", "create", api], ok),
                ("node openai stream()", None, None),
                ("luachat callback", [HOST, "bench/luachat_startup.lua", api], ok),
                ("luachat pull", None, None),
            ]})

        spec = {"json": TOOL_COMPLETION}
        expect = {"requests": runs * turns, "tool_calls": runs * turns}
        w.append({
            "id": "agent", "title": "(6) tool-calling agent: %d turns (%d runs of %d turns)" % (runs * turns, runs, turns),
            "spec": spec, "rate": ("turns/s", runs * turns), "requests": runs * turns,
            "info": "the server always answers with one tool call; each run ends at max_turns=%d "
                    "(luachat: the max_turns error; node: runTools maxChatCompletions)" % turns,
            "contenders": [
                ("curl", None, None),
                ("plain Lua + curl", None, None),
                ("node openai create()", self.node("agent", "create", api, runs, turns), check_counts(expect)),
                ("node openai stream()", None, None),
                ("luachat callback", self.luachat("agent", "callback", api, runs, turns), check_counts(expect)),
                ("luachat pull", None, None),
            ]})
        w.append(self.batch_workload())
        if not ONLY or any(x.startswith("scale") for x in ONLY):
            w += self.scale_workloads()
        return [x for x in w if not ONLY or x["id"] in ONLY]

    def scale_workloads(self):
        """Issue 16: N concurrent streams of C chunks (the same chunks in all, split three ways)
        on scripts/bench/scale_server.py; and each N again with 1-chunk streams, the set-up
        cost per stream (connection, request, headers, end), to subtract."""
        srv = ScaleServer(self.tmp)
        out = []
        for n, chunks in S["scale"]:
            for setup in (False, True):
                c = 1 if setup else chunks
                spec = {"generate": {"kind": "text", "chunks": c, "usage": True}}
                srv.control("default", spec)
                hdr, body = srv.fetch(open(self.stream_body).read())
                cbytes = int(hdr["x-luachat-content-bytes"])
                cfg = os.path.join(self.tmp, "scale-%d-%d.curl" % (n, c))
                curl_config(cfg, srv.api + "/chat/completions", self.stream_body, n, True)
                expect = {"chunks": n * (c + 2), "content_bytes": n * cbytes, "requests": n}
                wid = "scale_%d%s" % (n, "_setup" if setup else "")
                lc = [HOST, "bench/luachat_client.lua", "concurrent", "callback", srv.api, str(n)]
                out.append({
                    "id": wid, "server": srv, "streams": n, "chunks": c, "setup": setup,
                    "title": "(S) %d concurrent streams of %d chunk%s%s" % (
                        n, c, "" if c == 1 else "s", " (set-up only)" if setup else ""),
                    "spec": spec, "rate": ("chunks/s", n * (c + 2)), "requests": n,
                    "info": "%d events in all; scripts/bench/scale_server.py; curl -Z runs at most 300 at once "
                            "(its CPU floor for the same work, not a %d-connection peer)" % (n * (c + 2), n),
                    "contenders": [
                        ("curl", ["curl", "--parallel", "--parallel-immediate", "--parallel-max", "300", "-K", cfg],
                         check_curl("200 %d" % len(body), n)),
                        ("node openai create()", None if setup else self.node("concurrent", "create", srv.api, n),
                         check_counts(expect)),
                        ("luachat callback", lc, check_counts(expect)),
                    ]})
        return out

    def batch_workload(self):
        """Issue 18: a requests file in the OpenAI Batch format, N non-streamed requests at
        concurrency 64: `luachat batch`, a plain luachat.spawn loop, the node SDK."""
        n = S["batch_requests"]
        api = self.srv.api
        path = os.path.join(self.tmp, "batch.jsonl")
        with open(path, "w") as f:
            for i in range(n):
                f.write(json.dumps({"custom_id": "request-%d" % i, "method": "POST", "url": "/v1/chat/completions",
                                    "body": {"model": "bench", "messages": [
                                        {"role": "user", "content": "Tell me a long story. (%d)" % i}]}}) + "\n")
        out = os.path.join(self.tmp, "batch-out.jsonl")

        def check_output(r):
            lines = 0
            try:
                with open(out) as f:
                    for line in f:
                        d = json.loads(line)
                        if d["response"]["status_code"] != 200 or d["error"] is not None:
                            return "a failed line: " + line[:200]
                        lines += 1
            except (OSError, ValueError, KeyError, TypeError) as e:
                return "bad output: %s" % e
            return None if lines == n else "%d output lines, expected %d" % (lines, n)

        def fresh(cmd):  # each run starts from no output file (luachat batch refuses to overwrite one)
            return ["sh", "-c", 'rm -f "$1"; shift; exec "$@"', "sh", out] + cmd
        c = str(BATCH_CONCURRENCY)
        return {
            "id": "batch", "title": "(7) batch: %d non-streamed requests from a file, concurrency %s" % (n, c),
            "spec": {"json": COMPLETION}, "rate": ("req/s", n), "requests": n,
            "info": "OpenAI Batch input format (%.1f MB), one output line per request flushed as it completes; "
                    "target: >= 1,000 req/s on 2 cores, peak RSS < 60 MB" % (os.path.getsize(path) / 1e6),
            "contenders": [
                ("luachat batch", fresh(["env", "OPENAI_API_KEY=sk-bench", HOST, "batch", path, "-o", out,
                                         "--concurrency", c, "--quiet", "--base-url", api]), check_output),
                ("luachat spawn loop", fresh([HOST, "bench/luachat_batch_loop.lua", path, out, api, c]), check_output),
                ("node openai create()", fresh(["node", "bench/node_batch.mjs", path, out, api, c]), check_output),
            ]}

    def run_workload(self, wl):
        srv = wl.get("server") or self.srv  # the scale rows have their own
        srv.control("reset")
        if wl["spec"]:
            srv.control("default", wl["spec"])
        rows = []
        for name, cmd, check in wl["contenders"]:
            why = None
            if cmd is None:
                why = "n/a"
            elif (cmd[0] == "node" or "bench/node_batch.mjs" in cmd) and not self.have_node:
                why = "n/a (node or bench/node_modules missing)"
            rows.append({"name": name, "cmd": cmd, "check": check, "runs": [], "failed": None, "na": why,
                         "server_cpu": [], "conns": []})
        log("== %s" % wl["title"])
        repeat = wl.get("repeat", 1)
        for run in range(RUNS):
            for row in rows:  # alternate contenders within each run
                if row["na"]:
                    continue
                before = srv.stats()
                r = measure(row["cmd"], self.tmp, repeat=repeat)
                total = {"wall": r["wall"], "cpu": r["cpu"], "rss_kb": r["rss_kb"]}
                if r["status"] != 0:
                    row["failed"] = "exit %d: %s" % (r["status"], " ".join(r["err"].strip().splitlines()[-1:]))
                else:
                    row["failed"] = row["check"](r)
                after = srv.stats()
                served = after["requests"] - before["requests"]
                if not row["failed"] and served != wl["requests"] * repeat:
                    row["failed"] = "server saw %d requests, expected %d" % (served, wl["requests"] * repeat)
                row["server_cpu"].append(after["cpu_seconds"] - before["cpu_seconds"])
                row["conns"].append(after["connections"] - before["connections"] - 1)  # minus the stats call
                total["wall"] /= repeat
                total["cpu"] /= repeat
                row["runs"].append(total)
                log("   run %d  %-22s wall %7.3f s  cpu %7.3f s  rss %6.1f MB%s" % (
                    run + 1, row["name"], total["wall"], total["cpu"], total["rss_kb"] / 1024,
                    "  FAILED: " + row["failed"] if row["failed"] else ""))
        for row in rows:
            if row["runs"]:
                row["wall"] = statistics.median(r["wall"] for r in row["runs"])
                row["cpu"] = statistics.median(r["cpu"] for r in row["runs"])
                row["rss_mb"] = statistics.median(r["rss_kb"] for r in row["runs"]) / 1024
                row["srv"] = statistics.median(row["server_cpu"])
                row["conn"] = statistics.median(row["conns"])
        self.results.append((wl, rows))


def fmt(v, digits=3):
    return "%.*f" % (digits, v)


def ratio(a, b):
    if a is None or b is None or b <= 0:
        return "-"
    return "%.2f" % (a / b)


def table(wl, rows):
    """A Markdown table for one workload."""
    startup = wl["id"] == "startup"
    by = {r["name"]: r for r in rows}

    def ok(r):
        return r if r and r.get("runs") and not r["failed"] else None
    curl, lc = ok(by.get("curl")), ok(by.get("luachat callback"))
    unit = "ms" if startup else "s"
    rate = wl["rate"][0] if wl["rate"] else "rate"
    out = ["### " + wl["title"], "", wl["info"] + ".", "",
           "| contender | wall %s | CPU %s (user+sys) | peak RSS MB | %s | CPU ÷ curl | CPU ÷ luachat | RSS ÷ luachat | "
           "server CPU s | conns | check |" % (unit, unit, rate),
           "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|"]
    for r in rows:
        if r["na"]:
            out.append("| %s | %s |  |  |  |  |  |  |  |  |  |" % (r["name"], r["na"]))
            continue
        if not r["runs"]:
            continue
        scale = 1000 if startup else 1
        rate_s = "%.0f" % (wl["rate"][1] / r["wall"]) if wl["rate"] and r["wall"] > 0 else "-"
        good = ok(r)
        out.append("| %s | %s | %s | %.1f | %s | %s | %s | %s | %.2f | %d | %s |" % (
            r["name"], fmt(r["wall"] * scale, 1 if startup else 3), fmt(r["cpu"] * scale, 1 if startup else 3),
            r["rss_mb"], rate_s,
            ratio(good and r["cpu"], curl and curl["cpu"]), ratio(good and r["cpu"], lc and lc["cpu"]),
            ratio(good and r["rss_mb"], lc and lc["rss_mb"]), r["srv"], r["conn"],
            "FAILED: " + r["failed"] if r["failed"] else "ok"))
    out.append("")
    return out


def targets(results):
    """One line per workload with a target: met or missed, by which luachat form."""
    lines, missed = [], False
    for wl, rows in results:
        t = TARGETS.get(wl["id"])
        if not t:
            continue
        by = {r["name"]: r for r in rows}
        plain = by.get("plain Lua + curl")
        for r in rows:
            if not r["name"].startswith("luachat") or r["na"] or not r["runs"]:
                continue
            # Issue 14: on the two streams the CPU target is the text path's; the every-chunk-a-table
            # row must cost no more CPU than plain Lua + cjson (which keeps nothing).
            if wl["id"] in TEXT_PATH_TARGET and r["name"] == TABLES:
                if plain and plain.get("runs") and not plain["failed"]:
                    bad = bool(r["failed"]) or r["cpu"] > plain["cpu"]
                    missed = missed or bad
                    lines.append("- %s, %s: CPU %.3f s, %.2fx plain Lua + curl (target ≤ 1x) — **%s**" % (
                        wl["id"], r["name"], r["cpu"], r["cpu"] / plain["cpu"],
                        "FAILED" if r["failed"] else ("missed" if bad else "met")))
                continue
            if r["name"] == TABLES or (wl["id"] in TEXT_PATH_TARGET and r["name"] != TEXT_PATH):
                continue
            if wl["id"] == "batch" and r["name"] != "luachat batch":
                continue  # the spawn loop is a comparison row
            parts, bad = [], bool(r["failed"])
            if "rate" in t:  # requests/s (the batch workload)
                got = wl["rate"][1] / r["wall"] if r["wall"] > 0 else 0
                parts.append("%.0f %s (target ≥ %d)" % (got, wl["rate"][0], t["rate"]))
                bad = bad or got < t["rate"]
            if "cpu" in t:
                parts.append("CPU %.3f s (target ≤ %.2f)" % (r["cpu"], t["cpu"]))
                bad = bad or r["cpu"] > t["cpu"]
            if "rss_mb" in t:
                parts.append("RSS %.1f MB (target < %d)" % (r["rss_mb"], t["rss_mb"]))
                bad = bad or r["rss_mb"] >= t["rss_mb"]
            if "wall_ms" in t:
                parts.append("%.1f ms wall, %.1f ms CPU (target < %.0f ms)" % (
                    r["wall"] * 1000, r["cpu"] * 1000, t["wall_ms"]))
                bad = bad or r["wall"] * 1000 >= t["wall_ms"]
            missed = missed or bad
            lines.append("- %s, %s: %s — **%s**" % (wl["id"], r["name"], ", ".join(parts),
                                                     "FAILED" if r["failed"] else ("missed" if bad else "met")))
    return lines, missed


def summary(results):
    """CPU ratios on one line per workload: luachat/curl and peer/luachat."""
    lines = []
    for wl, rows in results:
        by = {r["name"]: r for r in rows if r.get("runs") and not r["failed"]}
        lc = by.get("luachat callback")
        if not lc:
            continue
        parts = []
        if "curl" in by:
            parts.append("luachat/curl %.2fx" % (lc["cpu"] / by["curl"]["cpu"]))
        for name in ("luachat pull", TABLES, "plain Lua + curl", "node openai create()", "node openai stream()"):
            if name in by:
                parts.append("%s/luachat %.1fx CPU, %.1fx RSS" % (name, by[name]["cpu"] / lc["cpu"],
                                                                  by[name]["rss_mb"] / lc["rss_mb"]))
        lines.append("- %s: %s" % (wl["id"], "; ".join(parts)))
    return lines


def scale_summary(results):
    """Issue 16: the scale rows side by side, the set-up cost per stream (1-chunk streams) and
    the cost per event after subtracting it, and the targets at 10,000 streams (met/missed)."""
    by = {}
    for wl, rows in results:
        if wl["id"].startswith("scale_"):
            by[wl["id"]] = (wl, {r["name"]: r for r in rows if r.get("runs") and not r["failed"]})
    if not by:
        return []
    lines = ["| streams × chunks | curl -Z CPU s | node CPU s | luachat CPU s | luachat peak RSS MB | "
             "luachat ÷ curl | node ÷ luachat | luachat set-up µs/stream | luachat µs/event after set-up |",
             "|---|--:|--:|--:|--:|--:|--:|--:|--:|"]
    per_event, last = {}, None
    for n, chunks in S["scale"]:
        if "scale_%d" % n not in by:
            continue
        wl, rows = by["scale_%d" % n]
        _, setup = by.get("scale_%d_setup" % n, (None, {}))
        cu, nd, lc = rows.get("curl"), rows.get("node openai create()"), rows.get("luachat callback")
        su = setup.get("luachat callback")
        cell = lambda r, k="cpu", f="%.2f": f % r[k] if r else "-"
        setup_us = su["cpu"] * 1e6 / n if su else None
        if lc and su:
            # events beyond the set-up run's three per stream (first chunk, finish, usage)
            per_event[n] = (lc["cpu"] - su["cpu"]) * 1e6 / (n * (chunks + 2) - n * 3)
        lines.append("| %d × %d | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            n, chunks, cell(cu), cell(nd), cell(lc), cell(lc, "rss_mb", "%.0f"),
            "%.1fx" % (lc["cpu"] / cu["cpu"]) if lc and cu else "-",
            "%.1fx" % (nd["cpu"] / lc["cpu"]) if lc and nd else "-",
            "%.0f" % setup_us if setup_us is not None else "-",
            "%.2f" % per_event[n] if n in per_event else "-"))
        last = (n, cu, nd, lc)
    if last and not QUICK:
        n, cu, nd, lc = last
        lines.append("")
        if lc and cu:
            lines.append("- %d streams: luachat CPU %.1fx curl -Z (target ≤ 2x) — **%s**" % (
                n, lc["cpu"] / cu["cpu"], "met" if lc["cpu"] <= 2 * cu["cpu"] else "missed"))
        if lc and nd:
            lines.append("- %d streams: node SDK CPU %.1fx luachat (target ≥ 8x) — **%s**" % (
                n, nd["cpu"] / lc["cpu"], "met" if nd["cpu"] >= 8 * lc["cpu"] else "missed"))
        if lc:
            lines.append("- %d streams: luachat peak RSS %.0f MB (target ≤ 150) — **%s**" % (
                n, lc["rss_mb"], "met" if lc["rss_mb"] <= 150 else "missed"))
        first = min(per_event) if per_event else None
        if first is not None and n in per_event and first != n:
            ratio_ = per_event[n] / per_event[first] if per_event[first] > 0 else float("inf")
            lines.append("- cost per event after set-up, %d vs %d streams: %.2fx (target ≤ 1.5x) — **%s**" % (
                n, first, ratio_, "met" if ratio_ <= 1.5 else "missed"))
    return lines


def cmd_out(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine():
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = ""
    try:
        with open("/proc/meminfo") as f:
            mem = "%.1f GB RAM" % (int(f.readline().split()[1]) / 1024 / 1024)
    except (OSError, ValueError, IndexError):
        pass
    openai = "-"
    try:
        with open(os.path.join(BENCH, "node_modules/openai/package.json")) as f:
            openai = json.load(f)["version"]
    except (OSError, ValueError, KeyError):
        pass
    lua_v = cmd_out(["lua5.4", "-e", "print(_VERSION .. ' ' .. (require 'cjson')._NAME .. ' ' .. (require 'cjson')._VERSION)"])
    return [
        "- machine: %d cores, %s, %s, %s %s" % (os.cpu_count(), model, mem, platform.system(), platform.release()),
        "- luachat: %s" % " / ".join(cmd_out([HOST, "-v"]).splitlines()),
        "- curl: %s" % (cmd_out(["curl", "--version"]).splitlines() or ["-"])[0],
        "- lua: %s; node: %s; openai (npm): %s; python (server): %s" % (
            lua_v or "-", cmd_out(["node", "--version"]) or "-", openai, platform.python_version()),
    ]


OBJECTS = [  # callgrind object name -> what it is, for the by-layer table
    ("cjson", "lua-cjson decoding (its own code; the Lua API calls it makes count as Lua core)"),
    ("liblua5.4", "Lua VM and core (interpreting lua/luachat/*.lua, tables, strings, GC)"),
    ("libcurl", "libcurl"),
    ("libc.so", "libc (malloc/free, memcpy, ...)"),
    ("ld-linux", "dynamic loader (start-up)"),
    ("luachat", "luachat's own C (SSE parser, buffers, JSON fix-ups, bindings)"),
]


def annotate(out, inclusive):
    """callgrind_annotate rows as (cost, function, object) and the program total."""
    ann = subprocess.run(["callgrind_annotate", "--inclusive=" + inclusive, "--threshold=100", "--auto=no", out],
                         capture_output=True, text=True).stdout
    rows, total = [], None
    for line in ann.splitlines():
        s = line.strip()
        if total is None and s.endswith("PROGRAM TOTALS"):
            total = int(s.split()[0].replace(",", ""))
            continue
        m = re.match(r"^([\d,]+) \(\s*[\d.]+%\)\s+(.*?)(?: \[(.*)\])?$", s)
        if rows and s.startswith("----"):
            break  # the end of the function list
        if total is not None and m and not m.group(2).startswith("/"):  # /abs/path rows repeat file:fn rows
            rows.append((int(m.group(1).replace(",", "")), m.group(2), m.group(3) or ""))
    return rows, total or 1


# Stock lua5.4 running a luachat script with this build's core.so (the host's interrupt count hook,
# which makes the VM call luaG_traceexec on every instruction, is the host's, not the library's).
# The build directory: the host's parent when it is BUILD/bin/luachat, else build/ (./luachat).
_HOST_DIR = os.path.dirname(os.path.abspath(HOST))
_BUILD_DIR = os.path.dirname(_HOST_DIR) if os.path.basename(_HOST_DIR) == "bin" else os.path.join(ROOT, "build")
STOCK_LUA = ["lua5.4", "-e", "package.path = %r .. package.path; package.cpath = %r .. package.cpath" % (
    os.path.join(ROOT, "lua", "?.lua;") + os.path.join(ROOT, "lua", "?", "init.lua;"),
    os.path.join(_BUILD_DIR, "?.so;"))]


def profile(tmp, srv):
    """Where luachat's time goes on a shorter stream: callgrind by layer and by function, and a
    sampling profile of the Lua code."""
    n = S["profile_chunks"]
    srv.control("reset")
    srv.control("default", {"generate": {"kind": "text", "chunks": n, "usage": True}})
    srv.fetch(open(os.path.join(tmp, "stream.json")).read())  # warm the server's cache
    cmd = [HOST, "bench/luachat_client.lua", "stream_text", "callback", srv.api]
    lines = []
    r = measure(cmd, tmp)
    lines.append("Workload (1) at %d chunks, callback form, natively: %.3f CPU-s, %.1f MB "
                 "(%.1f µs of CPU per chunk)." % (n, r["cpu"], r["rss_kb"] / 1024, r["cpu"] * 1e6 / (n + 2)))
    # The layers: transport + SSE alone, then with each JSON decoder, then the whole stream API.
    layers = [("luachat.core only: curl multi + SSE parser + one Lua string per event",
               [HOST, "bench/luachat_floor.lua", srv.api, "none"]),
              ("... + plain lua-cjson decode of each event", [HOST, "bench/luachat_floor.lua", srv.api, "cjson"]),
              ("... + luachat.json.decode (its own C decoder)",
               [HOST, "bench/luachat_floor.lua", srv.api, "luachat"]),
              ("client:stream with a counting callback (workload 1): delta_text (every chunk a table)", cmd),
              ("client:stream with a callback reading every chunk's fields (every chunk a table)",
               cmd[:3] + ["tables"] + cmd[4:]),
              ("the same script under stock lua5.4 + core.so (no host interrupt count hook; lua.c's "
               "generational GC)", STOCK_LUA + cmd[1:3] + ["tables"] + cmd[4:]),
              ("the text path (on_text: text-only chunks are never tables)", cmd[:3] + ["text"] + cmd[4:])]
    lines += ["", "**Layers** (workload (1) at %d chunks; medians of 3 runs):" % n, "",
              "| what runs | CPU s | µs per chunk |", "|---|--:|--:|"]
    for what, c in layers:
        cpus = [measure(c, tmp)["cpu"] for _ in range(3)]
        cpu = statistics.median(cpus)
        lines.append("| %s | %.3f | %.2f |" % (what, cpu, cpu * 1e6 / (n + 2)))
    # Start-up, piece by piece.
    k = S["startups"]
    lines += ["", "**Start-up** (per start, mean of %d in sequence):" % k, "",
              "| command | wall ms | CPU ms | peak RSS MB |", "|---|--:|--:|--:|"]
    for c in (["lua5.4", "-e", ""], ["lua5.4", "-e", "require 'cjson'"], ["curl", "--version"],
              [HOST, "-e", ""], [HOST, "-e", "require 'luachat'"], [HOST, "bench/luachat_startup.lua"]):
        r = measure(c, tmp, repeat=k)
        lines.append("| `%s` | %.2f | %.2f | %.1f |" % (" ".join(x if x else "''" for x in c).replace(ROOT + "/", "./"),
                                                     r["wall"] * 1000 / k, r["cpu"] * 1000 / k, r["rss_kb"] / 1024))
    if shutil.which("valgrind") and shutil.which("callgrind_annotate"):
        out = os.path.join(tmp, "callgrind.startup")
        r = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=" + out, HOST,
                            "bench/luachat_startup.lua"], capture_output=True, text=True, cwd=ROOT)
        if r.returncode == 0:
            incl, total = annotate(out, "yes")
            phases = [("_dl_start", "dynamic loader: mapping and relocating the %d shared libraries" % len(
                          cmd_out(["ldd", HOST]).splitlines())),
                      ("luaL_loadfilex", "compiling the Lua sources (lua/luachat/*.lua)"),
                      ("luaopen_luachat_core", "luaopen_luachat_core (engine, curl_global_init)")]
            lines += ["", "Start-up by phase (callgrind, inclusive; %s instructions in all):" % "{:,}".format(total), ""]
            for key, what in phases:
                cost = max([c for c, fn, _ in incl if fn.endswith(":" + key) or fn.endswith(key)] or [0])
                lines.append("- %s: %.0f%%" % (what, 100 * cost / total))
    # The Lua side: which Lua functions the VM spends its instructions in.
    lp = os.path.join(tmp, "luaprof.txt")
    env = dict(os.environ, LUACHAT_BENCH_LUAPROF=lp)
    r = measure([HOST, "-e", "dofile'bench/lua_profile.lua'"] + cmd[1:], tmp, env=env)
    if r["status"] == 0 and os.path.exists(lp):
        with open(lp) as f:
            lines += ["", "**Lua functions** (`bench/lua_profile.lua`, a count hook; share of the Lua VM "
                      "instructions executed, C functions they call not included):", "", "```"] + \
                     f.read().rstrip().splitlines() + ["```"]
    if not shutil.which("valgrind") or not shutil.which("callgrind_annotate"):
        return lines + ["", "valgrind is not installed (`scripts/deps.sh --dev`): no callgrind profile."]
    perf = cmd_out(["sh", "-c", "perf stat -e instructions true 2>&1"])
    if "not supported" in perf or not perf:
        lines += ["", "`perf stat -e instructions` is not supported on this machine (no hardware counters "
                  "in the VM), hence callgrind."]
    out = os.path.join(tmp, "callgrind.out")
    log("== profile: valgrind --tool=callgrind ./luachat, stream_text at %d chunks" % n)
    r = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=" + out] + cmd,
                       capture_output=True, text=True, cwd=ROOT)
    if r.returncode != 0:
        return lines + ["", "callgrind run failed: " + (r.stderr.strip().splitlines() or ["?"])[-1]]
    self_rows, total = annotate(out, "no")
    incl_rows, _ = annotate(out, "yes")
    by_obj = {}
    for cost, _, obj in self_rows:
        label = "other (" + os.path.basename(obj) + ")" if obj else "other"
        for key, what in OBJECTS:
            if key in os.path.basename(obj):
                label = what
                break
        by_obj[label] = by_obj.get(label, 0) + cost
    lines += ["", "**By layer** (callgrind self cost, instructions; %s in all, %.0f per chunk):" % (
        "{:,}".format(total), total / (n + 2)), "", "| layer | share | instructions per chunk |", "|---|--:|--:|"]
    for label, cost in sorted(by_obj.items(), key=lambda kv: -kv[1]):
        if cost * 1000 >= total:
            lines.append("| %s | %.1f%% | %.0f |" % (label, 100 * cost / total, cost / (n + 2)))
    lines += ["", "**Top functions by self cost** (Debian's liblua5.4 and cjson have no symbols: their "
              "functions show as addresses):", "", "```"]
    for cost, fn, obj in self_rows[:20]:
        lines.append("%6.2f%%  %-60s %s" % (100 * cost / total, fn[:60], os.path.basename(obj)))
    lines += ["```", "", "**luachat's own C functions, inclusive** (callees included):", "", "```"]
    seen = set()
    for cost, fn, obj in incl_rows:
        if "'" in fn or not fn.startswith("src/") or fn in seen:
            continue
        seen.add(fn)
        if len(seen) > 15:
            break
        lines.append("%6.2f%%  %s" % (100 * cost / total, fn))
    lines.append("```")
    return lines


def main():
    if not os.access(METER, os.X_OK):
        log("bench: %s is missing: scripts/bench.sh builds it" % METER)
        return 1
    if not os.access(HOST, os.X_OK):
        log("bench: ./luachat is missing: run `make` first")
        return 1
    tmp = tempfile.mkdtemp(prefix="luachat-bench-")
    srv = Server(tmp)
    started = time.monotonic()
    try:
        b = Bench(tmp, srv)
        log("bench: server %s, %d run(s) per contender%s" % (srv.base, RUNS, ", QUICK sizes" if QUICK else ""))
        for wl in b.workloads():
            b.run_workload(wl)
        tlines, missed = targets(b.results)
        prof = None
        if PROFILE == "1" or ((missed or not QUICK) and PROFILE != "0"):
            prof = profile(tmp, srv)
        sprof = None
        if SCALE_SERVERS and (PROFILE == "1" or (not QUICK and PROFILE != "0")):
            n, chunks = S["scale"][-1]
            log("== profile: %d streams (luachat.core alone, perf, massif at %d)" % (n, n // 5))
            sprof = scale_profile({"srv": SCALE_SERVERS[0], "tmp": tmp, "host": HOST, "root": ROOT,
                                   "measure": measure, "pin": pin_to(1), "results": b.results}, n, chunks)
        server_total = srv.stats()["cpu_seconds"]
    finally:
        srv.stop()
        for s in SCALE_SERVERS:
            s.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    elapsed = time.monotonic() - started

    doc = ["# luachat benchmarks", "",
           "Generated by `make bench` (`scripts/bench.sh`) on %s in %.0f s%s; do not edit by hand." % (
               datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), elapsed, " (BENCH_QUICK=1)" if QUICK else ""),
           ""] + machine() + [
           "- method: every contender is a separate process, measured by `scripts/bench/measure.c` (fork, exec, waitpid, getrusage(RUSAGE_CHILDREN)): CPU is user+sys "
           "of that process and the children it waited for (the curl that plain Lua spawns); peak RSS is "
           "ru_maxrss. " + ("Servers run on core 0, contenders on core 1 (pinned). " if PIN else "") + "Medians of %d run(s); contenders alternate within each run. Every result is checked "
           "(chunk count, content bytes, request count seen by the server); a failed check marks the row "
           "FAILED. The local server is `scripts/testserver.py` serving pre-rendered streams; its own CPU "
           "time per contender run is the \"server CPU s\" column (%.1f s over the whole bench); \"conns\" "
           "is the number of TCP connections the contender opened." % (RUNS, server_total),
           "- CPU ÷ curl: the contender's CPU over curl's (the transfer floor). CPU ÷ luachat, RSS ÷ luachat: "
           "over luachat's callback form.", ""]
    doc += ["## Ratios (CPU seconds, medians)", ""] + summary(b.results) + [""]
    doc += ["## Targets for luachat", ""] + tlines + [""]
    scale = scale_summary(b.results)
    if scale:
        doc += ["## Scale (issue 16)", "", "The same chunks split as N concurrent streams (medians; CPU is "
                "user+sys of the whole process; set-up: the same N streams of one chunk each).", ""] + scale + [""]
        if sprof:
            doc += ["### Where the time and memory go at the largest row", ""] + sprof + [""]
    doc += ["## Results", ""]
    for wl, rows in b.results:
        doc += table(wl, rows)
    if prof:
        doc += ["## Where luachat's time goes", ""] + prof + [""]
    text = "\n".join(doc) + "\n"
    print(text)
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        f.write(text)
    log("bench: wrote %s" % os.path.relpath(OUT, ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
