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
#     sequence numbers continuous; again with plex dropping 2 % of what it receives;
#   - giveback by handoff: 50 long-lived connections on the backup of DVIPA 198.18.0.100
#     (`giveback = "handoff"`) when its primary starts: all moved to the primary, the address
#     back on it at once, every connection completes, none resets;
#   - `plex ctl drain` (echo on every stack): 40 long-lived checked echo connections; drain s2
#     into s3, restart s2, drain s3 back into s2: every connection completes byte-exact,
#     none resets; and under wrk (HTTP keep-alive): no socket error, no non-2xx.
set -uo pipefail
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/cluster_lib.sh"
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
primary_grace_ms = 300

TOML
stacks_toml >>"$CFG"
cat >>"$CFG" <<TOML

[[dvipa]]
address = "$V/24"
primary = "s1"
backups = [{ stack = "s2", rank = 20 }]
[dvipa.distribute]
ports = [7, 8080]
targets = ["s2", "s3"]
TOML
cat >>"$CFG" <<TOML

[[dvipa]]
address = "198.18.0.100/24"
primary = "s1"
backups = [{ stack = "s2", rank = 20 }]
giveback = "handoff"
TOML
RULES=$LOGDIR/rules.txt
cat >"$RULES" <<R
prefix /two   s2
prefix /three s3
host   three.test s3
default s1
R
start_stack() { # I ARGS...: the content router
  local i=$1; shift
  start_app "$i" "$@" router --rules "$RULES"
}
start_app() { plex_run_stack "$@"; } # I ARGS... APP...
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
  echo "     s1 handoff: $(grep 'queue 0 handoff:' "$LOGDIR/s1.log" | tail -1)"
}

run_round clean
run_round lossy --drop 0.02

# --- giveback by handoff ---------------------------------------------------------------------
G=198.18.0.100
gowner() { ctl show dvipas 2>/dev/null | awk -v a="$G" 'index($1, a "/") == 1 {print $3}'; }
rm -f "$REGION"
start_app 2 echo || exit 1
for _ in $(seq 1 60); do [ "$(gowner)" = s2 ] && break; sleep 0.05; done
check "the backup s2 holds $G (its primary s1 is not running)" test "$(gowner)" = s2
GSTOP=$LOGDIR/stop-giveback
rm -f "$GSTOP"
ip netns exec plx-client python3 "$HERE/seq_echo.py" $G 7 50 "$GSTOP" 60 10 >"$LOGDIR/giveback-seq.json" 2>&1 &
GSEQ=$!
sleep 2
t0=$(date +%s%N)
start_app 1 echo || exit 1
t1=$(date +%s%N)
for _ in $(seq 1 400); do [ "$(gowner)" = s1 ] && break; sleep 0.01; done
t2=$(date +%s%N)
echo "     $G back on s1 $(( (t2 - t1) / 1000000 )) ms after s1 was up ($(( (t2 - t0) / 1000000 )) ms after its start)"
grep -h "giveback by handoff\|standing by" "$LOGDIR/s1.log" "$LOGDIR/s2.log" | tail -3 | sed 's/^/     /'
check "giveback by handoff: $G back on its primary s1" test "$(gowner)" = s1
sleep 1
touch "$GSTOP"
wait "$GSEQ"
res=$(tail -1 "$LOGDIR/giveback-seq.json")
echo "     seq_echo: $res"
check "50 long-lived connections moved from the backup to the returning primary: all completed byte-exact, none reset" \
  sh -c "[ '$(jget "$res" completed)' = 50 ] && [ '$(jget "$res" resets)' = 0 ] && [ '$(jget "$res" errors)' = 0 ] && [ '$(jget "$res" mismatches)' = 0 ]"
echo "     s1: $(grep 'queue 0 handoff:' "$LOGDIR/s1.log" | tail -1 | sed 's/^queue 0 //')"
for i in 1 2; do stop_stack $i; done

# --- plex ctl drain -----------------------------------------------------------------------
rm -f "$REGION"
for i in 1 2 3; do start_app $i echo || exit 1; done
wait_owner s1 && dpt_ready 7 2
STOP=$LOGDIR/stop-drain
rm -f "$STOP"
ip netns exec plx-client python3 "$HERE/seq_echo.py" $V 7 40 "$STOP" 60 10 >"$LOGDIR/drain-seq.json" 2>&1 &
SEQ=$!
sleep 2
echo "     before: CRT s2 $(crt_count s2), s3 $(crt_count s3)"
ctl drain s2 --to s3 >"$LOGDIR/drain1.txt" 2>&1; rc=$?
echo "     $(tail -1 "$LOGDIR/drain1.txt")"
check "plex ctl drain s2 --to s3 (exit $rc): every s2 connection moved; the CRT routes none to s2 ($(crt_count s2)), s3 has them ($(crt_count s3))" \
  sh -c "[ $rc = 0 ] && [ $(crt_count s2) = 0 ] && [ $(crt_count s3) -ge 40 ]"
stop_stack 2
start_app 2 echo || exit 1
dpt_ready 7 2
sleep 0.5
ctl drain s3 --to s2 >"$LOGDIR/drain2.txt" 2>&1; rc=$?
echo "     after s2's restart: $(tail -1 "$LOGDIR/drain2.txt")"
check "s2 restarted; plex ctl drain s3 --to s2 (exit $rc): all back on s2 ($(crt_count s2)), none on s3 ($(crt_count s3))" \
  sh -c "[ $rc = 0 ] && [ $(crt_count s3) = 0 ] && [ $(crt_count s2) -ge 40 ]"
sleep 1
touch "$STOP"
wait "$SEQ"
res=$(tail -1 "$LOGDIR/drain-seq.json")
echo "     seq_echo: $res"
check "40 long-lived connections through two drains and a restart: all completed byte-exact, none reset" \
  sh -c "[ '$(jget "$res" completed)' = 40 ] && [ '$(jget "$res" resets)' = 0 ] && [ '$(jget "$res" errors)' = 0 ] && [ '$(jget "$res" mismatches)' = 0 ]"
for i in 1 2 3; do stop_stack $i; done
rm -f "$REGION"
for i in 1 2 3; do start_app $i http --port 8080 --size 100 || exit 1; done
wait_owner s1 && dpt_ready 8080 2
ip netns exec plx-client wrk -t2 -c50 -d6s --timeout 5s "http://$V:8080/" >"$LOGDIR/drain-wrk.txt" 2>&1 &
WRK=$!
sleep 2
ctl drain s2 --to s3 >"$LOGDIR/drain3.txt" 2>&1; rc=$?
echo "     under wrk: $(tail -1 "$LOGDIR/drain3.txt")"
wait $WRK
echo "     wrk: $(grep -E 'requests in|Socket errors|Non-2xx' "$LOGDIR/drain-wrk.txt" | tr -s ' ' | tr '\n' ';')"
check "plex ctl drain s2 under wrk -c50 (exit $rc): no socket error, no non-2xx response" \
  sh -c "[ $rc = 0 ] && grep -q 'requests in' '$LOGDIR/drain-wrk.txt' && ! grep -qE 'Socket errors|Non-2xx' '$LOGDIR/drain-wrk.txt'"
for i in 1 2 3; do stop_stack $i; done
rm -f "$REGION"
[ "$FAILS" = 0 ] || { echo "$FAILS check(s) failed"; exit 1; }
echo "all handoff checks passed"
