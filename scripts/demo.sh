#!/usr/bin/env bash
# The main job: on a fresh machine, install what is needed, build plex, bring up the namespace
# testbed, run `plex http` on AF_XDP and drive it from a Linux client with ping, curl and wrk,
# show what happened, and tear everything down. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh

if [ "$(id -u)" != 0 ]; then
  echo "demo.sh needs root (network namespaces, XDP, AF_XDP): sudo $0" >&2
  exit 1
fi
install_deps
echo "== building plex (release)"
cargo build --release --locked -p apps 2>&1 | tail -2

PLEX=target/release/plex
LOG=$(mktemp /tmp/plx-demo.XXXXXX)
cleanup() {
  [ -n "${PID:-}" ] && kill -INT "$PID" 2>/dev/null && sleep 0.5
  scripts/testbed.sh down
}
trap cleanup EXIT

echo "== testbed: plx-client (Linux, 198.18.0.1) and plx-s1 (plex, 198.18.0.11) on a bridge"
scripts/testbed.sh down
scripts/testbed.sh up 1
echo "   the kernel of plx-s1 has no IPv4 address on plx-s1:"
ip netns exec plx-s1 ip -br addr show dev plx-s1 | sed 's/^/     /'

echo "== starting: plex http --iface plx-s1 --addr 198.18.0.11/24 --size 2048"
ip netns exec plx-s1 "$PLEX" http --iface plx-s1 --addr 198.18.0.11/24 --size 2048 --stats >"$LOG" 2>&1 &
PID=$!
for _ in $(seq 1 50); do grep -q '^plex: ' "$LOG" && break; sleep 0.1; done
sed 's/^/   /' "$LOG"

echo "== ping from the Linux client (answered by plex's own ICMP)"
ip netns exec plx-client ping -c 3 -i 0.2 198.18.0.11 | sed 's/^/   /'
echo "== curl -i http://198.18.0.11/ (headers)"
ip netns exec plx-client curl -s -D - -o /dev/null -m 5 http://198.18.0.11/ | sed 's/^/   /'
echo "== a closed port is refused by plex's RST:"
ip netns exec plx-client curl -s -m 3 http://198.18.0.11:81/ 2>&1 >/dev/null || echo "   curl exit code $? (7 = connection refused)"
echo "== wrk -t2 -c100 -d5s http://198.18.0.11/"
ip netns exec plx-client wrk -t2 -c100 -d5s http://198.18.0.11/ | sed 's/^/   /'

kill -INT "$PID"
wait "$PID" 2>/dev/null || true
PID=
echo "== plex's counters at exit"
grep -E '^(xdp|queue)' "$LOG" | sed 's/^/   /'
echo "== done: the testbed is torn down on exit"
