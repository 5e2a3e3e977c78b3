#!/usr/bin/env bash
# Run every test of plex: unit tests, simulation tests, and (as root) the real-interface tests.
# On a fresh machine it first installs what is missing. Safe to run twice.
set -euo pipefail
cd "$(dirname "$0")/.."
here=$(pwd)

log() { printf '\n== %s\n' "$*"; }

source scripts/deps.sh
install_deps

log "unit and simulation tests (cargo test --workspace --release)"
cargo test --workspace --release --locked 2>&1

if [ -d scripts/it ] && [ "$(id -u)" = 0 ]; then
  log "building the plex command for the real-interface tests"
  cargo build --release --locked -p apps 2>&1
  for t in scripts/it/[0-9]*.sh; do
    [ -x "$t" ] || continue
    log "real-interface test: $t"
    "$t"
  done
  log "chaos suite, quick: SYN flood, abandoned connections, fuzzing, region faults, simulation sweep"
  # test.sh is the testbed's only user while it runs (run it under `flock
  # /tmp/plx-testbed.lock` on a shared machine): chaos.sh must not wait for that lock.
  PLX_TESTBED_LOCK_HELD=1 scripts/chaos.sh --quick --json target/chaos-quick.json
elif [ -d scripts/it ]; then
  echo "skipping real-interface tests: they need root (network namespaces, XDP)" >&2
fi

log "all tests passed"
