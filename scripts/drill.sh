#!/usr/bin/env bash
# `npm run drill`: set-up (idempotent: OS packages, npm ci, native helpers), then the failover rehearsal.
# `--help` only prints the options: no set-up for that once npm ci has run (set-up may need root, and
# it takes a while).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -e node_modules/tsx ]; then
  for arg in "$@"; do
    case "$arg" in
      -h|--help) exec node --import tsx packages/drill/src/cli.ts --help ;;
    esac
  done
fi
CKPT_SETUP_PROMTOOL=0 bash scripts/setup.sh >&2  # promtool is for the tests only
exec node --import tsx packages/drill/src/cli.ts "$@"
