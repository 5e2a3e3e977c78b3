#!/usr/bin/env bash
# plex on AF_XDP against Linux peers in network namespaces: ARP, ICMP, RST, HTTP with curl and
# wrk (1000 connections), echo, fragmented pings and UDP up to 65 507 bytes, malformed frames
# counted by plex, connect, 100 MiB bulk both ways with SHA-256 under 0/1/5 %
# loss (nftables and plex's own fault injector) and reordering, two queues (TCP and UDP through
# the blocking API), start-up errors (a queue another process holds names its pid).
set -uo pipefail
source "$(dirname "$0")/lib.sh"

echo "== real-interface tests (logs in $LOGDIR)"
"$TB" down
"$TB" up 1

S=198.18.0.11
MB100=$LOGDIR/100m.bin
head -c $((100 << 20)) /dev/urandom >"$MB100"
SHA=$(sha256sum "$MB100" | cut -d' ' -f1)

check "the kernel holds no IPv4 address on plx-s1" \
  test -z "$(ip netns exec plx-s1 ip -4 -o addr show dev plx-s1)"

# --- HTTP, ICMP, ARP, RST -------------------------------------------------------------
start_plex plx-s1 "$LOGDIR/http.log" http --iface plx-s1 --addr $S/24 --size 1024 --stats --pcap "$LOGDIR/http.pcap" || exit 1
check "ping: 10 of 10 echo requests answered by plex" \
  sh -c "ip netns exec plx-client ping -c 10 -i 0.05 -W 1 $S | grep -q ' 0% packet loss'"
check "ARP: the client resolved $S to plx-s1's MAC" \
  sh -c "ip netns exec plx-client ip neigh show $S | grep -qi \"$(ip netns exec plx-s1 cat /sys/class/net/plx-s1/address)\""
