#!/usr/bin/env bash
# `npm run drill`: set-up (idempotent: OS packages, npm ci, native helpers), then the failover rehearsal.
set -euo pipefail
cd "$(dirname "$0")/.."
CKPT_SETUP_PROMTOOL=0 bash scripts/setup.sh >&2  # promtool is for the tests only
exec node --import tsx packages/drill/src/cli.ts "$@"
