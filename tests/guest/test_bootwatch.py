"""The boot watch: the console recognizer on real and realistic console excerpts, and the watch's timing
with a fake clock, a growing serial log and a scripted guest.

The files in tests/data/console/ are cut from serial logs of the Debian test image broken as in
tests/build/broken_images.py (raw bytes: escapes, CR CR LF line ends, systemd's shortened unit names).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from localbuilder.communicator.ssh import SSHCommunicator
from localbuilder.errors import BootFailure, HostKeyMismatch
from localbuilder.guest import bootwatch
from localbuilder.guest.bootwatch import FAILURES, BootWatch, ConsoleReader, evidence, matches, seed_ignored
from localbuilder.redact import redact_line

DATA = Path(__file__).resolve().parents[1] / "data" / "console"


def console(name: str) -> list[str]:
    raw = (DATA / name).read_bytes().decode("utf-8", errors="replace")
    return [bootwatch.clean(line) for line in raw.replace("\r\n", "\n").split("\n")]


def keys(lines: list[str]) -> list[str]:
    return sorted({failure.key for failure, _ in matches(lines)})


# ---- realistic console excerpts of failures we have no image for (hand-written after real ones) -----------

DRACUT_EMERGENCY = (DATA / "dracut-emergency.log").read_text()

SYSTEMD_EMERGENCY = (DATA / "systemd-emergency.log").read_text()

GRUB_RESCUE = (DATA / "grub-rescue.log").read_text()

GRUB_NO_KERNEL = (DATA / "grub-no-kernel.log").read_text()

SSHD_RHEL = (DATA / "sshd-rhel.log").read_text()

CLOUD_INIT_NO_DATASOURCE = (DATA / "cloud-init-no-datasource.log").read_text()

CLOUD_INIT_USER = (DATA / "cloud-init-user.log").read_text()

AGENT = (DATA / "agent-provisioning.log").read_text()

HEALTHY_TAIL = (DATA / "healthy-tail.log").read_text()


@pytest.mark.parametrize(("name", "key"), [
    ("kernel-panic.log", "kernel-panic"),
    ("initramfs-no-root.log", "no-root"),
    ("sshd-failed.log", "sshd"),
])  # fmt: skip
def test_real_console_excerpts_are_recognized(name: str, key: str) -> None:
    lines = console(name)
    assert keys(lines) == [key]
    failure, at = matches(lines)[0]
    quoted = evidence(failure, lines, at)
    assert 1 <= len(quoted) <= bootwatch.QUOTE_LINES
    assert any(line.startswith(lines[at]) for line in quoted)


def test_panic_evidence_quotes_the_cause_before_the_panic_line() -> None:
    lines = console("kernel-panic.log")
    failure, at = matches(lines)[0]
    quoted = "\n".join(evidence(failure, lines, at))
    assert "VFS: Cannot open root device" in quoted
    assert "Kernel panic - not syncing: VFS: Unable to mount root fs" in quoted
    assert "dump_stack_lvl" not in quoted  # the call trace says nothing to a user


def test_repeated_lines_are_quoted_once_with_their_count() -> None:
    lines = console("sshd-failed.log")
    failure, at = matches(lines)[0]
    quoted = evidence(failure, lines, at)
    assert len(quoted) == len(set(quoted))
    assert any(line.endswith("(×2)") and "Failed to start ssh.servic" in line for line in quoted), quoted


def test_sshd_line_shortened_by_systemd_is_recognized() -> None:
    lines = console("sshd-failed.log")
    assert any("ssh.servic…" in line for line in lines)
    failure, at = matches(lines)[0]
    assert "Failed to start" in lines[at]
    assert failure.heals is not None
    assert failure.heals.search("[  OK  ] Started ssh.service - OpenBSD Secure Shell")


@pytest.mark.parametrize(("text", "key"), [
    (DRACUT_EMERGENCY, "no-root"),
    (SYSTEMD_EMERGENCY, "emergency"),
    (GRUB_RESCUE, "grub"),
    (GRUB_NO_KERNEL, "grub"),
    (SSHD_RHEL, "sshd"),
    (CLOUD_INIT_NO_DATASOURCE, "cloud-init-no-datasource"),
    (CLOUD_INIT_USER, "cloud-init-user"),
    (AGENT, "agent-provisioning"),
])  # fmt: skip
def test_realistic_excerpts_are_recognized(text: str, key: str) -> None:
    assert key in keys(text.splitlines())
    # Each excerpt names one failure (the dracut shell also mentions its prompt: same key).
    assert keys(text.splitlines()) == [key]


def test_a_healthy_console_matches_nothing_and_used_the_seed() -> None:
    lines = HEALTHY_TAIL.splitlines()
    assert matches(lines) == []
    assert seed_ignored(lines) == []


def test_every_failure_has_a_title_and_a_hint() -> None:
    assert len({f.key for f in FAILURES}) == len(FAILURES)
    for failure in FAILURES:
        assert failure.title and len(failure.hint) > 40
        assert failure.trigger.pattern and failure.evidence.pattern
        assert failure.settle < 30  # the issue: a recognized failure ends the build within 30 s


def test_seed_ignored_evidence() -> None:
    generated = [
        "[   48.773140] cloud-init[243]: Generating public/private rsa key pair.",
        "[   48.877766] cloud-init[243]: Generating public/private ed25519 key pair.",
    ]
    assert seed_ignored(generated) == generated
    assert len(seed_ignored(CLOUD_INIT_NO_DATASOURCE.splitlines())) >= 2
    used = "cloud-init[347]: ... Datasource DataSourceNoCloud [seed=/dev/vdb]"
    assert seed_ignored([*generated, used]) == []


def test_redaction() -> None:
    assert "sv=2022&sig=REDACTED" in redact_line("curl https://a.blob.core.windows.net/c/x?sv=2022&sig=abc%2Fdef")
    assert redact_line("password=hunter2 next") == "password=REDACTED next"
    assert "REDACTED" in redact_line("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload")
    assert "PRIVATE KEY" not in redact_line("-----BEGIN OPENSSH PRIVATE KEY-----")


# ---- the reader -------------------------------------------------------------------------------------------


def test_console_reader_follows_a_growing_file(tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    reader = ConsoleReader(log)
    assert reader.read() == []  # not there yet
    log.write_bytes(b"\x1b[0;32mfirst\x1b[0m line\r\r\nsecond ")
    assert reader.read() == ["first line"]
    assert reader.partial == "second"
    with open(log, "ab") as f:
        f.write(b"half\r\n(initramfs) ")
    assert reader.read() == ["second half"]
    assert reader.partial == "(initramfs)"
    log.write_bytes(b"new boot\n")  # replaced by a shorter file: start over
    assert reader.read() == ["new boot"]


# ---- the watch, on a fake clock ----------------------------------------------------------------------------


@dataclasses.dataclass
class FakeGuest:
    running: bool = True
    resets: int = 0
    state: str = "running"
    events: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def is_running(self) -> bool:
        return self.running

    def reset_count(self) -> int:
        return self.resets

    def status(self) -> str:
        return self.state

    def lifecycle_events(self) -> list[dict[str, Any]]:
        return self.events


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclasses.dataclass
class Rig:
    log: Path
    guest: FakeGuest
    clock: Clock
    watch: BootWatch
    notes: list[str]

    def write(self, text: str) -> None:
        with open(self.log, "a") as f:
            f.write(text)

    def at(self, seconds: float) -> None:
        """Advance to ``seconds`` after the start and check."""
        self.clock.now = 1000.0 + seconds
        self.watch.check(seconds, "connected, but no SSH banner yet")


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    log = tmp_path / "serial.log"
    log.write_text("")
    guest, clock, notes = FakeGuest(), Clock(), []
    watch = BootWatch(log, guest, name="lb-test", target="127.0.0.1:2222", heartbeat=True, clock=clock,
                      notify=notes.append)
    watch.begin()
    return Rig(log, guest, clock, watch, notes)


def test_panic_fails_within_its_settle_time_quoting_the_console(rig: Rig) -> None:
    rig.write("Booting\n")
    rig.at(5)
    rig.write("".join(line + "\n" for line in console("kernel-panic.log")))
    rig.at(6)  # seen; waits for the trailing lines
    with pytest.raises(BootFailure) as err:
        rig.at(6 + 2.5)
    text = err.value.message
    assert "lb-test will not come up: the guest's kernel panicked" in text
    assert str(rig.log) in text
    assert "VFS: Unable to mount root fs" in text
    assert err.value.hint and "initramfs" in err.value.hint
    assert text.count("\n  | ") <= bootwatch.QUOTE_LINES


def test_initramfs_prompt_without_newline_is_recognized(rig: Rig) -> None:
    rig.write("Begin: Running /scripts/local-block ... done.\n(initramfs) ")
    rig.at(1)
    with pytest.raises(BootFailure, match="root filesystem was not found"):
        rig.at(3)


def test_sshd_failure_that_heals_is_not_a_failure(rig: Rig) -> None:
    rig.write("[FAILED] Failed to start ssh.service - OpenBSD Secure Shell server.\n")
    rig.at(1)
    rig.at(10)
    rig.write("[  OK  ] Started ssh.service - OpenBSD Secure Shell server.\n")
    rig.at(12)
    rig.at(100)  # nothing pending any more


def test_sshd_failure_that_does_not_heal_fails_within_30_s(rig: Rig) -> None:
    rig.write("".join(line + "\n" for line in console("sshd-failed.log")))
    rig.at(1)
    rig.at(14)
    with pytest.raises(BootFailure, match=r"sshd\) failed to start") as err:
        rig.at(17)
    assert "Failed to start ssh.servic" in err.value.message
    assert err.value.hint and "sshd -t" in err.value.hint


def test_cloud_init_finished_but_port_shut(rig: Rig) -> None:
    rig.write("[   56.8] cloud-init[347]: Cloud-init v. 22.4.2 finished at Mon, 07 Dec 2026 21:04:51 +0000. "
              "Datasource DataSourceNoCloud [seed=/dev/vdb][dsmode=net].  Up 56.80 seconds\n")
    rig.at(57)
    rig.at(57 + 59)
    with pytest.raises(BootFailure, match="cloud-init finished 60 s ago, yet nothing answers SSH on 127"):
        rig.at(57 + 60)


def test_heartbeat_every_45_s_with_the_last_console_line(rig: Rig) -> None:
    rig.write("[  OK  ] Reached target Login Prompts.\n")
    rig.write("[   30.1] cloud-init[254]: running 'init' password=x\n\n")
    for t in range(0, 181, 5):
        rig.at(t)
    assert len(rig.notes) == 4  # 45, 90, 135, 180
    assert rig.notes[0].startswith("still waiting for SSH on 127.0.0.1:2222 — 45 s, console: ")
    assert "password=REDACTED" in rig.notes[0]
    assert "— 3 min 00 s," in rig.notes[-1]


def test_no_heartbeat_with_a_terminal(tmp_path: Path) -> None:
    notes: list[str] = []
    clock = Clock()
    watch = BootWatch(tmp_path / "none.log", FakeGuest(), name="g", target="t", heartbeat=False, clock=clock,
                      notify=notes.append)
    for t in range(0, 300, 5):
        clock.now = 1000.0 + t
        watch.check()
    assert notes == []


def test_guest_that_powers_itself_off(rig: Rig) -> None:
    rig.write("reboot: Power down\n")
    rig.guest.running = False
    rig.guest.events.append({"event": "SHUTDOWN", "data": {"guest": True, "reason": "guest-shutdown"}})
    with pytest.raises(BootFailure, match="powered itself off") as err:
        rig.at(2)
    assert "reboot: Power down" in err.value.message


def test_qemu_that_exits_without_a_power_off(rig: Rig) -> None:
    rig.guest.running = False
    with pytest.raises(BootFailure, match="stopped while booting: its domain is gone"):
        rig.at(2)


def test_a_console_failure_beats_the_exit_that_follows_it(rig: Rig) -> None:
    rig.write("[    1.5] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100\n")
    rig.guest.running = False
    with pytest.raises(BootFailure, match="kernel panicked"):
        rig.at(1)


def test_paused_guest(rig: Rig) -> None:
    rig.guest.state = "io-error"
    rig.at(1)
    rig.at(4)
    with pytest.raises(BootFailure, match="paused") as err:
        rig.at(7)
    assert err.value.hint and "full" in err.value.hint


def test_reset_loop_and_begin_restarts_the_count(rig: Rig) -> None:
    rig.guest.resets = 2
    rig.at(10)
    rig.watch.begin()  # a reconnect after a reboot: the two resets before it are not a loop
    rig.guest.resets = 4
    rig.at(20)
    rig.guest.resets = 5
    with pytest.raises(BootFailure, match="reset 3 times"):
        rig.at(30)


def test_begin_forgets_what_was_pending_when_ssh_answered(rig: Rig) -> None:
    rig.write("Failed to provision: transient\n")
    rig.at(1)
    rig.watch.begin()  # SSH answered meanwhile: the last wait ended well
    rig.at(60)


def test_last_line_skips_noise(rig: Rig) -> None:
    rig.write("[  OK  ] Started ssh.service - OpenBSD Secure Shell server.\n+------+\n\n")
    rig.at(1)
    assert rig.watch.last_line == "[  OK  ] Started ssh.service - OpenBSD Secure Shell server."


# ---- the host-key message ----------------------------------------------------------------------------------


def _mismatch(serial: Path | None) -> HostKeyMismatch:
    """The communicator's error for an unexpected host key, with the session's boot watch on ``serial``."""
    comm = object.__new__(SSHCommunicator)
    comm.watch = BootWatch(serial, FakeGuest(), name="lb-test", target="127.0.0.1:2222") if serial else None
    return comm._mismatch("the SSH server at 127.0.0.1:2222 presented host key ssh-ed25519 SHA256:x")


def test_host_key_mismatch_names_the_ignored_seed(tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    log.write_text("[   48.8] cloud-init[243]: Generating public/private ed25519 key pair.\n")
    err = _mismatch(log)
    assert "ignored the build's NoCloud seed" in err.message
    assert "Generating public/private ed25519 key pair" in err.message
    assert err.hint and "datasource_list" in err.hint


def test_host_key_mismatch_without_console_evidence(tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    log.write_text(HEALTHY_TAIL)
    for serial in (log, None):
        err = _mismatch(serial)
        assert "this is not the guest this build started (another VM or service on the forwarded port?)" in (
            err.message
        )


def test_a_reconnect_does_not_judge_what_the_last_boot_printed(rig: Rig) -> None:
    # The first wait ended when SSH answered; cloud-init's "finished" line and a transient sshd failure
    # came later, then the step rebooted the guest. A reboot under TCG takes ~60 s: not "port shut".
    rig.write("[   56.8] cloud-init[347]: Cloud-init v. 22.4.2 finished at Mon, 07 Dec 2026 21:04:51 +0000.\n"
              "[FAILED] Failed to start ssh.service - OpenBSD Secure Shell server.\n")
    rig.at(100)
    rig.watch.begin()
    rig.write("[    0.000000] Linux version 6.1.0-50-cloud-amd64 (debian-kernel@lists.debian.org)\n")
    for t in range(101, 300, 5):
        rig.at(t)


def test_a_reboot_during_the_wait_restarts_the_port_shut_timer(rig: Rig) -> None:
    rig.write("[   56.8] cloud-init[347]: Cloud-init v. 22.4.2 finished at Mon, 07 Dec 2026 21:04:51.\n")
    rig.at(10)
    rig.write("[    0.000000] Linux version 6.1.0-50-cloud-amd64 (debian-kernel@lists.debian.org)\n")
    rig.at(40)
    rig.at(120)


# ---- the libvirt backend's state, in QMP's words -----------------------------------------------------------


@pytest.mark.parametrize(("state", "reason", "expected"), [
    (1, 1, "running"), (3, 5, "io-error"), (3, 2, "paused"), (6, 1, "guest-panicked"), (5, 1, "shutdown"),
    (None, None, "exited"),
])  # fmt: skip
def test_libvirt_status(state: int | None, reason: int | None, expected: str) -> None:
    import types

    from localbuilder.hypervisor.libvirt import LibvirtGuest

    fake_libvirt = types.SimpleNamespace(
        VIR_DOMAIN_PAUSED=3, VIR_DOMAIN_PAUSED_IOERROR=5, VIR_DOMAIN_CRASHED=6, VIR_DOMAIN_SHUTOFF=5,
        VIR_DOMAIN_SHUTDOWN=4, libvirtError=RuntimeError,
    )
    guest = object.__new__(LibvirtGuest)
    guest.hv = types.SimpleNamespace(libvirt=fake_libvirt)  # type: ignore[assignment]
    dom = None if state is None else types.SimpleNamespace(state=lambda: [state, reason])
    guest._lookup = lambda: dom  # type: ignore[method-assign]
    assert guest.status() == expected
