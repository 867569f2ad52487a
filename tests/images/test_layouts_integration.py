"""Every disk layout builds end to end: RHEL's LVM + XFS layout and the Gen2 (GPT + UEFI) image each build
``examples/debian-hello.json`` exactly as a user would (the bundled template, its source sku overridden with
``--set``), and the VHD is inspected offline and found generalized.

The LVM image has / and /var as XFS logical volumes: debugfs cannot read either, so the build's inspection
goes through libguestfs, which must mount /var too (cloud-init's and waagent's state live there). That the
customization landed on the /var volume is read back from the VHD.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localbuilder import guestfs, vhd
from localbuilder.__main__ import main
from localbuilder.inspect import inspect_image
from localbuilder.state import RunState, iter_runs
from tests.build.mounts import localbuilder_home

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "debian-hello.json"


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, debian_image_lvm: Any, debian_image_gen2: Any
         ) -> Iterator[Path]:
    with localbuilder_home(tmp_path_factory.mktemp("lbhome")) as home:
        for image, sku in ((debian_image_lvm, "12-lvm-xfs"), (debian_image_gen2, "12-gen2")):
            assert main(["image", "add", str(image.path), "--urn", f"Debian:debian-12:{sku}:0.1.0"]) == 0
        yield home


def build_example(sku: str, out: Path) -> tuple[Path, dict[str, Any]]:
    """Build the bundled example with ``sku``; the VHD and the build's own generalization report."""
    rc = main(["build", str(EXAMPLE), "--set", f"properties.source.sku={sku}", "--output-dir", str(out),
               "--force"])
    runs = sorted(iter_runs("debian-hello"), key=lambda r: r.path.name)
    record = runs[-1].read()
    assert rc == 0 and record.run_state is RunState.Succeeded, record.last_run_status
    report = json.loads((runs[-1].path / "generalization.json").read_text())
    return out / "debian-hello.vhd", report


def test_lvm_xfs_source_builds_and_is_inspected(home: Path, tmp_path: Path) -> None:
    image, report = build_example("12-lvm-xfs", tmp_path / "out")
    assert vhd.fixed_vhd_footer(image) is not None
    # The build's own inspection: libguestfs, root on the logical volume, /var mounted from its own.
    assert report["inspected"] and report["generalized"], report
    assert report["reader"] == "libguestfs" and report["filesystem"] == "xfs"
    assert report["root_device"] in ("/dev/rootvg/rootlv", "/dev/mapper/rootvg-rootlv")
    assert {"mountpoint": "/var", "device": "/dev/rootvg/varlv"} in report["mounts"] or \
        {"mountpoint": "/var", "device": "/dev/mapper/rootvg-varlv"} in report["mounts"], report["mounts"]
    assert sorted(v["name"] for v in report["volumes"]) == ["rootvg/rootlv", "rootvg/varlv"]
    assert [p["filesystem"] for p in report["partitions"]] == ["ext4", "lvm2"]
    # What the customization wrote under /var is on the /var volume of the VHD.
    with guestfs.Guestfish() as gf:
        gf.launch(image, "raw")
        fs_of = guestfs.filesystems(gf)
        found = guestfs.find_os(gf, fs_of)
        assert found is not None
        guestfs.mount_all(gf, found)
        page = guestfs.GuestfsReader(gf).read_text("/var/www/hello/index.html")
    assert page is not None and "<html" in page.lower()


def test_inspect_command_shows_the_lvm_layout(home: Path, debian_image_lvm: Any,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(debian_image_lvm.path)]) == 0
    out = capsys.readouterr().out
    assert "LV rootvg/rootlv" in out and "LV rootvg/varlv" in out and "lvm2" in out
    assert "mount /var" in out and "read with libguestfs" in out


def test_gen2_source_builds_and_is_inspected(home: Path, tmp_path: Path) -> None:
    image, report = build_example("12-gen2", tmp_path / "out")
    assert vhd.fixed_vhd_footer(image) is not None
    assert report["inspected"] and report["generalized"], report
    assert report["reader"] == "debugfs"
    assert report["root"]["scheme"] == "gpt" and report["root"]["number"] == 3
    again = inspect_image(image, build_user="packer")
    assert again.generalized and again.root is not None and again.root.number == 3
