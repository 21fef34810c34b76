#!/usr/bin/env bash
# Install the edgefleet agent on a gateway as a systemd service (x86_64 or aarch64).
# The same steps by hand, and what differs between architectures: deploy/agent/README.md.
#
# Exit codes: 0 installed; 1 a step or a check of the machine failed; 2 bad usage.
set -euo pipefail
umask 022

PROG=install.sh
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
UNIT_NAME=edgefleet-agent.service
SERVICE_USER=edgefleet

usage() {
    cat <<'EOF'
Usage: install.sh [OPTIONS]

Install the edgefleet agent as the systemd service edgefleet-agent: a venv in /opt/edgefleet/venv,
the system user edgefleet, /etc/edgefleet/agent.toml, /var/lib/edgefleet (the device identity),
/etc/systemd/system/edgefleet-agent.service; then enable it and, given a join string, start it
and wait for the join.

  --join JOIN          join string from `edgefleet tokens create` (default: $EDGEFLEET_JOIN); it is
                       written to /etc/edgefleet/agent.env (root, 0600), never to a command line
  --device-id ID       id to join as (default: the host name)
  --labels k=v,k2=v2   device labels, written to agent.toml
  --trust KEY.pub      publisher public key, copied to /etc/edgefleet/trust/ and listed in
                       agent.toml; repeat for more keys
  --package SPEC       what pip installs (default: $EDGEFLEET_PACKAGE or 'edgefleet[agent]'),
                       e.g. ./edgefleet-0.1.0-py3-none-any.whl[agent]
  --pip-args ARGS      more pip install arguments, split at spaces, e.g.
                       '--no-index --find-links /media/usb/wheels' on a gateway without internet
  --python PATH        Python 3.11 or newer to build the venv with (default: python3)
  --system-site-packages
                       let the venv see the distribution's Python packages
  --force-config       rewrite an existing agent.toml (default: keep it)
  --no-start           enable the service but do not start it
  --join-timeout SECS  how long to wait for the first join (default: 60; 0: do not wait)
  --root DIR           install under DIR instead of / (for tests and inspection): systemctl,
                       useradd and chown are not run but printed as "would run: ..."
  -h, --help           show this help

Run it again to update the package (add --pip-args --upgrade) or to change the configuration
(--force-config); an existing identity in /var/lib/edgefleet is never touched.
EOF
}

say() { printf '%s: %s\n' "$PROG" "$*"; }
warn() { printf '%s: warning: %s\n' "$PROG" "$*" >&2; }
die() { printf '%s: error: %s\n' "$PROG" "$1" >&2; exit "${2:-1}"; }
usage_error() { die "$1 (see --help)" 2; }

ROOT=/
PACKAGE=${EDGEFLEET_PACKAGE:-edgefleet[agent]}
PIP_ARGS=
PYTHON=python3
SYSTEM_SITE=0
JOIN=${EDGEFLEET_JOIN:-}
DEVICE_ID=
LABELS=
LABELS_GIVEN=0
TRUST=()
FORCE_CONFIG=0
NO_START=0
JOIN_TIMEOUT=60

while [[ $# -gt 0 ]]; do
    opt=$1
    shift
    value=
    inline=0
    if [[ $opt == --*=* ]]; then
        value=${opt#*=}
        opt=${opt%%=*}
        inline=1
    fi
    case $opt in
        --join | --device-id | --labels | --trust | --package | --pip-args | --python | --join-timeout | --root)
            if [[ $inline == 0 ]]; then
                [[ $# -gt 0 ]] || usage_error "$opt needs a value"
                value=$1
                shift
            fi
            if [[ $opt != --pip-args && $opt != --labels && ($value == -* || -z $value) ]]; then
                usage_error "$opt needs a value, got '${value}'"
            fi
            ;;
        *)
            [[ $inline == 0 ]] || usage_error "$opt takes no value"
            ;;
    esac
    case $opt in
        --join) JOIN=$value ;;
        --device-id) DEVICE_ID=$value ;;
        --labels) LABELS=$value LABELS_GIVEN=1 ;;
        --trust) TRUST+=("$value") ;;
        --package) PACKAGE=$value ;;
        --pip-args) PIP_ARGS=$value ;;
        --python) PYTHON=$value ;;
        --system-site-packages) SYSTEM_SITE=1 ;;
        --force-config) FORCE_CONFIG=1 ;;
        --no-start) NO_START=1 ;;
        --join-timeout) JOIN_TIMEOUT=$value ;;
        --root) ROOT=$value ;;
        -h | --help)
            usage
            exit 0
            ;;
        *) usage_error "unknown option '$opt'" ;;
    esac
