#!/usr/bin/env python3
"""scripts/bench/scale_server.py: the bench's server for the scale rows (thousands of
concurrent streams), beside scripts/testserver.py.

Owns: one asyncio event loop serving, on 127.0.0.1, the same pre-rendered stream as
testserver.py's {"generate": ...} spec (its generate_stream renders it: identical
bytes, chunked framing, x-luachat-content-bytes) to every POST, on keep-alive
connections; and the control calls the bench harness uses (/_control/default,
/_control/reset, /_control/stats: requests, connections, its own CPU seconds).
testserver.py runs a thread per connection with a 1,024-connection backlog: at
10,000 connections its accept queue overflows and clients time out connecting.
Here one thread accepts and serves them all, with the backlog at the kernel's
maximum and the descriptor limit raised to the hard limit.
Never: a test server (no scripted faults, no request log), or outlives --parent-pid.
"""
import argparse
import asyncio
import importlib.util
import json
import os
import resource
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def load_testserver():
    spec = importlib.util.spec_from_file_location(
        "testserver", os.path.join(HERE, "..", "testserver.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


TS = load_testserver()


class State:
    def __init__(self):
        self.requests = 0
        self.connections = 0
        self.response = None  # (head bytes, framed body bytes)

    def set_default(self, spec):
        gen = (spec or {}).get("generate")
        if not gen:
            self.response = None
            return
        _, framed, content_bytes = TS.generate_stream(gen)
        head = ("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                "Transfer-Encoding: chunked\r\nx-luachat-content-bytes: %d\r\nx-luachat-chunks: %d\r\n"
                "\r\n" % (content_bytes, int(gen.get("chunks", 1000)))).encode()
        self.response = (head, framed)


STATE = State()


def simple(status, value):
    body = json.dumps(value).encode()
    return ("HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (
        status, "OK" if status == 200 else "Error", len(body))).encode() + body


def control(path, body):
    if path == "/_control/stats":
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return simple(200, {"cpu_seconds": ru.ru_utime + ru.ru_stime, "requests": STATE.requests,
                            "connections": STATE.connections, "max_rss_kb": ru.ru_maxrss})
    if path == "/_control/default":
        STATE.set_default(json.loads(body or b"null"))
        return simple(200, {"ok": True})
    if path == "/_control/reset":
        return simple(200, {"ok": True})
    return simple(404, {"error": {"message": "scale_server: unknown control " + path}})


async def serve(reader, writer):
    STATE.connections += 1
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            lines = head.decode("latin-1").split("\r\n")
            method, path = lines[0].split(" ")[:2]
            length = 0
            for line in lines[1:]:
                k, _, v = line.partition(":")
                if k.strip().lower() == "content-length":
                    length = int(v.strip())
            body = await reader.readexactly(length) if length else b""
            if path.startswith("/_control/"):
                writer.write(control(path, body))
            elif method == "POST" and STATE.response:
                STATE.requests += 1
                h, b = STATE.response
                writer.write(h)
                writer.write(b)
            else:
                writer.write(simple(404, {"error": {"message": "scale_server: no stream set"}}))
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        return
    finally:
        writer.close()


async def watch_parent(pid):
    while True:
        await asyncio.sleep(1)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            os._exit(0)


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--parent-pid", type=int)
    a = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        with open("/proc/sys/net/core/somaxconn") as f:
            backlog = int(f.read())
    except (OSError, ValueError):
        backlog = 4096
    server = await asyncio.start_server(serve, "127.0.0.1", 0, backlog=backlog)
    port = server.sockets[0].getsockname()[1]
    tmp = a.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(port))
    os.rename(tmp, a.port_file)
    if a.parent_pid:
        asyncio.ensure_future(watch_parent(a.parent_pid))
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
