# Two commands do all set-up on a fresh machine:  `make demo` (the whole pipeline on data/)  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch for machines without an NVIDIA GPU (GPU machines get the CUDA build pip picks).
# Elsewhere you may need: make TORCH_INDEX=--index-url=https://download.pytorch.org/whl/cpu
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
WORKSPACE ?= workspace
export PIP_DISABLE_PIP_VERSION_CHECK=1

.PHONY: demo test install clean ui

install: $(BIN)/.installed

$(BIN)/.installed: pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@if ! $(BIN)/python -c "import torch" 2>/dev/null; then \
	  if command -v nvidia-smi >/dev/null 2>&1; then $(BIN)/pip install -q "torch>=2.5,<2.15"; \
	  else $(BIN)/pip install -q $(TORCH_INDEX) "$(TORCH_SPEC)"; fi; fi
	@extras=test; if command -v nvidia-smi >/dev/null 2>&1; then extras=test,gpu; fi; \
	  echo "$(BIN)/pip install -c constraints.txt -e .[$$extras]"; \
	  $(BIN)/pip install -q -c constraints.txt -e ".[$$extras]"
	@touch $@

demo: install
	$(BIN)/bertflow pipeline --config tiny --workspace $(WORKSPACE)

test: install
	$(BIN)/python -m pytest

ui: install
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(abspath $(WORKSPACE))/mlflow.db --host 127.0.0.1 --port 5000

clean:
	rm -rf $(WORKSPACE) .pytest_cache
