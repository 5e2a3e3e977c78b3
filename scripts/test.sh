#!/usr/bin/env bash
# Run every test of plex: unit tests, simulation tests, and (as root) the real-interface tests.
# On a fresh machine it first installs what is missing. Safe to run twice.
set -euo pipefail
cd "$(dirname "$0")/.."
here=$(pwd)

log() { printf '\n== %s\n' "$*"; }

install_deps() {
  local need=()
  for pkg in clang libelf-dev m4 zlib1g-dev pkg-config make tcpdump iproute2 ethtool socat wrk curl iputils-ping nftables util-linux; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
  done
  if [ "${#need[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
      log "installing ${need[*]}"
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq
      apt-get install -y -qq "${need[@]}" >/dev/null
    else
      echo "missing packages: ${need[*]} (run as root to install them)" >&2
    fi
  fi
}

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
elif [ -d scripts/it ]; then
  echo "skipping real-interface tests: they need root (network namespaces, XDP)" >&2
fi

log "all tests passed"
