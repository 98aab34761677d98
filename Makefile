# Two entry points on a fresh Linux machine: `make demo` (set up, run the main job) and
# `make test` (set up, run the whole suite). Both create .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch is pinned here (a CPU build) rather than in setup.cfg, whose range admits it.
TORCH ?= torch==2.13.0
XVFB := $(shell command -v xvfb-run 2>/dev/null)

.PHONY: demo test lint clean

$(STAMP): setup.cfg pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[testing]"
	touch $@

demo: $(STAMP)
	$(VENV)/bin/medgen3d phantom --out out/phantoms -n 4 --seed 0

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

# GUI tests need an OpenGL context: run under Xvfb when it is installed, otherwise skip them.
test: $(STAMP) lint
ifdef XVFB
	xvfb-run -a $(VENV)/bin/pytest
else
	@echo "xvfb-run not found: GUI tests deselected (apt-get install xvfb to run them)"
	$(VENV)/bin/pytest -m "not gui"
endif

clean:
	rm -rf $(VENV) out
