#!/usr/bin/env python3
"""Frames for the real-interface tests, sent from the Linux client namespace.

  frames.py bad IFACE DST_MAC SRC_IP DST_IP N
      N each of: an IPv4 header with a bad checksum, a TCP SYN with a bad checksum, a UDP
      datagram with a bad checksum, an IPv4 total length beyond the frame (truncated), and a
      fragmented ICMP echo whose second fragment overlaps the first (then its last fragment),
      written byte by byte on an AF_PACKET socket so that nothing in the kernel fixes them.
  frames.py flood IFACE DST_MAC SRC_IP DST_IP N
      the first fragment of a 3000-byte UDP datagram to DST_IP:7, then the first fragments of
      N datagrams that never complete (a flood), then the rest of the first datagram: its echo
      must come back intact. Exit 1 otherwise.
  frames.py udp-echo DST_IP PORT SIZE...
      one datagram of each SIZE to DST_IP:PORT (Linux fragments what exceeds the MTU); the
      echo must come back identical. Prints one line per size; exit 1 on a mismatch.
"""
import os
import socket
import struct
import sys


def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ip_header(src, dst, proto, payload_len, ident, frag=0, bad=False, total=None):
    tl = 20 + payload_len if total is None else total
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, tl, ident, frag, 64, proto, 0,
                    socket.inet_aton(src), socket.inet_aton(dst))
    c = csum(h) ^ (0x5A5A if bad else 0)
    return h[:10] + struct.pack("!H", c) + h[12:]


def l4_checksum(src, dst, proto, seg):
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, proto, len(seg))
    return csum(pseudo + seg)


def bad(iface, dst_mac, src, dst, n):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((iface, 0))
    src_mac = bytes.fromhex(open(f"/sys/class/net/{iface}/address").read().strip().replace(":", ""))
    eth = bytes.fromhex(dst_mac.replace(":", "")) + src_mac + b"\x08\x00"
    for i in range(n):
        ident = 0x5000 + i
        # 1. IPv4 header checksum wrong (an ICMP echo request inside).
        icmp = struct.pack("!BBHHH", 8, 0, 0, 0x77, i) + b"badipsum"
        icmp = icmp[:2] + struct.pack("!H", csum(icmp)) + icmp[4:]
        s.send(eth + ip_header(src, dst, 1, len(icmp), ident, bad=True) + icmp)
        # 2. TCP SYN to port 7 with a wrong checksum.
        tcp = struct.pack("!HHIIBBHHH", 40000 + i, 7, 1000 + i, 0, 5 << 4, 0x02, 65535, 0, 0)
        c = l4_checksum(src, dst, 6, tcp) ^ 0x00FF
        tcp = tcp[:16] + struct.pack("!H", c) + tcp[18:]
        s.send(eth + ip_header(src, dst, 6, len(tcp), ident + 0x100) + tcp)
        # 3. UDP to port 7 with a wrong (non-zero) checksum.
        udp = struct.pack("!HHHH", 40000 + i, 7, 16, 0) + b"badudpck"
        c = (l4_checksum(src, dst, 17, udp) ^ 0x00FF) or 1
        udp = udp[:6] + struct.pack("!H", c) + udp[8:]
        s.send(eth + ip_header(src, dst, 17, len(udp), ident + 0x200) + udp)
        # 4. Total length 1000 in a 62-byte frame.
        s.send(eth + ip_header(src, dst, 1, len(icmp), ident + 0x300, total=1000) + icmp)
        # 5. Overlapping fragments of one ICMP echo (RFC 5722): [0,16) MF, [8,24) MF, [24,32).
        body = struct.pack("!BBHHH", 8, 0, 0, 0x78, i) + bytes(range(24))
        body = body[:2] + struct.pack("!H", csum(body)) + body[4:]
        fid = ident + 0x400
        s.send(eth + ip_header(src, dst, 1, 16, fid, frag=0x2000 | 0) + body[0:16])
        s.send(eth + ip_header(src, dst, 1, 16, fid, frag=0x2000 | 1) + body[8:24])
        s.send(eth + ip_header(src, dst, 1, 8, fid, frag=3) + body[24:32])


def flood(iface, dst_mac, src, dst, n):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((iface, 0))
    src_mac = bytes.fromhex(open(f"/sys/class/net/{iface}/address").read().strip().replace(":", ""))
    eth = bytes.fromhex(dst_mac.replace(":", "")) + src_mac + b"\x08\x00"
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind((src, 40500))
    u.settimeout(3)
    data = os.urandom(3000)
    udp = struct.pack("!HHHH", 40500, 7, 8 + len(data), 0) + data
    c = l4_checksum(src, dst, 17, udp) or 0xFFFF
    udp = udp[:6] + struct.pack("!H", c) + udp[8:]
    frags = [udp[o:o + 1480] for o in range(0, len(udp), 1480)]

    def send(ident, k, piece, last):
        frag = (0 if last else 0x2000) | (k * 1480 // 8)
        s.send(eth + ip_header(src, dst, 17, len(piece), ident, frag=frag) + piece)

    send(0x4321, 0, frags[0], False)
    junk = os.urandom(1480)
    for i in range(n):
        send(0x6000 + i, 0, junk, False)
    for k in range(1, len(frags)):
        send(0x4321, k, frags[k], k + 1 == len(frags))
    try:
        got = u.recv(70000)
    except socket.timeout:
        got = None
    ok = got == data
    print(f"3000-byte datagram around a flood of {n} partial ones: {'echoed intact' if ok else 'LOST or damaged'}")
    sys.exit(0 if ok else 1)


def udp_echo(dst, port, sizes):
    ok = True
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    s.settimeout(3)
    s.connect((dst, port))
    for n in sizes:
        data = os.urandom(n)
        got = None
        for _ in range(3):
            s.send(data)
            try:
                got = s.recv(70000)
                break
            except socket.timeout:
                continue
        same = got == data
        ok &= same
        print(f"udp {n} bytes: {'echoed intact' if same else 'MISMATCH or lost'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    if sys.argv[1] == "bad":
        bad(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], int(sys.argv[6]))
    elif sys.argv[1] == "flood":
        flood(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], int(sys.argv[6]))
    elif sys.argv[1] == "udp-echo":
        udp_echo(sys.argv[2], int(sys.argv[3]), [int(x) for x in sys.argv[4:]])
    else:
        sys.exit(__doc__)
