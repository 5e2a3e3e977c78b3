#!/usr/bin/env bash
# The distributor with cluster stacks on two queues each (issue 12, "multi-queue"): the router
# s1, its backup s2 and the target s3 each run `plex run --queues 2`. Queue 0's shard is the
# cluster member (the lead); queue 1's hands it every frame for the DVIPA that matches none of
# its connections, and takes the SYNs the lead decides for it. The testbed's veths have two
# queues; through the bridge, frames spread over a host's queues only in native XDP mode, and
# the router's XDP fast path (XDP_TX) does not work in native mode on a veth here, so the stacks
# that route (s1, s2) run generic XDP (their frames arrive on queue 0) and the target s3 runs
# native (its connections spread over both queues). The router decides SYNs in its poll thread
# here (--syn-steering off): frames its XDP program sends on (XDP_TX) keep the queue they arrived
# on (0) through the bridge, so every SYN would reach the target's queue 0 (on a NIC, the
# target's RSS spreads them whoever sent them). A Linux client:
#   - curl and wrk through the router: every request answered, the target's two queues both
#     accept connections (the lead hands SYNs back decided);
#   - 50 long-lived echo connections (it/seq_echo.py): kill -9 of the router mid-load, takeover
#     by s2, restart of the primary (takeback), then `plex ctl drain s3 --to s2` (the target's
#     follower shard moves its connections through the lead): every connection completes
#     byte-exact, none resets.
set -uo pipefail
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/cluster_lib.sh"
HERE=$(dirname "$0")

echo "== distributor on two queues per stack (logs in $LOGDIR)"
"$TB" down
"$TB" up 3 2,2,2
CFG=$LOGDIR/cluster.toml
REGION=/dev/shm/plex-plx-distmq
rm -f "$REGION"
V=198.18.0.102
cat >"$CFG" <<TOML
[cluster]
name = "plx-distmq"
region = "$REGION"
lease_ms = 250
heartbeat_ms = 10

TOML
stacks_toml >>"$CFG"
dist_toml >>"$CFG"
# The routers generic, the target native (see above); every stack on two queues.
STACK_ARGS=([1]="--queues 2 --xdp-mode generic --syn-steering off" [2]="--queues 2 --xdp-mode generic --syn-steering off" [3]="--queues 2 --xdp-mode native --syn-steering off")
# accepted LOG Q: connections queue Q's shard accepted (its last --stats report)
accepted() { grep "^queue $2 listeners:" "$1" | tail -1 | grep -o "accepted=[0-9]*" | cut -d= -f2; }
# counter LOG Q NAME: a stack counter of queue Q (its last --stats report)
counter() { grep "^queue $2 stack:" "$1" | tail -1 | grep -o "$3=[0-9]*" | cut -d= -f2; }

# --- HTTP: spread over the targets and over the target's queues ---------------------------
for i in 1 2 3; do start_stack "$i" http --size 100 || exit 1; done
wait_owner s1 5
check "s1 routes $V on two queues; s2 and s3 report their HTTP listeners (both shards each)" dpt_ready 80 2
ctl show dpt | sed 's/^/     /'
codes=$(for i in $(seq 1 40); do ip netns exec plx-client curl -s -m 3 -o /dev/null -w '%{http_code}:%{size_download} ' "http://$V/"; done)
check "curl: 40 new connections through the router, all 200 with 100-byte bodies" \
  test "$(echo "$codes" | tr ' ' '\n' | grep -c '^200:100$')" = 40
ip netns exec plx-client wrk -t2 -c100 -d3s --timeout 5s "http://$V/" >"$LOGDIR/wrk.txt" 2>&1
reqs=$(awk '/requests in/ {print $1}' "$LOGDIR/wrk.txt")
echo "     wrk -c100 through the router: $(grep -E 'Requests/sec' "$LOGDIR/wrk.txt")"
check "wrk -c 100 through the router: ${reqs:-0} requests, no socket errors, no non-2xx" \
  sh -c "[ \"${reqs:-0}\" -gt 1000 ] && ! grep -qE 'Socket errors|Non-2xx' '$LOGDIR/wrk.txt'"
# A drain of the two-queue target under wrk: HTTP connections move between requests, from
# both of its queues (queue 1's through the lead).
ip netns exec plx-client wrk -t2 -c50 -d5s --timeout 5s "http://$V/" >"$LOGDIR/drain-wrk.txt" 2>&1 &
WRK=$!
sleep 1.5
ctl drain s3 --to s2 >"$LOGDIR/drain-http.txt" 2>&1; drc=$?
echo "     under wrk: $(tail -1 "$LOGDIR/drain-http.txt")"
wait $WRK
echo "     wrk: $(grep -E 'requests in|Socket errors|Non-2xx' "$LOGDIR/drain-wrk.txt" | tr -s ' ' | tr '\n' ';')"
check "plex ctl drain s3 (two queues) under wrk -c50 (exit $drc): no socket error, no non-2xx response" \
  sh -c "[ $drc = 0 ] && grep -q 'requests in' '$LOGDIR/drain-wrk.txt' && ! grep -qE 'Socket errors|Non-2xx' '$LOGDIR/drain-wrk.txt'"
