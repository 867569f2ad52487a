"""The modules under the SSH communicator, without a server: host-key pinning (hostkeys) and the console
tail of a timeout message (console). The rest is exercised against the in-process server (test_ssh)."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from localbuilder import keys
from localbuilder.communicator.console import console_tail, serial_tail
from localbuilder.communicator.hostkeys import HostKeyPins, not_this_guest


def _rsa_line() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def test_pins_offer_only_their_own_key_types() -> None:
    ed, ecdsa = keys.generate_ed25519(), keys.generate_ecdsa()
    offered = ["ssh-ed25519", "ecdsa-sha2-nistp256", "rsa-sha2-512", "rsa-sha2-256"]
    assert HostKeyPins([ecdsa.public_line, ed.public_line]).algorithms(offered) == [
        "ecdsa-sha2-nistp256",
        "ssh-ed25519",
    ]
    # An "ssh-rsa" key line is negotiated with SHA-2 signatures only.
    assert HostKeyPins([_rsa_line()]).algorithms(offered) == ["rsa-sha2-512", "rsa-sha2-256"]
    assert HostKeyPins([ed.public_line]).algorithms(["rsa-sha2-512"]) == []
    assert "none of the pinned host key types is supported: ssh-ed25519" in (
        HostKeyPins([ed.public_line]).unsupported().message
    )


def test_pins_accept_only_a_pinned_blob() -> None:
    ed, other = keys.generate_ed25519(), keys.generate_ed25519()
    pins = HostKeyPins([ed.public_line])
    assert pins.accepts(keys.parse_public_line(ed.public_line).blob)
    assert not pins.accepts(keys.parse_public_line(other.public_line).blob)
    assert pins.expected() == f"ssh-ed25519 {keys.fingerprint(ed.public_line)}"
    err = not_this_guest("presented host key X")
    assert err.message.startswith("this is not the guest this build started") and "presented host key X" in (
        err.message
    )


def test_console_tail_says_why_it_is_empty(tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    assert console_tail(None) == ""
    assert console_tail(log) == f"\n(the guest console log {log} does not exist)"
    log.write_bytes(b"\r\n\r\n")
    assert console_tail(log) == f"\n(the guest console log {log} is empty: the guest printed nothing)"


def test_console_tail_shows_lines_as_a_terminal_would(tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    log.write_bytes(
        b"".join(b"line %d\r\n" % i for i in range(40))
        + b"\x1b[0;32m  OK  \x1b[0m Started ssh.service\r\n"
        + b"Progress 10%\rProgress 100%\r\n"
    )
    assert serial_tail(log, 3) == ["line 39", "  OK   Started ssh.service", "Progress 100%"]
    assert console_tail(log, 2).splitlines() == [
        "",
        f"last lines of the guest console ({log}):",
        "  |   OK   Started ssh.service",
        "  | Progress 100%",
    ]
