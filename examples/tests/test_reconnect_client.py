#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# reconnect_client 30 echoes against echo_server; after ~1 s the server is killed (SIGKILL, by PID) and, after a few
# refused retries, restarted on the same port. The client must report "lost:", "retry in N ms", connect again and
# exit 0 after all 30 echoes, with its retry delays inside the documented backoff (100 ms doubling to 2 s + 25 %).
# Usage: test_reconnect_client.py ECHO_SERVER RECONNECT_CLIENT
import re
import sys
import time

from support import Proc, TestFailure, check, limit_runtime, main


def start_echo(exe, port):
    """echo_server on 127.0.0.1:port (0: any); retried briefly, as the old one's port may still be held."""
    end = time.monotonic() + 10
    while True:
        server = Proc([exe, "127.0.0.1", str(port), "1"])
        try:
            return server, server.wait_listening(timeout=5)
        except TestFailure:
            server.kill()
            if time.monotonic() > end:
                raise
            time.sleep(0.2)


def test():
    limit_runtime(80)
    echo_exe, client_exe = sys.argv[1], sys.argv[2]
    server, port = start_echo(echo_exe, 0)
    second = None
    try:
        with Proc([client_exe, "127.0.0.1", str(port), "30"]) as client:
            client.wait_line(r"^connected$")
            time.sleep(1.0)
            server.kill()
            client.wait_line(r"^lost: ", timeout=10)
            client.wait_line(r"^retry in \d+ ms$", timeout=10)
            client.wait_line(r"^lost: ", timeout=10)  # the first retry finds nobody listening
            second, _ = start_echo(echo_exe, port)
            rc = client.wait_exit(timeout=40)
            out = client.lines
            check(rc == 0, f"client exit status {rc}")
            check(out.count("connected") >= 2, "connected again after the restart")
            check(any(l.startswith("lost: ") for l in out), "printed lost:")
            check(out[-1] == "done: 30 echoes", "finished all 30 echoes")
            delays = [int(m.group(1)) for m in (re.match(r"^retry in (\d+) ms$", l) for l in out) if m]
            expected = 100
            for d in delays:  # one loss: delays grow from 100 ms, doubling, capped at 2 s
                check(expected <= d <= expected * 5 // 4, f"retry delay {d} ms within [{expected}, {expected * 5 // 4}]")
                expected = min(expected * 2, 2000)
    finally:
        server.kill()
        if second:
            second.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main(test))
