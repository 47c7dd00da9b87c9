# Two commands for a newcomer: `make repro` (set up, then run the pipeline) and `make test`.
# Everything is installed into the project: uv into .tools/ (no root, no pre-installed uv),
# the locked environment into .venv/.
PYTHON ?= python3
UV_VERSION := 0.13.8
TOOLS := .tools
UV := $(TOOLS)/bin/uv
VENV := .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export UV_PROJECT_ENVIRONMENT := $(CURDIR)/$(VENV)
export MPLBACKEND := Agg
# Compile the installed packages' bytecode once at setup: where PYTHONDONTWRITEBYTECODE is set (as in
# many containers) every stage process would otherwise recompile torch/diffusers/open_clip from
# source (~40 s over a `dvc repro`).
export UV_COMPILE_BYTECODE := 1

.PHONY: setup repro test test-realscale ui plots clean-venv

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet --disable-pip-version-check "uv==$(UV_VERSION)"

$(VENV)/.synced: $(UV) uv.lock pyproject.toml
	$(UV) sync --frozen --python $(PYTHON)
	touch $@

setup: $(VENV)/.synced

repro: setup
	dvc repro

test: setup
	pytest -q

# Whole recipes (e.g. the paper's) end to end at tiny size: minutes each, so outside `make test`
# to keep it under 15 minutes on 2 cores. CI runs it.
test-extended: setup
	pytest -q -m extended

# Every stage at the real model shapes (random weights; ~9 GB of model files built once into
# .pytest_cache): separate from `make test` for its time. CI runs both.
test-realscale: setup
	pytest -q -s -m realscale

ui: setup
	@python -m dreamdiffusion.tools.ui_url --port $${MLFLOW_PORT:-5000}
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow ui \
		--backend-store-uri sqlite:///$(CURDIR)/mlflow.db \
		--default-artifact-root $(CURDIR)/mlruns \
		--host 127.0.0.1 --port $${MLFLOW_PORT:-5000} --workers 1

# The DVC plots as PNGs + plots/index.html, drawn here (no vega from a CDN: works offline).
# Compare revisions or experiments: make plots REVS="main exp-1a2b3".
plots: setup
	python -m dreamdiffusion.tools.plots_offline $(REVS) --out plots

clean-venv:
	rm -rf $(VENV) $(TOOLS)
