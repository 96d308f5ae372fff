#!/usr/bin/env bash
# Installs what the MQTT uplink tests and benchmarks need: a real mosquitto
# broker (started by the tests themselves on free loopback ports, never as a
# service) and its command-line clients for debugging.
set -euo pipefail
if command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; then
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends mosquitto mosquitto-clients
# The Debian package enables a system service on port 1883; the tests do not
# use it, so keep it from holding the port where systemd runs.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl disable --now mosquitto.service >/dev/null 2>&1 || true
fi
