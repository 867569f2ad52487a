"""Watch a guest while the build waits for it to answer: name a guest that never will, in seconds.

A guest that cannot come up (its kernel panicked, its root filesystem is missing, sshd failed, cloud-init
ignored the seed) used to cost the whole SSH wait (20 minutes, like AIB and Packer) and then a timeout
that pointed nowhere. The console and the hypervisor usually said why within seconds of the boot. So,
while ``SSHCommunicator.wait_ready`` polls, ``BootWatch.check()`` (its ``watch`` hook)

* reads the serial console log as it grows (``ConsoleReader``) and matches each new line against
  ``FAILURES``: console lines of failures that never heal. A failure that may still heal (sshd is
  restarted by systemd; GRUB falls back to its menu) waits ``settle`` seconds for a healing line first;
* watches the hypervisor: qemu/libvirt gone (the guest powered itself off, crashed, or qemu died), the
  guest paused (host disk full, an emulation error), a reset loop (RESET events during one wait);
* knows the guest is up but the port is shut: cloud-init's final-stage line ("Cloud-init v. … finished")
  and then ``PORT_SHUT_AFTER`` seconds without an SSH answer;
* shows signs of life: the last meaningful console line (for the progress bar) and, without a
  terminal, a log line every ``HEARTBEAT`` seconds.

When the guest answers with an unexpected host key, the communicator asks ``explain_host_key()``: a console
showing that cloud-init ignored the seed (``seed_ignored``) says why, which the communicator cannot know.

A recognized failure raises ``BootFailure`` (a BackendError) with the matching console lines (at most
``QUOTE_LINES``, secrets hidden by ``redact.redact_line``), the serial log's path and a hint; the session's
teardown then stops the guest. Everything here is pure or reads files: the clock is injectable for tests.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from localbuilder.errors import BootFailure, HostKeyMismatch
from localbuilder.hypervisor import HasLifecycleEvents, HasPid, HasStatus, HasStderr
from localbuilder.redact import redact_line

log = logging.getLogger("localbuilder.guest.bootwatch")

# How long a build waits for a booting guest to answer SSH unless --boot-timeout says otherwise: AIB's (and
# Packer's) 20 minutes. The watch names a guest that will never answer long before that.
DEFAULT_BOOT_TIMEOUT = 20 * 60
# A heartbeat log line this often while waiting without a terminal (the issue asks for 30-60 s).
HEARTBEAT = 45.0
# cloud-init said it finished, yet SSH does not answer: after this long, that is the failure.
PORT_SHUT_AFTER = 60.0
# This many guest resets during one wait (and no SSH) is a reset loop, not a reboot.
RESET_LOOP = 3
# A guest paused this long, on its own, is stuck (qemu pauses on a host I/O error, e.g. a full disk).
PAUSED_AFTER = 5.0
# How often the hypervisor is asked (a QMP round trip each); the console is read on every check.
HYPERVISOR_EVERY = 1.0
QUOTE_LINES = 10
# How much of the console is kept for quoting and for the seed check.
HISTORY_LINES = 400
# Read at most this much console per check: a guest flooding its console cannot stall the wait.
READ_CHUNK = 1024 * 1024

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\x1b[=>78cM]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
# systemd shortens status lines with "…" and can cut an escape sequence in two: "nss-lookup.…[0m - Host".
_CUT_ESCAPE = re.compile(r"…(?:\[[0-9;]*)?m(?= )")


def clean(raw: str) -> str:
    """One console line as a terminal would show it: escapes and control characters gone."""
    line = _CONTROL.sub("", _ANSI.sub("", raw.rstrip("\r").rsplit("\r", 1)[-1])).rstrip()
    return _CUT_ESCAPE.sub("…", line)


# ---- what the console says ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Failure:
    """A console failure that never heals by itself.

    ``trigger`` matches the line that names it; ``evidence`` the lines worth quoting (the trigger's too);
    ``heals`` a later line that shows the guest got over it within ``settle`` seconds after the trigger.
    """

    key: str
    title: str
    trigger: re.Pattern[str]
    evidence: re.Pattern[str]
    hint: str
    settle: float = 3.0
    heals: re.Pattern[str] | None = None


def _re(*alternatives: str) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{a})" for a in alternatives))


# systemd shortens long status lines to the console's width ("Failed to start ssh.servic…[0m - OpenBSD
# Secure Shell server."): match the unit name's prefix and the descriptions of the usual units.
_SSH_UNIT = r"\b(?:ssh|sshd|openssh-server)\.s(?:ervi|ock)|OpenBSD Secure Shell|OpenSSH"

FAILURES: tuple[Failure, ...] = (
    Failure(
        key="kernel-panic",
        title="the guest's kernel panicked",
        trigger=_re(r"Kernel panic - not syncing", r"\bKernel panic\b"),
        evidence=_re(r"Kernel panic", r"VFS: ", r"Cannot open root device", r"Please append a correct",
                     r"Requested init .* failed", r"No working init found", r"Attempted to kill init",
                     r"unknown-block\(", r"RIP: ", r"BUG: ", r"Oops"),
        hint="The kernel could not start the system. 'VFS: Unable to mount root fs' means it found no root "
        "filesystem: the image has no initramfs (or one without the disk driver, e.g. virtio_blk/"
        "hv_storvsc) or a wrong root= on the kernel command line (/boot/grub/grub.cfg). Rebuild the "
        "initramfs in the image (update-initramfs -u / dracut -f) or fix root=.",
        settle=2.0,
    ),
    Failure(
        key="no-root",
        title="the root filesystem was not found: the initramfs gave up and dropped to a shell",
        trigger=_re(r"Gave up waiting for (?:root|suspend/resume)", r"ALERT!.*does not exist",
                    r"Dropping to a shell", r"dracut-initqueue.*[Tt]imeout", r"dracut: FATAL",
                    r"Generating \"/run/initramfs/rdsosreport\.txt\"", r"Entering emergency mode\. Exit",
                    r"^\(initramfs\)\s*$", r"^dracut:/#"),
        evidence=_re(r"Gave up waiting", r"ALERT!", r"Dropping to a shell", r"does not exist",
                     r"dracut.*(?:[Tt]imeout|FATAL|Warning)", r"rdsosreport", r"emergency", r"^\(initramfs\)",
                     r"Check root=", r"Boot args"),
        hint="The root= device on the kernel command line does not exist in this VM: a wrong root=UUID=/"
        "LABEL= in /boot/grub/grub.cfg, or a disk driver missing from the initramfs (virtio_blk for "
        "local builds). Fix grub.cfg (update-grub) or rebuild the initramfs with the driver.",
        settle=1.0,
    ),
    Failure(
        key="emergency",
        title="systemd stopped in emergency (or rescue) mode",
        trigger=_re(r"You are in (?:emergency|rescue) mode", r"Give root password for maintenance",
                    r"Cannot open access to console, the root account is locked",
                    r"Press Enter for maintenance"),
        evidence=_re(r"emergency|rescue mode", r"root password", r"root account is locked",
                     r"Failed to mount", r"Dependency failed for", r"Timed out waiting for device",
                     r"fsck.*(?:failed|UNEXPECTED)", r"Press Enter"),
        hint="A unit the boot needs failed — usually a filesystem in /etc/fstab that is missing in this VM "
        "(a data disk, a UUID) or an fsck error. Mark optional mounts 'nofail' in /etc/fstab.",
        settle=1.0,
    ),
    Failure(
        key="grub",
        title="GRUB could not load the kernel (rescue prompt, missing kernel or no bootable disk)",
        trigger=_re(r"grub rescue>", r"Minimal BASH-like line editing is supported",
                    r"you need to load the kernel first", r"error: file [`'\"]?/(?:boot/)?(?:vmlinuz|initrd)",
                    r"No bootable device", r"Boot failed: not a bootable disk",
                    r"error: (?:no such partition|unknown filesystem|no such device)"),
        evidence=_re(r"^error: ", r"grub rescue", r"grub>", r"Minimal BASH-like", r"load the kernel",
                     r"No bootable device", r"Boot failed", r"Press any key to continue"),
        hint="The boot loader did not find the kernel or its own files: a missing or renamed "
        "/boot/vmlinuz-*, a grub.cfg that names another disk (search --fs-uuid), or a BIOS image booted as "
        "UEFI (or the reverse: check the source's Hyper-V generation). Regenerate grub.cfg (update-grub / "
        "grub2-mkconfig).",
        settle=10.0,
        heals=_re(r"Linux version \d", r"Booting `", r"Loading Linux"),
    ),
    Failure(
        key="sshd",
        title="the SSH server (sshd) failed to start",
        trigger=_re(rf"Failed to start .*(?:{_SSH_UNIT})",
                    r"(?:ssh|sshd)\.service: (?:Failed with result|Start request repeated too quickly)"),
        evidence=_re(rf"(?:{_SSH_UNIT}).*(?:[Ff]ail|repeated|exited|error)",
                     rf"Failed to start .*(?:{_SSH_UNIT})", r"sshd\[\d+\]:", r"sshd_config",
                     r"no hostkeys available", r"[Bb]ad configuration option",
                     r"Missing privilege separation directory"),
        hint="sshd refused to start: test its configuration with `sshd -t` in the image (a bad line in "
        "/etc/ssh/sshd_config or sshd_config.d/, missing host keys with nothing to generate them, a "
        "missing /run/sshd). The serial log shows the unit's messages; `systemctl status ssh` in the "
        "image shows sshd's own.",
        settle=15.0,
        heals=_re(rf"Started .*(?:{_SSH_UNIT})"),
    ),
    Failure(
        key="cloud-init-no-datasource",
        title="cloud-init found no datasource: the build's NoCloud seed was not read, so no build user "
        "exists",
        trigger=_re(r"No instance datasource found", r"Used fallback datasource",
                    r"Cloud-init v\. \S+ finished at .*Datasource DataSourceNone"),
        evidence=_re(r"[Dd]atasource", r"No instance datasource", r"DataSource\w+", r"ds-identify"),
        hint="The image's cloud-init must be allowed to use NoCloud: datasource_list in /etc/cloud/cloud.cfg "
        "or /etc/cloud/cloud.cfg.d/*.cfg must include NoCloud (Azure's own images list only Azure), and "
        "cloud-init must not be disabled (/etc/cloud/cloud-init.disabled, cloud-init=disabled).",
        settle=1.0,
    ),
    Failure(
        key="cloud-init-user",
        title="cloud-init failed to create the build user",
        trigger=_re(r"Failed to create user", r"Failed creating user", r"Unable to create user",
                    r"cc_users_groups.*(?:failed|Traceback)", r"Failed to set up user"),
        evidence=_re(r"[Uu]ser", r"cloud-init.*(?:WARNING|ERROR|failed)", r"Traceback"),
        hint="cloud-init could not create the build user from the seed: look at /var/log/cloud-init.log in "
        "the image (a locked /etc/passwd, a missing shell, an old cloud-init that rejects the user-data).",
        settle=2.0,
    ),
    Failure(
        key="agent-provisioning",
        title="the guest agent reported a provisioning failure",
        trigger=_re(r"(?i:provisioning failed)", r"(?i:failed to provision)",
                    r"(?i:provision(?:ing)? error)"),
        evidence=_re(r"(?i:provision)", r"(?i:waagent|walinuxagent)|WALA"),
        hint="The Azure agent (waagent) or cloud-init's Azure datasource tried to provision this VM as on "
        "Azure and failed. Let cloud-init (NoCloud) provision local builds: set Provisioning.Agent=auto "
        "or cloud-init in /etc/waagent.conf.",
        settle=2.0,
    ),
)

# The kernel's first line: a new boot of the guest.
NEW_BOOT = re.compile(r"\] Linux version \d")
# Console lines that show cloud-init's run is over (its final stage) — after which SSH should answer.
CLOUD_INIT_FINISHED = re.compile(r"Cloud-init v\. \S+ finished at")
# Console lines that show the guest did not use the build's NoCloud seed (it then made its own keys).
# With the seed, cloud-init installs the seed's host keys and generates none (measured on Debian 12's
# cloud-init 22.4); "Generating public/private … key pair" from cloud-init means it made its own.
SEED_IGNORED = _re(
    r"Datasource DataSource(?!NoCloud)\w+", r"No instance datasource found", r"Used fallback datasource",
    r"DataSource(?:Azure|None)\b(?!.*NoCloud)", r"cloud-init\[\d+\]: Generating public/private \w+ key pair",
)
SEED_USED = re.compile(r"Datasource DataSourceNoCloud|DataSourceNoCloud \[seed=")
# Lines that say nothing about progress: not shown as "the last console line".
_NOISE = re.compile(r"^[\s\-+|=*.]*$|^\s*\[?\s*(?:OK|  OK  )\s*\]?\s*$|login:\s*$")


def matches(lines: Iterable[str]) -> list[tuple[Failure, int]]:
    """Every (failure, line index) whose trigger one of ``lines`` matches. Pure: the recognizer."""
    found = []
    for i, line in enumerate(lines):
        for failure in FAILURES:
            if failure.trigger.search(line):
                found.append((failure, i))
    return found


def evidence(failure: Failure, lines: list[str], at: int, limit: int = QUOTE_LINES) -> list[str]:
    """Up to ``limit`` lines around index ``at`` worth quoting for ``failure``, trigger included, redacted.

    Lines before the trigger often say more than the trigger itself ("VFS: Cannot open root device …"
    before the panic), so the window reaches back; the trigger line is always kept. A line repeated (sshd
    restarted five times) is quoted once, with its count."""
    window = range(max(0, at - 60), min(len(lines), at + 40))
    first: dict[str, int] = {}
    count: dict[str, int] = {}
    for i in window:
        if i == at or failure.evidence.search(lines[i]):
            first.setdefault(lines[i], i)
            count[lines[i]] = count.get(lines[i], 0) + 1
    picked = sorted(first.values())
    if len(picked) > limit:
        # Keep the trigger, then the nearest others.
        trigger = first[lines[at]]
        picked = sorted(sorted(picked, key=lambda i: (i != trigger, abs(i - at), i))[:limit])
    return [
        redact_line(lines[i]) + (f"  (×{count[lines[i]]})" if count[lines[i]] > 1 else "") for i in picked
    ]


def seed_ignored(lines: Iterable[str]) -> list[str]:
    """Console lines that show the guest ignored the NoCloud seed (empty if none, or if it used it)."""
    lines = list(lines)
    if any(SEED_USED.search(line) for line in lines):
        return []
    return [redact_line(line) for line in lines if SEED_IGNORED.search(line)][-QUOTE_LINES:]


def seed_ignored_in(serial_log: Path) -> list[str]:
    """``seed_ignored`` of a whole serial log (read from the end, at most 4 MiB)."""
    try:
        with open(serial_log, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4 * 1024 * 1024))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    return seed_ignored(clean(raw) for raw in text.replace("\r\n", "\n").split("\n"))


def meaningful(line: str) -> bool:
    return bool(line.strip()) and not _NOISE.search(line)


# ---- reading the console as it grows -------------------------------------------------------------------


class ConsoleReader:
    """New complete lines of a growing file, cleaned; the unterminated tail is kept as ``partial``
    (prompts such as ``(initramfs) `` or ``grub rescue> `` never end with a newline)."""

    def __init__(self, path: Path, *, chunk: int = READ_CHUNK) -> None:
        self.path = path
        self.offset = 0
        self.chunk = chunk
        self._pending = b""

    def read(self) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < self.offset:  # truncated or replaced: start over
                    self.offset, self._pending = 0, b""
                f.seek(self.offset)
                data = f.read(self.chunk)
        except OSError:
            return []
        self.offset += len(data)
        data = self._pending + data
        *complete, self._pending = data.replace(b"\r\n", b"\n").split(b"\n")
        if len(self._pending) > 4096:  # no newline in 4 KiB: treat it as a line of its own
            complete.append(self._pending)
            self._pending = b""
        return [clean(raw.decode("utf-8", errors="replace")) for raw in complete]

    @property
    def partial(self) -> str:
        return clean(self._pending.decode("utf-8", errors="replace"))


# ---- the watch ------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Pending:
    failure: Failure
    at: float  # clock time of the trigger
    index: int  # index of the trigger line in the history (shifts as history is trimmed)


class BootWatch:
    """Runs inside the SSH wait (``check`` is the communicator's ``watch`` hook); raises BootFailure.

    ``guest`` is any ``hypervisor.Guest``; ``status()`` (qemu: QMP query-status; libvirt: domain state)
    and ``lifecycle_events()`` (qemu: QMP SHUTDOWN/RESET/STOP events) are used when it has them.
    ``heartbeat`` turns the periodic log line on (no terminal: the progress bar is hidden).
    """

    def __init__(
        self,
        serial_log: Path,
        guest: Any,
        *,
        name: str,
        target: str,
        heartbeat: bool = False,
        clock: Callable[[], float] = time.monotonic,
        notify: Callable[[str], None] | None = None,
    ) -> None:
        self.serial_log = serial_log
        self.guest = guest
        self.name = name
        self.target = target
        self.heartbeat = heartbeat
        self.clock = clock
        self.notify = notify or log.info
        self.reader = ConsoleReader(serial_log)
        self.history: list[str] = []
        self.last_line = ""
        self._pending: list[_Pending] = []
        self._finished_at: float | None = None
        self._finished_line = ""
        self._wait_started = clock()
        self._next_heartbeat = self._wait_started + HEARTBEAT
        self._next_hypervisor = self._wait_started
        self._resets_at_begin = self._resets()
        self._paused_since: float | None = None
        self._events_seen = len(self._events())

    # -- the hook -----------------------------------------------------------------------------------

    def begin(self) -> None:
        """A new wait starts (first boot, or a reconnect after a reboot): timers and the reset count
        restart. What the console printed since the last wait (the steps, the old boot's shutdown — and
        its cloud-init "finished" line, which would start the port-shut timer) is read without judging:
        a reconnect starts within a fraction of a second of the reset, before the new boot said much."""
        now = self.clock()
        while lines := self.reader.read():
            for line in lines:
                self._remember(line)
        self._events_seen = len(self._events())
        self._wait_started = now
        self._next_heartbeat = now + HEARTBEAT
        self._resets_at_begin = self._resets()
        self._finished_at = None
        self._paused_since = None
        # The last wait ended with an answer: what was pending then did not stop the guest.
        self._pending = []

    def check(self, elapsed: float = 0.0, status: str = "") -> None:
        """Read the new console lines, ask the hypervisor, and raise BootFailure if the guest will not come
        up. ``elapsed``/``status`` are the communicator's progress arguments (unused but for logging)."""
        now = self.clock()
        self._read_console(now)
        self._settle(now)
        if now >= self._next_hypervisor:
            self._next_hypervisor = now + HYPERVISOR_EVERY
            self._check_hypervisor(now)
        if self._finished_at is not None and now - self._finished_at >= PORT_SHUT_AFTER:
            self._fail(
                f"cloud-init finished {now - self._finished_at:.0f} s ago, yet nothing answers SSH on "
                f"{self.target}",
                [redact_line(self._finished_line)] + self._recent_ssh_lines(),
                hint="The guest is up but its SSH port is shut: sshd not enabled or not listening on port 22 "
                "(Port/ListenAddress in sshd_config), or a firewall in the image (ufw, firewalld, nftables) "
                f"drops it. Last SSH attempt: {status or 'none'}.",
            )
        if self.heartbeat and now >= self._next_heartbeat:
            self._next_heartbeat = now + HEARTBEAT
            minutes, seconds = divmod(int(now - self._wait_started), 60)
            waited = f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"
            self.notify(f"still waiting for SSH on {self.target} — {waited}, console: "
                        f"{redact_line(self.last_line) or '(nothing yet)'}")

    def explain_host_key(self, what: str) -> HostKeyMismatch | None:
        """The communicator's question when the guest presents an unexpected host key (``what`` describes
        it): a console showing that cloud-init ignored the seed explains it, the guest generated its own
        keys; None otherwise (the communicator then says it is not this build's guest)."""
        ignored = seed_ignored_in(self.serial_log)
        if not ignored:
            return None
        shown = "\n".join(f"  | {line}" for line in ignored[-5:])
        return HostKeyMismatch(
            f"the guest ignored the build's NoCloud seed and generated its own host keys ({what}); its "
            f"console ({self.serial_log}) shows cloud-init did not use the seed:\n{shown}",
            hint="Let the image's cloud-init read NoCloud: datasource_list in /etc/cloud/cloud.cfg or "
            "/etc/cloud/cloud.cfg.d/*.cfg must include NoCloud (Azure's own images list only Azure), "
            "and cloud-init must not be disabled. Nothing was sent to the guest.",
        )

    # -- console --------------------------------------------------------------------------------------

    def _read_console(self, now: float) -> None:
        new = self.reader.read()
        partial = self.reader.partial
        for line in new:
            self._see(line, now)
        # A prompt without a newline counts once it is there (it is the last thing the guest printed).
        if partial and (not self.history or self.history[-1] != partial):
            for failure, _ in matches([partial]):
                if not any(p.failure is failure for p in self._pending):
                    self.history.append(partial)
                    self._pending.append(_Pending(failure, now, len(self.history) - 1))
        if partial and meaningful(partial):
            self.last_line = partial
        if len(self.history) > HISTORY_LINES:
            drop = len(self.history) - HISTORY_LINES
            self.history = self.history[drop:]
            for p in self._pending:
                p.index = max(0, p.index - drop)

    def _remember(self, line: str) -> None:
        if line:
            self.history.append(line)
            if meaningful(line):
                self.last_line = line

    def _see(self, line: str, now: float) -> None:
        if not line:
            return
        self._remember(line)
        for p in list(self._pending):
            if p.failure.heals is not None and p.failure.heals.search(line):
                log.debug("console: %s healed (%s)", p.failure.key, line)
                self._pending.remove(p)
        if CLOUD_INIT_FINISHED.search(line):
            self._finished_at, self._finished_line = now, line
        elif NEW_BOOT.search(line):
            self._finished_at = None  # a reboot during the wait: cloud-init has not finished this boot
        for failure, _ in matches([line]):
            if not any(p.failure is failure for p in self._pending):
                log.debug("console: %s? (%s)", failure.key, line)
                self._pending.append(_Pending(failure, now, len(self.history) - 1))

    def _settle(self, now: float) -> None:
        for p in self._pending:
            if now - p.at >= p.failure.settle:
                lines = evidence(p.failure, self.history, p.index)
                self._fail(p.failure.title, lines, hint=p.failure.hint)

    def _recent_ssh_lines(self) -> list[str]:
        lines = [redact_line(line) for line in self.history[-200:] if re.search(_SSH_UNIT, line)]
        return lines[-(QUOTE_LINES - 1):]

    # -- hypervisor -----------------------------------------------------------------------------------

    def _resets(self) -> int:
        try:
            return int(self.guest.reset_count())
        except Exception:  # a guest that is gone has no count; is_running() reports that
            return 0

    def _events(self) -> list[dict[str, Any]]:
        if not isinstance(self.guest, HasLifecycleEvents):
            return []
        try:
            return list(self.guest.lifecycle_events())
        except Exception:
            return []

    def _check_hypervisor(self, now: float) -> None:
        if not self.guest.is_running():
            self._read_console(now)  # the last words, if any
            new_events = self._events()[self._events_seen:]
            shutdown = [e for e in new_events if e.get("event") == "SHUTDOWN"]
            reason = (shutdown[-1].get("data") or {}).get("reason", "") if shutdown else ""
            for p in self._pending:  # a console failure already on screen says more
                self._fail(p.failure.title, evidence(p.failure, self.history, p.index), hint=p.failure.hint)
            if reason in ("guest-shutdown", "guest-reset"):
                title = "the guest powered itself off while booting"
                hint = ("Something in the image shuts it down at boot (a unit that calls poweroff, a "
                        "failed boot target with FailureAction=poweroff, a kernel configured to halt). "
                        "The console lines above show the last thing it did.")
            elif reason == "guest-panic":
                title = "the guest's kernel panicked (reported to the hypervisor)"
                hint = "The console lines above show the panic."
            else:
                stderr = self.guest.stderr_tail(5) if isinstance(self.guest, HasStderr) else ""
                detail = f" ({stderr})" if stderr else ""
                gone = "its qemu process exited" if isinstance(self.guest, HasPid) else "its domain is gone"
                title = f"the guest stopped while booting: {gone}{detail}"
                hint = ("qemu exited without a guest power-off: killed from outside (OOM killer, a user), "
                        "or an emulation error (see qemu.stderr / libvirt's log for the domain).")
            self._fail(title, self._tail(), hint=hint)
        status = self._status()
        if status in ("paused", "io-error", "internal-error", "guest-panicked", "suspended", "watchdog"):
            self._paused_since = self._paused_since or now
            if now - self._paused_since >= PAUSED_AFTER:
                if status == "io-error":
                    hint = ("qemu paused the guest after a disk write failed on the host: is the disk "
                            "holding the run directory (or LOCALBUILDER_HOME) full?")
                elif status == "guest-panicked":
                    hint = "The guest's kernel panicked: the console lines above say why."
                else:
                    hint = ("Nothing in localbuilder pauses a booting guest: something else did (virsh "
                            "suspend, a QMP client), or qemu hit an emulation error (see qemu.stderr).")
                self._fail(f"the guest is paused (hypervisor state {status!r}) and does not run on",
                           self._tail(), hint=hint)
        else:
            self._paused_since = None
        resets = self._resets() - self._resets_at_begin
        if resets >= RESET_LOOP:
            self._fail(
                f"the guest reset {resets} times within {now - self._wait_started:.0f} s without answering "
                "SSH: a reset loop",
                self._tail(),
                hint="A guest that restarts over and over is crashing early (a triple fault, a kernel "
                "booted with panic=N that panics, a firmware/boot-loader loop). The serial log shows each "
                "attempt; the lines above are the last one.",
            )

    def _status(self) -> str:
        if not isinstance(self.guest, HasStatus):
            return "running"
        try:
            return str(self.guest.status())
        except Exception:
            return "running"

    def _tail(self) -> list[str]:
        lines = [redact_line(line) for line in self.history if meaningful(line)]
        return lines[-QUOTE_LINES:]

    def _fail(self, title: str, lines: list[str], *, hint: str) -> None:
        waited = self.clock() - self._wait_started
        body = "\n".join(f"  | {line}" for line in lines) if lines else "  (the console shows nothing)"
        raise BootFailure(
            f"guest {self.name} will not come up: {title} ({waited:.0f} s into the wait)\n"
            f"console (serial log: {self.serial_log}):\n{body}",
            hint=hint,
        )
