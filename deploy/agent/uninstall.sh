#!/usr/bin/env bash
# Remove the edgefleet agent that deploy/agent/install.sh installed. See deploy/agent/README.md.
#
# Exit codes: 0 removed; 1 a step or a check of the machine failed; 2 bad usage.
set -euo pipefail

PROG=uninstall.sh
UNIT_NAME=edgefleet-agent.service
SERVICE_USER=edgefleet

usage() {
    cat <<'EOF'
Usage: uninstall.sh [--purge] [--root DIR]

Stop and disable edgefleet-agent, remove its unit and /opt/edgefleet. Keeps /etc/edgefleet,
/var/lib/edgefleet (the device identity: a device that keeps it can be installed again without a
new join) and the user edgefleet.

  --purge      also remove /etc/edgefleet, /var/lib/edgefleet (the identity is lost for good: the
               device must join again, under a new device id if the old one is revoked) and the user
  --root DIR   remove from under DIR instead of / (for tests); systemctl and userdel are printed
               as "would run: ..." instead of run
  -h, --help   show this help
EOF
}

say() { printf '%s: %s\n' "$PROG" "$*"; }
die() { printf '%s: error: %s\n' "$PROG" "$1" >&2; exit "${2:-1}"; }
usage_error() { die "$1 (see --help)" 2; }

ROOT=/
PURGE=0
while [[ $# -gt 0 ]]; do
    opt=$1
    shift
    case $opt in
        --root=*) ROOT=${opt#*=} ;;
        --root)
            [[ $# -gt 0 && -n $1 && $1 != -* ]] || usage_error "--root needs a value"
            ROOT=$1
            shift
            ;;
        --purge) PURGE=1 ;;
        -h | --help)
            usage
            exit 0
            ;;
        *) usage_error "unknown option '$opt'" ;;
    esac
done

[[ $ROOT == /* ]] || usage_error "--root must be an absolute path, got '$ROOT'"
[[ -d $ROOT ]] || usage_error "--root $ROOT is not a directory"
R=${ROOT%/}
while [[ $R == */ ]]; do R=${R%/}; done
SYSTEM=1
[[ -z $R ]] || SYSTEM=0
if [[ $SYSTEM == 1 ]]; then
    [[ $(id -u) == 0 ]] || die "run as root (sudo $0 ...), or use --root DIR"
fi

run_system() {
    if [[ $SYSTEM == 1 ]]; then
        "$@"
    else
        say "would run: $*"
    fi
}

if [[ $SYSTEM == 0 ]]; then
    run_system systemctl disable --now "$UNIT_NAME"
elif systemctl cat "$UNIT_NAME" >/dev/null 2>&1; then
    systemctl disable --now "$UNIT_NAME"
    say "stopped and disabled $UNIT_NAME"
fi
if [[ -e $R/etc/systemd/system/$UNIT_NAME ]]; then
    rm -f "$R/etc/systemd/system/$UNIT_NAME"
    say "removed /etc/systemd/system/$UNIT_NAME"
fi
if [[ $PURGE == 1 && -d $R/etc/systemd/system/$UNIT_NAME.d ]]; then
    rm -rf "$R/etc/systemd/system/$UNIT_NAME.d"
    say "removed /etc/systemd/system/$UNIT_NAME.d"
fi
[[ $SYSTEM == 0 ]] || ! command -v systemctl >/dev/null || systemctl daemon-reload
[[ $SYSTEM == 1 ]] || run_system systemctl daemon-reload
if [[ -e $R/opt/edgefleet ]]; then
    rm -rf "$R/opt/edgefleet"
    say "removed /opt/edgefleet"
fi

if [[ $PURGE == 0 ]]; then
    say "kept /etc/edgefleet, /var/lib/edgefleet (the device identity) and the user $SERVICE_USER; --purge removes them"
    exit 0
fi
for dir in /etc/edgefleet /var/lib/edgefleet; do
    if [[ -e $R$dir ]]; then
        rm -rf "$R$dir"
        say "removed $dir"
    fi
done
if [[ $SYSTEM == 0 ]]; then
    run_system userdel "$SERVICE_USER"
elif getent passwd "$SERVICE_USER" >/dev/null; then
    userdel "$SERVICE_USER"
    say "removed the user $SERVICE_USER"
fi
