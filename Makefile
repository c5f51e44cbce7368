# Cloud Desktop Service. Two commands do all the set-up on a fresh machine:
#   make lab    create .venv, install the project with its lab extras, run the whole system
#   make test   install what the tests need, lint the Ansible, run the tests (SQLite, then PostgreSQL)
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
	@echo "make bench   benchmarks (not written yet: see README)"

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
	CONTROLPLANE_TEST_DATABASE=postgresql $(VENV)/bin/pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ansible-lint --profile production roles playbooks molecule
	$(VENV)/bin/yamllint -s roles playbooks inventory config molecule

# Every scenario in molecule/ (one per role): create starts its stand-ins, converge, idempotence,
# verify through the APIs, side_effect, destroy. molecule calls ansible-playbook and ansible-config
# from PATH, hence the venv's bin first. See molecule/README.md.
molecule: install
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/molecule test --all

bench:
	@echo "make bench: the benchmark suite (issue 7) is not written yet; nothing was measured." >&2
	@exit 1

clean:
	rm -rf $(VENV) var/controlplane.db* .pytest_cache
