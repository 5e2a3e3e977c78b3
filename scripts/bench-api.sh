#!/usr/bin/env bash
# The application-API section of scripts/bench.sh alone (the KV servers of scripts/kv.sh under
# plex-kvload, one queue, as bench.sh runs them), with a per-thread breakdown of the server:
# CPU time and context switches of its poll thread and of its other threads over the
# measured window, per request. Uses the binaries already built (build them first:
# `cargo build --release -p apps --examples -p bench --bin plex-kvload`).
#
# Usage: sudo flock /tmp/plx-testbed.lock scripts/bench-api.sh [--rounds N] [--secs S]
#        [--clients "50 1000"] [--servers "blocking rtc"]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/kv.sh

ROUNDS=3
KV_SECS=5
KV_CLIENTS="50 1000"
SERVERS=$(kv_names | tr '\n' ' ')
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift ;;
    --secs) KV_SECS=$2; shift ;;
    --clients) KV_CLIENTS=$2; shift ;;
    --servers) SERVERS=$2; shift ;;
    *) echo "usage: $0 [--rounds N] [--secs S] [--clients LIST] [--servers LIST]" >&2; exit 2 ;;
  esac
  shift
done
[ "$(id -u)" = 0 ] || { echo "$0 needs root (namespaces, XDP)" >&2; exit 1; }
OUT=$(mktemp -d /tmp/plx-bench-api.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  sleep 0.3
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  scripts/testbed.sh down
}
trap cleanup EXIT
scripts/testbed.sh down
scripts/testbed.sh up-mq 1 >/dev/null
ip netns exec plx-mqs ip addr add 198.18.1.4/24 dev plx-mq1

# threads PID: one line per thread: TID NAME CPU-NS VOLUNTARY NONVOLUNTARY (switches);
# then a line "cpu BUSY-TICKS TOTAL-TICKS" for the whole machine. One awk over /proc: a
# snapshot of a thousand threads takes milliseconds, not seconds.
threads() {
  awk 'FILENAME == "/proc/stat" && $1 == "cpu" { tot = 0; for (i = 2; i <= NF; i++) tot += $i; print "cpu", tot - $5 - $6, tot; nextfile }
    FILENAME ~ /\/stat$/ { split(FILENAME, p, "/"); name[p[5]] = $2; nextfile }
    FILENAME ~ /\/schedstat$/ { split(FILENAME, p, "/"); cpu[p[5]] = $1; nextfile }
    /^voluntary_ctxt/ { split(FILENAME, p, "/"); vol[p[5]] = $2 }
    /^nonvoluntary_ctxt/ { split(FILENAME, p, "/"); inv[p[5]] = $2 }
    END { for (t in cpu) print t, name[t], cpu[t], vol[t] + 0, inv[t] + 0 }' \
    /proc/stat /proc/"$1"/task/*/stat /proc/"$1"/task/*/schedstat /proc/"$1"/task/*/status 2>/dev/null || true
}

# breakdown BEFORE AFTER REQS: per class of thread (the poll threads plex-poll-*, the
# others), CPU µs and context switches per request over the window between the snapshots.
breakdown() {
  awk -v reqs="$3" -v hz="$(getconf CLK_TCK)" '
    FNR == NR { c0[$1] = ($1 == "cpu") ? $2 : $3; v0[$1] = ($1 == "cpu") ? $3 : $4; n0[$1] = $5; next }
    $1 == "cpu" { mbusy = $2 - c0["cpu"]; mtot = $3 - v0["cpu"]; next }
    NF == 5 { cls = index($2, "plex-poll") ? "poll" : "app"; n[cls]++
      cpu[cls] += $3 - c0[$1]; vol[cls] += $4 - v0[$1]; inv[cls] += $5 - n0[$1] }
    END { for (c in n) printf "  %-4s threads %5d  cpu %6.2f us/req  voluntary cs %5.2f/req  involuntary cs %5.2f/req\n",
            c, n[c], cpu[c] / 1e3 / reqs, vol[c] / reqs, inv[c] / reqs
          if (mtot > 0) printf "  machine: %.0f%% of its CPUs busy (all processes)\n", 100 * mbusy / mtot }' "$1" "$2"
}

for r in $(seq 1 "$ROUNDS"); do
  for name in $SERVERS; do
    kv_start "$name" plx-mqs plx-mq1 198.18.1.2/24 198.18.1.4 1 "$OUT/kv-$name-$r.log" >&2 || exit 1
    for c in $KV_CLIENTS; do
      f=$OUT/kv-$name-$c-$r.json
      rm -f "$f.failed"
      { kv_load plx-mqc "$c" "$KV_SECS" "$f" >"$f.line" || touch "$f.failed"; } &
      load=$!
      # The measurement starts once the connections are open (one per 500 µs).
      sleep "$(awk -v c="$c" 'BEGIN { print 0.5 + c * 0.0005 }')"
      threads "$KV_PID" >"$f.t0"
      sleep "$(awk -v s="$KV_SECS" 'BEGIN { print s - 1 }')"
      threads "$KV_PID" >"$f.t1"
      wait "$load"
      [ ! -e "$f.failed" ] || { echo "plex-kvload failed against kv_$name with $c clients: $(cat "$f.err")" >&2; exit 1; }
      rps=$(kv_field "$f" rps)
      printf 'round %d kv_%-12s %5d clients: %10s req/s %8s us/req (server CPU)\n' "$r" "$name" "$c" "$rps" "$(kv_field "$f" server_cpu_us_per_req)"
      breakdown "$f.t0" "$f.t1" "$(awk -v r="$rps" -v s="$KV_SECS" 'BEGIN { print r * (s - 1) }')"
    done
    kv_stop
  done
done

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "null"; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
echo "== median of $ROUNDS round(s), ${KV_SECS} s each ($OUT)"
printf '%-16s %8s %12s %12s\n' server clients req/s us/req
for name in $SERVERS; do
  for c in $KV_CLIENTS; do
    printf '%-16s %8d %12s %12s\n' "kv_$name" "$c" \
      "$(for r in $(seq 1 "$ROUNDS"); do kv_field "$OUT/kv-$name-$c-$r.json" rps; done | median)" \
      "$(for r in $(seq 1 "$ROUNDS"); do kv_field "$OUT/kv-$name-$c-$r.json" server_cpu_us_per_req; done | median)"
  done
done
