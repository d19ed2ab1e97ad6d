#!/usr/bin/env bash
# Enrol one vehicle (key, MQTT password, registry entry, edge-agent.toml): a thin wrapper around
# `python -m ingest.ops.enrol`; every argument is passed on. Run it on the ingest host.
#   deploy/edge/enrol-device.sh --config /etc/telematics/telematics.toml --out bundles/van-17 \
#     --passwd-file /etc/mosquitto/passwd --broker-host mqtt.example.net --ca-file /etc/mosquitto/certs/ca.crt
# Then reload the broker (systemctl reload mosquitto) and copy the bundle to the vehicle.
# The Python used: $PYTHON, else the repository's .venv, else python3.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
python="${PYTHON:-}"
if [ -z "$python" ]; then
  if [ -x "$root/.venv/bin/python" ]; then python="$root/.venv/bin/python"; else python=python3; fi
fi
# Relative paths stay relative to the caller's directory: import from the repository, do not cd there.
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
exec "$python" -m ingest.ops.enrol "$@"
