#!/usr/bin/env bash
# The main job on embedded defaults: a control plane (SQLite, local files) and six agents, two in each of
# three device classes (deploy/classes.demo.yaml), in the background. The devices benchmark every variant
# of the committed models, each class gets the variant its policy picks from that evidence, apps on every
# device send texts and recordings through the local inference APIs, and a second version of the NLU
# model rolls out in waves behind health gates. It ends with a fleet summary and leaves everything running.
#
#   scripts/demo.sh start     (DEMO_FAST=1: fewer benchmark runs, shorter bake, less traffic; for CI)
#   scripts/demo.sh stop      ends the control plane, the agents and the traffic
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DEMO=${EDGEFLEET_DEMO_DIR:-$ROOT/.edgefleet/demo}
EF="$ROOT/.venv/bin/edgefleet"
PY="$ROOT/.venv/bin/python"
FLEET_PY="$ROOT/scripts/demo/fleet.py"
SERVER_DIR=$DEMO/server
CLASSES=$ROOT/deploy/classes.demo.yaml
API_PORT=${EDGEFLEET_DEMO_API_PORT:-7443}
DEVICE_PORT=${EDGEFLEET_DEMO_DEVICE_PORT:-7444}
ARTIFACT_PORT=${EDGEFLEET_DEMO_ARTIFACT_PORT:-7445}
FLEET=demo
NLU=snips-nlu-student
NEW_VERSION=2   # the rollout's version: the committed NLU builds (version 1) re-versioned

# The bake is long enough for the wave's devices (canary) and the others (control) to pass
# MIN_REQUESTS each by its end at RATE texts a second per device (3 devices a side in wave 1): the
# gate then compares the two. With a shorter bake the canary reaches the minimum first, at a
# re-measure, while the control, on the same traffic, may lack a few requests: the gate then
# compares with absolute thresholds only.
if [ "${DEMO_FAST:-0}" = 1 ]; then
  BENCHMARK_RUNS=10 BAKE=15s MIN_REQUESTS=60 RATE=2
else
  BENCHMARK_RUNS=50 BAKE=20s MIN_REQUESTS=80 RATE=2
fi

# Six devices on one machine, two per class. Each limits itself to look like its class: threads per
# model session, CPUs it may run on, memory a model may use, and (for the sensors) simulated CPU flags;
# `edgefleet devices show ID` marks overridden facts as simulated.
DEVICES=(demo-gw-1 demo-vehicle-1 demo-sensor-1 demo-gw-2 demo-vehicle-2 demo-sensor-2)
declare -A DIRS=(
  [demo-gw-1]=agent-1 [demo-vehicle-1]=agent-2 [demo-sensor-1]=agent-3
  [demo-gw-2]=agent-4 [demo-vehicle-2]=agent-5 [demo-sensor-2]=agent-6
)
GW="--labels tier=gateway --onnx-threads 2"
VEHICLE="--labels tier=vehicle --onnx-threads 1 --cpu-affinity 0 --memory-budget 512MiB"
SENSOR="--labels tier=sensor --onnx-threads 1 --cpu-affinity 1 --memory-budget 64MiB"
declare -A OPTS=(
  [demo-gw-1]=$GW [demo-vehicle-1]=$VEHICLE [demo-sensor-1]=$SENSOR
  [demo-gw-2]=$GW [demo-vehicle-2]=$VEHICLE [demo-sensor-2]=$SENSOR
)
SENSOR_FACTS='{"cpu_flags": ["sse4_1", "sse4_2", "avx"]}'  # an older CPU: no AVX2, FMA or F16C
GW_DIR=$DEMO/agent-1
SENSOR_DIR=$DEMO/agent-3
AGENT_DIRS=()
for device in "${DEVICES[@]}"; do AGENT_DIRS+=("$DEMO/${DIRS[$device]}"); done

# stop_pids PIDFILE...: SIGTERM the processes the files name, all at once; SIGKILL what is left after 10 s.
stop_pids() {
  local file pid alive pids=()
  for file in "$@"; do
    [ -f "$file" ] || continue
    pid=$(cat "$file")
    kill -TERM "$pid" 2>/dev/null && pids+=("$pid")
  done
  for _ in $(seq 1 100); do
    alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"; done
  rm -f "$@"
}

