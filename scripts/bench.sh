#!/usr/bin/env bash
# The bench rig (issue 4): plex on both ends vs Linux sockets on both ends, on the same direct
# veth pair, busy-polling, one pinned core per side, in the same run, alternating:
#   - TCP ping-pong latency over 1 connection (64 B, HdrHistogram .hgrm files, latency.svg),
#     with the raw AF_XDP frame ping-pong (no TCP) as the floor
#   - ping-pong over N concurrent connections (one message in flight on each)
#   - transactions per second (the ping-pong rates), single-connection bulk throughput,
#     sequential connection rate
#   - full run only: memory per established connection, 100 000 idle connections held by one
#     plex instance vs one Linux server (kernel slab + process RSS growth)
#   - the application APIs: the KV servers of apps/examples (scripts/kv.sh lists them: plex's
#     blocking API, its run-to-completion API, Linux sockets) as a user writes them (default
#     polling, one queue, unpinned) under plex-kvload from the Linux side with 50 and 1000
#     connections: requests/s and the server's CPU time per request
# Prints the median of the rounds, the ratios, and writes a JSON summary.
#
# Usage: sudo flock /tmp/plx-testbed.lock scripts/bench.sh [--quick] [--cluster] [--json FILE] [--out DIR]
#   --cluster: the distributor's benchmark instead (scripts/bench-cluster.sh: plex's router vs
#   HAProxy, failover figures; JSON key "distributor").
#   --quick: 1 round, shorter runs, no memory test (under two minutes); default: 3 rounds.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
source scripts/kv.sh

COUNT=200000
ROUNDS=3
NCONNS=32
MEMCONNS=100000
QUICK=
JSON=
OUT=$(mktemp -d /tmp/plx-bench.XXXXXX)
# Warm-up round trips, not recorded (every program: plex, Linux, floor).
WARMUP=20000
# Seconds of each KV load (per server, per client count, per round).
KV_SECS=5
# --cluster: the distributor's benchmark instead (plex's router vs HAProxy, failover).
for a in "$@"; do
  if [ "$a" = --cluster ]; then
    args=()
    for b in "$@"; do [ "$b" != --cluster ] && args+=("$b"); done
    exec "$(dirname "$0")/bench-cluster.sh" "${args[@]}"
  fi
done
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) COUNT=30000; WARMUP=5000; ROUNDS=1; QUICK=1; KV_SECS=2 ;;
    --json) JSON=$2; shift ;;
    --out) OUT=$2; mkdir -p "$OUT"; shift ;;
    *) echo "usage: $0 [--quick] [--json FILE] [--out DIR]" >&2; exit 2 ;;
  esac
  shift
done
[ "$(id -u)" = 0 ] || { echo "bench.sh needs root (namespaces, XDP)" >&2; exit 1; }
install_deps
cargo build --release --locked -p apps -p bench --bins --examples 2>&1 | tail -1
PLEX=target/release/plex
LNX=target/release/plex-bench-linux
FLOOR=target/release/plex-bench-floor
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  sleep 0.3
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  scripts/testbed.sh down
}
trap cleanup EXIT
scripts/testbed.sh down
scripts/testbed.sh up-mq 1
# The Linux servers' kernel address sits beside plex's on the server interface; XDP steers
# only plex's addresses (.2 server, .3 and .10-.13 client, .5/.6 floor) to the XSKs.
ip netns exec plx-mqs ip addr add 198.18.1.4/24 dev plx-mq1

# stop_last SIGNAL: stop the most recent background helper and forget it.
stop_last() {
  kill "-$1" "${PIDS[-1]}" 2>/dev/null || true
  wait "${PIDS[-1]}" 2>/dev/null || true
  unset 'PIDS[-1]'
}

# started LOG: wait for plex's start line; fail the benchmark with plex's message if not.
started() {
  for _ in $(seq 1 50); do
    grep -q '^plex: 198' "$1" && return 0
    grep -q '^plex: ' "$1" && break
    sleep 0.1
  done
  echo "plex did not start: $(cat "$1")" >&2
  return 1
}

