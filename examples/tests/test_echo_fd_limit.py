#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# A hostile load on echo_server: with its descriptors limited to 64 (ulimit -n 64), 100 clients connect at
# once, so accept fails with EMFILE. The server must pause and accept again, not end its accept loop: it is
# still running once they leave, and a new client is served. (Before the fix it exited with status 0.)
# Usage: test_echo_fd_limit.py ECHO_SERVER [--ubsan]
import sys
import time

from support import SKIP, LineClient, Proc, check, limit_runtime, main


def test():
    limit_runtime(90)
    server_exe = sys.argv[1]
    if "--ubsan" in sys.argv[2:]:
        # Its vptr check writes the object to a pipe to see whether it is readable: out of descriptors, that
        # fails and it reports "invalid vptr" on the server's first error_code::message().
        print("COPORT_SKIP: UBSan needs a free descriptor for its vptr check; this test takes them all", flush=True)
        return SKIP
    argv = ["sh", "-c", 'ulimit -n 64 && exec "$0" "$@"', server_exe, "127.0.0.1", "0", "2"]
    with Proc(argv, name="echo_server") as server:
        port = server.wait_listening(timeout=10)
        clients = [LineClient(port) for _ in range(100)]  # the kernel's backlog takes them all
        for i, c in enumerate(clients):
            c.send(f"hello {i}\n")
        served = 0
        for i, c in enumerate(clients[:20]):  # the first ones got a descriptor before the limit was hit
            try:
                if c.read_line(timeout=5) == f"hello {i}":
                    served += 1
            except Exception:
                pass
        check(served > 0, f"some of the first clients were served ({served} of 20)")
        time.sleep(0.5)
        check(server.p.poll() is None, "echo_server still runs while accept fails with EMFILE")
        for c in clients:
            c.close()
        time.sleep(0.5)
        check(server.p.poll() is None, f"echo_server still runs after the clients left (stderr: {server.stderr()})")
        late = LineClient(port)
        late.send("still here\n")
        check(late.read_line(timeout=10) == "still here", "a new client is served once descriptors are free")
        late.close()
        check(any("again in 100 ms" in line for line in server._err), "the server said it would accept again")
    return 0


if __name__ == "__main__":
    sys.exit(main(test))
