#!/usr/bin/env python3
"""A Linux TCP echo server for the real-interface tests: echoes every byte on every connection
until the peer closes. Prints one line per second while it has clients, and at SIGTERM/SIGINT
(or after SECONDS) one JSON line: connections accepted, distinct peer addresses and ports,
4-tuples opened while a connection with the same 4-tuple was still open, bytes echoed, connections that ended with a reset.

Usage: echo_server.py ADDR PORT [SECONDS]
"""
import asyncio, json, signal, sys, time

addr, port = sys.argv[1], int(sys.argv[2])
seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 600.0
res = {"accepted": 0, "peers": [], "dup_tuples": 0, "bytes": 0, "resets": 0, "open": 0}
live = set()


async def handle(reader, writer):
    peer = writer.get_extra_info("peername")
    res["accepted"] += 1
    res["open"] += 1
    key = (peer[0], peer[1])
    if key in live:
        res["dup_tuples"] += 1
    live.add(key)
    res["peers"].append("%s:%d" % key)
    try:
        while True:
            b = await reader.read(65536)
            if not b:
                break
            res["bytes"] += len(b)
            writer.write(b)
            await writer.drain()
    except ConnectionResetError:
        res["resets"] += 1
    except Exception:
        res["resets"] += 1
    finally:
        res["open"] -= 1
        live.discard(key)
        try:
            writer.close()
        except Exception:
            pass


async def main():
    server = await asyncio.start_server(handle, addr, port, backlog=1024, reuse_address=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for s in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(s, stop.set)
    print("listening %s:%d" % (addr, port), flush=True)
    end = time.monotonic() + seconds
    while not stop.is_set() and time.monotonic() < end:
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except asyncio.TimeoutError:
            pass
    server.close()
    out = dict(res)
    out["distinct_peers"] = len(set(res["peers"]))
    del out["peers"]
    print(json.dumps(out), flush=True)


asyncio.run(main())
