#!/usr/bin/env bash
# The namespace testbed: a Linux client host and N plex hosts on one L2 segment (a bridge in
# its own namespace), addresses in 198.18.0.0/24, no default route anywhere.
#
#   plx-client  198.18.0.1/24 on plx-c      (Linux stack: curl, wrk, socat, ping ...)
#   plx-sI      interface plx-sI, NO kernel address: plex takes 198.18.0.(10+I) on it
#   plx-br      bridge plxbr0 joining plx-c-br and plx-sI-br
#
# Usage: scripts/testbed.sh up [N] [QUEUES] | down | status
# Idempotent: `up` twice is fine, `down` with nothing up is fine.
set -euo pipefail

N=${2:-1}
QUEUES=${3:-1}
BR_NS=plx-br

ns_exists() { ip netns list | awk '{print $1}' | grep -qx "$1"; }

quiet_offloads() {
  local ns=$1 dev=$2
  ip netns exec "$ns" ethtool -K "$dev" tso off gso off gro off tx-checksumming off rx-checksumming off >/dev/null 2>&1 || true
}

add_port() { # name ns queues
  local name=$1 ns=$2 q=$3
  ip link add "$name" numtxqueues "$q" numrxqueues "$q" type veth peer name "$name-br" numtxqueues "$q" numrxqueues "$q"
  ip link set "$name" netns "$ns"
  ip link set "$name-br" netns "$BR_NS"
  ip netns exec "$BR_NS" ip link set "$name-br" master plxbr0 up
  ip netns exec "$ns" ip link set "$name" up
  ip netns exec "$ns" ip link set lo up
  quiet_offloads "$ns" "$name"
  quiet_offloads "$BR_NS" "$name-br"
}

up() {
  if ! ns_exists "$BR_NS"; then
    ip netns add "$BR_NS"
    ip netns exec "$BR_NS" ip link add plxbr0 type bridge
    ip netns exec "$BR_NS" ip link set plxbr0 type bridge forward_delay 0 stp_state 0 ageing_time 3000
    ip netns exec "$BR_NS" ip link set plxbr0 up
    ip netns exec "$BR_NS" ip link set lo up
  fi
  if ! ns_exists plx-client; then
    ip netns add plx-client
    add_port plx-c plx-client 1
    ip netns exec plx-client ip addr add 198.18.0.1/24 dev plx-c
  fi
  for i in $(seq 1 "$N"); do
    if ! ns_exists "plx-s$i"; then
      ip netns add "plx-s$i"
      add_port "plx-s$i" "plx-s$i" "$QUEUES"
    fi
  done
}

down() {
  for ns in $(ip netns list | awk '{print $1}' | grep -E '^plx-' || true); do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  done
}

status() {
  for ns in $(ip netns list | awk '{print $1}' | grep -E '^plx-' || true); do
    echo "== $ns"
    ip netns exec "$ns" ip -br addr
  done
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up [N] [QUEUES] | down | status" >&2; exit 2 ;;
esac
