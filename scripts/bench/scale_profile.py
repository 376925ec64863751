"""scripts/bench/scale_profile.py: where luachat's time and memory go at the largest scale row
(issue 16), for run.py's RESULTS.md.

Owns: the layers at N streams (luachat.core alone, bench/luachat_core_fanout.lua, against
client:stream, beside curl -Z from the rows), a perf sampling profile of the N x C run by
shared object and by symbol, and a massif heap profile of N/5 one-chunk streams at their peak,
grouped by owner (libcurl, Lua, luachat's C).
Never: decides met/missed (run.py's scale_summary does), or runs without the scale server.
"""
import os
import re
import shutil
import statistics
import subprocess

PERF_GROUPS = [("[kernel", "kernel (TCP, epoll, page faults)"), ("liblua5.4", "Lua VM, tables, strings, GC"),
               ("libc.so", "libc (malloc/free, memcpy, ...)"), ("libcurl", "libcurl"),
               ("luachat", "luachat's own C (engine, SSE, JSON, pool allocator)")]


def _row(results, wid, name):
    for wl, rows in results:
        if wl["id"] == wid:
            for r in rows:
                if r["name"] == name and r.get("runs") and not r["failed"]:
                    return r
    return None


def _layers(ctx, n, chunks):
    srv, measure, tmp = ctx["srv"], ctx["measure"], ctx["tmp"]
    core = [ctx["host"], "bench/luachat_core_fanout.lua", srv.api, str(n)]
    lines = ["**Layers at %s streams** (CPU s / peak RSS MB; curl and client:stream are the rows' "
             "medians, luachat.core alone a median of 3):" % "{:,}".format(n), "",
             "| what runs | %d × 1 (set-up) | %d × %d |" % (n, n, chunks), "|---|--:|--:|"]
    cells = {}
    for c in (1, chunks):
        srv.control("default", {"generate": {"kind": "text", "chunks": c, "usage": True}})
        runs = [measure(core, tmp) for _ in range(3)]
        ok = all(r["status"] == 0 for r in runs)
        cells[c] = "%.2f / %.0f" % (statistics.median(r["cpu"] for r in runs),
                                    statistics.median(r["rss_kb"] for r in runs) / 1024) if ok else "failed"

    def cell(wid, name):
        r = _row(ctx["results"], wid, name)
        return "%.2f / %.0f" % (r["cpu"], r["rss_mb"]) if r else "-"
    lines.append("| curl -Z (at most 300 at once, connections reused) | %s | %s |" % (
        cell("scale_%d_setup" % n, "curl"), cell("scale_%d" % n, "curl")))
    lines.append("| luachat.core alone: engine, curl, SSE, one Lua string per event | %s | %s |" % (
        cells[1], cells[chunks]))
    lines.append("| client:stream, a callback per chunk (every chunk a table, accumulated) | %s | %s |" % (
        cell("scale_%d_setup" % n, "luachat callback"), cell("scale_%d" % n, "luachat callback")))
    return lines


def _perf(ctx, n, chunks):
    if not shutil.which("perf"):
        return ["", "perf is not installed: no sampling profile at %d streams." % n]
    srv, tmp = ctx["srv"], ctx["tmp"]
    srv.control("default", {"generate": {"kind": "text", "chunks": chunks, "usage": True}})
    data = os.path.join(tmp, "perf.scale")
    cmd = [ctx["host"], "bench/luachat_client.lua", "concurrent", "callback", srv.api, str(n)]
    r = subprocess.run(["perf", "record", "-F", "999", "-o", data, "--"] + cmd, capture_output=True, text=True,
                       cwd=ctx["root"], preexec_fn=ctx["pin"])
    if r.returncode != 0:
        return ["", "perf record failed at %d streams: %s" % (n, (r.stderr.strip().splitlines() or ["?"])[-1])]

    def report(sort):
        out = subprocess.run(["perf", "report", "-i", data, "--no-children", "--sort", sort, "-g", "none",
                              "--stdio"], capture_output=True, text=True).stdout
        return [line for line in out.splitlines() if re.match(r"^\s+[0-9.]+%", line)]
    groups = {}
    for line in report("dso"):
        pct, dso = line.split(None, 1)
        label = next((what for key, what in PERF_GROUPS if dso.strip().startswith(key) or key in dso),
                     "other (" + dso.strip() + ")")
        groups[label] = groups.get(label, 0.0) + float(pct.rstrip("%"))
    lines = ["", "**Where the CPU goes at %s × %d** (perf, cpu-clock samples of the client:stream run, by "
             "shared object; Debian's liblua5.4 and libcurl have no symbols):" % ("{:,}".format(n), chunks), "",
             "| layer | share |", "|---|--:|"]
    for label, pct in sorted(groups.items(), key=lambda kv: -kv[1]):
        if pct >= 0.5:
            lines.append("| %s | %.1f%% |" % (label, pct))
    lines += ["", "Top symbols:", "", "```"] + [line.rstrip() for line in report("dso,sym")[:15]] + ["```"]
    return lines


