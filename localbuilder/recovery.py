"""Recovering after a crash: stop the guests of builds that were killed, and mark their runs Failed.

A ``localbuilder build`` that is SIGKILLed (or OOM-killed, or loses its terminal without SIGHUP handling)
runs no cleanup. Its direct-QEMU guest was started in a session of its own (``run.spawn``) and has no
parent-death signal, so it keeps running; a libvirt domain lives in the daemon anyway. The next
``localbuilder build``, ``show-runs`` or ``cancel`` calls ``recover_stale_runs()``, which, for every run
whose build process is gone:

* stops the guest recorded in ``state.json`` (``RunRecord.guest``, written when a guest came up) — qemu:
  SIGTERM, a grace period, SIGKILL; libvirt: destroy (+ undefine of a persistent domain) — and any qemu
  still running from one of the run's guest directories (a kill during boot, before the record was
  written);
* removes the guest's temporary files (overlay, seed with the build key, sockets), keeping the serial
  log, the run's work VHD and partial files, and the ``/var/tmp`` guest directory of a deep run path;
* marks the run Failed (Canceled if a cancel had been requested) with a message naming what it did.

A process is only signalled when it is provably the recorded guest: the same pid, the same start time
(``/proc/<pid>/stat`` field 22, so a reused pid is never hit) and the guest's unique name (``lb-`` + 10
random hex digits) in its command line. Guests kept on purpose by ``--on-error abort`` (``keptGuest``)
are left alone: the user asked for them, and ``localbuilder cancel`` stops them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from localbuilder import paths
from localbuilder.errors import LocalBuilderError
from localbuilder.hypervisor.libvirt import LibvirtHypervisor
from localbuilder.run import run as run_cmd
from localbuilder.state import (
    ActiveGuest,
    RunDir,
    RunRecord,
    RunState,
    _start_ticks,
    _stat_fields,
    iter_runs,
    now_iso,
)

log = logging.getLogger("localbuilder.recovery")

SERIAL_LOG = "serial.log"
# Where Build._guest_workdir puts a guest whose run path is too long for unix sockets (sun_path).
SHORT_WORKDIR_ROOT = Path("/var/tmp")
SHORT_WORKDIR_PREFIX = "lb-"
# qemu exits at once on SIGTERM ("terminating on signal 15"); the grace only covers a loaded host.
TERM_GRACE_SECONDS = 10.0
KILL_GRACE_SECONDS = 5.0
LOCK_FILE = ".recovery.lock"
# Files a killed build may leave in its run directory: the work VHD and conversion temporaries.
WORK_FILES = ("image.vhd", "image.vhd.partial", ".image.vhd.grow.qcow2")


@dataclasses.dataclass(frozen=True)
class RecoveredRun:
    run_dir: Path
    run_id: str
    template_name: str
    build_pid: int
    state: RunState
    stopped: tuple[str, ...]  # "qemu pid 1234", "libvirt domain lb-…": guests that were still running
    message: str


# -- processes --------------------------------------------------------------------------------------------


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [arg.decode(errors="replace") for arg in raw.split(b"\0") if arg]


def _alive(pid: int) -> bool:
    fields = _stat_fields(pid)
    return bool(fields) and fields[0] not in ("Z", "X")  # a zombie has exited already


def is_guest_process(pid: int, name: str, start_ticks: int | None) -> bool:
    """True when ``pid`` is a live process started at ``start_ticks`` whose command line names ``name``."""
    if not _alive(pid):
        return False
    if start_ticks is not None and _start_ticks(pid) != start_ticks:
        return False  # the pid was reused by a later process
    return any(name in arg for arg in _cmdline(pid))


def _qmp_socket(argv: list[str]) -> Path | None:
    """The QMP socket path from a qemu command line (``-qmp unix:PATH,server=on,…``; ``,,`` is a comma)."""
    for flag, value in zip(argv, argv[1:], strict=False):
        if flag == "-qmp" and value.startswith("unix:"):
            text = value[len("unix:"):].replace(",,", "\0").split(",", 1)[0]
            return Path(text.replace("\0", ","))
    return None


def _terminate(pid: int, name: str, start_ticks: int | None) -> bool:
    """SIGTERM, wait, SIGKILL — re-checking the identity before each signal. True if it is gone."""
    for sig, grace in ((signal.SIGTERM, TERM_GRACE_SECONDS), (signal.SIGKILL, KILL_GRACE_SECONDS)):
        if not is_guest_process(pid, name, start_ticks):
            return True
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return True
        except PermissionError as exc:
            log.warning("cannot stop guest %s (pid %d): %s", name, pid, exc)
            return False
        end = time.monotonic() + grace
        while time.monotonic() < end:
            if not is_guest_process(pid, name, start_ticks):
                return True
            time.sleep(0.1)
    return not is_guest_process(pid, name, start_ticks)


def _stop_qemu(pid: int, name: str, start_ticks: int | None) -> bool:
    """Stop one qemu and remove its QMP socket (and the private /tmp directory of a long path)."""
    sock = _qmp_socket(_cmdline(pid))
    gone = _terminate(pid, name, start_ticks)
    if gone and sock is not None:
        sock.unlink(missing_ok=True)
        parent = sock.parent
        if parent.name.startswith("lb-qmp-") and parent.parent == Path(tempfile.gettempdir()):
            with contextlib.suppress(OSError):
                parent.rmdir()
    return gone


def _stop_libvirt(guest: ActiveGuest) -> bool | None:
    """Destroy (and undefine, if persistent) the domain. True: stopped; False: not there; None: failed."""
    try:
        hv = LibvirtHypervisor(uri=guest.libvirt_uri)
    except LocalBuilderError as exc:
        log.warning("cannot reach libvirt to stop domain %s: %s", guest.name, exc.message)
        return None
    try:
        return hv.remove_domain(guest.name)
    finally:
        hv.close()


# -- files ------------------------------------------------------------------------------------------------


def clean_guest_dir(guest_dir: Path) -> None:
    """Remove everything a guest left in its private directory except the serial log (the record of
    what the guest did): the overlay, the seed with the build key, sockets, firmware variables."""
    if not guest_dir.is_dir() or guest_dir.is_symlink():
        return
    for entry in guest_dir.iterdir():
        if entry.name == SERIAL_LOG:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _short_target(link: Path) -> Path | None:
    """The /var/tmp/lb-* directory ``link`` points to, if it is one of ours."""
    if not link.is_symlink():
        return None
    target = Path(os.readlink(link))
    if target.parent != SHORT_WORKDIR_ROOT or not target.name.startswith(SHORT_WORKDIR_PREFIX):
        return None
    return target


def release_short_workdirs(run_path: Path) -> None:
    """Bring the serial logs of /var/tmp guest directories home into the run directory, and remove them.

    ``Build._guest_workdir`` links ``<run>/vm-<purpose>`` to a short /var/tmp directory when the run path
    is too long for unix sockets. Once the guest is gone the link is replaced by a real directory that
    holds the serial logs (same layout), so nothing is left under /var/tmp.
    """
    for link in sorted(run_path.glob("vm-*")):
        target = _short_target(link)
        if target is None:
            continue
        logs = [p.relative_to(target) for p in target.glob(f"*/{SERIAL_LOG}")] if target.is_dir() else []
        link.unlink()
        link.mkdir(mode=0o700)
        for rel in logs:
            dst = link / rel
            dst.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            shutil.move(target / rel, dst)
        shutil.rmtree(target, ignore_errors=True)
        log.debug("removed %s (serial logs moved to %s)", target, link)


def _guest_dirs(run_path: Path) -> list[Path]:
    """``<run>/vm-<purpose>/<guest name>`` directories (through a /var/tmp link too)."""
    return sorted(d for d in run_path.glob("vm-*/*") if d.is_dir())


def _remove_work_files(record: RunRecord, run_path: Path) -> None:
    for name in WORK_FILES:
        (run_path / name).unlink(missing_ok=True)
    # The default output directory belongs to this run alone: a half-placed VHD there is ours. A
    # directory given with --output-dir may be shared with other (parallel) runs: leave it alone.
    outputs = run_path / "outputs"
    if record.output_dir and Path(record.output_dir) == outputs and outputs.is_dir():
        for partial in outputs.glob("*.partial"):
            partial.unlink(missing_ok=True)


def remove_guest_files(run: RunDir, record: RunRecord, dirs: Iterable[Path] | None = None) -> None:
    """After the run's guests have stopped: what ``localbuilder cancel`` of a kept guest and the recovery
    of a killed build both leave — the serial logs — and nothing else (overlays, qemu.stderr, seed and
    key, sockets, the work VHD a kept validation guest booted from, the /var/tmp guest directory).
    ``dirs``: the guest directories (default: those under the run directory)."""
    for d in _guest_dirs(run.path) if dirs is None else dirs:
        clean_guest_dir(d)
    release_short_workdirs(run.path)
    _remove_work_files(record, run.path)


# -- runs -------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _recovery_lock(base: Path) -> Iterator[None]:
    # Two commands started at once must not both signal and rewrite the same run.
    with open(base / LOCK_FILE, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _stray_qemus(guest_dirs: list[Path], known: set[int]) -> list[tuple[int, str]]:
    """Live qemu processes started from one of ``guest_dirs``: (pid, guest name).

    A qemu of ours carries ``-name <guest name>`` (the directory's name, unique) and the directory
    itself (serial log, disk) on its command line. Both are required: a ``tail -f`` of the serial log
    names the directory but has no ``-name``, and must never be killed.
    """
    wanted = {d.name: {str(d), str(d.resolve())} for d in guest_dirs}
    found: list[tuple[int, str]] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in known or int(entry) == os.getpid():
            continue
        args = _cmdline(int(entry))
        for flag, value in zip(args, args[1:], strict=False):
            dirs = wanted.get(value) if flag == "-name" else None
            if dirs and any(d in a for a in args for d in dirs):
                found.append((int(entry), value))
                break
    return found


def _recover_run(run: RunDir) -> RecoveredRun | None:
    record = run.read()
    proc = record.process
    if proc is None or proc.is_alive() is not False:
        return None  # running, or on another host: not ours to judge
    if record.kept_guest is not None:
        return None  # --on-error abort kept it on purpose; `localbuilder cancel` stops it
    if record.run_state.finished and record.guest is None:
        return None  # ended cleanly (or recovered before)

    stopped: list[str] = []
    failed: list[str] = []
    guest = record.guest
    known: set[int] = set()
    if guest is not None:
        if guest.backend == "libvirt":
            result = _stop_libvirt(guest)
            if result:
                stopped.append(f"libvirt domain {guest.name}")
            elif result is None:
                failed.append(f"libvirt domain {guest.name}")
        elif guest.pid is not None:
            known.add(guest.pid)
            if is_guest_process(guest.pid, guest.name, guest.start_ticks):
                if _stop_qemu(guest.pid, guest.name, guest.start_ticks):
                    stopped.append(f"qemu pid {guest.pid}")
                else:
                    failed.append(f"qemu pid {guest.pid}")
    dirs = _guest_dirs(run.path)
    if guest is not None and Path(guest.workdir).is_dir():
        dirs.append(Path(guest.workdir))
    for pid, name in _stray_qemus(dirs, known):
        ticks = _start_ticks(pid)
        if _stop_qemu(pid, name, ticks):
            stopped.append(f"qemu pid {pid}")
        else:
            failed.append(f"qemu pid {pid}")

    if not failed:
        remove_guest_files(run, record, dirs)

    during = record.last_run_status.run_sub_state
    what = f"localbuilder was killed (pid {proc.pid}) during {during}"
    if stopped:
        text = f"{what}; its guest ({', '.join(stopped)}) was stopped on the next start"
    elif guest is not None:
        text = f"{what}; its guest had already stopped"
    else:
        text = f"{what}; no guest was left running"
    if failed:
        text += (f"; could not stop {', '.join(failed)} — stop it by hand (kill / virsh destroy) and "
                 f"remove its files under {run.path}")
    state = RunState.Canceled if run.cancel_requested() else RunState.Failed
    previous = record.last_run_status.message if record.run_state.finished else ""
    message = f"{previous}\n{text}" if previous else text
    record = dataclasses.replace(record, guest=None).with_status(
        run_state=state, message=message, end_time=record.last_run_status.end_time or now_iso()
    )
    run.write(record)
    return RecoveredRun(run.path, record.run_id, record.template_name, proc.pid, state, tuple(stopped), text)


def recover_stale_runs(root: Path | None = None) -> list[RecoveredRun]:
    """Stop the guests of killed builds, clean their files, mark their runs; see the module docstring."""
    base = root or paths.runs_dir()
    if not base.is_dir():
        return []
    recovered: list[RecoveredRun] = []
    with _recovery_lock(base):
        for run in iter_runs(root=base):
            try:
                result = _recover_run(run)
            except LocalBuilderError as exc:  # an unreadable state.json: show-runs reports it
                log.debug("skipping %s: %s", run.path, exc.message)
                continue
            if result is not None:
                recovered.append(result)
    return recovered


def recover_and_warn(root: Path | None = None) -> list[RecoveredRun]:
    """``recover_stale_runs`` for the commands: one warning per recovered run, never an error."""
    try:
        recovered = recover_stale_runs(root)
    except OSError as exc:
        log.warning("could not check for builds that were killed: %s", exc)
        return []
    for r in recovered:
        log.warning("run %s/%s: %s", r.template_name, r.run_id, r.message)
    return recovered


def stop_kept_guest(kept_pid: int | None, domain: str | None, backend: str) -> bool:
    """Stop a guest kept by ``--on-error abort`` (``localbuilder cancel``, ``cache prune --force``): SIGTERM
    (qemu powers off), then SIGKILL after ~10 s; a libvirt domain is destroyed. True when one was stopped."""
    if kept_pid is not None:
        try:
            os.kill(kept_pid, signal.SIGTERM)  # qemu powers off on SIGTERM
        except ProcessLookupError:
            return False
        for _ in range(50):
            try:
                os.kill(kept_pid, 0)
            except ProcessLookupError:
                return True
            time.sleep(0.2)
        os.kill(kept_pid, signal.SIGKILL)
        return True
    if domain is not None and backend == "libvirt":
        run_cmd(["virsh", "-c", "qemu:///system", "destroy", domain], check=False)
        return True
    return False
