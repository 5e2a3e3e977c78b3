# The distributor benchmarks' shared parts (bench-cluster.sh, bench-connrate.sh): the cluster
# config, starting and watching the plex stacks, and HAProxy over two Linux echo servers.
# Sourced after the caller set PLEX, LNX, OUT, REGION, V (the distributed DVIPA), PLEX_POLL and
# an array PIDS (every process started here is added to it, for the caller's cleanup).

# The testbed with three stack namespaces, and the client's port range. Every connection
# leaves a TIME-WAIT (60 s) on the client, and connect() takes the even ports of the ephemeral
# range first: past ~14 000 connections to one destination the kernel's port search itself
# slows the client down (3x in a focused run, Linux's server included). A wider range keeps the
# conn-rate figures about the servers; every system measured gets the same.
bench_testbed_up() {
  scripts/testbed.sh down >/dev/null
  scripts/testbed.sh up 3 >/dev/null
  ip netns exec plx-client sysctl -qw net.ipv4.ip_local_port_range="1024 65535"
  # ... but not over the ports the client namespace serves on (the echo server of the ports
  # section listens on 198.18.0.1:7000: an outgoing connection left on it made that bind fail).
  ip netns exec plx-client sysctl -qw net.ipv4.ip_local_reserved_ports="7000-7010,8080"
  # HAProxy (in plx-s1) opens a backend connection per client connection: the same range.
  ip netns exec plx-s1 sysctl -qw net.ipv4.ip_local_port_range="1024 65535"
  ip netns exec plx-s1 sysctl -qw net.ipv4.ip_local_reserved_ports="7000-7010,8080"
}

# bench_cfg FILE ADDR...: the testbed's stacks (cluster plx-bench, region REGION) and, for
# each ADDR, a DVIPA routed by s1 (backup s2) whose port 7 is distributed round robin over s2
# and s3.
bench_cfg() {
  local file=$1 a
  shift
  sed -e "s|^name = \"plx-testbed\"|name = \"plx-bench\"|" -e "s|^region = .*|region = \"$REGION\"|" coupling/src/testbed.toml \
    | awk '/^\[\[dvipa\]\]/ { exit } { print }' >"$file"
  for a in "$@"; do
    cat >>"$file" <<TOML
[[dvipa]]
address = "$a/24"
primary = "s1"
backups = [{ stack = "s2", rank = 20 }]
[dvipa.distribute]
ports = [7]
targets = ["s2", "s3"]
method = "round_robin"
TOML
  done
  rm -f "$REGION"
}

declare -A SPID
# start_stack I [ARGS...]: stack sI of CFG with the echo app (ARGS before it), its log appended
# to OUT/sI.log; returns once this start (not an earlier one in the same log) printed its line.
start_stack() {
  local i=$1 n m
  shift
  n=$(grep -c "^plex: stack s$i" "$OUT/s$i.log" 2>/dev/null || true); n=${n:-0}
  ip netns exec "plx-s$i" "$PLEX" run --config "$CFG" --stack "s$i" --poll "$PLEX_POLL" --stats "$@" echo >>"$OUT/s$i.log" 2>&1 &
  SPID[$i]=$!
  disown "$!" 2>/dev/null || true
  PIDS+=($!)
  for _ in $(seq 1 50); do
    m=$(grep -c "^plex: stack s$i" "$OUT/s$i.log" 2>/dev/null || true); m=${m:-0}
    [ "$m" -gt "$n" ] && return 0
    sleep 0.1
  done
  echo "stack s$i did not start"; return 1
}
# stop_stack I: SIGINT, and wait (5 s at most) until it has left.
stop_stack() {
  kill -INT "${SPID[$1]}" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "${SPID[$1]}" 2>/dev/null || return 0; sleep 0.1; done
}
# owner [ADDR]: the stack holding ADDR (default V).
owner() { "$PLEX" ctl --config "$CFG" show dvipas 2>/dev/null | awk -v a="${1:-$V}" 'index($1, a "/") == 1 {print $3}'; }
# wait_owner STACK [ADDR]: until STACK holds ADDR (default V), 10 s at most.
wait_owner() { for _ in $(seq 1 200); do [ "$(owner "${2:-$V}")" = "$1" ] && return 0; sleep 0.05; done; return 1; }
# ready N: until N DPT rows are ready (targets listening), 5 s at most.
ready() { for _ in $(seq 1 100); do [ "$("$PLEX" ctl --config "$CFG" show dpt 2>/dev/null | grep -c ' ready ')" -ge "$1" ] && return 0; sleep 0.05; done; return 1; }

# haproxy_up: kernel addresses 198.18.0.21-23 on plx-s1..3, Linux echo servers on
# 198.18.0.22:7000 and 198.18.0.23:7000 (plex-bench-linux echo-many, blocking threads), and
# HAProxy (TCP mode, round robin over them) on 198.18.0.21:7000 in plx-s1. HAP: its pid.
haproxy_up() {
  local i
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
  HAP=$!
  disown "$HAP" 2>/dev/null || true
  PIDS+=($!)
  for _ in $(seq 1 50); do ip netns exec plx-s1 ss -ltn | grep -q 198.18.0.21:7000 && return 0; sleep 0.1; done
  echo "haproxy did not start: $(cat "$OUT/haproxy.log")"; return 1
}
