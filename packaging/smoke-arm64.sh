#!/usr/bin/env bash
# Smoke test of the arm64 `gateway` under qemu-user on an x86-64 host. Run it (do not
# source it) after packaging/cross-arm64.sh, which builds the binary and installs qemu,
# mosquitto and mosquitto-clients:
#
#   packaging/smoke-arm64.sh [PATH/TO/arm64/gateway]
#
# Default binary: $CARGO_TARGET_DIR/aarch64-unknown-linux-gnu/release/gateway (CARGO_TARGET_DIR
# defaults to <repo>/target). qemu is called explicitly (QEMU, default qemu-aarch64-static),
# so no binfmt registration is needed. SMOKE_TIMEOUT (seconds, default 60) bounds each wait.
#
# Checks, each failing the script with a message naming what was missed:
#   1. `gateway --version` prints the workspace version;
#   2. `gateway config check` passes on a generated config without cameras and exits 78
#      (EX_CONFIG) on a broken one;
#   3. the sensor path end to end: a Debian mosquitto on a free loopback port is the
#      platform; the gateway (embedded broker on 127.0.0.1:0, one smoke detector, no cameras,
#      `[uplink]` pointing at mosquitto) says "gateway ready"; `mosquitto_pub -q 1`
#      `{"smoke":true}` on sensors/smoke-1/state; mosquitto_sub on the platform must receive
#      the red smoke alert on shouwang/<site>/alerts; then SIGTERM stops it cleanly (exit 0,
#      "gateway stopped cleanly");
#   4. detection: `gateway detect` loads the arm64 ONNX Runtime (the library pinned in ./x:
#      vendor/onnxruntime-aarch64/'s copy if there, else fetched once from the onnxruntime
#      wheel on PyPI into $CARGO_TARGET_DIR/aarch64-unknown-linux-gnu/onnxruntime/; checked
#      against x's SHA-256) and models/yolox_nano.onnx, and must find a person in the first frame of
#      vendor/footage/vtest.avi (`./x deps` fetches the model and the footage). This needs
#      qemu-user >= 10: under Debian 12's qemu-user 7.2 ONNX Runtime segfaults at start-up
#      (a NULL dereference right after reading /sys/devices/system/cpu/*/cache), which is
#      why cross-arm64.sh installs qemu-user-static from bookworm-backports.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=aarch64-unknown-linux-gnu
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
GATEWAY=${1:-$TARGET_DIR/$TARGET/release/gateway}
QEMU=${QEMU:-qemu-aarch64-static}
TIMEOUT=${SMOKE_TIMEOUT:-60}
ORT_DIR="$TARGET_DIR/$TARGET/onnxruntime"
QEMU_MIN_MAJOR=10
SITE=smoke-site
DEVICE=smoke-1

