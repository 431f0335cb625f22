# Two commands on a fresh machine (see README.md):
#   make demo   set up .venv and run the offline quickstart experiment (the embedded flag-mini Stable Diffusion, CPU)
#   make test   set up .venv, lint, and run the test suite (what CI runs)
#   make test-fast  lint and the suite without the slow end-to-end runs (for development)
#   make demo-flags the quickstart's full runs: three training runs of 500 steps (~20 min)
#   make demo-flags-128 the flag world at 128 px (flag-mini-128; ~13 min)
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
PLUGINS := plugins/spurcli-timm plugins/spurcli-openclip plugins/spurcli-robust plugins/spurcli-effnet-lite plugins/spurcli-owlv2
# Nothing here may reach the model hub: everything runs on tiny/mini/random/bundled weights.
export HF_HUB_OFFLINE := 1

.PHONY: install demo demo-flags demo-flags-128 test test-fast lint format clean

# pip's and setuptools' build chatter goes to $(VENV)/install.log, shown only if the install fails.
# spurcli-effnet-lite0 became spurcli-effnet-lite: a .venv made before keeps its stale entry point
# (a warning on every command) unless it is uninstalled; pip only warns when it is not there.
$(BIN)/.installed: pyproject.toml $(wildcard plugins/*/pyproject.toml) examples/plugin-template/pyproject.toml
	@echo "installing spurcli, its plugins and test tools into $(VENV) (log: $(VENV)/install.log)"
	@$(PYTHON) -m venv $(VENV)
	@{ $(BIN)/pip install --quiet --upgrade pip && \
	   $(BIN)/pip install --quiet -e '.[test]' $(addprefix -e ,$(PLUGINS)) -e examples/plugin-template && \
	   $(BIN)/pip uninstall --quiet --yes spurcli-effnet-lite0; \
	 } > $(VENV)/install.log 2>&1 || { tail -n 40 $(VENV)/install.log; exit 1; }
	@touch $@
	@echo "installed: $$($(BIN)/spurcli --version)"

install: $(BIN)/.installed

demo: install
	$(BIN)/spurcli run examples/quickstart.toml

# The quickstart uncut: three training runs of 500 steps per arm, past the demo's five minutes,
# with the figures examples/flag_world/README.md reports.
demo-flags: install
	$(BIN)/spurcli run examples/flag_world/flags.toml

# The flag world at 128 px (flag-mini-128): two training runs of 200 steps, about 13 minutes.
demo-flags-128: install
	$(BIN)/spurcli run examples/flag_world/flags128.toml

# ruff, then the layers on disk (import-linter: no upward import, no cycle; pyproject.toml).
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

test: lint
	$(BIN)/python -m pytest

test-fast: lint
	$(BIN)/python -m pytest -m "not slow"

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) .pytest_cache
