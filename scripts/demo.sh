#!/usr/bin/env bash
# The main job on embedded defaults: a control plane (SQLite, local files) and three agents in three
# device classes (deploy/classes.demo.yaml), in the background, then the fleet as the operator sees it:
# the evidence the devices measured, the variant each class gets and why, and the devices serving it.
# `scripts/demo.sh stop` ends them all.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DEMO=${EDGEFLEET_DEMO_DIR:-$ROOT/.edgefleet/demo}
EF="$ROOT/.venv/bin/edgefleet"
PY="$ROOT/.venv/bin/python"
SERVER_DIR=$DEMO/server
CLASSES=$ROOT/deploy/classes.demo.yaml
API_PORT=${EDGEFLEET_DEMO_API_PORT:-7443}
DEVICE_PORT=${EDGEFLEET_DEMO_DEVICE_PORT:-7444}

# Three devices on one machine. Each limits itself to look like its class: threads per model
# session, CPUs it may run on, memory a model may use, and (for the sensor) simulated CPU flags;
# `edgefleet devices show ID` marks overridden facts as simulated.
DEVICES=(demo-gw-1 demo-vehicle-1 demo-sensor-1)
declare -A DIRS=([demo-gw-1]=agent-1 [demo-vehicle-1]=agent-2 [demo-sensor-1]=agent-3)
declare -A OPTS=(
  [demo-gw-1]="--labels tier=gateway --onnx-threads 2"
  [demo-vehicle-1]="--labels tier=vehicle --onnx-threads 1 --cpu-affinity 0 --memory-budget 512MiB"
  [demo-sensor-1]="--labels tier=sensor --onnx-threads 1 --cpu-affinity 1 --memory-budget 64MiB"
)
SENSOR_FACTS='{"cpu_flags": ["sse4_1", "sse4_2", "avx"]}'  # an older CPU: no AVX2, FMA or F16C
GW_DIR=$DEMO/agent-1

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

stop_all() {
  local device
  for device in "${DEVICES[@]}"; do stop_pid "$DEMO/${DIRS[$device]}.pid"; done
  stop_pid "$DEMO/server.pid"
}

stop() {
  stop_all
  echo "demo stopped (state kept in $DEMO; remove it for a fresh start)"
}

# wait_until WHAT SECONDS COMMAND...: poll COMMAND every 0.5 s until it succeeds.
wait_until() {
  local what=$1 seconds=$2; shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "demo: timed out after ${seconds}s waiting for $what; see the logs in $DEMO" >&2
      exit 1
    fi
    sleep 0.5
  done
}

devices_online() {
  "$EF" devices list --fleet demo --json | "$PY" -c '
import json, sys
want = set(sys.argv[1:])
online = {d["device_id"] for d in json.load(sys.stdin) if d.get("online")}
sys.exit(0 if want <= online else 1)' "${DEVICES[@]}"
}

