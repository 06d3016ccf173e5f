# Two entry points (see README): `make demo` and `make test`. Each bootstraps .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-dev
# Exact versions of the dependency closure: every install takes them as constraints, so
# what CI tests (and the Dockerfile installs) is what `make audit` audited.
LOCK   := requirements.lock

.PHONY: demo test lint typecheck audit lock check clean

$(STAMP): pyproject.toml $(LOCK)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c $(LOCK) --upgrade pip
	$(BIN)/python -m pip install --quiet -c $(LOCK) -e '.[dev]'
	@touch $(STAMP)

# Re-pin $(LOCK) to what the venv holds after installing pyproject.toml's ranges
# unconstrained (kept versions stay; UPGRADE=1 takes the newest allowed of everything).
# Then commit $(LOCK) and run `make audit`.
lock:
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(if $(UPGRADE),--upgrade --upgrade-strategy eager) \
		-e '.[dev]'
	$(BIN)/python tools/lock.py > $(LOCK).new && mv $(LOCK).new $(LOCK)
	@touch $(STAMP)

# The lock matches the installed closure, then its known vulnerabilities (pip-audit, PyPI's
# service). AUDIT_FLAGS="--if-unreachable fallback": see tools/audit.py.
audit: $(STAMP)
	$(BIN)/python tools/lock.py --check $(LOCK)
	$(BIN)/python tools/audit.py $(LOCK) $(AUDIT_FLAGS)

demo: $(STAMP)
	$(BIN)/driftwarden demo

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check app tests load-tests deploy tools

typecheck: $(STAMP)
	$(BIN)/mypy app

check: lint typecheck test

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
