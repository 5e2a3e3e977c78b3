#!/usr/bin/env bash
# The distributor on real interfaces (issue 12, spec/02): three plex stacks of one cluster on
# the namespace testbed, DVIPA 198.18.0.102 distributed (ports 7 and 80) by its router s1
# (backup s2) over the targets s2 and s3, which answer clients directly. A Linux client:
#   - curl and wrk (HTTP app on the targets): new connections spread over both targets, none
#     fails; established flows go through the router's XDP fast path (XDP_TX);
#   - 50 long-lived echo connections (it/seq_echo.py: sequence-numbered lines, every echo
#     checked): kill -9 of the router mid-load, then restart of the primary (takeback):
#     every connection completes byte-exact, none resets; the client-visible stall printed;
#   - kill -9 of a target: its clients get RSTs quickly, the others are untouched.
set -uo pipefail
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/cluster_lib.sh"
HERE=$(dirname "$0")

echo "== distributor tests (logs in $LOGDIR)"
"$TB" down
"$TB" up 3
CFG=$LOGDIR/cluster.toml
REGION=/dev/shm/plex-plx-dist
rm -f "$REGION"
V=198.18.0.102
cat >"$CFG" <<TOML
[cluster]
name = "plx-dist"
region = "$REGION"
lease_ms = 250
heartbeat_ms = 10

TOML
stacks_toml >>"$CFG"
dist_toml >>"$CFG"

# --- HTTP: spread and the fast path -----------------------------------------------------
start_stack 1 http --size 100 || exit 1
start_stack 2 http --size 100 || exit 1
start_stack 3 http --size 100 || exit 1
wait_owner s1 5
check "s1 routes $V; s2 and s3 report their HTTP listeners (DPT)" dpt_ready 80 2
ctl show dpt | sed 's/^/     /'
codes=$(for i in $(seq 1 20); do ip netns exec plx-client curl -s -m 3 -o /dev/null -w '%{http_code}:%{size_download} ' "http://$V/"; done)
check "curl: 20 new connections through the router, all 200 with 100-byte bodies" \
  test "$(echo "$codes" | tr ' ' '\n' | grep -c '^200:100$')" = 20
ip netns exec plx-client wrk -t2 -c100 -d3s --timeout 5s "http://$V/" >"$LOGDIR/wrk.txt" 2>&1
reqs=$(awk '/requests in/ {print $1}' "$LOGDIR/wrk.txt")
echo "     wrk -c100 through the router: $(grep -E 'Requests/sec' "$LOGDIR/wrk.txt")"
check "wrk -c 100 through the router: ${reqs:-0} requests, no socket errors, no non-2xx" \
  sh -c "[ \"${reqs:-0}\" -gt 1000 ] && ! grep -qE 'Socket errors|Non-2xx' '$LOGDIR/wrk.txt'"
# ctl show dpt's SYNS column: the SYNs the XDP program steered count for their target too.
sleep 0.3
dpt_syns=$(ctl show dpt | awk -v v="$V:80" '$1 == v && ($2 == "s2" || $2 == "s3") { printf "%s=%s ", $2, $NF }')
echo "     DPT SYNS after curl and wrk: $dpt_syns"
check "ctl show dpt counts the steered SYNs per target ($dpt_syns)" \
  sh -c "echo '$dpt_syns' | awk '{ for (i = 1; i <= NF; i++) { split(\$i, a, \"=\"); if (a[2] < 40) bad = 1 } } END { exit (NF == 2 && !bad) ? 0 : 1 }'"
for i in 1 2 3; do stop_stack $i; done
acc2=$(grep -o "accepted=[0-9]*" "$LOGDIR/s2.log" | tail -1 | cut -d= -f2)
acc3=$(grep -o "accepted=[0-9]*" "$LOGDIR/s3.log" | tail -1 | cut -d= -f2)
acc1=$(grep -o "accepted=[0-9]*" "$LOGDIR/s1.log" | tail -1 | cut -d= -f2)
echo "     connections accepted: s1 (router, not a target) ${acc1:-?}, s2 ${acc2:-?}, s3 ${acc3:-?}"
check "round robin: both targets accepted about half (s2 ${acc2:-0}, s3 ${acc3:-0}), the router none" \
  sh -c "[ \"${acc2:-0}\" -ge 40 ] && [ \"${acc3:-0}\" -ge 40 ] && [ \"${acc1:-1}\" = 0 ] && [ \$(( ${acc2:-0} - ${acc3:-0} )) -le 2 ] && [ \$(( ${acc3:-0} - ${acc2:-0} )) -le 2 ]"