done

# --- check the options (nothing is written before all of them pass) ---

[[ $ROOT == /* ]] || usage_error "--root must be an absolute path, got '$ROOT'"
[[ -d $ROOT ]] || usage_error "--root $ROOT is not a directory"
R=${ROOT%/}
while [[ $R == */ ]]; do R=${R%/}; done
SYSTEM=1 # run useradd, chown and systemctl for real
[[ -z $R ]] || SYSTEM=0

[[ $JOIN_TIMEOUT =~ ^[0-9]+$ ]] || usage_error "--join-timeout must be a whole number of seconds, got '$JOIN_TIMEOUT'"
if [[ -n $JOIN && ! $JOIN =~ ^efjoin1\.[A-Za-z0-9_-]+$ ]]; then
    usage_error "the join string must be efjoin1. followed by base64url text (copy it again from \`edgefleet tokens create\`)"
fi
if [[ -n $DEVICE_ID ]]; then
    if [[ ! $DEVICE_ID =~ ^[a-z0-9][a-z0-9._-]{0,62}$ ]]; then
        usage_error "device id '$DEVICE_ID' is invalid: use 1-63 characters a-z, 0-9, '.', '_' or '-', starting with a letter or digit"
    fi
    [[ $DEVICE_ID != edgefleet-controlplane ]] || usage_error "device id 'edgefleet-controlplane' is reserved"
    [[ -n $JOIN ]] || usage_error "--device-id is used only when joining: give --join too"
fi

