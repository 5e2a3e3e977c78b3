#!/usr/bin/env bash
# Live TCP connection handoff on real interfaces (issue 14, spec/04): three plex stacks of one
# cluster on the namespace testbed, all running the content router (`plex run --stack sN router
# --rules FILE`); s1 holds DVIPA 198.18.0.102 (distributed on another port, so s2 and s3 have
# it as an internal address). A Linux client:
#   - curl, one request per connection: the stack the rules name answers each (the router
#     moved the connection there after peeking at the request line and Host header);
#   - a Python client with one keep-alive connection, requests for different stacks one by one
#     and pipelined: every response from the right stack (the connection moves again and
#     again: s1 -> s2 -> s3 -> ...);
#   - a capture on the client side: no SYN, FIN or RST in the middle of a connection, server
#     sequence numbers continuous; again with plex dropping 2 % of what it receives.
set -uo pipefail
source "$(dirname "$0")/lib.sh"
HERE=$(dirname "$0")

echo "== handoff tests (logs in $LOGDIR)"
"$TB" down
"$TB" up 3
CFG=$LOGDIR/cluster.toml
REGION=/dev/shm/plex-plx-handoff
rm -f "$REGION"
V=198.18.0.102
cat >"$CFG" <<TOML
[cluster]
name = "plx-handoff"
region = "$REGION"
lease_ms = 250
heartbeat_ms = 10

[[stack]]
name = "s1"
interface = "plx-s1"
address = "198.18.0.11/24"

[[stack]]
name = "s2"
interface = "plx-s2"
address = "198.18.0.12/24"

[[stack]]
name = "s3"
interface = "plx-s3"
address = "198.18.0.13/24"

[[dvipa]]
address = "$V/24"
primary = "s1"
backups = [{ stack = "s2", rank = 20 }]
[dvipa.distribute]
ports = [8080]
targets = ["s2", "s3"]
TOML
RULES=$LOGDIR/rules.txt
cat >"$RULES" <<R
prefix /two   s2
prefix /three s3
host   three.test s3
default s1
R
declare -A SPID
start_stack() { # I ARGS...
  local i=$1; shift
  ip netns exec "plx-s$i" "$PLEX" run --config "$CFG" --stack "s$i" --stats "$@" router --rules "$RULES" >>"$LOGDIR/s$i.log" 2>&1 &
  SPID[$i]=$!
  disown "$!" 2>/dev/null || true
  PIDS+=($!)
  for _ in $(seq 1 50); do
    grep -q "^plex: stack s$i" "$LOGDIR/s$i.log" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "stack s$i did not start: $(tail -3 "$LOGDIR/s$i.log")"
  return 1
}
stop_stack() { kill -INT "${SPID[$1]}" 2>/dev/null || true; for _ in $(seq 1 50); do kill -0 "${SPID[$1]}" 2>/dev/null || break; sleep 0.1; done; }
ctl() { "$PLEX" ctl --config "$CFG" "$@"; }
owner_of() { ctl show dvipas 2>/dev/null | awk -v a="$V" 'index($1, a "/") == 1 {print $3}'; }
wait_owner() { for _ in $(seq 1 100); do [ "$(owner_of)" = "$1" ] && return 0; sleep 0.05; done; return 1; }
jget() { python3 -c "import json,sys; print(json.loads(sys.argv[1]).get('$2'))" "$1" 2>/dev/null; }

run_round() { # LABEL [plex run options...]
  local label=$1; shift
  rm -f "$REGION"
  for i in 1 2 3; do start_stack $i "$@" || return 1; done
  wait_owner s1 || { echo "     $V not held by s1"; return 1; }
  sleep 0.3
  ip netns exec plx-client tcpdump -i plx-c -w "$LOGDIR/$label.pcap" -U -s 128 "tcp port 80" >/dev/null 2>&1 &
  local TD=$!
  sleep 0.5
  local ok=0 n=0 path want got
  for spec in /two/a=s2 /three/b=s3 /one/c=s1 /two/d=s2 /x=s1; do
    path=${spec%=*}; want=${spec#*=}; n=$((n + 1))
    got=$(ip netns exec plx-client curl -s -m 5 -D - -o "$LOGDIR/$label-body.txt" "http://$V$path" | tr -d '\r' | awk -F': ' 'tolower($1) == "x-served-by" {print $2}')
    if [ "$got" = "$want" ] && grep -q "stack $want served $path" "$LOGDIR/$label-body.txt"; then ok=$((ok + 1)); else echo "     curl $path: wanted $want, got '${got}'"; fi
  done
  got=$(ip netns exec plx-client curl -s -m 5 -H 'Host: three.test' -D - -o /dev/null "http://$V/by-host" | tr -d '\r' | awk -F': ' 'tolower($1) == "x-served-by" {print $2}')
  n=$((n + 1)); [ "$got" = s3 ] && ok=$((ok + 1))
  check "$label: curl, one request per connection: the stack the rules name answers ($ok of $n)" test "$ok" = "$n"
  local res
  res=$(ip netns exec plx-client timeout 60 python3 "$HERE/http_pipeline.py" $V 80 20 /two/1=s2 /three/2=s3 /one/3=s1 /three/4=s3 /two/5=s2)
  echo "     pipelined keep-alive client: $res"
  check "$label: one keep-alive connection, requests for s2, s3, s1 one by one and 20 pipelined rounds: every answer from the right stack" \
    sh -c "[ '$(jget "$res" correct)' = 105 ] && [ '$(jget "$res" error)' = None ]"
  sleep 0.5
  kill -INT $TD 2>/dev/null; wait $TD 2>/dev/null
  local pc
  pc=$(python3 "$HERE/pcap_check.py" "$LOGDIR/$label.pcap" $V 80)
  echo "     capture: $pc"
  check "$label: the client's capture shows no RST, no SYN or FIN mid-stream, no gap in the server's sequence numbers" \
    sh -c "[ '$(jget "$pc" rsts)' = 0 ] && [ '$(jget "$pc" syns_midstream)' = 0 ] && [ '$(jget "$pc" fins_midstream)' = 0 ] && [ '$(jget "$pc" gaps)' = 0 ] && [ '$(jget "$pc" connections)' -ge 7 ]"
  for i in 1 2 3; do stop_stack $i; done
  for i in 1 2 3; do echo "     s$i: $(grep '^router' "$LOGDIR/s$i.log" | tail -1)"; done
  echo "     s1 handoff: $(grep 'handoff:' "$LOGDIR/s1.log" | tail -1)"
}

run_round clean
run_round lossy --drop 0.02
rm -f "$REGION"
[ "$FAILS" = 0 ] || { echo "$FAILS check(s) failed"; exit 1; }
echo "all handoff checks passed"
