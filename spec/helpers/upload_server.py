#!/usr/bin/env python3
"""upload_server.py: one HTTP/1.1 upload, received slowly, for spec/upload_spec.lua.

Owns: one listening socket on 127.0.0.1 with a small receive buffer (64 KiB,
so the client cannot run far ahead of what this server has read), and its
report. Accepts one connection, reads the request head and its body
(Content-Length); once AT body bytes have arrived it acts on FILE once:
  truncate:N  cuts FILE to N bytes (the client is still sending it)
  unlink      removes FILE's name
  hold        writes DIR/started, then reads on only once DIR/go exists
then reads the rest, to Content-Length or the end of the connection, and
writes DIR/report ({"received": n, "length": n, "complete": bool}). A
complete body is answered 200 with {"ok": true}. The report is written
before the answer, so a client that has its answer can read it.
Never: outlives 60 s without progress (socket timeout), or listens beyond loopback.

Usage: upload_server.py DIR ACTION FILE AT   (the port goes to DIR/port)
"""
import json
import os
import socket
import sys
import time


def main():
    d, action, path, at = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)  # inherited by the accepted socket
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    with open(os.path.join(d, "port.tmp"), "w") as f:
        f.write(str(ls.getsockname()[1]))
    os.rename(os.path.join(d, "port.tmp"), os.path.join(d, "port"))
    ls.settimeout(60)
    c, _ = ls.accept()
    c.settimeout(60)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = c.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    received, acted = len(rest), False
    while received < length:
        if not acted and received >= at:
            acted = True
            if action.startswith("truncate:"):
                os.truncate(path, int(action.split(":", 1)[1]))
            elif action == "unlink":
                os.unlink(path)
            elif action == "hold":
                open(os.path.join(d, "started"), "w").close()
                deadline = time.monotonic() + 60
                while not os.path.exists(os.path.join(d, "go")) and time.monotonic() < deadline:
                    time.sleep(0.01)
        try:
            chunk = c.recv(min(65536, length - received))
        except OSError:
            chunk = b""
        if not chunk:
            break
        received += len(chunk)
    report = {"received": received, "length": length, "complete": received == length and length > 0}
    with open(os.path.join(d, "report.tmp"), "w") as f:
        json.dump(report, f)
    os.rename(os.path.join(d, "report.tmp"), os.path.join(d, "report"))
    if report["complete"]:
        body = b'{"ok":true}'
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                  b"Connection: close\r\n\r\n%s" % (len(body), body))
    c.close()


if __name__ == "__main__":
    main()
