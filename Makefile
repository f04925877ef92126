# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
FMNIST := /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz

.PHONY: demo test lint data install dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

dev: $(VENV)/.installed-dev

# Fashion-MNIST comes from Debian's package; as root with apt we install it, otherwise we say how.
data:
	@if [ -f $(FMNIST) ] || [ -n "$$NETPRESS_FASHION_MNIST" ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
		 (apt-get update -qq >/dev/null && apt-get install -y -qq dataset-fashion-mnist >/dev/null)) || \
		echo "could not install dataset-fashion-mnist; the demo falls back to scikit-learn digits"; \
	else echo "Fashion-MNIST missing: run 'sudo apt-get install dataset-fashion-mnist' (the demo falls back to scikit-learn digits)"; fi

demo: install data
	$(BIN)/netpress demo

test: dev data
	$(BIN)/python -m pytest

lint: dev
	$(BIN)/ruff check netpress tests benchmarks

clean:
	rm -rf $(VENV) netpress-demo .pytest_cache
