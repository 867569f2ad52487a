"""Never a wrong image that says Succeeded: damaged, disowned and disk-only checkpoints with real guests.

One LOCALBUILDER_HOME for the module (the cache is shared as a user's builds share it). A cold build of a
four-step template (Shell, File, Shell, Shell) makes the reference VHD and fills the cache; every probe
then damages the cache the way a user's machine could and builds the same template again. Each build
must end Succeeded **with a VHD holding every customization** — compared with the reference offline,
file by file (kind and size under COMPARED_DIRS, contents of what the steps wrote) — and say in its log
what it discarded. No probe may end in a wrong Succeeded.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from localbuilder import checkpoints, vhd
from localbuilder.__main__ import main
from localbuilder.checkpoints import DISK, FileDigest
from localbuilder.diskread import Ext4Reader, ReadAt, parse_partitions
from localbuilder.state import RunState
from tests.build.mounts import localbuilder_home
from tests.build.test_build_integration import processes_mentioning, write_template
from tests.build.test_checkpoints_integration import image_files, runs_of, started_steps

pytestmark = pytest.mark.integration

NAME = "integrity"
# Files the steps write: their contents must be byte-identical to the reference build's.
WRITTEN = ("/etc/lb-one", "/etc/lb-payload.txt", "/opt/app/two", "/etc/lb-three")


def steps() -> list[dict[str, Any]]:
    return [
        {"type": "Shell", "name": "one", "inline": ["echo one | sudo tee /etc/lb-one"]},
        {"type": "File", "name": "payload", "sourceUri": "payload.txt", "destination": "/tmp/payload.txt"},
        {"type": "Shell", "name": "two", "inline": ["sudo cp /tmp/payload.txt /etc/lb-payload.txt",
                                                    "sudo mkdir -p /opt/app",
                                                    "seq 1 20000 | sudo tee /opt/app/two >/dev/null"]},
        {"type": "Shell", "name": "three", "inline": ["echo three | sudo tee /etc/lb-three"]},
    ]  # fmt: skip


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, debian_image: Any, debian_image_gen2: Any) -> Any:
    with localbuilder_home(tmp_path_factory.mktemp("lbhome-integrity")) as home:
        assert main(["image", "add", str(debian_image.path), "--urn", "Debian:debian-12:12:0.1.0"]) == 0
        gen2 = ["image", "add", str(debian_image_gen2.path), "--urn", "Debian:debian-12:12-gen2:0.1.0"]
        assert main(gen2) == 0
        yield home


def contents(image: Path) -> dict[str, str]:
    """sha256 of each file the steps wrote, read offline from the VHD's ext4 root."""
    size = vhd.read_footer(image).current_size
    parts = parse_partitions(ReadAt(image, size), size)
    for p in parts:
        fs = Ext4Reader(image, p.start)
        try:
            if "passwd" not in (fs.listdir("/etc") or {}):
                continue
        except Exception:  # noqa: BLE001 - not an ext partition
            continue
        out = {}
        for path in WRITTEN:
            text = fs.read_text(path)
            out[path] = hashlib.sha256(text.encode()).hexdigest() if text is not None else "absent"
        out["/var/lib/localbuilder"] = "present" if fs.entry("/var/lib/localbuilder") else "absent"
        return out
    raise AssertionError(f"no root filesystem in {image}")


