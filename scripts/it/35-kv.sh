#!/usr/bin/env bash
# The KV servers of apps/examples written against plex's application APIs (kv_blocking: the
# blocking std-like API, a thread per connection; kv_rtc: the run-to-completion API) on
# AF_XDP, and the same server on Linux sockets (kv_linux), on the namespace testbed: the
# protocol over the wire (a malformed line, pipelined requests, one map for every connection),
# then plex-kvload from the Linux client with 50 and 1000 connections, every reply checked
# against each connection's model. Passes on 0 mismatches, 0 errors and requests > 0; the
# figures (req/s, latency, server CPU per request) are printed, never asserted. One queue on
# the bridge testbed, then two queues on the multi-queue pair (plex servers only).
# The servers are the list in scripts/kv.sh. PLEX_KV_SECS: seconds per load (3).
set -uo pipefail
source "$(dirname "$0")/lib.sh"
source "$here/scripts/kv.sh"
SECS=${PLEX_KV_SECS:-3}

echo "== KV servers on plex's application APIs (logs in $LOGDIR)"
(cd "$here" && cargo build --release --locked -p apps -p bench --bins --examples 2>&1 | tail -1)
"$TB" down
"$TB" up 1
# kv_linux's kernel address beside plex's (XDP steers only plex's address to the XSK).
ip netns exec plx-s1 ip addr add 198.18.0.12/24 dev plx-s1

# ask CLIENT_NS LINES: send LINES on one connection to KV_ADDR, print the answers.
ask() { printf "$2" | ip netns exec "$1" timeout 10 socat -t 3 - "TCP:$KV_ADDR" 2>&1; }

# kv_round NAME NS IFACE PLEX_ADDR LINUX_ADDR QUEUES CLIENT_NS LABEL
kv_round() {
  local name=$1 q=$6 client=$7 label=$8 got n rc f
  kv_start "$name" "$2" "$3" "$4" "$5" "$q" "$LOGDIR/kv-$label.log" || { fail "$label: the server starts"; return; }
  got=$(ask "$client" 'BAD\nSET a b\nGET a\nGET zz\nSET x\n')
  check "$label: a malformed line is answered ERR and the connection goes on (5 pipelined requests)" \
    sh -c "printf '%s\n' \"\$0\" | awk 'NR==1 && /^ERR / {e++} NR==2 && \$0==\"OK\" {e++} NR==3 && \$0==\"VALUE b\" {e++} NR==4 && \$0==\"NONE\" {e++} NR==5 && /^ERR / {e++} END {exit !(e==5 && NR==5)}'" "$got"
  ask "$client" 'SET shared v1\n' >/dev/null
  n=0
  for _ in $(seq 1 20); do [ "$(ask "$client" 'GET shared\n')" = "VALUE v1" ] && n=$((n + 1)); done
  check "$label: a SET on one connection is seen by 20 other connections ($n/20)" test "$n" = 20
  for c in 50 1000; do
    f=$LOGDIR/kv-$label-$c.json
    kv_load "$client" "$c" "$SECS" "$f" | sed 's/^/     /'
    rc=${PIPESTATUS[0]}
    check "$label, $c connections: $(kv_field "$f" requests) requests, $(kv_field "$f" errors) errors, $(kv_field "$f" mismatches) mismatches (kvload exit $rc)" \
      sh -c "[ $rc = 0 ] && [ \"$(kv_field "$f" requests)\" -gt 0 ] && [ \"$(kv_field "$f" errors)\" = 0 ] && [ \"$(kv_field "$f" mismatches)\" = 0 ]"
  done
  kv_stop
  if [ "$q" -gt 1 ]; then
    local q0 q1
    q0=$(awk '/^queue 0:/ {for (i=1;i<=NF;i++) if ($i=="rx") print $(i+1)}' "$LOGDIR/kv-$label.log")
    q1=$(awk '/^queue 1:/ {for (i=1;i<=NF;i++) if ($i=="rx") print $(i+1)}' "$LOGDIR/kv-$label.log")
    check "$label: both queues served (queue 0 received ${q0:-0} frames, queue 1 ${q1:-0})" \
      sh -c "[ \"${q0:-0}\" -gt 1000 ] && [ \"${q1:-0}\" -gt 1000 ]"
  fi
}

for name in $(kv_names); do
  kv_round "$name" plx-s1 plx-s1 198.18.0.11/24 198.18.0.12 1 plx-client "kv_$name"
done

# Two queues: flows spread over both poll threads (native XDP on the direct pair), one map.
"$TB" up-mq 2
for name in $(kv_names); do
  [ "$(kv_kind "$name")" = plex ] || continue
  KV_XDP_MODE=native kv_round "$name" plx-mqs plx-mq1 198.18.1.2/24 - 2 plx-mqc "kv_$name-2q"
done

echo "== KV: $FAILS failure(s)"
[ "$FAILS" = 0 ]
