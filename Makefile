# vfs-agent: every target does its own set-up on a fresh Debian 12 machine (as root).
#
#   make demo   boot a real guest with two shares and show vfs-agent at work
#   make test   unit tests, lint, and the real-guest tests
#
# Downloads and guest images are cached outside the checkout, in $(CACHE).

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
CACHE ?= /var/cache/vfs-agent-test
export VFS_AGENT_CACHE := $(CACHE)

HOST_DEBS := qemu-system-x86 qemu-utils debootstrap busybox-static cpio e2fsprogs \
	libsystemd-dev pkg-config gcc python3-dev python3-venv util-linux systemd socat \
	dpkg-dev debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools \
	python3-wheel python3-build python3-installer rpm genisoimage lintian rpmlint \
	python3-click python3-pydantic python3-yaml
HOST_STAMP := $(CACHE)/host-debs.$(shell echo '$(HOST_DEBS)' | sha256sum | cut -c1-12).stamp
VENV_STAMP := $(VENV)/.stamp-$(shell cat pyproject.toml | sha256sum | cut -c1-12)
# A second environment with the lowest versions the .deb accepts (Debian 12's): pydantic 1.10.
VENV1 ?= .venv-pydantic1
FLOOR_PINS := pydantic==1.10.4 click==8.1.3 PyYAML==6.0 pyudev==0.24.0
VENV1_STAMP := $(VENV1)/.stamp-$(shell echo '$(FLOOR_PINS)' | cat - pyproject.toml | sha256sum | cut -c1-12)

.PHONY: all setup host-deps venv venv1 lint unit golden guest test demo image bench-boot bench-host bench-policy-boot bench-hotplug bench-idle bench packages clean

all: test

setup: host-deps venv

host-deps: $(HOST_STAMP)
$(HOST_STAMP):
	@echo ">>> installing host packages (Debian): $(HOST_DEBS)"
	mkdir -p $(CACHE)
	apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(HOST_DEBS)
	touch $@

venv: $(VENV_STAMP)
$(VENV_STAMP): pyproject.toml | $(HOST_STAMP)
	@echo ">>> creating the virtual environment in $(VENV)"
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

venv1: $(VENV1_STAMP)
$(VENV1_STAMP): pyproject.toml | $(HOST_STAMP)
	@echo ">>> creating the floor-version environment in $(VENV1): $(FLOOR_PINS)"
	rm -rf $(VENV1)
	$(PYTHON) -m venv $(VENV1)
	$(VENV1)/bin/pip install -q --upgrade pip
	$(VENV1)/bin/pip install -q -e '.[test]' $(FLOOR_PINS)
	touch $@

lint: venv
	$(VENV)/bin/ruff check agent tests bench
	$(VENV)/bin/ruff format --check agent tests bench
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy bench tests/guestlib
	cd agent && ../$(VENV)/bin/lint-imports --no-cache ../pyproject.toml

# The unit tests twice: pydantic 2.x (.venv) and the floor versions with pydantic 1.10 (.venv1).
unit: venv venv1
	VFS_AGENT_TEST_PYDANTIC=2 $(VENV)/bin/pytest -q -m 'not guest' tests
	VFS_AGENT_TEST_PYDANTIC=1 $(VENV1)/bin/pytest -q -m 'not guest' tests

# Rewrite the generator's golden trees (tests/generator/*/expected) from what it writes now;
# review `git diff tests/generator` before committing.
golden: venv
	VFS_AGENT_REGENERATE_GOLDEN=1 $(VENV)/bin/pytest -q -p no:randomly tests/unit/test_generator_golden.py

# The guest tests in GUEST_STREAMS streams (pytest-xdist, one test module at a time per
# stream, each stream one guest): a TCG guest keeps one core busy, and the machine has two.
GUEST_STREAMS ?= 2
GUEST_PYTEST = VFS_AGENT_GUEST_SLOTS=$(GUEST_STREAMS) $(VENV)/bin/pytest -m guest \
	-n $(GUEST_STREAMS) --dist loadfile

guest: setup
	$(GUEST_PYTEST) -q tests

# Everything. Lint and the unit tests (host only) run beside the guest tests; their output is
# kept in a file and shown after the guest tests', and either side failing fails the target.
test: setup venv1
	@host_log=$$(mktemp /tmp/vfs-agent-host-tests.XXXXXX); \
	$(MAKE) --no-print-directory -k lint unit >"$$host_log" 2>&1 & host=$$!; \
	VFS_AGENT_TEST_PYDANTIC=2 $(GUEST_PYTEST) tests; guest_rc=$$?; \
	wait $$host; host_rc=$$?; \
	echo ">>> lint and unit tests, run beside the guest tests (exit status $$host_rc):"; \
	cat "$$host_log"; rm -f "$$host_log"; \
	echo ">>> guest tests: exit status $$guest_rc; lint and unit tests: exit status $$host_rc"; \
	[ $$guest_rc -eq 0 ] && [ $$host_rc -eq 0 ]

demo: setup
	$(VENV)/bin/python -m tests.guestlib.demo

# The guest image alone (built once, then reused from $(CACHE)/guest).
image: setup
	$(VENV)/bin/python -m tests.guestlib.image

# Boot reliability and speed of the test guest on this machine (FAST/FULL boots).
FAST ?= 10
FULL ?= 3
bench-boot: setup
	$(VENV)/bin/python bench/boot_reliability.py --fast $(FAST) --full $(FULL)

# Benchmarks without a guest: start-up of each command and of the generator against
# `python3 -I -c pass`, and plan() over thousands of shares and rules.
bench-host: venv
	$(VENV)/bin/python bench/startup.py
	$(VENV)/bin/python bench/plan_scale.py
	$(VENV)/bin/python bench/executors.py

# What a user of a systemd guest feels (guests, one at a time; figures in README "Timings"):
# the boot to multi-user.target with the policy against hand-written fstab (BOOTS of each,
# interleaved) and the generator's run time; hotplug through udev, device and mount units
# against the daemon, with where the time goes, and what one reconcile of the daemon costs;
# the daemon's wakeups and RSS while idle.
BOOTS ?= 5
bench-policy-boot: setup
	$(VENV)/bin/python bench/boot_policy_vs_fstab.py --boots $(BOOTS)
bench-hotplug: setup
	$(VENV)/bin/python bench/hotplug_latency.py
	$(VENV)/bin/python bench/hotplug_systemd.py
	$(VENV)/bin/python bench/reconcile_cost.py
bench-idle: setup
	$(VENV)/bin/python bench/daemon_idle.py

# Every benchmark: the host ones, boot reliability, the three above, and mount-all of 24
# shares against a shell loop.
bench: bench-host bench-boot bench-policy-boot bench-hotplug bench-idle
	$(VENV)/bin/python bench/mount_all_scale.py

# The .deb and the .rpm, built from this checkout in a temporary directory, into $(PKG_OUT).
PKG_OUT ?= dist
packages: host-deps
	packaging/build-deb.sh $(PKG_OUT)
	packaging/build-rpm.sh $(PKG_OUT)

clean:
	rm -rf $(VENV) $(VENV1) build dist agent/*.egg-info
