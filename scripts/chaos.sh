#!/usr/bin/env bash
# The chaos suite: plex tried as an attacker and an operator would, on the namespace testbed,
# with the project's own flood and fuzz tool (bench: plex-flood) and legitimate client
# (plex-httpprobe), Linux measured in the same run where a Linux figure means something.
#
#   synflood      spoofed-SYN flood at the highest rate the client namespace generates, against
#                 plex (http) and against Linux (nginx, tcp_syncookies=1); a legitimate client
#                 starts a connection every 10 ms fetching /bytes/1024 and /bytes/1048576:
#                 success fraction and latency before, during and from 1 s after the flood
#   abandoned     connections opened with half an HTTP request and abandoned: plex's memory
#                 per connection, its connection limit holding, the header timeout freeing them
#   fuzz          seeded malformed frames of every kind at the highest rate: plex alive, still
#                 serving, every frame accounted for in its drop counters
#   region_faults the cluster: kill -9, SIGSTOP, region truncated/zeroed/overwritten, squatting
#   sim_sweep     every simulation test over many seeds
#
# Usage: scripts/chaos.sh [--quick] [--json FILE] [--only NAME[,NAME]]
#   --quick: about 4 minutes (run by scripts/test.sh). The full run is long: the experiments
#   take ~15 minutes, the simulation sweep (10 000 seeds of each per-seed test, 200 of the
#   41-scenario matrix) about an hour on two cores; `--only` picks parts.
# Prints a table `experiment | figure | verdict`; exits 1 if a verdict is FAIL.
set -uo pipefail
cd "$(dirname "$0")/.."
here=$(pwd)

QUICK=0
JSON=""
ONLY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --json) JSON=${2:?--json needs a file}; shift ;;
    --only) ONLY=${2:?--only needs names}; shift ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "chaos.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done
[ "$(id -u)" = 0 ] || { echo "chaos.sh: needs root (network namespaces, AF_XDP)" >&2; exit 2; }

source scripts/deps.sh
install_deps
install_nginx

echo "== building (release)"
cargo build --release --locked -p apps -p bench 2>&1 | tail -1
PLEX=$here/target/release/plex
FLOOD=$here/target/release/plex-flood
PROBE=$here/target/release/plex-httpprobe
TB=$here/scripts/testbed.sh
OUT=$(mktemp -d /tmp/plx-chaos.XXXXXX)
echo "== logs in $OUT"

# One user of the testbed at a time (every script that uses it takes this lock), unless the
# caller holds it already (scripts/test.sh, itself run under the lock, says so).
if [ -z "${PLX_TESTBED_LOCK_HELD:-}" ]; then
  exec 9>/tmp/plx-testbed.lock
  flock 9
fi

PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  sleep 0.3
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  "$TB" down >/dev/null 2>&1 || true
}
trap cleanup EXIT

