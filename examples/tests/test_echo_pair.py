#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# echo_server on port 0 with max_connections 3, then echo_client three times (IPv4 literal, "localhost",
# a message with spaces): each prints its message back and exits 0; the server then exits 0 by itself.
# Usage: test_echo_pair.py ECHO_SERVER ECHO_CLIENT
import subprocess
import sys

from support import Proc, check, limit_runtime, main


def test():
    limit_runtime(60)
    server_exe, client_exe = sys.argv[1], sys.argv[2]
    with Proc([server_exe, "127.0.0.1", "0", "2", "3"]) as server:
        port = server.wait_listening(timeout=10)
        for host, msg in (("127.0.0.1", "hello"), ("localhost", "via the resolver"), ("127.0.0.1", "a b  c")):
            r = subprocess.run([client_exe, host, str(port), msg], capture_output=True, text=True, timeout=20)
            check(r.returncode == 0, f"echo_client {host} exit {r.returncode}: {r.stderr.strip()}")
            check(r.stdout == msg + "\n", f"echo_client printed {r.stdout!r}, expected {msg!r}")
        rc = server.wait_exit(timeout=20)
        check(rc == 0, f"echo_server exit status {rc} after its 3 connections")
    refused = subprocess.run([client_exe, "127.0.0.1", str(port), "x"], capture_output=True, text=True, timeout=20)
    check(refused.returncode != 0 and "refused" in refused.stderr, f"a closed port is reported: {refused.stderr!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main(test))
