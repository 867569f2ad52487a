# localbuilder — developer and CI entry points. `make setup` is idempotent and works as root on a
# fresh Debian 12; every other target depends on it.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
APT_PACKAGES := qemu-system-x86 qemu-utils ovmf libvirt-daemon-system libvirt-dev pkg-config gcc \
	python3-dev python3-venv debootstrap e2fsprogs fdisk mount util-linux mtools dosfstools \
	iproute2 procps packer \
	libguestfs-tools libguestfs-xfs linux-image-amd64 lvm2 xfsprogs ntfs-3g libwin-hivex-perl
STAMP := $(VENV)/.setup-done
PYTEST_ARGS ?=
# Test processes. A TCG guest keeps one core busy while its test mostly waits, so two workers on a
# 2-core machine run two guests side by side: `make test` in ~half the time. Whole files go to one
# worker (--dist loadfile), so a module's shared guest, image and checkpoints stay in one process.
TEST_WORKERS ?= 2

.PHONY: setup demo test test-fast lint bench fuzz services clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@if [ "$$(id -u)" = 0 ]; then \
		missing=$$(dpkg-query -W -f='$${Package} $${Status}\n' $(APT_PACKAGES) 2>/dev/null | grep -v 'install ok installed' | cut -d' ' -f1; \
		           for p in $(APT_PACKAGES); do dpkg-query -W $$p >/dev/null 2>&1 || echo $$p; done); \
		missing=$$(echo $$missing | tr ' ' '\n' | sort -u | tr '\n' ' '); \
		if [ -n "$${missing// }" ]; then \
			echo "installing: $$missing"; \
			apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
		fi; \
	else echo "not root: skipping apt packages ($(APT_PACKAGES))"; fi
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,lint,libvirt]'
	touch $(STAMP)

# Start libvirtd/virtlogd when this machine has no systemd to do it (CI, containers).
services: setup
	@bash tests/start-services.sh

demo: setup
	@bash examples/demo.sh

test: setup services
	$(PY) -m pytest -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile --durations=30 $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile -m "not integration" $(PYTEST_ARGS)

fuzz: setup
	HYPOTHESIS_FUZZ_EXAMPLES=10000 $(PY) -m pytest -p no:cacheprovider tests/test_fuzz.py tests/security/test_fuzz_inputs.py $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check localbuilder tests bench
	$(VENV)/bin/mypy

bench: setup services
	$(PY) -m bench

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
