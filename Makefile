# `make demo` and `make test` set up everything they need in .venv on first use.
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
# The stamp names the torch spec, so `make test TORCH_SPEC=...` reinstalls.
STAMP := $(VENV)/.installed-$(shell echo '$(TORCH_SPEC)' | cksum | cut -d' ' -f1)

.PHONY: demo test test-all clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/adamkit train

# One pytest worker per core (pytest-xdist), a test file per worker at a time: the
# suite is mostly compiling and stepping, both single-threaded per process.
test: $(STAMP)
	$(BIN)/python -m pytest -q -n auto --dist loadfile

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -n auto --dist loadfile -m "slow or not slow"

clean:
	rm -rf $(VENV) adamkit-out .pytest_cache
