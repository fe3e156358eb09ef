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

.PHONY: install serve model test bench load lint proto system-deps clean \
	images base-image image-cpu image-cpu-baked image-gpu image-models image-locust deploy-smoke

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
	$(BIN)/python -m tests.bench.bench_serving $(if $(BASELINE),--baseline $(BASELINE))
	$(BIN)/python -m tests.bench.bench_images
	$(BIN)/python -m tests.bench.bench_counting
	$(BIN)/python -m tests.bench.bench_api
	$(BIN)/python -m tests.bench.bench_bulk
	$(BIN)/python -m tests.bench.bench_hostile $(if $(BASELINE),--baseline $(BASELINE))
	$(BIN)/python -m tests.bench.bench_deploy
	$(BIN)/python -m tests.bench.bench_lifecycle
	@if command -v nvidia-smi >/dev/null; then $(BIN)/python -m tests.bench.bench_gpu; \
	else echo "bench_gpu: no NVIDIA GPU here (its section of BENCHMARKS.md is from a machine with one)"; fi

# Container images (deploy/README.md, section 1), tagged as deploy/k8s expects, with podman or else docker. They
# build FROM a local Debian base (deploy/base-image.sh; bootstrapped once, then reused) since the pinned upstream
# bases need Docker Hub; BASES=upstream builds FROM those instead. The models image holds $(REPO)/$(NAME)/$(MODEL_VERSION).
ENGINE        ?= $(if $(shell command -v podman),podman,docker)
BASES         ?= local
LOCAL_BASE    ?= localhost/vaeserve-base:bookworm
IMAGE_VERSION ?= 0.1.0
MODEL_VERSION ?= 1
# $(call BUILD,ARG): a build whose base is the Dockerfile's ARG (PYTHON_IMAGE, CUDA_IMAGE, BUSYBOX_IMAGE). podman
# writes OCI images by default, which drop HEALTHCHECK; the docker format keeps it. Builds reach PyPI through the
# host's network (and its CA bundle, for podman, which can mount it into RUN steps).
BUILD = $(ENGINE) build $(if $(filter local,$(BASES)),--build-arg $(1)=$(LOCAL_BASE)) --network host \
	$(if $(filter podman,$(ENGINE)),--format docker -v /etc/ssl/certs:/etc/ssl/certs:ro)

images: image-cpu image-cpu-baked image-gpu image-models image-locust

base-image:
	$(if $(filter local,$(BASES)),deploy/base-image.sh $(ENGINE) $(LOCAL_BASE))

image-cpu: base-image
	$(call BUILD,PYTHON_IMAGE) -f deploy/docker/Dockerfile.cpu --target runtime -t vaeserve:$(IMAGE_VERSION)-cpu .

# Baked: models/ (make model) inside the image.
image-cpu-baked: base-image model
	$(call BUILD,PYTHON_IMAGE) -f deploy/docker/Dockerfile.cpu -t vaeserve:$(IMAGE_VERSION)-cpu-baked .

# Built only: its runtime needs an NVIDIA GPU and, from the local base, has no CUDA libraries.
image-gpu: base-image
	$(call BUILD,CUDA_IMAGE) -f deploy/docker/Dockerfile.gpu --target runtime -t vaeserve:$(IMAGE_VERSION)-gpu .

# The build context is the model repository itself, so any REPO can go in (tests pass their own).
image-models: base-image model
	$(call BUILD,BUSYBOX_IMAGE) -f deploy/docker/Dockerfile.models --build-arg NAME=$(NAME) --build-arg VERSION=$(MODEL_VERSION) \
		-t vaeserve-models:$(NAME)-$(MODEL_VERSION) $(REPO)

image-locust: base-image
	$(call BUILD,PYTHON_IMAGE) -f deploy/docker/Dockerfile.locust -t vaeserve-locust:$(IMAGE_VERSION) .

# The rendered manifests played on this machine, driven by the Locust image (tests/deploy/smoke.py says how);
# podman as root.
deploy-smoke: install image-cpu image-models image-locust
	$(BIN)/python -m tests.deploy.smoke

load: install
	$(BIN)/python -m tests.load.run_local

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

proto: install
	$(BIN)/python -m vaeserve.protos.generate

clean:
	rm -rf $(VENV) .venv-tools .venv-triton .venv-bench .pytest_cache .ruff_cache
