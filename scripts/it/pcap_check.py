#!/usr/bin/env python3
"""Check a client-side capture of TCP connections to SERVER (ip:port) for what a live handoff
must never show: per connection (client port), a SYN only at its start, a FIN only at its end,
no RST at all, and server -> client sequence numbers that continue without a gap (a segment
starts at or before the highest byte seen so far + 1: retransmissions are fine, a jump is not).
Prints one JSON line: connections, syns, fins_midstream, rsts, gaps, data segments checked.

Usage: pcap_check.py FILE SERVER_IP SERVER_PORT
"""
import json, struct, sys

path, sip, sport = sys.argv[1], sys.argv[2], int(sys.argv[3])
sip_b = bytes(int(x) for x in sip.split("."))
data = open(path, "rb").read()
magic = struct.unpack("<I", data[:4])[0]
endian = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
linktype = struct.unpack(endian + "I", data[20:24])[0]
off = 24
conns = {}
res = {"connections": 0, "syns": 0, "fins_midstream": 0, "rsts": 0, "gaps": 0, "segments": 0}
while off + 16 <= len(data):
    _, _, incl, _ = struct.unpack(endian + "IIII", data[off:off + 16])
    pkt = data[off + 16: off + 16 + incl]
    off += 16 + incl
    if linktype == 1:
        if len(pkt) < 14 or pkt[12:14] != b"\x08\x00":
            continue
        ip = pkt[14:]
    elif linktype == 113:  # Linux cooked (tcpdump -i any)
        if len(pkt) < 16 or pkt[14:16] != b"\x08\x00":
            continue
        ip = pkt[16:]
    else:
        ip = pkt
    if len(ip) < 20 or ip[9] != 6:
        continue
    ihl = (ip[0] & 15) * 4
    tot = struct.unpack(">H", ip[2:4])[0]
    src, dst = ip[12:16], ip[16:20]
    tcp = ip[ihl:]
    sp, dp, seq = struct.unpack(">HHI", tcp[:8])
    doff = (tcp[12] >> 4) * 4
    flags = tcp[13]
    plen = tot - ihl - doff
    if src == sip_b and sp == sport:
        key, from_server = dp, True
    elif dst == sip_b and dp == sport:
        key, from_server = sp, False
    else:
        continue
    c = conns.setdefault(key, {"data": False, "sfin": False, "next": None})
    if flags & 0x04:
        res["rsts"] += 1
    if flags & 0x02:
        res["syns"] += 1
        if c["data"]:
            res["syns_midstream"] = res.get("syns_midstream", 0) + 1
        if from_server:
            c["next"] = (seq + 1) & 0xFFFFFFFF
    if plen > 0:
        c["data"] = True
        if from_server:
            res["segments"] += 1
            nxt = c["next"]
            if c["sfin"] and nxt is not None and ((seq + plen - nxt) & 0xFFFFFFFF) < 0x80000000 and seq + plen != nxt:
                # New server data after the server's FIN: the connection was closed midstream.
                res["fins_midstream"] += 1
            if nxt is not None and ((seq - nxt) & 0xFFFFFFFF) < 0x80000000 and seq != nxt:
                res["gaps"] += 1
            end = (seq + plen) & 0xFFFFFFFF
            if nxt is None or ((end - nxt) & 0xFFFFFFFF) < 0x80000000:
                c["next"] = end
    if flags & 0x01 and from_server:
        c["sfin"] = True
res["connections"] = len(conns)
res.setdefault("syns_midstream", 0)
print(json.dumps(res))
