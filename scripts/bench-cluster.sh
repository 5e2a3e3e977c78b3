#!/usr/bin/env bash
# The distributor's benchmark (bench.sh --cluster runs this): plex's router against HAProxy,
# the load balancer a user would put in front of two servers, on the same namespaces in the
# same run. Three plex stacks (router s1, targets s2 and s3, echo app) with DVIPA 198.18.0.102
# distributed over the targets; HAProxy 2.6 (TCP mode, round robin) on a kernel address of
# plx-s1 in front of two Linux echo servers on kernel addresses of plx-s2 and plx-s3. The
# Linux client (plex-bench-linux, busy-polling, pinned) measures:
#   - ping-pong latency (64 B, one connection) through the router / HAProxy vs direct to a
#     backend, and connections per second through each (one at a time, and 8 clients in
#     parallel); the connection rates again from a plex client (`plex connrate`, adaptive
#     polling, 1 and 8 connections in flight), which costs far less per connection than the
#     Linux client's connect/close and so measures the balancers rather than the client;
#   - failover: 50 long-lived checked echo connections (it/seq_echo.py), kill -9 of the plex
#     router (then restart of the primary: takeback), and kill -9 of HAProxy with 20 open:
#     connections that completed, resets, the longest stall a client saw.
# Prints a table and writes JSON {"distributor": {...}} (--json FILE). Never asserts timings.
#
# Usage: sudo flock /tmp/plx-testbed.lock scripts/bench-cluster.sh [--quick] [--json FILE] [--out DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh

COUNT=100000
WARMUP=10000
CONNS=5000
JSON=
OUT=$(mktemp -d /tmp/plx-bench-cluster.XXXXXX)
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) COUNT=20000; WARMUP=2000; CONNS=2000 ;;
    --json) JSON=$2; shift ;;
    --out) OUT=$2; mkdir -p "$OUT"; shift ;;
    *) echo "usage: $0 [--quick] [--json FILE] [--out DIR]" >&2; exit 2 ;;
  esac
  shift
done
[ "$(id -u)" = 0 ] || { echo "bench-cluster.sh needs root (namespaces, XDP)" >&2; exit 1; }
install_deps
install_haproxy
cargo build --release --locked -p apps -p bench 2>&1 | tail -1
PLEX=target/release/plex
LNX=target/release/plex-bench-linux
V=198.18.0.102
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  sleep 0.3
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  scripts/testbed.sh down
  rm -f "$REGION"
}
REGION=/dev/shm/plex-plx-bench
trap cleanup EXIT
source scripts/bench_lib.sh
bench_testbed_up
CFG=$OUT/cluster.toml
bench_cfg "$CFG" "$V"
pp() { # NAME ADDR:PORT
  ip netns exec plx-client timeout 300 "$LNX" pingpong "$2" --core 0 --count "$COUNT" --warmup "$WARMUP" --hgrm "$OUT/$1.hgrm" >"$OUT/$1.txt"
  echo "  $1: $(cat "$OUT/$1.txt")"
}
cr() { # NAME ADDR:PORT
  ip netns exec plx-client timeout 300 "$LNX" connrate "$2" --count "$CONNS" --core 0 >"$OUT/$1.txt"
  echo "  $1: $(cat "$OUT/$1.txt")"
}
crp() { # NAME ADDR:PORT: 8 clients connecting in parallel, summed
  local k pids=()
  for k in 1 2 3 4 5 6 7 8; do
    ip netns exec plx-client timeout 300 "$LNX" connrate "$2" --count $((CONNS / 4)) >"$OUT/$1.$k.txt" &
    pids+=($!)
  done
  wait "${pids[@]}"
  cat "$OUT/$1".[1-8].txt | sed -n 's/.*: \([0-9]*\) conn\/s/\1/p' | awk '{ s += $1 } END { printf "connrate: 8 parallel clients: %d conn/s\n", s }' >"$OUT/$1.txt"
  echo "  $1: $(cat "$OUT/$1.txt")"
}
# pcr NAME ADDR:PORT PARALLEL: the same connection loop from a plex client (its own address
# 198.18.0.7 on the client's interface, polling as the stacks do: it sleeps while it waits, and
# leaves the cores to the servers), PARALLEL connections in flight. The Linux client's own
# connect/close costs about as much as a plex target's whole connection: a plex client
# measures what the router, HAProxy and the servers sustain.
pcr() {
  ip netns exec plx-client timeout 300 "$PLEX" connrate --iface plx-c --addr 198.18.0.7/24 --poll "$PLEX_POLL" \
    --to "$2" --count $((CONNS * ($3 > 1 ? 4 : 2))) --parallel "$3" 2>"$OUT/$1.err" | grep '^connrate' >"$OUT/$1.txt" || true
  echo "  $1: $(cat "$OUT/$1.txt") $(grep -m1 -i 'error\|failed' "$OUT/$1.err" || true)"
}
p50() { sed -n 's/.* p50 \([0-9.]*\) us.*/\1/p' "$OUT/$1.txt"; }
p99() { sed -n 's/.* p99 \([0-9.]*\) us.*/\1/p' "$OUT/$1.txt"; }
cps() { sed -n 's/.*: \([0-9]*\) conn\/s/\1/p' "$OUT/$1.txt"; }
# The plex stacks spin 20 idle turns before sleeping (PLEX_POLL): on this 2-core machine three
# stacks that spin longer, a client and HAProxy starve one another (the default adaptive:2000
# measured about 1 300 sequential conn/s through the router, adaptive:20 about 7 000).
PLEX_POLL=${PLEX_POLL:-adaptive:20}
jf() { python3 -c "import json,sys; print(json.loads(open(sys.argv[1]).read().splitlines()[-1])[sys.argv[2]])" "$OUT/$1" "$2" 2>/dev/null || echo null; }

