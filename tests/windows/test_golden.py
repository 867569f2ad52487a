"""Golden files for what localbuilder generates for Windows guests, and the first-boot ISO."""

from __future__ import annotations

import hashlib
import io
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pycdlib
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from localbuilder.windows.firstboot import generate_password, make_first_boot_media, render_unattend
from localbuilder.windows.powershell import elevated_launcher, plain_wrapper
from localbuilder.windows.update import UpdateOptions, invocation

SCRIPT = "C:\\Windows\\Temp\\localbuilder-customize-2-0123abcd.ps1"


def test_plain_wrapper(golden) -> None:
    golden(plain_wrapper(SCRIPT), "windows/plain-wrapper.ps1")


def test_elevated_launcher_as_user(golden) -> None:
    golden(elevated_launcher(SCRIPT, task_name="localbuilder-0123abcd", run_as="packer"),
           "windows/elevated-launcher-user.ps1")


def test_elevated_launcher_as_system(golden) -> None:
    golden(elevated_launcher(SCRIPT, task_name="localbuilder-0123abcd", run_as="SYSTEM"),
           "windows/elevated-launcher-system.ps1")


def test_update_invocation(golden) -> None:
    options = UpdateOptions(search_criteria="IsInstalled=0",
                            filters=("exclude:$_.Title -like '*Preview*'", "include:$true"), update_limit=20)
    golden(invocation(options), "windows/windows-update-invocation.ps1")


def test_unattend(golden) -> None:
    password = generate_password()
    text = render_unattend(username="packer", password=password, computer_name="lb-build")
    ET.fromstring(text.encode())  # well-formed
    assert text.count(password) == 2  # local account + auto-logon
    golden(text.replace(password, "<generated password>"), "windows/autounattend.xml")


def test_unattend_escapes_xml() -> None:
    text = render_unattend(username="packer", password="a<b&c", computer_name="lb-build")
    assert "a&lt;b&amp;c" in text
    ET.fromstring(text.encode())


def test_password_complexity() -> None:
    for _ in range(50):
        pw = generate_password()
        assert len(pw) == 24
        assert any(c.isupper() for c in pw) and any(c.islower() for c in pw) and any(c.isdigit() for c in pw)
        assert not any(c in pw for c in "<>&'\"")


def test_first_boot_iso(tmp_path: Path) -> None:
    media = make_first_boot_media(tmp_path, computer_name="lb-build")
    assert media.iso.stat().st_mode & 0o777 == 0o600
    assert media.password not in repr(media)
    iso = pycdlib.PyCdlib()
    iso.open(str(media.iso))
    try:
        def read(name: str) -> bytes:
            out = io.BytesIO()
            iso.get_file_from_iso_fp(out, joliet_path=f"/{name}")
            return out.getvalue()

        children = iso.list_children(joliet_path="/")
        names = sorted(c.file_identifier().decode("utf-16-be") for c in children if c.is_file())
        assert names == ["autounattend.xml", "localbuilder-setup.json", "unattend.xml", "windows-setup.ps1",
                         "winrm-listener.pfx"]
        config = json.loads(read("localbuilder-setup.json"))
        assert config["username"] == "packer" and config["password"] == media.password
        assert config["port"] == 5986
        pfx = read("winrm-listener.pfx")
        key, cert, _ = pkcs12.load_key_and_certificates(pfx, config["pfx_password"].encode())
        assert key is not None and cert is not None
        # the fingerprint the communicator pins is the certificate's on the ISO
        der = cert.public_bytes(serialization.Encoding.DER)
        assert hashlib.sha256(der).hexdigest() == media.cert_fingerprint
        assert media.password.encode() in read("autounattend.xml")
        assert read("windows-setup.ps1").startswith(b"# localbuilder windows-setup.ps1")
    finally:
        iso.close()
