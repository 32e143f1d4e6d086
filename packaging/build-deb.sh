#!/usr/bin/env bash
# Builds target/debian/shouwang_{version}_{arch}.deb from binaries already built.
#
#   packaging/build-deb.sh ARCH BIN_DIR ORT_SO STARTER_TOML
#
#   ARCH          amd64 | arm64 (Debian's name)
#   BIN_DIR       where `gateway` and `sim` of that architecture are (a cargo release dir)
#   ORT_SO        that architecture's libonnxruntime.so.VERSION (from the PyPI wheel, `./x deps`)
#   STARTER_TOML  the packaged /etc/shouwang/gateway.toml (`gateway config init` plus the
#                 packaged model directory; `./x package` makes it)
#
# Plain dpkg-deb: what goes where is written out below, nothing is generated behind the
# scenes. Depends comes from dpkg-shlibdeps on the binaries and the ONNX Runtime library.
#
# Layout of the package:
#   /usr/lib/shouwang/{gateway,sim}              the binaries (stripped)
#   /usr/lib/shouwang/libonnxruntime.so*         ONNX Runtime (the gateway looks here)
#   /usr/bin/shouwang-gateway, shouwang-sim      symlinks to them
#   /usr/share/shouwang/models/                  the YOLOX-Nano model, its manifest and labels
#   /etc/shouwang/gateway.toml                   the starter config (a conffile: never
#                                                overwritten once edited)
#   /lib/systemd/system/shouwang.service         the unit (Type=notify, watchdog, hardening)
#   /usr/share/doc/shouwang/                     README, copyright
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
die() { printf '\033[1;31merror:\033[0m %s\n' "$*" >&2; exit 1; }

[ $# -eq 4 ] || die "usage: $0 ARCH BIN_DIR ORT_SO STARTER_TOML"
arch=$1 bin=$2 ort=$3 starter=$4
case "$arch" in
  amd64) triplet=x86_64-linux-gnu; strip=strip ;;
  arm64) triplet=aarch64-linux-gnu; strip=aarch64-linux-gnu-strip ;;
  *) die "unknown architecture $arch (amd64 or arm64)" ;;
esac
for f in "$bin/gateway" "$bin/sim" "$ort" "$starter" "$ROOT/models/yolox_nano.onnx"; do
  [ -f "$f" ] || die "missing $f"
done
command -v "$strip" >/dev/null || die "$strip not found (binutils for $triplet)"

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$ROOT/Cargo.toml" | head -1)
[ -n "$version" ] || die "no workspace version in Cargo.toml"
out="$ROOT/target/debian"
deb="$out/shouwang_${version}_${arch}.deb"
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$out"

# Files.
lib="$stage/usr/lib/shouwang"
install -d "$lib" "$stage/usr/bin" "$stage/usr/share/shouwang/models" "$stage/DEBIAN"
for b in gateway sim; do
  "$strip" -o "$lib/$b" "$bin/$b"
  chmod 0755 "$lib/$b"
  ln -s "../lib/shouwang/$b" "$stage/usr/bin/shouwang-$b"
done
ort_name=$(basename "$ort")
install -m 0644 "$ort" "$lib/$ort_name"
ln -s "$ort_name" "$lib/libonnxruntime.so"
install -m 0644 "$ROOT"/models/{yolox_nano.onnx,yolox_nano.toml,coco80.txt} "$stage/usr/share/shouwang/models/"
install -D -m 0644 "$starter" "$stage/etc/shouwang/gateway.toml"
install -D -m 0644 "$ROOT/packaging/debian/shouwang.service" "$stage/lib/systemd/system/shouwang.service"
install -D -m 0644 "$ROOT/README.md" "$stage/usr/share/doc/shouwang/README.md"
install -D -m 0644 "$ROOT/packaging/debian/copyright" "$stage/usr/share/doc/shouwang/copyright"

# Dependencies of the binaries and of ONNX Runtime (libstdc++, libgcc), for this architecture.
shlibs() {
  local tmp
  tmp=$(mktemp -d)
  mkdir "$tmp/debian"
  printf 'Source: shouwang\n\nPackage: shouwang\nArchitecture: any\n' >"$tmp/debian/control"
  # --ignore-missing-info: the arm64 GStreamer RTSP server library `sim` links is unpacked
  # into a private sysroot by cross-arm64.sh (Debian 12 cannot co-install it beside amd64's),
  # so dpkg knows no package for it; it is named below.
  local sysroot="${CARGO_TARGET_DIR:-$ROOT/target}/arm64-sysroot/usr/lib/$triplet"
  (cd "$tmp" && DEB_HOST_ARCH=$arch dpkg-shlibdeps -O --ignore-missing-info -l"/usr/lib/$triplet" -l"$sysroot" \
      "$lib/gateway" "$lib/sim" "$lib/$ort_name" 2>"$tmp/warnings") \
    | sed -n 's/^shlibs:Depends=//p'
  rm -rf "$tmp"
}
depends=$(shlibs)
[ -n "$depends" ] || die "dpkg-shlibdeps found no dependencies for $arch (are the $arch libraries installed?)"
for needed in libavcodec59 libavformat59 libswscale6 libgstrtspserver-1.0-0; do
  grep -q "$needed" <<<"$depends" || depends="$depends, $needed"
done

# Control files.
cp "$ROOT"/packaging/debian/{postinst,prerm,postrm} "$stage/DEBIAN/"
chmod 0755 "$stage"/DEBIAN/{postinst,prerm,postrm}
echo /etc/shouwang/gateway.toml >"$stage/DEBIAN/conffiles"
cat >"$stage/DEBIAN/control" <<EOF
Package: shouwang
Version: $version
Architecture: $arch
Maintainer: shouwang developers <dev@shouwang.local>
Installed-Size: $(du -sk --exclude=DEBIAN "$stage" | cut -f1)
Depends: $depends, passwd
Section: net
Priority: optional
Description: edge gateway for residential compounds and street police stations
 shouwang (守望, "keep watch") collects fire/smoke, gas, water-leak, e-bike battery
 and SOS sensors over MQTT on an embedded broker, runs ONNX object detection on
 camera streams, raises four-colour alerts for station staff and residents, and
 forwards every alert upstream from a durable SQLite outbox.
EOF

dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
printf '%s  %s\n' "$(du -h "$deb" | cut -f1)" "$deb"