codes=$(ip netns exec plx-client curl -s -m 5 -w '%{http_code}:%{size_download}\n' \
  -o /dev/null http://$S/a -o /dev/null http://$S/b -o /dev/null http://$S/c -o /dev/null http://$S/d -o /dev/null http://$S/e)
check "curl: 5 keep-alive requests all 200 with 1024-byte bodies" \
  test "$(echo "$codes" | grep -c '^200:1024$')" = 5
ip netns exec plx-client curl -s -m 5 http://$S:81/ >/dev/null 2>&1; rc=$?
check "a SYN to a closed port gets RST (curl: connection refused, exit 7, got $rc)" test "$rc" = 7
ip netns exec plx-client wrk -t2 -c1000 -d5s --timeout 5s http://$S/ >"$LOGDIR/wrk.txt" 2>&1
reqs=$(awk '/requests in/ {print $1}' "$LOGDIR/wrk.txt")
echo "     wrk -c1000: $(grep -E 'Requests/sec' "$LOGDIR/wrk.txt")"
check "wrk -c 1000: ${reqs:-0} requests, no socket errors, no non-2xx" \
  sh -c "[ \"${reqs:-0}\" -gt 10000 ] && ! grep -qE 'Socket errors|Non-2xx' '$LOGDIR/wrk.txt'"
stop_plex
check "plex counted the pings (icmp_echo_out=10)" grep -q "icmp_echo_out=10" "$LOGDIR/http.log"
check "the XDP program steered and nothing failed to redirect" grep -q "redirect_failed 0" "$LOGDIR/http.log"
tcpdump -nn -r "$LOGDIR/http.pcap" 2>/dev/null | head -2000 >"$LOGDIR/http.pcap.txt"
check "--pcap: tcpdump reads plex's capture (ICMP echo, the SYN to port 81, its RST, HTTP)" sh -c \
  "grep -q 'ICMP echo reply' '$LOGDIR/http.pcap.txt' && grep -q '> $S.81: Flags \[S\]' '$LOGDIR/http.pcap.txt' \
   && grep -q '$S.81 > .*Flags \[R' '$LOGDIR/http.pcap.txt' && grep -q 'HTTP' '$LOGDIR/http.pcap.txt'"

# --- echo ------------------------------------------------------------------------------
start_plex plx-s1 "$LOGDIR/echo.log" echo --iface plx-s1 --addr $S/24 || exit 1
head -c $((8 << 20)) "$MB100" >"$LOGDIR/8m.bin"
got=$(ip netns exec plx-client timeout 30 socat -t 5 -T 10 - TCP:$S:7 <"$LOGDIR/8m.bin" | sha256sum | cut -d' ' -f1)
check "echo: 8 MiB comes back byte for byte" test "$got" = "$(sha256sum "$LOGDIR/8m.bin" | cut -d' ' -f1)"
stop_plex

# --- the blocking std-like API (a thread per connection) ---------------------------------
start_plex plx-s1 "$LOGDIR/echo-blocking.log" echo --blocking --iface plx-s1 --addr $S/24 || exit 1
got=$(ip netns exec plx-client timeout 30 socat -t 5 -T 10 - TCP:$S:7 <"$LOGDIR/8m.bin" | sha256sum | cut -d' ' -f1)
check "echo through the blocking API: 8 MiB comes back byte for byte" test "$got" = "$(sha256sum "$LOGDIR/8m.bin" | cut -d' ' -f1)"
stop_plex

# --- one XDP program per interface, attached through a link that dies with its process -------
xdp_attached() { ip netns exec plx-s1 ip -d link show dev plx-s1 | grep -qE 'xdp|prog/xdp'; }
no_xdp() { ! xdp_attached; }
echoes() { [ "$(echo "$1" | ip netns exec plx-client timeout 5 socat -t 1 - TCP:$S:7)" = "$1" ]; }
start_plex plx-s1 "$LOGDIR/first.log" echo --iface plx-s1 --addr $S/24 || exit 1
first=$(pgrep -P "${PIDS[-1]}" -x plex)
out=$(ip netns exec plx-s1 timeout 10 "$PLEX" echo --iface plx-s1 --addr $S/24 2>&1); rc=$?
echo "     second instance: $out"
check "a second plex on plx-s1: exit 1, 'plx-s1 already has an XDP program attached', held by the first (pid $first)" \
  sh -c "[ $rc = 1 ] && echo \"\$0\" | grep -q 'plx-s1 already has an XDP program attached (program id [0-9]*, generic mode): held by pid $first (plex)'" "$out"
check "the first plex still has its program after the second one failed" xdp_attached
check "the first plex still serves after the second one failed" echoes first
kill -9 "$first"
for _ in $(seq 1 50); do kill -0 "$first" 2>/dev/null || break; sleep 0.1; done
unset 'PIDS[-1]'
check "after kill -9 of plex, plx-s1 has no XDP program left" no_xdp
start_plex plx-s1 "$LOGDIR/after-kill.log" echo --iface plx-s1 --addr $S/24 || exit 1
check "a new plex starts after the kill -9 and serves" echoes again
stop_plex
check "after a clean stop, plx-s1 has no XDP program left" no_xdp

# --- a queue another process holds through an AF_XDP socket (and no XDP program) ------------------
# plex attaches its program (the interface has none), then binding to queue 0 fails with
# EBUSY: the error names the holder's pid (exactly with the kernel's AF_XDP socket
# diagnostics, as the one other AF_XDP socket holder of the namespace without them).
ip netns exec plx-s1 timeout 60 "$PLEX" hold-queue --iface plx-s1 --queue 0 --secs 60 >"$LOGDIR/hold-queue.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 50); do grep -q "^hold-queue:" "$LOGDIR/hold-queue.log" && break; sleep 0.1; done
holder=$(sed -n 's/^hold-queue: pid \([0-9]*\) .*/\1/p' "$LOGDIR/hold-queue.log")
out=$(ip netns exec plx-s1 timeout 10 "$PLEX" echo --iface plx-s1 --addr $S/24 2>&1); rc=$?
echo "     queue held by pid ${holder:-?}: $out"
check "plex on a queue another process holds: exit 1, 'queue 0 of plx-s1 is in use by another AF_XDP socket (pid ${holder:-?}, plex'" \
  sh -c "[ $rc = 1 ] && [ -n '$holder' ] && echo \"\$0\" | grep -q 'queue 0 of plx-s1 is in use by another AF_XDP socket (pid $holder, plex'" "$out"
check "the refused plex left no XDP program on plx-s1" no_xdp
stop_plex   # the holder

# --- fragments both ways, and malformed frames plex must drop itself ----------------------
# The bridge must not filter (scripts/testbed.sh turns br_netfilter's bridge-nf-call-* off in
# plx-br): frames with bad checksums or lengths then reach plex, and each must raise plex's
# named drop counter by exactly the number sent.
nf=$("$TB" bridge-nf)
check "the bridge passes frames unfiltered (bridge-nf-call-*: $nf)" sh -c "[ '$nf' = off ] || [ '$nf' = absent ]"
MAC=$(ip netns exec plx-s1 cat /sys/class/net/plx-s1/address)
FRAMES="$here/scripts/it/frames.py"
counter() { # LOG NAME: plex's counter NAME from its --stats dump (0 when absent)
  local v
  v=$(grep -E '^queue 0 (stack|drops):' "$1" | grep -o " $2=[0-9]*" | cut -d= -f2)
  echo "${v:-0}"
}
start_plex plx-s1 "$LOGDIR/frag.log" echo --iface plx-s1 --addr $S/24 --stats || exit 1
for sz in 3000 8000 65507; do
  check "ping -s $sz (fragmented both ways): 3 of 3 answered" \
    sh -c "ip netns exec plx-client ping -c 3 -i 0.2 -W 2 -s $sz $S | grep -q ' 0% packet loss'"
done
ip netns exec plx-client timeout 60 python3 "$FRAMES" udp-echo $S 7 100 4000 60000 65507 >"$LOGDIR/udp.txt" 2>&1; rc=$?
sed 's/^/     /' "$LOGDIR/udp.txt"
check "UDP echo: 4000, 60000 and 65507-byte datagrams come back intact (Linux <-> plex)" test "$rc" = 0
N=5
ip netns exec plx-client python3 "$FRAMES" bad plx-c "$MAC" 198.18.0.1 $S $N
sleep 0.3
stop_plex
echo "     $(grep -o 'ip_frags_in=[0-9]*\|ip_reasm_ok=[0-9]*\|ip_frags_out=[0-9]*' "$LOGDIR/frag.log" | tr '\n' ' ')"
for c in ip_bad_checksum tcp_bad_checksum udp_bad_checksum ip_truncated ip_frag_overlap ip_frag_of_discarded ip_reasm_discarded; do
  got=$(counter "$LOGDIR/frag.log" $c)
  check "$N malformed frames sent, plex counted $c=$got" test "$got" = $N
done
got=$(counter "$LOGDIR/frag.log" ip_reasm_ok)
check "plex reassembled the pings and datagrams (ip_reasm_ok=$got, at least 12)" test "$got" -ge 12
# A flood of partial datagrams: plex holds 256 datagrams at most (StackConfig::reassembly), so
# of the 1000 flood datagrams 255 are held (one slot holds the real one) and 745 refused, and
# the datagram already in progress still completes.
start_plex plx-s1 "$LOGDIR/flood.log" echo --iface plx-s1 --addr $S/24 --stats || exit 1
ip netns exec plx-client timeout 30 python3 "$FRAMES" flood plx-c "$MAC" 198.18.0.1 $S 1000 >"$LOGDIR/flood.txt" 2>&1; rc=$?
sed 's/^/     /' "$LOGDIR/flood.txt"
stop_plex
got=$(counter "$LOGDIR/flood.log" ip_frag_mem_limit)
check "fragment flood: plex refused 745 of 1000 partial datagrams (ip_frag_mem_limit=$got), the one in progress came back (rc $rc)" \
  sh -c "[ '$got' = 745 ] && [ $rc = 0 ]"
if [ "$nf" = off ]; then
  # The premise: with the bridge's netfilter on, the bad IPv4 checksums never reach plex.
  ip netns exec plx-br sysctl -qw net.bridge.bridge-nf-call-iptables=1
  start_plex plx-s1 "$LOGDIR/nf-on.log" echo --iface plx-s1 --addr $S/24 --stats || exit 1
  ip netns exec plx-client ping -c 1 -W 1 $S >/dev/null
  ip netns exec plx-client python3 "$FRAMES" bad plx-c "$MAC" 198.18.0.1 $S $N
  sleep 0.3
  stop_plex
  "$TB" up 1
  got=$(counter "$LOGDIR/nf-on.log" ip_bad_checksum)
  tcp=$(counter "$LOGDIR/nf-on.log" tcp_bad_checksum)
  # br_netfilter validates IPv4 headers, not TCP checksums: those still arrive.
  check "with bridge-nf-call-iptables=1 the bridge eats bad IPv4 checksums (plex saw ip_bad_checksum=$got, tcp_bad_checksum=$tcp; back to $("$TB" bridge-nf))" \
    sh -c "[ '$got' = 0 ] && [ '$tcp' = $N ] && [ \"\$($TB bridge-nf)\" = off ]"
fi

# --- connect (plex as the client of a Linux server) -------------------------------------
ip netns exec plx-client timeout 60 socat -u FILE:"$LOGDIR/8m.bin" TCP-LISTEN:6000,reuseaddr &
PIDS+=($!)
wait_listen plx-client 6000
got=$(ip netns exec plx-s1 timeout 60 "$PLEX" connect --iface plx-s1 --addr $S/24 198.18.0.1:6000 </dev/null | sha256sum | cut -d' ' -f1)
check "plex connect: 8 MiB from a Linux server (socat), byte for byte" test "$got" = "$(sha256sum "$LOGDIR/8m.bin" | cut -d' ' -f1)"

# --- bulk, both directions, with loss and reordering -----------------------------------
upload() { # name, plex fault args...
  local name=$1; shift
  start_plex plx-s1 "$LOGDIR/sink-$name.log" sink --iface plx-s1 --addr $S/24 --once "$@" || return 1
  ip netns exec plx-client timeout 300 socat -u FILE:"$MB100" TCP:$S:5001
  for _ in $(seq 1 100); do grep -q "^sink:" "$LOGDIR/sink-$name.log" && break; sleep 0.1; done
  stop_plex
  echo "     $(grep '^sink:' "$LOGDIR/sink-$name.log" | sed 's/sha256 [0-9a-f]*//')"
  check "upload 100 MiB Linux -> plex ($name): SHA-256 matches" grep -q "sha256 $SHA" "$LOGDIR/sink-$name.log"
}
download() { # name, plex fault args...
  local name=$1; shift
  ip netns exec plx-client timeout 300 sh -c "socat -u TCP-LISTEN:5002,reuseaddr - | sha256sum > $LOGDIR/dl-$name.sha" &
  local lpid=$!
  wait_listen plx-client 5002
  ip netns exec plx-s1 timeout 300 "$PLEX" source --iface plx-s1 --addr $S/24 --to 198.18.0.1:5002 --bytes $((100 << 20)) "$@" >"$LOGDIR/source-$name.log" 2>&1
  wait $lpid
  local want got
  want=$(sed -n 's/.*sha256 \([0-9a-f]*\).*/\1/p' "$LOGDIR/source-$name.log")
  got=$(cut -d' ' -f1 "$LOGDIR/dl-$name.sha")
  echo "     $(grep '^source:' "$LOGDIR/source-$name.log" | sed 's/sha256 [0-9a-f]*//')"
  check "download 100 MiB plex -> Linux ($name): SHA-256 matches" sh -c "[ -n '$want' ] && [ '$want' = '$got' ]"
}

upload clean
download clean
for pct in 1 5; do
  nft_loss plx-s1 0 0
  # nftables random drops on the Linux side: data to Linux (download) and ACKs/data from it.
  nft_loss plx-client "$pct" $S
  download "nft-$pct%"
  nft_loss plx-client 0 0
  # plex's own fault injector drops received frames.
  upload "plex-drop-$pct%" --drop "0.0$pct"
done
upload "plex-reorder-5%" --reorder 0.05 --reorder-us 300
download "plex-reorder-5%" --reorder 0.05 --reorder-us 300

# --- start-up failures are clear -----------------------------------------------------------
out=$(ip netns exec plx-s1 "$PLEX" http --iface plx-nope --addr $S/24 2>&1); rc=$?
check "no such interface: exit 1 and says so" sh -c "[ $rc = 1 ] && echo '$out' | grep -q 'no such interface'"
ip netns exec plx-s1 ip link set lo mtu 1500
out=$(ip netns exec plx-s1 "$PLEX" http --iface lo --addr $S/24 --xdp-mode native 2>&1); rc=$?
check "XDP cannot attach (native on lo): exit 1, names the mode" sh -c "[ $rc = 1 ] && echo \"\$0\" | grep -q 'cannot attach the XDP program to lo in native mode'" "$out"
out=$(ip netns exec plx-s1 "$PLEX" http --iface plx-s1 --addr $S/24 --frames 100000000 2>&1); rc=$?
check "UMEM too large: exit 1, says so" sh -c "[ $rc = 1 ] && echo \"\$0\" | grep -q 'cannot allocate a UMEM'" "$out"
out=$(ip netns exec plx-s1 setpriv --reuid=65534 --regid=65534 --clear-groups "$PLEX" http --iface plx-s1 --addr $S/24 2>&1); rc=$?
check "not root: exit 1, permission denied, names the capabilities missing" \
  sh -c "[ $rc = 1 ] && echo \"\$0\" | grep -q 'permission denied: loading the XDP program needs CAP_BPF and CAP_NET_ADMIN; this process (uid 65534) lacks CAP_NET_ADMIN, CAP_BPF'" "$out"
out=$(ip netns exec plx-s1 setpriv --bounding-set=-net_raw "$PLEX" http --iface plx-s1 --addr $S/24 2>&1); rc=$?
check "no CAP_NET_RAW: exit 1, the AF_XDP socket needs CAP_NET_RAW" \
  sh -c "[ $rc = 1 ] && echo \"\$0\" | grep -q 'creating an AF_XDP socket on plx-s1 queue 0 needs CAP_NET_RAW; this process (uid 0) lacks CAP_NET_RAW'" "$out"
out=$(ip netns exec plx-s1 prlimit --memlock=65536:65536 setpriv --bounding-set=-ipc_lock,-sys_resource "$PLEX" http --iface plx-s1 --addr $S/24 2>&1); rc=$?
check "no CAP_IPC_LOCK, 64 KiB RLIMIT_MEMLOCK: exit 1, the UMEM error names both and the errno" \
  sh -c "[ $rc = 1 ] && echo \"\$0\" | grep -q 'cannot allocate a UMEM of 16 MiB: .*E[A-Z]*: .*lacks CAP_IPC_LOCK and its RLIMIT_MEMLOCK is 64 KiB'" "$out"
check "the failed starts left no XDP program on plx-s1" no_xdp
"$PLEX" http --addr nope >/dev/null 2>&1; rc=$?
check "bad arguments: exit 2" test "$rc" = 2

# --- two queues, two poll threads -------------------------------------------------------
"$TB" down
"$TB" up-mq 2
start_plex plx-mqs "$LOGDIR/mq.log" http --iface plx-mq1 --addr 198.18.1.2/24 --queues 2 --xdp-mode native --stats || exit 1
ip netns exec plx-mqc wrk -t2 -c200 -d3s http://198.18.1.2/ >"$LOGDIR/wrk-mq.txt" 2>&1
stop_plex
q0=$(awk '/^queue 0:/ {for (i=1;i<=NF;i++) if ($i=="rx") print $(i+1)}' "$LOGDIR/mq.log")
q1=$(awk '/^queue 1:/ {for (i=1;i<=NF;i++) if ($i=="rx") print $(i+1)}' "$LOGDIR/mq.log")
echo "     two queues: queue 0 received ${q0:-0} frames, queue 1 ${q1:-0}; $(grep Requests/sec "$LOGDIR/wrk-mq.txt")"
check "two queues: connections spread over both poll threads" sh -c "[ \"${q0:-0}\" -gt 1000 ] && [ \"${q1:-0}\" -gt 1000 ]"

# Queue 1 held by another process: plex binds queue 0 itself, then fails on queue 1 and names
# the holder, not itself.
ip netns exec plx-mqs timeout 60 "$PLEX" hold-queue --iface plx-mq1 --queue 1 --secs 60 >"$LOGDIR/hold-queue-mq.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 50); do grep -q "^hold-queue:" "$LOGDIR/hold-queue-mq.log" && break; sleep 0.1; done
holder=$(sed -n 's/^hold-queue: pid \([0-9]*\) .*/\1/p' "$LOGDIR/hold-queue-mq.log")
out=$(ip netns exec plx-mqs timeout 10 "$PLEX" echo --iface plx-mq1 --addr 198.18.1.2/24 --queues 2 --xdp-mode native 2>&1); rc=$?
echo "     queue 1 held by pid ${holder:-?}: $out"
check "plex --queues 2 with queue 1 held: exit 1, names the holder (pid ${holder:-?})" \
  sh -c "[ $rc = 1 ] && [ -n '$holder' ] && echo \"\$0\" | grep -q 'queue 1 of plx-mq1 is in use by another AF_XDP socket (pid $holder, plex'" "$out"
stop_plex   # the holder

# The blocking API over two queues: one Net, a Bridge per poll thread; each accepted
# connection is served by the queue the NIC steered it to. 32 clients, each checked.
start_plex plx-mqs "$LOGDIR/mq-blocking.log" echo --blocking --iface plx-mq1 --addr 198.18.1.2/24 --queues 2 --xdp-mode native --stats || exit 1
head -c 65536 /dev/urandom >"$LOGDIR/64k.bin"
want=$(sha256sum "$LOGDIR/64k.bin" | cut -d' ' -f1)
clients=()
for i in $(seq 1 32); do
  ( ip netns exec plx-mqc timeout 20 socat -t 5 -T 10 - TCP:198.18.1.2:7 <"$LOGDIR/64k.bin" | sha256sum | cut -d' ' -f1 >"$LOGDIR/mqb-$i.sum" ) &
  clients+=($!)
done
wait "${clients[@]}"   # the clients only: the server is a background job too
# UDP through the blocking API's UdpSocket, which lives on shard 0: 200 client sockets (200
# source ports) each send one datagram and wait for its echo; the NIC spreads them over both
# queues, and queue 1 hands its datagrams to shard 0 (udp_forwarded).
ip netns exec plx-mqc timeout 60 python3 - 198.18.1.2 7 200 >"$LOGDIR/mq-udp.txt" 2>&1 <<'PY'
import os, random, socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(11)
socks, good = [], 0
for i in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", 0))
    s.settimeout(2.0)
    socks.append(s)  # kept open: 200 distinct source ports
    msg = os.urandom(rng.randint(1, 1400))
    s.sendto(msg, (host, port))
    try:
        data, frm = s.recvfrom(65535)
    except socket.timeout:
        print(f"port {s.getsockname()[1]}: no echo in 2 s")
        continue
    if data == msg and frm == (host, port):
        good += 1
    else:
        print(f"port {s.getsockname()[1]}: {len(data)} bytes from {frm}, sent {len(msg)}")
print(f"echoed {good}/{n}")
sys.exit(0 if good == n else 1)
PY
udp_rc=$?
stop_plex
sed 's/^/     /' "$LOGDIR/mq-udp.txt"
udp_good=$(sed -n 's|^echoed \([0-9]*\)/200$|\1|p' "$LOGDIR/mq-udp.txt")
fwd=$(grep '^queue 1 stack:' "$LOGDIR/mq-blocking.log" | grep -o ' udp_forwarded=[0-9]*' | cut -d= -f2)
echo "     blocking API UDP on two queues: echoed ${udp_good:-0}/200, forwarded ${fwd:-0} (queue 1 -> shard 0)"
check "blocking API UDP on two queues: 200 of 200 datagrams from 200 source ports echoed byte for byte" \
  sh -c "[ $udp_rc = 0 ] && [ '${udp_good:-0}' = 200 ]"
check "blocking API UDP on two queues: queue 1 handed datagrams to shard 0 (udp_forwarded=${fwd:-0} > 0)" test "${fwd:-0}" -gt 0
good=$(grep -lx "$want" "$LOGDIR"/mqb-*.sum 2>/dev/null | wc -l)
b0=$(awk '/^queue 0:/ {for (i=1;i<=NF;i++) if ($i=="rx") print $(i+1)}' "$LOGDIR/mq-blocking.log")
b1=$(awk '/^queue 1:/ {for (i=1;i<=NF;i++) if ($i=="rx") print $(i+1)}' "$LOGDIR/mq-blocking.log")
echo "     blocking API on two queues: $good/32 echoes intact; queue 0 received ${b0:-0} frames, queue 1 ${b1:-0}"
check "blocking API on two queues: 32 of 32 echoes byte for byte" test "$good" = 32
check "blocking API on two queues: both poll threads served connections" sh -c "[ \"${b0:-0}\" -gt 100 ] && [ \"${b1:-0}\" -gt 100 ]"

if [ "$FAILS" -gt 0 ]; then
  echo "== $FAILS real-interface check(s) failed (logs in $LOGDIR)"
  exit 1
fi
echo "== real-interface tests passed"
