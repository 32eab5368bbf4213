#!/usr/bin/env bash
# The project's single test command: machine setup, build, lint, generated-code check, all tests.
#   bash scripts/test.sh [vitest args...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*" >&2; }

# BuildKit's conformance data and the reference BuildKit live in `shared/` next to the repository
# (KILN_CONFORMANCE_DIR, KILN_BUILDKIT_DIR override). A clone made elsewhere (a temp dir) finds
# them next to the local repository it was cloned from.
if [ ! -d ../shared ]; then
  origin="$(git config --get remote.origin.url || true)"
  if [ -n "$origin" ] && [ -d "$origin/../shared" ]; then
    shared="$(cd "$origin/../shared" && pwd)"
    export KILN_CONFORMANCE_DIR="${KILN_CONFORMANCE_DIR:-$shared/conformance}"
    export KILN_BUILDKIT_DIR="${KILN_BUILDKIT_DIR:-$shared/tools/buildkit}"
  fi
fi

step "setup"
bash scripts/setup.sh
step "build"
npm run build
step "lint"
npm run lint
npm run format:check
step "gen:check"
npm run gen:check
step "test"
report="$(mktemp -t kiln-vitest-XXXXXX.json)"
trap 'rm -f "$report"' EXIT
set +e
npx vitest run --reporter=default --reporter=json --outputFile.json="$report" "$@"
rc=$?
set -e
# One plain closing line that any CI reader understands: "N passed, N failed[, N skipped]".
node -e '
  const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
  const skipped = r.numPendingTests + r.numTodoTests;
  console.log(`${r.numPassedTests} passed, ${r.numFailedTests} failed` + (skipped ? `, ${skipped} skipped` : ""));
' "$report" || echo "0 passed, 1 failed"
exit "$rc"
