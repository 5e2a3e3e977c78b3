#!/usr/bin/env python3
"""One keep-alive HTTP/1.1 connection to ADDR:PORT carrying requests for different stacks: the
content router moves the connection to each request's stack. Sends the requests one at a time
(each after the previous response) and then ROUNDS pipelined bursts (all requests of a round
written at once); checks every response's X-Served-By against the expected stack. Prints one
JSON line: requests, correct, wrong (with details), the local port (to find the connection in
a capture), and any error.

Usage: http_pipeline.py ADDR PORT ROUNDS PATH=STACK [PATH=STACK ...]
"""
import json, socket, sys

addr, port, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
reqs = [a.split("=", 1) for a in sys.argv[4:]]
res = {"requests": 0, "correct": 0, "wrong": [], "error": None}


def read_response(f):
    status = f.readline()
    if not status:
        raise EOFError("connection closed by the server")
    headers = {}
    while True:
        line = f.readline()
        if line in (b"\r\n", b""):
            break
        k, v = line.decode().split(":", 1)
        headers[k.strip().lower()] = v.strip()
    body = f.read(int(headers.get("content-length", "0")))
    return status.decode().strip(), headers, body


def request(path):
    return ("GET %s HTTP/1.1\r\nHost: test\r\n\r\n" % path).encode()


def check(path, want, status, headers):
    res["requests"] += 1
    got = headers.get("x-served-by")
    if status.startswith("HTTP/1.1 200") and got == want:
        res["correct"] += 1
    else:
        res["wrong"].append("%s: wanted %s, got %s (%s)" % (path, want, got, status))


try:
    s = socket.create_connection((addr, port), timeout=10)
    res["local_port"] = s.getsockname()[1]
    f = s.makefile("rb")
    for path, want in reqs:
        s.sendall(request(path))
        st, h, _ = read_response(f)
        check(path, want, st, h)
    for _ in range(rounds):
        s.sendall(b"".join(request(p) for p, _ in reqs))
        for path, want in reqs:
            st, h, _ = read_response(f)
            check(path, want, st, h)
    s.close()
except Exception as e:  # noqa: BLE001 - reported, the test fails on it
    res["error"] = "%s: %s" % (type(e).__name__, e)
print(json.dumps(res))
