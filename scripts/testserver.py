#!/usr/bin/env python3
"""testserver.py: a local OpenAI-compatible HTTP/1.1 server for luachat's
tests, demo and benchmarks. Standard library only.

It serves scripted responses (a FIFO queue, then a default) to every path
except /_control/..., records every request it receives, and can shape its
writes (small pieces, delays, stalls, cuts) to reproduce real network faults.
It never outlives its parent: --parent-pid, --max-lifetime, SIGTERM.

Usage: testserver.py --port-file FILE [--port 0] [--parent-pid PID] [--max-lifetime S]
See scripts/README.md for the response spec.
"""
import argparse
import json
import os
import resource
import signal
import socket
import socketserver
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DEFAULT_RESPONSE = {
    "status": 404,
    "json": {"error": {"message": "no scripted response", "type": "invalid_request_error"}},
}


class State:
    """Everything the control API changes, behind one lock."""

    def __init__(self):
        self.lock = threading.Lock()
        self.queue = []
        self.default = DEFAULT_RESPONSE
        self.requests = []
        self.counter = 0
        self.connections = 0
        self.generated = {}

    def next_response(self):
        with self.lock:
            if self.queue:
                spec = self.queue[0]
                left = spec.get("_left", spec.get("repeat", 1)) - 1
                if left <= 0:
                    self.queue.pop(0)
                else:
                    spec["_left"] = left
                return spec
            return self.default


STATE = State()


def compact(value):
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def fill_template(text, request_json):
    """{{tool:N}} -> content of the Nth tool message; {{tool:N:field}} -> a field of its JSON;
    {{last_user}} -> the last user message's text. Lets a scripted model use real tool output."""
    if "{{" not in text or not isinstance(request_json, dict):
        return text
    messages = request_json.get("messages") or []
    tools = [m.get("content") or "" for m in messages if isinstance(m, dict) and m.get("role") == "tool"]
    users = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    out = text
    while "{{" in out:
        start = out.index("{{")
        end = out.find("}}", start)
        if end < 0:
            break
        key = out[start + 2:end]
        value = ""
        parts = key.split(":")
        if parts[0] == "tool" and len(parts) >= 2 and parts[1].isdigit():
            i = int(parts[1]) - 1
            if 0 <= i < len(tools):
                value = tools[i]
                if len(parts) == 3:
                    try:
                        value = json.loads(value).get(parts[2], "")
                    except (ValueError, AttributeError):
                        value = ""
        elif key == "last_user" and users:
            value = users[-1] if isinstance(users[-1], str) else compact(users[-1])
        out = out[:start] + str(value) + out[end + 2:]
    return out


def apply_templates(value, request_json):
    if isinstance(value, str):
        return fill_template(value, request_json)
    if isinstance(value, list):
        return [apply_templates(v, request_json) for v in value]
    if isinstance(value, dict):
        return {k: apply_templates(v, request_json) for k, v in value.items()}
    return value


def generate_stream(params):
    """A realistic pre-rendered stream of N chunks (cached): returns (body, content_bytes)."""
    key = compact(params)
    with STATE.lock:
        if key in STATE.generated:
            return STATE.generated[key]
    kind = params.get("kind", "text")
    n = int(params.get("chunks", 1000))
    model = params.get("model", "bench")
    usage = params.get("usage", True)
    head = {"id": "chatcmpl-bench0123456789abcdefghij", "object": "chat.completion.chunk",
            "created": 1700000000, "model": model, "system_fingerprint": "fp_bench01"}
    words = ["The ", "quick ", "brown ", "fox ", "jumps ", "over ", "the ", "lazy ", "dog. ",
             "Lorem ", "ipsum ", "dolor ", "sit ", "amet, "]
    parts = []
    total = 0
    for i in range(n):
        if kind == "tool_args":
            frag = '{"q": "' if i == 0 else ("x" * (i % 7 + 1))
            if i == n - 1:
                frag = '"}'
            call = {"index": 0, "function": {"arguments": frag}}
            if i == 0:
                call.update({"id": "call_bench0001", "type": "function"})
                call["function"]["name"] = "search"
            delta = {"tool_calls": [call]}
            if i == 0:
                delta = {"role": "assistant", "content": None, "tool_calls": [call]}
            total += len(frag.encode())
        else:
            text = words[i % len(words)] + words[(i * 7) % len(words)]
            delta = {"content": text}
            if i == 0:
                delta = {"role": "assistant", "content": text}
            total += len(text.encode())
        chunk = dict(head)
        chunk["choices"] = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}]
        parts.append("data: " + compact(chunk) + "\n\n")
    chunk = dict(head)
    chunk["choices"] = [{"index": 0, "delta": {}, "logprobs": None,
                         "finish_reason": "tool_calls" if kind == "tool_args" else "stop"}]
    parts.append("data: " + compact(chunk) + "\n\n")
    if usage:
        chunk = dict(head)
        chunk["choices"] = []
        chunk["usage"] = {"prompt_tokens": 20, "completion_tokens": n, "total_tokens": n + 20}
        parts.append("data: " + compact(chunk) + "\n\n")
    parts.append("data: [DONE]\n\n")
    result = ("".join(parts).encode(), total)
    with STATE.lock:
        STATE.generated[key] = result
    return result


