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

# nginx is the Linux server the chaos suite measures plex against. Installed without starting
# it (policy-rc.d): the suite runs its own instance inside a testbed namespace.
install_nginx() {
  command -v nginx >/dev/null 2>&1 && return 0
  if [ "$(id -u)" != 0 ]; then
    echo "missing package: nginx (run as root to install it)" >&2
    return 0
  fi
  echo "== installing nginx (not started)"
  local had_policy=0
  [ -e /usr/sbin/policy-rc.d ] && had_policy=1
  [ $had_policy = 1 ] || printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq nginx-light >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq nginx-light >/dev/null; }
  [ $had_policy = 1 ] || rm -f /usr/sbin/policy-rc.d
  # A packaged service may still have been started by a postinst that ignores policy-rc.d.
  pkill -x nginx 2>/dev/null || true
}

# HAProxy is the load balancer the distributor is measured against (bench.sh --cluster).
# Installed without starting it; the benchmark runs its own instance in a testbed namespace.
install_haproxy() {
  command -v haproxy >/dev/null 2>&1 && return 0
  if [ "$(id -u)" != 0 ]; then
    echo "missing package: haproxy (run as root to install it)" >&2
    return 0
  fi
  echo "== installing haproxy (not started)"
  local had_policy=0
  [ -e /usr/sbin/policy-rc.d ] && had_policy=1
  [ $had_policy = 1 ] || printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq haproxy >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq haproxy >/dev/null; }
  [ $had_policy = 1 ] || rm -f /usr/sbin/policy-rc.d
  pkill -x haproxy 2>/dev/null || true
}
