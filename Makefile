# edgediff: the two quick-start commands are `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# CPU installs pin torch to the 2.13.0 wheel; GPU images bring their own torch.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup system-deps test lint demo clean engine images images-arm64

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[dev]"
	touch $@

# Prometheus (server + promtool) and docker-compose v1 are Debian packages the tests use for real.
system-deps:
	@bash scripts/install-system-deps.sh

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

demo: setup system-deps
	bash scripts/demo.sh

clean:
	rm -rf reports .pytest_cache .ruff_cache
