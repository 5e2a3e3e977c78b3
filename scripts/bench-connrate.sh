#!/usr/bin/env bash
# Focused connection-rate run (the conn-rate part of bench-cluster.sh, nothing else): plex router
# s1 over targets s2, s3 (echo) and plex direct to s2; then, unless --plex-only, HAProxy over two
# Linux echo servers and Linux direct, on the same namespaces in the same run. Each figure is
# sequential (one pinned client) and 8 parallel clients (summed), ROUNDS times (median printed).
# Prints per-stack counters (--stats) into OUT.
#
# Usage: sudo flock /tmp/plx-testbed.lock scripts/bench-connrate.sh [--rounds N] [--conns N] [--plex-only] [--out DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
CONNS=5000
ROUNDS=2
PLEXONLY=
OUT=$(mktemp -d /tmp/plx-bench-connrate.XXXXXX)
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift ;;
    --conns) CONNS=$2; shift ;;
    --plex-only) PLEXONLY=1 ;;
    --out) OUT=$2; mkdir -p "$OUT"; shift ;;
    *) echo "usage: $0 [--rounds N] [--conns N] [--plex-only] [--out DIR]" >&2; exit 2 ;;
  esac
  shift
done
[ "$(id -u)" = 0 ] || { echo "needs root" >&2; exit 1; }
PLEX=${PLEX:-target/release/plex}
LNX=${LNX:-target/release/plex-bench-linux}
V=198.18.0.102
V2=198.18.0.103
PLEX_POLL=${PLEX_POLL:-adaptive:20}
PIDS=()
REGION=/dev/shm/plex-plx-bench
cleanup() {
  for p in "${PIDS[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  scripts/testbed.sh down >/dev/null
  rm -f "$REGION"
}
trap cleanup EXIT
source scripts/bench_lib.sh
bench_testbed_up
CFG=$OUT/cluster.toml
# The second DVIPA is for the run with the router's SYN steering off: another destination, so
# that the client's TIME-WAIT ports of the first runs (60 s, ~64 000 per destination) do not
# slow it.
bench_cfg "$CFG" "$V" "$V2"
cr() { # NAME ADDR:PORT
  ip netns exec plx-client timeout 120 "$LNX" connrate "$2" --count "$CONNS" --core 0 >"$OUT/$1.txt" 2>&1 || echo "  $1 failed: $(cat "$OUT/$1.txt")"
  sed -n 's/.*: \([0-9]*\) conn\/s/\1/p' "$OUT/$1.txt"
}
crp() { # NAME ADDR:PORT
  local k pids=()
  for k in 1 2 3 4 5 6 7 8; do
    ip netns exec plx-client timeout 120 "$LNX" connrate "$2" --count $((CONNS / 4)) >"$OUT/$1.$k.txt" 2>&1 &
    pids+=($!)
  done
  wait "${pids[@]}" || echo "  $1: a client failed" >&2
  cat "$OUT/$1".[1-8].txt | sed -n 's/.*: \([0-9]*\) conn\/s/\1/p' | awk '{ s += $1 } END { printf "%d\n", s }'
}
nst() { ip netns exec plx-client nstat -az 2>/dev/null | awk '$2 != 0 && /TcpExtTCPSynRetrans|TcpRetransSegs|TcpExtTCPTimeouts|TcpAttemptFails|TcpEstabResets|TcpOutRsts|TcpExtListenDrops|TcpExtTW |TcpActiveOpens|TcpExtTCPLossProbes/ {printf "%s=%s ", $1, $2} END {print ""}'; }
med() { printf '%s\n' "$@" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
series() { # LABEL FN NAME ADDR
  local r v vals=()
  ip netns exec plx-client nstat -n >/dev/null 2>&1 || true
  for r in $(seq 1 "$ROUNDS"); do v=$($2 "$3.$r" "$4"); vals+=("$v"); sleep 0.3; done
  printf '  %-26s median %6s  (%s)   client: %s\n' "$1" "$(med "${vals[@]}")" "${vals[*]}" "$(nst)"
}

echo "== plex ($PLEX_POLL): router s1, targets s2 s3 (echo), DVIPA $V; $CONNS conns, $ROUNDS rounds"
for i in 1 2 3; do start_stack $i; done
wait_owner s1 && ready 4
series "plex router sequential" cr router-seq "$V:7"
series "plex direct sequential" cr direct-seq "198.18.0.12:7"
series "plex router 8 parallel" crp router-par "$V:7"
series "plex direct 8 parallel" crp direct-par "198.18.0.12:7"
# The same router deciding every SYN in its poll thread (the XDP program's SYN steering off).
stop_stack 1
start_stack 1 --syn-steering off
wait_owner s1 && ready 4 && sleep 0.5
series "router, SYNs by poll thread" cr router-off-seq "$V2:7"
series "router, SYNs by poll thread x8" crp router-off-par "$V2:7"
for i in 1 2 3; do kill -INT "${SPID[$i]}" 2>/dev/null || true; done
sleep 1
[ -n "$PLEXONLY" ] && { echo "  (logs and counters in $OUT)"; exit 0; }

echo "== HAProxy (TCP, round robin) in plx-s1 over Linux echo in plx-s2, plx-s3"
haproxy_up
sleep 0.3
series "haproxy sequential" cr haproxy-seq "198.18.0.21:7000"
series "linux direct sequential" cr linux-seq "198.18.0.22:7000"
series "haproxy 8 parallel" crp haproxy-par "198.18.0.21:7000"
series "linux direct 8 parallel" crp linux-par "198.18.0.22:7000"
echo "  (logs and counters in $OUT)"