def sse_body(spec, request_json):
    """Render the `sse` list: returns a list of (delay, bytes) pieces."""
    eol = spec.get("line_end", "\n")
    out = []
    for ev in spec.get("sse", []):
        if isinstance(ev, str):
            out.append((0, fill_template(ev, request_json).encode()))
            continue
        lines = []
        if "event" in ev:
            lines.append("event: " + ev["event"])
        if "id" in ev:
            lines.append("id: " + str(ev["id"]))
        if "retry" in ev:
            lines.append("retry: " + str(ev["retry"]))
        if "json" in ev:
            lines.append("data: " + compact(apply_templates(ev["json"], request_json)))
        elif "data" in ev:
            for line in fill_template(ev["data"], request_json).split("\n"):
                lines.append("data: " + line)
        text = eol.join(lines) + eol + eol
        out.append((float(ev.get("delay", 0)), text.encode()))
    if spec.get("done"):
        out.append((0, ("data: [DONE]" + eol + eol).encode()))
    return out


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "luachat-testserver/1"

    def log_message(self, *args):  # quiet: the request log is the record
        pass

    def setup(self):
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with STATE.lock:
            STATE.connections += 1

    def read_body(self):
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("content-length") or 0)
        return self.rfile.read(n) if n else b""

    def handle_any(self):
        body = self.read_body()
        path, _, query = self.path.partition("?")
        if path.startswith("/_control/"):
            return self.control(path, body)
        try:
            request_json = json.loads(body) if body else None
        except ValueError:
            request_json = None
        with STATE.lock:
            STATE.counter += 1
            rid = STATE.counter
            STATE.requests.append({
                "method": self.command, "path": path, "query": query,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body": body.decode("utf-8", "replace"), "time": time.monotonic(),
            })
        spec = STATE.next_response()
        self.respond(spec, rid, request_json)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = handle_any

    def control(self, path, body):
        arg = json.loads(body) if body else None
        out = {"ok": True}
        with STATE.lock:
            if path == "/_control/script":
                STATE.queue = list(arg.get("responses", []))
            elif path == "/_control/append":
                STATE.queue.extend(arg.get("responses", []))
            elif path == "/_control/default":
                STATE.default = arg if arg else DEFAULT_RESPONSE
            elif path == "/_control/reset":
                STATE.queue, STATE.default, STATE.requests = [], DEFAULT_RESPONSE, []
            elif path == "/_control/requests":
                out = STATE.requests
            elif path == "/_control/stats":
                ru = resource.getrusage(resource.RUSAGE_SELF)
                out = {"cpu_seconds": ru.ru_utime + ru.ru_stime, "requests": STATE.counter,
                       "connections": STATE.connections, "max_rss_kb": ru.ru_maxrss}
            else:
                out = {"error": {"message": "unknown control path " + path}}
        data = compact(out).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def respond(self, spec, rid, request_json):
        if spec.get("delay"):
            time.sleep(float(spec["delay"]))
        writer = Writer(self, spec)
        if "raw" in spec:
            writer.write(spec["raw"].encode("latin-1"))
            writer.finish(close=True)
            return
        status = int(spec.get("status", 200))
        headers = {"x-request-id": "req_%d" % rid}
        pieces = None
        chunked = False
        if "generate" in spec:
            body, content_bytes = generate_stream(spec["generate"])
            headers["x-luachat-content-bytes"] = str(content_bytes)
            headers["x-luachat-chunks"] = str(spec["generate"].get("chunks", 1000))
            ctype = "text/event-stream"
            pieces = [(0, body)]
            chunked = spec.get("chunked", True)
        elif "sse" in spec:
            ctype = "text/event-stream"
            pieces = sse_body(spec, request_json)
            chunked = spec.get("chunked", True)
        elif "json" in spec:
            ctype = "application/json"
            pieces = [(0, compact(apply_templates(spec["json"], request_json)).encode())]
        else:
            ctype = "text/plain"
            pieces = [(0, fill_template(spec.get("body", ""), request_json).encode("utf-8"))]
        headers["Content-Type"] = spec.get("content_type", ctype)
        for k, v in (spec.get("headers") or {}).items():
            headers[k] = str(v)
        close = bool(spec.get("close_connection"))
        head = ["HTTP/1.1 %d %s" % (status, self.responses.get(status, ("Status",))[0])]
        for k, v in headers.items():
            head.append("%s: %s" % (k, v))
        head.append("Date: " + self.date_time_string())
        if chunked:
            head.append("Transfer-Encoding: chunked")
        elif "sse" in spec or "generate" in spec:
            close = True  # no length: the end of the body is the end of the connection
        else:
            head.append("Content-Length: %d" % sum(len(p) for _, p in pieces))
        if close:
            head.append("Connection: close")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
        writer.body_start()
        for delay, data in pieces:
            if delay:
                writer.flush()
                time.sleep(delay)
            if chunked and data:
                writer.write(b"%x\r\n" % len(data) + data + b"\r\n")
            else:
                writer.write(data)
        if chunked:
            writer.write(b"0\r\n\r\n")
        writer.finish(close=close)