plex_echo() { # log
  ip netns exec plx-mqs timeout 300 "$PLEX" echo --iface plx-mq1 --addr 198.18.1.2/24 --poll busy --cores 1 >"$1" 2>&1 &
  PIDS+=($!)
  started "$1"
}

run_plex() { # round
  plex_echo "$OUT/plex-echo.log"
  ip netns exec plx-mqc timeout 300 "$PLEX" pingpong --iface plx-mq0 --addr 198.18.1.3/24 --poll busy --cores 0 \
    --to 198.18.1.2:7 --count "$COUNT" --warmup "$WARMUP" --hgrm "$OUT/plex-$1.hgrm" >"$OUT/plex-$1.txt"
  ip netns exec plx-mqc timeout 300 "$PLEX" pingpong --iface plx-mq0 --addr 198.18.1.3/24 --poll busy --cores 0 \
    --to 198.18.1.2:7 --count "$COUNT" --warmup "$WARMUP" --conns "$NCONNS" --hgrm "$OUT/plex-n-$1.hgrm" >"$OUT/plex-n-$1.txt"
  stop_last INT
}
run_linux() { # round
  ip netns exec plx-mqs timeout 300 "$LNX" echo 198.18.1.4:7000 --core 1 >"$OUT/linux-echo.log" 2>&1 &
  PIDS+=($!)
  sleep 0.3
  ip netns exec plx-mqc timeout 300 "$LNX" pingpong 198.18.1.4:7000 --core 0 --count "$COUNT" --warmup "$WARMUP" \
    --hgrm "$OUT/linux-$1.hgrm" >"$OUT/linux-$1.txt"
  stop_last TERM
  # Many connections: a busy-polled epoll server (the one-connection server spins on read).
  ip netns exec plx-mqs timeout 300 "$LNX" echo-many 198.18.1.4:7003 --core 1 >"$OUT/linux-echo-many.log" 2>&1 &
  PIDS+=($!)
  sleep 0.3
  ip netns exec plx-mqc timeout 300 "$LNX" pingpong 198.18.1.4:7003 --core 0 --count "$COUNT" --warmup "$WARMUP" \
    --conns "$NCONNS" --hgrm "$OUT/linux-n-$1.hgrm" >"$OUT/linux-n-$1.txt"
  stop_last TERM
}

run_floor() { # round
  ip netns exec plx-mqs timeout 300 "$FLOOR" reflect plx-mq1 198.18.1.5 --core 1 >"$OUT/floor-reflect.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 1 50); do grep -q 'floor reflector' "$OUT/floor-reflect.log" && break; sleep 0.1; done
  local mac
  mac=$(ip netns exec plx-mqs cat /sys/class/net/plx-mq1/address)
  ip netns exec plx-mqc timeout 300 "$FLOOR" ping plx-mq0 198.18.1.6 198.18.1.5 "$mac" --core 0 \
    --count "$COUNT" --warmup "$WARMUP" --hgrm "$OUT/floor-$1.hgrm" >"$OUT/floor-$1.txt"
  stop_last TERM
  # The kernel releases the queue's AF_XDP binding a moment after the process dies.
  sleep 1
}

BULK=$((512 << 20))
run_bulk() { # round
  ip netns exec plx-mqs timeout 300 "$PLEX" sink --iface plx-mq1 --addr 198.18.1.2/24 --poll busy --cores 1 --once --no-hash >"$OUT/plex-sink-$1.txt" 2>&1 &
  PIDS+=($!)
  started "$OUT/plex-sink-$1.txt"
  ip netns exec plx-mqc timeout 120 "$PLEX" source --iface plx-mq0 --addr 198.18.1.3/24 --poll busy --cores 0 \
    --to 198.18.1.2:5001 --bytes "$BULK" --no-hash >/dev/null
  for _ in $(seq 1 100); do grep -q '^sink:' "$OUT/plex-sink-$1.txt" && break; sleep 0.1; done
  stop_last INT
  ip netns exec plx-mqs timeout 300 "$LNX" sink 198.18.1.4:7001 --core 1 >"$OUT/linux-sink-$1.txt" 2>&1 &
  PIDS+=($!)
  sleep 0.3
  ip netns exec plx-mqc timeout 300 "$LNX" source 198.18.1.4:7001 --bytes "$BULK" --core 0
  wait "${PIDS[-1]}" 2>/dev/null || true; unset 'PIDS[-1]'
}

