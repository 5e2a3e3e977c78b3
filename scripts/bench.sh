#!/usr/bin/env bash
# Side-by-side round-trip latency: plex on both ends vs Linux sockets on both ends, on the
# same direct veth pair, busy-polling, one pinned core per side, in the same run, alternating.
# Prints percentiles and ratios, writes .hgrm files and a JSON summary.
#
# Usage: sudo scripts/bench.sh [--quick] [--json FILE] [--out DIR]
# This is the first part of the bench rig (issue 4): ping-pong latency (plex, Linux, and the
# raw AF_XDP floor); throughput, transactions, connection rate and memory are still to come.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh

COUNT=200000
ROUNDS=2
JSON=
OUT=$(mktemp -d /tmp/plx-bench.XXXXXX)
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) COUNT=30000; ROUNDS=1 ;;
    --json) JSON=$2; shift ;;
    --out) OUT=$2; mkdir -p "$OUT"; shift ;;
    *) echo "usage: $0 [--quick] [--json FILE] [--out DIR]" >&2; exit 2 ;;
  esac
  shift
done
[ "$(id -u)" = 0 ] || { echo "bench.sh needs root (namespaces, XDP)" >&2; exit 1; }
install_deps
cargo build --release --locked -p apps -p bench 2>&1 | tail -1
PLEX=target/release/plex
LNX=target/release/plex-bench-linux
FLOOR=target/release/plex-bench-floor
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  sleep 0.3
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  scripts/testbed.sh down
}
trap cleanup EXIT
scripts/testbed.sh down
scripts/testbed.sh up-mq 1
# The Linux server's kernel address sits beside plex's on the server interface; XDP steers
# only plex's addresses (.2 server, .3 client) to plex.
ip netns exec plx-mqs ip addr add 198.18.1.4/24 dev plx-mq1

p50() { sed -n 's/.* p50 \([0-9.]*\) us.*/\1/p' "$1"; }
p99() { sed -n 's/.* p99 \([0-9.]*\) us.*/\1/p' "$1"; }

run_plex() { # round
  ip netns exec plx-mqs timeout 300 "$PLEX" echo --iface plx-mq1 --addr 198.18.1.2/24 --poll busy --cores 1 >"$OUT/plex-echo.log" 2>&1 &
  PIDS+=($!)
  started "$OUT/plex-echo.log"
  ip netns exec plx-mqc timeout 300 "$PLEX" pingpong --iface plx-mq0 --addr 198.18.1.3/24 --poll busy --cores 0 \
    --to 198.18.1.2:7 --count "$COUNT" --warmup 2000 --hgrm "$OUT/plex-$1.hgrm" >"$OUT/plex-$1.txt"
  kill -INT "${PIDS[-1]}" 2>/dev/null || true; wait "${PIDS[-1]}" 2>/dev/null || true; unset 'PIDS[-1]'
}
run_linux() { # round
  ip netns exec plx-mqs timeout 300 "$LNX" echo 198.18.1.4:7000 --core 1 >"$OUT/linux-echo.log" 2>&1 &
  PIDS+=($!)
  sleep 0.3
  ip netns exec plx-mqc timeout 300 "$LNX" pingpong 198.18.1.4:7000 --core 0 --count "$COUNT" --warmup 2000 \
    --hgrm "$OUT/linux-$1.hgrm" >"$OUT/linux-$1.txt"
  kill -TERM "${PIDS[-1]}" 2>/dev/null || true; wait "${PIDS[-1]}" 2>/dev/null || true; unset 'PIDS[-1]'
}

run_floor() { # round
  ip netns exec plx-mqs timeout 300 "$FLOOR" reflect plx-mq1 198.18.1.5 --core 1 >"$OUT/floor-reflect.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 1 50); do grep -q 'floor reflector' "$OUT/floor-reflect.log" && break; sleep 0.1; done
  local mac
  mac=$(ip netns exec plx-mqs cat /sys/class/net/plx-mq1/address)
  ip netns exec plx-mqc timeout 300 "$FLOOR" ping plx-mq0 198.18.1.6 198.18.1.5 "$mac" --core 0 \
    --count "$COUNT" --warmup 2000 --hgrm "$OUT/floor-$1.hgrm" >"$OUT/floor-$1.txt"
  kill -TERM "${PIDS[-1]}" 2>/dev/null || true; wait "${PIDS[-1]}" 2>/dev/null || true; unset 'PIDS[-1]'
  # The kernel releases the queue's AF_XDP binding a moment after the process dies.
  sleep 1
}

