#!/usr/bin/env bash
# Chaos experiment on the coupling region (issue 9, sections 3 and 4): the 3-stack testbed
# cluster (`plex run --stack s1|s2|s3 echo`, embedded config: DVIPA 198.18.0.100 primary s1,
# backups s2 rank 20 / s3 rank 10; 198.18.0.101 primary s2) with echo traffic, and these faults:
#   kill -9 of the owner, kill -9 of two stacks in a row, SIGSTOP of the owner past its lease,
#   the region file truncated / zeroed / overwritten with random bytes (each while echo traffic
#   runs against a stack's own address; then every stack is restarted and the first one
#   replaces the stale region), random bytes over the member and DVIPA rows only (the stacks
#   stay and repair them), and a squatting attempt by an unprivileged user.
# Prints one line per fault: `fault | figure | verdict`; writes a JSON object to $1 (if given):
#   {"survived": <fewest stacks alive after a region fault>, "stacks": 3, "faults": [...]}
# Exit status: the number of failed verdicts. `--quick` truncates once instead of five times.
#
# The caller holds the testbed lock (scripts/chaos.sh). Standalone:
#   flock /tmp/plx-testbed.lock scripts/chaos/region_faults.sh [--quick] [out.json]
set -uo pipefail
QUICK=0
if [ "${1:-}" = --quick ]; then QUICK=1; shift; fi
JSON=${1:-}
source "$(dirname "$0")/../it/lib.sh"
HERE=$(cd "$(dirname "$0")/../it" && pwd)
REGION=/dev/shm/plex-plx-testbed
V=198.18.0.100
W=198.18.0.101
declare -A SPID
FAULTS=()
SURVIVED=3
T0=$(date +%s.%N)

"$TB" down >/dev/null 2>&1
"$TB" up 3 >/dev/null || { echo "testbed up failed"; exit 1; }
rm -f "$REGION" "${REGION%.*}.lock"

