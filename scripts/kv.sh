# The KV servers of apps/examples (kv_*.rs) for scripts/it/35-kv.sh and scripts/bench.sh
# (sourced; the caller keeps background pids in PIDS and stops them on exit).
#
# One server a line: NAME KIND. The binary is target/release/examples/kv_NAME.
#   plex:  `kv_NAME IFACE ADDR/PREFIX QUEUES PORT` (plex's address on IFACE, AF_XDP; the XDP
#          mode from KV_XDP_MODE, default generic)
#   linux: `kv_NAME ADDR:PORT` (Linux sockets on a kernel address of IFACE)
KV_SERVERS=(
  "blocking plex"
  "rtc plex"
  "tokio plex"
  "linux linux"
  "tokio_linux linux"
)
KV_PORT=7379
KV_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
KV_EXAMPLES=$KV_ROOT/target/release/examples
KV_LOAD=$KV_ROOT/target/release/plex-kvload

kv_names() { for s in "${KV_SERVERS[@]}"; do echo "${s%% *}"; done; }
kv_kind() { for s in "${KV_SERVERS[@]}"; do [ "${s%% *}" = "$1" ] && echo "${s#* }"; done; }

# kv_start NAME NS IFACE PLEX_ADDR/PREFIX LINUX_ADDR QUEUES LOG: start server NAME in NS and
# wait for its `listening on` line. Sets KV_ADDR (IP:PORT to load), KV_PID (the server process
# itself, for its CPU time) and KV_WRAP (its `timeout` wrapper, also appended to PIDS).
kv_start() {
  local name=$1 ns=$2 iface=$3 paddr=$4 laddr=$5 q=$6 log=$7 bin
  bin=$KV_EXAMPLES/kv_$name
  case "$(kv_kind "$name")" in
    plex)
      KV_ADDR=${paddr%/*}:$KV_PORT
      ip netns exec "$ns" env PLEX_XDP_MODE="${KV_XDP_MODE:-generic}" timeout 600 "$bin" "$iface" "$paddr" "$q" "$KV_PORT" >"$log" 2>&1 &
      ;;
    linux)
      KV_ADDR=$laddr:$KV_PORT
      # A thread and a descriptor per connection: the hard limit of open files.
      ip netns exec "$ns" sh -c 'ulimit -n "$(ulimit -Hn)"; exec timeout 600 "$0" "$1"' "$bin" "$KV_ADDR" >"$log" 2>&1 &
      ;;
    *) echo "no KV server named $name (KV_SERVERS in scripts/kv.sh)"; return 1 ;;
  esac
  KV_WRAP=$!
  PIDS+=("$KV_WRAP")
  for _ in $(seq 1 100); do
    if grep -q '^listening on' "$log" 2>/dev/null; then
      KV_PID=$(pgrep -P "$KV_WRAP" | head -1)
      [ -n "$KV_PID" ] && return 0
    fi
    kill -0 "$KV_WRAP" 2>/dev/null || break
    sleep 0.1
  done
  echo "kv_$name did not start: $(cat "$log")"
  return 1
}

# kv_stop: SIGINT the last started server (its counters go to its log), wait for it.
kv_stop() {
  kill -INT "$KV_WRAP" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$KV_WRAP" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$KV_WRAP" 2>/dev/null || true
  wait "$KV_WRAP" 2>/dev/null || true
  local keep=() p
  for p in "${PIDS[@]}"; do [ "$p" != "$KV_WRAP" ] && keep+=("$p"); done
  PIDS=("${keep[@]}")
}

# kv_load NS CONNS SECONDS OUT: plex-kvload from NS against KV_ADDR, the server's CPU measured;
# its JSON in OUT, its summary line on stdout; the exit status is kvload's.
kv_load() {
  local ns=$1 conns=$2 secs=$3 out=$4 rc
  ip netns exec "$ns" timeout $((secs + 60)) "$KV_LOAD" --addr "$KV_ADDR" --conns "$conns" --seconds "$secs" \
    --server-pid "$KV_PID" --json >"$out" 2>"$out.err"
  rc=$?
  grep -v '^kvload ' "$out.err" | head -5
  grep '^kvload ' "$out.err"
  return $rc
}

# kv_field FILE KEY: one number (or null) from kvload's JSON.
kv_field() { sed -n "s/.*\"$2\":\([^,}]*\).*/\1/p" "$1"; }
