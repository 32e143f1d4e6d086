#!/usr/bin/env bash
# Cross-build shouwang's `gateway` and `sim` for arm64 (aarch64-unknown-linux-gnu) on an
# x86-64 Debian 12 host.
#
# Run it, do not source it:
#
#   packaging/cross-arm64.sh [extra cargo build args]
#
# It installs what is missing (idempotent; seconds when everything is there):
#   - Debian packages: the aarch64 cross compiler, qemu-user, and the arm64 (`:arm64`,
#     Multi-Arch: same) dev packages the workspace links against (FFmpeg for `gateway`,
#     GStreamer for `sim`) beside the amd64 ones; `apt-get -s` first, and it stops if that
#     would remove any installed package;
#   - the three arm64 GStreamer packages that are NOT Multi-Arch: same in Debian 12
#     (libgstreamer-plugins-base1.0-dev, libgstrtspserver-1.0-0, libgstrtspserver-1.0-dev):
#     installing them would remove their amd64 twins (and with them the x86 build of `sim`),
#     so they are unpacked with `dpkg-deb -x` into a side sysroot, $CARGO_TARGET_DIR/arm64-sysroot,
#     and pkg-config finds them there;
#   - qemu-user >= 10 (on Debian 12 from bookworm-backports, whose source it adds under
#     /etc/apt/sources.list.d/): Debian 12's own qemu-user 7.2 runs the MQTT and SQLite parts
#     but ONNX Runtime segfaults under it at start-up, so `gateway detect` needs the newer one;
#   - the Rust target (`rustup target add aarch64-unknown-linux-gnu`).
# Then it runs
#   cargo build --release --locked --target aarch64-unknown-linux-gnu -p gateway -p simulators --bins
# and prints the binaries' paths, `file` output and sizes. The linker (and a qemu runner) for
# the target is in .cargo/config.toml; the rest of the cross environment is set below.
#
# Environment: CARGO_TARGET_DIR (default: <repo>/target); the binaries land in
# $CARGO_TARGET_DIR/aarch64-unknown-linux-gnu/release/. Run as root or with sudo available.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=aarch64-unknown-linux-gnu
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
SYSROOT="$TARGET_DIR/arm64-sysroot"
MULTIARCH_LIB=/usr/lib/aarch64-linux-gnu

# amd64 packages: the cross toolchain, what bindgen/pkg-config need on the host, `file` for
# the report, mosquitto and python3-pip (the arm64 ONNX Runtime wheel) for smoke-arm64.sh.
# qemu-user-static comes from install_qemu.
HOST_PACKAGES=(
  gcc-aarch64-linux-gnu libc6-dev-arm64-cross
  pkg-config libclang-dev file mosquitto mosquitto-clients python3-pip
)
# The oldest qemu-user known to run ONNX Runtime (tested: 7.2.22 segfaults, 10.0.2 runs it).
QEMU_MIN=1:10.0
# arm64 packages beside the amd64 ones (all Multi-Arch: same).
ARM64_PACKAGES=(
  # gateway: FFmpeg (ffmpeg-sys-next)
  libavcodec-dev libavformat-dev libavutil-dev libswscale-dev
  # sim: GStreamer core, the plugins-base runtime libraries (rtsp, sdp, ...) and what their
  # .pc files require; the -dev parts that cannot be co-installed go to the side sysroot.
  libgstreamer1.0-dev libgstreamer-plugins-base1.0-0 liborc-0.4-dev
)
# arm64 packages that are not Multi-Arch: same in Debian 12: unpacked into $SYSROOT.
SYSROOT_PACKAGES=(libgstreamer-plugins-base1.0-dev libgstrtspserver-1.0-0 libgstrtspserver-1.0-dev)

