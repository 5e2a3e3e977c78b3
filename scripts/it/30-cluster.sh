#!/usr/bin/env bash
# The cluster on the testbed: three plex stacks (`plex run --stack s1|s2|s3 echo`, the embedded
# testbed config) sharing a coupling region, and a Linux client. DVIPA 198.18.0.100 has primary
# s1 and backups s2 (rank 20) and s3 (rank 10). Shown here: takeover after kill -9 while the
# client connects in a loop (time from kill to first successful connection printed), the
# client's ARP entry moved by the backup's gratuitous ARP (capture), immediate giveback,
# delayed giveback while a connection is open, a SIGSTOP'd owner fenced when it resumes (it
# sends nothing for the address), bind activation in the VIPA range, operator commands and
# their refusals, and `plex ctl` without privilege; an unprivileged `plex run` creates no region
# and a root stack refuses a region another uid owns (squatting); a command move returns once
# the new owner has announced the address (the gap is printed); a DVIPA whose primary never
# started is activated by its first backup after the grace (primary_grace_ms, default 3000).
set -uo pipefail
source "$(dirname "$0")/lib.sh"
HERE=$(dirname "$0")

echo "== cluster tests (logs in $LOGDIR)"
"$TB" down
"$TB" up 3
REGION=/dev/shm/plex-plx-testbed
rm -f "$REGION"
V=198.18.0.100
declare -A SPID

mac_of() { ip netns exec "plx-s$1" cat "/sys/class/net/plx-s$1/address"; }
mono_ms() { python3 -c 'import time; print(time.monotonic_ns() // 1000000)'; }

# start_stack I [ARGS...]: plex run --stack sI (ip netns exec execs plex: $! is its pid).
start_stack() {
  local i=$1; shift
  ip netns exec "plx-s$i" "$PLEX" run --stack "s$i" "$@" >>"$LOGDIR/s$i.log" 2>&1 &
  SPID[$i]=$!
  disown "$!" 2>/dev/null || true  # no "Killed" job notices: kill -9 is the point
  PIDS+=($!)
  for _ in $(seq 1 50); do
    grep -q "^plex: stack s$i" "$LOGDIR/s$i.log" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "stack s$i did not start: $(tail -3 "$LOGDIR/s$i.log")"
  return 1
}

dvipa_field() { # ADDR COLUMN
  "$PLEX" ctl show dvipas 2>/dev/null | awk -v a="$1" -v c="$2" 'index($1, a "/") == 1 {print $c}'
}
owner_of() { dvipa_field "$1" 3; }
wait_owner() { # ADDR STACK SECONDS
  local n=$(( ${3:-3} * 20 ))
  for _ in $(seq 1 "$n"); do
    [ "$(owner_of "$1")" = "$2" ] && return 0
    sleep 0.05
  done
  echo "     $1 is owned by '$(owner_of "$1")', expected $2"
  return 1
}
echo_ok() { # ADDR [PORT]
  [ "$(echo hello | ip netns exec plx-client timeout 3 socat -t 1 - "TCP:$1:${2:-7},connect-timeout=1" 2>/dev/null)" = hello ]
}
# exited_with CODE RC TEXT PATTERN: the command exited with CODE and said PATTERN.
exited_with() { [ "$2" = "$1" ] && printf '%s' "$3" | grep -q -- "$4"; }
no_echo() { ! echo_ok "$@"; }
wait_log() { # FILE PATTERN COUNT: until FILE has COUNT lines with PATTERN (bounded: 2 s)
  for _ in $(seq 1 40); do
    [ "$(grep -cF -- "$2" "$1")" -ge "$3" ] && return 0
    sleep 0.05
  done
  return 1
}
neigh_mac() { ip netns exec plx-client ip neigh show "$1" | awk '{print $5}'; }

