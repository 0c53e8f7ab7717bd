# cxr-triage: `make demo` and `make test` work on a fresh machine (Python 3.11, Debian, PyPI reachable).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
REPOSITORY := build/model_repository
STAMP := $(VENV)/.installed-$(shell cat requirements/lock.txt pyproject.toml | sha1sum | cut -c1-12)

APT_PACKAGES := orthanc orthanc-dicomweb dcmtk dicom3tools chromium openssl qemu-user nginx
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: system-packages setup kserve-schema demo test test-fast serve repository python-env train train-seg train-cls train-cascade evaluate bench perf-analyzer int8 soak lock clean

setup: system-packages $(STAMP)

# Debian packages: Orthanc (the PACS the gateway tests talk to) with its DICOMweb plugin, dcmtk (storescu/echoscu), dicom3tools (dciodvfy
# checks every result object against its IOD) and chromium
# (the upload page's browser test, driven by the playwright Python package), openssl (the TLS test's CA) and
# qemu-user (the INT8 test runs the graphs on an emulated AVX2-only CPU, qemu-x86_64 -cpu EPYC-Rome) and nginx
# (the gRPC load balancer in front of Triton replicas, ops/balancer.py).
system-packages:
	@command -v Orthanc >/dev/null && test -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so && command -v storescu >/dev/null && command -v dciodvfy >/dev/null && command -v chromium >/dev/null && command -v openssl >/dev/null && command -v qemu-x86_64 >/dev/null && { command -v nginx >/dev/null || test -x /usr/sbin/nginx; } || { \
	  $(SUDO) apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $(APT_PACKAGES); }

# A new environment takes about 7 GB (PyPI's torch is the CUDA build: ~5.5 GB with its nvidia-* wheels), and
# the tests write up to ~1 GB more; say so up front rather than failing half-way through pip with ENOSPC.
SETUP_FREE_MB ?= 9000
$(STAMP): requirements/lock.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON)"; exit 1; }
	@test -d $(VENV) || { free=$$(df -Pm . | awk 'NR==2 {print $$4}'); [ "$$free" -ge $(SETUP_FREE_MB) ] || { \
	  echo "make setup: a new $(VENV) needs about $(SETUP_FREE_MB) MB of free disk; $$free MB free on $$(df -P . | awk 'NR==2 {print $$6}')." >&2; \
	  echo "Free some space (or set SETUP_FREE_MB=0 to try anyway) and rerun." >&2; exit 1; }; }
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --no-cache-dir -r requirements/lock.txt
	$(PIP) install -q --no-deps nvidia-pytriton==0.7.0
	$(PIP) install -q --no-deps --no-build-isolation -e .
	rm -f $(VENV)/.installed-*; touch $@

# KServe's generated API types (the schema the InferenceService test reads): a hash-pinned wheel, downloaded, not installed.
KSERVE_WHEEL := build/wheels/$(shell sed -n 's/^kserve==\([^ ]*\).*/kserve-\1-py3-none-any.whl/p' requirements/kserve-schema.txt)
kserve-schema: $(KSERVE_WHEEL)
$(KSERVE_WHEEL): requirements/kserve-schema.txt | setup
	$(PIP) download -q --no-deps --require-hashes -r $< -d build/wheels

repository: setup
	$(PY) -m export.build_repository --out $(REPOSITORY)

demo: repository
	$(PY) -m cli.demo --repository $(REPOSITORY)

test: repository $(KSERVE_WHEEL)
	$(PY) -m pytest -q -rs

test-fast: setup
	$(PY) -m pytest -q -m "not slow and not triton"

serve: repository
	$(VENV)/bin/cxr serve --model-repository $(REPOSITORY)

evaluate: repository
	$(VENV)/bin/cxr evaluate --split test

# Performance (README "Performance"): served vs raw ONNX Runtime vs Flask baseline, FP32 and INT8 profiles.
bench: repository
	$(VENV)/bin/cxr bench
perf-analyzer: repository
	$(PY) -m benchmarks.perf_analyzer
int8: repository
	$(PY) -m benchmarks.int8

# Reliability (README "Reliability"): 10 minutes at concurrency 32; errors, p99 drift, server memory (PSS) growth.
soak: repository
	$(PY) -m benchmarks.soak --duration 600 --concurrency 32

# Reproduce the shipped weights (about 35 minutes segmenter, ~80 classifier, 22 stage 2 on 2 CPU cores).
# The segmenter is distilled from weights/lung_resunet18.pt, the segmenter served before it (lung_resunet18.yaml
# then lung_resunet18_stage2.yaml with init_from, docs/research.md), kept because the distillation and the Flask
# baseline of today's models in `cxr bench` run it.
train: train-seg train-cls train-cascade
train-seg: setup
	$(PY) -m training.train_segmenter --config training/configs/lung_unet_mobilenetv2_distilled.yaml --ship
train-cls: setup
	$(PY) -m training.train_classifier --config training/configs/resnet18_half.yaml --ship
train-cascade: setup
	$(PY) -m training.train_cascade --config training/configs/seme_resnet18_slim.yaml --ship

# The python models' packed environment (EXECUTION_ENV_PATH): python -m export.build_repository --python-env build/python_env.tar.gz
python-env: setup
	$(PY) -m export.python_env --out build/python_env.tar.gz

lock: setup
	{ head -2 requirements/lock.txt; $(PIP) freeze | grep -v -e pytriton -e "^-e" -e "^# Editable"; } > requirements/lock.new && mv requirements/lock.new requirements/lock.txt

clean:
	rm -rf build runs .pytest_cache
