#!/usr/bin/env bash
# What the browser example needs, idempotent: Debian's chromium and @playwright/mcp in
# examples/browser/node_modules (Playwright's own browser download is skipped: we use chromium).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PLAYWRIGHT_MCP_VERSION="${PLAYWRIGHT_MCP_VERSION:-0.0.83}"

if ! command -v chromium >/dev/null 2>&1; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium
fi

if ! command -v npm >/dev/null 2>&1; then
  echo "install.sh: npm is missing (apt-get install nodejs npm)" >&2
  exit 1
fi

installed="$(node -p "require('$here/node_modules/@playwright/mcp/package.json').version" 2>/dev/null || true)"
if [ "$installed" != "$PLAYWRIGHT_MCP_VERSION" ]; then
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --prefix "$here" --no-save --no-audit --no-fund \
    --loglevel=error "@playwright/mcp@$PLAYWRIGHT_MCP_VERSION"
fi
echo "browser example ready: chromium $(chromium --version 2>/dev/null | awk '{print $2}'), @playwright/mcp $PLAYWRIGHT_MCP_VERSION"