# --- squatting: no region from an unprivileged run; none of another uid is used -----------
out=$(ip netns exec plx-s1 setpriv --reuid=nobody --regid=nogroup --clear-groups "$PLEX" run --stack s1 echo 2>&1); rc=$?
check "plex run as nobody is refused (exit $rc: $out)" exited_with 1 "$rc" "$out" "needs root"
check "... and created no coupling region" test ! -e "$REGION"
setpriv --reuid=nobody --regid=nogroup --clear-groups sh -c "umask 077; : > $REGION"
out=$(ip netns exec plx-s1 timeout 5 "$PLEX" run --stack s1 echo 2>&1); rc=$?
check "a root stack refuses a region owned by nobody, naming the owner (exit $rc: $out)" exited_with 1 "$rc" "$out" "owned by uid 65534"
rm -f "$REGION"

for i in 1 2 3; do start_stack "$i" echo || exit 1; done
check "s1 activates its primary DVIPA $V" wait_owner $V s1 3
check "s2 activates its primary DVIPA 198.18.0.101" wait_owner 198.18.0.101 s2 3
check "the region is a 0600 file in /dev/shm" test "$(stat -c %a "$REGION")" = 600
"$PLEX" ctl show members >"$LOGDIR/members.txt"
check "plex ctl show members: three stacks up" test "$(grep -c ' up ' "$LOGDIR/members.txt")" = 3
"$PLEX" ctl show dvipas | tee "$LOGDIR/dvipas.txt" | sed 's/^/     /'
check "every stack sees the hierarchy s1 > s2 > s3 for $V" grep -q "^$V/24 .* s1 > s2 > s3$" "$LOGDIR/dvipas.txt"
check "echo through $V" echo_ok $V
check "the client resolved $V to s1's MAC" test "$(neigh_mac $V)" = "$(mac_of 1)"

# --- privilege --------------------------------------------------------------------------
out=$(setpriv --reuid=nobody --regid=nogroup --clear-groups "$PLEX" ctl show members 2>&1); rc=$?
check "ctl without privilege cannot read the 0600 region (exit $rc: $out)" exited_with 1 "$rc" "$out" "permission denied"
out=$(setpriv --reuid=nobody --regid=nogroup --clear-groups "$PLEX" ctl dvipa delete $V 2>&1); rc=$?
check "ctl dvipa delete without privilege is refused (exit $rc: $out)" exited_with 1 "$rc" "$out" refused
out=$(ip netns exec plx-s2 "$PLEX" run --stack s2 echo 2>&1); rc=$?
check "a second process for running stack s2 is refused before touching the interface (exit $rc: $out)" exited_with 1 "$rc" "$out" "already running"

