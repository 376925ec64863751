#!/usr/bin/env python3
"""testserver.py: a local OpenAI-compatible HTTP/1.1 server for luachat's
tests, demo and benchmarks. Python standard library only.

It owns: a FIFO queue of scripted responses (then a default) served to every
path except /_control/..., a log of every request it receives, and write
shaping (small pieces, delays, stalls, cuts, raw bytes) that reproduces real
network faults. It must never outlive its user (--parent-pid,
--max-lifetime, SIGTERM/SIGINT), never listen beyond 127.0.0.1, and never be
the bottleneck of a benchmark (pre-rendered `generate` bodies, large writes).

Usage: testserver.py --port-file FILE [--port 0] [--parent-pid PID] [--max-lifetime S]
The response spec is described in scripts/README.md.
"""
import argparse
import json
import os
import resource
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DEFAULT_RESPONSE = {
    "status": 404,
    "json": {"error": {"message": "no scripted response", "type": "invalid_request_error"}},
}
BIG_WRITE = 65536  # generate bodies go out in chunks of this size: a few syscalls per MB


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
        self.gates = {}  # name -> {"state": armed|released|timed_out, "event": Event} (sse gates)
        self.progress = []  # one entry per response served with `sndbuf` (flow-control specs)
        self.arrived = threading.Condition(self.lock)  # notified on every logged request (hold_until)
        self.rules = []  # [{"contains": text, "times": n, "response": R}]: picked by request body (batch specs)
        self.files = {}  # Files API: id -> {"bytes", "filename", "purpose"}
        self.batches = {}  # Batches API: id -> batch object (plus "_polls")
        self.batch_polls = 1  # a batch reads "in_progress" for this many GETs before "completed"
        self.batch_end = {}  # {"status": final status, "limit": lines answered}: expired/cancelled batches

    def rule_response(self, body, path=None):
        """The first rule whose `contains` text is in the request body and has `times`
        left (no `times`: always), or None. Lets a spec answer each request by its
        content whatever order concurrent requests arrive in. A rule with a `path`
        answers only that path, and only when called with it: before the Files and
        Batches API (a spec fails an upload); the others only when path is None."""
        with self.lock:
            for rule in self.rules:
                if rule.get("path") != path:
                    continue
                if str(rule.get("contains", "")) in body and rule.get("times", 1) > 0:
                    if "times" in rule:
                        rule["times"] -= 1
                    return rule.get("response") or {}
        return None

    def next_response(self):
        """Pop the head of the queue (honouring `repeat`), else the default."""
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


def to_bytes(text):
    """Spec strings back to the exact bytes the test wrote: control bodies are
    decoded with surrogateescape, so invalid UTF-8 (garbage tests) survives."""
    return text.encode("utf-8", "surrogateescape")


REQUEST = threading.local()  # this thread's request: .headers (lower-case names), .query


def fill_template(text, request_json):
    """{{tool:N}} -> content of the Nth tool message; {{tool:N:field}} -> a field of its JSON;
    {{last_user}} -> the last user message's text. Lets a scripted model use real tool output.
    {{header:NAME}} -> the request's NAME header, {{query}} -> its query string, as a server
    that echoes the request in an error would (redaction tests)."""
    if "{{" not in text:
        return text
    if not isinstance(request_json, dict):
        request_json = {}
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
        elif parts[0] == "header" and len(parts) == 2:
            value = (getattr(REQUEST, "headers", None) or {}).get(parts[1].lower(), "")
        elif key == "query":
            value = getattr(REQUEST, "query", "")
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


WORDS = ["The ", "quick ", "brown ", "fox ", "jumps ", "over ", "the ", "lazy ", "dog. ",
         "Lorem ", "ipsum ", "dolor ", "sit ", "amet, "]


