"""A fake ``guest.Platform`` on FakeHypervisor + FakeCommunicator, recording what the build asked for."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from localbuilder.checkpoints import LiveMeta
from localbuilder.communicator.fake import FakeCommunicator
from localbuilder.errors import BackendError, CheckpointMismatch, DeprovisionError
from localbuilder.guest import BootedGuest, DeprovisionOutcome, GuestRequest, Inspection, SourceImage
from localbuilder.guest.linux import settle_after_reboot
from localbuilder.hypervisor import GuestSpec
from localbuilder.hypervisor.fake import FakeBehaviour, FakeGuest, FakeHypervisor
from localbuilder.state import KeptGuest
from localbuilder.template.model import OsType


@dataclasses.dataclass
class FakePlatform:
    tmp: Path
    # purpose ("build"/"validation") → the communicator of that guest
    comm_for: Callable[[str], FakeCommunicator] = lambda purpose: FakeCommunicator()
    image_os: OsType = OsType.linux
    user_script: bool = False
    deprovision_error: str | None = None
    problems: tuple[str, ...] = ()
    events: list[str] = dataclasses.field(default_factory=list)
    requests: list[GuestRequest] = dataclasses.field(default_factory=list)
    guests: dict[str, FakeGuest] = dataclasses.field(default_factory=dict)
    comms: dict[str, FakeCommunicator] = dataclasses.field(default_factory=dict)
    checkpoints: bool = False  # take (fake) checkpoints: a file per layer, recorded in events
    live: bool = True  # the fake checkpoints claim a memory state
    checkpoint_error: str | None = None
    marks: list[str] = dataclasses.field(default_factory=list)  # what each checkpoint wrote into the guest
    mismatch: set[int] = dataclasses.field(default_factory=set)  # depths whose resumed guest disowns them

    def __post_init__(self) -> None:
        self.hv = FakeHypervisor(script=lambda spec: FakeBehaviour(powers_off_by_itself=True))
        self.source = self.tmp / "source.qcow2"
        if not self.source.exists():  # a rewritten source is a new source (checkpoint keys use mtime)
            self.source.write_bytes(b"source")

    def resolve(self, source: Any) -> SourceImage:
        self.events.append("resolve")
        return SourceImage(self.source, "qcow2", self.image_os, "Debian:debian-12:12:latest")

    @contextlib.contextmanager
    def boot(self, request: GuestRequest) -> Iterator[BootedGuest]:
        purpose = request.purpose
        self.requests.append(request)
        if request.checkpoint is not None:
            self.events.append(f"boot {purpose} from checkpoint {request.checkpoint.meta.depth}")
            if request.checkpoint.meta.depth in self.mismatch:
                raise CheckpointMismatch(f"fake: checkpoint {request.checkpoint.meta.depth} disowned")
        else:
            self.events.append(f"boot {purpose} {request.image.format}")
        request.workdir.mkdir(parents=True, exist_ok=True)
        guest = self.hv.start(GuestSpec(name=f"fake-{purpose}", disk=request.workdir / "disk.qcow2",
                                        workdir=request.workdir))  # fmt: skip
        comm = self.comm_for(purpose)
        comm.wait_ready(request.timeout)
        self.guests[purpose] = guest
        self.comms[purpose] = comm
        overlay = request.workdir / "disk.qcow2"
        overlay.write_bytes(b"overlay")
        booted = BootedGuest(
            guest=guest, comm=comm, host="127.0.0.1", port=2222, user="packer",
            key_file=request.workdir / "key", overlay=overlay, overlay_format="qcow2", serial_log=None,
            backend="fake", settle=settle_after_reboot if request.image.os is OsType.linux else None,
            _keep=lambda: KeptGuest("127.0.0.1", 2222, "packer", str(request.workdir / "key"), "fake"),
        )  # fmt: skip
        try:
            yield booted
        except BaseException:
            if booted.kept is None:
                guest.shutdown(1)
            raise
        finally:
            if booted.kept is None:
                guest.destroy()
                self.events.append(f"stop {purpose}")

    def checkpoint_traits(self, image: SourceImage) -> Mapping[str, Any] | None:
        return {"backend": "fake"} if self.checkpoints else None

    def check_layer(self, disk: Path) -> str | None:
        return None if disk.read_text().startswith("layer ") else "not a fake layer"

    def checkpoint(
        self,
        booted: BootedGuest,
        staging: Path,
        *,
        backing: Path,
        backing_format: str,
        timeout: float,
        mark: str,
        room_for: Path,
    ) -> LiveMeta | None:
        if self.checkpoint_error:
            raise BackendError(self.checkpoint_error)
        booted.layers += 1
        self.marks.append(mark)
        self.events.append(f"checkpoint {booted.layers}")
        (staging / "disk.qcow2").write_text(f"layer {booted.layers} on {backing} ({backing_format})")
        if not self.live:
            return None
        for name in ("vmstate", "seed.iso", "build-key"):
            (staging / name).write_text(name)
        return LiveMeta(user=booted.user, host_keys=(), cpus=1, memory_mib=1024, accel="tcg",
                        qemu_version="fake")

    def deprovision(self, booted: BootedGuest, *, timeout: float) -> DeprovisionOutcome:
        self.events.append("deprovision")
        if self.deprovision_error:
            raise DeprovisionError(self.deprovision_error)
        assert isinstance(booted.guest, FakeGuest)
        booted.guest.simulate_poweroff()
        return DeprovisionOutcome(self.user_script, 0.5, 0.25)

    def convert(self, src: Path, src_format: str, dst: Path, *, size_bytes: int | None) -> int:
        assert not self.guests["build"].is_running(), "converting a disk the guest still writes"
        self.events.append(f"convert {src_format} size={size_bytes}")
        dst.write_bytes(b"fixed vhd")
        return size_bytes or 2 * 1024**3

    def inspect(self, vhd: Path, build_user: str) -> Inspection:
        self.events.append(f"inspect user={build_user}")
        return Inspection(self.problems, {"generalized": not self.problems})
