#!/usr/bin/env python3
"""Connect to ADDR:PORT in a loop for SECONDS: connect and one byte each way (20 ms budget each), close.
Writes one line per attempt to OUT: "<start_ns> <end_ns> <ok>" (CLOCK_MONOTONIC, comparable
with other processes on the host)."""
import select, socket, sys, time

addr, port, seconds, out = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
deadline = time.monotonic() + seconds
with open(out, "w") as f:
    while time.monotonic() < deadline:
        t0 = time.monotonic_ns()
        ok = False
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect((addr, port))
        except BlockingIOError:
            pass
        except OSError:
            pass
        _, w, _ = select.select([], [s], [], 0.02)
        if w and s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
            s.setblocking(True)
            s.settimeout(0.02)
            try:
                s.sendall(b"x")
                ok = s.recv(1) == b"x"
            except OSError:
                pass
        s.close()
        f.write(f"{t0} {time.monotonic_ns()} {int(ok)}\n")
        if not ok:
            time.sleep(0.002)