def render_generate(params):
    """Build a realistic stream of N chat.completion.chunk events: returns (sse_bytes, content_bytes)."""
    kind = params.get("kind", "text")
    if kind == "line":  # one huge `data:` line with no end: for event-size limits
        return b"data: " + b"x" * int(params.get("bytes", 1 << 20)), 0
    n = int(params.get("chunks", 1000))
    model = str(params.get("model", "bench"))
    usage = params.get("usage", True)
    head = {"id": "chatcmpl-bench0123456789abcdefghij", "object": "chat.completion.chunk",
            "created": 1700000000, "model": model, "system_fingerprint": "fp_bench01"}
    parts = []
    total = 0
    for i in range(n):
        if kind == "tool_args":
            # arguments of one call, {"q": "xxxx..."}, split into n fragments
            if n == 1:
                frag = '{"q": ""}'
            elif i == 0:
                frag = '{"q": "'
            elif i == n - 1:
                frag = '"}'
            else:
                frag = "x" * (i % 7 + 1)
            call = {"index": 0, "function": {"arguments": frag}}
            if i == 0:
                call = {"index": 0, "id": "call_bench0001", "type": "function",
                        "function": {"name": "search", "arguments": frag}}
                delta = {"role": "assistant", "content": None, "tool_calls": [call]}
            else:
                delta = {"tool_calls": [call]}
            total += len(frag.encode())
        else:
            text = WORDS[i % len(WORDS)] + WORDS[(i * 7) % len(WORDS)]
            delta = {"role": "assistant", "content": text} if i == 0 else {"content": text}
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
    return "".join(parts).encode(), total


def generate_stream(params):
    """Cached by parameters: (sse_bytes, chunked_bytes, content_bytes). The chunked
    form frames every BIG_WRITE slice as one chunk, rendered once."""
    key = compact(params)
    with STATE.lock:
        if key in STATE.generated:
            return STATE.generated[key]
    body, total = render_generate(params)
    framed = []
    for i in range(0, len(body), BIG_WRITE):
        piece = body[i:i + BIG_WRITE]
        framed.append(b"%x\r\n" % len(piece) + piece + b"\r\n")
    framed.append(b"0\r\n\r\n")
    result = (body, b"".join(framed), total)
    with STATE.lock:
        STATE.generated[key] = result
    return result


def sse_body(spec, request_json):
    """Render the `sse` list: returns a list of (delay, bytes) pieces, one per event
    (a gate's delay is its entry, see pass_gate)."""
    eol = spec.get("line_end", "\n")
    out = []
    for ev in spec.get("sse") or []:
        if isinstance(ev, str):
            out.append((0, to_bytes(fill_template(ev, request_json))))
            continue
        if "gate" in ev:
            arm_gate(str(ev["gate"]))
            out.append((dict(ev, line_end=eol), b""))
            continue
        lines = []
        if "event" in ev:
            lines.append("event: " + str(ev["event"]))
        if "id" in ev:
            lines.append("id: " + str(ev["id"]))
        if "retry" in ev:
            lines.append("retry: " + str(ev["retry"]))
        if "json" in ev:
            lines.append("data: " + compact(apply_templates(ev["json"], request_json)))
        elif "data" in ev:
            for line in fill_template(str(ev["data"]), request_json).split("\n"):
                lines.append("data: " + line)
        text = eol.join(lines) + eol + eol
        out.append((float(ev.get("delay") or 0), to_bytes(text)))
    if spec.get("done"):
        out.append((0, ("data: [DONE]" + eol + eol).encode()))
    return out


def arm_gate(name):
    """A gate of a response being rendered: "armed" until released or timed out.
    A name is used once per reset; a gate released before it was armed stays released."""
    with STATE.lock:
        STATE.gates.setdefault(name, {"state": "armed", "event": threading.Event()})


def pass_gate(ev):
    """A `{gate=NAME}` entry of an `sse` list: what came before it is on the wire; the rest
    waits until POST /_control/release {"gate": NAME}. Never hangs: after `timeout`
    seconds (default 30) the gate reads "timed_out" and the stream goes on after an
    in-band error event naming it, so a client that waits for the whole stream fails."""
    name = str(ev["gate"])
    with STATE.lock:
        g = STATE.gates.setdefault(name, {"state": "armed", "event": threading.Event()})
    if g["event"].wait(float(ev.get("timeout") or 30)):
        return b""
    with STATE.lock:
        if g["state"] == "armed":
            g["state"] = "timed_out"
    msg = {"error": {"message": "testserver: gate %s timed out: the client never signalled" % name,
                     "type": "testserver_gate_timeout"}}
    return ("data: " + compact(msg) + ev["line_end"] * 2).encode()


def process_alive(pid):
    """kill(pid, 0) alone is not enough: an orphan nobody reaps stays a zombie."""
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:
        with open("/proc/%d/stat" % pid) as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return True