echo "== plex: router s1, targets s2 and s3 (echo), DVIPA $V"
for i in 1 2 3; do start_stack $i; done
wait_owner s1 && ready 2
pp plex-router "$V:7"
pp plex-direct "198.18.0.12:7"
cr plex-router-conn "$V:7"
cr plex-direct-conn "198.18.0.12:7"
crp plex-router-par "$V:7"
crp plex-direct-par "198.18.0.12:7"
pcr plex-router-pc "$V:7" 1
pcr plex-direct-pc "198.18.0.12:7" 1
pcr plex-router-pcpar "$V:7" 8
pcr plex-direct-pcpar "198.18.0.12:7" 8

echo "== plex failover: 50 long-lived connections, kill -9 of the router, then takeback"
rm -f "$OUT/stop"
ip netns exec plx-client python3 scripts/it/seq_echo.py $V 7 50 "$OUT/stop" 60 10 >"$OUT/failover.json" 2>&1 &
SEQ=$!
sleep 2
kill -9 "${SPID[1]}"
wait_owner s2 || echo "  s2 did not take over"
sleep 2
start_stack 1
wait_owner s1 || echo "  s1 did not take the address back"
sleep 2
touch "$OUT/stop"
wait "$SEQ" || true
echo "  $(tail -1 "$OUT/failover.json")"
for i in 1 2 3; do kill -INT "${SPID[$i]}" 2>/dev/null || true; done
sleep 1.5

echo "== HAProxy 2.6 (TCP, round robin) in plx-s1 over Linux echo servers in plx-s2, plx-s3"
haproxy_up
sleep 0.3
pp haproxy "198.18.0.21:7000"
pp linux-direct "198.18.0.22:7000"
cr haproxy-conn "198.18.0.21:7000"
cr linux-direct-conn "198.18.0.22:7000"
crp haproxy-par "198.18.0.21:7000"
crp linux-direct-par "198.18.0.22:7000"
pcr haproxy-pc "198.18.0.21:7000" 1
pcr linux-direct-pc "198.18.0.22:7000" 1
pcr haproxy-pcpar "198.18.0.21:7000" 8
pcr linux-direct-pcpar "198.18.0.22:7000" 8
echo "== HAProxy failover: kill -9 with 20 long-lived connections"
rm -f "$OUT/stop2"
ip netns exec plx-client python3 scripts/it/seq_echo.py 198.18.0.21 7000 20 "$OUT/stop2" 20 10 >"$OUT/haproxy-failover.json" 2>&1 &
SEQ=$!
sleep 2
kill -9 "$HAP"
sleep 2
touch "$OUT/stop2"
wait "$SEQ" || true
echo "  $(tail -1 "$OUT/haproxy-failover.json")"

