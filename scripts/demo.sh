#!/usr/bin/env bash
# The main job on embedded defaults: a control plane (SQLite, local files) and one agent, in the
# background, then the fleet as the operator sees it. `scripts/demo.sh stop` ends both.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DEMO=${EDGEFLEET_DEMO_DIR:-$ROOT/.edgefleet/demo}
EF="$ROOT/.venv/bin/edgefleet"
SERVER_DIR=$DEMO/server
AGENT_DIR=$DEMO/agent-1
API_PORT=${EDGEFLEET_DEMO_API_PORT:-7443}
DEVICE_PORT=${EDGEFLEET_DEMO_DEVICE_PORT:-7444}

stop_pid() {
  local file=$1
  [ -f "$file" ] || return 0
  local pid
  pid=$(cat "$file")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  fi
  rm -f "$file"
}

stop() {
  stop_pid "$DEMO/agent-1.pid"
  stop_pid "$DEMO/server.pid"
  echo "demo stopped (state kept in $DEMO; remove it for a fresh start)"
}

wait_until() {
  local what=$1; shift
  for _ in $(seq 1 150); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  echo "demo: timed out waiting for $what; see the logs in $DEMO" >&2
  exit 1
}

start() {
  mkdir -p "$DEMO"
  stop_pid "$DEMO/agent-1.pid"
  stop_pid "$DEMO/server.pid"
  rm -f "$DEMO/ready"
  "$EF" server --data-dir "$SERVER_DIR" --listen 127.0.0.1 --advertise 127.0.0.1 \
    --api-port "$API_PORT" --device-port "$DEVICE_PORT" --ready-file "$DEMO/ready" \
    >>"$DEMO/server.log" 2>&1 &
  echo $! >"$DEMO/server.pid"
  wait_until "the control plane" test -s "$DEMO/ready"
  export EDGEFLEET_CONFIG=$SERVER_DIR/cli.toml

  # A publisher key for the demo's model builds (a real deployment keeps it offline).
  if [ ! -f "$DEMO/publisher.key" ]; then
    "$EF" keys create --out "$DEMO/publisher.key" >/dev/null
  fi
  "$EF" keys register "$DEMO/publisher.key.pub" --name demo-release >/dev/null

  local join=""
  if [ ! -d "$AGENT_DIR/identity" ]; then
    join=$("$EF" tokens create --fleet demo --labels site=lab --ttl 15m 2>/dev/null)
  fi
  "$EF" agent --data-dir "$AGENT_DIR" --device-id demo-gw-1 ${join:+--join "$join"} \
    --trust "$DEMO/publisher.key.pub" >>"$DEMO/agent-1.log" 2>&1 &
  echo $! >"$DEMO/agent-1.pid"
  wait_until "the agent to come online" sh -c "'$EF' devices list --json | grep -q '\"online\": true'"

  # Ship the committed model builds: sign, upload, deploy, and wait until the device serves them.
  for bundle in "$ROOT"/models/*/*/; do
    "$EF" models push "$bundle" --key "$DEMO/publisher.key"
  done
  "$EF" deploy silero-vad:1:fp32 --device demo-gw-1
  "$EF" deploy fsdd-digits:1:fp32 --device demo-gw-1
  "$EF" deploy snips-nlu-student:1:fp32 --device demo-gw-1
  wait_until "the device to serve its models" sh -c \
    "'$EF' infer status --data-dir '$AGENT_DIR' | grep -c 'active ' | grep -qx 3"

  "$EF" devices list
  "$EF" infer status --data-dir "$AGENT_DIR"
  echo "a real recording of someone saying 'two' (FSDD, CC BY-SA 4.0), through the device's local API:"
  "$EF" infer audio "$ROOT/tests/agent/data/fsdd/2_theo_34.wav" --data-dir "$AGENT_DIR"
  echo "a request to the device's text model:"
  "$EF" infer text "play some jazz music" --data-dir "$AGENT_DIR"
  cat <<TXT

The control plane and one agent are running in the background (logs in $DEMO).
Explore:
  export EDGEFLEET_CONFIG=$SERVER_DIR/cli.toml
  $EF devices list
  $EF devices show demo-gw-1
  $EF models list
  $EF infer status --data-dir $AGENT_DIR
  $EF infer audio tests/agent/data/fsdd/6_nicolas_7.wav --data-dir $AGENT_DIR --json
  $EF infer text "book a table for two in Paris tomorrow" --data-dir $AGENT_DIR --json
  $EF telemetry latency --device demo-gw-1 --by variant
  $EF telemetry events --device demo-gw-1
  $EF tokens create --fleet demo          # join another device
  $EF devices revoke demo-gw-1
Stop: make demo-stop
TXT
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
