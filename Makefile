# Set-up and entry points. Every target creates the virtual environment it needs (.venv) on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast test-nnunet bench install clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[all]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/dragsaw demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# The nnU-Net v2 trainers' tests (tests/integrations, skipped by `make test` without nnunetv2): installs the
# nnunet extra (~670 MB). nnunetv2 pulls PyPI's torchvision through timm; beside a CPU-only torch that torchvision
# cannot import (and then breaks MONAI's imports), so it is removed when it does not import: dragsaw never uses it.
test-nnunet: $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[all,nnunet]"
	$(BIN)/python -c "import torchvision" 2>/dev/null || $(BIN)/python -m pip uninstall --quiet -y torchvision
	$(BIN)/python -m pytest -q tests/integrations

bench: $(STAMP)
	$(BIN)/python benchmarks/core.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
