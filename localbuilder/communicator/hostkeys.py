"""Host-key pinning for the SSH communicator: a guest is trusted only with a host key the build gave it.

The build generates the guest's host keys (``localbuilder.keys``) and installs them through the cloud-init
seed, so it knows them before the guest boots: nothing is learnt on first use and there is no known_hosts.
``HostKeyPins`` names the host-key algorithms to negotiate (only the pinned key types, so that a guest
which also has other keys presents a pinned one) and accepts a server key only if it is one of the pins.
A mismatch is final: it is never retried and nothing is sent to that server. ``not_this_guest`` is its
error, unless the session's boot watch can say why (``ssh.WaitWatch.explain_host_key``).
"""

from __future__ import annotations

from collections.abc import Sequence

from localbuilder.errors import CommunicatorError, HostKeyMismatch
from localbuilder.keys import PublicKey, parse_public_line

# Host key algorithms paramiko may negotiate for each pinned key type. An RSA key line says "ssh-rsa";
# its signatures are rsa-sha2-* (paramiko ≥ 4 no longer offers SHA-1 "ssh-rsa" at all).
_ALGORITHMS_FOR_KEY_TYPE = {
    "ssh-rsa": ("rsa-sha2-512", "rsa-sha2-256"),
}


class HostKeyPins:
    """The host keys a guest may present, as OpenSSH public-key lines (``keys.KeyPair.public_line``)."""

    def __init__(self, lines: Sequence[str]) -> None:
        self.keys: list[PublicKey] = [parse_public_line(line) for line in lines]

    def algorithms(self, offered: Sequence[str]) -> list[str]:
        """The host-key algorithms of the pinned keys among ``offered`` (paramiko's), in pin order."""
        wanted: list[str] = []
        for key in self.keys:
            for algo in _ALGORITHMS_FOR_KEY_TYPE.get(key.key_type, (key.key_type,)):
                if algo in offered and algo not in wanted:
                    wanted.append(algo)
        return wanted

    def unsupported(self) -> CommunicatorError:
        """The error when ``algorithms()`` is empty: paramiko can verify none of the pinned key types."""
        return CommunicatorError(
            "none of the pinned host key types is supported: "
            + ", ".join(sorted({k.key_type for k in self.keys})),
            hint="pin an ssh-ed25519 or ecdsa-sha2-nistp256 host key (localbuilder.keys.generate_host_keys)",
        )

    def accepts(self, blob: bytes) -> bool:
        """Whether the server key ``blob`` (its SSH wire form) is one of the pins."""
        return any(blob == pinned.blob for pinned in self.keys)

    def expected(self) -> str:
        """The pins as a mismatch message lists them: ``type fingerprint, …``."""
        return ", ".join(f"{k.key_type} {k.fingerprint}" for k in self.keys)


def not_this_guest(what: str) -> HostKeyMismatch:
    """The error for an unexpected host key (``what`` describes it) when nothing explains it better."""
    return HostKeyMismatch(
        f"this is not the guest this build started (another VM or service on the forwarded port?): {what}",
        hint="Or its host keys were regenerated (a changed cloud-init instance-id, or `cloud-init clean` "
        "before a reboot); nothing was sent to it. Restart the build so it boots a fresh guest.",
    )
