# Helpers for the real-interface tests (sourced). Every test runs inside namespaces the
# testbed creates, against 198.18.0.0/15 only, with bounded loops, and tears down on exit.

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PLEX="$here/target/release/plex"
TB="$here/scripts/testbed.sh"
LOGDIR=${PLEX_IT_LOGDIR:-$(mktemp -d /tmp/plx-it.XXXXXX)}
FAILS=0
PIDS=()

pass() { printf '  ok    %s\n' "$*"; }
fail() { printf '  FAIL  %s\n' "$*"; FAILS=$((FAILS + 1)); }
check() { # description, command...
  local d=$1; shift
  if "$@"; then pass "$d"; else fail "$d"; fi
}

cleanup() {
  for p in "${PIDS[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  ip netns list 2>/dev/null | awk '{print $1}' | grep -q '^plx-' && "$TB" down
  true
}
trap cleanup EXIT

# start_plex NS LOG ARGS... : run plex in the background, wait until it is up.
start_plex() {
  local ns=$1 log=$2; shift 2
  ip netns exec "$ns" timeout 600 "$PLEX" "$@" >"$log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 1 50); do
    grep -q "^plex: " "$log" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "plex did not start: $(cat "$log")"
  return 1
}

# stop_plex: SIGINT the last started plex and wait for its counters.
stop_plex() {
  local pid=${PIDS[-1]}
  kill -INT "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  unset 'PIDS[-1]'
}

# nft_loss NS PERCENT SRC: drop PERCENT % of IPv4 input from SRC in NS (0 removes the rule).
nft_loss() {
  local ns=$1 pct=$2 src=$3
  ip netns exec "$ns" nft delete table inet plx 2>/dev/null || true
  [ "$pct" = 0 ] && return 0
  ip netns exec "$ns" nft -f - <<NFT
table inet plx {
  chain in { type filter hook input priority 0; policy accept; ip saddr $src numgen random mod 100 < $pct drop; }
}
NFT
}

# wait_listen NS PORT: until a TCP listener is up in NS (bounded: 5 s).
wait_listen() {
  for _ in $(seq 1 50); do
    ip netns exec "$1" ss -ltnH "sport = :$2" 2>/dev/null | grep -q . && return 0
    sleep 0.1
  done
  echo "nothing listens on port $2 in $1"
  return 1
}