# The traffic first (its devices are going away), then the agents (they say goodbye to the control plane).
stop_all() {
  local device agents=()
  for device in "${DEVICES[@]}"; do agents+=("$DEMO/${DIRS[$device]}.pid"); done
  stop_pids "$DEMO/traffic.pid"
  stop_pids "${agents[@]}"
  stop_pids "$DEMO/server.pid"
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

fleet() { "$PY" "$FLEET_PY" "$@"; }

# Echo an edgefleet command line (as the operator would type it), then run it.
run() {
  echo "\$ edgefleet $*"
  "$EF" "$@"
}

start() {
  mkdir -p "$DEMO"
  stop_all
  rm -f "$DEMO/ready" "$DEMO/traffic.json"
  # Rollout controllers check every second, and a gate short of traffic measures again after 2 s
  # (defaults: 2 s and 60 s); benchmark jobs time BENCHMARK_RUNS inferences per variant.
  "$EF" server --data-dir "$SERVER_DIR" --listen 127.0.0.1 --advertise 127.0.0.1 \
    --api-port "$API_PORT" --device-port "$DEVICE_PORT" --artifact-port "$ARTIFACT_PORT" --ready-file "$DEMO/ready" \
    --benchmark-runs "$BENCHMARK_RUNS" --rollout-tick-seconds 1 --rollout-remeasure-seconds 2 \
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

  # Agents send telemetry every second, the minute in progress included, so a rollout's gate sees a
  # wave's traffic within a second or two (docs/DEVICE.md, agent.toml).
  cat >"$DEMO/agent.toml" <<'TOML'
telemetry_flush_seconds = 1
telemetry_partial_minutes = true
TOML

  # Six agents; each needs its own join string (single use) the first time, then keeps its identity.
  local device dir join extra
  for device in "${DEVICES[@]}"; do
    dir=$DEMO/${DIRS[$device]}
    join=""
    if [ ! -d "$dir/identity" ]; then
      join=$("$EF" tokens create --fleet "$FLEET" --labels site=lab --ttl 15m 2>/dev/null)
    fi
    extra=()
    case "$device" in demo-sensor-*) extra=(--simulate-facts "$SENSOR_FACTS") ;; esac
    # shellcheck disable=SC2086  # OPTS holds several options
    "$EF" agent --config "$DEMO/agent.toml" --data-dir "$dir" --device-id "$device" ${join:+--join "$join"} \
      ${OPTS[$device]} "${extra[@]}" --trust "$DEMO/publisher.key.pub" >>"$DEMO/${DIRS[$device]}.log" 2>&1 &
    echo $! >"$DEMO/${DIRS[$device]}.pid"
  done
  wait_until "the six agents to come online" 90 fleet online "$FLEET" "${#DEVICES[@]}"

  # Ship the committed model builds (version 1): sign and upload. And version 2 of the NLU model, for
  # the rollout: the same builds re-versioned (a new release of a model is a new version; its files
  # may well be the same). A version with two or more variants makes the control plane send
  # benchmark jobs to a sample device of each class: it downloads each variant, runs the acceptance
  # test and a latency benchmark without activating it, and reports.
  for bundle in "$ROOT"/models/*/*/; do
    "$EF" models push "$bundle" --key "$DEMO/publisher.key" >/dev/null
  done
  for bundle in "$ROOT"/models/text-nlu/snips-student-*/; do
    fleet reversion "$bundle" "$DEMO/bundles/$(basename "$bundle")-v$NEW_VERSION" "$NEW_VERSION"
    "$EF" models push "$DEMO/bundles/$(basename "$bundle")-v$NEW_VERSION" --key "$DEMO/publisher.key" >/dev/null
  done
  run models list
  echo "waiting for the devices' benchmarks (a sample device of each class, every variant) ..."
  wait_until "the evidence of fsdd-digits:1" 180 fleet evidence fsdd-digits:1 "$FLEET"
  wait_until "the evidence of $NLU:1" 180 fleet evidence "$NLU:1" "$FLEET"
  wait_until "the evidence of $NLU:$NEW_VERSION" 180 fleet evidence "$NLU:$NEW_VERSION" "$FLEET"

  echo "device classes (from deploy/classes.demo.yaml; first match wins):"
  run classes list
  run devices list --fleet "$FLEET"
  echo "evidence: each variant benchmarked on a device of each class (nothing activated yet):"
  run models evidence fsdd-digits:1
  echo "why class vehicle-1core gets the variant it gets:"
  run models explain fsdd-digits:1 --class vehicle-1core

  # Deploy version 1: the VAD has one variant; the others name none, so each device gets its class's
  # choice. A fleet that already runs the NLU model's version 2 (a second `make demo`) keeps it.
  local plan rollout
  plan=$(fleet rollout-plan "$NLU:$NEW_VERSION" "$FLEET")
  echo "deploy version 1 to the fleet; fsdd-digits and $NLU without a variant:"
  run deploy silero-vad:1:fp32 --fleet "$FLEET"
  run deploy fsdd-digits:1 --fleet "$FLEET"
  if [ "$plan" = start ]; then
    run deploy "$NLU:1" --fleet "$FLEET"
  else
    echo "($NLU: the fleet already has version $NEW_VERSION's rollout, ${plan#* }; not deployed again)"
  fi
  wait_until "the devices to serve their models" 120 fleet serving "$FLEET" "${AGENT_DIRS[@]}"

  # Apps on every device: texts and recordings through the local APIs, from now on until `stop`.
  "$PY" "$ROOT/scripts/demo/traffic.py" --rate "$RATE" --audio-every 2 --stats "$DEMO/traffic.json" \
    "${AGENT_DIRS[@]}" >>"$DEMO/traffic.log" 2>&1 &
  echo $! >"$DEMO/traffic.pid"
  echo "traffic: every device gets $RATE texts and $(awk "BEGIN {print $RATE / 2}") recordings a second" \
    "through its local API (scripts/demo/traffic.py, pid $(cat "$DEMO/traffic.pid"))"

  # Roll version 2 out in waves, each of them a share of every class, behind health gates that compare
  # the wave's devices (canary) with the rest (control) on the traffic above.
  case "$plan" in
    start)
      echo "roll out $NLU:$NEW_VERSION in waves:"
      # Six agents, a traffic driver and the control plane share this machine's cores, and a p95 over
      # a few dozen requests is close to their maximum: a 10x ratio keeps one scheduling hiccup from
      # passing for a regression (the rollout tests show a real one caught at the default 1.5x).
      echo "\$ edgefleet rollouts start $NLU:$NEW_VERSION --fleet $FLEET --waves 34,67,100 --bake $BAKE" \
        "--min-requests $MIN_REQUESTS --max-latency-ratio 10"
      rollout=$("$EF" rollouts start "$NLU:$NEW_VERSION" --fleet "$FLEET" --waves 34,67,100 --bake "$BAKE" \
        --min-requests "$MIN_REQUESTS" --max-latency-ratio 10 --json | "$PY" -c 'import json, sys; print(json.load(sys.stdin)["rollout_id"])')
      ;;
    active*)
      rollout=${plan#active }
      echo "a rollout of $NLU:$NEW_VERSION is under way ($rollout); watching it:"
      ;;
    done*)
      rollout=${plan#done }
      echo "the fleet already runs $NLU:$NEW_VERSION (rollout $rollout completed): no new rollout"
      ;;
  esac
  if ! fleet watch "$rollout" --timeout 300; then
    "$EF" rollouts status "$rollout" >&2 || true
    echo "demo: the rollout $rollout did not complete; see 'edgefleet rollouts status $rollout'" >&2
    exit 1
  fi
  wait_until "the devices to serve $NLU:$NEW_VERSION" 60 fleet serving "$FLEET" "${AGENT_DIRS[@]}"
  sleep 2  # one more telemetry flush, so the latency below includes the newest requests

  echo "what demo-sensor-1 serves, asked on the device:"
  "$EF" infer status --data-dir "$SENSOR_DIR"
  echo "a real recording of someone saying 'two' (FSDD, CC BY-SA 4.0), through demo-gw-1's local API:"
  "$EF" infer audio "$ROOT/tests/agent/data/fsdd/2_theo_34.wav" --data-dir "$GW_DIR"
  echo "the same through demo-sensor-1's:"
  "$EF" infer audio "$ROOT/tests/agent/data/fsdd/2_theo_34.wav" --data-dir "$SENSOR_DIR"
  echo "a request to demo-gw-1's text model:"
  "$EF" infer text "play some jazz music" --data-dir "$GW_DIR"

  fleet summary "$FLEET" "$NLU:$NEW_VERSION" --traffic "$DEMO/traffic.json"
  cat <<TXT

The control plane, six agents and the traffic are running in the background (logs in $DEMO).
Explore:
  export EDGEFLEET_CONFIG=$SERVER_DIR/cli.toml
  $EF devices list
  $EF devices show demo-sensor-1                  # facts, simulated ones marked
  $EF classes list
  $EF classes show vehicle-1core
  $EF classes apply deploy/classes.demo.yaml --dry-run   # edit the policies, see what would change
  $EF models list
  $EF models evidence $NLU:$NEW_VERSION         # what each class measured for each variant
  $EF models explain fsdd-digits:1 --class sensor-legacy
  $EF models explain $NLU:$NEW_VERSION --device demo-gw-1
  $EF rollouts list
  $EF rollouts status $rollout
  $EF telemetry latency --model $NLU --by class
  $EF telemetry latency --model $NLU --by version --since 15m
  $EF telemetry latency --device demo-gw-1 --by variant
  $EF telemetry health --fleet $FLEET
  $EF telemetry events --device demo-vehicle-1
  $EF infer status --data-dir $DEMO/agent-2
  $EF infer audio tests/agent/data/fsdd/6_nicolas_7.wav --data-dir $GW_DIR --json
  $EF infer text "book a table for two in Paris tomorrow" --data-dir $GW_DIR --json
  $EF tokens create --fleet $FLEET          # join another device
Stop: make demo-stop
TXT
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