def _owner(desc):
    """Who a massif allocation site belongs to, from one frame; None for a libc wrapper (strdup,
    calloc, ...), whose callers decide."""
    if "pool_get" in desc or "host_alloc" in desc or "liblua" in desc:
        return "Lua heap (the host's pool and Lua's larger blocks)"
    if "libcurl" in desc:
        return "libcurl (easy handles, connections, receive buffers)"
    if re.search(r"\((http|sse|buf|lchat_\w+|chunk_scan)\.c:", desc):
        return "luachat's C (transfer state, SSE and event buffers)"
    if "libc.so" in desc or re.search(r"\b(strdup|strndup|calloc|realloc|malloc)\b", desc):
        return None
    return "other"


def _tree(lines):
    """massif's heap tree ("nK: BYTES desc", one space of indent per level) as nested dicts."""
    root, stack = None, []
    for line in lines:
        m = re.match(r"^( *)n(\d+): (\d+) (.*)$", line)
        if not m:
            continue
        node = {"size": int(m.group(3)), "desc": m.group(4), "kids": []}
        depth = len(m.group(1))
        stack = stack[:depth]
        if stack:
            stack[-1]["kids"].append(node)
        else:
            root = node
        stack.append(node)
    return root


def _count(node, groups):
    owner = _owner(node["desc"])
    if owner is None and node["kids"]:
        for kid in node["kids"]:
            _count(kid, groups)
        return
    owner = owner or "other"
    groups[owner] = groups.get(owner, 0) + node["size"]


def _massif(ctx, n):
    if not shutil.which("valgrind"):
        return ["", "valgrind is not installed: no heap profile."]
    srv, tmp = ctx["srv"], ctx["tmp"]
    srv.control("default", {"generate": {"kind": "text", "chunks": 1, "usage": True}})
    out = os.path.join(tmp, "massif.scale")
    cmd = [ctx["host"], "bench/luachat_client.lua", "concurrent", "callback", srv.api, str(n)]
    r = subprocess.run(["valgrind", "--tool=massif", "--massif-out-file=" + out, "--depth=8"] + cmd,
                       capture_output=True, text=True, cwd=ctx["root"], preexec_fn=ctx["pin"])
    if r.returncode != 0 or not os.path.exists(out):
        return ["", "massif failed: " + (r.stderr.strip().splitlines() or ["?"])[-1]]
    with open(out) as f:
        snaps = f.read().split("snapshot=")[1:]
    peak = next((x for x in snaps if "heap_tree=peak" in x), None)
    if peak is None:
        return ["", "massif: no peak snapshot"]
    total = int(re.search(r"mem_heap_B=(\d+)", peak).group(1))
    groups = {}
    root = _tree(peak.splitlines())
    for kid in (root or {"kids": []})["kids"]:
        _count(kid, groups)
    lines = ["", "**Heap at the peak of %s one-chunk streams** (valgrind massif; %.1f MB in all, %.1f KB "
             "a stream):" % ("{:,}".format(n), total / 1e6, total / 1e3 / n), "",
             "| owner | MB | KB a stream |", "|---|--:|--:|"]
    for owner, size in sorted(groups.items(), key=lambda kv: -kv[1]):
        lines.append("| %s | %.1f | %.2f |" % (owner, size / 1e6, size / 1e3 / n))
    return lines


def scale_profile(ctx, n, chunks):
    """ctx: srv (the scale server), tmp, host, root, measure (run.py's), pin (a preexec_fn or None),
    results (run.py's). -> markdown lines."""
    lines = _layers(ctx, n, chunks)
    lines += _perf(ctx, n, chunks)
    lines += _massif(ctx, max(n // 5, 1))
    return lines
