# Cloud Desktop Service. Two commands do all the set-up on a fresh machine:
#   make lab    create .venv, install the project with its lab extras (and, as root, Debian's xvfb, x11vnc,
#               xterm and novnc for real VM screens), run the whole system
#   make test   install what the tests need (Debian's chromium for the browser tests, and
#               xvfb, x11vnc, xterm and novnc for the lab's screens), lint the
#               Ansible, run the roles' Molecule scenarios and the tests (SQLite, and PostgreSQL without the
#               tests that have no database, the Proxmox/Guacamole fault tests, the playbook tests and the
#               browser tests, which do not depend on the database; the API they drive is tested on both),
#               all four at once, each pass in parallel (pytest-xdist:
#               every worker has its own databases, Redis and lab) and in a random order (pytest-randomly)
# and one for the inner loop:
#   make check  lint and, beside it, the unit and API tests (no lab) on SQLite, in parallel: about 3 minutes
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?= --durations=25
# xdist workers per pass; each worker starts its own lab (stand-ins, two RQ workers, the API). The
# PostgreSQL pass has a third of the end-to-end tests, and under make test it runs beside SQLite's.
TEST_WORKERS ?= 3
PG_TEST_WORKERS ?= 2
CHECK_WORKERS ?= 3
# Generated cases per operation of the fuzz tests (tests/fuzz), beyond their boundaries and mutations:
# 100 on PostgreSQL; 50 on SQLite, the longer pass of make test (the same operations, fewer random
# cases); 5 in the inner loop.
CHECK_FUZZ_EXAMPLES ?= 5
SQLITE_FUZZ_EXAMPLES ?= 50
# xdist hands out one test at a time (each worker keeps two queued), so the long tests, first in each pass
# (tests/conftest.py), spread over all workers instead of landing in the first worker's initial chunk.
PYTEST := $(VENV)/bin/pytest -p randomly
XDIST := --dist load --maxschedchunk 1

.PHONY: help install lab check check-tests test test-sqlite test-postgresql lint lint-python lint-ansible molecule bench clean

help:
	@echo "make lab     run the whole system on this machine (API, workers, Proxmox and Guacamole stand-ins, Redis)"
	@echo "make test    install test dependencies and run the test suite on SQLite and on PostgreSQL"
	@echo "make check   the inner loop: lint, unit and API tests without the lab (SQLite)"
	@echo "make lint    ruff, the import layers (import-linter), duplicate code (pylint), ansible-lint and yamllint"
	@echo "make molecule  the roles' Molecule scenarios (molecule/), against lab stand-ins on free ports"
	@echo "make bench   benchmarks: API load (wrk, flat out and paced), WebSocket fan-out, chat overhead, create overhead by phase,"
	@echo "             concurrent creates and peak memory, on SQLite and PostgreSQL (benchmarks/)"

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# uv (from PyPI) installs the same versions as pip in a fraction of the time; pip does it when uv cannot.
	@# Compiled now, as pip does: not by every process that imports a module first (litellm alone is minutes).
	$(PY) -m pip install --quiet --disable-pip-version-check uv && \
	  $(VENV)/bin/uv pip install --quiet --compile-bytecode --python $(PY) -e '.[lab,test]' || \
	  $(PY) -m pip install --quiet --disable-pip-version-check -e '.[lab,test]'
	@touch $(STAMP)

install: $(STAMP)

lab: install
	@scripts/ensure-debian-packages.sh lab
	$(VENV)/bin/controlplane lab

# Lint, Molecule and the two database passes run at the same time: most of their time is Ansible's (CPU),
# and one alone leaves the machine idle while it waits on a playbook, a guest agent or its last long test.
# Each one's output is shown whole once it ends (--output-sync).
test: install
	$(MAKE) --no-print-directory -j4 --output-sync=target lint molecule test-sqlite test-postgresql

test-sqlite: install
	scripts/ensure-debian-packages.sh test
	CONTROLPLANE_TEST_DATABASE=sqlite CONTROLPLANE_TEST_FUZZ_EXAMPLES=$(SQLITE_FUZZ_EXAMPLES) \
	  $(PYTEST) -n $(TEST_WORKERS) $(XDIST) $(PYTEST_ARGS)

test-postgresql: install
	PYTHON=$(PY) scripts/ensure-postgres.sh
	CONTROLPLANE_TEST_DATABASE=postgresql $(PYTEST) -n $(PG_TEST_WORKERS) $(XDIST) -m "not faults and not playbooks and not browser and not dbfree" $(PYTEST_ARGS)

# Everything that needs no lab (no stand-ins, no workers, no playbooks): unit, API, stand-in and fuzz tests.
# The lint runs beside the tests: the tests leave a core idle part of the time (waits on processes).
check: install
	$(MAKE) --no-print-directory -j2 --output-sync=target lint check-tests

check-tests: install
	scripts/ensure-debian-packages.sh screens
	CONTROLPLANE_TEST_DATABASE=sqlite CONTROLPLANE_TEST_FUZZ_EXAMPLES=$(CHECK_FUZZ_EXAMPLES) \
	  $(PYTEST) -n $(CHECK_WORKERS) $(XDIST) -m "not lab and not e2e" $(PYTEST_ARGS)

# The Python checks and the Ansible checks at once (pylint's duplicate-code pass and ansible-lint take
# most of the time, each about 15 s).
lint: install
	$(MAKE) --no-print-directory -j2 --output-sync=target lint-python lint-ansible

lint-python: install
	$(VENV)/bin/ruff check controlplane tests benchmarks scripts roles
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/pylint controlplane roles/*/action_plugins roles/*/library

lint-ansible: install
	$(VENV)/bin/ansible-lint --profile production roles playbooks molecule
	$(VENV)/bin/yamllint -s roles playbooks inventory config molecule

# Every scenario in molecule/ (one per role): create starts its stand-ins, converge, idempotence,
# verify through the APIs, side_effect, destroy. molecule calls ansible-playbook and ansible-config
# from PATH, hence the venv's bin first. See molecule/README.md.
molecule: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/molecule test --all

# Load (benchmarks/load.py): 60 s of GETs under wrk against the API under gunicorn, then 1000 requests/s
# held for each endpoint (--paced), and status events to 100 WebSocket clients. Create
# (benchmarks/create.py): create → RUNNING on the lab with fakepve's time scale 0, by phase; 10 and 50
# simultaneous creates; peak memory of the API and of a worker. On each database in BENCH_DATABASES;
# every benchmark runs, and make fails at the end when any missed a target (BENCH_CREATE_ARGS, by default
# "--pool 10 --sequential 20": 20 creates one after another from a warm pool of 10 are timed too, beside
# the floor of benchmarks/floor.py, are passed to create.py).
BENCH_DATABASES ?= sqlite postgresql
BENCH_CREATE_ARGS ?= --pool 10 --sequential 20
bench: install
	@status=0; for database in $(BENCH_DATABASES); do \
	  $(PY) benchmarks/load.py --database $$database --paced || status=1; \
	  $(PY) benchmarks/chat.py --database $$database || status=1; \
	  $(PY) benchmarks/create.py --database $$database $(BENCH_CREATE_ARGS) || status=1; \
	done; exit $$status

clean:
	rm -rf $(VENV) var/controlplane.db* .pytest_cache
