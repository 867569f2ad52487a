"""Deciding offline, before boot, how a Linux source provisions: its cloud-init and waagent configuration
read from real ext4 disk images (crafted trees, ``tests.disk.craft``), the decision, the per-sha256 cache,
and a whole ``localbuilder build`` of a source that would ignore the NoCloud seed, refused before any guest.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from localbuilder import provisioning as prov
from localbuilder.__main__ import main
from localbuilder.diskread import Ext4Reader
from localbuilder.errors import SourceError
from localbuilder.state import RunState, iter_runs
from tests.disk import craft
from tests.disk.test_inspect import BASE, LINKS

CLOUD_CFG = "# cloud-init's own defaults\nusers:\n  - default\ndisable_root: true\n"
WAAGENT = "Provisioning.Agent=auto\nResourceDisk.Format=y\n"


def disk(tmp_path: Path, files: dict[str, str]) -> Path:
    tree = craft.make_tree(tmp_path / "tree", {**BASE, **files}, LINKS)
    root = craft.make_ext4(tmp_path / "r.ext4", tree)
    return craft.disk_with_partitions(tmp_path / "src.raw", [(0x83, root)], disk_mib=12)


def agents(tmp_path: Path, files: dict[str, str]) -> prov.Agents:
    return prov.read_agents(Ext4Reader(disk(tmp_path, files), craft.MIB))


@pytest.mark.parametrize("text,found", [
    ("datasource_list: [ NoCloud, Azure, None ]\n", ["NoCloud", "Azure", "None"]),
    ("datasource_list: ['Azure']  # set by debconf\n", ["Azure"]),
    ("datasource_list:\n  - Azure\n  # a comment\n  - 'None'\nother: 1\n", ["Azure", "None"]),
    ("datasource_list: []\n", []),
    ("datasource:\n  Azure:\n    apply_network_config: true\n", None),
    ("  datasource_list: [ Azure ]\n", None),  # nested under another key: not the top-level list
], ids=["flow", "quoted", "block", "empty", "absent", "nested"])  # fmt: skip
def test_datasource_list(text: str, found: list[str] | None) -> None:
    assert prov.datasource_list(text) == found


def test_nocloud_source(tmp_path: Path) -> None:
    found = agents(tmp_path, {"/etc/cloud/cloud.cfg": CLOUD_CFG,
                              "/etc/cloud/cloud.cfg.d/90-x.cfg": "datasource_list: [ NoCloud, Azure ]\n"})
    decided = prov.decide(found, "src")
    assert decided.mode == "nocloud" and decided.decided_by == "source files"
    assert decided.evidence == (
        "cloud-init datasource_list [NoCloud, Azure] in /etc/cloud/cloud.cfg.d/90-x.cfg",
    )


def test_builtin_datasource_list_includes_nocloud(tmp_path: Path) -> None:
    assert prov.decide(agents(tmp_path, {"/etc/cloud/cloud.cfg": CLOUD_CFG}), "src").mode == "nocloud"


def test_the_last_file_in_order_wins_and_only_cfg_files_count(tmp_path: Path) -> None:
    found = agents(tmp_path, {
        "/etc/cloud/cloud.cfg": CLOUD_CFG + "datasource_list: [ NoCloud ]\n",
        "/etc/cloud/cloud.cfg.d/10-a.cfg": "datasource_list: [ NoCloud, None ]\n",
        "/etc/cloud/cloud.cfg.d/90_dpkg.cfg": "datasource_list: [ Azure ]\n",
        "/etc/cloud/cloud.cfg.d/99-z.cfg.dpkg-old": "datasource_list: [ NoCloud ]\n",
        "/etc/waagent.conf": "Provisioning.Agent=cloud-init\n",
    })  # fmt: skip
    assert found.datasources == ("Azure",) and found.datasources_from == "/etc/cloud/cloud.cfg.d/90_dpkg.cfg"
    expected = (r"provisions only the Azure way.*\[Azure\] in /etc/cloud/cloud.cfg.d/90_dpkg.cfg.*"
                r"waagent \(Provisioning.Agent=cloud-init: does not")
    with pytest.raises(SourceError, match=expected):
        prov.decide(found, "Debian:debian-12:12:latest")


def test_waagent_provisions_when_there_is_no_cloud_init(tmp_path: Path) -> None:
    found = agents(tmp_path, {"/etc/waagent.conf": WAAGENT})
    assert found.waagent_provisions and not found.nocloud
    with pytest.raises(SourceError, match=r"no cloud-init.*waagent \(Provisioning.Agent=auto: provisions\)"):
        prov.decide(found, "RedHat:RHEL:8-lvm:latest")


def test_old_waagent_settings(tmp_path: Path) -> None:
    conf = "Provisioning.Enabled=n\nProvisioning.UseCloudInit=y\n"
    assert not agents(tmp_path, {"/etc/waagent.conf": conf}).waagent_provisions
    assert prov.waagent_settings("# c\nProvisioning.Enabled=y # yes\n") == {"Provisioning.Enabled": "y"}


def test_disabled_cloud_init_and_no_agent_at_all(tmp_path: Path) -> None:
    found = agents(tmp_path, {"/etc/cloud/cloud.cfg": CLOUD_CFG, "/etc/cloud/cloud-init.disabled": ""})
    with pytest.raises(SourceError, match="has no agent that would provision it: cloud-init is disabled"):
        prov.decide(found, "src")
    with pytest.raises(SourceError, match=r"no cloud-init \(/etc/cloud/cloud.cfg is absent\)"):
        prov.decide(agents(tmp_path / "b", {}), "src")


def test_for_source_reads_once_per_sha256(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCALBUILDER_HOME", str(tmp_path / "home"))
    image = disk(tmp_path, {"/etc/cloud/cloud.cfg": CLOUD_CFG})
    first = prov.for_source(image, "ab" * 32, "src", request=prov.ProvisioningRequest.auto)
    assert first.mode == "nocloud" and (tmp_path / "home/cache/provisioning" / f"{'ab' * 32}.json").is_file()

    def no_reading(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached decision must be used")

    monkeypatch.setattr(prov, "open_linux_root", no_reading)
    assert prov.for_source(image, "ab" * 32, "src", request=prov.ProvisioningRequest.auto) == first
    forced = prov.for_source(image, "", "src", request=prov.ProvisioningRequest.nocloud)
    assert forced.decided_by == "--provisioning nocloud"


def test_an_unreadable_source_boots_with_the_seed_and_says_so(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCALBUILDER_HOME", str(tmp_path / "home"))
    blank = craft.disk_with_partitions(tmp_path / "blank.raw", [(0x83, 4)], disk_mib=6)
    found = prov.for_source(blank, "cd" * 32, "src", request=prov.ProvisioningRequest.auto)
    assert found.mode == "nocloud" and found.decided_by == "unread"
    assert "no filesystem a Linux root lives on" in found.evidence[0]


def test_build_refuses_an_azure_only_source_before_boot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through the CLI and the real LocalPlatform: no guest boots (there is no bootable disk to boot)."""
    monkeypatch.setenv("LOCALBUILDER_HOME", str(tmp_path / "home"))
    image = disk(tmp_path, {"/etc/cloud/cloud.cfg": CLOUD_CFG,
                            "/etc/cloud/cloud.cfg.d/90_dpkg.cfg": "datasource_list: [ Azure ]\n"})
    before = hashlib.sha256(image.read_bytes()).hexdigest()
    assert main(["image", "add", str(image), "--urn", "Debian:debian-12:12-azure:1.0.0"]) == 0
    template = tmp_path / "t.json"
    template.write_text(json.dumps({
        "type": "Microsoft.VirtualMachineImages/imageTemplates", "apiVersion": "2022-07-01",
        "location": "westeurope",
        "properties": {
            "source": {"type": "PlatformImage", "publisher": "Debian", "offer": "debian-12",
                       "sku": "12-azure", "version": "latest"},
            "customize": [{"type": "Shell", "name": "s", "inline": ["true"]}],
            "distribute": [{"type": "VHD", "runOutputName": "t"}],
        },
    }))  # fmt: skip
    assert main(["build", str(template), "--accel", "tcg", "--output-dir", str(tmp_path / "out")]) == 1
    (run,) = list(iter_runs("t"))
    record = run.read()
    assert record.run_state is RunState.Failed
    assert "Debian:debian-12:12-azure:1.0.0 provisions only the Azure way" in record.last_run_status.message
    assert not list(run.path.rglob("serial.log")) and not list((tmp_path / "out").glob("*.vhd"))
    assert hashlib.sha256(image.read_bytes()).hexdigest() == before, "the source must never be written"
