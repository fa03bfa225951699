#!/usr/bin/env bash
# System packages that some tests drive for real: a local SLURM cluster (slurm-wlm, munge,
# slurmdbd, MariaDB) and a browser MCP server (Debian's chromium + npm's @playwright/mcp).
# Idempotent; needs root for apt. Without root it says what is missing and those tests skip.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ $(id -u) -ne 0 ]]; then
    echo "install-system-deps: not root; skipping apt installs (SLURM and browser tests will skip)" >&2
    exit 0
fi
bash .ci/slurm-up.sh --install-only
bash examples/browser/install.sh
