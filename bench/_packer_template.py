"""Translate an AIB template into the equivalent Packer 1.6.6 ``qemu`` build, for the side-by-side bench.

The Packer template is generated, never hand-written, so that it stays in step with the AIB template
that ``localbuilder build`` runs. "Equivalent" means the same work on the same machine:

* the same source image as a **backing file** (``disk_image`` + ``use_backing_file``; Packer never
  writes it), grown to ``osDiskSizeGB``; the same accelerator, vCPUs and memory (``vmSize`` through
  ``localbuilder.hypervisor.sizes``), the same virtio disk options and restricted user network;
* the same build user (``packer``) from a NoCloud seed made by ``localbuilder.hypervisor.seed``;
* ``cloud-init status --wait`` first, as localbuilder does before its first step (FACTS §3c);
* ``customize[]`` in order: Shell ``inline`` → ``shell`` ``inline`` (Packer's ``#!/bin/sh -e`` as the
  SSH user, exactly the semantics localbuilder copies from it), Shell ``scriptUri`` → ``shell``
  ``script`` with the fetched file, run as root like localbuilder does, File → ``file``;
* AIB's hidden deprovision step with localbuilder's ``deprovision.sh`` (or the template's own
  ``/tmp/DeprovisioningScript.sh``) and ``shutdown -P now`` in ONE root shell as ``shutdown_command``:
  after the build user is deleted no second ``sudo`` could run (FACTS §3d, §4).

QEMU 7.2 quirks of Packer 1.6.6 handled here (FACTS §3d): ``qemu_img_args.create = ["-F", fmt]``
(else "Backing file specified without backing format"); a ``-drive`` in ``qemuargs`` replaces all of
Packer's drives, so the build disk is declared again before the seed drive; ``-netdev`` is replaced
to bind the SSH forward to 127.0.0.1 (Packer's default listens on every interface).
"""

from __future__ import annotations

import dataclasses
import posixpath
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from localbuilder.deprovision import OUR_SCRIPT, USER_SCRIPT
from localbuilder.errors import UsageError
from localbuilder.hypervisor.seed import BUILD_USER
from localbuilder.template import model

# The build disk inside Packer's output directory; ``{{ .OutputDir }}``/``{{ .Name }}`` are expanded
# by Packer in ``qemuargs`` (Name is vm_name).
VM_NAME = "disk.qcow2"
# localbuilder's session waits for cloud-init the same way (exit 2 = done with recoverable errors).
CLOUD_INIT_WAIT = "cloud-init status --wait >/dev/null || [ $? -eq 2 ]"
# How a scriptUri script runs: as root, like localbuilder's Shell customizer (``sudo -n`` never
# prompts). ``{{ .Vars }}`` are Packer's environment assignments; sudo accepts them before the command.
SCRIPT_AS_ROOT = "chmod +x {{ .Path }}; sudo -n {{ .Vars }} {{ .Path }}"
SCRIPT_AS_ROOT_NO_SHEBANG = "sudo -n {{ .Vars }} /bin/sh {{ .Path }}"


@dataclasses.dataclass(frozen=True)
class GuestSettings:
    """The machine both tools get: same source, accelerator, shape and disk size."""

    source_image: Path
    source_format: str  # qemu-img format name of the source (qcow2 here)
    accel: str  # "tcg" | "kvm", the probe's verdict
    cpus: int
    memory_mib: int
    disk_size_mib: int | None  # None: keep the source's size (osDiskSizeGB 0)


@dataclasses.dataclass(frozen=True)
class BuildFiles:
    """Host files the Packer build uses; all made by the caller in a private temp dir."""

    seed_iso: Path
    ssh_key: Path  # the build key's private half (the seed authorizes its public half)
    deprovision_script: Path  # a copy of localbuilder's guest_scripts/deprovision.sh
    output_dir: Path  # Packer's output_directory: must not exist yet
    serial_log: Path


def shutdown_command(build_user: str = BUILD_USER) -> str:
    """Deprovision and power off from ONE root shell (FACTS §3d/§4).

    A template that wrote ``/tmp/DeprovisioningScript.sh`` replaces the default, as in AIB and
    localbuilder. ``deprovision.sh`` schedules its own detached power-off unless ``LB_NO_POWEROFF=1``;
    here ``shutdown -P now`` follows instead, in the same shell, and only when deprovision succeeded
    (a failed deprovision then surfaces as Packer's shutdown timeout rather than as a wrong image).
    """
    inner = (
        f"if [ -f {USER_SCRIPT} ]; then chmod +x {USER_SCRIPT} && {USER_SCRIPT}; "
        f"else LB_NO_POWEROFF=1 sh {OUR_SCRIPT} {shlex.quote(build_user)}; fi && shutdown -P now"
    )
    return f"sudo -n sh -c {shlex.quote(inner)}"


