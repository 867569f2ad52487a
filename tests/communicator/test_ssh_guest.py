"""SSHCommunicator against a real Debian 12 guest (QEMU, TCG when KVM is not usable): the hostile-output
cases and a reboot, which the in-process server can only imitate. Boots one guest (~1–2 min under TCG).
Run it under the guest lock:
``flock /tmp/lb-guest.lock .venv/bin/pytest tests/communicator/test_ssh_guest.py``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from localbuilder.errors import CommunicatorTimeout, Disconnected
from localbuilder.guest.linux import linux_guest
from localbuilder.hypervisor.probe import resolve_accel
from localbuilder.images import BuiltImage

pytestmark = pytest.mark.integration
log = logging.getLogger("tests.communicator.guest")


def test_real_guest_output_files_timeout_and_reboot(debian_image: BuiltImage, tmp_path: Path) -> None:
    accel = resolve_accel("auto")
    with linux_guest(debian_image.path, debian_image.format, workdir=tmp_path, accel=accel) as lg:
        comm = lg.communicator
        log.warning("boot timings: %s", lg.timings)

        # Streaming order, stderr, exit codes.
        seen: list[tuple[str, str]] = []
        result = comm.run(
            "echo one; echo two >&2; echo three; exit 7", on_output=lambda s, line: seen.append((s, line))
        )
        assert result.exit_status == 7
        assert [line for s, line in seen if s == "stdout"] == ["one", "three"]
        assert result.stderr_tail == "two"

        # Invalid UTF-8 and a long line without newline.
        result = comm.run("printf 'bad \\377\\376 end\\n'; head -c 40000 /dev/zero | tr '\\0' y")
        assert result.stdout_tail.splitlines()[0] == "bad \ufffd\ufffd end"
        assert len(result.stdout_tail.replace("\n", "")) == len("bad \ufffd\ufffd end") + 40000

        # A flood: every line is streamed, the tail stays small.
        count = 0

        def counter(stream: str, line: str) -> None:
            nonlocal count
            count += 1

        start = time.monotonic()
        result = comm.run(
            "yes 0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz0123 "
            "| head -n 200000",
            on_output=counter,
            timeout=600,
        )
        elapsed = time.monotonic() - start
        log.warning("flood: 200000 lines / 16 MB in %.1f s", elapsed)
        assert count == 200000 and len(result.stdout_tail.splitlines()) <= 200

        # stdin, upload/download with mode.
        assert comm.run("wc -c", stdin=b"x" * 100000).stdout_tail.strip() == "100000"
        src = tmp_path / "payload.bin"
        src.write_bytes(bytes(range(256)) * 4096)
        start = time.monotonic()
        comm.upload(src, "/tmp/payload.bin", mode=0o640)
        log.warning("upload 1 MiB: %.2f s", time.monotonic() - start)
        assert comm.run("stat -c %a /tmp/payload.bin").stdout_tail == "640"
        comm.download("/tmp/payload.bin", tmp_path / "back.bin")
        assert (tmp_path / "back.bin").read_bytes() == src.read_bytes()

        # Per-command timeout; the connection stays usable.
        with pytest.raises(CommunicatorTimeout):
            comm.run("sleep 60", timeout=2)
        assert comm.run("true").ok

        # Reboot: the connection drops (Disconnected), the pinned host keys are still accepted afterwards.
        boot_id = comm.run("cat /proc/sys/kernel/random/boot_id").stdout_tail
        start = time.monotonic()
        outcome = "exit status"
        try:
            comm.run("sudo systemctl reboot; sleep 120", timeout=300)
        except Disconnected as exc:
            outcome = f"Disconnected after {time.monotonic() - start:.1f} s: {exc.message.splitlines()[0]}"
        log.warning("reboot command outcome: %s", outcome)
        assert outcome.startswith("Disconnected")
        start = time.monotonic()
        comm.reconnect(900)
        log.warning("reconnect after reboot: %.1f s", time.monotonic() - start)
        second_id = comm.run("cat /proc/sys/kernel/random/boot_id").stdout_tail
        assert second_id != boot_id

        # The usual reboot step: the command itself returns, the next one sees the connection go.
        start = time.monotonic()
        result = comm.run("sudo systemctl reboot", timeout=120)
        log.warning(
            "'sudo systemctl reboot' returned %s after %.1f s", result.exit_status, time.monotonic() - start
        )
        with pytest.raises(Disconnected) as info:
            comm.run("sleep 600", timeout=900)
        log.warning(
            "then Disconnected after %.1f s: %s", time.monotonic() - start, info.value.message.splitlines()[0]
        )
        comm.reconnect(900)
        log.warning("reconnected %.1f s after the reboot command", time.monotonic() - start)
        assert comm.run("cat /proc/sys/kernel/random/boot_id").stdout_tail not in (boot_id, second_id)
        Path("/tmp/h5-serial.log").write_bytes(lg.serial_log.read_bytes())
