#!/usr/bin/env bash
# The project's single test command: machine setup, build, lint, generated-code check, all tests.
#   bash scripts/test.sh [vitest args...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*" >&2; }

step "setup"
bash scripts/setup.sh
step "build"
npm run build
step "lint"
npm run lint
step "gen:check"
npm run gen:check
step "test"
npx vitest run "$@"