def _provisioner(index: int, step: Any, fetched: Mapping[str, Path]) -> dict[str, Any]:
    where = f"properties.customize[{index}]"
    if isinstance(step, model.ShellCustomizer):
        if step.script_uri:
            local = _fetched(fetched, step.script_uri, f"{where}.scriptUri")
            has_shebang = local.read_bytes()[:2] == b"#!"
            return {
                "type": "shell",
                "script": str(local),
                "execute_command": SCRIPT_AS_ROOT if has_shebang else SCRIPT_AS_ROOT_NO_SHEBANG,
                # localbuilder treats a dropped connection during a Shell step as a reboot, not a failure.
                "expect_disconnect": True,
            }
        return {"type": "shell", "inline": list(step.inline), "expect_disconnect": True}
    if isinstance(step, model.FileCustomizer):
        destination = posixpath.normpath(step.destination)
        # The same rule localbuilder and AIB apply on Linux: only /tmp is writable by the File step.
        if not destination.startswith("/tmp/"):
            raise UsageError(
                f"{where}.destination: {step.destination!r} is outside /tmp, which AIB refuses on Linux",
                hint="Write the file to /tmp and move it with a Shell step using sudo.",
            )
        local = _fetched(fetched, step.source_uri, f"{where}.sourceUri")
        return {"type": "file", "source": str(local), "destination": destination}
    raise UsageError(
        f"{where}: a {type(step).__name__} step has no Packer equivalent in this benchmark",
        hint="The Packer comparison covers Linux templates with Shell and File customizers only.",
    )


def _fetched(fetched: Mapping[str, Path], uri: str, where: str) -> Path:
    try:
        return fetched[uri]
    except KeyError:
        raise UsageError(
            f"{where}: {uri!r} was not fetched", hint="Fetch every scriptUri/sourceUri before generating."
        ) from None


def packer_template(
    template: model.Template,
    guest: GuestSettings,
    files: BuildFiles,
    fetched: Mapping[str, Path],
    *,
    build_user: str = BUILD_USER,
    ssh_timeout_minutes: int = 20,
    shutdown_timeout_minutes: int = 10,
) -> dict[str, Any]:
    """The Packer 1.6.6 JSON template (as a dict) for ``template``; ``fetched`` maps every
    scriptUri/sourceUri to its verified local copy (``localbuilder.fetch.fetch_all``)."""
    if template.os_type is not model.OsType.linux:
        raise UsageError(
            f"{template.name}: the Packer comparison covers Linux templates only",
            hint="Use a Linux template such as examples/debian-hello.json.",
        )
    provisioners: list[dict[str, Any]] = [{"type": "shell", "inline": [CLOUD_INIT_WAIT]}]
    provisioners += [_provisioner(i, step, fetched) for i, step in enumerate(template.customize)]
    # Uploaded unconditionally (cheap); the shutdown command picks it or the template's own script.
    provisioners.append(
        {"type": "file", "source": str(files.deprovision_script), "destination": OUR_SCRIPT}
    )
    builder: dict[str, Any] = {
        "type": "qemu",
        "iso_url": str(_abs(guest.source_image)),
        "iso_checksum": "none",
        "disk_image": True,
        "use_backing_file": True,
        "format": "qcow2",
        "qemu_img_args": {"create": ["-F", guest.source_format]},
        "output_directory": str(files.output_dir),
        "vm_name": VM_NAME,
        "accelerator": guest.accel,
        "cpus": guest.cpus,
        "memory": guest.memory_mib,
        "disk_interface": "virtio",
        "net_device": "virtio-net",
        "headless": True,
        "qemuargs": [
            # The same drive options as localbuilder's qemu backend (hypervisor/qemu.py).
            ["-drive", "file={{ .OutputDir }}/{{ .Name }},if=virtio,format=qcow2,discard=unmap"],
            ["-drive", f"file={files.seed_iso},if=virtio,format=raw,readonly=on"],
            ["-netdev", "user,id=user.0,restrict=on,hostfwd=tcp:127.0.0.1:{{ .SSHHostPort }}-:22"],
            ["-serial", f"file:{files.serial_log}"],
        ],
        "communicator": "ssh",
        "ssh_username": build_user,
        "ssh_private_key_file": str(files.ssh_key),
        "ssh_timeout": f"{ssh_timeout_minutes}m",
        # slirp accepts connections before sshd listens (FACTS §3): each such attempt fails the
        # handshake, and Packer's default of 10 attempts can run out while the guest still boots.
        "ssh_handshake_attempts": 100,
        "shutdown_command": shutdown_command(build_user),
        "shutdown_timeout": f"{shutdown_timeout_minutes}m",
    }
    if guest.disk_size_mib is not None:
        builder["disk_size"] = f"{guest.disk_size_mib}M"
    else:
        builder["skip_resize_disk"] = True
    return {"builders": [builder], "provisioners": provisioners}


def _abs(path: Path) -> Path:
    # Packer resolves a relative iso_url against its working directory, which is a temp dir here.
    return path.expanduser().absolute()