# Sequential connections leave TIME-WAIT behind on the client (60 s): a round stays far below
# one source address's ~28 000 ephemeral ports (Linux's connect() slows down badly as they
# fill), and the Linux client may reuse TIME-WAIT ports of earlier rounds (tcp_tw_reuse, in
# the client namespace only). plex's client starts afresh each round.
CONNS=5000
ip netns exec plx-mqc sysctl -qw net.ipv4.tcp_tw_reuse=1
run_connrate() { # round
  plex_echo "$OUT/plex-echo2.log"
  ip netns exec plx-mqc timeout 120 "$PLEX" connrate --iface plx-mq0 --addr 198.18.1.3/24 --poll busy --cores 0 \
    --to 198.18.1.2:7 --count "$CONNS" >"$OUT/plex-connrate-$1.txt"
  stop_last INT
  ip netns exec plx-mqs timeout 300 "$LNX" echo 198.18.1.4:7002 --core 1 >"$OUT/linux-echo2.log" 2>&1 &
  PIDS+=($!)
  sleep 0.3
  ip netns exec plx-mqc timeout 120 "$LNX" connrate 198.18.1.4:7002 --count "$CONNS" --core 0 >"$OUT/linux-connrate-$1.txt"
  stop_last TERM
}

# Memory per connection: the plex client (`plex hold`, 5 source addresses: ~28 000 ephemeral
# ports each) opens MEMCONNS idle connections to the server under test; the growth of the
# server's RSS plus the kernel's socket slabs (the Linux sockets live there, plex's in its
# RSS), divided by the connections. The slabs are the objects a socket descriptor holds: TCP
# (struct tcp_sock), sock_inode_cache, dentry and filp, active objects times object size, from
# /proc/slabinfo (the machine-wide Slab total moves by more than the measurement when
# unrelated caches or dying sockets of earlier runs shrink). The plex client's own memory is
# user memory of another process and counts in neither.
slab() { awk '$1 == "TCP" || $1 == "sock_inode_cache" || $1 == "dentry" || $1 == "filp" { s += $2 * $4 } END { print s }' /proc/slabinfo; }
rss_of() { # pid of a `timeout` wrapper: the RSS of its child
  awk '/^VmRSS:/ { print $2 * 1024 }' "/proc/$(pgrep -P "$1")/status"
}
HOLD_SRC="--addr 198.18.1.3/24 --extra-addr 198.18.1.10 --extra-addr 198.18.1.11 --extra-addr 198.18.1.12 --extra-addr 198.18.1.13"
hold() { # log, --to arguments...
  local log=$1; shift
  # shellcheck disable=SC2086
  ip netns exec plx-mqc timeout 300 "$PLEX" hold --iface plx-mq0 $HOLD_SRC --poll busy --cores 0 "$@" \
    --count "$MEMCONNS" --secs 120 >"$log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 1 1200); do grep -q '^hold:' "$log" && break; sleep 0.1; done
  grep -q '^hold: [0-9]* established' "$log" || { echo "plex hold failed: $(cat "$log")" >&2; return 1; }
}
run_mem() {
  local r0 r1 s0 s1
  plex_echo "$OUT/plex-echo-mem.log"
  local server=${PIDS[-1]}
  sleep 0.5
  r0=$(rss_of "$server"); s0=$(slab)
  hold "$OUT/plex-hold.txt" --to 198.18.1.2:7
  sleep 1
  r1=$(rss_of "$server"); s1=$(slab)
  echo "plex server, $MEMCONNS connections: RSS +$(( (r1 - r0) >> 10 )) KiB, kernel socket slabs +$(( (s1 - s0) >> 10 )) KiB" | tee "$OUT/plex-mem.txt"
  echo "mem_per_conn $(( (r1 - r0 + s1 - s0) / MEMCONNS ))" >>"$OUT/plex-mem.txt"
  stop_last INT  # the client
  stop_last INT  # the server
  # Linux: RLIMIT_NOFILE's hard limit (20 000 here) cannot be raised without
  # CAP_SYS_RESOURCE, so the sockets are spread over K server processes on K ports.
  local k n to=() servers=()
  k=$(( (MEMCONNS + 15999) / 16000 ))
  n=$(( MEMCONNS / k ))
  s0=$(slab); r0=0
  for i in $(seq 1 "$k"); do
    ip netns exec plx-mqs timeout 300 "$LNX" hold-server "198.18.1.4:$((7010 + i))" --count "$n" --core 1 >"$OUT/linux-hold-$i.txt" 2>&1 &
    PIDS+=($!); servers+=($!); to+=(--to "198.18.1.4:$((7010 + i))")
  done
  sleep 0.5
  for p in "${servers[@]}"; do r0=$(( r0 + $(rss_of "$p") )); done
  MEMCONNS=$(( n * k )) hold "$OUT/linux-hold.txt" "${to[@]}"
  sleep 1
  s1=$(slab); r1=0
  for p in "${servers[@]}"; do r1=$(( r1 + $(rss_of "$p") )); done
  echo "Linux servers ($k processes), $((n * k)) connections: RSS +$(( (r1 - r0) >> 10 )) KiB, kernel socket slabs +$(( (s1 - s0) >> 10 )) KiB" | tee "$OUT/linux-mem.txt"
  echo "mem_per_conn $(( (r1 - r0 + s1 - s0) / (n * k) ))" >>"$OUT/linux-mem.txt"
  # Servers first, while the client still answers their FINs: otherwise 100 000 orphaned
  # sockets retransmit FINs to nobody for minutes (and distort the next run's slab figures).
  local client=${PIDS[-1]}
  unset 'PIDS[-1]'
  for _ in "${servers[@]}"; do stop_last TERM; done
  sleep 2
  PIDS+=("$client")
  stop_last INT
}

