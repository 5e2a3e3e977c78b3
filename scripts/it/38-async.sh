#!/usr/bin/env bash
# The readiness API with tokio on real interfaces: a hyper HTTP/1.1 server on plex
# (poll-loop/examples/hyper.rs, feature `tokio`) answers curl and wrk (50 and 1000
# connections) from the Linux client; the same server on Linux sockets is measured beside it
# (figures printed, never asserted).
set -uo pipefail
source "$(dirname "$0")/lib.sh"

echo "== readiness API + tokio + hyper on AF_XDP (logs in $LOGDIR)"
(cd "$here" && cargo build --release --locked -p poll-loop --features tokio --example hyper --example echo_client 2>&1 | tail -1)
HYPER="$here/target/release/examples/hyper"
"$TB" down
"$TB" up 1
S=198.18.0.11
L=198.18.0.4
# The Linux server's kernel address beside plex's: XDP steers only plex's address to plex.
ip netns exec plx-s1 ip addr add $L/24 dev plx-s1

# start_hyper NS LOG ARGS...: run the example in the background until it says it listens.
start_hyper() {
  local ns=$1 log=$2; shift 2
  ip netns exec "$ns" timeout 300 "$HYPER" "$@" >"$log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 1 50); do
    grep -q "^listening on" "$log" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "hyper did not start: $(cat "$log")"
  return 1
}

# wrk_run NAME URL CONNS: 3 s of wrk; prints the rate, checks no errors.
wrk_run() {
  local name=$1 url=$2 c=$3 out="$LOGDIR/wrk-$1-$3.txt"
  ip netns exec "${WRK_NS:-plx-client}" wrk -t2 -c"$c" -d3s --timeout 5s "$url" >"$out" 2>&1
  local reqs rps
  reqs=$(awk '/requests in/ {print $1}' "$out")
  rps=$(awk '/Requests\/sec/ {print $2}' "$out")
  echo "     $name wrk -c$c: ${rps:-?} req/s"
  eval "RPS_${name}_$c=${rps:-0}"
  check "$name: wrk -c $c: ${reqs:-0} requests, no socket errors, no non-2xx" \
    sh -c "[ \"${reqs:-0}\" -gt 1000 ] && ! grep -qE 'Socket errors|Non-2xx' '$out'"
}

start_hyper plx-s1 "$LOGDIR/hyper-plex.log" plx-s1 $S/24 80 1 || exit 1
codes=$(ip netns exec plx-client curl -s -m 5 -w '%{http_code}:%{size_download}\n' \
  -o /dev/null http://$S/ -o /dev/null http://$S/100000 -o /dev/null http://$S/1 -o /dev/null http://$S/65536)
check "curl: 4 keep-alive requests to hyper on plex, bodies of 13, 100000, 1 and 65536 bytes" \
  test "$(echo "$codes" | tr '\n' ' ')" = "200:13 200:100000 200:1 200:65536 "
body=$(ip netns exec plx-client curl -s -m 5 http://$S/)
check "curl: the body is hello, world" test "$body" = "hello, world"
wrk_run plex "http://$S/" 50
wrk_run plex "http://$S/" 1000
stop_plex
check "hyper on plex stopped on SIGINT with its report (accept ended: the poll thread stopped)" \
  grep -q "accept loop ended: the plex poll thread has stopped" "$LOGDIR/hyper-plex.log"

start_hyper plx-s1 "$LOGDIR/hyper-linux.log" --linux $L:80 || exit 1
wrk_run linux "http://$L/" 50
wrk_run linux "http://$L/" 1000
stop_plex

# Thread per core (Plex::serve_tokio): the same hyper code, tokio's runtime on the poll thread.
start_hyper plx-s1 "$LOGDIR/hyper-percore.log" --per-core plx-s1 $S/24 80 1 || exit 1
codes=$(ip netns exec plx-client curl -s -m 5 -w '%{http_code}:%{size_download}\n' \
  -o /dev/null http://$S/ -o /dev/null http://$S/100000 -o /dev/null http://$S/1 -o /dev/null http://$S/65536)
check "curl: 4 keep-alive requests to hyper thread-per-core on plex, bodies of 13, 100000, 1 and 65536 bytes" \
  test "$(echo "$codes" | tr '\n' ' ')" = "200:13 200:100000 200:1 200:65536 "
wrk_run percore "http://$S/" 50
wrk_run percore "http://$S/" 1000
stop_plex
check "hyper thread-per-core stopped on SIGINT with its report" grep -q "^queue 0: iterations" "$LOGDIR/hyper-percore.log"

echo "     hyper req/s, plex (tokio thread / thread per core) / Linux sockets: -c50 $RPS_plex_50 / $RPS_percore_50 / $RPS_linux_50, -c1000 $RPS_plex_1000 / $RPS_percore_1000 / $RPS_linux_1000"

# --- outbound connections over two queues -------------------------------------------------
# The SYN-ACK of a connection one shard opened may arrive on the other queue (veth: the
# sender's transmit-queue choice), and so may the ARP reply: the shards hand each other the
# segments of their connections and share ARP (poll-loop/src/shards.rs). Before, about half
# of the connections timed out.
"$TB" down
"$TB" up-mq 2
ip netns exec plx-mqc socat TCP-LISTEN:7,fork,reuseaddr,backlog=1024 EXEC:cat >/dev/null 2>&1 &
PIDS+=($!)
sleep 0.3
ip netns exec plx-mqs env PLEX_XDP_MODE=native timeout 60 "$here/target/release/examples/echo_client" plx-mq1 198.18.1.2/24 2 198.18.1.1:7 200 \
  >"$LOGDIR/echo-client-2q.log" 2>&1
out=$(grep "connections echoed" "$LOGDIR/echo-client-2q.log")
echo "     $out; $(grep -c 'handed to the shard' "$LOGDIR/echo-client-2q.log") queue(s) handed segments over"
check "200 outbound connections from two queues (readiness API): all echoed" test "$out" = "200/200 connections echoed over 2 queue(s)"
check "segments arriving on the other queue were handed to the shard owning them" \
  sh -c "grep 'handed to the shard' '$LOGDIR/echo-client-2q.log' | grep -vq 'connection 0 '"
# Thread per core on two queues: each poll thread's runtime listens and serves the
# connections its queue receives (the client's flows spread over veth's two queues; native
# XDP, as generic XDP on veth sees every frame on queue 0).
PLEX_XDP_MODE=native start_hyper plx-mqs "$LOGDIR/hyper-percore-2q.log" --per-core plx-mq1 198.18.1.2/24 80 2 || exit 1
WRK_NS=plx-mqc wrk_run percore2q "http://198.18.1.2/" 100
stop_plex
echo "     $(grep -E '^queue [01]: iterations' "$LOGDIR/hyper-percore-2q.log" | awk '{ printf "queue %s rx %s  ", $2, $8 }')"
check "hyper thread-per-core on two queues: both queues' runtimes served (rx above 1000 on each)" \
  sh -c "[ \$(awk '/^queue [01]: iterations/ && \$8 > 1000 { n++ } END { print n + 0 }' '$LOGDIR/hyper-percore-2q.log') = 2 ]"
[ "$FAILS" = 0 ] || { echo "$FAILS check(s) failed"; exit 1; }
echo "all readiness-API checks passed"