# --- cluster-wide ports ------------------------------------------------------------------------
# The registry's own rate (claim+release pairs from one process, and from two contending on one
# DVIPA), then the cost it adds to outbound connections: target s2 opens connections from the
# DVIPA to a Linux echo server in the client namespace (8 at a time: connect, 16 bytes echoed,
# close), with `cluster_ports` on and off, alternated, best of two each.
echo "== cluster-wide ports"
for i in 1 2 3; do kill -INT "${SPID[$i]:-0}" 2>/dev/null || true; done
sleep 0.5
target/release/plex-portbench >"$OUT/portbench.txt" 2>&1
sed 's/^/  /' "$OUT/portbench.txt" | grep -v '^  {'
ip netns exec plx-client "$LNX" echo-many 198.18.0.1:7000 --block >"$OUT/echo-many.log" 2>&1 &
PIDS+=($!)
sleep 0.3
CHURN=${PLEX_CHURN:-$CONNS}
churn() { # on|off ROUND: connections per second from s2 through the DVIPA
  local mode=$1 cfg="$OUT/ports-$1.toml" reg="$REGION-ports-$1"
  sed -e "s|^region = .*|region = \"$reg\"|" -e "s|^name = \"plx-bench\"|name = \"plx-bench-$1\"|" "$CFG" >"$cfg"
  [ "$mode" = on ] && sed -i "s|^address = \"$V/24\"|address = \"$V/24\"\ncluster_ports = true|" "$cfg"
  rm -f "$reg"
  ip netns exec plx-s1 "$PLEX" run --config "$cfg" --stack s1 --poll "$PLEX_POLL" echo >"$OUT/churn-s1-$1-$2.log" 2>&1 &
  local r=$!
  PIDS+=($r)
  sleep 0.5
  ip netns exec plx-s2 timeout 120 "$PLEX" run --config "$cfg" --stack s2 --poll "$PLEX_POLL" --stats outbound --to 198.18.0.1:7000 --from $V --count 8 --churn "$CHURN" >"$OUT/churn-$1-$2.log" 2>&1
  kill -INT $r 2>/dev/null; wait $r 2>/dev/null
  rm -f "$reg"
  # A run whose connections failed measures nothing: no figure (and say so).
  if grep -q 'churn: done: completed=0 ' "$OUT/churn-$1-$2.log"; then
    echo "  churn $1 $2: every connection failed (see $OUT/churn-$1-$2.log, $OUT/echo-many.log)" >&2
    return
  fi
  sed -n 's/.*conn_per_s_99=\([0-9]*\).*/\1/p' "$OUT/churn-$1-$2.log" | tail -1
}
best() { printf '%s\n' "$@" | sort -n | tail -1; }
off1=$(churn off 1); on1=$(churn on 1); off2=$(churn off 2); on2=$(churn on 2); off3=$(churn off 3); on3=$(churn on 3)
PORTS_OFF=$(best "${off1:-0}" "${off2:-0}" "${off3:-0}"); PORTS_ON=$(best "${on1:-0}" "${on2:-0}" "${on3:-0}")
echo "  outbound conn/s from s2 through $V, best of 3 alternated runs (the first 99 %: a straggler's SYN retransmission is not the registry's cost): cluster_ports off $off1, $off2, $off3; on $on1, $on2, $on3"
grep -h 'churn: done' "$OUT"/churn-on-*.log | sed 's/^/  on:  /'
grep -h 'cluster ports:' "$OUT"/churn-on-*.log | sed 's/^/  on:  /'