# The application APIs: every KV server of scripts/kv.sh (plex ones on plex's address .2,
# Linux on the kernel address .4), 50 then 1000 clients; kvload checks every reply.
KV_CLIENTS="50 1000"
run_api() { # round
  local name c
  for name in $(kv_names); do
    kv_start "$name" plx-mqs plx-mq1 198.18.1.2/24 198.18.1.4 1 "$OUT/kv-$name-$1.log" >&2 || exit 1
    for c in $KV_CLIENTS; do
      kv_load plx-mqc "$c" "$KV_SECS" "$OUT/kv-$name-$c-$1.json" \
        || { echo "plex-kvload failed against kv_$name with $c clients (see $OUT/kv-$name-$c-$1.json.err)" >&2; exit 1; }
    done
    kv_stop
  done
}

for r in $(seq 1 "$ROUNDS"); do
  echo "== round $r/$ROUNDS: plex <-> plex ($COUNT round trips of 64 bytes; 1 connection, then $NCONNS)"
  run_plex "$r"; cat "$OUT/plex-$r.txt" "$OUT/plex-n-$r.txt"
  echo "== round $r/$ROUNDS: Linux <-> Linux (busy-polling sockets; 1 connection, then $NCONNS)"
  run_linux "$r"; cat "$OUT/linux-$r.txt" "$OUT/linux-n-$r.txt"
  echo "== round $r/$ROUNDS: raw AF_XDP floor (no TCP)"
  run_floor "$r"; cat "$OUT/floor-$r.txt"
  echo "== round $r/$ROUNDS: bulk, one connection, $((BULK >> 20)) MiB (plex, then Linux)"
  run_bulk "$r"; grep -h '^sink:' "$OUT/plex-sink-$r.txt" "$OUT/linux-sink-$r.txt"
  echo "== round $r/$ROUNDS: connection rate, $CONNS sequential connections (plex, then Linux)"
  run_connrate "$r"; cat "$OUT/plex-connrate-$r.txt" "$OUT/linux-connrate-$r.txt"
  echo "== round $r/$ROUNDS: application APIs, KV servers ($(kv_names | tr '\n' ' ')) with $KV_CLIENTS clients, ${KV_SECS} s each"
  run_api "$r"
