# Cloud Desktop Service. Two commands do all the set-up on a fresh machine:
#   make lab    create .venv, install the project with its lab extras, run the whole system
#   make test   install what the tests need, lint the Ansible, run the tests (SQLite, then PostgreSQL
#               without the Proxmox/Guacamole fault tests, which do not depend on the database)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: help install lab test test-sqlite test-postgresql lint molecule bench clean

help:
	@echo "make lab     run the whole system on this machine (API, workers, Proxmox and Guacamole stand-ins, Redis)"
	@echo "make test    install test dependencies and run the test suite on SQLite and on PostgreSQL"
	@echo "make lint    ansible-lint and yamllint on roles and playbooks"
	@echo "make molecule  the roles' Molecule scenarios (molecule/), against lab stand-ins on free ports"
	@echo "make bench   benchmarks: API load (wrk) and WebSocket fan-out, on SQLite and PostgreSQL (benchmarks/)"

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[lab,test]'
	@touch $(STAMP)

install: $(STAMP)

lab: install
	$(VENV)/bin/controlplane lab

test: install lint
	$(MAKE) --no-print-directory molecule
	$(MAKE) --no-print-directory test-sqlite
	$(MAKE) --no-print-directory test-postgresql

test-sqlite: install
	CONTROLPLANE_TEST_DATABASE=sqlite $(VENV)/bin/pytest $(PYTEST_ARGS)

test-postgresql: install
	PYTHON=$(PY) scripts/ensure-postgres.sh
	CONTROLPLANE_TEST_DATABASE=postgresql $(VENV)/bin/pytest -m "not faults" $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ansible-lint --profile production roles playbooks molecule
	$(VENV)/bin/yamllint -s roles playbooks inventory config molecule

# Every scenario in molecule/ (one per role): create starts its stand-ins, converge, idempotence,
# verify through the APIs, side_effect, destroy. molecule calls ansible-playbook and ansible-config
# from PATH, hence the venv's bin first. See molecule/README.md.
molecule: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/molecule test --all

# Load (benchmarks/load.py): 60 s of GETs under wrk against the API under gunicorn, and status events to
# 100 WebSocket clients; on each database in BENCH_DATABASES. Exits non-zero when a target is missed.
BENCH_DATABASES ?= sqlite postgresql
bench: install
	@for database in $(BENCH_DATABASES); do \
	  $(PY) benchmarks/load.py --database $$database || exit 1; \
	done
	@echo "Not measured yet (issue 7): create-to-RUNNING overhead by phase, concurrent creates, peak memory."

clean:
	rm -rf $(VENV) var/controlplane.db* .pytest_cache