# --- live connection handoff ---------------------------------------------------------------------
# Connections bounce between s1 (the router) and s2 without end (`plex run ... bounce`), each
# stack moving every connection it holds to the other as soon as it has it, while a Linux
# client keeps 16 of them busy with 64-byte ping-pongs (data in flight both ways in the
# records). The stack that installs a connection measures freeze (the source's snapshot) to
# installed (the target can send) into an HdrHistogram.
# Both stacks busy-polling (what a latency-critical deployment runs: the target's poll thread
# sees the offer at once), then adaptive (they sleep when idle: the offer waits for the next
# frame or timer to wake the target).
HO_CFG="$OUT/handoff.toml"
sed -e "s|^region = .*|region = \"$REGION-handoff\"|" -e "s|^name = \"plx-bench\"|name = \"plx-bench-handoff\"|" "$CFG" >"$HO_CFG"
HO_N=${PLEX_HANDOFFS:-$([ "$CONNS" -le 2000 ] && echo 3000 || echo 10000)}
for HO_MODE in busy adaptive; do
  poll=busy; [ "$HO_MODE" = adaptive ] && poll=$PLEX_POLL
  echo "== handoff ($HO_MODE polling): 4 busy connections moving between s1 and s2, $HO_N transfers each way"
  rm -f "$REGION-handoff"
  ip netns exec plx-s1 "$PLEX" run --config "$HO_CFG" --stack s1 --poll "$poll" --stats bounce --peer s2 --transfers "$HO_N" >"$OUT/bounce-$HO_MODE-s1.log" 2>&1 &
  B1=$!; PIDS+=($B1)
  ip netns exec plx-s2 "$PLEX" run --config "$HO_CFG" --stack s2 --poll "$poll" --stats bounce --peer s1 --transfers "$HO_N" >"$OUT/bounce-$HO_MODE-s2.log" 2>&1 &
  B2=$!; PIDS+=($B2)
  sleep 1
  ip netns exec plx-client timeout 120 "$LNX" pingpong "$V:81" --conns 4 --count $((HO_N * 14)) --warmup 100 >"$OUT/bounce-$HO_MODE-client.txt" 2>&1 || true
  echo "  client: $(tail -1 "$OUT/bounce-$HO_MODE-client.txt")"
  kill -INT $B1 $B2 2>/dev/null; wait $B1 $B2 2>/dev/null
  rm -f "$REGION-handoff"
  for s in s1 s2; do echo "  $s: $(grep '^bounce:' "$OUT/bounce-$HO_MODE-$s.log" | tail -1)"; done
done
# Drain rate: 200 long-lived checked echo connections spread over s2 and s3; `plex ctl drain
# s2 --to s3` moves s2's half; connections moved per second of the drain.
rm -f "$REGION-handoff"
DPIDS=()
for i in 1 2 3; do
  ip netns exec "plx-s$i" "$PLEX" run --config "$HO_CFG" --stack "s$i" --poll "$PLEX_POLL" echo >"$OUT/drain-s$i.log" 2>&1 &
  PIDS+=($!); DPIDS+=($!)