done
if [ -z "$QUICK" ]; then
  echo "== memory per connection: $MEMCONNS idle connections held open (plex server, then Linux)"
  run_mem
fi

# median FILE-PATTERN EXTRACTOR: the median over the rounds of one figure.
median() { # sed-expression files...
  local expr=$1; shift
  sed -n "$expr" "$@" | sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "null"; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
P50='s/.* p50 \([0-9.]*\) us.*/\1/p'
P99='s/.* p99 \([0-9.]*\) us.*/\1/p'
TPS='s/.* tps \([0-9.]*\).*/\1/p'
GBPS='s/^sink:.*(\([0-9.]*\) Mbit\/s).*/\1/p'
CPS='s/.*: \([0-9]*\) conn\/s.*/\1/p'
rounds() { for r in $(seq 1 "$ROUNDS"); do echo "$OUT/$1-$r.txt"; done; }
pp50=$(median "$P50" $(rounds plex)); pp99=$(median "$P99" $(rounds plex))
lp50=$(median "$P50" $(rounds linux)); lp99=$(median "$P99" $(rounds linux))
fp50=$(median "$P50" $(rounds floor)); fp99=$(median "$P99" $(rounds floor))
pn50=$(median "$P50" $(rounds plex-n)); pn99=$(median "$P99" $(rounds plex-n))
ln50=$(median "$P50" $(rounds linux-n)); ln99=$(median "$P99" $(rounds linux-n))
ptps=$(median "$TPS" $(rounds plex)); ltps=$(median "$TPS" $(rounds linux))
ptpsn=$(median "$TPS" $(rounds plex-n)); ltpsn=$(median "$TPS" $(rounds linux-n))
gbps() { median "$GBPS" "$@" | awk '{ if ($1 == "null") print "null"; else printf "%.3f", $1 / 1000 }'; }
pbulk=$(gbps $(rounds plex-sink)); lbulk=$(gbps $(rounds linux-sink))
pcps=$(median "$CPS" $(rounds plex-connrate)); lcps=$(median "$CPS" $(rounds linux-connrate))
# Rounds of a KV run are files kv-NAME-CLIENTS-ROUND.json.
rounds_json() { for r in $(seq 1 "$ROUNDS"); do echo "$OUT/$1-$r.json"; done; }
kv_med() { median "s/.*\"$3\":\([^,}]*\).*/\1/p" $(rounds_json "kv-$1-$2"); }
API_JSON=
for name in $(kv_names); do
  for c in $KV_CLIENTS; do
    API_JSON+="\"${name}_rps_$c\": $(kv_med "$name" "$c" rps), \"${name}_cpu_us_$c\": $(kv_med "$name" "$c" server_cpu_us_per_req), "
  done
done
pmem=null; lmem=null
if [ -z "$QUICK" ]; then
  pmem=$(sed -n 's/^mem_per_conn //p' "$OUT/plex-mem.txt"); lmem=$(sed -n 's/^mem_per_conn //p' "$OUT/linux-mem.txt")
fi
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a != "null" && b != "null" && b > 0) printf "%.2f", a / b; else print "null" }'; }
echo
echo "Medians of $ROUNDS round(s); ratios of medians."
printf '%-30s %10s %10s %12s\n' "TCP ping-pong, 64 B" "p50 (us)" "p99 (us)" "trans/s"
printf '%-30s %10s %10s %12s\n' "plex <-> plex" "$pp50" "$pp99" "$ptps"
printf '%-30s %10s %10s %12s\n' "Linux <-> Linux" "$lp50" "$lp99" "$ltps"
printf '%-30s %10s %10s %12s\n' "raw AF_XDP floor" "$fp50" "$fp99" ""
printf '%-30s %10s %10s %12s\n' "ratio plex / Linux" "$(ratio "$pp50" "$lp50")" "$(ratio "$pp99" "$lp99")" "$(ratio "$ptps" "$ltps")"
printf '%-30s %10s %10s\n' "ratio plex / floor" "$(ratio "$pp50" "$fp50")" "$(ratio "$pp99" "$fp99")"
printf '%-30s %10s %10s %12s\n' "plex, $NCONNS connections" "$pn50" "$pn99" "$ptpsn"
printf '%-30s %10s %10s %12s\n' "Linux, $NCONNS connections" "$ln50" "$ln99" "$ltpsn"
printf '%-30s %10s %10s %12s\n' "ratio plex / Linux" "$(ratio "$pn50" "$ln50")" "$(ratio "$pn99" "$ln99")" "$(ratio "$ptpsn" "$ltpsn")"
printf '\n%-30s %12s %12s %8s\n' "" "plex" "Linux" "ratio"
printf '%-30s %12s %12s %8s\n' "bulk Gbit/s (1 conn)" "$pbulk" "$lbulk" "$(ratio "$pbulk" "$lbulk")"
printf '%-30s %12s %12s %8s\n' "connections/s (sequential)" "$pcps" "$lcps" "$(ratio "$pcps" "$lcps")"
if [ -z "$QUICK" ]; then
  printf '%-30s %12s %12s %8s\n' "bytes per idle connection" "$pmem" "$lmem" "$(ratio "$pmem" "$lmem")"
