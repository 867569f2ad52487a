"""Distributors: one class per AIB ``distribute[].type``; each turns the run's VHD into a run output.

Each target is independent, as in AIB: one failing target does not stop the others, and the run ends
``PartiallySucceeded`` when some targets failed. The orchestrator converts the generalized disk to one
verified fixed VHD; distributors place it (``<output-dir>/<runOutputName>.vhd``) and, for Azure
targets, upload it (``azure_image.py``, ``vhd.py``). Without the Azure options (``--staging`` /
``--dry-run-azure``) ManagedImage/SharedImage targets produce the local VHD plus an explicit "not
uploaded" note naming the option, and count as not succeeded — never a silent success.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import errno
import importlib
import logging
import os
import pkgutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from localbuilder.catalog import Generation
from localbuilder.errors import CommandError, DistributeError
from localbuilder.run import run
from localbuilder.state import RunOutput
from localbuilder.template import model

if TYPE_CHECKING:
    from localbuilder.azure.compute import Compute

log = logging.getLogger("localbuilder.distributors")

NOT_UPLOADED = (
    "not uploaded (pass --staging CONTAINER_URL to upload it and create the image, or --dry-run-azure)"
)


@dataclasses.dataclass(frozen=True)
class AzureOptions:
    """``build --staging/--staging-account-id/--dry-run-azure``. ``staging`` may hold a SAS: repr hidden."""

    staging: str | None = dataclasses.field(default=None, repr=False)  # blob container URL
    staging_account_id: str | None = None  # .../Microsoft.Storage/storageAccounts/NAME (gallery versions)
    dry_run: bool = False  # print the az commands instead of calling the Compute API
    # subscription id → Compute client; None = SdkCompute with DefaultAzureCredential. Tests inject the
    # SDK with a fake transport here.
    compute_factory: Callable[[str], Compute] | None = None
    emit: Callable[[str], None] = print  # where --dry-run-azure prints its commands
    upload_progress: bool = False


@dataclasses.dataclass(frozen=True)
class DistributeContext:
    vhd: Path  # the run's verified fixed VHD
    output_dir: Path
    force: bool  # overwrite existing output files
    run_id: str
    template_name: str
    azure: AzureOptions = AzureOptions()
    os_type: model.OsType = model.OsType.linux  # of the source image
    generation: Generation = Generation.V1  # Hyper-V generation of the source image (catalog)
    source_version: str | None = None  # the source image's version (versioning scheme "Source")


# The model class of the ``distribute[]`` target a distributor handles (model.VhdDistributor, …).
TargetT = TypeVar("TargetT", bound=model.Distributor)


class Distributor(abc.ABC, Generic[TargetT]):
    """Handles one ``distribute[]`` target: its model object is ``target``, typed per subclass."""

    registry: ClassVar[dict[str, type[Distributor[Any]]]] = {}
    type_name: ClassVar[str] = ""

    def __init_subclass__(cls, *, type_name: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if type_name is not None:
            cls.type_name = type_name
            Distributor.registry[type_name] = cls

    def __init__(self, target: TargetT) -> None:
        self.target = target

    @property
    def run_output_name(self) -> str:
        return str(self.target.run_output_name)

    def describe(self, index: int) -> str:
        return f"distribute[{index}] {self.type_name} '{self.run_output_name}'"

    def output_path(self, ctx: DistributeContext) -> Path:
        return ctx.output_dir / f"{self.run_output_name}.vhd"

    def preflight(self, ctx: DistributeContext, where: str) -> None:
        """Before any boot: refuse to overwrite an existing output unless --force."""
        dst = self.output_path(ctx)
        if dst.exists() and not ctx.force:
            raise DistributeError(
                f"{where}: {dst} already exists",
                hint="Pass --force to overwrite it, or choose another --output-dir.",
            )

    @abc.abstractmethod
    def distribute(self, ctx: DistributeContext) -> RunOutput:
        """Produce this target's run output; raise DistributeError when it fails."""


def place(src: Path, dst: Path, *, force: bool) -> None:
    """Put the VHD at ``dst``: a hard link when possible (instant, no extra space), else a sparse copy.

    Written under a temporary name and renamed, so ``dst`` is never a partial file. Every OSError
    (read-only, not a directory, disk full …) becomes a DistributeError naming ``dst``.
    """
    tmp = dst.with_name(f".{dst.name}.partial")
    try:
        if dst.exists() and not force:
            raise DistributeError(f"{dst} already exists", hint="Pass --force to overwrite it.")
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp.unlink(missing_ok=True)
        try:
            os.link(src, tmp)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise
            # Another filesystem: keep the copy sparse (a 30 GiB VHD holds ~1 GiB of data).
            try:
                run(["cp", "--sparse=always", str(src), str(tmp)])
            except CommandError as err:
                if os.strerror(errno.ENOSPC) not in err.stderr_tail:
                    raise DistributeError(f"cannot copy the VHD to {dst}: {err.stderr_tail.strip()}") from err
                # The run output's note keeps only the message: the advice goes into it too.
                data_mib = src.stat().st_blocks * 512 / 1024**2
                raise DistributeError(
                    f"disk full while writing {dst} (No space left on device): the VHD is sparse but "
                    f"needs room for its {data_mib:.0f} MiB of data",
                    hint=f"Free space where {dst.parent} lives, or choose another --output-dir.",
                ) from err
        os.replace(tmp, dst)
    except OSError as exc:
        raise os_error(exc, dst) from exc
    finally:
        with contextlib.suppress(OSError):  # ENOTDIR when the "directory" is a file: nothing to remove
            tmp.unlink(missing_ok=True)


def os_error(exc: OSError, dst: Path) -> DistributeError:
    """An OSError while writing ``dst`` as the DistributeError a user can act on."""
    reason = exc.strerror or str(exc)
    other = "choose another --output-dir"
    if exc.errno == errno.EROFS:
        return DistributeError(f"cannot write {dst}: read-only file system",
                               hint=f"Remount {dst.parent} read-write, or {other}.")  # fmt: skip
    if exc.errno in (errno.ENOTDIR, errno.EEXIST):
        return DistributeError(f"cannot write {dst}: {dst.parent} (or a parent) is not a directory",
                               hint=f"Remove the file that is in the way, or {other}.")  # fmt: skip
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DistributeError(f"disk full while writing {dst} ({reason})",
                               hint=f"Free space where {dst.parent} lives, or {other}.")  # fmt: skip
    if exc.errno in (errno.EACCES, errno.EPERM):
        return DistributeError(f"cannot write {dst}: {reason}",
                               hint=f"Make {dst.parent} writable for this user, or {other}.")  # fmt: skip
    return DistributeError(f"cannot write {dst}: {reason}", hint=f"Check {dst.parent}, or {other}.")


_loaded = False


def distributor_for(target: model.Distributor) -> Distributor[Any]:
    global _loaded
    if not _loaded:
        for info in pkgutil.iter_modules(__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{__name__}.{info.name}")
        _loaded = True
    name = str(target.type)
    cls = Distributor.registry.get(name)
    if cls is None:
        raise DistributeError(
            f"distribute type {name!r} is not supported",
            hint=f"Supported: {', '.join(sorted(Distributor.registry))}.",
        )
    return cls(target)