toml_string() { # a TOML basic string; the value has no control characters
    local s=${1//\\/\\\\}
    printf '"%s"' "${s//\"/\\\"}"
}

LABELS_TOML=
if [[ -n ${LABELS//[[:space:]]/} ]]; then
    IFS=, read -r -a items <<<"$LABELS"
    [[ ${LABELS: -1} != , ]] || items+=("")
    [[ ${#items[@]} -le 32 ]] || usage_error "--labels: too many labels: ${#items[@]} (at most 32)"
    seen=" "
    for item in "${items[@]}"; do
        [[ $item == *=* ]] || usage_error "--labels: '$item' is not key=value (expected k=v,k2=v2)"
        key=${item%%=*} val=${item#*=}
        key=${key#"${key%%[![:space:]]*}"} key=${key%"${key##*[![:space:]]}"}
        val=${val#"${val%%[![:space:]]*}"} val=${val%"${val##*[![:space:]]}"}
        [[ $key =~ ^[a-z0-9][a-z0-9._/-]{0,62}$ ]] ||
            usage_error "--labels: key '$key' must be 1..63 of a-z 0-9 . _ / - and start with a letter or digit"
        [[ ${#val} -le 128 && $val != *[[:cntrl:]]* ]] ||
            usage_error "--labels: the value of '$key' must be at most 128 printable characters"
        [[ $seen != *" $key "* ]] || usage_error "--labels: key '$key' is given twice"
        seen+="$key "
        LABELS_TOML+="${LABELS_TOML:+, }$(toml_string "$key") = $(toml_string "$val")"
    done
fi

TRUST_NAMES=()
for key_file in "${TRUST[@]+"${TRUST[@]}"}"; do
    [[ -f $key_file && -r $key_file ]] || usage_error "--trust $key_file: not a readable file"
    ! grep -q 'PRIVATE KEY' "$key_file" || usage_error "--trust $key_file is a private key: give the .pub file"
    name=$(basename "$key_file")
    [[ $name =~ ^[A-Za-z0-9._-]+$ && $name != .* ]] || usage_error "--trust $key_file: use a file name of A-Z a-z 0-9 . _ -"
    [[ " ${TRUST_NAMES[*]+"${TRUST_NAMES[*]}"} " != *" $name "* ]] || usage_error "--trust: two keys named $name"
    TRUST_NAMES+=("$name")
done
read -r -a PIP_EXTRA <<<"$PIP_ARGS"
[[ -f $SCRIPT_DIR/$UNIT_NAME ]] || die "cannot find $UNIT_NAME next to $PROG in $SCRIPT_DIR"

# --- check the machine ---

if [[ $SYSTEM == 1 ]]; then
    [[ $(id -u) == 0 ]] || die "run as root (sudo $0 ...), or use --root DIR to install under a directory"
    command -v systemctl >/dev/null || die "systemctl not found: this installer needs systemd"
fi

machine=$(uname -m)
case $machine in
    x86_64 | amd64 | aarch64 | arm64) ;;
    armv7l | armv6l | armhf | arm*)
        warn "$machine (32-bit ARM) is not supported: onnxruntime publishes no wheels for it, so pip fails" \
            "unless --pip-args '--find-links DIR' supplies one; use a 64-bit OS (aarch64) if the board allows"
        ;;
    *) warn "$machine is not supported (x86_64 and aarch64 are): pip may find no wheels for onnxruntime" ;;
esac

command -v "$PYTHON" >/dev/null || die "$PYTHON not found: install Python 3.11 or newer, or give --python PATH"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
    die "$PYTHON is Python $("$PYTHON" -c 'import platform; print(platform.python_version())'); edgefleet needs 3.11 or newer (give --python PATH)"
if [[ $("$PYTHON" -c 'import struct; print(struct.calcsize("P") * 8)') == 32 ]]; then
    warn "$PYTHON is a 32-bit Python on a $machine kernel (32-bit user space): no onnxruntime wheels exist for it"
fi

VENV=/opt/edgefleet/venv
CONF_DIR=/etc/edgefleet
DATA_DIR=/var/lib/edgefleet
UNIT_PATH=/etc/systemd/system/$UNIT_NAME

run_system() { # a command that changes the system outside --root
    if [[ $SYSTEM == 1 ]]; then
        "$@"
    else
        say "would run: $*"
    fi
}

# --- the system user ---

if [[ $SYSTEM == 0 ]]; then
    run_system useradd --system --user-group --home-dir "$DATA_DIR" --no-create-home --shell /usr/sbin/nologin "$SERVICE_USER"
elif getent passwd "$SERVICE_USER" >/dev/null; then
    say "user $SERVICE_USER exists"
else
    nologin=$(command -v nologin || echo /usr/sbin/nologin)
    useradd --system --user-group --home-dir "$DATA_DIR" --no-create-home --shell "$nologin" "$SERVICE_USER"
    say "created the system user $SERVICE_USER"
fi

# --- directories ---

install -d -m 0755 "$R/opt/edgefleet" "$R$CONF_DIR"
install -d -m 0700 "$R$DATA_DIR"
chmod 0700 "$R$DATA_DIR"
run_system chown -R "$SERVICE_USER:$SERVICE_USER" "$R$DATA_DIR"

# --- the package ---

if [[ ! -x $R$VENV/bin/python ]]; then
    "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null ||
        die "$PYTHON cannot make a venv with pip (on Debian and Ubuntu: apt-get install python3-venv)"
    venv_args=()
    [[ $SYSTEM_SITE == 0 ]] || venv_args+=(--system-site-packages)
    "$PYTHON" -m venv "${venv_args[@]+"${venv_args[@]}"}" "$R$VENV" || die "cannot create the venv $R$VENV"
    say "created the venv $VENV"
fi
say "installing $PACKAGE into $VENV"
"$R$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
    "${PIP_EXTRA[@]+"${PIP_EXTRA[@]}"}" "$PACKAGE" || die "pip install $PACKAGE failed (see above)"
"$R$VENV/bin/edgefleet" agent --help >/dev/null ||
    die "the installed $VENV/bin/edgefleet does not run (see above); a dependency may be missing"

# --- configuration ---

if [[ ${#TRUST_NAMES[@]} -gt 0 ]]; then
    install -d -m 0755 "$R$CONF_DIR/trust"
    for i in "${!TRUST[@]}"; do
        install -m 0644 "${TRUST[$i]}" "$R$CONF_DIR/trust/${TRUST_NAMES[$i]}"
    done
    say "copied ${#TRUST_NAMES[@]} publisher key(s) to $CONF_DIR/trust/"
fi

if [[ -e $R$CONF_DIR/agent.toml && $FORCE_CONFIG == 0 ]]; then
    say "kept $CONF_DIR/agent.toml (--force-config rewrites it)"
    if [[ $LABELS_GIVEN == 1 || ${#TRUST_NAMES[@]} -gt 0 ]]; then
        warn "--labels and --trust are not written to the kept agent.toml; add --force-config to rewrite it"
    fi
else
    tmp=$R$CONF_DIR/.agent.toml.tmp
    {
        echo "# The edgefleet agent's configuration (keys: docs/DEVICE.md#agenttoml). Written by install.sh."
        echo "data_dir = \"$DATA_DIR\""
        [[ -z $LABELS_TOML ]] || echo "labels = { $LABELS_TOML }"
        if [[ ${#TRUST_NAMES[@]} -gt 0 ]]; then
            echo "trusted_publisher_key_files = ["
            for name in "${TRUST_NAMES[@]}"; do echo "    $(toml_string "$CONF_DIR/trust/$name"),"; done
            echo "]"
        fi
    } >"$tmp"
    if ! check=$("$R$VENV/bin/python" -P -c '
import sys
from pathlib import Path
from agent.config import load_config
from agent.errors import AgentConfigError
try:
    load_config(Path(sys.argv[1]))
except AgentConfigError as exc:
    sys.exit(str(exc))
' "$tmp" 2>&1); then
        rm -f "$tmp"
        die "the agent.toml this would write is invalid: $check" 2
    fi
    chmod 0644 "$tmp"
    mv -f "$tmp" "$R$CONF_DIR/agent.toml"
    say "wrote $CONF_DIR/agent.toml"
fi

JOINED=0
[[ ! -d $R$DATA_DIR/identity ]] || JOINED=1
joined_as() {
    "$R$VENV/bin/python" -P -c 'import json, sys; print(json.load(open(sys.argv[1]))["device_id"])' \
        "$R$DATA_DIR/identity/identity.json" 2>/dev/null || echo '?'
}

CAN_START=$JOINED
if [[ $JOINED == 1 ]]; then
    say "already joined as $(joined_as) (identity in $DATA_DIR/identity, kept)"
    [[ -z $JOIN ]] || warn "the join string is not used: this device has joined already"
elif [[ -n $JOIN ]]; then
    tmp=$R$CONF_DIR/.agent.env.tmp
    (
        umask 077
        {
            echo "# Read by $UNIT_NAME as root (EnvironmentFile=). The join string is used once, at the first start."
            echo "EDGEFLEET_JOIN=$JOIN"
            [[ -z $DEVICE_ID ]] || echo "EDGEFLEET_AGENT_OPTS=--device-id $DEVICE_ID"
        } >"$tmp"
    )
    chmod 0600 "$tmp"
    mv -f "$tmp" "$R$CONF_DIR/agent.env"
    say "wrote $CONF_DIR/agent.env (mode 0600)"
    CAN_START=1
elif [[ -f $R$CONF_DIR/agent.env ]] && grep -q '^EDGEFLEET_JOIN=.' "$R$CONF_DIR/agent.env"; then
    say "using the join string in $CONF_DIR/agent.env"
    CAN_START=1
fi

# --- the service ---

install -d -m 0755 "$R/etc/systemd/system"
install -m 0644 "$SCRIPT_DIR/$UNIT_NAME" "$R$UNIT_PATH"
say "wrote $UNIT_PATH"
run_system systemctl daemon-reload
run_system systemctl enable "$UNIT_NAME"

if [[ $CAN_START == 0 ]]; then
    say "not started: no join string. Give --join, or put EDGEFLEET_JOIN=... in $CONF_DIR/agent.env," \
        "then: systemctl start $UNIT_NAME"
    exit 0
fi
if [[ $NO_START == 1 ]]; then
    say "not started (--no-start): systemctl start $UNIT_NAME"
    exit 0
fi
run_system systemctl restart "$UNIT_NAME"
if [[ $SYSTEM == 0 || $JOINED == 1 ]]; then
    say "done"
    exit 0
fi

say "waiting up to $JOIN_TIMEOUT s for the agent to join"
for ((waited = 0; waited < JOIN_TIMEOUT; waited++)); do
    if [[ -d $DATA_DIR/identity ]]; then
        # The join string is spent; drop it so that it does not sit on the device.
        sed -i '/^EDGEFLEET_JOIN=/d' "$CONF_DIR/agent.env"
        say "joined as $(joined_as); the agent runs as $UNIT_NAME"
        exit 0
    fi
    if systemctl is-failed --quiet "$UNIT_NAME"; then
        journalctl -u "$UNIT_NAME" -n 5 --no-pager -o cat >&2 || true
        die "the agent stopped without joining (above; more: journalctl -u $UNIT_NAME)"
    fi
    sleep 1
done
warn "not joined after $JOIN_TIMEOUT s; the agent keeps retrying while the control plane is unreachable:" \
    "journalctl -u $UNIT_NAME -f"
