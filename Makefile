# Two entry points (see README): `make demo` and `make test`. Both create .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint validate bench report clean browser

$(BIN)/diffperf: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(BIN)/diffperf

demo: $(BIN)/diffperf
	$(BIN)/python experiments/demo_gpt3_175b_dgx_h100/run.py

# One pytest worker per CPU (pytest-xdist); a test file stays on one worker, so the
# module-scoped fixtures (a validation report, an optimization) are computed once.
test: $(BIN)/diffperf
	$(BIN)/python -m pytest tests -n auto --dist loadfile --durations=25; rc=$$?; \
	  [ $$rc -eq 5 ] && rc=0; exit $$rc

# Chromium and its WebDriver from Debian for tests/test_explore_browser.py (needs root;
# the test is skipped, saying why, where they cannot be installed).
browser:
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	   apt-get install -y -qq chromium chromium-driver)

lint: $(BIN)/diffperf
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

validate: $(BIN)/diffperf
	$(BIN)/diffperf validate --data data/training_calibration.csv

# writes benchmarks/results_<device>.json and optimizer_results_<device>.json
bench: $(BIN)/diffperf
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	$(BIN)/python benchmarks/run.py
	$(BIN)/python benchmarks/optimizer.py

# regenerates every table of BENCHMARKS.md and VALIDATION.md from the committed JSON
report:
	$(PYTHON) benchmarks/report.py

clean:
	rm -rf $(VENV) build dist *.egg-info
