# Quickstart targets: `make demo` and `make test` set up everything they need themselves.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.mlrkit-installed
PYTEST_ARGS ?=

.PHONY: demo test lint bench fashion-mnist chromium clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q torch==2.14.1 torchvision==0.29.1
	$(VENV)/bin/pip install -q -e ".[offline,clip,dev]"
	touch $(STAMP)

fashion-mnist:
	@bash scripts/ensure_fashion_mnist.sh

chromium:  # the browser the report test drives (Debian's package; no browser download)
	@bash scripts/ensure_chromium.sh

demo: $(STAMP) fashion-mnist
	$(VENV)/bin/mlrkit demo

test: $(STAMP) fashion-mnist chromium
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) .cache runs .pytest_cache
