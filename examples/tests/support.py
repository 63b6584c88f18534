# SPDX-License-Identifier: MIT
"""Helpers for the example tests: start a program, read its output lines with deadlines, stop it by PID.

Every wait has a deadline, and a whole test is also bounded by an alarm: when it fires, the processes a test
started are killed (by their PID, never by name) on the way out."""
import queue
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

SKIP = 77  # CTest SKIP_RETURN_CODE


class TestFailure(Exception):
    pass


def check(cond, what):
    if not cond:
        raise TestFailure(what)
    print("ok:", what, flush=True)


def limit_runtime(seconds):
    def expired(signum, frame):
        raise TestFailure(f"test took longer than {seconds} s")
    signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)


def main(test):
    """Runs test(); exit code 0 on success, 1 on failure, SKIP if the test returns SKIP."""
    try:
        rc = test()
    except TestFailure as e:
        print("FAIL:", e, flush=True)
        return 1
    finally:
        signal.alarm(0)
    return rc or 0


class Proc:
    """A program started by a test. Its stdout lines are collected by a thread; `with` kills it at the end."""

    def __init__(self, argv, name=None):
        self.name = name or argv[0].rsplit("/", 1)[-1]
        self.argv = argv
        self.p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines = []  # every stdout line so far
        self._q = queue.Queue()
        self._err = []
        threading.Thread(target=self._pump, args=(self.p.stdout, self._q), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.p.stderr, None), daemon=True).start()

    def _pump(self, pipe, q):
        for raw in iter(pipe.readline, b""):
            line = raw.decode(errors="replace").rstrip("\r\n")
            if q is None:
                self._err.append(line)
            else:
                q.put(line)
        if q is not None:
            q.put(None)  # end of output

    def wait_line(self, pattern, timeout=10.0):
        """The match of the next stdout line matching `pattern` (lines before it are skipped)."""
        end = time.monotonic() + timeout
        rx = re.compile(pattern)
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise TestFailure(f"{self.name}: no line matching {pattern!r} within {timeout} s; stderr: {self.stderr()}")
            try:
                line = self._q.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise TestFailure(f"{self.name} exited ({self.p.poll()}) before printing {pattern!r}; stderr: {self.stderr()}")
            self.lines.append(line)
            print(f"  [{self.name}] {line}", flush=True)
            m = rx.search(line)
            if m:
                return m

    def wait_listening(self, timeout=10.0):
        """Port from the "listening on HOST:PORT" line."""
        return int(self.wait_line(r"listening on \S+:(\d+)$", timeout).group(1))

    def wait_exit(self, timeout):
        """Exit code, after collecting the remaining output."""
        try:
            rc = self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TestFailure(f"{self.name} still running after {timeout} s")
        while True:
            try:
                line = self._q.get(timeout=5)
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
            print(f"  [{self.name}] {line}", flush=True)
        return rc

    def stderr(self):
        return " | ".join(self._err[-5:])

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()  # SIGKILL to this child's PID
        try:
            self.p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()


class LineClient:
    """A TCP client reading lines, with a timeout on every operation."""

    def __init__(self, port, timeout=5.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""
        self.lines = []  # every line read
        self.unmatched = []  # lines read that no wait_for matched

    def send(self, data):
        self.sock.sendall(data if isinstance(data, bytes) else data.encode())

    def read_line(self, timeout=5.0):
        end = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = end - time.monotonic()
            if left <= 0:
                raise TestFailure(f"no line within {timeout} s (have {self.buf!r})")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            if not data:
                raise TestFailure(f"connection closed (have {self.buf!r})")
            self.buf += data
        line, _, self.buf = self.buf.partition(b"\n")
        text = line.decode()
        self.lines.append(text)
        return text

    def wait_for(self, pattern, timeout=5.0):
        """The match of a line matching `pattern`, in any order: lines read earlier that no wait_for has
        matched yet are looked at first."""
        end = time.monotonic() + timeout
        rx = re.compile(pattern)
        for i, line in enumerate(self.unmatched):
            m = rx.search(line)
            if m:
                del self.unmatched[i]
                return m
        while True:
            line = self.read_line(max(0.01, end - time.monotonic()))
            m = rx.search(line)
            if m:
                return m
            self.unmatched.append(line)

    def close(self, reset=False):
        if reset:  # SO_LINGER 0: close sends RST
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


def free_port_refusing():
    """A bound socket that does not listen (connections to its port are refused) and its port."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    return s, s.getsockname()[1]


if __name__ == "__main__":
    sys.exit("support.py is a module")
