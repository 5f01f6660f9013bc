#!/usr/bin/env bash
# `npm run drill`: set-up (idempotent: OS packages, npm ci, native helpers), then the failover rehearsal.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >&2
exec node --import tsx packages/drill/src/cli.ts "$@"
