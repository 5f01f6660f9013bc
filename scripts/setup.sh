#!/usr/bin/env bash
# Prepares a fresh Debian machine (as root) or an existing checkout for the tests and the drill:
# installs missing OS packages, installs npm dependencies from the lock file, builds the native helper.
# Idempotent: what is already there is skipped. Set CKPT_SKIP_SETUP=1 to skip it entirely, and
# CKPT_SETUP_PROMTOOL=0 to skip promtool (only the alert-rule checks need it).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'setup: %s\n' "$*" >&2; }

if [[ "${CKPT_SKIP_SETUP:-0}" == 1 ]]; then log "skipped (CKPT_SKIP_SETUP=1)"; exit 0; fi

# OS packages: a C compiler and binutils for the native helper and the guest program; Redis (the
# standby store the tests and the drill start); librdkafka's headers for the Kafka test broker
# (its mock cluster, see tools/kafka-mock).
need=()
command -v gcc >/dev/null || need+=(gcc)
command -v objcopy >/dev/null || need+=(binutils)
command -v make >/dev/null || need+=(make)
[[ -f /usr/include/linux/kvm.h ]] || need+=(linux-libc-dev)
command -v redis-server >/dev/null || need+=(redis-server)
command -v redis-benchmark >/dev/null || need+=(redis-tools)
[[ -f /usr/include/librdkafka/rdkafka_mock.h ]] || need+=(librdkafka-dev)
if ((${#need[@]})); then
  if [[ $(id -u) -ne 0 ]]; then log "missing OS packages: ${need[*]} (run as root, or install them)"; exit 1; fi
  log "installing OS packages: ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# promtool, for the alert-rule checks (deploy/src/alert-rules.ts, part of `npm test` and
# `validate:deploy`). Debian's prometheus package ships it, but installing that package would also
# install and start a Prometheus server: only the binary is extracted from the .deb. Without root it
# cannot be installed here: a warning, not a stop (the harvester, the pipeline and the drill do not
# need it; the alert-rule checks then fail and say how to install it).
# The drill does not need it (CKPT_SETUP_PROMTOOL=0 from scripts/drill.sh).
if [[ "${CKPT_SETUP_PROMTOOL:-1}" == 1 ]] && ! command -v promtool >/dev/null && [[ $(id -u) -ne 0 ]]; then
  log "warning: missing promtool, and not root to install it: the alert-rule checks of npm test and validate:deploy will fail (run this as root, or copy usr/bin/promtool out of Debian's prometheus package into your PATH)"
elif [[ "${CKPT_SETUP_PROMTOOL:-1}" == 1 ]] && ! command -v promtool >/dev/null; then
  log "installing promtool (extracted from Debian's prometheus package)"
  tmp=$(mktemp -d)
  # apt-get download runs as the _apt user, which must be able to write here.
  chown _apt "$tmp" 2>/dev/null || chmod 777 "$tmp"
  # apt-get download needs the package lists, which a fresh image does not have yet.
  if ! (cd "$tmp" && apt-get download -qq prometheus >/dev/null 2>&1); then
    apt-get update -qq
    (cd "$tmp" && apt-get download -qq prometheus >/dev/null)
  fi
  dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/root"
  install -m 0755 "$tmp/root/usr/bin/promtool" /usr/local/bin/promtool
  rm -rf "$tmp"
fi

# npm dependencies, exactly as locked; skipped when node_modules matches the lock file.
stamp=node_modules/.ckpt-lock-stamp
if [[ ! -f $stamp ]] || ! cmp -s package-lock.json "$stamp"; then
  log "npm ci"
  npm ci --no-audit --no-fund --loglevel=error
  cp package-lock.json "$stamp"
fi

# The native KVM helper (plain gcc against Node's own headers; nothing is downloaded).
log "building the native helper"
npm run -s build:native
