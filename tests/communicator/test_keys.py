"""localbuilder.keys: key generation, files, fingerprints."""

from __future__ import annotations

import base64
import io
import shutil
import subprocess
from pathlib import Path

import paramiko
import pytest

from localbuilder import keys
from localbuilder.errors import CommunicatorError


def test_ed25519_pair_loads_into_paramiko_and_matches() -> None:
    pair = keys.generate_ed25519("build")
    assert pair.public_line.startswith("ssh-ed25519 AAAA") and pair.public_line.endswith(" build")
    key = paramiko.Ed25519Key.from_private_key(io.StringIO(pair.private_openssh.decode()))
    assert f"{key.get_name()} {key.get_base64()}" == pair.public_line.rsplit(" ", 1)[0]
    assert keys.fingerprint(pair.public_line) == key.fingerprint
    assert "PRIVATE" not in repr(pair)


def test_pairs_are_fresh() -> None:
    assert keys.generate_ed25519().public_line != keys.generate_ed25519().public_line


def test_host_keys_by_cloud_init_type() -> None:
    pairs = keys.generate_host_keys(("ed25519", "ecdsa"))
    assert set(pairs) == {"ed25519", "ecdsa"}
    assert pairs["ecdsa"].public_line.startswith("ecdsa-sha2-nistp256 ")
    key = paramiko.ECDSAKey.from_private_key(io.StringIO(pairs["ecdsa"].private_openssh.decode()))
    assert keys.fingerprint(pairs["ecdsa"].public_line) == key.fingerprint
    with pytest.raises(CommunicatorError, match="unsupported host key type.*dsa"):
        keys.generate_host_keys(("dsa",))


def test_private_key_file_is_0600_and_replaced(tmp_path: Path) -> None:
    path = tmp_path / "k" / "id"
    first = keys.generate_ed25519()
    keys.write_private_key(path, first)
    assert path.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "k" / "id.pub").read_text() == first.public_line + "\n"
    path.chmod(0o644)
    second = keys.generate_ed25519()
    keys.write_private_key(path, second)
    assert path.stat().st_mode & 0o777 == 0o600
    assert keys.load_private_key(path).public_line == second.public_line.rsplit(" ", 1)[0]
    assert not list(path.parent.glob("*.tmp"))


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="needs ssh-keygen (openssh-client)")
def test_fingerprint_and_file_agree_with_ssh_keygen(tmp_path: Path) -> None:
    pair = keys.generate_ed25519()
    path = keys.write_private_key(tmp_path / "id", pair)
    out = subprocess.run(["ssh-keygen", "-lf", str(path)], capture_output=True, text=True, check=True).stdout
    assert out.split()[1] == keys.fingerprint(pair.public_line)
    derived = subprocess.run(["ssh-keygen", "-yf", str(path)], capture_output=True, text=True, check=True)
    assert derived.stdout.split()[:2] == pair.public_line.split()[:2]


# A fixed ed25519 public key blob: a generated one would give the test a different id in every process.
ED25519_BLOB = "AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("", "not an OpenSSH public-key line"),
        ("ssh-ed25519", "not an OpenSSH public-key line"),
        ("ssh-ed25519 !!!", "not valid base64"),
        ("ssh-ed25519 " + base64.b64encode(b"\x00\x00").decode(), "truncated"),
        (
            "ssh-rsa " + ED25519_BLOB,
            "says 'ssh-rsa' but the key data is 'ssh-ed25519'",
        ),
    ],
    ids=["empty", "type-only", "bad-base64", "truncated", "type-mismatch"],
)
def test_bad_public_lines_are_explained(line: str, message: str) -> None:
    with pytest.raises(CommunicatorError, match=message) as info:
        keys.fingerprint(line)
    assert info.value.hint and "ssh-ed25519 AAAA" in info.value.hint


def test_load_private_key_errors(tmp_path: Path) -> None:
    with pytest.raises(CommunicatorError, match="cannot read"):
        keys.load_private_key(tmp_path / "absent")
    bad = tmp_path / "bad"
    bad.write_text("not a key")
    with pytest.raises(CommunicatorError, match="not an unencrypted OpenSSH private key"):
        keys.load_private_key(bad)
