# Helpers for the real-interface tests of a plex cluster (sourced after lib.sh). The test sets
# CFG (its cluster config) and V (the DVIPA the helpers ask about); STACK_ARGS[I] adds options
# to every `plex run` of stack sI.
declare -A SPID STACK_ARGS

# plex_run_stack I ARGS... (the application last): plex run --stack sI with the test's config
# and --stats, in sI's namespace; waits until it says it runs (5 s). `start_stack` by default.
start_stack() { plex_run_stack "$@"; }
plex_run_stack() {
  local i=$1; shift
  # shellcheck disable=SC2086 # STACK_ARGS holds several words
  ip netns exec "plx-s$i" "$PLEX" run --config "$CFG" --stack "s$i" --stats ${STACK_ARGS[$i]:-} "$@" >>"$LOGDIR/s$i.log" 2>&1 &
  SPID[$i]=$!
  disown "$!" 2>/dev/null || true
  PIDS+=($!)
  for _ in $(seq 1 50); do
    grep -q "^plex: stack s$i" "$LOGDIR/s$i.log" 2>/dev/null && return 0
    kill -0 "${SPID[$i]}" 2>/dev/null || break
    sleep 0.1
  done
  echo "stack s$i did not start: $(tail -3 "$LOGDIR/s$i.log")"
  return 1
}
# stop_stack I: SIGINT, then wait for it to exit (5 s).
stop_stack() {
  kill -INT "${SPID[$1]}" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "${SPID[$1]}" 2>/dev/null || break; sleep 0.1; done
}
ctl() { "$PLEX" ctl --config "$CFG" "$@"; }
# owner_of [ADDR]: the stack that holds ADDR (default $V).
owner_of() { ctl show dvipas 2>/dev/null | awk -v a="${1:-$V}" 'index($1, a "/") == 1 {print $3}'; }
# wait_owner STACK [SECONDS] [ADDR]: until STACK holds ADDR (default $V; 5 s); says who does if not.
wait_owner() {
  local a=${3:-$V}
  for _ in $(seq 1 $(( ${2:-5} * 20 ))); do
    [ "$(owner_of "$a")" = "$1" ] && return 0
    sleep 0.05
  done
  echo "     $a is owned by '$(owner_of "$a")', expected $1"
  return 1
}
# dpt_ready PORT N: N targets report ready listeners on PORT (3 s).
dpt_ready() {
  for _ in $(seq 1 60); do
    [ "$(ctl show dpt 2>/dev/null | awk -v p=":$1" 'substr($1, length($1) - length(p) + 1) == p && $0 ~ / ready /' | wc -l)" -ge "$2" ] && return 0
    sleep 0.05
  done
  ctl show dpt
  return 1
}
# crt_count TARGET: CRT rows routed to TARGET.
crt_count() { ctl show crt 2>/dev/null | awk -v t="$1" 'NR > 1 && $3 == t {n++} END {print n + 0}'; }
# stacks_toml: the [[stack]] tables of the testbed's plex hosts s1..s3 (plx-sI, 198.18.0.1I/24).
stacks_toml() {
  local i
  for i in 1 2 3; do printf '\n[[stack]]\nname = "s%s"\ninterface = "plx-s%s"\naddress = "198.18.0.1%s/24"\n' "$i" "$i" "$i"; done
}
# dist_toml: $V distributed on ports 7 and 80 over s2 and s3 by round robin, primary s1, backup s2.
dist_toml() {
  printf '\n[[dvipa]]\naddress = "%s/24"\nprimary = "s1"\nbackups = [{ stack = "s2", rank = 20 }]\n[dvipa.distribute]\nports = [7, 80]\ntargets = ["s2", "s3"]\nmethod = "round_robin"\ngrace_ms = 2000\n' "$V"
}