# --- takeover after kill -9 during a connect loop ---------------------------------------
ip netns exec plx-client tcpdump -i plx-c -nn -e -U -w "$LOGDIR/client-arp.pcap" arp 2>/dev/null &
PIDS+=($!)
sleep 0.5
ip netns exec plx-client python3 "$HERE/conn_loop.py" $V 7 3.0 "$LOGDIR/loop.txt" &
loop=$!
sleep 1
kill_ms=$(python3 -c 'import os, sys, time; t = time.monotonic_ns(); os.kill(int(sys.argv[1]), 9); print(t)' "${SPID[1]}")
wait "$loop"
read -r before first attempts < <(awk -v k="$kill_ms" '
  $1 < k && $3 == 1 { before++ }
  $1 >= k { n++; if ($3 == 1 && first == "") first = ($2 - k) / 1e6 }
  END { printf "%d %s %d\n", before, (first == "" ? "none" : first), n }' "$LOGDIR/loop.txt")
took=$(awk -v k="$kill_ms" -v a="$V" '$0 ~ a " active \\(took over" { sub(":", "", $2); printf "%.3f", $2 - k / 1e6; exit }' "$LOGDIR/s2.log")
echo "     $before connections before the kill; kill -9 to s2's takeover (its log): ${took:-?} ms; to the first successful connection: ${first} ms ($attempts attempts after the kill)"
check "connections succeeded before the kill" test "$before" -gt 0
check "the backup served a connection on $V after kill -9 (${first} ms, target < 100 ms)" test "$first" != none
check "s2 (rank 20) took $V over, not s3" wait_owner $V s2 2
check "s2 logged the takeover" grep -q "$V active (took over from a failed stack)" "$LOGDIR/s2.log"
check "the client's ARP entry for $V moved to s2's MAC" test "$(neigh_mac $V)" = "$(mac_of 2)"
kill -INT "${PIDS[-1]}" 2>/dev/null; sleep 0.3
tcpdump -nn -e -r "$LOGDIR/client-arp.pcap" 2>/dev/null >"$LOGDIR/client-arp.txt"
check "capture: s2 announced $V by gratuitous ARP from its MAC" \
  grep -qiE "^.* $(mac_of 2) > ff:ff:ff:ff:ff:ff.*(Request who-has $V tell $V|Reply $V is-at)" "$LOGDIR/client-arp.txt"

# --- immediate giveback: the primary returns, no connections on the holder ----------------
n_active=$(grep -cF "$V active (given back by its holder)" "$LOGDIR/s1.log")
start_stack 1 echo
check "s1 is back: s2 (no connections) gave $V back at once" wait_owner $V s1 2
check "s2 logged the giveback" grep -q "$V inactive (given back to its primary" "$LOGDIR/s2.log"
# The owner word moves before s1's next tick activates and announces the address: wait for that.
check "s1 activated and announced $V" wait_log "$LOGDIR/s1.log" "$V active (given back by its holder)" $((n_active + 1))
check "echo through $V after the giveback" echo_ok $V
check "the client's ARP entry for $V is s1's again" test "$(neigh_mac $V)" = "$(mac_of 1)"

# --- delayed giveback: the holder has a connection ----------------------------------------
kill -9 "${SPID[1]}"
check "s2 takes $V over again" wait_owner $V s2 2
rel=$LOGDIR/release; rm -f "$rel"
ip netns exec plx-client python3 "$HERE/hold_conn.py" $V 7 "$rel" >"$LOGDIR/hold.txt" 2>&1 &
hold=$!
for _ in $(seq 1 40); do [ "$(dvipa_field $V 6)" = 1 ] && break; sleep 0.05; done
check "the held connection lives on s2 (ctl shows 1 connection)" test "$(dvipa_field $V 6)" = 1
start_stack 1 echo
sleep 0.5
"$PLEX" ctl show dvipas >"$LOGDIR/delayed.txt"
check "delayed giveback: s2 keeps $V while its connection is open" grep -q "^$V/24 .* s2 .*delayed-giveback" "$LOGDIR/delayed.txt"
check "s1 waits as backup rank 255: hierarchy s2 > s1 > s3" grep -q "^$V/24 .* s2 > s1 > s3$" "$LOGDIR/delayed.txt"
touch "$rel"
wait "$hold"
check "the held connection worked to its end (echo before and after)" grep -q "released ok" "$LOGDIR/hold.txt"
check "its last connection closed: $V goes back to s1" wait_owner $V s1 3

# --- a SIGSTOP'd owner resumed after the takeover never answers for the address ------------
# (stop s1 only once it has acted on the giveback: the address is in its home list)
for _ in $(seq 1 40); do [ "$(grep -c "$V active" "$LOGDIR/s1.log")" -ge 3 ] && break; sleep 0.05; done
kill -STOP "${SPID[1]}"
check "s1 stopped: s2 takes $V over when s1's lease expires" wait_owner $V s2 3
ip netns exec plx-client python3 "$HERE/hold_conn.py" $V 7 "$rel.2" >"$LOGDIR/hold2.txt" 2>&1 &
hold=$!
for _ in $(seq 1 40); do [ "$(dvipa_field $V 6)" = 1 ] && break; sleep 0.05; done
ip netns exec plx-client tcpdump -i plx-c -nn -e -U -w "$LOGDIR/stop.pcap" "ether src $(mac_of 1)" 2>/dev/null &
PIDS+=($!)
sleep 0.5
kill -CONT "${SPID[1]}"
sleep 1
kill -INT "${PIDS[-1]}" 2>/dev/null; sleep 0.3
check "s1 found itself fenced when it resumed" grep -q "fenced: declared failed while stalled" "$LOGDIR/s1.log"
check "s1 dropped $V without a word" grep -q "$V inactive (fenced" "$LOGDIR/s1.log"
n=$(tcpdump -nn -r "$LOGDIR/stop.pcap" 2>/dev/null | grep -c "$V" || true)
check "s1 sent nothing for $V after it resumed ($n frames)" test "$n" = 0
check "s2 still owns $V (delayed giveback to the rejoined s1)" test "$(owner_of $V)" = s2
touch "$rel.2"; wait "$hold"
check "the connection on s2 was undisturbed" grep -q "released ok" "$LOGDIR/hold2.txt"
check "then $V goes back to s1" wait_owner $V s1 3

# --- bind activation and operator commands ------------------------------------------------
R=198.18.0.130
kill -INT "${SPID[3]}"; sleep 0.5
start_stack 3 --bind $R echo
check "bind() to $R (inside the VIPA range) activated it on s3" wait_owner $R s3 2
check "ctl shows $R as a range address activated by bind" test "$(dvipa_field $R 5)" = bind
check "echo through $R" echo_ok $R
"$PLEX" ctl dvipa activate $R --stack s2 >"$LOGDIR/activate.txt" 2>&1; rc=$?
check "ctl dvipa activate $R --stack s2 (exit $rc): $(cat "$LOGDIR/activate.txt")" test "$rc" = 0
check "the command returned once s2 had announced $R" grep -q "s2 has announced it" "$LOGDIR/activate.txt"
check "$R moved to s2" test "$(owner_of $R)" = s2
off=$(awk -v a="$R" '$0 ~ a " inactive \\(moved" { sub(":", "", $2); print $2 }' "$LOGDIR/s3.log" | tail -1)
on=$(awk -v a="$R" '$0 ~ a " active \\(activated by command" { sub(":", "", $2); print $2 }' "$LOGDIR/s2.log" | tail -1)
echo "     move gap (s3 left $R -> s2 activated it, from their logs): $(awk -v a="${off:-0}" -v b="${on:-0}" 'BEGIN { printf "%.3f", b - a }') ms (heartbeat 10 ms)"
check "echo through $R on s2" echo_ok $R
"$PLEX" ctl dvipa activate $V --stack s2 >"$LOGDIR/refused.txt" 2>&1; rc=$?
check "activating a primary/backup DVIPA by command is refused (exit $rc: $(cat "$LOGDIR/refused.txt"))" exited_with 1 "$rc" "$(cat "$LOGDIR/refused.txt")" refused
"$PLEX" ctl dvipa delete $R >/dev/null 2>&1; rc=$?
check "ctl dvipa delete $R (exit $rc)" test "$rc" = 0
sleep 0.3
check "after the delete nobody answers for $R" no_echo $R
check "ctl shows $R deleted" test "$(dvipa_field $R 4)" = deleted

# --- a DVIPA whose primary never started: its first backup activates it after the grace ----
for i in 1 2 3; do kill -INT "${SPID[$i]}" 2>/dev/null; done
sleep 0.5
rm -f "$REGION"
start_stack 3 echo
start_stack 2 echo
check "primary s1 absent: s2 (rank 20) activates $V after the grace" wait_owner $V s2 6
check "s2 logged why" grep -q "$V active (its primary has not started within the grace period)" "$LOGDIR/s2.log"
check "echo through $V on s2" echo_ok $V
start_stack 1 echo
check "s1 starts: $V is given back to it" wait_owner $V s1 3

printf 'cluster = "x"\n' >"$LOGDIR/bad.toml"
out=$("$PLEX" config --check "$LOGDIR/bad.toml" 2>&1); rc=$?
check "a bad cluster config is refused with its reason (exit $rc: $out)" exited_with 1 "$rc" "$out" "bad.toml: "

for i in 1 2 3; do kill -INT "${SPID[$i]}" 2>/dev/null; done
sleep 0.5
rm -f "$REGION"
[ "$FAILS" = 0 ] && echo "== cluster tests: all passed" || echo "== cluster tests: $FAILS failed"
exit "$FAILS"
