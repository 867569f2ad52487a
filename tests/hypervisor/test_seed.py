"""NoCloud seed ISO: golden user-data, a readable ISO, private file modes, fresh keys per seed."""

from __future__ import annotations

import io
import stat
from pathlib import Path

import paramiko
import pycdlib
import pytest

from localbuilder import keys
from localbuilder.errors import BackendError
from localbuilder.hypervisor import seed
from tests.fixtures.golden import Golden

BUILD_PUB = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBUILDBUILDBUILDBUILDBUILDBUILDBUILDBUILDBUI lb-build"
HOST_PUB = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHOSTHOSTHOSTHOSTHOSTHOSTHOSTHOSTHOSTHOSTHOS lb-host"
HOST_PRIVATE = (b"-----BEGIN OPENSSH PRIVATE KEY-----\nHOSTKEYLINE1\nHOSTKEYLINE2\n"
                b"-----END OPENSSH PRIVATE KEY-----\n")
FIXED = seed.SeedKeys(
    build=keys.KeyPair(b"(build private key not used here)", BUILD_PUB),
    host=keys.KeyPair(HOST_PRIVATE, HOST_PUB),
)


def test_user_data_golden(golden: Golden) -> None:
    golden(seed.user_data("packer", FIXED), "seed-user-data.yaml")
    golden(seed.meta_data("lb-0123", "lb-guest"), "seed-meta-data.yaml")


@pytest.mark.parametrize("user", ["Root", "1abc", "a b", "x" * 40, "packer\nroot"])
def test_bad_user_rejected(user: str) -> None:
    with pytest.raises(BackendError, match="build user") as err:
        seed.user_data(user, FIXED)
    assert err.value.hint


def read_iso(path: Path) -> dict[str, bytes]:
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        assert iso.pvd.volume_identifier.decode().strip() == "cidata"
        out = {}
        for name in ("user-data", "meta-data"):
            buf = io.BytesIO()
            iso.get_file_from_iso_fp(buf, rr_path=f"/{name}")
            out[name] = buf.getvalue()
            jbuf = io.BytesIO()
            iso.get_file_from_iso_fp(jbuf, joliet_path=f"/{name}")
            assert jbuf.getvalue() == out[name]
        return out
    finally:
        iso.close()


def test_make_seed(tmp_path: Path) -> None:
    d = tmp_path / "seed"
    s = seed.make_seed(d, hostname="lb-test")
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert stat.S_IMODE(s.iso.stat().st_mode) == 0o600
    assert stat.S_IMODE(s.key_file.stat().st_mode) == 0o600
    files = read_iso(s.iso)
    text = files["user-data"].decode()
    assert text.startswith("#cloud-config\n") and "- name: packer" in text
    assert f"instance-id: {s.instance_id}" in files["meta-data"].decode()
    # The key file is what paramiko will load, and its public half is what the guest authorizes.
    key = paramiko.Ed25519Key.from_private_key_file(str(s.key_file))
    assert f"{key.get_name()} {key.get_base64()}" in text
    # The pinned host key is the one handed to cloud-init.
    (host_line,) = s.host_keys
    assert f"ed25519_public: {host_line}" in text
    assert "BEGIN OPENSSH PRIVATE KEY" in text.split("ed25519_private:")[1]


def test_each_seed_is_fresh(tmp_path: Path) -> None:
    a = seed.make_seed(tmp_path / "a", hostname="a")
    b = seed.make_seed(tmp_path / "b", hostname="b")
    assert a.instance_id != b.instance_id
    assert a.host_keys != b.host_keys
    assert a.key_file.read_bytes() != b.key_file.read_bytes()
