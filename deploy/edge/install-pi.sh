#!/usr/bin/env bash
# Install the edge agent on Raspberry Pi OS (64-bit, bookworm) or Debian arm64.
#
#   sudo deploy/edge/install-pi.sh [--dry-run] [--can0] [--no-apt] SOURCE
#   deploy/edge/install-pi.sh --print-config
#
# SOURCE is a wheel (vehicle_telematics-*.whl) or a source checkout (a directory
# with pyproject.toml); it is installed with the "edge" extra into
# /opt/edge-agent/venv. Safe to run again: every step checks first, and an
# upgrade stops the running service and starts it again afterwards.
#
# The service is installed but neither enabled nor started: the device has to
# be enrolled first (see the next steps printed at the end, and README.md).
#
#   --dry-run       print the commands instead of running them (no root needed)
#   --can0          also install can0.network for systemd-networkd (500 kbit/s)
#                   and load the CAN modules at boot
#   --no-apt        do not install Debian packages (offline image builds)
#   --print-config  print the example configuration this script installs
set -euo pipefail

readonly SERVICE=edge-agent
readonly SERVICE_USER=edge-agent
readonly PREFIX=/opt/edge-agent
readonly VENV=$PREFIX/venv
readonly CONF_DIR=/etc/edge-agent
readonly CONF_FILE=$CONF_DIR/edge-agent.toml
readonly STATE_DIR=/var/lib/edge-agent
readonly UNIT_FILE=/etc/systemd/system/$SERVICE.service
readonly NETWORK_FILE=/etc/systemd/network/80-can0.network
readonly MODULES_FILE=/etc/modules-load.d/edge-agent-can.conf
readonly APT_PACKAGES=(python3 python3-venv can-utils)

HERE=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
readonly HERE
readonly EXAMPLE_CONFIG=$HERE/../config/edge-agent.example.toml

DRY_RUN=0
WITH_CAN0=0
WITH_APT=1
PRINT_CONFIG=0
SOURCE=""

usage() {
    sed -n '2,20s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

die() {
    printf 'install-pi.sh: %s\n' "$*" >&2
    exit 1
}

usage_error() {
    usage >&2
    printf 'install-pi.sh: %s\n' "$*" >&2
    exit 2
}

note() {
    printf '# %s\n' "$*"
}

# One argument as the shell would need it: bare when that is unambiguous.
quote() {
    if [[ $1 =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
        printf '%s' "$1"
    else
        printf "'%s'" "${1//\'/\'\\\'\'}"
    fi
}

# Run a command, or with --dry-run print it (prefixed with "+ ").
run() {
    if ((DRY_RUN)); then
        local out="+" arg
        for arg in "$@"; do
            out+=" $(quote "$arg")"
        done
        printf '%s\n' "$out"
    else
        "$@"
    fi
}

# write_file MODE OWNER:GROUP PATH: install stdin as PATH, atomically.
write_file() {
    local mode=$1 owner=$2 path=$3 tmp
    if ((DRY_RUN)); then
        printf '+ write %s (mode %s, owner %s):\n' "$path" "$mode" "$owner"
        sed 's/^/|   /'
        return
    fi
    tmp=$(mktemp "$path.XXXXXX")
    cat >"$tmp"
    chown "$owner" "$tmp"
    chmod "$mode" "$tmp"
    mv -f "$tmp" "$path"
}

# The example configuration with the paths of this layout: section-aware
# substitutions of "key = value" lines. Fails if the example no longer has
# one of the keys it adjusts.
render_config() {
    [[ -r $EXAMPLE_CONFIG ]] || die "example configuration $EXAMPLE_CONFIG not found"
    local rendered
    rendered=$(awk -v conf="$CONF_DIR" -v state="$STATE_DIR" '
        BEGIN {
            set["mqtt.host"] = "\"broker.invalid\"  # set by the enrolment bundle"
            set["mqtt.port"] = "8883"
            set["mqtt.tls"] = "true"
            set["mqtt.ca_file"] = "\"" conf "/ca.crt\""
            set["mqtt.password_file"] = "\"" conf "/mqtt.password\""
            set["edge.key_path"] = "\"" conf "/device.key\""
            set["edge.spool_path"] = "\"" state "/spool.sqlite\""
        }
        /^\[[A-Za-z0-9_.-]+\]/ { section = substr($0, 2, index($0, "]") - 2) }
        /^[A-Za-z0-9_]+ = / {
            key = substr($0, 1, index($0, " ") - 1)
            if ((section "." key) in set) {
                print key " = " set[section "." key]
                done[section "." key] = 1
                next
            }
        }
        { print }
        END {
            for (k in set) if (!(k in done)) { print "no " k " to adjust" > "/dev/stderr"; failed = 1 }
            exit failed
        }' "$EXAMPLE_CONFIG") || die "$EXAMPLE_CONFIG does not have the keys this script adjusts"
    printf '# Installed by deploy/edge/install-pi.sh; the enrolment bundle replaces this file.\n'
    printf '%s\n' "$rendered"
}

have_systemd() {
    [[ -d /run/systemd/system ]]
}

parse_args() {
    while (($#)); do
        case $1 in
        --dry-run) DRY_RUN=1 ;;
        --can0) WITH_CAN0=1 ;;
        --no-apt) WITH_APT=0 ;;
        --print-config) PRINT_CONFIG=1 ;;
        -h | --help)
            usage
            exit 0
            ;;
        -*) usage_error "unknown option $1" ;;
        *)
            [[ -z $SOURCE ]] || usage_error "one SOURCE only (got '$SOURCE' and '$1')"
            SOURCE=$1
            ;;
        esac
        shift
    done
}

