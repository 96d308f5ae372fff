#!/usr/bin/env bash
# Brings up a real pcscd with the vsmartcard virtual reader (vpcd) so the NFC
# tests (drivers/tests/nfc_vpcd.rs) can run against the real PC/SC stack.
#
#   .ci/nfc-setup.sh          install packages if missing, start pcscd, wait until ready
#   .ci/nfc-setup.sh stop     stop the pcscd this script started
#
# pcscd runs in the foreground (no daemonising) as a background job of this
# script, so its PID is ours to stop later and its log is ours to read.
# Readiness is judged from the log ("daemon ready") and from the kernel's
# listening-socket table. We never connect to vpcd's port 35963 to probe it:
# vpcd would take the probe for a card being inserted.
#
# Environment:
#   PCSCD_LOG      log file (default /tmp/tracegate-pcscd.log)
#   PCSCD_PIDFILE  PID file  (default /tmp/tracegate-pcscd.pid)
#
# Needs root (pcscd 1.9.9 hard-codes /run/pcscd). Never install vpcd on a
# production gateway: it listens on 0.0.0.0:35963/35964.
set -euo pipefail

PCSCD_LOG=${PCSCD_LOG:-/tmp/tracegate-pcscd.log}
PCSCD_PIDFILE=${PCSCD_PIDFILE:-/tmp/tracegate-pcscd.pid}
VPCD_PORT_HEX=8C7B # 35963

log() { echo "nfc-setup: $*" >&2; }

vpcd_listening() {
	# /proc/net/tcp{,6}: column 2 is local addr:port (hex), column 4 the state; 0A = LISTEN.
	awk -v p=":${VPCD_PORT_HEX}" '$4 == "0A" && substr($2, length($2) - 4) == p { found = 1 } END { exit !found }' \
		/proc/net/tcp /proc/net/tcp6 2>/dev/null
}

our_pcscd_alive() {
	[[ -f $PCSCD_PIDFILE ]] && kill -0 "$(cat "$PCSCD_PIDFILE")" 2>/dev/null
}

if [[ ${1:-} == stop ]]; then
	if our_pcscd_alive; then
		pid=$(cat "$PCSCD_PIDFILE")
		kill "$pid"
		for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		log "stopped pcscd (pid $pid)"
	else
		log "no pcscd started by this script is running"
	fi
	rm -f "$PCSCD_PIDFILE"
	exit 0
fi

need=()
command -v pcscd >/dev/null || need+=(pcscd)
[[ -f /usr/lib/pcsc/drivers/serial/libifdvpcd.so ]] || need+=(vsmartcard-vpcd)
if ((${#need[@]})); then
	log "installing ${need[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

if our_pcscd_alive && vpcd_listening; then
	log "pcscd already running (pid $(cat "$PCSCD_PIDFILE")) with vpcd listening"
	exit 0
fi

if pgrep -x pcscd >/dev/null; then
	# Someone else's pcscd (systemd, a developer's shell). Use it if vpcd is up;
	# do not kill a daemon we did not start.
	if vpcd_listening; then
		log "using the pcscd already running (not started by this script)"
		exit 0
	fi
	if command -v systemctl >/dev/null && systemctl is-active --quiet pcscd.service 2>/dev/null; then
		log "stopping systemd's pcscd so it restarts with the vpcd reader"
		systemctl stop pcscd.socket pcscd.service || true
	else
		log "a pcscd is running without vpcd and was not started by this script; stop it first" >&2
		exit 1
	fi
fi
# Socket activation would otherwise restart a second daemon on first use.
if command -v systemctl >/dev/null && systemctl is-active --quiet pcscd.socket 2>/dev/null; then
	systemctl stop pcscd.socket pcscd.service || true
fi

# A socket left by a dead daemon makes pcscd refuse to start; none is alive now.
rm -f /run/pcscd/pcscd.comm /run/pcscd/pcscd.pid

# No --auto-exit: pcscd would quit after 60 s idle and vpcd's port would vanish.
setsid pcscd --foreground --debug --apdu >"$PCSCD_LOG" 2>&1 </dev/null &
echo $! >"$PCSCD_PIDFILE"
log "started pcscd (pid $!), log in $PCSCD_LOG"

for _ in $(seq 1 100); do
	if grep -q "daemon ready" "$PCSCD_LOG" && vpcd_listening; then
		log "pcscd ready, vpcd listening on 35963/35964"
		exit 0
	fi
	if ! our_pcscd_alive; then
		log "pcscd exited during start-up; its log follows"
		cat "$PCSCD_LOG" >&2
		exit 1
	fi
	sleep 0.1
done
log "pcscd did not become ready within 10 s; its log follows"
tail -n 50 "$PCSCD_LOG" >&2
exit 1
