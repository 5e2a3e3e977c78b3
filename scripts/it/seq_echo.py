#!/usr/bin/env python3
"""Long-lived echo connections that check every byte: N connections to ADDR:PORT, each sending
a sequence-numbered line every INTERVAL ms and checking that exactly that line comes back,
until the file STOP exists (or SECONDS pass). Reports, as one JSON line on stdout:
connections opened, connections that completed (every line echoed byte-exact, then a clean
close), resets, other errors, mismatches, lines echoed, the longest time a line waited for
its echo (the stall a client saw), and when (CLOCK_MONOTONIC seconds) the last reset was seen.

Usage: seq_echo.py ADDR PORT CONNS STOP [SECONDS] [INTERVAL_MS]
"""
import json, os, socket, sys, threading, time

addr, port, conns, stop = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
seconds = float(sys.argv[5]) if len(sys.argv) > 5 else 60.0
interval = float(sys.argv[6]) / 1000 if len(sys.argv) > 6 else 0.01

lock = threading.Lock()
res = {"connections": 0, "completed": 0, "resets": 0, "errors": 0, "mismatches": 0, "lines": 0,
       "max_stall_ms": 0.0, "stalls_over_100ms": 0, "last_reset_mono": None, "failures": []}


def one(k):
    stall = 0.0
    lines = 0
    try:
        s = socket.create_connection((addr, port), timeout=5)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.settimeout(10)
        with lock:
            res["connections"] += 1
        buf = b""
        deadline = time.monotonic() + seconds
        seq = 0
        while not os.path.exists(stop) and time.monotonic() < deadline:
            line = b"%d %d %s\n" % (k, seq, b"x" * (seq % 37))
            t0 = time.monotonic()
            s.sendall(line)
            while b"\n" not in buf:
                chunk = s.recv(4096)
                if not chunk:
                    raise EOFError("closed by the server")
                buf += chunk
            got, buf = buf.split(b"\n", 1)
            dt = time.monotonic() - t0
            stall = max(stall, dt)
            if got + b"\n" != line:
                with lock:
                    res["mismatches"] += 1
                    res["failures"].append("conn %d line %d: got %r" % (k, seq, got[:40]))
                return
            seq += 1
            lines += 1
            time.sleep(interval)
        s.shutdown(socket.SHUT_WR)
        rest = s.recv(4096)
        if rest:
            raise ValueError("bytes after the last echo: %r" % rest[:40])
        s.close()
        with lock:
            res["completed"] += 1
    except ConnectionResetError as e:
        with lock:
            res["resets"] += 1
            res["last_reset_mono"] = max(res["last_reset_mono"] or 0.0, time.monotonic())
            res["failures"].append("conn %d: reset after %d lines (%s)" % (k, lines, e))
    except Exception as e:  # noqa: BLE001 - every failure is counted and named
        with lock:
            res["errors"] += 1
            res["failures"].append("conn %d: %s after %d lines: %s" % (k, type(e).__name__, lines, e))
    finally:
        with lock:
            res["lines"] += lines
            res["max_stall_ms"] = max(res["max_stall_ms"], round(stall * 1000, 1))
            if stall > 0.1:
                res["stalls_over_100ms"] += 1


threads = []
for k in range(conns):
    t = threading.Thread(target=one, args=(k,), daemon=True)
    t.start()
    threads.append(t)
    time.sleep(0.005)
for t in threads:
    t.join(seconds + 30)
res["failures"] = res["failures"][:10]
print(json.dumps(res), flush=True)
sys.exit(0 if res["completed"] == conns else 1)
