#!/usr/bin/env bash
# Start the daemons the integration tests need, where no init system has done it (CI, containers).
# Idempotent; libvirtd is started only by root.
set -u
# (each block below is independent: a failure is reported, and the tests that need it fail)
if [ "$(id -u)" = 0 ] && command -v libvirtd >/dev/null 2>&1; then
    # No udev here: /dev/kvm keeps the kernel's 0600 root:root. libvirt then finds KVM unusable for its
    # qemu user at every call, declares its cached qemu capabilities outdated ("KVM was enabled when
    # probing … but it is not available now") and probes qemu again, ~4 s a time: starting one domain took
    # ~1 min. Give /dev/kvm what Debian's udev rule (50-udev-default.rules) gives it: root:kvm 0660.
    # Guests still run under TCG here: localbuilder's own probe decides the accelerator (FACTS §1).
    if [ -c /dev/kvm ] && getent group kvm >/dev/null; then
        chgrp kvm /dev/kvm && chmod 0660 /dev/kvm
    fi
    if ! virsh -c qemu:///system version >/dev/null 2>&1; then
        pgrep -x virtlogd >/dev/null || virtlogd -d
        pgrep -x libvirtd >/dev/null || libvirtd -d
        for _ in $(seq 1 50); do
            virsh -c qemu:///system version >/dev/null 2>&1 && break
            sleep 0.2
        done
    fi
    virsh -c qemu:///system version >/dev/null 2>&1 && echo "libvirtd: running" || echo "libvirtd: NOT running"
fi

# Azurite (Azure Storage emulator) for the upload tests: npm package pinned to a release that runs on
# Debian 12's Node.js (azurite >= 3.36 needs Node 22). Installed into the repo's .cache/npm.
repo="$(cd "$(dirname "$0")/.." && pwd)"
if [ ! -x "$repo/.cache/npm/node_modules/.bin/azurite-blob" ]; then
    if ! command -v npm >/dev/null 2>&1; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm >/dev/null
    fi
    mkdir -p "$repo/.cache/npm"
    (cd "$repo/.cache/npm" && npm install --silent --no-audit --no-fund --prefix . azurite@3.35.0 >/dev/null) \
        && echo "azurite: installed" || echo "azurite: install FAILED"
fi
exit 0