class Cut(Exception):
    """The spec asked to drop the connection here."""


class Writer:
    """Writes a response shaped by the spec: piece sizes, drips, stalls, cuts."""

    def __init__(self, handler, spec):
        self.h = handler
        self.sock = handler.connection
        self.written = 0
        self.body_at = None
        self.size = int(spec.get("write_size") or 0)
        self.drip = float(spec.get("drip") or 0)
        self.close_after = spec.get("close_after")
        self.close_after_body = spec.get("close_after_body")
        self.stall_after = spec.get("stall_after")
        self.stall = float(spec.get("stall") or 0)
        self.stalled = False
        self.buf = []
        self.buffered = 0

    def body_start(self):
        self.body_at = self.written + self.buffered

    def limit(self):
        """Bytes that may still be written before a cut or a stall, or None."""
        marks = []
        total = self.written + self.buffered
        if self.close_after is not None:
            marks.append(int(self.close_after))
        if self.close_after_body is not None and self.body_at is not None:
            marks.append(self.body_at + int(self.close_after_body))
        if self.stall_after is not None and not self.stalled:
            marks.append(int(self.stall_after))  # counted from the status line, like close_after
        marks = [m - total for m in marks if m >= total]
        return min(marks) if marks else None

    def write(self, data):
        while data:
            room = self.limit()
            if room == 0:
                self.hit_mark()
                continue
            take = data if room is None else data[:room]
            data = data[len(take):]
            if self.size or self.drip:
                self.flush()
                step = 1 if self.drip else self.size
                for i in range(0, len(take), step):
                    self.send(take[i:i + step])
                    if self.drip:
                        time.sleep(self.drip)
            else:
                self.buf.append(take)
                self.buffered += len(take)
                if self.buffered >= 65536:
                    self.flush()
            if self.limit() == 0:
                self.hit_mark()

    def hit_mark(self):
        self.flush()
        total = self.written
        cut = (self.close_after is not None and total >= int(self.close_after)) or (
            self.close_after_body is not None and self.body_at is not None
            and total >= self.body_at + int(self.close_after_body))
        if cut:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.h.close_connection = True
            raise Cut()
        self.stalled = True
        time.sleep(self.stall)

    def send(self, data):
        self.sock.sendall(data)
        self.written += len(data)

    def flush(self):
        if self.buf:
            data = b"".join(self.buf)
            self.buf, self.buffered = [], 0
            self.send(data)

    def finish(self, close=False):
        self.flush()
        if close:
            self.h.close_connection = True


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024  # the default 5 would drop bursts of connections (SYN retries)

    def handle_error(self, request, client_address):
        if isinstance(sys.exc_info()[1], (Cut, BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)


def main():
    ap = argparse.ArgumentParser(description="luachat's local OpenAI-compatible test server")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--parent-pid", type=int)
    ap.add_argument("--max-lifetime", type=float, default=3600)
    args = ap.parse_args()

    server = Server(("127.0.0.1", args.port), Handler)
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(server.server_address[1]))
    os.replace(tmp, args.port_file)

    def stop(*_):
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    def watchdog():
        started = time.monotonic()
        while True:
            time.sleep(0.5)
            if time.monotonic() - started > args.max_lifetime:
                os._exit(0)
            if args.parent_pid:
                try:
                    os.kill(args.parent_pid, 0)
                except OSError:
                    os._exit(0)

    threading.Thread(target=watchdog, daemon=True).start()
    server.serve_forever(poll_interval=0.2)


if __name__ == "__main__":
    main()
