"""SSH key material for builds: the ephemeral ed25519 build key and the pinned guest host keys.

A build never trusts whatever host key the guest presents. The session generates the guest's host key
pairs here, hands the private halves to cloud-init (NoCloud ``ssh_keys``) and gives the public lines to
``SSHCommunicator(host_keys=…)``, which accepts only those (FACTS §3: "Host-key pinning is possible").
The build key is generated the same way; its public line goes to ``ssh_authorized_keys``.

Keys are made with ``cryptography`` (~5 ms, FACTS §3) in OpenSSH formats, which both paramiko and the
guest's sshd read. Private key files are written 0600 because OpenSSH refuses group/world-readable keys
and because they are credentials for a running guest.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import os
import struct
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from localbuilder.errors import CommunicatorError

_LINE_HINT = "expected an OpenSSH public-key line such as 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA… comment'"


@dataclasses.dataclass(frozen=True)
class KeyPair:
    """A private key in OpenSSH PEM format (``-----BEGIN OPENSSH PRIVATE KEY-----``) and its public line."""

    private_openssh: bytes
    public_line: str  # "ssh-ed25519 AAAA… comment"

    def __repr__(self) -> str:
        # Never print private key material into logs or test output.
        return f"KeyPair(public_line={self.public_line!r})"


@dataclasses.dataclass(frozen=True)
class PublicKey:
    """One parsed OpenSSH public-key line: ``key_type`` is the wire name (``ssh-ed25519``), ``blob``
    the decoded key, which is what an SSH server sends during key exchange."""

    key_type: str
    blob: bytes
    comment: str = ""

    @property
    def fingerprint(self) -> str:
        return _sha256_fingerprint(self.blob)

    @property
    def line(self) -> str:
        text = f"{self.key_type} {base64.b64encode(self.blob).decode('ascii')}"
        return f"{text} {self.comment}" if self.comment else text


def generate_ed25519(comment: str = "localbuilder") -> KeyPair:
    """A fresh ed25519 key pair; ``comment`` ends up in the public line (and in authorized_keys)."""
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    line = public.decode("ascii")
    if comment:
        line = f"{line} {comment}"
    return KeyPair(private_openssh=private, public_line=line)


def generate_ecdsa(comment: str = "localbuilder") -> KeyPair:
    """A fresh ECDSA P-256 key pair (``ecdsa-sha2-nistp256``)."""
    key = ec.generate_private_key(ec.SECP256R1())
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    line = public.decode("ascii")
    if comment:
        line = f"{line} {comment}"
    return KeyPair(private_openssh=private, public_line=line)


# Key names as cloud-init's cc_ssh module spells them in ``ssh_keys`` (``<type>_private``/``<type>_public``).
_HOST_KEY_GENERATORS = {"ed25519": generate_ed25519, "ecdsa": generate_ecdsa}


def generate_host_keys(
    types: tuple[str, ...] = ("ed25519",), comment: str = "localbuilder-host"
) -> dict[str, KeyPair]:
    """Host key pairs for a guest, keyed by cloud-init's type names (``ed25519``, ``ecdsa``).

    The seed writes them as ``ssh_keys: {ed25519_private: …, ed25519_public: …}``; pass the public lines
    to ``SSHCommunicator(host_keys=…)``. The client offers only the pinned key types during key exchange,
    so a guest that also has (unpinned) RSA keys is still reached through the pinned one.
    """
    unknown = [t for t in types if t not in _HOST_KEY_GENERATORS]
    if unknown:
        raise CommunicatorError(
            f"unsupported host key type(s): {', '.join(unknown)}",
            hint=f"use one of: {', '.join(_HOST_KEY_GENERATORS)}",
        )
    return {t: _HOST_KEY_GENERATORS[t](comment) for t in types}


def write_private_key(path: Path, pair: KeyPair) -> Path:
    """Write the private key to ``path`` with mode 0600 and the public line to ``path`` + ``.pub``.

    The file is created 0600 from the start (never world-readable, not even for a moment) and an existing
    file is replaced, so a stale key from an earlier run cannot survive.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        # The umask cannot widen 0600, but an inherited ACL or odd umask could narrow it oddly: be explicit.
        os.fchmod(fd, 0o600)
        os.write(fd, pair.private_openssh)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    pub = path.with_name(path.name + ".pub")
    pub.write_text(pair.public_line + "\n", encoding="ascii")
    return path


def load_private_key(path: Path) -> KeyPair:
    """Read an unencrypted OpenSSH (or PEM) private key back into a KeyPair (any key type)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CommunicatorError(
            f"cannot read SSH private key {path}: {exc.strerror}", hint="check that the file exists"
        ) from exc
    try:
        key = serialization.load_ssh_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise CommunicatorError(
            f"{path} is not an unencrypted OpenSSH private key: {exc}",
            hint="generate one with `ssh-keygen -t ed25519 -N '' -f KEYFILE`",
        ) from exc
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return KeyPair(private_openssh=data, public_line=public.decode("ascii"))


def parse_public_line(line: str) -> PublicKey:
    """Parse ``"<type> <base64> [comment]"``; raises CommunicatorError naming what is wrong.

    The type inside the blob must match the type in front of it: a line whose halves disagree is
    corrupt (or was edited by hand) and would otherwise pin a key that can never match.
    """
    parts = line.strip().split(None, 2)
    if len(parts) < 2:
        raise CommunicatorError(f"not an OpenSSH public-key line: {_shorten(line)!r}", hint=_LINE_HINT)
    key_type, b64 = parts[0], parts[1]
    comment = parts[2] if len(parts) > 2 else ""
    try:
        blob = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CommunicatorError(
            f"public-key line {_shorten(line)!r}: the key is not valid base64", hint=_LINE_HINT
        ) from exc
    inner = _blob_type(blob)
    if inner is None:
        raise CommunicatorError(
            f"public-key line {_shorten(line)!r}: the key data is truncated or not an SSH key",
            hint=_LINE_HINT,
        )
    if inner != key_type:
        raise CommunicatorError(
            f"public-key line {_shorten(line)!r}: it says {key_type!r} but the key data is {inner!r}",
            hint=_LINE_HINT,
        )
    return PublicKey(key_type=key_type, blob=blob, comment=comment)


def fingerprint(public_line: str) -> str:
    """The OpenSSH fingerprint of a public-key line, as ``ssh-keygen -lf`` prints it: ``SHA256:…``."""
    return parse_public_line(public_line).fingerprint


def fingerprint_blob(blob: bytes) -> str:
    """The same fingerprint for a raw key blob (what the server sent during key exchange)."""
    return _sha256_fingerprint(blob)


def _sha256_fingerprint(blob: bytes) -> str:
    # OpenSSH prints base64 without the '=' padding (sshkey_fingerprint_raw, SSH_FP_BASE64).
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")
    return f"SHA256:{digest}"


def _blob_type(blob: bytes) -> str | None:
    # Every SSH public key blob starts with the key type as an SSH string (RFC 4253 §6.6).
    if len(blob) < 4:
        return None
    (length,) = struct.unpack(">I", blob[:4])
    if length == 0 or length > 64 or len(blob) < 4 + length + 1:
        return None
    try:
        return blob[4 : 4 + length].decode("ascii")
    except UnicodeDecodeError:
        return None


def _shorten(text: str, limit: int = 60) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[:limit] + "…"
