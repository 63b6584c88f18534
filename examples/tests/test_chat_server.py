#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# chat_server on port 0 with three clients: each sees the other two's lines as "[id] text" and never its own;
# a line sent in pieces and a CRLF line arrive whole; one client resetting its connection is announced and the
# other two carry on; a client that joins later is served too.
# Usage: test_chat_server.py CHAT_SERVER
import sys
import time

from support import LineClient, Proc, TestFailure, check, limit_runtime, main


def test():
    limit_runtime(60)
    with Proc([sys.argv[1], "127.0.0.1", "0"]) as server:
        port = server.wait_listening()
        clients = {}
        for name in "abc":  # one at a time: the welcome proves the server has registered the client
            cl = LineClient(port)
            cl.id = cl.wait_for(r"^\* welcome, you are \[(\d+)\]").group(1)
            clients[name] = cl
        a, b, c = clients["a"], clients["b"], clients["c"]
        check(len({a.id, b.id, c.id}) == 3, f"three distinct ids {a.id} {b.id} {c.id}")

        for name, cl in clients.items():
            cl.send(f"hello from {name}\n")
        for name, cl in clients.items():
            for other, ocl in clients.items():
                if other != name:
                    cl.wait_for(rf"^\[{ocl.id}\] hello from {other}$")
            check(True, f"{name} saw the other two lines")
        # Each has seen the others' lines, so the server had read every hello before it got any "sync": a wrong
        # echo of a client's own line would be queued to it before the syncs of the others.
        for cl in clients.values():
            cl.send("sync\n")
        for cl in clients.values():
            for ocl in clients.values():
                if ocl is not cl:
                    cl.wait_for(rf"^\[{ocl.id}\] sync$")
        for name, cl in clients.items():
            own = [l for l in cl.lines if l.startswith(f"[{cl.id}] ")]
            check(not own, f"{name} never got its own lines back")

        a.send("par")
        time.sleep(0.05)
        a.send("tial\r\n")
        check(b.wait_for(rf"^\[{a.id}\] (.*)$").group(1) == "partial", "line sent in two pieces, CRLF stripped")
        c.wait_for(rf"^\[{a.id}\] partial$")

        c.close(reset=True)  # abrupt: RST
        a.wait_for(rf"^\* \[{c.id}\] left$")
        b.wait_for(rf"^\* \[{c.id}\] left$")
        check(True, "c's reset announced to a and b")
        b.send("still here\n")
        check(bool(a.wait_for(rf"^\[{b.id}\] still here$")), "a and b still talk after c left")

        d = LineClient(port)
        d.id = d.wait_for(r"^\* welcome, you are \[(\d+)\]; 2 others here$").group(1)
        a.wait_for(rf"^\* \[{d.id}\] joined$")
        a.send("hi d\n")
        check(bool(d.wait_for(rf"^\[{a.id}\] hi d$")), "a client joining later is served")
        d.close()
        b.wait_for(rf"^\* \[{d.id}\] left$")
        check(server.p.poll() is None, "server still running")
        for cl in (a, b):
            cl.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(test))
