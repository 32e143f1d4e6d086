#!/usr/bin/env bash
# Installs, runs, upgrades, removes and purges a shouwang .deb in a Debian 12 chroot.
#
#   packaging/test-install.sh target/debian/shouwang_VERSION_amd64.deb
#
# Needs root, debootstrap and Debian's mirror (the chroot is made once with debootstrap
# --variant=minbase plus systemd, and kept in target/debian/chroot-bookworm for the next
# run). The chroot shares this machine's network: the packaged config's broker
# (127.0.0.1:1883) and console (8080) must be free. Each step fails loudly.
#
# What it shows:
#   1. `apt-get install ./shouwang_….deb` installs it with its dependencies from the mirror;
#      the service user, the state directory (0700) and the config (0640 root:shouwang) exist;
#   2. `systemd-analyze verify` passes on the installed unit;
#   3. the gateway runs as the service user with the packaged paths only: the config checks,
#      ONNX Runtime and the model load from /usr/lib/shouwang and /usr/share/shouwang, and a
#      smoke alarm published to its broker comes out as a red alert;
#   4. an upgrade (the same package as version +1) keeps the edited config and the database;
#   5. `dpkg -r` keeps the config and the outbox; `dpkg -P` deletes them.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
say() { printf '\033[1;34m==>\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31merror:\033[0m %s\n' "$*" >&2; exit 1; }
[ $# -eq 1 ] && [ -f "$1" ] || die "usage: $0 PATH/shouwang_VERSION_ARCH.deb"
[ "$(id -u)" = 0 ] || die "run as root (chroot, mount)"
deb=$(readlink -f "$1")
R="$ROOT/target/debian/chroot-bookworm"
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

in_root() { chroot "$R" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"; }

make_root() {
  [ -f "$R/.complete" ] && return 0
  command -v debootstrap >/dev/null \
    || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null \
    || die "cannot install debootstrap"
  say "debootstrap: a minimal Debian 12 with systemd in $R (once)"
  rm -rf "$R"
  debootstrap --variant=minbase --include=systemd,ca-certificates bookworm "$R" "$MIRROR" >/dev/null \
    || die "debootstrap failed"
  touch "$R/.complete"
}

mounted=()
mount_root() {
  mount -t proc proc "$R/proc" && mounted+=("$R/proc")
  mount --bind /dev "$R/dev" && mounted+=("$R/dev")
  mount --bind /dev/pts "$R/dev/pts" && mounted=("$R/dev/pts" "${mounted[@]}")
  cp /etc/resolv.conf "$R/etc/resolv.conf"
}
cleanup() {
  [ -n "${gw_pid:-}" ] && kill "$gw_pid" 2>/dev/null || true
  for m in "${mounted[@]}"; do umount "$m" 2>/dev/null || true; done # innermost first
}
trap cleanup EXIT

install_deb() { # path-inside-root
  in_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    -o Dpkg::Options::=--force-confold "$1" >/dev/null || die "apt-get install $1 failed"
}

check_installed() {
  say "installed: user, state directory, config"
  in_root getent passwd shouwang >/dev/null || die "no shouwang user"
  # stat inside the chroot: its users, not this machine's.
  local mode
  mode=$(in_root stat -c '%a %U' /var/lib/shouwang)
  [ "$mode" = "700 shouwang" ] || die "/var/lib/shouwang: $mode"
  mode=$(in_root stat -c '%a %U:%G' /etc/shouwang/gateway.toml)
  [ "$mode" = "640 root:shouwang" ] || die "/etc/shouwang/gateway.toml: $mode"
  in_root dpkg-query -W -f='${Status}\n' shouwang | grep -q 'install ok installed' || die "not installed"
}

verify_unit() {
  say "systemd-analyze verify shouwang.service"
  local out
  out=$(in_root systemd-analyze verify shouwang.service 2>&1) || die "systemd-analyze verify failed: $out"
  if printf '%s' "$out" | grep -q shouwang; then die "systemd-analyze verify warns: $out"; fi
}

# Runs the gateway as the service user, waits for readiness, raises a smoke alarm.
run_gateway() {
  say "the gateway as user shouwang with the packaged paths"
  in_root setpriv --reuid=shouwang --regid=shouwang --init-groups shouwang-gateway config check /etc/shouwang/gateway.toml >/dev/null \
    || die "config check of the packaged config failed"
  local log="$R/tmp/gateway.log"
  # chroot, env and setpriv each exec the next: $! is the gateway itself.
  chroot "$R" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
    setpriv --reuid=shouwang --regid=shouwang --init-groups shouwang-gateway --log-format json run \
    --config /etc/shouwang/gateway.toml --data-dir /var/lib/shouwang >"$log" 2>&1 &
  gw_pid=$!
  local waited=0
  until grep -q '"gateway ready"' "$log"; do
    kill -0 "$gw_pid" 2>/dev/null || { cat "$log" >&2; die "the gateway stopped"; }
    [ $waited -lt 600 ] || { cat "$log" >&2; die "not ready within 60 s"; }
    sleep 0.1; waited=$((waited + 1))
  done
  grep -q '"cameras_analysed":1' "$log" \
    || { cat "$log" >&2; die "ONNX Runtime and the model did not load from the packaged paths"; }
  local sub="$R/tmp/alerts.txt"
  mosquitto_pub -h 127.0.0.1 -p 1883 -q 1 -t sensors/b1-u1-0101-smoke/state -m '{"smoke":true}' \
    || die "mosquitto_pub to the packaged gateway's broker failed"
  # An active alert is retained on its topic: the subscriber gets it whenever it arrives
  # (next to the starter camera's camera_down: nothing serves its RTSP URL here).
  mosquitto_sub -h 127.0.0.1 -p 1883 -t 'shouwang/+/alerts/#' -W 30 -v >"$sub" 2>&1 &
  local sub_pid=$! smoke=""
  waited=0
  until smoke=$(grep -m1 '"kind":"smoke"' "$sub"); do
    kill -0 "$sub_pid" 2>/dev/null || { cat "$log" "$sub" >&2; die "no smoke alert from the packaged gateway within 30 s"; }
    sleep 0.1
  done
  kill "$sub_pid" 2>/dev/null || true
  grep -q '"level":"red"' <<<"$smoke" || die "the smoke alert is not red: $smoke"
  say "alert: $(cut -c1-160 <<<"$smoke")"
  doctor
  kill -TERM "$gw_pid"
  wait "$gw_pid" || die "the gateway did not stop cleanly: $(tail -5 "$log")"
  gw_pid=
}

# The alerts in the packaged gateway's database (read with this machine's Python).
alerts() {
  python3 -c 'import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute("SELECT count(*) FROM alerts").fetchone()[0])' \
    "$R/var/lib/shouwang/shouwang.db"
}

# `gateway doctor` beside the running gateway, as the service user: ONNX Runtime and the
# model are found at the packaged paths; the starter's camera (nothing serves its URL here)
# fails with its fix, so doctor exits 1.
doctor() {
  say "gateway doctor on the packaged config"
  local report rc=0
  report=$(in_root setpriv --reuid=shouwang --regid=shouwang --init-groups shouwang-gateway doctor \
    --config /etc/shouwang/gateway.toml --listen-s 1 --camera-timeout-s 3 --upstream-timeout-s 3) || rc=$?
  [ "$rc" = 1 ] || die "doctor exited $rc (expected 1: the starter's camera is not there): $report"
  grep -q '^ok  *onnxruntime .*/usr/lib/shouwang/libonnxruntime.so' <<<"$report" \
    || die "doctor did not load ONNX Runtime from the package: $report"
  grep -q '^ok  *port broker .*in use by the running gateway' <<<"$report" || die "doctor: $report"
  grep -q '^FAIL  *camera cam-b1-lobby' <<<"$report" || die "doctor did not report the dead camera: $report"
}

upgrade() {
  say "upgrade to version +1: the edited config and the outbox stay"
  echo "# edited by the installer" >>"$R/etc/shouwang/gateway.toml"
  local alerts_before tmp next
  alerts_before=$(alerts)
  [ "$alerts_before" -ge 2 ] || die "expected the run's alerts in the outbox, found $alerts_before"
  tmp=$(mktemp -d)
  dpkg-deb -R "$deb" "$tmp/pkg"
  next=$(sed -n 's/^Version: //p' "$tmp/pkg/DEBIAN/control")+1
  sed -i "s/^Version: .*/Version: $next/" "$tmp/pkg/DEBIAN/control"
  dpkg-deb --root-owner-group -Zgzip -z1 --build "$tmp/pkg" "$R/tmp/shouwang-next.deb" >/dev/null
  rm -rf "$tmp"
  install_deb /tmp/shouwang-next.deb
  in_root dpkg-query -W -f='${Version}' shouwang | grep -qx "$next" || die "not upgraded to $next"
  grep -q '^# edited by the installer' "$R/etc/shouwang/gateway.toml" || die "the upgrade overwrote the edited config"
  [ "$(alerts)" = "$alerts_before" ] || die "the upgrade lost alerts: $alerts_before before, $(alerts) after"
}

remove_and_purge() {
  say "dpkg -r keeps config and outbox; dpkg -P deletes them"
  in_root dpkg -r shouwang >/dev/null || die "dpkg -r failed"
  [ ! -e "$R/usr/lib/shouwang/gateway" ] || die "binary left after removal"
  [ -f "$R/etc/shouwang/gateway.toml" ] || die "removal deleted the config"
  [ "$(alerts)" -ge 2 ] || die "removal deleted the outbox"
  in_root dpkg -P shouwang >/dev/null || die "dpkg -P failed"
  [ ! -e "$R/etc/shouwang" ] || die "/etc/shouwang left after purge"
  [ ! -e "$R/var/lib/shouwang" ] || die "/var/lib/shouwang left after purge"
  if in_root dpkg-query -W -f='${Status}' shouwang 2>/dev/null | grep -q installed; then die "still installed"; fi
}

make_root
mount_root
# A previous run may have left it installed.
in_root dpkg -P shouwang >/dev/null 2>&1 || true
cp "$deb" "$R/tmp/shouwang.deb"
say "apt-get install ./$(basename "$deb") in the chroot"
install_deb /tmp/shouwang.deb
check_installed
verify_unit
run_gateway
upgrade
remove_and_purge
say "package test passed: install, run as the service user, upgrade, remove, purge"
