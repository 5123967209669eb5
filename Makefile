# sjd_min: `make demo` and `make test` bootstrap their own virtualenv on a fresh machine.
# An installed torch (e.g. a GPU machine's CUDA build) is reused through system site packages;
# otherwise the CPU wheel torch==$(TORCH_CPU) is installed: a bare `pip install torch` would pull
# a multi-GB CUDA build.
PYTHON ?= python3
VENV ?= .venv
TORCH_CPU ?= 2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test env clean bench gpu-check guide

$(STAMP): pyproject.toml
	@if $(PYTHON) -c "import torch" 2>/dev/null; then \
		echo "reusing the installed torch $$($(PYTHON) -c 'import torch; print(torch.__version__)')"; \
		$(PYTHON) -m venv --system-site-packages $(VENV); \
	else \
		$(PYTHON) -m venv $(VENV) && $(BIN)/pip install -q "torch==$(TORCH_CPU)"; \
	fi
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

env: $(STAMP)

# The embedded tiny model: AR vs SJD vs maximal coupling on the same seeds (about a minute on 2 CPU cores).
demo: $(STAMP)
	$(BIN)/python examples/demo.py --out out/demo

# Rebuild weights/tiny from scratch (fixed seeds; about an hour on 2 CPU cores): the VQ, then the transformer.
.PHONY: tiny-model
tiny-model: $(STAMP)
	$(BIN)/python examples/train_tiny_vq.py --out build/tiny
	$(BIN)/python examples/train_tiny_gpt.py --vq build/tiny --out weights/tiny --force

# docs/guide.md's figures, generated tables and code-link line ranges, from the code and the embedded model (seconds).
guide: $(STAMP)
	$(BIN)/python examples/guide_figures.py

test: $(STAMP)
	$(BIN)/python -m pytest

# AR vs SJD vs coupled SJD, eager and compiled, W = 4/8/16 on the same seeds -> docs/benchmarks.md (about 5 min on 2 CPU cores).
bench: $(STAMP)
	$(BIN)/python examples/bench.py --window 4 --window 8 --window 16

# On a GPU machine: the machine's own python3 and torch, no virtualenv (see examples/gpu_check.py).
gpu-check:
	PYTHONPATH=. $(PYTHON) examples/gpu_check.py

clean:
	rm -rf $(VENV) build *.egg-info