say() { printf '\033[1;34m==>\033[0m %s\n' "$*" >&2; }
pass() { printf '\033[1;32mok\033[0m   %s\n' "$*" >&2; }
die() { printf '\033[1;31mFAIL\033[0m %s\n' "$*" >&2; exit 1; }

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  local rc=$? pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "$rc" -ne 0 ]; then
    local log
    for log in "$WORK"/*.log; do
      [ -s "$log" ] || continue
      printf '\n--- last lines of %s\n' "$(basename "$log")" >&2
      tail -n 25 "$log" >&2
    done
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

preflight() {
  local cmd
  for cmd in "$QEMU" mosquitto mosquitto_pub mosquitto_sub file python3 stdbuf; do
    command -v "$cmd" >/dev/null 2>&1 \
      || die "$cmd not found: run packaging/cross-arm64.sh first (it installs it)"
  done
  [ -x "$GATEWAY" ] || die "$GATEWAY not found: build it with packaging/cross-arm64.sh"
  file -b "$GATEWAY" | grep -q 'ARM aarch64' || die "$GATEWAY is not an arm64 binary: $(file -b "$GATEWAY")"
  local version major
  version=$("$QEMU" --version | head -n 1)
  major=$(grep -o 'version [0-9]*' <<<"$version" | grep -o '[0-9]*$')
  [ "${major:-0}" -ge "$QEMU_MIN_MAJOR" ] \
    || die "$version: ONNX Runtime segfaults under qemu-user < $QEMU_MIN_MAJOR; run packaging/cross-arm64.sh (it installs a newer one)"
  say "$GATEWAY under $version"
}

gw() { "$QEMU" "$GATEWAY" "$@"; }

check_version() {
  local want got
  want=$(awk '/^\[workspace.package\]/ { p = 1; next } /^\[/ { p = 0 }
              p && $1 == "version" { gsub(/"/, "", $3); print $3; exit }' "$ROOT/Cargo.toml")
  [ -n "$want" ] || die "no [workspace.package] version in $ROOT/Cargo.toml"
  got=$(gw --version) || die "gateway --version exited $?"
  [ "$got" = "gateway $want" ] || die "gateway --version printed '$got', expected 'gateway $want'"
  pass "gateway --version: $got"
}

# A loopback port nobody listens on right now.
free_port() {
  local port
  for _ in $(seq 50); do
    port=$((20000 + RANDOM % 40000))
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || { echo "$port"; return 0; }
  done
  die "no free loopback port found"
}

write_config() { # file upstream-port
  cat >"$1" <<EOF
[site]
id = "$SITE"
name = "arm64 smoke test"
kind = "compound"

[broker]
bind = "127.0.0.1:0"

[console]
bind = "127.0.0.1:0"

[[locations.buildings]]
id = "b1"
name = "Building 1"
floors = 6

[[devices]]
id = "$DEVICE"
kind = "smoke"
location = { building = "b1", floor = 3 }

[rules.timing]
debounce_s = 0

[uplink]
host = "127.0.0.1"
port = $2
topic_prefix = "shouwang"
qos = 1
keep_alive_s = 5

[uplink.outbox]
retry_backoff_max_s = 1
EOF
}

check_config() {
  local out rc=0
  write_config "$WORK/gateway.toml" 1884
  out=$(gw config check "$WORK/gateway.toml" 2>&1) \
    || die "config check failed on a valid config (exit $?): $out"
  pass "config check accepts a config without cameras"
  # The same config with a device of a kind that does not exist.
  sed 's/^kind = "smoke"$/kind = "smoke-ish"/' "$WORK/gateway.toml" >"$WORK/broken.toml"
  out=$(gw config check "$WORK/broken.toml" 2>&1) || rc=$?
  [ "$rc" = 78 ] || die "config check on a broken config exited $rc, expected 78; it printed: $out"
  pass "config check rejects a broken config with exit 78: $(head -n 1 <<<"$out")"
}

# Polls `condition` (a shell command) every 0.2 s until it holds or TIMEOUT seconds pass.
wait_for() { # what condition...
  local what=$1 deadline=$((SECONDS + TIMEOUT))
  shift
  until "$@"; do
    [ "$SECONDS" -lt "$deadline" ] || die "$what: not within ${TIMEOUT} s"
    sleep 0.2
  done
}

alive() { kill -0 "$1" 2>/dev/null || die "$2 exited early"; }
listening() { alive "$1" "$3" && (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null; }
logged() { alive "$1" "$2" && grep -qsF -- "$3" "$4"; }

start_upstream() {
  local port
  port=$(free_port)
  printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$port" >"$WORK/upstream.conf"
  mosquitto -c "$WORK/upstream.conf" >"$WORK/upstream.log" 2>&1 &
  PIDS+=($!)
  local pid=$!
  wait_for "mosquitto listening on 127.0.0.1:$port" listening "$pid" "$port" mosquitto
  UPSTREAM_PORT=$port
  # Line-buffered: its stdout is a file, and the SUBACK and alert lines are waited for.
  stdbuf -oL mosquitto_sub -h 127.0.0.1 -p "$port" -q 1 -v -d -i smoke-platform \
    -t "shouwang/$SITE/alerts" >"$WORK/platform.log" 2>&1 &
  PIDS+=($!)
  pid=$!
  wait_for "platform subscriber's SUBACK" \
    logged "$pid" mosquitto_sub 'Client smoke-platform received SUBACK' "$WORK/platform.log"
  pass "platform stand-in: mosquitto on 127.0.0.1:$port, subscribed to shouwang/$SITE/alerts"
}

start_gateway() {
  write_config "$WORK/gateway.toml" "$UPSTREAM_PORT"
  local t0=$SECONDS
  RUST_LOG=info "$QEMU" "$GATEWAY" --log-format json run --config "$WORK/gateway.toml" \
    --data-dir "$WORK/data" >"$WORK/gateway-stdout.log" 2>"$WORK/gateway.log" &
  PIDS+=($!)
  local pid=$!
  wait_for '"gateway ready" in its log' \
    logged "$pid" gateway '"message":"gateway ready"' "$WORK/gateway.log"
  BROKER=$(grep -m1 '"message":"gateway ready"' "$WORK/gateway.log" \
    | grep -o '"broker":"127\.0\.0\.1:[0-9]*"' | grep -o '[0-9]*"$' | tr -d '"')
  [ -n "$BROKER" ] || die "the readiness line names no broker address: $(grep -m1 'gateway ready' "$WORK/gateway.log")"
  pass "gateway ready under qemu after $((SECONDS - t0)) s; embedded broker on 127.0.0.1:$BROKER"
}

red_smoke_alert() {
  grep "^shouwang/$SITE/alerts " "$WORK/platform.log" \
    | grep '"kind":"smoke"' | grep '"level":"red"' | grep -m1 '"event":"raised"'
}

red_smoke_alert_seen() {
  alive "${PIDS[0]}" mosquitto && alive "${PIDS[1]}" mosquitto_sub && alive "${PIDS[2]}" gateway \
    && red_smoke_alert >/dev/null
}

check_sensor_path() {
  start_upstream
  start_gateway
  local t0=$SECONDS
  mosquitto_pub -h 127.0.0.1 -p "$BROKER" -q 1 -i "$DEVICE" \
    -t "sensors/$DEVICE/state" -m '{"smoke":true}' \
    || die "mosquitto_pub to the gateway's broker failed (exit $?)"
  wait_for "the red smoke alert on the platform (shouwang/$SITE/alerts)" red_smoke_alert_seen
  pass "the platform received the red smoke alert $((SECONDS - t0)) s after the sensor published:"
  red_smoke_alert
}

stops_cleanly() {
  local pid=${PIDS[2]} rc=0 deadline=$((SECONDS + TIMEOUT))
  kill -TERM "$pid"
  while kill -0 "$pid" 2>/dev/null; do
    [ "$SECONDS" -lt "$deadline" ] || die "the gateway still runs ${TIMEOUT} s after SIGTERM"
    sleep 0.2
  done
  wait "$pid" || rc=$?
  [ "$rc" = 0 ] || die "the gateway exited $rc after SIGTERM, expected 0"
  grep -qF '"message":"gateway stopped cleanly"' "$WORK/gateway.log" \
    || die "no \"gateway stopped cleanly\" line after SIGTERM"
  pass "SIGTERM: the gateway stopped cleanly (exit 0)"
}

# The arm64 libonnxruntime.so pinned in ./x (version and SHA-256), from the PyPI wheel.
fetch_onnxruntime() {
  local version sha so wheel_dir
  version=$(sed -n 's/^ORT_VERSION=//p' "$ROOT/x")
  sha=$(sed -n 's/^ORT_SO_SHA256_aarch64=//p' "$ROOT/x")
  { [ -n "$version" ] && [ -n "$sha" ]; } || die "no ORT_VERSION / ORT_SO_SHA256_aarch64 pin in $ROOT/x"
  # `./x package arm64` keeps its copy in vendor/onnxruntime-aarch64/: use it when it is there.
  for so in "$ROOT/vendor/onnxruntime-aarch64/libonnxruntime.so.$version" \
    "$ORT_DIR/libonnxruntime.so.$version"; do
    ORT_SO=$so
    [ -f "$so" ] && [ "$(sha256sum "$so" | cut -d' ' -f1)" = "$sha" ] && return 0
  done
  say "fetching the arm64 ONNX Runtime $version from the onnxruntime wheel on PyPI"
  mkdir -p "$ORT_DIR"
  wheel_dir="$WORK/wheel"
  python3 -m pip download --quiet --no-deps --only-binary=:all: --platform manylinux_2_28_aarch64 \
    --python-version 3.11 -d "$wheel_dir" "onnxruntime==$version" >&2 \
    || die "pip download onnxruntime==$version (manylinux_2_28_aarch64) failed"
  python3 - "$wheel_dir"/*.whl "onnxruntime/capi/libonnxruntime.so.$version" "$so.part" <<'PY'
import shutil, sys, zipfile
wheel, member, dest = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(dest, "wb") as out:
    shutil.copyfileobj(src, out)
PY
  [ "$(sha256sum "$so.part" | cut -d' ' -f1)" = "$sha" ] \
    || die "checksum mismatch for the arm64 libonnxruntime.so.$version: expected $sha"
  mv "$so.part" "$so"
}

check_detection() {
  local model="$ROOT/models/yolox_nano.onnx" clip="$ROOT/vendor/footage/vtest.avi" out rc=0 t0
  [ -f "$model" ] || die "$model is missing: run ./x deps"
  [ -f "$clip" ] || die "$clip is missing: run ./x deps"
  fetch_onnxruntime
  t0=$SECONDS
  # The first frame only (t = 0 s); --json: one object per analysed frame, then the stats.
  out=$(gw detect --input "$clip" --fps 1 --max-seconds 0.5 --json \
    --onnxruntime "$ORT_SO" --models-dir "$ROOT/models" 2>"$WORK/detect.log") || rc=$?
  [ "$rc" = 0 ] || die "gateway detect exited $rc under $("$QEMU" --version | head -n 1)"
  grep -q '"class":"person","score":0\.[5-9]' <<<"$out" \
    || die "gateway detect found no person (score >= 0.5) in the first frame of vtest.avi: $out"
  pass "gateway detect (ONNX Runtime, YOLOX-Nano) under qemu in $((SECONDS - t0)) s: $(grep -o '"class":"person"' <<<"$out" | wc -l) persons in the first frame of vtest.avi"
}

main() {
  local t0=$SECONDS
  preflight
  check_version
  check_config
  check_sensor_path
  stops_cleanly
  check_detection
  say "arm64 smoke test passed in $((SECONDS - t0)) s"
}

main "$@"
