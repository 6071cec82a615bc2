# Every check runs here exactly as CI runs it: `make test` is what .ci/run calls.
# The first target to run creates .venv and installs wsrpc with its dev tools.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

NODE_DEPS := tests/interop/node_modules/.package-lock.json

# The browser example's test drives Debian's Chromium with Playwright; its
# page is bundled by esbuild, pinned in examples/browser/package-lock.json.
CHROMIUM := /usr/bin/chromium
BROWSER_EXAMPLE := examples/browser
BROWSER_DEPS := $(BROWSER_EXAMPLE)/node_modules/.package-lock.json
BROWSER_BUNDLE := $(BROWSER_EXAMPLE)/dist/main.js

.PHONY: demo test lint format types clean browser screenshot

# editable_mode=compat puts the project on sys.path through a plain .pth
# line, which mypy reads; the default mode's import hook is invisible to mypy,
# so a program outside the repository could not be type-checked against wsrpc.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check \
		--config-settings editable_mode=compat -e '.[dev,fast,redis]'
	touch $(STAMP)

# The TGrid interop tests run against the real tgrid package, pinned by the
# lockfile; npm ci installs exactly that.
$(NODE_DEPS): tests/interop/package-lock.json
	npm ci --prefix tests/interop --no-audit --no-fund --loglevel=error

# Debian's chromium package, installed only when missing (CI runs as root).
# Playwright drives it through executable_path: never `playwright install`,
# which would download a browser of its own.
$(CHROMIUM):
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive DEBCONF_NOWARNINGS=yes apt-get install -y -qq --no-install-recommends chromium >/dev/null

# Debian's redis-server, installed only when missing: tests/system/test_cluster.py
# starts its own (127.0.0.1, a free port, no persistence), never the service.
REDIS_SERVER := /usr/bin/redis-server
$(REDIS_SERVER):
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive DEBCONF_NOWARNINGS=yes apt-get install -y -qq --no-install-recommends redis-server >/dev/null

$(BROWSER_DEPS): $(BROWSER_EXAMPLE)/package-lock.json
	npm ci --prefix $(BROWSER_EXAMPLE) --no-audit --no-fund --loglevel=error

# The page's script, bundled for the browser (the package's "build" script).
$(BROWSER_BUNDLE): $(BROWSER_DEPS) $(BROWSER_EXAMPLE)/package.json $(BROWSER_EXAMPLE)/src/main.js
	npm run --prefix $(BROWSER_EXAMPLE) --silent build

browser: $(CHROMIUM) $(BROWSER_BUNDLE)

# docs/img/browser.png, the page as tests/system/test_browser.py leaves it.
screenshot: $(STAMP) browser
	WSRPC_UPDATE_SCREENSHOT=1 $(BIN)/python -X dev -m pytest -q tests/system/test_browser.py -k calls_and_pushes

# tests/ has four folders: core (sans-I/O, no sockets), io (the asyncio layer
# over real sockets), transports (each transport on its own) and system
# (examples, docs, typing, packaging, TGrid and the browser). The io tests
# run a second time on the fast transport (picows), made the default of
# every server and connector they create.
IO_TESTS := tests/io

# Both passes run on every core (pytest-xdist): most tests wait on sockets,
# child processes or timeouts as much as they compute. --dist loadfile keeps
# a module's tests in one worker, so its module-scoped fixtures (Redis and
# its nodes, the browser) start once. `make test WORKERS=0` runs the suite
# in one process. A worker that dies ends the run at once, naming the test
# it was running (--max-worker-restart=0): with --dist loadfile, pytest-xdist
# 3.8 reruns that test in the replacement worker and can then wait for ever
# (pytest-dev/pytest-xdist#784, #1371), which a CI run once did here.
WORKERS ?= auto
PYTEST := $(BIN)/python -X dev -m pytest -n $(WORKERS) --dist loadfile --max-worker-restart=0

demo: $(STAMP)
	$(BIN)/python examples/demo.py

test: $(STAMP) $(NODE_DEPS) $(CHROMIUM) $(BROWSER_BUNDLE) $(REDIS_SERVER) lint
	$(BIN)/mypy
	$(PYTEST)
	WSRPC_TEST_TRANSPORT=picows $(PYTEST) $(IO_TESTS)

types: $(STAMP)
	$(BIN)/mypy

lint: $(STAMP)
	$(BIN)/ruff check wsrpc tests examples
	$(BIN)/ruff format --check wsrpc tests examples

format: $(STAMP)
	$(BIN)/ruff format wsrpc tests examples
	$(BIN)/ruff check --fix wsrpc tests examples

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .pytest_cache .ruff_cache tests/interop/node_modules \
		$(BROWSER_EXAMPLE)/node_modules $(BROWSER_EXAMPLE)/dist
