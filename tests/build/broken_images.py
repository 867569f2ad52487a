"""Broken (and slow) variants of the Debian test image, made offline with debugfs (no mount, no nbd).

The test image is qcow2 with an MBR and one ext4 root partition at sector 2048 (FACTS §2). A variant is a
sparse raw copy of it with one file of the root filesystem replaced through ``debugfs -w`` at the
partition's byte offset: seconds per variant, nothing attached to the host.
"""

from __future__ import annotations

import re
from pathlib import Path

from localbuilder.run import run

ROOT_OFFSET = 2048 * 512
GRUB_CFG = "/boot/grub/grub.cfg"


def _fs(image: Path) -> str:
    return f"{image}?offset={ROOT_OFFSET}"


def read_file(image: Path, path: str) -> str:
    return run(["debugfs", "-R", f"cat {path}", _fs(image)]).stdout


def write_file(image: Path, path: str, text: str, scratch: Path) -> None:
    """Replace (or create) ``path`` in the image's root filesystem with ``text``."""
    local = scratch / (path.strip("/").replace("/", "_") + ".new")
    local.write_text(text)
    parent, _, name = path.rpartition("/")
    # debugfs runs the requests in order and keeps going after "rm" of a missing file.
    requests = f"cd {parent or '/'}\nrm {name}\nwrite {local} {name}\nsif {name} mode 0100644\n"
    script = scratch / "debugfs.cmds"
    script.write_text(requests)
    run(["debugfs", "-w", "-f", str(script), _fs(image)])
    if read_file(image, path) != text:
        raise AssertionError(f"debugfs did not write {path} into {image}")


def mkdir(image: Path, path: str) -> None:
    run(["debugfs", "-w", "-R", f"mkdir {path}", _fs(image)], check=False)


def raw_copy(source_qcow2: Path, dest: Path) -> Path:
    """A sparse raw copy of the test image (the pristine one is never written)."""
    run(["qemu-img", "convert", "-O", "raw", source_qcow2, dest])
    return dest


def _edit_default_entry(cfg: str, edit: str) -> str:
    """Apply ``edit`` to every ``linux`` line of grub.cfg: ``noinitrd`` drops the initrd lines too."""
    if edit == "noinitrd":
        return re.sub(r"(?m)^\s*initrd\s.*$", "", cfg)
    raise ValueError(edit)


# Each variant: what to change in the guest's root filesystem.
VARIANTS = ("panic", "noroot", "badsshd", "azureonly", "slowssh")


def make_variant(kind: str, source: Path, dest: Path, scratch: Path) -> Path:
    """A raw copy of ``source`` (the qcow2 test image) at ``dest``, broken as ``kind`` says (VARIANTS)."""
    raw_copy(source, dest)
    scratch.mkdir(parents=True, exist_ok=True)
    if kind == "panic":
        # No initramfs: the kernel must mount root=UUID=… itself, which it cannot ("VFS: Unable to mount
        # root fs") → Kernel panic. (init=/nowhere alone is healed by initramfs-tools' fallback to
        # /sbin/init.)
        cfg = read_file(dest, GRUB_CFG)
        write_file(dest, GRUB_CFG, _edit_default_entry(cfg, "noinitrd"), scratch)
    elif kind == "noroot":
        cfg = read_file(dest, GRUB_CFG)
        broken = re.sub(r"root=UUID=[0-9a-f-]+", "root=UUID=0badc0de-0000-4000-8000-000000000000", cfg)
        write_file(dest, GRUB_CFG, broken, scratch)
    elif kind == "badsshd":
        cfg = read_file(dest, "/etc/ssh/sshd_config")
        write_file(dest, "/etc/ssh/sshd_config", cfg + "\nThisIsNotAnOption yes\n", scratch)
    elif kind == "azureonly":
        write_file(
            dest,
            "/etc/cloud/cloud.cfg.d/90-localbuilder.cfg",
            "datasource_list: [ Azure ]\nlocale: C.UTF-8\n",
            scratch,
        )
    elif kind == "slowssh":
        mkdir(dest, "/etc/systemd/system/ssh.service.d")
        write_file(
            dest,
            "/etc/systemd/system/ssh.service.d/50-slow.conf",
            "[Service]\nExecStartPre=/bin/sleep 90\nTimeoutStartSec=300\n",
            scratch,
        )
    else:
        raise ValueError(kind)
    return dest
