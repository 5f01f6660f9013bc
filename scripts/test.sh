#!/usr/bin/env bash
# `npm test`: set-up (idempotent), type check, lint, then every test with Node's test runner.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "test: type check" >&2
npx tsc -p tsconfig.json --noEmit
echo "test: lint" >&2
npx eslint --max-warnings 0 .
echo "test: node --test" >&2
node scripts/run-tests.mjs "$@"
