#!/usr/bin/env bash
# Cross-builds tracegate for 64-bit Raspberry Pi OS / Debian arm64, runs it
# under qemu, checks the binary size and builds the .deb.
#
# Usage: bash .ci/arm64.sh
# Takes 10-20 min on 2 shared cores the first time (release build with LTO;
# 19 min measured on a busy machine), about a minute when nothing changed. Needs root for apt-get.
# Output: target/debian/tracegate_<version>-1_arm64.deb
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
target=aarch64-unknown-linux-gnu
max_bytes=$((12 * 1000 * 1000))
sysroot="$root/target/arm64-sysroot"

need=()
for p in gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ "${#need[@]}" -gt 0 ]; then
    echo "== installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
rustup target list --installed | grep -qx "$target" || rustup target add "$target"

# libpcsclite for arm64, linked by soname: only the runtime package is
# needed (installing libpcsclite-dev:arm64 conflicts with the host's).
pcsc_dir="$sysroot/usr/lib/aarch64-linux-gnu"
if [ ! -e "$pcsc_dir/libpcsclite.so.1" ]; then
    echo "== fetching libpcsclite1:arm64"
    if ! dpkg --print-foreign-architectures | grep -qx arm64; then
        dpkg --add-architecture arm64
        apt-get update -qq
    fi
    dl="$(mktemp -d)"
    chmod 755 "$dl" # apt's _apt user downloads into it
    (cd "$dl" && apt-get download -qq libpcsclite1:arm64)
    mkdir -p "$sysroot"
    dpkg -x "$dl"/libpcsclite1_*_arm64.deb "$sysroot"
    rm -rf "$dl"
fi
export PCSC_LIB_DIR="$pcsc_dir"
export PCSC_LIB_NAME='dylib:+verbatim=libpcsclite.so.1'

echo "== cargo build --release --target $target -p tracegate"
start=$(date +%s)
cargo build --release --target "$target" -p tracegate
echo "build took $(( $(date +%s) - start )) s"
bin="${CARGO_TARGET_DIR:-$root/target}/$target/release/tracegate"
file "$bin" 2>/dev/null || true

run() {
    QEMU_LD_PREFIX=/usr/aarch64-linux-gnu LD_LIBRARY_PATH="$pcsc_dir" \
        qemu-aarch64-static "$bin" "$@"
}
echo "== tracegate --version (qemu)"
run --version
echo "== tracegate demo --duration 3 (qemu)"
demo_log="$(mktemp)"
if ! timeout 120 bash -c "$(declare -f run); bin='$bin'; pcsc_dir='$pcsc_dir'; run demo --duration 3" >"$demo_log" 2>&1; then
    echo "FAIL: demo under qemu" >&2
    tail -n 40 "$demo_log" >&2
    exit 1
fi
tail -n 5 "$demo_log"
rm -f "$demo_log"

size=$(stat -c %s "$bin")
echo "binary size: $size bytes ($(awk -v s="$size" 'BEGIN { printf "%.2f", s / 1048576 }') MiB), limit $max_bytes"
if [ "$size" -gt "$max_bytes" ]; then
    echo "FAIL: the arm64 binary is larger than 12 MB" >&2
    exit 1
fi
echo "highest GLIBC symbol version: $(aarch64-linux-gnu-objdump -T "$bin" | grep -o 'GLIBC_[0-9.]*' | sort -Vu | tail -n1)"

if ! command -v cargo-deb >/dev/null 2>&1; then
    echo "== cargo install cargo-deb"
    cargo install cargo-deb --locked
fi
echo "== cargo deb"
deb="$(cargo deb --no-build --no-strip --target "$target" -p tracegate | tail -n1)"
echo "package: $deb"
dpkg-deb --info "$deb" | sed -n '/Package:/,$p'
contents="$(dpkg-deb --contents "$deb")"
# cargo-deb puts the unit in /usr/lib/systemd/system (merged /usr).
for f in ./usr/bin/tracegate '(./usr)?/lib/systemd/system/tracegate.service' \
    ./etc/tracegate/tracegate.toml ./usr/share/polkit-1/rules.d/50-tracegate-pcscd.rules \
    ./usr/lib/modules-load.d/tracegate.conf; do
    if ! grep -Eq " $f\$" <<<"$contents"; then
        echo "FAIL: $f missing from $deb" >&2
        echo "$contents" >&2
        exit 1
    fi
done
ctrl="$(mktemp -d)"
dpkg-deb --control "$deb" "$ctrl"
grep -q 'adduser --system' "$ctrl/postinst" || { echo "FAIL: postinst does not create the user" >&2; exit 1; }
grep -q 'deb-systemd-helper' "$ctrl/postinst" || { echo "FAIL: postinst does not enable the unit" >&2; exit 1; }
rm -rf "$ctrl"
echo "arm64: OK"
