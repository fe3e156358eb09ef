# vaeserve: every target installs what it needs into .venv first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PIP    := $(BIN)/python -m pip install --quiet --constraint constraints.txt

REPO    ?= models
NAME    ?= vae
RUN     ?= runs/default
HOST    ?= 127.0.0.1
PORT    ?= 50051
METRICS_PORT ?= 8000

.PHONY: install serve model test bench load lint proto system-deps clean

install: $(STAMP)

# Re-runs only when the dependency declarations change, so a second `make install` is a no-op.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) --editable '.[train,serve,load,dev]'
	@touch $@

# Trains and exports the default digits model when the repository has none, then serves in the foreground.
model: install
	@if ls $(REPO)/$(NAME)/*/model.json >/dev/null 2>&1; then \
		echo "model repository $(REPO)/$(NAME) already has a version"; \
	else \
		$(BIN)/vaeserve train --out $(RUN) && \
		$(BIN)/vaeserve export --checkpoint $(RUN)/best.pt --repo $(REPO) --name $(NAME); \
	fi

serve: model
	exec $(BIN)/vaeserve serve --repo $(REPO) --name $(NAME) --host $(HOST) --port $(PORT) --metrics-port $(METRICS_PORT)

# System tools some tests drive for real (promtool/prometheus, kubectl, chromium); skipped where apt-get is unavailable.
system-deps:
	@./.ci/system-deps.sh

# checkov (tests/deploy) pins old packaging/networkx/python-dateutil: its own venv keeps .venv as the product needs it.
.venv-tools/.installed-stamp: deploy/requirements-tools.txt
	@test -x .venv-tools/bin/python || $(PYTHON) -m venv .venv-tools
	.venv-tools/bin/python -m pip install --quiet --requirement deploy/requirements-tools.txt
	@touch $@

# tritonclient (tests/oip) pins protobuf < 7 while vaeserve needs 7: its own venv too.
.venv-triton/.installed-stamp: tests/oip/requirements.txt
	@test -x .venv-triton/bin/python || $(PYTHON) -m venv .venv-triton
	.venv-triton/bin/python -m pip install --quiet --requirement tests/oip/requirements.txt
	@touch $@

test: install system-deps .venv-tools/.installed-stamp .venv-triton/.installed-stamp
	$(BIN)/python -m pytest -q

# Each benchmark prints its figures and rewrites its own section of BENCHMARKS.md. BASELINE=OTHER/.venv/bin/python
# measures another vaeserve installation against hostile clients too.
bench: install
	$(BIN)/python -m tests.bench.bench_training
	$(BIN)/python -m tests.bench.bench_default_model
	$(BIN)/python -m tests.bench.bench_export
	$(BIN)/python -m tests.bench.bench_serving
	$(BIN)/python -m tests.bench.bench_counting
	$(BIN)/python -m tests.bench.bench_api
	$(BIN)/python -m tests.bench.bench_hostile $(if $(BASELINE),--baseline $(BASELINE))
	$(BIN)/python -m tests.bench.bench_lifecycle

load: install
	$(BIN)/python -m tests.load.run_local

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

proto: install
	$(BIN)/python -m vaeserve.protos.generate

clean:
	rm -rf $(VENV) .venv-tools .venv-triton .venv-bench .pytest_cache .ruff_cache
