# Two entry points on a fresh Linux machine: `make demo` (set up, run the main job) and
# `make test` (set up, run the whole suite). Both create .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch is pinned here (a CPU build) rather than in setup.cfg, whose range admits it.
TORCH ?= torch==2.13.0
XVFB := $(shell command -v xvfb-run 2>/dev/null)

.PHONY: demo demo-model demo-report brain-model headneck-model brain-report headneck-report \
	test lint clean
SHARED ?= ../shared/data

$(STAMP): setup.cfg pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[testing]"
	touch $@

# The main job: one pair from the bundled demo model on the command line, then napari with
# the pair and the MedGen3D widget (demo model selected, ready to generate more).
demo: $(STAMP)
	$(VENV)/bin/medgen3d generate --model demo --out out/demo -n 1 --seed 0 --overwrite
ifdef DISPLAY
	$(VENV)/bin/napari out/demo/sample_0000_image.nii.gz out/demo/sample_0000_label.nii.gz --plugin napari-medgen3d -w napari-medgen3d
else
	@echo "No display: wrote out/demo/; open it with napari -w napari-medgen3d on a desktop."
endif

# Retrain the demo model (resumable; see resources/recipes/demo_phantom.json).
demo-model: $(STAMP)
	scripts/build_demo_model.sh

# Evaluate the demo model against fresh phantoms into resources/reports/demo/.
demo-report: $(STAMP)
	scripts/demo_report.sh

# Train or continue the real-anatomy models on this machine (resumable; runs/ keeps the
# optimiser state) and pack their weights into the package.
brain-model: $(STAMP)
	scripts/train_model.sh resources/recipes/brain_mri_ixi.json $(SHARED)/mri_brain_ixi \
		runs/brain_mri src/medgen3d/brain_mri

headneck-model: $(STAMP)
	scripts/train_model.sh resources/recipes/ct_headneck_openkbp.json \
		$(SHARED)/ct_headneck_openkbp runs/headneck_ct src/medgen3d/headneck_ct

# Evaluate them against their own held-out cases into resources/reports/.
brain-report: $(STAMP)
	scripts/model_report.sh brain-mri $(SHARED)/mri_brain_ixi brain_mri

headneck-report: $(STAMP)
	scripts/model_report.sh headneck-ct $(SHARED)/ct_headneck_openkbp headneck_ct

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/ruff format --check src tests benchmarks scripts

# GUI tests need an OpenGL context: run under Xvfb when it is installed, otherwise skip them.
# One torch thread per process: the tiny test models gain nothing from more, and torchrun
# tests start two processes on two cores.
test: $(STAMP) lint
ifdef XVFB
	OMP_NUM_THREADS=1 xvfb-run -a $(VENV)/bin/pytest
else
	@echo "xvfb-run not found: GUI tests deselected (apt-get install xvfb to run them)"
	OMP_NUM_THREADS=1 $(VENV)/bin/pytest -m "not gui"
endif

clean:
	rm -rf $(VENV) out
