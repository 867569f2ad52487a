"""First-boot media for a Windows build guest: answer file + set-up script on a pycdlib ISO.

A generalized Windows image (what Azure Marketplace images and ``localbuilder image add … --os
windows`` VHDs are) runs the specialize and oobeSystem passes on first boot and picks up an answer file
from the root of removable media. Ours (``guest_scripts/autounattend.xml``, written to the ISO as both
``autounattend.xml`` and ``unattend.xml``) creates the build account, logs it on once and runs
``windows-setup.ps1``, which enables WinRM over HTTPS (5986).

Secrets: the build account's password is generated per build (24 characters, all four Windows
complexity classes) and never logged. The WinRM listener's certificate is generated **here**, so the
host knows its SHA-256 fingerprint and pins it (``WinRMCommunicator(cert_fingerprint=…)``): a guest
that did not boot from this ISO cannot impersonate the build VM. The ISO file is 0600.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import io
import json
import os
import re
import secrets
import string
from pathlib import Path
from xml.sax.saxutils import escape

import pycdlib

from localbuilder.errors import BackendError
from localbuilder.windows.scripts import guest_script

BUILD_USER = "packer"  # AIB's Windows build VM account, as on Linux (Packer's azure-arm builder)
VOLUME_LABEL = "LBSETUP"
WINRM_HTTPS_PORT = 5986
CONFIG_NAME = "localbuilder-setup.json"
PFX_NAME = "winrm-listener.pfx"
_COMPUTER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,14}$")  # NetBIOS: at most 15 characters
_USER_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,19}$")  # SAM account names: at most 20


@dataclasses.dataclass(frozen=True)
class FirstBootMedia:
    iso: Path
    username: str
    password: str = dataclasses.field(repr=False)
    cert_fingerprint: str  # SHA-256 of the listener certificate, hex: pin it
    port: int = WINRM_HTTPS_PORT


def generate_password(length: int = 24) -> str:
    """A password meeting Windows' complexity rule (upper, lower, digit, symbol), no XML/quote specials."""
    symbols = "-_.!#%+="
    alphabet = string.ascii_letters + string.digits + symbols
    while True:
        candidate = "".join(secrets.choice(alphabet) for _ in range(length))
        if (
            any(c.isupper() for c in candidate)
            and any(c.islower() for c in candidate)
            and any(c.isdigit() for c in candidate)
            and any(c in symbols for c in candidate)
        ):
            return candidate


def render_unattend(*, username: str, password: str, computer_name: str) -> str:
    if not _USER_RE.match(username):
        raise BackendError(
            f"invalid Windows build account name {username!r}",
            hint="Use at most 20 letters, digits, '_', '.', '-'.",
        )
    if not _COMPUTER_RE.match(computer_name):
        raise BackendError(
            f"invalid Windows computer name {computer_name!r}",
            hint="Use at most 15 letters, digits and '-' (a NetBIOS name).",
        )
    text = guest_script("autounattend.xml")
    for key, value in (("USERNAME", username), ("PASSWORD", password), ("COMPUTER_NAME", computer_name)):
        text = text.replace("{{" + key + "}}", escape(value))
    return text


def make_listener_certificate(common_name: str, pfx_password: str) -> tuple[bytes, str]:
    """A self-signed server certificate for the WinRM HTTPS listener → (PFX bytes, SHA-256 hex)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import pkcs12
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(common_name)]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    # 3DES/SHA1 PKCS#12: Windows Server 2016 cannot import the AES-256 default of `cryptography`.
    encryption = (
        serialization.PrivateFormat.PKCS12.encryption_builder()
        .kdf_rounds(50000)
        .key_cert_algorithm(pkcs12.PBES.PBESv1SHA1And3KeyTripleDESCBC)
        .hmac_hash(hashes.SHA1())
        .build(pfx_password.encode())
    )
    pfx = pkcs12.serialize_key_and_certificates(b"localbuilder-winrm", key, cert, None, encryption)
    fingerprint = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    return pfx, fingerprint


def write_iso(path: Path, files: dict[str, bytes]) -> None:
    """An ISO 9660 + Joliet image with ``files`` at its root (Windows reads the Joliet names)."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, vol_ident=VOLUME_LABEL, joliet=3)
    try:
        for index, (name, data) in enumerate(sorted(files.items())):
            stem = re.sub(r"[^A-Z0-9_]", "", name.upper().rsplit(".", 1)[0])[:6] or "FILE"
            iso_name = f"{stem}{index:02d}"  # unique 8.3 names; Windows shows the Joliet names
            iso.add_fp(io.BytesIO(data), len(data), f"/{iso_name}.;1", joliet_path=f"/{name}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            iso.write_fp(out)
    finally:
        iso.close()


def make_first_boot_media(
    directory: Path,
    *,
    computer_name: str = "lb-build",
    username: str = BUILD_USER,
    password: str | None = None,
    port: int = WINRM_HTTPS_PORT,
) -> FirstBootMedia:
    """Write ``directory/windows-setup.iso`` and return what the communicator needs to connect."""
    password = password or generate_password()
    pfx_password = generate_password()
    pfx, fingerprint = make_listener_certificate(computer_name.lower(), pfx_password)
    unattend = render_unattend(username=username, password=password, computer_name=computer_name).encode()
    config = json.dumps(
        {
            "username": username,
            "password": password,
            "pfx": PFX_NAME,
            "pfx_password": pfx_password,
            "port": port,
        },
        indent=2,
    ).encode()
    iso = directory / "windows-setup.iso"
    write_iso(
        iso,
        {
            "autounattend.xml": unattend,
            "unattend.xml": unattend,
            "windows-setup.ps1": guest_script("windows-setup.ps1").encode("utf-8"),
            CONFIG_NAME: config,
            PFX_NAME: pfx,
        },
    )
    return FirstBootMedia(
        iso=iso, username=username, password=password, cert_fingerprint=fingerprint, port=port
    )