# start_stack I: plex run --stack sI echo (ip netns exec execs plex: $! is its pid); tried up to
# three times (a just-stopped stack's AF_XDP socket may not be released yet).
start_stack() {
  local k
  for k in 1 2 3; do start_stack_once "$1" && return 0; sleep 0.3; done
  return 1
}
start_stack_once() {
  local i=$1
  ip netns exec "plx-s$i" "$PLEX" run --stack "s$i" echo >>"$LOGDIR/s$i.log" 2>&1 &
  SPID[$i]=$!
  disown "$!" 2>/dev/null || true
  PIDS+=($!)
  local n; n=$(grep -c "^plex: stack s$i" "$LOGDIR/s$i.log" 2>/dev/null)
  for _ in $(seq 1 50); do
    [ "$(grep -c "^plex: stack s$i" "$LOGDIR/s$i.log" 2>/dev/null)" -gt "${n:-0}" ] && return 0
    kill -0 "${SPID[$i]}" 2>/dev/null || break
    sleep 0.05
  done
  echo "stack s$i did not start: $(tail -2 "$LOGDIR/s$i.log")"
  return 1
}
stop_all() {
  for i in 1 2 3; do kill -INT "${SPID[$i]:-}" 2>/dev/null; done
  for i in 1 2 3; do
    for _ in $(seq 1 40); do kill -0 "${SPID[$i]:-}" 2>/dev/null || break; sleep 0.05; done
    kill -9 "${SPID[$i]:-}" 2>/dev/null
  done
}
restart_all() { stop_all; sleep 0.2; for i in 1 2 3; do start_stack "$i" || return 1; done; }
alive() { local n=0; for i in 1 2 3; do kill -0 "${SPID[$i]}" 2>/dev/null && n=$((n + 1)); done; echo $n; }
owner_of() { "$PLEX" ctl show dvipas 2>/dev/null | awk -v a="$1" 'index($1, a "/") == 1 {print $3}'; }
wait_owner() { # ADDR STACK SECONDS
  local n=$(( ${3:-3} * 20 ))
  for _ in $(seq 1 "$n"); do [ "$(owner_of "$1")" = "$2" ] && return 0; sleep 0.05; done
  return 1
}
echo_ok() { [ "$(echo hello | ip netns exec plx-client timeout 2 socat -t 1 - "TCP:$1:7,connect-timeout=1" 2>/dev/null)" = hello ]; }
# kill_at SIG PID...: send SIG to each PID (in order) and print CLOCK_MONOTONIC ns of the first.
kill_at() { python3 -c 'import os, sys, time
t = time.monotonic_ns()
for p in sys.argv[2:]: os.kill(int(p), int(sys.argv[1])); time.sleep(0.02)
print(t)' "$@"; }
# loop_start VAR ADDR SECONDS: the client's connect loop (one line per attempt: start end ok,
# 20 ms budget each, CLOCK_MONOTONIC) into a new file named in VAR; ms_after FILE T0: milliseconds from
# T0 until the end of the first successful attempt started after it ("none").
loop_start() { # VAR ADDR SECONDS: the file's name goes into VAR
  local f; f=$(mktemp "$LOGDIR/loop.XXXXXX")
  ip netns exec plx-client python3 "$HERE/conn_loop.py" "$2" 7 "$3" "$f" >/dev/null 2>&1 &
  LOOPS+=($!)
  printf -v "$1" '%s' "$f"
}
loops_wait() { for p in "${LOOPS[@]}"; do wait "$p" 2>/dev/null; done; LOOPS=(); }
ms_after() { awk -v t0="$2" '$1 >= t0 && $3 == 1 { printf "%d\n", ($2 - t0) / 1e6; found = 1; exit } END { if (!found) print "none" }' "$1"; }
LOOPS=()
record() { # NAME OK FIGURE DETAIL
  local v=FAIL; [ "$2" = true ] && v=ok
  [ "$2" = true ] || FAILS=$((FAILS + 1))
  printf '%-34s | %-34s | %s\n' "$1" "$3" "$v"
  FAULTS+=("$(printf '{"name": "%s", "ok": %s, "detail": "%s"}' "$1" "$2" "$(printf '%s' "$3; $4" | sed 's/["\\]/ /g')")")
}
# traffic ADDR SECONDS OUT: the client's connect loop (one line per attempt: start end ok).
traffic() { ip netns exec plx-client python3 "$HERE/conn_loop.py" "$1" 7 "$2" "$3" & TRAFFIC=$!; }
ok_ratio() { awk '{ n++; ok += $3 } END { printf "%d/%d", ok, n }' "$1"; }

for i in 1 2 3; do start_stack "$i" || exit 1; done
wait_owner $V s1 3 && wait_owner $W s2 3 || { echo "cluster did not form"; exit 1; }

# --- kill -9 of the owner --------------------------------------------------------------------
loop_start fv $V 1.5; sleep 0.4
t0=$(kill_at 9 "${SPID[1]}")
loops_wait; ms=$(ms_after "$fv" "$t0")
o=$(owner_of $V)
[ "$ms" != none ] && [ "$o" = s2 ] && r=true || r=false
record "kill -9 owner s1" "$r" "$V served by $o ${ms} ms after" "takeover by the rank-20 backup; ms from the kill to the first echoed connection"
start_stack 1; wait_owner $V s1 3

# --- kill -9 of two stacks in a row ----------------------------------------------------------
loop_start fv $V 1.5; loop_start fw $W 1.5; sleep 0.4
t0=$(kill_at 9 "${SPID[1]}" "${SPID[2]}")
loops_wait; ms=$(ms_after "$fv" "$t0"); ms2=$(ms_after "$fw" "$t0")
ov=$(owner_of $V); ow=$(owner_of $W)
[ "$ms" != none ] && [ "$ms2" != none ] && [ "$ov" = s3 ] && [ "$ow" = s3 ] && r=true || r=false
record "kill -9 s1 then s2" "$r" "$V, $W on $ov, $ow (${ms}, ${ms2} ms)" "the last stack holds both; ms from the first kill (s2 killed 20 ms later)"
start_stack 1; start_stack 2; wait_owner $V s1 3; wait_owner $W s2 3

# --- SIGSTOP of the owner past its lease -------------------------------------------------------
loop_start fv $V 1.5; sleep 0.4
t0=$(kill_at 19 "${SPID[1]}")
loops_wait; ms=$(ms_after "$fv" "$t0"); wait_owner $V s2 3
kill -CONT "${SPID[1]}"
sleep 0.3
grep -q "fenced: declared failed while stalled" "$LOGDIR/s1.log"; fenced=$?
wait_owner $V s1 3; back=$?
[ "$ms" != none ] && [ $fenced = 0 ] && [ $back = 0 ] && r=true || r=false
record "SIGSTOP s1 past the lease" "$r" "s2 served ${ms} ms after; s1 fenced=$([ $fenced = 0 ] && echo yes || echo no)" "lease 250 ms; then given back to s1"

# --- the region file goes bad under the running cluster ---------------------------------------
# region_fault NAME COMMAND...: run COMMAND on the region while echo traffic runs against s2's
# own address; every stack must stay alive, leave the cluster (say so), keep its own address;
# then a restart of the cluster replaces the stale region and serves the DVIPAs again.
region_fault() {
  local name=$1; shift
  local before; before=$(grep -c "serving its own address" "$LOGDIR"/s*.log | awk -F: '{ s += $2 } END { print s }')
  traffic 198.18.0.12 1.5 "$LOGDIR/traffic.txt"
  sleep 0.3
  "$@"
  sleep 0.6
  local n; n=$(alive)
  [ "$n" -lt "$SURVIVED" ] && SURVIVED=$n
  local left; left=$(grep -c "serving its own address" "$LOGDIR"/s*.log | awk -F: '{ s += $2 } END { print s }')
  left=$((left - before))
  local own=0; for i in 1 2 3; do echo_ok "198.18.0.1$i" && own=$((own + 1)); done
  wait "$TRAFFIC" 2>/dev/null
  local tr; tr=$(ok_ratio "$LOGDIR/traffic.txt")
  local stale0; stale0=$(cat "$LOGDIR"/s*.log | grep -c "found a stale coupling region")
  restart_all
  local replaced=no; [ "$(cat "$LOGDIR"/s*.log | grep -c "found a stale coupling region")" -gt "$stale0" ] && replaced=yes
  local served=no; wait_owner $V s1 3 && echo_ok $V && served=yes
  local r=false
  [ "$n" = 3 ] && [ "$left" = 3 ] && [ "$own" = 3 ] && [ "$replaced" = yes ] && [ "$served" = yes ] && r=true
  record "$name" "$r" "$n/3 alive, $left/3 left, $own/3 own addr" "echo on 198.18.0.12 during it $tr; after restart: stale region replaced=$replaced, $V served=$served"
}
size=$(stat -c %s "$REGION")
reps=5; [ "$QUICK" = 1 ] && reps=1
for k in $(seq 1 $reps); do region_fault "region truncated to 0 (#$k)" truncate -s 0 "$REGION"; done
region_fault "region zeroed" dd if=/dev/zero of="$REGION" bs=1M count=$(( size / 1048576 + 1 )) conv=notrunc status=none
region_fault "region overwritten with random" sh -c "head -c $size /dev/urandom | dd of=$REGION conv=notrunc status=none"

# --- random bytes over the member and DVIPA rows only: ignored, repaired, never adopted ----------
# (members at 4096, 16 x 128 bytes; DVIPAs at 8192, 64 x 128; range rows at 16384, 48 of 256)
inc_before=$("$PLEX" ctl show members | awk '$3 == "up" { printf "%s:%s ", $2, $4 }')
dd if=/dev/urandom of="$REGION" bs=1 seek=4096 count=2048 conv=notrunc status=none
dd if=/dev/urandom of="$REGION" bs=1 seek=8192 count=8192 conv=notrunc status=none
dd if=/dev/urandom of="$REGION" bs=1 seek=16384 count=6144 conv=notrunc status=none
sleep 0.5
inc_after=$("$PLEX" ctl show members | awk '$3 == "up" { printf "%s:%s ", $2, $4 }')
ignored=$("$PLEX" ctl show counters | awk '/rows each stack/ { f = 1; next } f { s += $2 } END { print s + 0 }')
listed=$("$PLEX" ctl show dvipas | tail -n +2 | wc -l)
sv=no; echo_ok $V && echo_ok $W && [ "$(owner_of $V)" = s1 ] && [ "$(owner_of $W)" = s2 ] && sv=yes
n=$(alive)
[ "$inc_before" = "$inc_after" ] && [ "$sv" = yes ] && [ "$n" = 3 ] && [ "$listed" -le 3 ] && [ "$ignored" -gt 0 ] && r=true || r=false
[ "$r" = true ] || echo "     random rows: incarnations before ($inc_before) after ($inc_after), served: $sv, alive: $n" >&2
record "random bytes over member/DVIPA rows" "$r" "$ignored rows ignored, $listed DVIPAs listed" "incarnations kept ($inc_after), $V/$W served by s1/s2: $sv, $n/3 alive"

# --- squatting: an unprivileged user tries to create the region first ------------------------------
stop_all
rm -f "$REGION"
out=$(ip netns exec plx-s1 runuser -u nobody -- "$PLEX" run --stack s1 echo 2>&1); rc=$?
created=no; [ -e "$REGION" ] && created=yes
setpriv --reuid=nobody --regid=nogroup --clear-groups sh -c "umask 077; : > $REGION"
out2=$(ip netns exec plx-s1 timeout 5 "$PLEX" run --stack s1 echo 2>&1); rc2=$?
rm -f "$REGION"
[ "$rc" = 1 ] && [ "$created" = no ] && [ "$rc2" = 1 ] && printf '%s' "$out2" | grep -q "owned by uid 65534" && r=true || r=false
record "squatting by nobody" "$r" "run refused (exit $rc), region created: $created; root refuses nobody's file (exit $rc2)" "$(printf '%s' "$out2" | head -1 | cut -c1-120)"

secs=$(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
echo "survived: $SURVIVED/3 stacks after every region fault; $FAILS failed; ${secs} s (logs in $LOGDIR)"
if [ -n "$JSON" ]; then
  { printf '{"survived": %d, "stacks": 3, "seconds": %s, "faults": [' "$SURVIVED" "$secs"
    (IFS=,; printf '%s' "${FAULTS[*]}")
    printf ']}\n'; } >"$JSON"
fi
exit "$FAILS"