say() { printf '\033[1;34m==>\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31merror:\033[0m %s\n' "$*" >&2; exit 1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

APT_UPDATED=0
apt_update_once() {
  [ "$APT_UPDATED" = 1 ] && return 0
  say "apt-get update"
  as_root apt-get update -qq || die "apt-get update failed"
  APT_UPDATED=1
}

install_packages() {
  if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    say "adding the arm64 architecture to dpkg"
    as_root dpkg --add-architecture arm64
    APT_UPDATED=0
    apt_update_once
  fi
  local missing=() p
  for p in "${HOST_PACKAGES[@]}"; do installed "$p" || missing+=("$p"); done
  for p in "${ARM64_PACKAGES[@]}"; do installed "$p:arm64" || missing+=("$p:arm64"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  apt_update_once
  local plan
  plan=$(as_root apt-get -s install --no-install-recommends "${missing[@]}") \
    || die "apt-get cannot install: ${missing[*]}"
  if grep -q '^Remv' <<<"$plan"; then
    grep '^Remv' <<<"$plan" >&2
    die "installing ${missing[*]} would remove the packages above; not doing that"
  fi
  say "installing Debian packages: ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null || die "apt-get install failed for: ${missing[*]}"
}

qemu_recent() {
  local v
  v=$(dpkg-query -W -f='${Version}' qemu-user-static 2>/dev/null) || return 1
  installed qemu-user-static && dpkg --compare-versions "$v" ge "$QEMU_MIN"
}

# qemu-user-static >= QEMU_MIN; on Debian 12 from bookworm-backports (a transitional package
# there: qemu-user's static binaries keep their /usr/bin/qemu-aarch64-static names).
install_qemu() {
  qemu_recent && return 0
  local release=() codename plan
  # shellcheck source=/dev/null
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  if [ "$codename" = bookworm ]; then
    if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
      say "adding bookworm-backports to apt's sources (for qemu-user-static >= 10)"
      echo 'deb http://deb.debian.org/debian bookworm-backports main' \
        | as_root tee /etc/apt/sources.list.d/bookworm-backports.list >/dev/null
      APT_UPDATED=0
    fi
    release=(-t bookworm-backports)
  fi
  apt_update_once
  plan=$(as_root apt-get -s install --no-install-recommends "${release[@]}" qemu-user-static) \
    || die "apt-get cannot install qemu-user-static ${release[*]}"
  if grep -q '^Remv' <<<"$plan"; then
    grep '^Remv' <<<"$plan" >&2
    die "installing qemu-user-static ${release[*]} would remove the packages above; not doing that"
  fi
  say "installing qemu-user-static ${release[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${release[@]}" qemu-user-static >/dev/null || die "apt-get install qemu-user-static failed"
  qemu_recent || die "qemu-user-static is $(dpkg-query -W -f='${Version}' qemu-user-static), older than $QEMU_MIN"
}

# The version of each sysroot package that fits what is installed: plugins-base's dev part
# must equal its runtime part's version; the RTSP server has no installed twin to match.
sysroot_versions() {
  local base
  base=$(dpkg-query -W -f='${Version}' libgstreamer-plugins-base1.0-0:arm64)
  printf '%s\n' "libgstreamer-plugins-base1.0-dev:arm64=$base"
  local p v
  for p in libgstrtspserver-1.0-0 libgstrtspserver-1.0-dev; do
    v=$(apt-cache policy "$p:arm64" | awk '/Candidate:/ { print $2 }')
    { [ -n "$v" ] && [ "$v" != "(none)" ]; } || die "apt has no candidate for $p:arm64"
    printf '%s\n' "$p:arm64=$v"
  done
}

# Unpacks SYSROOT_PACKAGES into $SYSROOT (once per set of versions): .pc prefixes point into
# the sysroot, and a dev symlink whose library is not in the sysroot points at the arm64
# runtime library that apt installed in /usr/lib/aarch64-linux-gnu (or goes, for libraries
# nothing here links, such as GStreamer's GL library).
prepare_sysroot() {
  local want stamp="$SYSROOT/.packages"
  want=$(sysroot_versions 2>/dev/null) || { apt_update_once; want=$(sysroot_versions); }
  [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && return 0
  say "unpacking into $SYSROOT: ${SYSROOT_PACKAGES[*]}"
  local tmp debs
  mapfile -t debs <<<"$want"
  tmp=$(mktemp -d)
  chmod 755 "$tmp" # apt's _apt user downloads into it
  (cd "$tmp" && apt-get download -qq "${debs[@]}" >/dev/null 2>&1) \
    || { apt_update_once && (cd "$tmp" && apt-get download -qq "${debs[@]}" >/dev/null); } \
    || die "apt-get download failed for: ${debs[*]}"
  rm -rf "$SYSROOT"
  mkdir -p "$SYSROOT"
  local deb
  for deb in "$tmp"/*.deb; do dpkg-deb -x "$deb" "$SYSROOT"; done
  rm -rf "$tmp"
  sed -i "s|^prefix=/usr\$|prefix=$SYSROOT/usr|" "$SYSROOT$MULTIARCH_LIB"/pkgconfig/*.pc
  local link target
  for link in "$SYSROOT$MULTIARCH_LIB"/*.so; do
    [ -e "$link" ] && continue
    target=$(readlink "$link")
    if [ -e "$MULTIARCH_LIB/$target" ]; then ln -sfn "$MULTIARCH_LIB/$target" "$link"; else rm -f "$link"; fi
  done
  printf '%s\n' "$want" >"$stamp"
}

need_rust_target() {
  command -v cargo >/dev/null 2>&1 || export PATH="$HOME/.cargo/bin:$PATH"
  command -v rustup >/dev/null 2>&1 || die "rustup not found: the arm64 target comes from rustup"
  rustup target list --installed | grep -qx "$TARGET" && return 0
  say "rustup target add $TARGET"
  rustup target add "$TARGET" || die "rustup target add $TARGET failed"
}

cross_env() {
  export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
  export CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++
  export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
  # Only the target's pkg-config probes see these (the pkg-config crate reads
  # NAME_<target> first); host build scripts keep the host's paths.
  export PKG_CONFIG_ALLOW_CROSS_aarch64_unknown_linux_gnu=1
  export PKG_CONFIG_LIBDIR_aarch64_unknown_linux_gnu="$SYSROOT$MULTIARCH_LIB/pkgconfig:$MULTIARCH_LIB/pkgconfig:/usr/share/pkgconfig"
  # bindgen (ffmpeg-sys-next) passes --target itself; the multiarch include dir is where
  # Debian puts the arm64 FFmpeg and libc headers.
  export BINDGEN_EXTRA_CLANG_ARGS_aarch64_unknown_linux_gnu="-I/usr/include/aarch64-linux-gnu"
}

report() {
  local dir="$TARGET_DIR/$TARGET/release" bin stripped
  echo
  for bin in gateway sim; do
    [ -x "$dir/$bin" ] || die "$dir/$bin was not built"
    stripped=$(mktemp)
    aarch64-linux-gnu-strip -o "$stripped" "$dir/$bin"
    printf '%s\n  %s\n  size: %s bytes (%s MB); stripped: %s MB\n' "$dir/$bin" \
      "$(file -b "$dir/$bin")" "$(stat -c %s "$dir/$bin")" \
      "$(( $(stat -c %s "$dir/$bin") / 1048576 ))" "$(( $(stat -c %s "$stripped") / 1048576 ))"
    rm -f "$stripped"
  done
}

main() {
  local t0 t1 t2
  t0=$(date +%s)
  install_packages
  install_qemu
  prepare_sysroot
  need_rust_target
  cross_env
  t1=$(date +%s)
  say "building for $TARGET (set up in $((t1 - t0)) s)"
  cd "$ROOT"
  cargo build --release --locked --target "$TARGET" -p gateway -p simulators --bins "$@"
  t2=$(date +%s)
  say "cross build took $((t2 - t1)) s"
  report
}

main "$@"
