#!/usr/bin/env bash
# The main job: on a fresh machine, install what is needed, build plex, bring up the namespace
# testbed, run `plex http` on AF_XDP and drive it from a Linux client with ping, curl and wrk;
# then the cluster act: three plex stacks share a coupling region and a dynamic VIPA that
# survives the death of its stack and comes back to its primary; then the distributor act: one
# address spread over two stacks by a router, which is killed under load and comes back, with no
# connection reset; then the handoff act: a content router moves live HTTP connections to the
# stack that serves each request, and `plex ctl drain` empties a stack without a reset. Tears
# everything down.
# Run as root.
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
SPIDS=()
cleanup() {
  [ -n "${PID:-}" ] && kill -INT "$PID" 2>/dev/null && sleep 0.5
  for p in "${SPIDS[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  sleep 0.3
  scripts/testbed.sh down
  rm -f /dev/shm/plex-plx-testbed
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

echo
echo "== the cluster act: three plex stacks, one coupling region, a DVIPA that survives its stack"
scripts/testbed.sh down
scripts/testbed.sh up 3
rm -f /dev/shm/plex-plx-testbed
echo "   the embedded cluster config (plex config):"
"$PLEX" config | grep -vE '^\s*(#|$)' | sed 's/^/     /'
start_stack() { # I
  ip netns exec "plx-s$1" "$PLEX" run --stack "s$1" echo >>"$LOG.s$1" 2>&1 &
  SPIDS[$1]=$!
  disown "$!" 2>/dev/null || true  # no "Killed" job notices: kill -9 is the point
  for _ in $(seq 1 50); do grep -q '^plex: stack' "$LOG.s$1" && break; sleep 0.1; done
}
owner() { "$PLEX" ctl show dvipas | awk '$1 == "198.18.0.100/24" {print $3}'; }
wait_owner() { for _ in $(seq 1 60); do [ "$(owner)" = "$1" ] && return 0; sleep 0.05; done; return 1; }
echo_via() { echo "${2:-hello}" | ip netns exec plx-client timeout 3 socat -t 1 - "TCP:$1:7,connect-timeout=1" 2>/dev/null; }
for i in 1 2 3; do start_stack "$i"; done
wait_owner s1 || true
echo "== plex ctl show members"
"$PLEX" ctl show members | sed 's/^/   /'
echo "== plex ctl show dvipas"
"$PLEX" ctl show dvipas | sed 's/^/   /'
echo "== echo through the DVIPA 198.18.0.100: $(echo_via 198.18.0.100 'hello from the client')"
echo "   client ARP: $(ip netns exec plx-client ip neigh show 198.18.0.100)   (s1 is $(ip netns exec plx-s1 cat /sys/class/net/plx-s1/address))"
echo "== kill -9 stack s1, the owner"
kill -9 "${SPIDS[1]}"
wait_owner s2 || true
echo "   $(grep 'took over' "$LOG.s2")"
echo "== echo through 198.18.0.100 now: $(echo_via 198.18.0.100 'still here')"
echo "   client ARP: $(ip netns exec plx-client ip neigh show 198.18.0.100)   (s2 is $(ip netns exec plx-s2 cat /sys/class/net/plx-s2/address))"
"$PLEX" ctl show dvipas | sed 's/^/   /'
echo "== s1 restarts: s2 has no connections on the address, so it gives it back at once"
start_stack 1
wait_owner s1 || true
echo "   $(grep 'given back' "$LOG.s2" | tail -1)"
echo "   $(grep 'given back' "$LOG.s1" | tail -1)"
echo "== echo through 198.18.0.100: $(echo_via 198.18.0.100 'home again')"
"$PLEX" ctl show dvipas | sed 's/^/   /'
for i in 1 2 3; do kill -INT "${SPIDS[$i]}" 2>/dev/null || true; done
sleep 1

echo
echo "== the distributor act: one address over two stacks, and its router killed under load"
# The embedded config plus a distributed DVIPA: s1 routes 198.18.0.102 (backup s2) over the
# targets s2 and s3, which answer clients directly; port 7 (echo) is distributed.
DCFG=$(mktemp /tmp/plx-demo-dist.XXXXXX.toml)
"$PLEX" config | sed -e 's|^name = "plx-testbed"|name = "plx-demo-dist"|' -e 's|^region = .*|region = "/dev/shm/plex-plx-demo-dist"|' \
  | awk '/^\[\[dvipa\]\]/ { exit } { print }' >"$DCFG"
cat >>"$DCFG" <<'TOML'
[[dvipa]]
address = "198.18.0.102/24"
primary = "s1"
backups = [{ stack = "s2", rank = 20 }]
[dvipa.distribute]
ports = [7]
targets = ["s2", "s3"]
method = "round_robin"
TOML
echo "   the distributed DVIPA added to the config:"
sed -n '/198.18.0.102/,$p' "$DCFG" | sed 's/^/     /'
rm -f /dev/shm/plex-plx-demo-dist
dstart() { # I
  ip netns exec "plx-s$1" "$PLEX" run --config "$DCFG" --stack "s$1" echo >>"$LOG.d$1" 2>&1 &
  SPIDS[$1]=$!
  disown "$!" 2>/dev/null || true
  local n; n=$(grep -c '^plex: stack' "$LOG.d$1" 2>/dev/null || true)
  local m; for _ in $(seq 1 50); do m=$(grep -c "^plex: stack" "$LOG.d$1" 2>/dev/null || true); [ "${m:-0}" -gt "${n:-0}" ] && break; sleep 0.1; done
}
dctl() { "$PLEX" ctl --config "$DCFG" "$@"; }
downer() { dctl show dvipas | awk '$1 == "198.18.0.102/24" {print $3}'; }
dwait() { for _ in $(seq 1 100); do [ "$(downer)" = "$1" ] && return 0; sleep 0.05; done; return 1; }
for i in 1 2 3; do dstart "$i"; done
dwait s1 || true
sleep 0.5
echo "== plex ctl show dpt (the targets' listeners, as they reported them to the router)"
dctl show dpt | sed 's/^/   /'
for k in 1 2 3 4; do echo_via 198.18.0.102 "hello $k" >/dev/null; done
STOP=$(mktemp -u /tmp/plx-demo-stop.XXXXXX)
ip netns exec plx-client python3 scripts/it/seq_echo.py 198.18.0.102 7 20 "$STOP" 30 10 >"$LOG.seq" 2>&1 &
SEQ=$!
sleep 1.5
echo "== 20 long-lived connections, each sending a numbered line every 10 ms; plex ctl show crt:"
dctl show crt | head -8 | sed 's/^/   /'
echo "   ... ($(( $(dctl show crt | wc -l) - 1 )) rows: the router forwards each flow to its target; the targets answer the client directly)"
echo "== kill -9 the router s1"
kill -9 "${SPIDS[1]}"
dwait s2 || true
sleep 1
echo "   $(grep 'took over' "$LOG.d2" | tail -1)"
echo "   s2 rebuilt the table from the targets' reports: $(( $(dctl show crt | wc -l) - 1 )) rows, router $(dctl show crt | awk 'NR == 2 {print $4}')"
echo "== s1 restarts and takes the address back"
dstart 1
dwait s1 || true
sleep 1
touch "$STOP"
wait "$SEQ" || true
echo "   the client: $(tail -1 "$LOG.seq")"
echo "   (completed: every line echoed byte-exact, then a clean close; resets: connections reset)"
for i in 1 2 3; do kill -INT "${SPIDS[$i]}" 2>/dev/null || true; done
sleep 1
rm -f /dev/shm/plex-plx-demo-dist

echo
echo "== the handoff act: live TCP connections moved between stacks, nothing reset"
# Same cluster; every stack runs the content router with these rules: a request's path (or
# Host) names the stack that serves it, and the connection moves there with everything in it.
RULES=$(mktemp /tmp/plx-demo-rules.XXXXXX)
printf 'prefix /two s2\nprefix /three s3\ndefault s1\n' >"$RULES"
echo "   rules: $(tr '\n' ';' <"$RULES")"
hstart() { # I APP...
  local i=$1; shift
  ip netns exec "plx-s$i" "$PLEX" run --config "$DCFG" --stack "s$i" "$@" >>"$LOG.h$i" 2>&1 &
  SPIDS[$i]=$!
  disown "$!" 2>/dev/null || true
  for _ in $(seq 1 50); do grep -q "^plex: stack" "$LOG.h$i" 2>/dev/null && break; sleep 0.1; done
}
for i in 1 2 3; do hstart "$i" router --rules "$RULES"; done
dwait s1 || true
sleep 0.5
for path in /two/hello /three/hello /hello; do
  echo "   curl http://198.18.0.102$path -> $(ip netns exec plx-client curl -s -m 5 "http://198.18.0.102$path")"
done
echo "   one keep-alive connection, five requests for three stacks (the connection moves each time):"
ip netns exec plx-client python3 scripts/it/http_pipeline.py 198.18.0.102 80 0 /two/a=s2 /three/b=s3 /c=s1 /three/d=s3 /two/e=s2 | sed 's/^/     /'
for i in 1 2 3; do kill -INT "${SPIDS[$i]}" 2>/dev/null || true; done
sleep 1
rm -f /dev/shm/plex-plx-demo-dist
for i in 1 2 3; do hstart "$i" echo; done
dwait s1 || true
sleep 0.5
STOP=$(mktemp -u /tmp/plx-demo-stop.XXXXXX)
ip netns exec plx-client python3 scripts/it/seq_echo.py 198.18.0.102 7 20 "$STOP" 30 10 >"$LOG.drain" 2>&1 &
SEQ=$!
sleep 1.5
echo "== plex ctl drain s2 --to s3: s2 takes no new connection and moves every one it has to s3"
dctl drain s2 --to s3 2>/dev/null | sed 's/^/   /'
echo "   the CRT now routes $(dctl show crt | awk 'NR > 1 && $3 == "s2"' | wc -l) connections to s2, $(dctl show crt | awk 'NR > 1 && $3 == "s3"' | wc -l) to s3; s2 can be stopped and upgraded"
sleep 1
touch "$STOP"
wait "$SEQ" || true
echo "   the client: $(tail -1 "$LOG.drain")"
for i in 1 2 3; do kill -INT "${SPIDS[$i]}" 2>/dev/null || true; done
sleep 1
rm -f /dev/shm/plex-plx-demo-dist "$DCFG" "$RULES"
echo "== done: the testbed is torn down on exit"
