# Every check runs here exactly as CI runs it: `make test` is what .ci/run calls.
# The first target to run creates .venv and installs wsrpc with its dev tools.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

NODE_DEPS := tests/interop/node_modules/.package-lock.json

.PHONY: demo test lint format types clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,fast]'
	touch $(STAMP)

# The TGrid interop tests run against the real tgrid package, pinned by the
# lockfile; npm ci installs exactly that.
$(NODE_DEPS): tests/interop/package-lock.json
	npm ci --prefix tests/interop --no-audit --no-fund --loglevel=error

# The tests that exercise a transport run a second time on the fast one
# (picows), as the default of every server and connector they make; the
# sans-I/O, typing, example and interop tests do not depend on it.
TRANSPORT_TESTS := tests/test_calls.py tests/test_floods.py tests/test_close.py tests/test_handshake.py \
	tests/test_connections.py tests/test_hostile.py tests/test_load.py \
	tests/test_faults.py tests/test_sync.py

demo: $(STAMP)
	$(BIN)/python examples/demo.py

test: $(STAMP) $(NODE_DEPS)
	$(BIN)/ruff check wsrpc tests examples
	$(BIN)/mypy
	$(BIN)/python -X dev -m pytest
	WSRPC_TEST_TRANSPORT=picows $(BIN)/python -X dev -m pytest $(TRANSPORT_TESTS)

types: $(STAMP)
	$(BIN)/mypy

lint: $(STAMP)
	$(BIN)/ruff check wsrpc tests examples
	$(BIN)/ruff format --check wsrpc tests examples

format: $(STAMP)
	$(BIN)/ruff format wsrpc tests examples
	$(BIN)/ruff check --fix wsrpc tests examples

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .pytest_cache .ruff_cache tests/interop/node_modules