done
sleep 1.5
rm -f "$OUT/stop-drain"
ip netns exec plx-client python3 scripts/it/seq_echo.py $V 7 200 "$OUT/stop-drain" 60 20 >"$OUT/drain-seq.json" 2>&1 &
DSEQ=$!
sleep 3
"$PLEX" ctl --config "$HO_CFG" drain s2 --to s3 >"$OUT/drain.txt" 2>&1 || true
sleep 0.5
touch "$OUT/stop-drain"; wait $DSEQ || true
kill -INT "${DPIDS[@]}" 2>/dev/null || true; wait "${DPIDS[@]}" 2>/dev/null || true
rm -f "$REGION-handoff"
echo "  drain: $(tail -1 "$OUT/drain.txt"); clients: $(tail -1 "$OUT/drain-seq.json" | cut -c1-120)"
DRAIN_N=$(sed -n 's/.*: \([0-9]*\) connections moved in \([0-9.]*\) s.*/\1/p' "$OUT/drain.txt" | tail -1)
DRAIN_S=$(sed -n 's/.*: \([0-9]*\) connections moved in \([0-9.]*\) s.*/\2/p' "$OUT/drain.txt" | tail -1)
DRAIN_RATE=$(awk -v n="${DRAIN_N:-0}" -v t="${DRAIN_S:-0}" 'BEGIN { if (n > 0 && t > 0) printf "%.0f", n / t; else print "" }')
ho() { grep '^bounce:' "$OUT/bounce-$1.log" | tail -1 | sed -n "s/.* $2 \([0-9.]*\) us.*/\1/p"; }
hon() { grep '^bounce:' "$OUT/bounce-$1.log" | tail -1 | sed -n 's/.* n=\([0-9]*\).*/\1/p'; }

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a != "" && b != "" && b > 0) printf "%.2f", a / b; else print "null" }'; }
num() { [ -n "$1" ] && echo "$1" || echo null; }
echo
printf '%-34s %10s %10s %12s %12s\n' "distributor (64 B ping-pong)" "p50 (us)" "p99 (us)" "conn/s seq" "conn/s x8"
printf '%-34s %10s %10s %12s %12s\n' "client -> plex router -> target" "$(p50 plex-router)" "$(p99 plex-router)" "$(cps plex-router-conn)" "$(cps plex-router-par)"
printf '%-34s %10s %10s %12s %12s\n' "client -> plex target (direct)" "$(p50 plex-direct)" "$(p99 plex-direct)" "$(cps plex-direct-conn)" "$(cps plex-direct-par)"
printf '%-34s %10s %10s %12s %12s\n' "client -> HAProxy -> Linux" "$(p50 haproxy)" "$(p99 haproxy)" "$(cps haproxy-conn)" "$(cps haproxy-par)"
printf '%-34s %10s %10s %12s %12s\n' "client -> Linux (direct)" "$(p50 linux-direct)" "$(p99 linux-direct)" "$(cps linux-direct-conn)" "$(cps linux-direct-par)"
printf '%-34s %10s %10s %12s %12s\n' "plex client: via the plex router" "" "" "$(cps plex-router-pc)" "$(cps plex-router-pcpar)"
printf '%-34s %10s %10s %12s %12s\n' "plex client: plex target (direct)" "" "" "$(cps plex-direct-pc)" "$(cps plex-direct-pcpar)"
printf '%-34s %10s %10s %12s %12s\n' "plex client: via HAProxy" "" "" "$(cps haproxy-pc)" "$(cps haproxy-pcpar)"
printf '%-34s %10s %10s %12s %12s\n' "plex client: Linux (direct)" "" "" "$(cps linux-direct-pc)" "$(cps linux-direct-pcpar)"
echo "router adds $(awk -v a="$(p50 plex-router)" -v b="$(p50 plex-direct)" 'BEGIN { printf "%.1f", a - b }') us to p50; HAProxy adds $(awk -v a="$(p50 haproxy)" -v b="$(p50 linux-direct)" 'BEGIN { printf "%.1f", a - b }') us"
echo "connections/s through the router / through HAProxy: $(ratio "$(cps plex-router-conn)" "$(cps haproxy-conn)")x sequential, $(ratio "$(cps plex-router-par)" "$(cps haproxy-par)")x with 8 parallel clients"
echo "  from a plex client (the Linux client's own connect/close bounds the figures above): $(ratio "$(cps plex-router-pc)" "$(cps haproxy-pc)")x one at a time, $(ratio "$(cps plex-router-pcpar)" "$(cps haproxy-pcpar)")x with 8 in flight (target 3x)"
echo "failover, plex router kill -9 + takeback: $(jf failover.json completed)/$(jf failover.json connections) completed, resets $(jf failover.json resets), errors $(jf failover.json errors), longest stall $(jf failover.json max_stall_ms) ms"
echo "failover, HAProxy kill -9: $(jf haproxy-failover.json completed)/$(jf haproxy-failover.json connections) completed, resets $(jf haproxy-failover.json resets), errors $(jf haproxy-failover.json errors)"
echo "port registry: $(jf portbench.txt claims_per_s_1) claim+release/s from one process, $(jf portbench.txt claims_per_s_2) from two contending (target >= 10 M); outbound conn/s through $V with cluster_ports on/off: $PORTS_ON / $PORTS_OFF = $(ratio "$PORTS_ON" "$PORTS_OFF")x (target >= 0.95)"
echo "handoff latency, freeze to installed, busy polling (s2 taking from s1 / s1 taking from s2): p50 $(ho busy-s2 p50) / $(ho busy-s1 p50) us, p99 $(ho busy-s2 p99) / $(ho busy-s1 p99) us, max $(ho busy-s2 max) / $(ho busy-s1 max) us over $(hon busy-s2) / $(hon busy-s1) transfers (targets p50 < 20, p99 < 100); adaptive polling: p50 $(ho adaptive-s2 p50) / $(ho adaptive-s1 p50) us, p99 $(ho adaptive-s2 p99) / $(ho adaptive-s1 p99) us; drain: ${DRAIN_N:-?} connections in ${DRAIN_S:-?} s = ${DRAIN_RATE:-?} conn/s, client resets $(jf drain-seq.json resets)"
if [ -n "$JSON" ]; then
  cat >"$JSON" <<J
{ "distributor": {
  "rtt_p50_us": $(num "$(p50 plex-router)"), "rtt_p99_us": $(num "$(p99 plex-router)"),
  "rtt_p50_direct_us": $(num "$(p50 plex-direct)"), "rtt_p99_direct_us": $(num "$(p99 plex-direct)"),
  "haproxy_rtt_p50_us": $(num "$(p50 haproxy)"), "haproxy_rtt_p99_us": $(num "$(p99 haproxy)"),
  "linux_rtt_p50_direct_us": $(num "$(p50 linux-direct)"),
  "conn_per_s": $(num "$(cps plex-router-conn)"), "conn_per_s_direct": $(num "$(cps plex-direct-conn)"),
  "haproxy_conn_per_s": $(num "$(cps haproxy-conn)"), "linux_conn_per_s_direct": $(num "$(cps linux-direct-conn)"),
  "conn_per_s_parallel": $(num "$(cps plex-router-par)"), "conn_per_s_direct_parallel": $(num "$(cps plex-direct-par)"),
  "haproxy_conn_per_s_parallel": $(num "$(cps haproxy-par)"), "linux_conn_per_s_direct_parallel": $(num "$(cps linux-direct-par)"),
  "plex_client_conn_per_s": $(num "$(cps plex-router-pc)"), "plex_client_conn_per_s_direct": $(num "$(cps plex-direct-pc)"),
  "plex_client_haproxy_conn_per_s": $(num "$(cps haproxy-pc)"), "plex_client_linux_conn_per_s_direct": $(num "$(cps linux-direct-pc)"),
  "plex_client_conn_per_s_parallel": $(num "$(cps plex-router-pcpar)"), "plex_client_conn_per_s_direct_parallel": $(num "$(cps plex-direct-pcpar)"),
  "plex_client_haproxy_conn_per_s_parallel": $(num "$(cps haproxy-pcpar)"), "plex_client_linux_conn_per_s_direct_parallel": $(num "$(cps linux-direct-pcpar)"),
  "haproxy_conn_ratio": $(ratio "$(cps plex-router-conn)" "$(cps haproxy-conn)"), "haproxy_conn_ratio_parallel": $(ratio "$(cps plex-router-par)" "$(cps haproxy-par)"),
  "plex_client_haproxy_conn_ratio": $(ratio "$(cps plex-router-pc)" "$(cps haproxy-pc)"), "plex_client_haproxy_conn_ratio_parallel": $(ratio "$(cps plex-router-pcpar)" "$(cps haproxy-pcpar)"),
  "failover_connections": $(jf failover.json connections), "failover_completed": $(jf failover.json completed),
  "failover_resets": $(jf failover.json resets), "failover_errors": $(jf failover.json errors),
  "failover_stall_ms": $(jf failover.json max_stall_ms), "takeback_resets": $(jf failover.json resets),
  "haproxy_failover_connections": $(jf haproxy-failover.json connections), "haproxy_failover_resets": $(jf haproxy-failover.json resets),
  "haproxy_failover_errors": $(jf haproxy-failover.json errors)
}, "ports": {
  "claims_per_s_1": $(jf portbench.txt claims_per_s_1), "claims_per_s_2": $(jf portbench.txt claims_per_s_2),
  "tuple_claims_per_s_1": $(jf portbench.txt tuple_claims_per_s_1), "tuple_claims_per_s_2": $(jf portbench.txt tuple_claims_per_s_2),
  "conn_per_s_on": $(num "$PORTS_ON"), "conn_per_s_off": $(num "$PORTS_OFF"), "on_off_ratio": $(ratio "$PORTS_ON" "$PORTS_OFF")
}, "handoff": {
  "transfers": $(num "$(hon busy-s2)"), "p50_us": $(num "$(ho busy-s2 p50)"), "p99_us": $(num "$(ho busy-s2 p99)"), "max_us": $(num "$(ho busy-s2 max)"),
  "p50_us_to_s1": $(num "$(ho busy-s1 p50)"), "p99_us_to_s1": $(num "$(ho busy-s1 p99)"), "max_us_to_s1": $(num "$(ho busy-s1 max)"),
  "adaptive_p50_us": $(num "$(ho adaptive-s2 p50)"), "adaptive_p99_us": $(num "$(ho adaptive-s2 p99)"), "adaptive_max_us": $(num "$(ho adaptive-s2 max)"),
  "drain_conn_per_s": $(num "${DRAIN_RATE:-}"), "drained_connections": $(num "${DRAIN_N:-}"), "drain_resets": $(jf drain-seq.json resets)
} }
J
  echo "wrote $JSON"
fi