for i in 1 2 3; do stop_stack $i; done
a30=$(accepted "$LOGDIR/s3.log" 0); a31=$(accepted "$LOGDIR/s3.log" 1)
a20=$(accepted "$LOGDIR/s2.log" 0); a21=$(accepted "$LOGDIR/s2.log" 1)
h31=$(counter "$LOGDIR/s3.log" 1 tcp_shard_handed); h30=$(counter "$LOGDIR/s3.log" 0 tcp_shard_handed)
echo "     accepted: s3 queue 0 ${a30:-?}, queue 1 ${a31:-?} (native: spread); s2 queue 0 ${a20:-?}, queue 1 ${a21:-?} (generic: all on 0)"
echo "     s3: queue 1 handed ${h31:-0} segments to the lead, the lead handed ${h30:-0} (SYNs decided for queue 1, and segments of queue 1's connections)"
check "the target's two queues both accepted connections (s3: ${a30:-0} and ${a31:-0})" \
  sh -c "[ \"${a30:-0}\" -ge 5 ] && [ \"${a31:-0}\" -ge 5 ]"
check "s3's follower handed the lead what only the cluster decides, and got its SYNs back decided" \
  sh -c "[ \"${h31:-0}\" -gt 0 ] && [ \"${h30:-0}\" -gt 0 ]"

# --- long-lived connections: router killed, then taken back --------------------------------
rm -f "$REGION"
for i in 1 2 3; do start_stack "$i" echo || exit 1; done
wait_owner s1 5
check "s2 and s3 report their echo listeners" dpt_ready 7 2
STOP=$LOGDIR/stop-seq
rm -f "$STOP"
ip netns exec plx-client python3 "$HERE/seq_echo.py" $V 7 50 "$STOP" 60 10 >"$LOGDIR/seq.json" 2>&1 &
SEQ=$!
sleep 2
kill -9 "${SPID[1]}"
check "s2 (two queues) takes the address over" wait_owner s2 3
sleep 2
check "the new router s2 rebuilt the CRT from the targets' reports (50 rows, queue 1's connections too)" \
  sh -c "[ \$(( \$($PLEX ctl --config $CFG show crt 2>/dev/null | wc -l) - 1 )) -ge 50 ]"
start_stack 1 echo || true
check "the primary s1 takes the address back" wait_owner s1 10
sleep 2
# A drain of the two-queue target: its follower shard's connections move too (detached by the
# follower, offered by the lead as its own).
before=$(crt_count s3)
ctl drain s3 --to s2 >"$LOGDIR/drain.txt" 2>&1; rc=$?
echo "     $(tail -1 "$LOGDIR/drain.txt")"
c3=$(crt_count s3); c2=$(crt_count s2)
check "plex ctl drain s3 --to s2 (exit $rc): the connections of both of s3's queues moved (s3 had $before); the CRT routes none to s3 ($c3), s2 has them ($c2)" \
  sh -c "[ $rc = 0 ] && [ $c3 = 0 ] && [ $c2 -ge 50 ]"
sleep 1
touch "$STOP"
wait "$SEQ"; rc=$?
res=$(tail -1 "$LOGDIR/seq.json")
echo "     seq_echo: $res"
field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])['$1'])" "$res" 2>/dev/null; }
check "50 long-lived connections through kill -9 of the router, the takeback and the drain: all completed byte-exact (rc $rc)" \
  sh -c "[ '$(field completed)' = 50 ] && [ '$(field mismatches)' = 0 ]"
check "none was reset ($(field resets) resets, $(field errors) other errors)" sh -c "[ '$(field resets)' = 0 ] && [ '$(field errors)' = 0 ]"
echo "     longest stall a client saw: $(field max_stall_ms) ms"
for i in 1 2 3; do stop_stack $i; done
e31=$(accepted "$LOGDIR/s3.log" 1)
echo "     echo connections accepted by s3's queue 1: ${e31:-?}"
# s2 routed the address until the takeback: its XDP program kept the flows (to s3) for
# stragglers. The connections the drain brought to s2 left that fast path; before, s2's program
# sent their segments back to s3, which forwarded them to s2 again (526 044 "stragglers", a
# stall of a second each).
st3=$(grep -o "stragglers: [0-9]*" "$LOGDIR/s3.log" | tail -1 | awk '{print $2}')
check "after the drain s3 forwarded only stragglers to s2 (${st3:-?}): no segment went round between s2 and s3" \
  sh -c "[ \"${st3:-999999}\" -lt 5000 ]"
rm -f "$REGION"
[ "$FAILS" = 0 ] || { echo "$FAILS check(s) failed"; exit 1; }
echo "all multi-queue distributor checks passed"