class Cut(Exception):
    """The spec asked to drop the connection here."""


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "luachat-testserver/2"

    def log_message(self, *args):  # quiet: the request log is the record
        pass

    def setup(self):
        super().setup()
        # small writes must leave at once, so write_size really splits events across reads
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with STATE.lock:
            STATE.connections += 1

    def __getattr__(self, name):
        # any method at all (OPTIONS, PROPFIND, ...) is served like GET and POST
        if name.startswith("do_"):
            return self.handle_any
        raise AttributeError(name)

    def read_body(self):
        """The whole request body: Content-Length or chunked (trailers skipped)."""
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            data = []
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    break
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                data.append(self.rfile.read(size))
                self.rfile.readline(65537)
            return b"".join(data)
        n = int(self.headers.get("content-length") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def handle_any(self):
        body = self.read_body()
        path, _, query = self.path.partition("?")
        if path.startswith("/_control/"):
            return self.control(path, body)
        try:
            request_json = json.loads(body) if body else None
        except ValueError:
            request_json = None
        headers = {}
        for k, v in self.headers.items():
            k = k.lower()
            headers[k] = headers[k] + ", " + v if k in headers else v
        with STATE.lock:
            STATE.counter += 1
            rid = STATE.counter
            STATE.requests.append({
                "method": self.command, "path": path, "query": query, "headers": headers,
                "body": body.decode("utf-8", "replace"), "time": time.monotonic(),
            })
            STATE.arrived.notify_all()
        REQUEST.headers, REQUEST.query = headers, query
        spec = None
        if any("path" in r for r in STATE.rules):
            spec = STATE.rule_response(body.decode("utf-8", "replace"), path)
        if spec is not None:
            return self.respond(spec, rid, request_json)
        if batch_api(self, path, body, request_json, headers):
            return
        spec = STATE.rule_response(body.decode("utf-8", "replace")) if STATE.rules else None
        self.respond(spec if spec is not None else STATE.next_response(), rid, request_json)

    do_GET = do_POST = handle_any

    def send_simple(self, status, value):
        data = compact(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def control(self, path, body):
        try:
            arg = json.loads(body.decode("utf-8", "surrogateescape")) if body else None
        except ValueError as e:
            return self.send_simple(400, {"error": {"message": "control body is not JSON: %s" % e}})
        if path in ("/_control/script", "/_control/append") and not (
                isinstance(arg, dict) and isinstance(arg.get("responses", []), list)):
            return self.send_simple(400, {"error": {"message": path + " wants {\"responses\": [R, ...]}"}})
        if path == "/_control/default" and not (arg is None or isinstance(arg, dict)):
            return self.send_simple(400, {"error": {"message": "/_control/default wants R or null"}})
        out = {"ok": True}
        with STATE.lock:
            if path == "/_control/script":
                STATE.queue = list(arg.get("responses", []))
            elif path == "/_control/append":
                STATE.queue.extend(arg.get("responses", []))
            elif path == "/_control/default":
                STATE.default = DEFAULT_RESPONSE if arg is None else arg
            elif path == "/_control/rules":
                STATE.rules = list((arg or {}).get("rules") or [])
            elif path == "/_control/batch_polls":
                STATE.batch_polls = int((arg or {}).get("n", 1))
                STATE.batch_end = {k: v for k, v in (arg or {}).items() if k in ("status", "limit")}
            elif path == "/_control/reset":
                STATE.queue, STATE.default, STATE.requests = [], DEFAULT_RESPONSE, []
                STATE.rules, STATE.files, STATE.batches, STATE.batch_polls = [], {}, {}, 1
                STATE.batch_end = {}
                for g in STATE.gates.values():
                    g["event"].set()  # nothing stays blocked past a reset
                STATE.gates = {}
                STATE.progress = []
            elif path == "/_control/release":
                # a gate's state before this call: "armed" = the server is still holding
                # back the events after it (or has not reached it yet)
                name = str((arg or {}).get("gate"))
                g = STATE.gates.setdefault(name, {"state": "new", "event": threading.Event()})
                out = {"ok": True, "state": g["state"]}
                if g["state"] in ("armed", "new"):
                    g["state"] = "released"
                g["event"].set()
            elif path == "/_control/gates":
                out = {k: g["state"] for k, g in STATE.gates.items()}
            elif path == "/_control/listen":
                out = {"port": listen_more()}
            elif path == "/_control/requests":
                out = STATE.requests
            elif path == "/_control/progress":
                out = STATE.progress
            elif path == "/_control/stats":
                ru = resource.getrusage(resource.RUSAGE_SELF)
                out = {"cpu_seconds": ru.ru_utime + ru.ru_stime, "requests": STATE.counter,
                       "connections": STATE.connections, "max_rss_kb": ru.ru_maxrss}
            else:
                out = None
            data = compact(out).encode() if out is not None else None
        if data is None:
            return self.send_simple(404, {"error": {"message": "unknown control path " + path}})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def respond(self, spec, rid, request_json):
        """Serve one response spec; a broken spec becomes a 500 naming the problem."""
        if spec.get("hold_until"):
            spec = hold(spec)
        writer = Writer(self, spec)
        if spec.get("sndbuf"):
            writer.track(rid, int(spec["sndbuf"]))
        try:
            self.respond_spec(writer, spec, rid, request_json)
        except (Cut, OSError):
            raise
        except Exception as e:  # a bad spec from a test: say so rather than hang up
            if writer.written or writer.buffered:
                raise
            self.send_simple(500, {"error": {"message": "testserver: bad response spec: %r" % e,
                                             "type": "testserver_error"}})

    def respond_spec(self, writer, spec, rid, request_json):
        if spec.get("delay"):
            time.sleep(float(spec["delay"]))
        if "raw" in spec:
            writer.body_start()  # raw is all "body": write_size/drip shape it too
            writer.write(to_bytes(spec["raw"]))
            writer.finish(close=True)  # its framing is unknown: only closing ends it
            return
        status = int(spec.get("status", 200))
        chunked = False
        closing = bool(spec.get("close_connection"))
        pieces = None
        framed = None
        extra = {}
        if "generate" in spec:
            gen = spec["generate"]
            body, framed_body, content_bytes = generate_stream(gen)
            extra["x-luachat-content-bytes"] = str(content_bytes)
            extra["x-luachat-chunks"] = str(int(gen.get("chunks", 1000)))
            ctype = "text/event-stream"
            chunked = spec.get("chunked", True) is not False
            if chunked:
                framed = framed_body  # pre-framed: sent as is
            pieces = [(0, body)]
        elif "sse" in spec:
            ctype = "text/event-stream"
            pieces = sse_body(spec, request_json)
            chunked = spec.get("chunked", True) is not False
        elif "json" in spec:
            ctype = "application/json"
            pieces = [(0, compact(apply_templates(spec["json"], request_json)).encode())]
        else:
            ctype = "text/plain"
            pieces = [(0, to_bytes(fill_template(str(spec.get("body", "")), request_json)))]
        # header names are case-insensitive: the spec's own replace ours
        headers = {"x-request-id": ("x-request-id", "req_%d" % rid),
                   "content-type": ("Content-Type", spec.get("content_type", ctype))}
        for k, v in extra.items():
            headers[k] = (k, v)
        for k, v in (spec.get("headers") or {}).items():
            headers[k.lower()] = (k, str(v))
        close_delimited = ("sse" in spec or "generate" in spec) and not chunked
        head = ["HTTP/1.1 %d %s" % (status, self.responses.get(status, ("Status",))[0])]
        head.extend("%s: %s" % kv for kv in headers.values())
        head.append("Date: " + self.date_time_string())
        if chunked:
            head.append("Transfer-Encoding: chunked")
        elif close_delimited:
            head.append("Connection: close")  # no length: the end of the body is the end of the connection
        else:
            head.append("Content-Length: %d" % sum(len(p) for _, p in pieces))
        # close_connection deliberately sends no "Connection: close": the response looks keep-alive
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        writer.body_start()
        if self.command == "HEAD":
            writer.finish(close=closing or close_delimited)  # a HEAD response has no body
            return
        if framed is not None:
            writer.write(framed)
        else:
            for delay, data in pieces:
                if isinstance(delay, dict):  # a gate: send what is before it, then wait
                    writer.flush()
                    delay, data = 0, pass_gate(delay)
                if delay:
                    writer.flush()
                    time.sleep(delay)
                if chunked and data:
                    writer.write(b"%x\r\n" % len(data))
                    writer.write(data)
                    writer.write(b"\r\n")
                else:
                    writer.write(data)
            if chunked:
                writer.write(b"0\r\n\r\n")
        writer.finish(close=closing or close_delimited)


def multipart_fields(body, content_type):
    """multipart/form-data -> {name: (filename or None, bytes)}; {} when it is not one."""
    marker = "boundary="
    if "multipart/form-data" not in content_type or marker not in content_type:
        return {}
    boundary = content_type.split(marker, 1)[1].split(";")[0].strip().strip('"').encode()
    fields = {}
    for part in body.split(b"--" + boundary):
        if part in (b"", b"--", b"--\r\n") or b"\r\n\r\n" not in part:
            continue
        head, _, data = part.lstrip(b"\r\n").partition(b"\r\n\r\n")
        if data.endswith(b"\r\n"):
            data = data[:-2]
        disp = head.decode("utf-8", "replace")
        name = disp.split('name="', 1)[1].split('"', 1)[0] if 'name="' in disp else None
        fname = disp.split('filename="', 1)[1].split('"', 1)[0] if 'filename="' in disp else None
        if name:
            fields[name] = (fname, data)
    return fields


def run_batch(batch, data):
    """Answer every line of a batch's input as the chat endpoint would (rules, then the
    queue, then the default; `json` and `body` responses), into an output file (2xx)
    and an error file (the rest), in the OpenAI Batch output format."""
    out, err = [], []
    n = 0
    limit = STATE.batch_end.get("limit")
    for line in data.decode("utf-8", "replace").splitlines():
        if not line.strip():
            continue
        n += 1
        if limit is not None and n > int(limit):
            continue  # never answered (an expired or cancelled batch)
        try:
            req = json.loads(line)
            body_text = compact(req.get("body"))
        except (ValueError, AttributeError):
            err.append(compact({"id": "batch_req_%d" % n, "custom_id": None, "response": None,
                                "error": {"code": "invalid_json", "message": "line %d is not JSON" % n}}))
            continue
        spec = STATE.rule_response(body_text)
        if spec is None:
            spec = STATE.next_response()
        status = int(spec.get("status", 200))
        if "json" in spec:
            rbody = apply_templates(spec["json"], req.get("body"))
        else:
            rbody = fill_template(str(spec.get("body", "")), req.get("body"))
        entry = {"id": "batch_req_%d" % n, "custom_id": req.get("custom_id"),
                 "response": {"status_code": status, "request_id": "req_b%d" % n, "body": rbody}, "error": None}
        (out if 200 <= status < 300 else err).append(compact(entry))
    with STATE.lock:
        ids = []
        for lines in (out, err):
            if not lines:
                ids.append(None)
                continue
            fid = "file-%d" % (len(STATE.files) + 1)
            STATE.files[fid] = {"bytes": ("\n".join(lines) + "\n").encode(), "filename": fid + ".jsonl",
                                "purpose": "batch_output"}
            ids.append(fid)
        batch["output_file_id"], batch["error_file_id"] = ids
        batch["request_counts"] = {"total": n, "completed": len(out), "failed": len(err)}
        batch["_end"] = STATE.batch_end.get("status", "completed")


def batch_api(handler, path, body, request_json, headers):
    """A minimal Files and Batches API under /v1 (or /): upload (multipart, purpose),
    file metadata and content, create a batch (processed at once; it reads
    "in_progress" for STATE.batch_polls GETs), get and cancel it. True when it answered."""
    p = path[3:] if path.startswith("/v1/") else path
    parts = [x for x in p.split("/") if x]
    if not parts or parts[0] not in ("files", "batches"):
        return False
    method = handler.command
    if parts == ["files"] and method == "POST":
        fields = multipart_fields(body, headers.get("content-type", ""))
        if "file" not in fields or "purpose" not in fields:
            handler.send_simple(400, {"error": {"message": "multipart fields 'file' and 'purpose' are required",
                                                "type": "invalid_request_error"}})
            return True
        with STATE.lock:
            fid = "file-%d" % (len(STATE.files) + 1)
            STATE.files[fid] = {"bytes": fields["file"][1], "filename": fields["file"][0] or "upload",
                                "purpose": fields["purpose"][1].decode("utf-8", "replace")}
        f = STATE.files[fid]
        handler.send_simple(200, {"id": fid, "object": "file", "bytes": len(f["bytes"]), "created_at": int(time.time()),
                                  "filename": f["filename"], "purpose": f["purpose"]})
        return True
    if parts[0] == "files" and len(parts) in (2, 3) and method == "GET":
        f = STATE.files.get(parts[1])
        if f is None:
            handler.send_simple(404, {"error": {"message": "no such file " + parts[1], "type": "invalid_request_error"}})
        elif len(parts) == 3 and parts[2] == "content":
            handler.send_response(200)
            handler.send_header("Content-Type", "application/octet-stream")
            handler.send_header("Content-Length", str(len(f["bytes"])))
            handler.end_headers()
            handler.wfile.write(f["bytes"])
        else:
            handler.send_simple(200, {"id": parts[1], "object": "file", "bytes": len(f["bytes"]),
                                      "filename": f["filename"], "purpose": f["purpose"]})
        return True
    if parts == ["batches"] and method == "POST":
        req = request_json if isinstance(request_json, dict) else {}
        f = STATE.files.get(req.get("input_file_id"))
        if f is None or not req.get("endpoint") or req.get("completion_window") != "24h":
            handler.send_simple(400, {"error": {"message": "want input_file_id (an uploaded file), endpoint and "
                                                "completion_window \"24h\"", "type": "invalid_request_error"}})
            return True
        with STATE.lock:
            bid = "batch_%d" % (len(STATE.batches) + 1)
            batch = {"id": bid, "object": "batch", "endpoint": req["endpoint"], "input_file_id": req["input_file_id"],
                     "completion_window": "24h", "status": "in_progress", "created_at": int(time.time()),
                     "output_file_id": None, "error_file_id": None, "metadata": req.get("metadata"),
                     "request_counts": {"total": 0, "completed": 0, "failed": 0}, "_polls": 0}
            STATE.batches[bid] = batch
        run_batch(batch, f["bytes"])
        handler.send_simple(200, dict((k, v) for k, v in batch.items() if not k.startswith("_")))
        return True
    if parts[0] == "batches" and len(parts) >= 2:
        batch = STATE.batches.get(parts[1])
        if batch is None:
            handler.send_simple(404, {"error": {"message": "no such batch " + parts[1], "type": "invalid_request_error"}})
            return True
        with STATE.lock:
            if len(parts) == 3 and parts[2] == "cancel" and method == "POST":
                batch["status"] = "cancelled"
            elif method == "GET" and batch["status"] == "in_progress":
                batch["_polls"] += 1
                if batch["_polls"] > STATE.batch_polls:
                    batch["status"] = batch.get("_end", "completed")
            shown = dict((k, v) for k, v in batch.items() if not k.startswith("_"))
        handler.send_simple(200, shown)
        return True
    return False


def hold(spec):
    """hold_until N: answer only once N requests are in the log (since the last reset),
    so a client that sends them one at a time is caught. Never hangs: after
    hold_timeout seconds (default 30) the answer is a 504 naming the count."""
    need = int(spec["hold_until"])
    limit = float(spec.get("hold_timeout") or 30)
    with STATE.lock:
        ok = STATE.arrived.wait_for(lambda: len(STATE.requests) >= need, timeout=limit)
        have = len(STATE.requests)
    if ok:
        return spec
    return {"status": 504, "json": {"error": {
        "message": "testserver: hold_until %d: only %d requests arrived in %g s" % (need, have, limit),
        "type": "testserver_hold_timeout"}}}


class Writer:
    """Writes one response shaped by its spec: body piece sizes, drips, stalls, cuts.
    Byte marks (close_after, stall_after) count the whole response from the status line."""

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
        self.stall_after_body = spec.get("stall_after_body")
        self.stall = float(spec.get("stall") or 0)
        self.stalled = False
        self.buf = []
        self.buffered = 0
        self.progress = None

    def body_start(self):
        if self.size or self.drip:
            self.flush()  # the head goes out whole; only the body is shaped
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
            marks.append(int(self.stall_after))
        if self.stall_after_body is not None and self.body_at is not None and not self.stalled:
            marks.append(self.body_at + int(self.stall_after_body))
        marks = [m - total for m in marks if m >= total]
        return min(marks) if marks else None

    def shaped(self):
        return self.body_at is not None and (self.size or self.drip)

    def write(self, data):
        while data:
            room = self.limit()
            if room == 0:
                self.hit_mark()
                continue
            take = data if room is None else data[:room]
            data = data[len(take):]
            if self.shaped():
                # the body is one byte stream cut every `size` bytes, chunk framing included
                self.buf.append(take)
                self.buffered += len(take)
                self.flush(whole_only=True)
            elif len(take) >= BIG_WRITE:
                self.flush()
                self.send(take)  # big bodies: no copy into the buffer
            else:
                self.buf.append(take)
                self.buffered += len(take)
                if self.buffered >= BIG_WRITE:
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

    def track(self, rid, sndbuf):
        """`sndbuf`: a small kernel send buffer, and a progress entry that counts the
        bytes the kernel has taken so far: a client that stops reading stops it."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        self.step = max(1024, sndbuf)
        self.progress = {"request": rid, "sent": 0, "done": False}
        with STATE.lock:
            STATE.progress.append(self.progress)

    def send(self, data):
        if self.progress is not None:
            for i in range(0, len(data), self.step):
                piece = data[i:i + self.step]
                self.sock.sendall(piece)
                self.written += len(piece)
                self.progress["sent"] = self.written
            return
        self.sock.sendall(data)
        self.written += len(data)

    def flush(self, whole_only=False):
        """Send what is buffered; when shaping, in pieces of write_size (or single
        bytes for drip), keeping a short tail back if whole_only."""
        if not self.buf:
            return
        data = b"".join(self.buf)
        self.buf, self.buffered = [], 0
        if not self.shaped():
            self.send(data)
            return
        step = 1 if self.drip else self.size
        end = len(data) - (len(data) % step if whole_only else 0)
        for i in range(0, end, step):
            self.send(data[i:i + step])
            if self.drip:
                time.sleep(self.drip)
        if end < len(data):
            self.buf, self.buffered = [data[end:]], len(data) - end

    def finish(self, close=False):
        self.flush()
        if self.progress is not None:
            self.progress["done"] = True
        if close:
            self.h.close_connection = True


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024  # the default 5 would drop bursts of connections (SYN retries)

    def handle_error(self, request, client_address):
        if isinstance(sys.exc_info()[1], (Cut, ConnectionError, TimeoutError)):
            return  # a cut asked for, or a client that went away: not news
        super().handle_error(request, client_address)


TLS_CTX = []  # the ssl context of an HTTPS server (set by main), for listen_more


def listen_more():
    """Open one more listening port on 127.0.0.1 served exactly like the first (same
    state, same TLS); returns it. A client's connection cache is per host:port, so a new
    port is a server it has never seen, without starting another process."""
    server = Server(("127.0.0.1", 0), Handler)
    if TLS_CTX:
        server.socket = TLS_CTX[0].wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
    return server.server_address[1]


def main():
    ap = argparse.ArgumentParser(description="luachat's local OpenAI-compatible test server")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--parent-pid", type=int)
    ap.add_argument("--max-lifetime", type=float, default=3600)
    ap.add_argument("--tls-cert", help="serve HTTPS with this PEM certificate (and --tls-key)")
    ap.add_argument("--tls-key")
    args = ap.parse_args()

    def stop(*_):
        os._exit(0)  # daemon threads may be mid-sleep: do not wait for them

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    server = Server(("127.0.0.1", args.port), Handler)  # bound and listening from here
    if args.tls_cert:
        import ssl
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.tls_cert, args.tls_key)
        # The handshake happens on accept; a client that rejects the certificate just goes away.
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
        TLS_CTX.append(ctx)
    tmp = "%s.tmp.%d" % (args.port_file, os.getpid())
    with open(tmp, "w") as f:
        f.write(str(server.server_address[1]))
    os.replace(tmp, args.port_file)  # readers see no file or the whole number

    def watchdog():
        started = time.monotonic()
        while True:
            time.sleep(0.5)
            if time.monotonic() - started > args.max_lifetime:
                os._exit(0)
            if args.parent_pid and not process_alive(args.parent_pid):
                os._exit(0)

    threading.Thread(target=watchdog, daemon=True).start()
    server.serve_forever(poll_interval=0.2)


if __name__ == "__main__":
    main()
