#!/usr/bin/env bash
# Cluster-wide ports on real interfaces (issue 13, spec/03): three plex stacks of one cluster on
# the namespace testbed; DVIPA 198.18.0.102 routed by s1 (backup s2), distributed to the
# targets s2 and s3, with `cluster_ports = true`. Applications on s2 and s3 open outbound
# connections from the DVIPA to a Linux echo server in the client namespace (s2 binds it
# explicitly, s3 gets it from `source_ipa` by its application name):
#   - both at once: every local port distinct across the two stacks, no 4-tuple twice at the
#     Linux server, every echoed byte checked, nothing reset; `plex ctl show ports` shows who
#     owns which port;
#   - the router killed (-9) while they talk, then restarted (takeback): nothing reset;
#   - a listener port bound on the DVIPA by s2 is refused to s3 (address in use);
#   - a killed stack's ports are reclaimed after the quarantine, not before.
set -uo pipefail
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/cluster_lib.sh"
HERE=$(dirname "$0")

echo "== cluster-wide ports tests (logs in $LOGDIR)"
"$TB" down
"$TB" up 3
CFG=$LOGDIR/cluster.toml
REGION=/dev/shm/plex-plx-ports
rm -f "$REGION"
V=198.18.0.102
SRV=198.18.0.1:7000
cat >"$CFG" <<TOML
[cluster]
name = "plx-ports"
region = "$REGION"
lease_ms = 250
heartbeat_ms = 10
port_quarantine_ms = 3000

TOML
stacks_toml >>"$CFG"
cat >>"$CFG" <<TOML
source_ipa = [{ address = "$V", apps = ["db-client"] }]

[[dvipa]]
address = "$V/24"
primary = "s1"
backups = [{ stack = "s2", rank = 20 }]
cluster_ports = true
[dvipa.distribute]
ports = [80]
targets = ["s2", "s3"]
TOML
wait_exit() { # I SECONDS
  for _ in $(seq 1 $(( $2 * 10 ))); do kill -0 "${SPID[$1]}" 2>/dev/null || return 0; sleep 0.1; done
  return 1
}
wait_line() { # FILE PATTERN SECONDS
  for _ in $(seq 1 $(( $3 * 10 ))); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  return 1
}
nports() { # STACK [STATE]: ports of the DVIPA `plex ctl show ports` lists as STACK's (live or dead)
  ctl show ports 2>/dev/null | awk -v s="$1" -v st="${2:-}" -v a="$V:" 'index($1, a) == 1 && $3 == s && (st == "" || $5 == st) {n++} END {print n + 0}'
}
last_done() { grep 'outbound: done:' "$1" | tail -1; }
field() { echo "$1" | grep -o "$2=[0-9]*" | cut -d= -f2; }

ip netns exec plx-client python3 "$HERE/echo_server.py" 198.18.0.1 7000 600 >"$LOGDIR/echo-server.log" 2>&1 &
ESRV=$!
PIDS+=($ESRV)
wait_listen plx-client 7000 || exit 1

# --- two targets, outbound from one address ----------------------------------------------
K=50
start_stack 1 echo || exit 1
wait_owner s1 5 || exit 1
: >"$LOGDIR/s2.log"; : >"$LOGDIR/s3.log"
start_stack 2 outbound --to $SRV --from $V --count $K --secs 4 || exit 1
start_stack 3 --app-name db-client outbound --to $SRV --count $K --secs 4 || exit 1
wait_line "$LOGDIR/s2.log" 'local ports' 10
wait_line "$LOGDIR/s3.log" 'local ports' 10
check "s2 (explicit bind) opened $K connections from $V" sh -c "grep -q 'from $V' '$LOGDIR/s2.log' && [ \$(grep -o 'local ports: [0-9,]*' '$LOGDIR/s2.log' | tr ',' '\n' | grep -c '[0-9]') = $K ]"
check "s3 (source_ipa for app db-client, no bind) opened $K connections from $V" sh -c "grep -q 'from $V' '$LOGDIR/s3.log' && [ \$(grep -o 'local ports: [0-9,]*' '$LOGDIR/s3.log' | tr ',' '\n' | grep -c '[0-9]') = $K ]"
all=$( (grep -o 'local ports: [0-9,]*' "$LOGDIR/s2.log"; grep -o 'local ports: [0-9,]*' "$LOGDIR/s3.log") | sed 's/local ports: //' | tr ',' '\n' | grep . )
check "all $((2 * K)) local ports distinct across s2 and s3 ($(echo "$all" | sort -u | wc -l) distinct of $(echo "$all" | wc -l))" \
  test "$(echo "$all" | sort -u | wc -l)" = $((2 * K))