# The pip requirement for SOURCE, with the edge extra.
requirement() {
    if [[ -f $SOURCE ]]; then
        [[ $(basename -- "$SOURCE") == vehicle_telematics-*.whl ]] ||
            die "$SOURCE is not a vehicle_telematics wheel"
    elif [[ -d $SOURCE ]]; then
        [[ -f $SOURCE/pyproject.toml ]] || die "$SOURCE has no pyproject.toml"
    else
        die "$SOURCE: no such wheel or directory"
    fi
    printf '%s[edge]' "$(cd -- "$(dirname -- "$SOURCE")" && pwd)/$(basename -- "$SOURCE")"
}

install_packages() {
    if ((!WITH_APT)); then
        note "--no-apt: not installing ${APT_PACKAGES[*]}"
        return
    fi
    local missing=() pkg
    for pkg in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
    done
    if ((${#missing[@]} == 0)); then
        note "packages present: ${APT_PACKAGES[*]}"
        return
    fi
    run apt-get update
    run env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
}

check_python() {
    ((DRY_RUN)) && return
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
        die "python3 is $(python3 -V 2>&1); the agent needs 3.11 or newer"
}

create_user() {
    if getent passwd "$SERVICE_USER" >/dev/null; then
        note "user $SERVICE_USER exists"
        return
    fi
    # A system user and group, no home directory, no login shell.
    run useradd --system --user-group --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin --comment "vehicle telematics edge agent" "$SERVICE_USER"
}

stop_running_service() {
    if ((DRY_RUN)) || ! have_systemd; then
        note "a running $SERVICE is stopped before the upgrade and started again after it"
        return 1
    fi
    if systemctl is-active --quiet "$SERVICE"; then
        run systemctl stop "$SERVICE"
        return 0
    fi
    return 1
}

install_venv() {
    local req
    req=$(requirement)
    run install -d -m 0755 -o root -g root "$PREFIX"
    if [[ -x $VENV/bin/python ]]; then
        note "virtual environment $VENV exists"
    else
        run python3 -m venv "$VENV"
    fi
    run "$VENV/bin/python" -m pip install --no-cache-dir --prefer-binary --upgrade "$req"
    # Smoke test: the entry point starts and its imports resolve.
    if ((DRY_RUN)); then
        run "$VENV/bin/edge-agent" --help
    else
        "$VENV/bin/edge-agent" --help >/dev/null
    fi
    run install -m 0644 -o root -g root "$HERE/README.md" "$PREFIX/README.md"
}

install_config() {
    run install -d -m 0750 -o root -g "$SERVICE_USER" "$CONF_DIR"
    render_config | write_file 0640 "root:$SERVICE_USER" "$CONF_DIR/edge-agent.example.toml"
    if [[ -e $CONF_FILE ]]; then
        note "$CONF_FILE exists: kept"
    else
        render_config | write_file 0640 "root:$SERVICE_USER" "$CONF_FILE"
    fi
    # The enrolment bundle, when it is already there: the secrets are the
    # agent's own (0600, the agent refuses a key others can read), the rest
    # is root's and readable by the agent.
    local file
    for file in device.key mqtt.password; do
        if [[ -e $CONF_DIR/$file ]]; then
            run chown "$SERVICE_USER:$SERVICE_USER" "$CONF_DIR/$file"
            run chmod 0600 "$CONF_DIR/$file"
        fi
    done
    for file in edge-agent.toml ca.crt; do
        if [[ -e $CONF_DIR/$file ]]; then
            run chown "root:$SERVICE_USER" "$CONF_DIR/$file"
            run chmod 0640 "$CONF_DIR/$file"
        fi
    done
}

install_unit() {
    run install -m 0644 -o root -g root "$HERE/$SERVICE.service" "$UNIT_FILE"
}

install_can0() {
    ((WITH_CAN0)) || return 0
    run install -d -m 0755 /etc/systemd/network
    run install -m 0644 -o root -g root "$HERE/can0.network" "$NETWORK_FILE"
    printf 'can\ncan_raw\n' | write_file 0644 root:root "$MODULES_FILE"
    if have_systemd || ((DRY_RUN)); then
        run systemctl enable systemd-networkd.service
    fi
}

reload_systemd() {
    if have_systemd || ((DRY_RUN)); then
        run systemctl daemon-reload
        if ((WITH_CAN0)); then
            run systemctl restart systemd-networkd.service
        fi
    else
        note "systemd is not running here (image build?): no daemon-reload"
    fi
}

next_steps() {
    cat <<EOF

Installed. The service is NOT enabled or started: enrol the device first.

 1. On the enrolment machine, run deploy/edge/enrol-device.sh for this vehicle.
    It produces device.key, mqtt.password, ca.crt and edge-agent.toml.
 2. Copy the bundle into $CONF_DIR and run this script again to fix owners and modes:
      sudo install -m 0640 -o root -g $SERVICE_USER edge-agent.toml ca.crt $CONF_DIR/
      sudo install -m 0600 -o $SERVICE_USER -g $SERVICE_USER device.key mqtt.password $CONF_DIR/
 3. Start it, now and at every boot:
      sudo systemctl enable --now $SERVICE
 4. Watch it:
      journalctl -u $SERVICE -f
EOF
    if ((WITH_CAN0)); then
        printf '\ncan0: check with  ip -details link show can0  and  candump can0\n'
    fi
}

main() {
    parse_args "$@"
    if ((PRINT_CONFIG)); then
        render_config
        return
    fi
    [[ -n $SOURCE ]] || usage_error "SOURCE (a wheel or a source directory) is required"
    requirement >/dev/null
    if ((!DRY_RUN)); then
        ((EUID == 0)) || die "run as root (sudo), or with --dry-run"
        [[ $(uname -m) == aarch64 ]] || note "warning: this is $(uname -m), not aarch64 (arm64)"
    else
        note "dry run: nothing is changed"
    fi
    local was_active=0
    if stop_running_service; then
        was_active=1
    fi
    install_packages
    check_python
    create_user
    install_venv
    install_config
    install_unit
    install_can0
    reload_systemd
    if ((was_active)); then
        run systemctl start "$SERVICE"
        note "$SERVICE was running: started again"
    fi
    next_steps
}

main "$@"
