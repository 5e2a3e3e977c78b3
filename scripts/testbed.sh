#!/usr/bin/env bash
# The namespace testbed: a Linux client host and N plex hosts on one L2 segment (a bridge in
# its own namespace), addresses in 198.18.0.0/24, no default route anywhere.
#
#   plx-client  198.18.0.1/24 on plx-c      (Linux stack: curl, wrk, socat, ping ...)
#   plx-sI      interface plx-sI, NO kernel address: plex takes 198.18.0.(10+I) on it
#   plx-br      bridge plxbr0 joining plx-c-br and plx-sI-br
#
# Usage: scripts/testbed.sh up [N] [Q1,Q2,...] | up-mq [QUEUES] | down | status | bridge-nf
# Idempotent: `up` twice is fine, `down` with nothing up is fine.
set -euo pipefail

N=${2:-1}
# Queues per plex host, comma-separated (host I gets the I-th entry, default 1).
QUEUES=${3:-1}
queues_of() { echo "$QUEUES" | awk -F, -v i="$1" '{ q = $i; if (q == "") q = 1; print q }'; }
BR_NS=plx-br

ns_exists() { ip netns list | awk '{print $1}' | grep -qx "$1"; }

quiet_offloads() {
  local ns=$1 dev=$2
  ip netns exec "$ns" ethtool -K "$dev" tso off gso off gro off tx-checksumming off rx-checksumming off >/dev/null 2>&1 || true
}

# The bridge must hand plex every frame as sent. With br_netfilter loaded, a bridge passes IPv4
# through netfilter (bridge-nf-call-iptables=1, the default in every new namespace): frames
# with bad checksums or lengths are dropped there and fragments may be reassembled by conntrack,
# so tests of plex's own checks would test the kernel's. Turn it off in the bridge's namespace
# (the sysctls are per namespace); without br_netfilter the sysctls do not exist and nothing
# is filtered.
bridge_nf_off() {
  local k
  for k in iptables ip6tables arptables; do
    if ip netns exec "$BR_NS" test -e "/proc/sys/net/bridge/bridge-nf-call-$k"; then
      ip netns exec "$BR_NS" sysctl -qw "net.bridge.bridge-nf-call-$k=0"
    fi
  done
}

# bridge_nf_state: what the bridge namespace has (for tests): "off", or "absent" without
# br_netfilter, else the values.
bridge_nf_state() {
  if ! ip netns exec "$BR_NS" test -e /proc/sys/net/bridge/bridge-nf-call-iptables; then
    echo absent
    return
  fi
  local v
  v=$(ip netns exec "$BR_NS" cat /proc/sys/net/bridge/bridge-nf-call-{iptables,ip6tables,arptables} | tr -d '\n')
  if [ "$v" = 000 ]; then echo off; else echo "on ($v)"; fi
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

# A BPF filesystem the namespaces see (ip netns exec remounts /sys, hiding /sys/fs/bpf): the
# cluster's stacks pin their XDP link there, so a killed router's fast path keeps forwarding
# its established flows while the cluster takes over (poll-loop's xdp::pin_dir).
bpffs() {
  mountpoint -q /run/plex/bpf 2>/dev/null && return 0
  mkdir -p /run/plex/bpf
  mount -t bpf bpf /run/plex/bpf 2>/dev/null || echo "testbed: no BPF filesystem at /run/plex/bpf (a killed router's fast path dies with it)" >&2
}

up() {
  bpffs
  if ! ns_exists "$BR_NS"; then
    ip netns add "$BR_NS"
    ip netns exec "$BR_NS" ip link add plxbr0 type bridge
    ip netns exec "$BR_NS" ip link set plxbr0 type bridge forward_delay 0 stp_state 0 ageing_time 3000
    ip netns exec "$BR_NS" ip link set plxbr0 up
    ip netns exec "$BR_NS" ip link set lo up
  fi
  bridge_nf_off
  if ! ns_exists plx-client; then
    ip netns add plx-client
    # As many queues as the widest plex host, so flows from the client spread over queues
    # (veth delivers on the queue the sender used; the bridge keeps the recorded queue).
    add_port plx-c plx-client "$(echo "$QUEUES" | tr ',' '\n' | sort -n | tail -1)"
    ip netns exec plx-client ip addr add 198.18.0.1/24 dev plx-c
  fi
  for i in $(seq 1 "$N"); do
    if ! ns_exists "plx-s$i"; then
      ip netns add "plx-s$i"
      add_port "plx-s$i" "plx-s$i" "$(queues_of "$i")"
    fi
  done
}

# A direct veth pair with several queues: plx-mqc (198.18.1.1/24 on plx-mq0) and plx-mqs
# (plex takes 198.18.1.2 on plx-mq1). Through a bridge every flow lands on queue 0; on a direct
# pair each flow arrives on the queue its sender picked, so flows spread over plex's queues
# (native XDP mode).
up_mq() {
  local q=${1:-2}
  ns_exists plx-mqc && return 0
  ip netns add plx-mqc
  ip netns add plx-mqs
  ip link add plx-mq0 numtxqueues "$q" numrxqueues "$q" type veth peer name plx-mq1 numtxqueues "$q" numrxqueues "$q"
  ip link set plx-mq0 netns plx-mqc
  ip link set plx-mq1 netns plx-mqs
  ip netns exec plx-mqc ip addr add 198.18.1.1/24 dev plx-mq0
  for pair in plx-mqc:plx-mq0 plx-mqs:plx-mq1; do
    ip netns exec "${pair%%:*}" ip link set "${pair#*:}" up
    ip netns exec "${pair%%:*}" ip link set lo up
    quiet_offloads "${pair%%:*}" "${pair#*:}"
  done
}

down() {
  for ns in $(ip netns list | awk '{print $1}' | grep -E '^plx-' || true); do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  done
  # XDP fast paths killed stacks left pinned: their interfaces are gone with the namespaces.
  rm -f /run/plex/bpf/plex-* 2>/dev/null || true
}

status() {
  for ns in $(ip netns list | awk '{print $1}' | grep -E '^plx-' || true); do
    echo "== $ns"
    ip netns exec "$ns" ip -br addr
  done
}

case "${1:-}" in
  up) up ;;
  up-mq) up_mq "${2:-2}" ;;
  down) down ;;
  status) status; if ns_exists "$BR_NS"; then echo "bridge netfilter: $(bridge_nf_state)"; fi ;;
  bridge-nf) bridge_nf_state ;;
  *) echo "usage: $0 up [N] [Q1,Q2,...] | up-mq [QUEUES] | down | status | bridge-nf" >&2; exit 2 ;;
esac
