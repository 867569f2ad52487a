"""The one exception tree of localbuilder.

Library code raises these; only ``localbuilder.__main__`` turns them into exit codes. Third-party
exceptions (paramiko, winrm, libvirt, azure-storage, OSError from qemu-img …) are translated into this
tree at the module that talks to the library, with ``raise … from exc``.

    LocalBuilderError                 exit 1 unless noted; every error may carry a ``hint``
    ├── UsageError                    bad command line (exit 2)
    ├── TemplateError                 the template cannot be loaded or is invalid (exit 2)
    ├── CatalogError                  image catalog: unknown source, bad file
    ├── SourceError                   building or resolving a source image
    ├── CommandError                  a host subprocess failed (run.py)
    ├── BackendError                  QEMU/libvirt could not start or stop a guest
    │   ├── AcceleratorError          the requested accelerator is not usable
    │   ├── BootFailure               the guest will never answer (its console/hypervisor said why)
    │   └── CheckpointError           a checkpoint could not be cut or proven (quiesce, marker)
    │       └── CheckpointMismatch    a resumed guest is not in the checkpoint's state: not used
    ├── CommunicatorError             SSH/WinRM
    │   ├── CommunicatorTimeout       the guest did not answer in time
    │   ├── Disconnected              the connection dropped (reboot, crash)
    │   └── HostKeyMismatch           the guest presented an unexpected host key
    ├── FetchError                    scriptUri/sourceUri download or checksum
    ├── CustomizerError               a customize step failed in the guest
    ├── DeprovisionError              deprovision did not finish / power off
    ├── ConversionError               qemu-img or VHD footer check failed
    ├── InspectionError               the output image is not generalized
    ├── DistributeError               a distribute target failed
    ├── BuildTimeout                  buildTimeoutInMinutes expired
    └── Canceled                      SIGINT/SIGTERM or `localbuilder cancel` (exit 130)
"""

from __future__ import annotations

import shlex


class LocalBuilderError(Exception):
    """Base class. ``hint`` tells the user what to do about it."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(LocalBuilderError):
    exit_code = 2


class TemplateError(LocalBuilderError):
    exit_code = 2


class CatalogError(LocalBuilderError):
    pass


class SourceError(LocalBuilderError):
    pass


class CommandError(LocalBuilderError):
    """A host command exited non-zero. Carries the argv, the exit code and the tail of stderr."""

    def __init__(
        self, cmd: list[str], returncode: int, stderr_tail: str = "", *, hint: str | None = None
    ) -> None:
        shown = shlex.join(cmd)
        if len(shown) > 300:
            shown = shown[:300] + " …"
        message = f"command failed with exit code {returncode}: {shown}"
        if stderr_tail.strip():
            message += "\n" + stderr_tail.rstrip()
        super().__init__(message, hint=hint)
        self.cmd = cmd
        self.returncode = returncode
        self.stderr_tail = stderr_tail


class BackendError(LocalBuilderError):
    pass


class AcceleratorError(BackendError):
    pass


class BootFailure(BackendError):
    """A booting guest will never answer: the boot watch (``localbuilder.guest.bootwatch``) recognized why."""


class CheckpointError(BackendError):
    pass


class CheckpointMismatch(CheckpointError):
    """Raised by a platform's boot when the guest it resumed from a checkpoint does not say it is that
    checkpoint (``localbuilder.quiesce.confirm``): the build discards the checkpoint and goes on without."""


class CommunicatorError(LocalBuilderError):
    pass


class CommunicatorTimeout(CommunicatorError):
    pass


class Disconnected(CommunicatorError):
    pass


class HostKeyMismatch(CommunicatorError):
    pass


class FetchError(LocalBuilderError):
    pass


class CustomizerError(LocalBuilderError):
    pass


class DeprovisionError(LocalBuilderError):
    pass


class ConversionError(LocalBuilderError):
    pass


class InspectionError(LocalBuilderError):
    pass


class DistributeError(LocalBuilderError):
    pass


class BuildTimeout(LocalBuilderError):
    pass


class Canceled(LocalBuilderError):
    exit_code = 130
