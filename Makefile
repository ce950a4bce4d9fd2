# Two commands do all the set-up on a fresh machine: `make demo` (the main job) and `make test` (the test suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test install clean

$(BIN)/.froster-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade --quiet pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

install: $(BIN)/.froster-installed

demo: install
	$(BIN)/froster demo

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) cache/*.zarr runs reports
