#!/usr/bin/env python3
"""Hold one echo connection to ADDR:PORT open until the file RELEASE exists (at most 30 s),
checking an echo at the start and at the end. Prints "held ok" / "released ok" or the error."""
import os, socket, sys, time

addr, port, release = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.create_connection((addr, port), timeout=2)
s.sendall(b"a")
print("held ok" if s.recv(1) == b"a" else "held bad", flush=True)
deadline = time.monotonic() + 30
while not os.path.exists(release) and time.monotonic() < deadline:
    time.sleep(0.05)
s.sendall(b"b")
print("released ok" if s.recv(1) == b"b" else "released bad", flush=True)
s.close()
