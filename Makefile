# linkdest.backup: the two entry points are `make demo` and `make test`.
# Both bootstrap a fresh Debian machine themselves (as root): Debian tools and a
# running Docker engine (scripts/ensure-host), a pinned venv, local base images.

SHELL := /bin/bash
.SHELLFLAGS := -o errexit -o nounset -o pipefail -c
VENV := .venv
BIN := $(abspath $(VENV))/bin
# The checkout is the linkdest.backup through the committed symlink
# collections/ansible_collections/linkdest/backup -> the repository root.
COLLECTIONS := collections
export PATH := $(BIN):$(PATH)
export ANSIBLE_COLLECTIONS_PATH := $(abspath $(COLLECTIONS))
SCENARIOS ?= default lifecycle mirror security btrfs journey

.PHONY: help host venv images lint unit bad-input sanity build-check molecule test demo demo-clean bench clean

help:
	@echo "make demo        containers + the real site.yml + three real backups (the third: nothing changed, no snapshot)"
	@echo "make demo-clean  remove what the demo made"
	@echo "make test        lint, unit tests, sanity, built tarball, molecule ($(SCENARIOS))"
	@echo "make bench       timings against bare rsync, in the demo containers"

host:
	scripts/ensure-host

$(VENV)/.installed: requirements.txt
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

venv: $(VENV)/.installed

images: host
	# bullseye: Python 3.9, the Python a Mac's /usr/bin/python3 is (journey's new laptop).
	images/build bookworm bullseye trixie

lint: venv host
	$(BIN)/yamllint .
	$(BIN)/ansible-lint
	$(BIN)/ruff check plugins tests molecule bench
	$(BIN)/ruff format --check plugins tests molecule bench
	# What runs on a laptop must run on Python 3.9 (macOS's /usr/bin/python3).
	cd plugins/module_utils && $(BIN)/vermin --target=3.9- --violations --no-tips --quiet \
	  changelist.py client.py client_platform.py codes.py manifest.py
	shellcheck scripts/ensure-host scripts/demo scripts/sanity scripts/build-check scripts/molecule-all scripts/btrfs-drive images/build .ci/run bench/*.sh

unit: venv
	$(BIN)/pytest -q tests/unit

# The real site.yml against this machine in --check mode with bad settings
# (each must stop in the first play with a message naming the variable), and
# the btrfs backend's library on real btrfs images (root, btrfs-progs).
bad-input: venv host
	$(BIN)/pytest -q tests/integration

sanity: venv
	scripts/sanity

build-check: venv
	scripts/build-check

molecule: venv images
	scripts/molecule-all $(SCENARIOS)

test: lint unit bad-input sanity build-check molecule

demo: venv images
	scripts/demo

demo-clean: venv
	$(BIN)/molecule destroy -s demo

bench: venv images
	bench/run.sh
	bench/mirror_bench.sh
	bench/prune_bench.sh
	bench/backends.sh
	BENCH_FILES=100000 bench/backends.sh
	$(BIN)/python bench/record_bench.py
	$(BIN)/python bench/scrub_bench.py

clean: demo-clean
	rm -rf $(VENV) .ansible .cache tests/output