# start_or_fail LOG: wait for plex's start line; fail the benchmark with plex's message if not.
started() {
  for _ in $(seq 1 50); do
    grep -q '^plex: 198' "$1" && return 0
    grep -q '^plex: ' "$1" && break
    sleep 0.1
  done
  echo "plex did not start: $(cat "$1")" >&2
  return 1
}

BULK=$((512 << 20))
run_bulk() { # round
  ip netns exec plx-mqs timeout 300 "$PLEX" sink --iface plx-mq1 --addr 198.18.1.2/24 --poll busy --cores 1 --once --no-hash >"$OUT/plex-sink-$1.txt" 2>&1 &
  PIDS+=($!)
  started "$OUT/plex-sink-$1.txt"
  ip netns exec plx-mqc timeout 120 "$PLEX" source --iface plx-mq0 --addr 198.18.1.3/24 --poll busy --cores 0 \
    --to 198.18.1.2:5001 --bytes "$BULK" --no-hash >/dev/null
  for _ in $(seq 1 100); do grep -q '^sink:' "$OUT/plex-sink-$1.txt" && break; sleep 0.1; done
  kill -INT "${PIDS[-1]}" 2>/dev/null || true; wait "${PIDS[-1]}" 2>/dev/null || true; unset 'PIDS[-1]'
  ip netns exec plx-mqs timeout 300 "$LNX" sink 198.18.1.4:7001 --core 1 >"$OUT/linux-sink-$1.txt" 2>&1 &
  PIDS+=($!)
  sleep 0.3
  ip netns exec plx-mqc timeout 300 "$LNX" source 198.18.1.4:7001 --bytes "$BULK" --core 0
  wait "${PIDS[-1]}" 2>/dev/null || true; unset 'PIDS[-1]'
}

CONNS=$((COUNT / 6))
run_connrate() { # round
  ip netns exec plx-mqs timeout 300 "$PLEX" echo --iface plx-mq1 --addr 198.18.1.2/24 --poll busy --cores 1 >"$OUT/plex-echo2.log" 2>&1 &
  PIDS+=($!)
  started "$OUT/plex-echo2.log"
  ip netns exec plx-mqc timeout 120 "$PLEX" connrate --iface plx-mq0 --addr 198.18.1.3/24 --poll busy --cores 0 \
    --to 198.18.1.2:7 --count "$CONNS" >"$OUT/plex-connrate-$1.txt"
  kill -INT "${PIDS[-1]}" 2>/dev/null || true; wait "${PIDS[-1]}" 2>/dev/null || true; unset 'PIDS[-1]'
  ip netns exec plx-mqs timeout 300 "$LNX" echo 198.18.1.4:7002 --core 1 >"$OUT/linux-echo2.log" 2>&1 &
  PIDS+=($!)
  sleep 0.3
  ip netns exec plx-mqc timeout 120 "$LNX" connrate 198.18.1.4:7002 --count "$CONNS" --core 0 >"$OUT/linux-connrate-$1.txt"
  kill -TERM "${PIDS[-1]}" 2>/dev/null || true; wait "${PIDS[-1]}" 2>/dev/null || true; unset 'PIDS[-1]'
}

for r in $(seq 1 "$ROUNDS"); do
  echo "== round $r/$ROUNDS: plex <-> plex ($COUNT round trips of 64 bytes)"
  run_plex "$r"; cat "$OUT/plex-$r.txt"
  echo "== round $r/$ROUNDS: Linux <-> Linux (busy-polling sockets)"
  run_linux "$r"; cat "$OUT/linux-$r.txt"
  echo "== round $r/$ROUNDS: raw AF_XDP floor (no TCP)"
  run_floor "$r"; cat "$OUT/floor-$r.txt"
  echo "== round $r/$ROUNDS: bulk, one connection, $((BULK >> 20)) MiB (plex, then Linux)"
  run_bulk "$r"; grep -h '^sink:' "$OUT/plex-sink-$r.txt" "$OUT/linux-sink-$r.txt"
  echo "== round $r/$ROUNDS: connection rate, $CONNS sequential connections (plex, then Linux)"
  run_connrate "$r"; cat "$OUT/plex-connrate-$r.txt" "$OUT/linux-connrate-$r.txt"
