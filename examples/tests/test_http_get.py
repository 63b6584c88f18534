#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# http_get against `python3 -m http.server` on 127.0.0.1 (a binary file byte for byte; a 404 fails) and against a
# tiny server here: chunked bodies (odd sizes, extensions, trailers, sent in small pieces), a body ended by EOF,
# a 100 Continue before the response, a 500; also the request it sends, a refused connection and a bad URL.
# Usage: test_http_get.py HTTP_GET
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

from support import Proc, check, free_port_refusing, limit_runtime, main

rng = random.Random(1234)
BIG = rng.randbytes(300_000) + b"\r\n0\r\n\r\n\n\x00"


def chunked(body, sizes):
    out, i = b"", 0
    for n in sizes:
        out += b"%x;ext=1\r\n" % n + body[i:i + n] + b"\r\n"
        i += n
    return out + b"%X\r\n" % (len(body) - i) + body[i:] + b"\r\n0\r\nX-Trailer: yes\r\n\r\n"


def chunk_sizes(total):
    sizes, left = [], total
    while left > 1:
        n = rng.randint(1, min(left - 1, 40_000))
        sizes.append(n)
        left -= n
    return sizes


HEAD_OK = b"HTTP/1.1 200 OK\r\n"
ROUTES = {  # path -> raw response; the server closes after each
    "/chunked": HEAD_OK + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(b"hello, chunked world\n", [5, 1, 7]),
    "/big-chunked": HEAD_OK + b"transfer-encoding: Chunked\r\n\r\n" + chunked(BIG, chunk_sizes(len(BIG))),
    "/eof": HEAD_OK + b"Content-Type: application/octet-stream\r\n\r\n" + BIG,
    "/continue": b"HTTP/1.1 100 Continue\r\n\r\n" + HEAD_OK + b"Content-Length: 3\r\n\r\nabc",
    "/error": b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n\r\noops",
    "/truncated": HEAD_OK + b"Content-Length: 100\r\n\r\nonly this",
}
EXPECTED = {"/chunked": b"hello, chunked world\n", "/big-chunked": BIG, "/eof": BIG, "/continue": b"abc"}


class TinyServer:
    """Answers each connection from ROUTES, in small pieces with pauses; records the request heads."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.requests = []
        self.stop = False
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while not self.stop:
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            with c:
                c.settimeout(5)
                head = b""
                while b"\r\n\r\n" not in head:
                    data = c.recv(4096)
                    if not data:
                        break
                    head += data
                self.requests.append(head.decode(errors="replace"))
                path = head.split(b" ")[1].decode() if head.count(b" ") >= 2 else "/"
                resp = ROUTES.get(path, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
                i = 0
                while i < len(resp):  # pieces that cut lines and chunk headers anywhere
                    n = rng.choice([1, 2, 3, 7, 100, 5000, 65536])
                    c.sendall(resp[i:i + n])
                    i += n
                    if n < 10:
                        time.sleep(0.001)

    def close(self):
        self.stop = True
        self.thread.join(timeout=5)
        self.sock.close()


def http_get(exe, url):
    return subprocess.run([exe, url], capture_output=True, timeout=30)


def test():
    limit_runtime(90)
    exe = sys.argv[1]

    root = tempfile.mkdtemp(prefix="coport-http-get-")
    try:
        with open(os.path.join(root, "data.bin"), "wb") as f:
            f.write(BIG)
        with Proc([sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory", root],
                  name="http.server") as srv:
            port = int(srv.wait_line(r"port (\d+)").group(1))
            r = http_get(exe, f"http://127.0.0.1:{port}/data.bin")
            check(r.returncode == 0, f"http.server file: exit 0 ({r.stderr.decode().strip()})")
            check(r.stdout == BIG, f"http.server file: {len(BIG)} bytes identical (got {len(r.stdout)})")
            r = http_get(exe, f"http://127.0.0.1:{port}/missing")
            check(r.returncode != 0 and b"404" in r.stderr and r.stdout == b"", "404: non-zero exit, status on stderr")
    finally:
        shutil.rmtree(root, ignore_errors=True)

    tiny = TinyServer()
    try:
        for path, want in EXPECTED.items():
            r = http_get(exe, f"http://127.0.0.1:{tiny.port}{path}")
            check(r.returncode == 0 and r.stdout == want,
                  f"{path}: exit {r.returncode}, {len(r.stdout)} of {len(want)} bytes identical {r.stderr.decode().strip()}")
        req = tiny.requests[0]
        check(req.startswith("GET /chunked HTTP/1.1\r\n"), "request line")
        check(f"\r\nHost: 127.0.0.1:{tiny.port}\r\n" in req and "\r\nConnection: close\r\n" in req, "Host and Connection: close sent")
        r = http_get(exe, f"http://127.0.0.1:{tiny.port}/error")
        check(r.returncode != 0 and b"500" in r.stderr, "500: non-zero exit, status on stderr")
        r = http_get(exe, f"http://127.0.0.1:{tiny.port}/truncated")
        check(r.returncode != 0, "body shorter than Content-Length: non-zero exit")
    finally:
        tiny.close()

    holder, refused_port = free_port_refusing()
    with holder:
        r = http_get(exe, f"http://127.0.0.1:{refused_port}/")
    check(r.returncode == 1 and b"refused" in r.stderr.lower(), "refused connection: exit 1 with a message")
    r = http_get(exe, "https://127.0.0.1/")
    check(r.returncode == 2 and b"usage" in r.stderr, "https:// URL rejected with usage")
    return 0


if __name__ == "__main__":
    sys.exit(main(test))
