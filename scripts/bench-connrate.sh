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
scripts/testbed.sh down >/dev/null
scripts/testbed.sh up 3 >/dev/null
# Every connection leaves a TIME-WAIT (60 s) on the client, and connect() takes the even ports of
# the ephemeral range first: past ~14 000 connections to one destination the port search itself
# slows every client down (3rd rounds ran 3x slower, Linux's included). A wider range keeps the
# rounds comparable; all systems measured get the same.
ip netns exec plx-client sysctl -qw net.ipv4.ip_local_port_range="1024 65535"
# ... but not over the ports the client namespace serves on (the echo server of the ports
# section listens on 198.18.0.1:7000: an outgoing connection left on it made that bind fail).
ip netns exec plx-client sysctl -qw net.ipv4.ip_local_reserved_ports="7000-7010,8080"
CFG=$OUT/cluster.toml
sed -e "s|^name = \"plx-testbed\"|name = \"plx-bench\"|" -e "s|^region = .*|region = \"$REGION\"|" coupling/src/testbed.toml \
  | awk '/^\[\[dvipa\]\]/ { exit } { print }' >"$CFG"
cat >>"$CFG" <<TOML
[[dvipa]]
address = "$V/24"
primary = "s1"
backups = [{ stack = "s2", rank = 20 }]
[dvipa.distribute]
ports = [7]
targets = ["s2", "s3"]
method = "round_robin"

# The same, for the run with the router's SYN steering off: another destination, so that the
# client's TIME-WAIT ports of the first runs (60 s, ~64 000 per destination) do not slow it.
[[dvipa]]
address = "$V2/24"
primary = "s1"
backups = [{ stack = "s2", rank = 20 }]
[dvipa.distribute]
ports = [7]
targets = ["s2", "s3"]
method = "round_robin"
TOML
rm -f "$REGION"
declare -A SPID
start_stack() { # I [EXTRA ARGS...]
  local i=$1; shift
  set -- "$i" "$@"
  ip netns exec "plx-s$1" "$PLEX" run --config "$CFG" --stack "s$1" --poll "$PLEX_POLL" --stats ${PLEX_ARGS:-} "${@:2}" echo >>"$OUT/s$1.log" 2>&1 &
  SPID[$1]=$!
  PIDS+=($!)
  for _ in $(seq 1 50); do grep -q "^plex: stack s$1" "$OUT/s$1.log" 2>/dev/null && return 0; sleep 0.1; done
  echo "stack s$1 did not start"; return 1
}
owner() { "$PLEX" ctl --config "$CFG" show dvipas 2>/dev/null | awk -v a="$V" 'index($1, a "/") == 1 {print $3}'; }
wait_owner() { for _ in $(seq 1 200); do [ "$(owner)" = "$1" ] && return 0; sleep 0.05; done; return 1; }
ready() { for _ in $(seq 1 100); do [ "$("$PLEX" ctl --config "$CFG" show dpt 2>/dev/null | grep -c ' ready ')" -ge 4 ] && return 0; sleep 0.05; done; return 1; }
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
wait_owner s1 && ready
series "plex router sequential" cr router-seq "$V:7"
series "plex direct sequential" cr direct-seq "198.18.0.12:7"
series "plex router 8 parallel" crp router-par "$V:7"
series "plex direct 8 parallel" crp direct-par "198.18.0.12:7"
# The same router deciding every SYN in its poll thread (the XDP program's SYN steering off).
kill -INT "${SPID[1]}" 2>/dev/null || true
for _ in $(seq 1 50); do kill -0 "${SPID[1]}" 2>/dev/null || break; sleep 0.1; done
start_stack 1 --syn-steering off
wait_owner s1 && ready && sleep 0.5
series "router, SYNs by poll thread" cr router-off-seq "$V2:7"
series "router, SYNs by poll thread x8" crp router-off-par "$V2:7"
for i in 1 2 3; do kill -INT "${SPID[$i]}" 2>/dev/null || true; done
sleep 1
[ -n "$PLEXONLY" ] && { echo "  (logs and counters in $OUT)"; exit 0; }

echo "== HAProxy (TCP, round robin) in plx-s1 over Linux echo in plx-s2, plx-s3"
ip netns exec plx-s1 ip addr add 198.18.0.21/24 dev plx-s1
ip netns exec plx-s2 ip addr add 198.18.0.22/24 dev plx-s2
ip netns exec plx-s3 ip addr add 198.18.0.23/24 dev plx-s3
for i in 2 3; do
  ip netns exec "plx-s$i" timeout 600 "$LNX" echo-many "198.18.0.2$i:7000" --block >"$OUT/linux-echo-$i.log" 2>&1 &
  PIDS+=($!)
done
cat >"$OUT/haproxy.cfg" <<HA
global
  maxconn 8000
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend f
  bind 198.18.0.21:7000
  default_backend b
backend b
  balance roundrobin
  server s2 198.18.0.22:7000
  server s3 198.18.0.23:7000
HA
ip netns exec plx-s1 haproxy -f "$OUT/haproxy.cfg" -db >"$OUT/haproxy.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 50); do ip netns exec plx-s1 ss -ltn | grep -q 198.18.0.21:7000 && break; sleep 0.1; done
sleep 0.3
series "haproxy sequential" cr haproxy-seq "198.18.0.21:7000"
series "linux direct sequential" cr linux-seq "198.18.0.22:7000"
series "haproxy 8 parallel" crp haproxy-par "198.18.0.21:7000"
series "linux direct 8 parallel" crp linux-par "198.18.0.22:7000"
echo "  (logs and counters in $OUT)"