fwd=$(grep -o "xdp: .*forwarded [0-9]*" "$LOGDIR/s1.log" | tail -1 | awk '{print $NF}')
slow=$(grep -o "forwarded [0-9]* unforwarded" "$LOGDIR/s1.log" | tail -1 | awk '{print $2}')
steered=$(grep -o "syn_steered [0-9]*" "$LOGDIR/s1.log" | tail -1 | awk '{print $2}')
echo "     router s1: XDP fast path forwarded ${fwd:-?} segments and steered ${steered:-?} SYNs; its poll thread forwarded ${slow:-?} (SYNs and first segments of flows the program did not know)"
check "the router's XDP program forwarded established flows itself (${fwd:-0} > poll thread's ${slow:-0})" \
  sh -c "[ \"${fwd:-0}\" -gt \"${slow:-0}\" ]"
check "the router's XDP program handed the new connections to the targets itself (${steered:-0} SYNs steered, round robin)" \
  sh -c "[ \"${steered:-0}\" -ge 100 ]"

# --- long-lived connections: router killed, then taken back --------------------------------
rm -f "$REGION"
start_stack 1 echo || exit 1
start_stack 2 echo || exit 1
start_stack 3 echo || exit 1
wait_owner s1 5
check "s2 and s3 report their echo listeners" dpt_ready 7 2
STOP=$LOGDIR/stop-seq
rm -f "$STOP"
ip netns exec plx-client python3 "$HERE/seq_echo.py" $V 7 50 "$STOP" 60 10 >"$LOGDIR/seq.json" 2>&1 &
SEQ=$!
sleep 2
echo "     CRT before the kill: s2 $(crt_count s2), s3 $(crt_count s3) connections"
ctl show crt | head -5
kill -9 "${SPID[1]}"
t0=$(date +%s%N)
check "s2 takes the address over" wait_owner s2 3
echo "     takeover seen by ctl after $(( ($(date +%s%N) - t0) / 1000000 )) ms"
sleep 2
check "the new router s2 rebuilt the CRT from the targets' reports (50 rows)" \
  sh -c "[ \$(( \$($PLEX ctl --config $CFG show crt 2>/dev/null | wc -l) - 1 )) -ge 50 ]"
start_stack 1 echo || true
check "the primary s1 takes the address back" wait_owner s1 10
sleep 2
touch "$STOP"
wait "$SEQ"; rc=$?
res=$(tail -1 "$LOGDIR/seq.json")
echo "     seq_echo: $res"
field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])['$1'])" "$res" 2>/dev/null; }
check "50 long-lived connections through kill -9 of the router and the takeback: all completed byte-exact (rc $rc)" \
  sh -c "[ '$(field completed)' = 50 ] && [ '$(field mismatches)' = 0 ]"
check "none was reset ($(field resets) resets, $(field errors) other errors)" sh -c "[ '$(field resets)' = 0 ] && [ '$(field errors)' = 0 ]"
echo "     longest stall a client saw: $(field max_stall_ms) ms (connections stalled over 100 ms: $(field stalls_over_100ms))"

# --- a target killed: its clients are reset, the others untouched --------------------------
rm -f "$STOP"
ip netns exec plx-client python3 "$HERE/seq_echo.py" $V 7 20 "$STOP" 30 10 >"$LOGDIR/seq2.json" 2>&1 &
SEQ=$!
sleep 1.5
KILLED=$(python3 -c 'import time; print(time.monotonic())')
kill -9 "${SPID[3]}"
sleep 1.5
touch "$STOP"
wait "$SEQ"
res=$(tail -1 "$LOGDIR/seq2.json")
echo "     seq_echo with s3 killed: $res"
check "a killed target's clients are reset, the other target's complete (10 + 10)" \
  sh -c "[ '$(field completed)' = 10 ] && [ \$(( $(field resets) + $(field errors) )) = 10 ] && [ '$(field mismatches)' = 0 ]"
echo "     the last of them was reset $(python3 -c "import sys; print(round((float(sys.argv[1]) - float(sys.argv[2])) * 1000, 1))" "$(field last_reset_mono)" "$KILLED" 2>/dev/null) ms after the kill (they send a line every 10 ms)"
for i in 1 2; do stop_stack $i; done
rm -f "$REGION"
[ "$FAILS" = 0 ] || { echo "$FAILS check(s) failed"; exit 1; }
echo "all distributor checks passed"
