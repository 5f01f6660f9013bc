#!/usr/bin/env bash
# `npm test`: set-up (idempotent), type check, lint, then every test with Node's test runner.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "test: type check" >&2
npx tsc -p tsconfig.json --noEmit
echo "test: lint" >&2
npx eslint --max-warnings 0 .
# Where /dev/kvm exists the real-KVM tests must run: an unusable KVM then fails them instead of skipping.
if [ -c /dev/kvm ] && [ -z "${CKPT_REQUIRE_KVM:-}" ]; then
  export CKPT_REQUIRE_KVM=1
  echo "test: /dev/kvm exists, so the real-KVM tests must run (CKPT_REQUIRE_KVM=1)" >&2
fi
echo "test: node --test" >&2
node scripts/run-tests.mjs "$@"
