#!/usr/bin/env bash
# The project's test command (README: "Run the tests"). CI runs exactly this
# through .ci/run. It installs what the tests need (Debian packages; run as
# root or with sudo available), starts the services they talk to (pcscd with
# the vsmartcard virtual reader; mosquitto is started by the tests
# themselves on free loopback ports), then runs formatting, lint and every
# test, and fails when anything fails.
#
#   bash .ci/test.sh            everything
#   SKIP_ARM64=1 bash .ci/test.sh   without the arm64 cross build + qemu run
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n=== %s (%s)\n' "$*" "$(date -u +%H:%M:%S)"; }

SUDO=""
if [[ $(id -u) != 0 ]]; then SUDO="sudo"; fi

step "system packages"
need=()
for pkg in mosquitto mosquitto-clients pcscd vsmartcard-vpcd socat systemd; do
	dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if ((${#need[@]})); then
	export DEBIAN_FRONTEND=noninteractive
	$SUDO apt-get update -qq
	$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
# The distribution starts mosquitto as a service on port 1883; the tests run
# their own brokers and need nothing from it.

step "pcscd with the virtual reader"
$SUDO bash .ci/nfc-setup.sh
trap '$SUDO bash .ci/nfc-setup.sh stop >/dev/null 2>&1 || true' EXIT
export TRACEGATE_REQUIRE_PCSCD=1
export TRACEGATE_REQUIRE_MOSQUITTO=1

step "rustfmt"
cargo fmt --all -- --check

step "clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "tests"
# hw-tests run the real binary: make sure it is current.
cargo build -p tracegate --bin tracegate
cargo test --workspace --no-fail-fast 2>&1 | tee /tmp/tracegate-test.log
test "${PIPESTATUS[0]}" -eq 0

step "systemd unit security score"
bash .ci/systemd-security.sh

if [[ ${SKIP_ARM64:-0} != 1 ]]; then
	step "arm64 cross build, qemu run, .deb"
	bash .ci/arm64.sh
fi

step "all checks passed"