ctl show ports >"$LOGDIR/ports.txt" 2>&1
sed 's/^/     /' "$LOGDIR/ports.txt" | tail -6
n2=$(nports s2 live); n3=$(nports s3 live)
check "plex ctl show ports: $K ports owned by s2 ($n2) and $K by s3 ($n3)" sh -c "[ $n2 = $K ] && [ $n3 = $K ]"
wait_exit 2 20; wait_exit 3 20
d2=$(last_done "$LOGDIR/s2.log"); d3=$(last_done "$LOGDIR/s3.log")
echo "     s2 $d2"
echo "     s3 $d3"
check "every echoed byte checked on both stacks: no reset, timeout or mismatch" \
  sh -c "[ '$(field "$d2" established)' = $K ] && [ '$(field "$d3" established)' = $K ] && [ '$(field "$d2" resets)$(field "$d2" timeouts)$(field "$d2" mismatches)' = 000 ] && [ '$(field "$d3" resets)$(field "$d3" timeouts)$(field "$d3" mismatches)' = 000 ]"

# --- the router killed and taken back while the targets talk ----------------------------------
start_stack 2 outbound --to $SRV --from $V --count $K --secs 8 || exit 1
start_stack 3 --app-name db-client outbound --to $SRV --count $K --secs 8 || exit 1
wait_line "$LOGDIR/s2.log" 'all.*established' 10
wait_line "$LOGDIR/s3.log" 'all.*established' 10
sleep 1
kill -9 "${SPID[1]}"
check "router killed: s2 takes $V over" wait_owner s2 3
sleep 2
start_stack 1 echo || true
check "the primary s1 takes $V back" wait_owner s1 10
wait_exit 2 25; wait_exit 3 25
d2=$(last_done "$LOGDIR/s2.log"); d3=$(last_done "$LOGDIR/s3.log")
echo "     s2 $d2"
echo "     s3 $d3"
check "through kill -9 of the router and the takeback: $((2 * K)) outbound connections, none reset, every byte echoed" \
  sh -c "[ '$(field "$d2" established)' = $K ] && [ '$(field "$d3" established)' = $K ] && [ '$(field "$d2" resets)$(field "$d2" timeouts)$(field "$d2" mismatches)' = 000 ] && [ '$(field "$d3" resets)$(field "$d3" timeouts)$(field "$d3" mismatches)' = 000 ]"

# --- an explicit bind another stack holds: address in use ------------------------------------
start_stack 2 --bind $V echo --port 5555 || exit 1
sleep 0.3
ip netns exec plx-s3 timeout 10 "$PLEX" run --config "$CFG" --stack s3 --bind $V echo --port 5555 >"$LOGDIR/s3-bind.log" 2>&1
rc=$?
echo "     s3: $(grep -i 'in use' "$LOGDIR/s3-bind.log" | head -1)"
check "s3 cannot listen on $V:5555 while s2 does (exit $rc, address in use)" sh -c "[ $rc != 0 ] && grep -qi 'in use' '$LOGDIR/s3-bind.log'"

# --- a dead stack's ports: kept for the quarantine, then reclaimed -----------------------------
stop_stack 2
start_stack 3 --app-name db-client outbound --to $SRV --count 20 --secs 60 || exit 1
wait_line "$LOGDIR/s3.log" 'all 20 established' 10
mine=$(grep -o 'local ports: [0-9,]*' "$LOGDIR/s3.log" | tail -1 | sed 's/local ports: //' | tr ',' ' ')
kill -9 "${SPID[3]}"
sleep 1
ctl show ports >"$LOGDIR/ports-dead.txt" 2>&1
n_dead=0
for p in $mine; do awk -v k="$V:$p" '$1 == k && $3 == "s3" && $5 == "dead" {f = 1} END {exit !f}' "$LOGDIR/ports-dead.txt" && n_dead=$((n_dead + 1)); done
check "s3 killed: the 20 ports of its connections stay claimed (dead owner) during the quarantine ($n_dead of 20 listed dead 1 s after)" \
  test "$n_dead" = 20
for _ in $(seq 1 60); do [ "$(nports s3)" = 0 ] && break; sleep 0.1; done
check "and are reclaimed once the 3 s quarantine is over ($(nports s3) left)" test "$(nports s3)" = 0
stop_stack 1
echo "     router s1 (second run): $(grep 'cluster ports:' "$LOGDIR/s1.log" | tail -1 | sed 's/^queue 0 //')"
echo "     router s1 forwarded by its CRT: $(grep -o 'forwarded: [0-9]*' "$LOGDIR/s1.log" | tail -1)"
kill -INT $ESRV 2>/dev/null; wait $ESRV 2>/dev/null
echo "     Linux echo server: $(tail -1 "$LOGDIR/echo-server.log")"
acc=$(tail -1 "$LOGDIR/echo-server.log" | python3 -c 'import json,sys; print(json.load(sys.stdin)["accepted"])' 2>/dev/null)
check "the Linux server accepted every connection the stacks opened ($((4 * K + 20)) expected, ${acc:-?} accepted; no two shared a 4-tuple)" \
  test "${acc:-0}" = $((4 * K + 20))
rm -f "$REGION"
[ "$FAILS" = 0 ] || { echo "$FAILS check(s) failed"; exit 1; }
echo "all cluster-wide ports checks passed"