@pytest.fixture(scope="module")
def reference(home: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The cold build: every step ran, a checkpoint after the boot and after each step."""
    tdir = tmp_path_factory.mktemp("tpl")
    (tdir / "payload.txt").write_text("payload-content\n")
    template = write_template(tdir, NAME, steps())
    out = tmp_path_factory.mktemp("out-cold")
    assert main(["build", str(template), "--output-dir", str(out)]) == 0
    entries = checkpoints.CheckpointCache().entries()
    assert len(entries) == 5 and all(e.meta.live is not None for e in entries)
    image = out / f"{NAME}.vhd"
    files, written = image_files(image), contents(image)
    assert written["/etc/lb-three"] != "absent" and written["/var/lib/localbuilder"] == "absent"
    return {"template": template, "files": files, "contents": written}


def entry_at(depth: int) -> checkpoints.Entry:
    (found,) = [e for e in checkpoints.CheckpointCache().entries() if e.meta.depth == depth
                and e.meta.template == NAME]
    return found


def rebuild(reference: dict[str, Any], out: Path) -> tuple[Path, str]:
    assert main(["build", str(reference["template"]), "--output-dir", str(out)]) == 0
    run = runs_of(NAME)[-1]
    assert run.read().run_state is RunState.Succeeded
    return out / f"{NAME}.vhd", run.customization_log.read_text()


def assert_same_image(reference: dict[str, Any], image: Path) -> None:
    assert contents(image) == reference["contents"]
    files = image_files(image)
    only_one = sorted(set(files) ^ set(reference["files"]))
    assert only_one == [], f"files in only one of the two images: {only_one[:20]}"
    differ = sorted(p for p in files if files[p] != reference["files"][p])
    assert differ == [], f"files that differ in kind or size: {differ[:20]}"


def flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0x5A]))


def test_disk_only_resume_gives_the_live_image(reference: dict[str, Any], tmp_path: Path) -> None:
    """The recorded QEMU changed (an apt upgrade): the memory state cannot be loaded, the checkpoint's
    disk is booted instead — and holds every step's writes, because the guest was frozen for the cut."""
    deepest = entry_at(4)
    meta = deepest.path / "meta.json"
    original = meta.read_text()
    data = json.loads(original)
    data["live"]["qemuVersion"] = "QEMU emulator version 0.0.1 (an older qemu)"
    meta.write_text(json.dumps(data))
    try:
        image, _ = rebuild(reference, tmp_path)
        run = runs_of(NAME)[-1]
        assert started_steps(run) == [], "no step may run again: the disk layer holds them all"
        build_log = run.build_log.read_text()
        assert "booting its disk instead" in build_log
        assert_same_image(reference, image)
    finally:
        meta.write_text(original)  # the live entry again, for the next probes


def test_flipped_bytes_in_a_memory_state(reference: dict[str, Any], tmp_path: Path) -> None:
    deepest = entry_at(4)
    flip(deepest.path / "vmstate", (deepest.path / "vmstate").stat().st_size // 2)
    image, log = rebuild(reference, tmp_path)
    assert f"checkpoint {deepest.key[:12]} after" in log and "vmstate does not match its digest" in log
    assert started_steps(runs_of(NAME)[-1]) == ["customize[3] Shell 'three'"]
    assert_same_image(reference, image)


def test_flipped_bytes_in_a_disk_layer(reference: dict[str, Any], tmp_path: Path) -> None:
    middle = entry_at(3)
    flip(middle.path / DISK, (middle.path / DISK).stat().st_size - 4096)
    image, log = rebuild(reference, tmp_path)
    assert f"checkpoint {middle.key[:12]} after" in log and "disk.qcow2 does not match its digest" in log
    assert started_steps(runs_of(NAME)[-1]) == ["customize[2] Shell 'two'", "customize[3] Shell 'three'"]
    assert_same_image(reference, image)


def test_truncated_parent_layer_and_memory_state(reference: dict[str, Any], tmp_path: Path) -> None:
    """A truncated parent layer once made every build fail ("Image is not in qcow2 format") until the
    user guessed to prune; now the entry and everything on it are discarded and the build goes on."""
    parent, deepest = entry_at(1), entry_at(4)
    os.truncate(deepest.path / "vmstate", 1024)
    os.truncate(parent.path / DISK, (parent.path / DISK).stat().st_size // 2)
    image, log = rebuild(reference, tmp_path)
    assert f"checkpoint {parent.key[:12]} after" in log and "disk.qcow2 has" in log
    assert len(started_steps(runs_of(NAME)[-1])) == 4  # from the booted source (depth 0)
    assert_same_image(reference, image)


def test_a_guest_that_is_not_at_its_checkpoint_is_refused(reference: dict[str, Any], tmp_path: Path) -> None:
    """Entry 4's files replaced by entry 3's, digests rewritten to match: the files are sound, but the
    resumed guest says it is checkpoint 3 — the build refuses it and continues from a checkpoint that
    proves itself, so step three runs again."""
    three, four = entry_at(3), entry_at(4)
    for name in (DISK, "vmstate", "seed.iso", "build-key"):
        (four.path / name).write_bytes((three.path / name).read_bytes())
    meta = json.loads((four.path / "meta.json").read_text())
    meta["files"] = {n: FileDigest.of(four.path / n).as_dict() for n in meta["files"]}
    meta["backing"] = str(three.meta.backing)  # entry 3's layer already points at entry 2's
    (four.path / "meta.json").write_text(json.dumps(meta))
    image, log = rebuild(reference, tmp_path)
    assert f"checkpoint {four.key[:12]} refused" in log and f"says it is checkpoint {three.key[:12]}" in log
    assert started_steps(runs_of(NAME)[-1]) == ["customize[3] Shell 'three'"]
    assert_same_image(reference, image)


def test_killed_while_saving_a_checkpoint(reference: dict[str, Any], tmp_path: Path) -> None:
    """SIGKILL while the memory state is being written: the next build neither uses nor trips over the
    half-written entry."""
    tdir = Path(reference["template"]).parent
    more = write_template(tdir, NAME, [*steps(), {"type": "Shell", "name": "four",
                                                  "inline": ["echo four | sudo tee /etc/lb-four"]}])
    cache = checkpoints.CheckpointCache()
    env = dict(os.environ)
    proc = subprocess.Popen([sys.executable, "-m", "localbuilder", "build", str(more), "--output-dir",
                             str(tmp_path / "killed")], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            states = [p for d in cache.root.glob(".tmp-*") for p in d.glob("vmstate") if p.stat().st_size]
            if states:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the build never started saving a checkpoint")
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # The next build recovers the killed run's guest, and the half-written entry is never used.
    out = tmp_path / "after"
    assert main(["build", str(more), "--output-dir", str(out)]) == 0
    written = contents(out / f"{NAME}.vhd")
    assert {k: v for k, v in written.items() if k in reference["contents"]} == reference["contents"]
    assert not list(cache.root.glob(".tmp-*")), "the dead build's staging dir must be gone"
    assert processes_mentioning(str(os.environ["LOCALBUILDER_HOME"])) == []
    write_template(tdir, NAME, steps())  # the module's template again


def test_uefi_build_with_disk_only_checkpoints(home: Path, tmp_path: Path) -> None:
    """UEFI guests get disk-only checkpoints: editing the last step resumes from the checkpoint's disk
    (booted) and the image holds the earlier steps' files, and the new last step's, not the old one's."""
    tdir = tmp_path / "tpl"
    gen2 = {"source": {"type": "PlatformImage", "publisher": "Debian", "offer": "debian-12", "sku": "12-gen2",
                       "version": "latest"}}
    uefi_steps = [
        {"type": "Shell", "name": "first", "inline": ["seq 1 5000 | sudo tee /etc/lb-first >/dev/null"]},
        {"type": "Shell", "name": "last", "inline": ["echo v1 | sudo tee /etc/lb-last-v1"]},
    ]
    first = write_template(tdir, "uefi", uefi_steps, **gen2)
    assert main(["build", str(first), "--output-dir", str(tmp_path / "a")]) == 0
    entries = [e for e in checkpoints.CheckpointCache().entries() if e.meta.template == "uefi"]
    assert len(entries) == 3 and all(e.meta.live is None for e in entries)
    uefi_steps[1] = {"type": "Shell", "name": "last", "inline": ["echo v2 | sudo tee /etc/lb-last-v2"]}
    edited = write_template(tdir, "uefi", uefi_steps, **gen2)
    assert main(["build", str(edited), "--output-dir", str(tmp_path / "b")]) == 0
    run = runs_of("uefi")[-1]
    assert started_steps(run) == ["customize[1] Shell 'last'"]
    files = image_files(tmp_path / "b" / "uefi.vhd")
    assert "/etc/lb-last-v2" in files and "/etc/lb-last-v1" not in files
    assert files["/etc/lb-first"] == image_files(tmp_path / "a" / "uefi.vhd")["/etc/lb-first"]
    assert files["/etc/lb-first"][1] == len("".join(f"{i}\n" for i in range(1, 5001)))
