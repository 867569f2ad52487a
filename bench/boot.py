"""Boot benchmark: start → SSH ready → clean ACPI power-off, direct QEMU vs libvirt, 1 vs 2 vCPUs.

Boots the Debian 12 test image (``.cache/test-images/READY``) through ``localbuilder.guest.linux`` with the
accelerator ``resolve_accel("auto")`` picks (TCG on the development machines: FACTS §1). Each boot
holds ``/tmp/lb-guest.lock`` so that it never competes with another guest for the CPUs.
``LB_BENCH_BOOT_REPEATS`` (default 1) boots each configuration that many times; medians are reported.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from localbuilder.guest.linux import linux_guest
from localbuilder.hypervisor.probe import resolve_accel

REPO = Path(__file__).resolve().parents[1]
LOCK = Path("/tmp/lb-guest.lock")
CONFIGS = [("qemu", 1), ("qemu", 2), ("libvirt", 1), ("libvirt", 2)]


@contextlib.contextmanager
def guest_lock() -> Iterator[None]:
    with LOCK.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def test_image() -> Path:
    ready = REPO / ".cache" / "test-images" / "READY"
    if not ready.exists():
        raise RuntimeError(f"{ready} is missing: build the Debian test image first (pytest builds it)")
    return Path(ready.read_text().strip())


def boot_once(image: Path, backend: str, cpus: int, accel: Any) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="lb-bench-boot-") as tmp, guest_lock():
        t0 = time.monotonic()
        with linux_guest(image, "qcow2", workdir=Path(tmp), backend=backend, accel=accel, cpus=cpus,
                         memory_mib=1024, wait_for_cloud_init=False, progress=False) as g:
            ssh = time.monotonic() - t0
            timings = g.timings
        return {"ssh_ready": round(ssh, 1), "poweroff": round(timings["shutdown"], 1),
                "total": round(time.monotonic() - t0, 1)}


def main() -> dict[str, Any]:
    image = test_image()
    accel = resolve_accel("auto")
    repeats = int(os.environ.get("LB_BENCH_BOOT_REPEATS", "1"))
    runs: dict[str, list[dict[str, float]]] = {}
    for backend, cpus in CONFIGS:
        key = f"{backend}-smp{cpus}"
        runs[key] = [boot_once(image, backend, cpus, accel) for _ in range(repeats)]
    medians = {k: {m: statistics.median(r[m] for r in v) for m in ("ssh_ready", "poweroff", "total")}
               for k, v in runs.items()}
    def ratio(a: str, b: str) -> float:
        return round(medians[a]["ssh_ready"] / medians[b]["ssh_ready"], 2)

    ratios = {
        "libvirt/qemu ssh_ready (smp1)": ratio("libvirt-smp1", "qemu-smp1"),
        "libvirt/qemu ssh_ready (smp2)": ratio("libvirt-smp2", "qemu-smp2"),
        "smp2/smp1 ssh_ready (qemu)": ratio("qemu-smp2", "qemu-smp1"),
        "smp2/smp1 ssh_ready (libvirt)": ratio("libvirt-smp2", "libvirt-smp1"),
    }
    print(f"\nboot benchmark ({accel.value}, {repeats} run(s) each, medians in seconds)")
    print(f"{'config':<14} {'SSH ready':>10} {'power-off':>10} {'total':>8}")
    for key, m in medians.items():
        print(f"{key:<14} {m['ssh_ready']:>10.1f} {m['poweroff']:>10.1f} {m['total']:>8.1f}")
    for name, value in ratios.items():
        print(f"{name:<32} {value:.2f}")
    return {"accel": accel.value, "repeats": repeats, "runs": runs, "medians": medians, "ratios": ratios}


if __name__ == "__main__":
    main()
