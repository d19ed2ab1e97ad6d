#!/usr/bin/env bash
# Install the local EVM node (anvil) for the EVM ledger demo, the tests and CI, idempotently:
# `npm install` in deploy/evm when the binary is missing (the npm package ships it prebuilt, one optional
# dependency per platform). Prints the binary's path on stdout. Needs node >= 20 and npm.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

case "$(uname -s)-$(uname -m)" in
  Linux-x86_64 | Linux-amd64) pkg=anvil-linux-amd64 ;;
  Linux-aarch64 | Linux-arm64) pkg=anvil-linux-arm64 ;;
  Darwin-x86_64) pkg=anvil-darwin-amd64 ;;
  Darwin-arm64) pkg=anvil-darwin-arm64 ;;
  *) echo "evm/install: no prebuilt anvil for $(uname -s)-$(uname -m)" >&2; exit 1 ;;
esac
bin="$here/node_modules/@foundry-rs/$pkg/bin/anvil"

if [ ! -x "$bin" ]; then
  if ! command -v npm >/dev/null 2>&1; then
    echo "evm/install: npm is missing (Debian: apt-get install -y nodejs npm; node >= 20 is needed)" >&2
    exit 1
  fi
  echo "evm/install: installing anvil (npm install in deploy/evm)" >&2
  # Not `npm ci`: the lock holds only the platform packages the registry served when it was made, and
  # `npm ci` refuses a lock that lacks any of the optional ones. --ignore-scripts: the package's
  # postinstall only re-downloads the binary when the platform package is missing, which the check
  # below reports instead.
  npm install --no-audit --no-fund --ignore-scripts --loglevel=error >&2
fi
if [ ! -x "$bin" ]; then
  echo "evm/install: $bin is still missing after npm install (no package $pkg for this platform?)" >&2
  exit 1
fi
if ! "$bin" --version >/dev/null 2>&1; then
  echo "evm/install: $bin does not run" >&2
  exit 1
fi
echo "$bin"
