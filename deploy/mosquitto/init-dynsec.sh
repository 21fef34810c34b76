#!/bin/sh
# Create Mosquitto's dynamic-security file for edgefleet (see README.md): one account for the control plane,
# holding the dynsec admin role (it creates and deletes device accounts) and readwrite on edgefleet/v1/#.
# Devices get no access by default; enrollment gives each its own role over its own subtree.
#
# usage: init-dynsec.sh FILE [USERNAME]   (password from $EDGEFLEET_MQTT_PASSWORD, else asked for)
# Run it once, with the broker stopped; then start mosquitto with deploy/mosquitto/mosquitto.conf.
set -eu

file=${1:?usage: init-dynsec.sh FILE [USERNAME]}
user=${2:-edgefleet-controlplane}
if [ -e "$file" ]; then
    echo "error: $file exists; edit a running broker's accounts with mosquitto_ctrl instead" >&2
    exit 1
fi
if [ -n "${EDGEFLEET_MQTT_PASSWORD:-}" ]; then
    mosquitto_ctrl dynsec init "$file" "$user" "$EDGEFLEET_MQTT_PASSWORD" >/dev/null
else
    mosquitto_ctrl dynsec init "$file" "$user"  # asks for the password
fi

# mosquitto_ctrl made "$user" with role "admin" (the dynamic-security topics; read-only elsewhere). Add the
# role that lets the control plane publish to devices, and deny what no role allows, receiving included.
python3 - "$file" "$user" <<'PY'
import json
import sys

path, user = sys.argv[1], sys.argv[2]
with open(path) as f:
    config = json.load(f)
root = "edgefleet/v1/#"
config["roles"].append({
    "rolename": "edgefleet-controlplane",
    "textname": "the edgefleet control plane: every device's subtree",
    "acls": [
        {"acltype": kind, "topic": root, "priority": 0, "allow": True}
        for kind in ("publishClientSend", "publishClientReceive", "subscribePattern", "unsubscribePattern")
    ],
})
for client in config["clients"]:
    if client["username"] == user:
        client["roles"].append({"rolename": "edgefleet-controlplane"})
config["defaultACLAccess"] = {
    "publishClientSend": False,
    "publishClientReceive": False,
    "subscribe": False,
    "unsubscribe": True,
}
with open(path, "w") as f:
    json.dump(config, f, indent=2)
PY
chmod 600 "$file"  # password hashes; the plugin reads it and writes every change back
if [ "$(id -u)" = 0 ] && id mosquitto >/dev/null 2>&1; then
    chown mosquitto: "$file"  # the broker drops to this user
fi
echo "created $file: control plane account $user (use it in --mqtt mqtts://$user:PASSWORD@broker:8883)"