else
  echo "(memory per connection: full run only)"
fi
printf '\n%-30s %12s %12s %12s %12s\n' "KV server (app API)" "req/s 50" "req/s 1000" "CPU us/req 50" "CPU us/req 1000"
for name in $(kv_names); do
  printf '%-30s %12s %12s %12s %12s\n' "kv_$name ($(kv_kind "$name"))" "$(kv_med "$name" 50 rps)" "$(kv_med "$name" 1000 rps)" \
    "$(kv_med "$name" 50 server_cpu_us_per_req)" "$(kv_med "$name" 1000 server_cpu_us_per_req)"
done
r=$ROUNDS
python3 scripts/plot_hgrm.py "$OUT/latency.svg" "plex=$OUT/plex-$r.hgrm" "Linux=$OUT/linux-$r.hgrm" "AF_XDP floor=$OUT/floor-$r.hgrm" \
  "plex $NCONNS conns=$OUT/plex-n-$r.hgrm" "Linux $NCONNS conns=$OUT/linux-n-$r.hgrm" \
  && echo "latency percentile plot (last round): $OUT/latency.svg"
echo "(.hgrm files and logs in $OUT)"
if [ -n "$JSON" ]; then
  cat >"$JSON" <<J
{
  "rounds": $ROUNDS, "conns_n": $NCONNS, "mem_conns": $([ -z "$QUICK" ] && echo "$MEMCONNS" || echo null),
  "plex": { "rtt_p50_us": $pp50, "rtt_p99_us": $pp99, "tps": $ptps, "rtt_n_p50_us": $pn50, "rtt_n_p99_us": $pn99, "tps_n": $ptpsn,
            "bulk_gbps": $pbulk, "conn_per_s": $pcps, "mem_per_conn_bytes": $pmem },
  "linux": { "rtt_p50_us": $lp50, "rtt_p99_us": $lp99, "tps": $ltps, "rtt_n_p50_us": $ln50, "rtt_n_p99_us": $ln99, "tps_n": $ltpsn,
             "bulk_gbps": $lbulk, "conn_per_s": $lcps, "mem_per_conn_bytes": $lmem },
  "floor": { "rtt_p50_us": $fp50, "rtt_p99_us": $fp99 },
  "api": { ${API_JSON}"kv_seconds": $KV_SECS },
  "ratios": { "plex_linux_rtt_p50": $(ratio "$pp50" "$lp50"), "plex_linux_rtt_p99": $(ratio "$pp99" "$lp99"),
              "plex_floor_rtt_p50": $(ratio "$pp50" "$fp50"), "plex_linux_tps": $(ratio "$ptps" "$ltps"),
              "plex_linux_tps_n": $(ratio "$ptpsn" "$ltpsn"), "plex_linux_bulk": $(ratio "$pbulk" "$lbulk"),
              "plex_linux_conn_per_s": $(ratio "$pcps" "$lcps"), "plex_linux_mem_per_conn": $(ratio "$pmem" "$lmem") }
}
J
  python3 -m json.tool "$JSON" >/dev/null && echo "wrote $JSON"
fi