# Every class that holds a demo device has a benchmark cell for every variant of MODEL:1.
evidence_complete() {
  local model=$1
  local variants classes
  variants=$(committed_variants "$model")
  classes=$("$EF" devices list --fleet demo --json | "$PY" -c '
import json, sys
print(" ".join(sorted({d["device_class"] for d in json.load(sys.stdin)})))')
  "$EF" models evidence "$model:1" --json | "$PY" -c '
import json, sys
variants, classes = sys.argv[1].split(), sys.argv[2].split()
have = {(c["variant"], c["device_class"]) for c in json.load(sys.stdin).get("cells", []) if c.get("source") == "benchmark"}
sys.exit(0 if all((v, k) in have for v in variants for k in classes) else 1)' "$variants" "$classes"
}

# The variants of MODEL among the committed builds.
committed_variants() {
  "$PY" -c '
import json, pathlib, sys
print(" ".join(sorted(m["variant"] for p in pathlib.Path(sys.argv[1]).glob("models/*/*/manifest.json")
                      if (m := json.loads(p.read_text())).get("name") == sys.argv[2])))' "$ROOT" "$1"
}

# Every demo device has committed its latest desired generation and serves three models locally.
serving() {
  "$EF" devices list --fleet demo --json | "$PY" -c '
import json, sys
devices = {d["device_id"]: d for d in json.load(sys.stdin)}
ok = all(
    (d := devices.get(name)) and d.get("status", {}).get("phase") == "COMMITTED"
    and d["status"].get("generation") == d.get("desired_generation")
    for name in sys.argv[1:]
)
sys.exit(0 if ok else 1)' "${DEVICES[@]}" || return 1
  local device
  for device in "${DEVICES[@]}"; do
    [ "$("$EF" infer status --data-dir "$DEMO/${DIRS[$device]}" | grep -c 'active ')" = 3 ] || return 1
  done
}

start() {
  mkdir -p "$DEMO"
  stop_all
  rm -f "$DEMO/ready"
  "$EF" server --data-dir "$SERVER_DIR" --listen 127.0.0.1 --advertise 127.0.0.1 \
    --api-port "$API_PORT" --device-port "$DEVICE_PORT" --ready-file "$DEMO/ready" \
    >>"$DEMO/server.log" 2>&1 &
  echo $! >"$DEMO/server.pid"
  wait_until "the control plane" 30 test -s "$DEMO/ready"
  export EDGEFLEET_CONFIG=$SERVER_DIR/cli.toml

  # A publisher key for the demo's model builds (a real deployment keeps it offline).
  if [ ! -f "$DEMO/publisher.key" ]; then
    "$EF" keys create --out "$DEMO/publisher.key" >/dev/null
  fi
  "$EF" keys register "$DEMO/publisher.key.pub" --name demo-release >/dev/null

  # Device classes: which devices are alike, and the policy that picks a variant for them.
  "$EF" classes apply "$CLASSES" >/dev/null

  # Three agents; each needs its own join string (single use) the first time, then keeps its identity.
  local device dir join extra
  for device in "${DEVICES[@]}"; do
    dir=$DEMO/${DIRS[$device]}
    join=""
    if [ ! -d "$dir/identity" ]; then
      join=$("$EF" tokens create --fleet demo --labels site=lab --ttl 15m 2>/dev/null)
    fi
    extra=()
    [ "$device" = demo-sensor-1 ] && extra=(--simulate-facts "$SENSOR_FACTS")
    # shellcheck disable=SC2086  # OPTS holds several options
    "$EF" agent --data-dir "$dir" --device-id "$device" ${join:+--join "$join"} ${OPTS[$device]} "${extra[@]}" \
      --trust "$DEMO/publisher.key.pub" >>"$DEMO/${DIRS[$device]}.log" 2>&1 &
    echo $! >"$DEMO/${DIRS[$device]}.pid"
  done
  wait_until "the three agents to come online" 60 devices_online

  # Ship the committed model builds: sign and upload. A version with two or more variants makes the
  # control plane send benchmark jobs to a sample device of each class: it downloads each variant,
  # runs the acceptance test and a latency benchmark without activating it, and reports.
  for bundle in "$ROOT"/models/*/*/; do
    "$EF" models push "$bundle" --key "$DEMO/publisher.key" >/dev/null
  done
  "$EF" models list
  echo "waiting for the devices' benchmarks (each class, every variant) ..."
  wait_until "the evidence of fsdd-digits" 120 evidence_complete fsdd-digits
  wait_until "the evidence of snips-nlu-student" 60 evidence_complete snips-nlu-student

  echo "device classes (from deploy/classes.demo.yaml; first match wins):"
  "$EF" classes list
  "$EF" devices list
  echo "evidence: each variant benchmarked on a device of each class (nothing activated yet):"
  "$EF" models evidence fsdd-digits:1
  echo "why class vehicle-1core gets the variant it gets:"
  "$EF" models explain fsdd-digits:1 --class vehicle-1core

  # Deploy: the VAD has one variant; the others name none, so each device gets its class's choice.
  echo "deploy to the fleet; fsdd-digits and snips-nlu-student without a variant:"
  "$EF" deploy silero-vad:1:fp32 --fleet demo
  "$EF" deploy fsdd-digits:1 --fleet demo
  "$EF" deploy snips-nlu-student:1 --fleet demo
  wait_until "the devices to serve their models" 60 serving

  for device in "${DEVICES[@]}"; do
    echo "$device:"
    "$EF" infer status --data-dir "$DEMO/${DIRS[$device]}"
  done
  echo "a real recording of someone saying 'two' (FSDD, CC BY-SA 4.0), through demo-gw-1's local API:"
  "$EF" infer audio "$ROOT/tests/agent/data/fsdd/2_theo_34.wav" --data-dir "$GW_DIR"
  echo "a request to demo-gw-1's text model:"
  "$EF" infer text "play some jazz music" --data-dir "$GW_DIR"
  cat <<TXT

The control plane and three agents are running in the background (logs in $DEMO).
Explore:
  export EDGEFLEET_CONFIG=$SERVER_DIR/cli.toml
  $EF devices list
  $EF devices show demo-sensor-1                  # facts, simulated ones marked
  $EF classes list
  $EF classes show vehicle-1core
  $EF classes apply deploy/classes.demo.yaml --dry-run   # edit the policies, see what would change
  $EF models list
  $EF models evidence snips-nlu-student:1         # what each class measured for each variant
  $EF models explain fsdd-digits:1 --class sensor-legacy
  $EF models explain snips-nlu-student:1 --device demo-gw-1
  $EF infer status --data-dir $DEMO/agent-2
  $EF infer audio tests/agent/data/fsdd/6_nicolas_7.wav --data-dir $GW_DIR --json
  $EF infer text "book a table for two in Paris tomorrow" --data-dir $GW_DIR --json
  $EF telemetry latency --device demo-gw-1 --by variant
  $EF telemetry events --device demo-vehicle-1
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