ROWS=()      # "experiment|figure|verdict"
JPARTS=()    # "key": value
FAILED=0
row() { ROWS+=("$1|$2|$3"); [ "$3" = FAIL ] && FAILED=1; printf '  %-14s %-70s %s\n' "$1" "$2" "$3"; }
want() { [ -z "$ONLY" ] || [[ ",$ONLY," == *",$1,"* ]]; }
# json_get FILE KEY.PATH : a number from a JSON file (python: no jq on a fresh machine).
json_get() { python3 -c 'import json,sys
d=json.load(open(sys.argv[1]))
for k in sys.argv[2].split("."): d=d[k]
print(d)' "$1" "$2" 2>/dev/null || echo 0; }
ge() { python3 -c 'import sys; sys.exit(0 if float(sys.argv[1]) >= float(sys.argv[2]) else 1)' "$1" "$2"; }

mac_of() { ip netns exec "$1" cat "/sys/class/net/$2/address"; }
# stat_of LOG NAME: a counter from plex's --stats output (0 when absent).
stat_of() { grep -o "\b$2=[0-9]*" "$1" | head -1 | cut -d= -f2 | grep . || echo 0; }
# start_bg NS LOG CMD...: run in a namespace in the background (ip netns exec execs: $! is it).
start_bg() { local ns=$1 log=$2; shift 2; ip netns exec "$ns" "$@" >"$log" 2>&1 & PIDS+=($!); disown $! 2>/dev/null || true; }
stop_bg() { kill -INT "$1" 2>/dev/null; for _ in $(seq 1 50); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done; kill -9 "$1" 2>/dev/null; }
wait_log() { for _ in $(seq 1 50); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done; echo "not started: $(tail -3 "$1")"; return 1; }

if [ $QUICK = 1 ]; then FLOOD_SECS=8; FUZZ_SECS=10; else FLOOD_SECS=30; FUZZ_SECS=30; fi

# --- SYN flood ---------------------------------------------------------------------------------
# The probe runs before (2 s), during (FLOOD_SECS) and after (3 s, counted from 1 s after the
# flood stops). plex: http on plx-s1 (198.18.0.11); Linux: nginx on plx-s2 (198.18.0.12).
synflood_run() { # NAME ADDR NS IFACE [FLOOD ARGS...]
  local name=$1 addr=$2 ns=$3 ifc=$4; shift 4
  local mac total; mac=$(mac_of "$ns" "$ifc")
  total=$((2 + FLOOD_SECS + 4))
  ip netns exec plx-client "$PROBE" "$addr:80" --secs "$total" --interval-ms 10 --timeout-ms 10000 \
    --window "before:0:1.5" --window "during:2:$((2 + FLOOD_SECS))" --window "after:$((3 + FLOOD_SECS)):$total" \
    --json "$OUT/probe-$name.json" >"$OUT/probe-$name.txt" 2>&1 &
  local probe=$!
  sleep 2
  ip netns exec plx-client "$FLOOD" synflood plx-c "$addr:80" "$mac" --secs "$FLOOD_SECS" "$@" >"$OUT/flood-$name.txt" 2>&1
  wait "$probe"
  grep -v '^probe: ' "$OUT/probe-$name.txt" | sed "s/^/     $name /"
  tail -1 "$OUT/flood-$name.txt" | sed "s/^/     $name /"
}

if want synflood; then
  echo "== synflood ($FLOOD_SECS s flood)"
  "$TB" down; "$TB" up 2 >/dev/null
  # Linux victim: nginx with syncookies on plx-s2, which gets a kernel address.
  ip netns exec plx-s2 ip addr add 198.18.0.12/24 dev plx-s2
  ip netns exec plx-s2 sysctl -qw net.ipv4.tcp_syncookies=1
  mkdir -p "$OUT/www/bytes"
  head -c 1024 /dev/zero | tr '\0' x >"$OUT/www/bytes/1024"
  head -c 1048576 /dev/zero | tr '\0' x >"$OUT/www/bytes/1048576"
  chmod -R a+rX "$OUT"
  cat >"$OUT/nginx.conf" <<NGINX
user root;
worker_processes 1;
pid $OUT/nginx.pid;
error_log $OUT/nginx-error.log;
events { worker_connections 65536; }
http {
  access_log off;
  sendfile on;
  keepalive_timeout 75s;
  server { listen 198.18.0.12:80 backlog=4096; root $OUT/www; }
}
NGINX
  start_bg plx-s2 "$OUT/nginx.log" nginx -c "$OUT/nginx.conf" -g 'daemon off;'
  nginxpid=$!
  start_bg plx-s1 "$OUT/plex-http.log" "$PLEX" http --iface plx-s1 --addr 198.18.0.11/24 --port 80 --stats
  plexpid=$!
  wait_log "$OUT/plex-http.log" '^plex: ' || true
  sleep 0.5
  synflood_run plex 198.18.0.11 plx-s1 plx-s1
  synflood_run linux 198.18.0.12 plx-s2 plx-s2
  # The generator runs faster against plex than against Linux (Linux's softirq work for the
  # flood shares the cores with it): plex again at the rate Linux faced, for latency at equal
  # load.
  lrate=$(grep -o '([0-9]* frames/s)' "$OUT/flood-linux.txt" | tr -dc 0-9)
  synflood_run plex-eq 198.18.0.11 plx-s1 plx-s1 --rate "${lrate:-400000}"
  stop_bg "$plexpid"
  stop_bg "$nginxpid"
  grep -E 'listener|xsk|xdp' "$OUT/plex-http.log" | sed 's/^/     plex /'
  for who in plex linux; do
    for w in during after; do
      v=$(json_get "$OUT/probe-$who.json" "$w.success")
      [ "$w" = during ] && k=success || k=success_after
      JPARTS+=("\"synflood.${who}_$k\": $v")
    done
    JPARTS+=("\"synflood.${who}_p99_ms_during\": $(json_get "$OUT/probe-$who.json" during.p99_ms)")
  done
  pd=$(json_get "$OUT/probe-plex.json" during.success); pa=$(json_get "$OUT/probe-plex.json" after.success)
  ld=$(json_get "$OUT/probe-linux.json" during.success); la=$(json_get "$OUT/probe-linux.json" after.success)
  rate=$(grep -o '([0-9]* frames/s)' "$OUT/flood-plex.txt" | tr -dc 0-9)
  # The goal is 0.99 during the flood (Linux measured 1.0 here). The quick run in CI shares
  # two cores with everything else and holds a looser line (0.9) so that noise cannot fail a
  # build; the after-flood line (every connection within 10 s, the cookie bugs) is the same.
  need=0.99; [ $QUICK = 1 ] && need=0.9
  pl50=$(json_get "$OUT/probe-plex.json" during.p50_ms); pl99=$(json_get "$OUT/probe-plex.json" during.p99_ms)
  ll50=$(json_get "$OUT/probe-linux.json" during.p50_ms); ll99=$(json_get "$OUT/probe-linux.json" during.p99_ms)
  row synflood "plex during ${rate:-?} SYN/s: $pd success, need $need (Linux $ld)" "$(ge "$pd" "$need" && echo ok || echo FAIL)"
  row synflood "  latency during: plex p50 ${pl50} ms p99 ${pl99} ms; Linux ${ll50} / ${ll99} ms" "-"
  row synflood "plex from 1 s after: $pa success (Linux $la)" "$(ge "$pa" 1.0 && echo ok || echo FAIL)"
  erate=$(grep -o '([0-9]* frames/s)' "$OUT/flood-plex-eq.txt" | tr -dc 0-9)
  ed=$(json_get "$OUT/probe-plex-eq.json" during.success)
  e50=$(json_get "$OUT/probe-plex-eq.json" during.p50_ms); e99=$(json_get "$OUT/probe-plex-eq.json" during.p99_ms)
  row synflood "  at Linux's rate (${erate:-?} SYN/s): plex $ed success, p50 ${e50} ms p99 ${e99} ms" "-"
  JPARTS+=("\"synflood.plex_eq_rate\": ${erate:-0}" "\"synflood.plex_eq_success\": $ed" "\"synflood.plex_eq_p99_ms_during\": $e99")
  "$TB" down
fi

# --- abandoned connections ---------------------------------------------------------------------
# An attacker (plex hold on plx-s2) opens connections to plex's http server, sends half an HTTP
# request on each and goes quiet. plex runs with a connection limit and a header timeout.
# Shown: memory per abandoned connection, the limit holds (the rest refused), a keep-alive
# connection opened before the attack is served throughout, and once the header timeout has
# closed the abandoned ones, new connections are served again.
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
if want abandoned; then
  if [ $QUICK = 1 ]; then ATTACK=12000; MAXC=8000; HT=6; else ATTACK=30000; MAXC=20000; HT=10; fi
  echo "== abandoned connections ($ATTACK attempted, limit $MAXC, header timeout $HT s)"
  "$TB" up 2 >/dev/null
  start_bg plx-s1 "$OUT/plex-abandon.log" "$PLEX" http --iface plx-s1 --addr 198.18.0.11/24 --port 80 --stats \
    --max-conns "$MAXC" --mem-budget 64G --header-timeout "$HT"
  plexpid=$!
  wait_log "$OUT/plex-abandon.log" '^plex: ' || true
  sleep 0.3
  rss0=$(rss_kb "$plexpid")
  # The keep-alive connection of a legitimate user, opened before the attack.
  ip netns exec plx-client python3 - "$OUT/keepalive-go" >"$OUT/keepalive.txt" 2>&1 <<'PY' &
import os, socket, sys, time
def get(s):
    s.sendall(b"GET /bytes/100 HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while not data.endswith(b"x" * 100):
        chunk = s.recv(4096)
        if not chunk:
            raise SystemExit("closed")
        data += chunk
s = socket.create_connection(("198.18.0.11", 80), timeout=5)
get(s)
print("first request ok", flush=True)
for _ in range(600):
    if os.path.exists(sys.argv[1]):
        break
    time.sleep(0.1)
    get(s)   # a request every 100 ms: the connection is busy, not idle
print("served throughout", flush=True)
PY
  kpid=$!
  sleep 0.5
  # ~28 000 ephemeral ports per source address: the attacker takes three addresses.
  start_bg plx-s2 "$OUT/hold.log" "$PLEX" hold --iface plx-s2 --addr 198.18.0.12/24 --extra-addr 198.18.0.14 \
    --extra-addr 198.18.0.15 --mem-budget 64G --to 198.18.0.11:80 \
    --count "$ATTACK" --inflight 512 --keep-going --secs 600 --request 'GET / HTTP/1.1\r\nHost: x\r\n'
  holdpid=$!
  peak=$rss0
  for _ in $(seq 1 $((HT * 10 - 10))); do
    r=$(rss_kb "$plexpid"); [ "$r" -gt "$peak" ] && peak=$r
    sleep 0.1
  done
  held() { grep -oE '^hold: [0-9]+ (of [0-9]+ )?established' "$OUT/hold.log" | awk '{ if ($2 > m) m = $2 } END { print m + 0 }'; }
  est=$(held)
  # Within the header timeout the attacker holds what it got; a new legitimate connection
  # meets the limit (refused) while the old keep-alive one is still served.
  ip netns exec plx-client "$PROBE" 198.18.0.11:80 --secs 1 --interval-ms 100 --timeout-ms 1500 \
    --paths /bytes/100 --json "$OUT/probe-atcap.json" >/dev/null 2>&1
  # After the header timeout plex closes the abandoned connections: new ones are served.
  sleep $((HT / 2 + 2))
  ip netns exec plx-client "$PROBE" 198.18.0.11:80 --secs 1 --interval-ms 50 --timeout-ms 3000 \
    --paths /bytes/100 --json "$OUT/probe-afterht.json" >/dev/null 2>&1
  touch "$OUT/keepalive-go"; wait "$kpid"
  stop_bg "$holdpid"
  stop_bg "$plexpid"
  atcap=$(json_get "$OUT/probe-atcap.json" all.success)
  afterht=$(json_get "$OUT/probe-afterht.json" all.success)
  [ "${est:-0}" -gt 0 ] || est=$(held)
  refused=$(grep -oE '(conn_limit|connection_limit|over_limit)[a-z_]*=[0-9]*' "$OUT/plex-abandon.log" | head -1)
  per=$(python3 -c 'import sys; e=int(sys.argv[3] or 0); print(int((int(sys.argv[2])-int(sys.argv[1]))*1024/e) if e else 0)' "$rss0" "$peak" "${est:-0}")
  ka=$(grep -c 'served throughout' "$OUT/keepalive.txt")
  echo "     plex RSS $((rss0 / 1024)) MiB -> peak $((peak / 1024)) MiB with ${est:-?} abandoned connections held (limit $MAXC; refused: ${refused:-?})"
  echo "     new connections at the limit: $atcap served; after the header timeout: $afterht served; keep-alive user served throughout: $ka"
  JPARTS+=("\"abandoned.mem_bytes_per_conn\": $per" "\"abandoned.held\": ${est:-0}" "\"abandoned.limit\": $MAXC" "\"abandoned.peak_rss_bytes\": $((peak * 1024))" "\"abandoned.served_after_timeout\": $afterht")
  row abandoned "${est:-0} held (limit $MAXC): $per bytes/conn, peak RSS $((peak / 1024)) MiB" "$([ "${est:-0}" -le "$MAXC" ] && [ "${est:-0}" -gt 0 ] && echo ok || echo FAIL)"
  row abandoned "keep-alive user served throughout: $ka; new conns after header timeout: $afterht" "$([ "$ka" = 1 ] && ge "$afterht" 1.0 && echo ok || echo FAIL)"
  "$TB" down
fi

# --- malformed-frame fuzzing ---------------------------------------------------------------------
if want fuzz; then
  # The seed, printed so that a failing run can be replayed (PLEX_CHAOS_SEED=N).
  FUZZ_SEED=${PLEX_CHAOS_SEED:-$RANDOM}
  echo "== fuzz ($FUZZ_SECS s, seed $FUZZ_SEED: replay with PLEX_CHAOS_SEED=$FUZZ_SEED)"
  "$TB" up 1 >/dev/null
  start_bg plx-s1 "$OUT/plex-fuzz.log" "$PLEX" http --iface plx-s1 --addr 198.18.0.11/24 --port 80 --stats
  plexpid=$!
  wait_log "$OUT/plex-fuzz.log" '^plex: ' || true
  mac=$(mac_of plx-s1 plx-s1)
  ip netns exec plx-client "$FLOOD" fuzz plx-c 198.18.0.11 "$mac" --ports 80,7 --secs "$FUZZ_SECS" --seed "$FUZZ_SEED" \
    >"$OUT/fuzz.txt" 2>&1
  tail -1 "$OUT/fuzz.txt" | sed 's/^/     /'
  frames=$(grep -o 'sent [0-9]*' "$OUT/fuzz.txt" | tr -dc 0-9)
  alive=false
  kill -0 "$plexpid" 2>/dev/null && alive=true
  ip netns exec plx-client "$PROBE" 198.18.0.11:80 --secs 1 --interval-ms 20 --timeout-ms 3000 \
    --json "$OUT/probe-fuzz.json" >"$OUT/probe-fuzz.txt" 2>&1
  served=$(json_get "$OUT/probe-fuzz.json" all.success)
  stop_bg "$plexpid"
  rx=$(stat_of "$OUT/plex-fuzz.log" rx_frames)
  JPARTS+=("\"fuzz.frames\": ${frames:-0}" "\"fuzz.alive\": $alive" "\"fuzz.served_after\": $served" "\"fuzz.plex_rx_frames\": ${rx:-0}")
  row fuzz "${frames:-0} frames in ${FUZZ_SECS} s; plex received $rx; alive $alive; served after: $served" \
    "$([ "$alive" = true ] && ge "$served" 1.0 && echo ok || echo FAIL)"
  # plex prints its drops by named reason at exit (--stats): "queue N drops: total=T r=n ...".
  grep -o 'drops: total=[0-9]*' "$OUT/plex-fuzz.log" | awk -F= '{t += $2} END {print t + 0}' >"$OUT/fuzz-drops.txt"
  grep '^queue [0-9]* drops:' "$OUT/plex-fuzz.log" | head -1 | tr ' ' '\n' | grep '=' | grep -v '^total=' \
    | sort -t= -k2 -nr | head -8 >>"$OUT/fuzz-drops.txt"
  ndrops=$(head -1 "$OUT/fuzz-drops.txt")
  echo "     plex dropped $ndrops frames under named reasons; the largest: $(tail -n +2 "$OUT/fuzz-drops.txt" | tr '\n' ' ')"
  JPARTS+=("\"fuzz.plex_dropped\": ${ndrops:-0}")
  "$TB" down
fi

# --- cluster and region faults -------------------------------------------------------------------
if want region_faults && [ -x scripts/chaos/region_faults.sh ]; then
  echo "== region and cluster faults"
  if PLEX_CHAOS_NESTED=1 scripts/chaos/region_faults.sh "$OUT/region.json" $([ $QUICK = 1 ] && echo --quick) >"$OUT/region.txt" 2>&1; then rv=ok; else rv=FAIL; fi
  sed 's/^/     /' "$OUT/region.txt" | tail -20
  survived=$(json_get "$OUT/region.json" survived)
  stacks=$(json_get "$OUT/region.json" stacks)
  JPARTS+=("\"region_faults.survived\": $survived")
  row region_faults "stacks alive after every fault: $survived of $stacks" "$rv"
  "$TB" down
fi

# --- simulation sweep ------------------------------------------------------------------------------
# Every seeded simulation test over many seeds. The 41-scenario transfer matrix costs ~2 s a
# seed, so it gets fewer seeds (each seed is 41 runs) than the per-seed tests (150 seeds of those
# took 19 s in CI).
if want sim_sweep && [ -x scripts/sim-sweep.sh ]; then
  if [ $QUICK = 1 ]; then SEEDS=500; MATRIX_SEEDS=10; else SEEDS=10000; MATRIX_SEEDS=200; fi
  echo "== simulation sweep ($SEEDS seeds per test, $MATRIX_SEEDS of the transfer matrix)"
  sv=ok
  PLEX_SWEEP_LOG=$OUT/sweep-a scripts/sim-sweep.sh --seeds "$SEEDS" --start 5000 --only 'sim_handoff|several_seeds|sim_fragments' \
    >"$OUT/sweep.txt" 2>&1 || sv=FAIL
  PLEX_SWEEP_LOG=$OUT/sweep-b scripts/sim-sweep.sh --seeds "$MATRIX_SEEDS" --start 5000 --only 'transfer_matrix' \
    >>"$OUT/sweep.txt" 2>&1 || sv=FAIL
  grep -E 'seed=' "$OUT/sweep.txt" | head -10 | sed 's/^/     /'
  # The summary lines: "sim-sweep: N runs, F failures (T s)".
  summary() { grep -E '^sim-sweep: [0-9]+ runs, [0-9]+ failures' "$OUT/sweep.txt"; }
  runs=$(summary | awk '{t += $2} END {print t + 0}')
  fails=$(summary | awk '{t += $4} END {print t + 0}')
  summary | sed 's/^/     /'
  JPARTS+=("\"sim_sweep.runs\": ${runs:-0}" "\"sim_sweep.failures\": ${fails:-0}")
  row sim_sweep "$runs seeded runs ($SEEDS seeds per test, $MATRIX_SEEDS x 41 matrix), $fails failures" "$sv"
fi

echo
echo "experiment     | figure                                                                 | verdict"
for r in "${ROWS[@]}"; do IFS='|' read -r a b c <<<"$r"; printf '%-14s | %-70s | %s\n' "$a" "$b" "$c"; done
if [ -n "$JSON" ]; then
  { printf '{'; (IFS=,; printf '%s' "${JPARTS[*]}"); printf '}\n'; } | python3 -c 'import json,sys
flat = json.load(sys.stdin); out = {}
for k, v in flat.items():
    a, b = k.split(".", 1); out.setdefault(a, {})[b] = v
print(json.dumps(out, indent=1))' >"$JSON"
  echo "== JSON in $JSON"
fi
exit $FAILED