done

r=$ROUNDS
pp50=$(p50 "$OUT/plex-$r.txt"); pp99=$(p99 "$OUT/plex-$r.txt")
lp50=$(p50 "$OUT/linux-$r.txt"); lp99=$(p99 "$OUT/linux-$r.txt")
fp50=$(p50 "$OUT/floor-$r.txt"); fp99=$(p99 "$OUT/floor-$r.txt")
tps() { sed -n 's/.* tps \([0-9.]*\).*/\1/p' "$1"; }
gbps() { sed -n 's/^sink:.*(\([0-9.]*\) Mbit\/s).*/\1/p' "$1" | awk '{ printf "%.3f", $1 / 1000 }'; }
ptps=$(tps "$OUT/plex-$r.txt"); ltps=$(tps "$OUT/linux-$r.txt")
pbulk=$(gbps "$OUT/plex-sink-$r.txt"); lbulk=$(gbps "$OUT/linux-sink-$r.txt")
cps() { sed -n 's/.*: \([0-9]*\) conn\/s.*/\1/p' "$1"; }
pcps=$(cps "$OUT/plex-connrate-$r.txt"); lcps=$(cps "$OUT/linux-connrate-$r.txt")
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
echo
printf '%-28s %10s %10s\n' "TCP ping-pong, 64 B" "p50 (us)" "p99 (us)"
printf '%-28s %10s %10s\n' "plex <-> plex" "$pp50" "$pp99"
printf '%-28s %10s %10s\n' "Linux <-> Linux" "$lp50" "$lp99"
printf '%-28s %10s %10s\n' "raw AF_XDP floor" "$fp50" "$fp99"
printf '%-28s %10s %10s\n' "ratio plex / Linux" "$(ratio "$pp50" "$lp50")" "$(ratio "$pp99" "$lp99")"
printf '%-28s %10s %10s\n' "ratio plex / floor" "$(ratio "$pp50" "$fp50")" "$(ratio "$pp99" "$fp99")"
printf '\n%-28s %12s %12s %8s\n' "" "plex" "Linux" "ratio"
printf '%-28s %12s %12s %8s\n' "transactions/s (1 conn)" "$ptps" "$ltps" "$(ratio "$ptps" "$ltps")"
printf '%-28s %12s %12s %8s\n' "bulk Gbit/s (1 conn)" "$pbulk" "$lbulk" "$(ratio "$pbulk" "$lbulk")"
printf '%-28s %12s %12s %8s\n' "connections/s (sequential)" "$pcps" "$lcps" "$(ratio "$pcps" "$lcps")"
python3 scripts/plot_hgrm.py "$OUT/latency.svg" "plex=$OUT/plex-$r.hgrm" "Linux=$OUT/linux-$r.hgrm" "AF_XDP floor=$OUT/floor-$r.hgrm" \
  && echo "latency percentile plot: $OUT/latency.svg"
echo "(.hgrm files in $OUT; memory per connection is not measured yet)"
if [ -n "$JSON" ]; then
  cat >"$JSON" <<J
{
  "plex": { "rtt_p50_us": $pp50, "rtt_p99_us": $pp99, "tps": ${ptps:-null}, "bulk_gbps": ${pbulk:-null}, "conn_per_s": ${pcps:-null} },
  "linux": { "rtt_p50_us": $lp50, "rtt_p99_us": $lp99, "tps": ${ltps:-null}, "bulk_gbps": ${lbulk:-null}, "conn_per_s": ${lcps:-null} },
  "floor": { "rtt_p50_us": $fp50, "rtt_p99_us": $fp99 },
  "ratios": { "plex_linux_rtt_p50": $(ratio "$pp50" "$lp50"), "plex_linux_rtt_p99": $(ratio "$pp99" "$lp99"), "plex_floor_rtt_p50": $(ratio "$pp50" "$fp50") }
}
J
  echo "wrote $JSON"
fi
