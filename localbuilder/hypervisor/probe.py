"""Pick the accelerator: is KVM usable here, or do we fall back to TCG?

"/dev/kvm opens" is not a usability test (FACTS §1): under broken nested virtualization KVM_CREATE_VM
succeeds and guests then run ~100× slower than TCG. So we boot a tiny payload under ``-accel kvm``
with a short deadline and time it. The payload is a 512-byte boot sector assembled below: a fixed
real-mode loop, then a write to ``isa-debug-exit``, which ends qemu with exit status
``(value << 1) | 1``. Healthy KVM finishes in well under 0.5 s (qemu start included); on the broken
host SeaBIOS alone took 2.7 s under KVM (0.06 s under TCG).

The verdict is cached per host (kernel release, qemu version, CPU model) under ``paths.cache_dir()``;
delete ``accel-probe.json`` there to probe again.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import platform
import signal
import struct
import tempfile
import time
from pathlib import Path

from localbuilder import paths
from localbuilder.errors import AcceleratorError, UsageError
from localbuilder.hypervisor.spec import Accel
from localbuilder.run import PIPE, TimeoutExpired, run, spawn

log = logging.getLogger("localbuilder.hypervisor.probe")

QEMU = "qemu-system-x86_64"
KVM_DEVICE = Path("/dev/kvm")
CACHE_FILE = "accel-probe.json"
# 20 M iterations of `dec ecx; jnz`: ~0.15 s under TCG here, a few ms on healthy KVM. Long enough that
# a 100× slow-down cannot hide inside qemu's own start-up time, short enough to cost nothing.
LOOP_ITERATIONS = 20_000_000
DEADLINE = 3.0
# The payload writes this to the debug-exit port; qemu then exits with (EXIT_VALUE << 1) | 1 = 33, a
# status no qemu failure produces, so "33" proves the loop ran to its end.
EXIT_VALUE = 0x10
EXPECTED_STATUS = (EXIT_VALUE << 1) | 1
DEBUG_EXIT_PORT = 0xF4

# How much longer guest operations take under TCG than under KVM, for internal deadlines (boot, SSH,
# shutdown). Boot-to-SSH under TCG was ~65 s here against ~10-15 s typical with KVM.
TIMEOUT_SCALE: dict[Accel, float] = {Accel.kvm: 1.0, Accel.tcg: 4.0}


def timeout_scale(accel: Accel) -> float:
    return TIMEOUT_SCALE[accel]


def boot_sector(iterations: int = LOOP_ITERATIONS) -> bytes:
    """A 512-byte MBR that counts ``iterations`` down and exits qemu through isa-debug-exit."""
    if not 0 < iterations < 2**32:
        raise ValueError(f"iterations must fit in 32 bits, got {iterations}")
    code = b"".join([
        b"\xfa",                                    # cli: no interrupts can stretch the loop
        b"\x66\xb9" + struct.pack("<I", iterations),  # mov ecx, iterations
        b"\x66\x49",                                # loop: dec ecx
        b"\x75\xfc",                                # jnz loop (-4 bytes)
        b"\xba" + struct.pack("<H", DEBUG_EXIT_PORT),  # mov dx, 0xf4
        b"\xb0" + bytes([EXIT_VALUE]),              # mov al, EXIT_VALUE
        b"\xee",                                    # out dx, al  -> qemu exits
        b"\xf4",                                    # hlt (not reached)
        b"\xeb\xfd",                                # jmp hlt
    ])  # fmt: skip
    return code + b"\0" * (510 - len(code)) + b"\x55\xaa"


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    usable: bool
    seconds: float | None  # wall time of the probe guest, None when it could not run
    reason: str  # one line for the user: why KVM is (not) usable
    cacheable: bool = True  # a missing device or a permission problem can change; not cached

    def to_dict(self) -> dict[str, object]:
        return {"usable": self.usable, "seconds": self.seconds, "reason": self.reason}


def host_key(qemu: str = QEMU) -> str:
    """What a verdict depends on: kernel, qemu build and CPU. A change of any re-runs the probe."""
    version = run([qemu, "--version"], check=False).stdout.splitlines()
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor()
    return f"{platform.release()}|{version[0] if version else '?'}|{cpu}"


def probe_kvm(*, qemu: str = QEMU, device: Path = KVM_DEVICE, deadline: float = DEADLINE) -> ProbeResult:
    """Boot the probe payload under KVM; usable only if it finishes within ``deadline`` seconds."""
    if not device.exists():
        return ProbeResult(False, None, f"{device} does not exist (no KVM module, or no hardware "
                           "virtualization)", cacheable=False)
    if not os.access(device, os.R_OK | os.W_OK):
        return ProbeResult(False, None, f"cannot open {device}: permission denied", cacheable=False)
    with tempfile.TemporaryDirectory(prefix="lb-kvm-probe-") as tmp:
        image = Path(tmp) / "probe.img"
        image.write_bytes(boot_sector())
        argv = [
            qemu, "-accel", "kvm", "-machine", "pc", "-m", "16", "-nodefaults", "-no-user-config",
            "-display", "none", "-vga", "none",
            "-drive", f"file={image},format=raw,if=ide",
            "-device", f"isa-debug-exit,iobase={DEBUG_EXIT_PORT:#x},iosize=0x04",
        ]  # fmt: skip
        start = time.monotonic()
        proc = spawn(argv, stderr=PIPE)
        try:
            _, err = proc.communicate(timeout=deadline)
        except TimeoutExpired:
            # Kill the whole session (spawn() starts one) so a wrapper script's children go too.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.communicate()
            return ProbeResult(False, None, f"the KVM probe guest did not finish within {deadline:.1f} s "
                               "(healthy KVM: < 0.5 s); KVM is present but unusably slow, typically "
                               "nested virtualization")
        elapsed = time.monotonic() - start
    stderr = err.decode("utf-8", "replace").strip()
    if proc.returncode != EXPECTED_STATUS:
        last = stderr.splitlines()[-1] if stderr else f"exit status {proc.returncode}"
        return ProbeResult(False, None, f"qemu could not run a KVM guest: {last}", cacheable=False)
    return ProbeResult(True, round(elapsed, 3), f"KVM probe guest finished in {elapsed:.2f} s")


def _cache_path() -> Path:
    return paths.cache_dir() / CACHE_FILE


def cached_probe(*, qemu: str = QEMU, device: Path = KVM_DEVICE, deadline: float = DEADLINE) -> ProbeResult:
    """probe_kvm(), with the verdict remembered per host key (see the module docstring)."""
    key = host_key(qemu)
    cache = _cache_path()
    try:
        data = json.loads(cache.read_text())
        entry = data.get(key) if isinstance(data, dict) else None
        # The device may have vanished or lost its permissions since: re-check the cheap part.
        if isinstance(entry, dict) and device.exists() and os.access(device, os.R_OK | os.W_OK):
            log.debug("KVM verdict from cache %s: %s", cache, entry)
            reason = str(entry["reason"]) + " (cached)"
            return ProbeResult(bool(entry["usable"]), entry.get("seconds"), reason)
    except (OSError, ValueError, KeyError):
        data = {}
    result = probe_kvm(qemu=qemu, device=device, deadline=deadline)
    log.debug("KVM probe: %s", result)
    if result.cacheable:
        if not isinstance(data, dict):
            data = {}
        data[key] = result.to_dict()
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        tmp.replace(cache)
    return result


def resolve_accel(requested: str | Accel, *, qemu: str = QEMU, device: Path = KVM_DEVICE) -> Accel:
    """``auto`` → KVM when the probe passes, else TCG with a loud warning; ``kvm`` insists; ``tcg`` is TCG."""
    choice = str(requested).lower()
    if choice == "tcg":
        return Accel.tcg
    if choice not in ("auto", "kvm"):
        raise UsageError(f"unknown accelerator {requested!r}", hint="Use --accel auto, kvm or tcg.")
    result = cached_probe(qemu=qemu, device=device)
    if result.usable:
        log.debug("using KVM: %s", result.reason)
        return Accel.kvm
    if choice == "kvm":
        hint = "Use --accel auto or --accel tcg to run without KVM (much slower)."
        if "permission" in result.reason:
            hint = f"Add your user to the group owning {device} (usually 'kvm') and log in again, or " + hint
        raise AcceleratorError(f"KVM is not usable: {result.reason}", hint=hint)
    log.warning(
        "KVM is not usable (%s). FALLING BACK TO TCG SOFTWARE EMULATION: guests run several times "
        "slower (boot to SSH ~1 min) and internal timeouts are scaled ×%.0f.",
        result.reason, timeout_scale(Accel.tcg),
    )
    return Accel.tcg
