# Install what a fresh Debian machine lacks to build and run plex (sourced by test.sh and
# demo.sh). Needs root to install; without root it only reports.
PLEX_APT_PACKAGES="clang libelf-dev m4 zlib1g-dev pkg-config make tcpdump iproute2 ethtool socat wrk curl iputils-ping nftables util-linux"

install_deps() {
  local need=()
  for pkg in $PLEX_APT_PACKAGES; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
  done
  [ "${#need[@]}" -eq 0 ] && return 0
  if [ "$(id -u)" = 0 ]; then
    echo "== installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "missing packages: ${need[*]} (run as root to install them)" >&2
  fi
}
