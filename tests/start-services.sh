#!/usr/bin/env bash
# Start the daemons the integration tests need, where no init system has done it (CI, containers).
# Idempotent; does nothing for a non-root user.
set -u
[ "$(id -u)" = 0 ] || exit 0
if command -v libvirtd >/dev/null 2>&1; then
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
exit 0
