"""The Packer template generated for the side-by-side benchmark (bench/_packer_template.py); no build."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from bench._packer_template import (
    CLOUD_INIT_WAIT,
    SCRIPT_AS_ROOT,
    BuildFiles,
    GuestSettings,
    packer_template,
    shutdown_command,
)
from localbuilder import keys
from localbuilder.deprovision import OUR_SCRIPT, USER_SCRIPT, script_text
from localbuilder.errors import UsageError
from localbuilder.run import run
from localbuilder.template import model, parse_template
from localbuilder.template.load import load_documents

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "debian-hello.json"


def _template(path: Path) -> model.Template:
    template, result = parse_template(load_documents(path)[0])
    assert template is not None, result.findings
    return template


def _fetched(template: model.Template, base: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for step in template.customize:
        for attr in ("script_uri", "source_uri"):
            uri = getattr(step, attr, None)
            if uri:
                out[uri] = (base / uri).absolute()
    return out


def _generate(tmp_path: Path, template: model.Template | None = None) -> dict[str, Any]:
    template = template or _template(EXAMPLE)
    guest = GuestSettings(tmp_path / "source.qcow2", "qcow2", "tcg", 1, 3584, 4096)
    key = keys.write_private_key(tmp_path / "key", keys.generate_ed25519())
    files = BuildFiles(
        seed_iso=tmp_path / "seed.iso",
        ssh_key=key,
        deprovision_script=tmp_path / "deprovision.sh",
        output_dir=tmp_path / "output",
        serial_log=tmp_path / "serial.log",
    )
    return packer_template(template, guest, files, _fetched(template, EXAMPLE.parent))


def test_builder_has_the_qemu72_fixes_and_same_guest(tmp_path: Path) -> None:
    b = _generate(tmp_path)["builders"][0]
    assert b["type"] == "qemu"
    assert b["disk_image"] is True and b["use_backing_file"] is True
    assert b["qemu_img_args"] == {"create": ["-F", "qcow2"]}
    assert (b["accelerator"], b["cpus"], b["memory"], b["disk_size"]) == ("tcg", 1, 3584, "4096M")
    assert b["iso_url"] == str(tmp_path / "source.qcow2")
    assert b["output_directory"] == str(tmp_path / "output")


def test_qemuargs_bind_ssh_to_loopback_and_declare_build_disk_before_seed(tmp_path: Path) -> None:
    args = _generate(tmp_path)["builders"][0]["qemuargs"]
    flags = [a[0] for a in args]
    netdevs = [a[1] for a in args if a[0] == "-netdev"]
    assert netdevs == ["user,id=user.0,restrict=on,hostfwd=tcp:127.0.0.1:{{ .SSHHostPort }}-:22"]
    drives = [a[1] for a in args if a[0] == "-drive"]
    assert len(drives) == 2 and flags.count("-drive") == 2
    assert drives[0].startswith("file={{ .OutputDir }}/{{ .Name }},")
    assert "format=qcow2" in drives[0]
    assert drives[1].startswith(f"file={tmp_path / 'seed.iso'},") and "readonly=on" in drives[1]


def test_provisioners_follow_customize_order(tmp_path: Path) -> None:
    provs = _generate(tmp_path)["provisioners"]
    # cloud-init wait, the four customize steps of the example, the deprovision upload.
    assert len(provs) == 6
    assert provs[0] == {"type": "shell", "inline": [CLOUD_INIT_WAIT]}
    assert provs[1]["type"] == "shell" and provs[1]["inline"][1] == "sudo mkdir -p /var/www/hello"
    assert provs[2]["type"] == "shell"
    assert provs[2]["script"] == str((EXAMPLE.parent / "scripts" / "configure-app.sh").absolute())
    assert provs[2]["execute_command"] == SCRIPT_AS_ROOT  # scriptUri runs as root, like localbuilder
    assert "execute_command" not in provs[1]  # inline keeps Packer's default: the SSH user, sh -e
    assert provs[3] == {
        "type": "file",
        "source": str((EXAMPLE.parent / "files" / "index.html").absolute()),
        "destination": "/tmp/index.html",
    }
    assert provs[4]["inline"][0].startswith("sudo install -m 0644 /tmp/index.html")
    assert provs[5] == {"type": "file", "source": str(tmp_path / "deprovision.sh"), "destination": OUR_SCRIPT}


def test_shutdown_command_deprovisions_and_powers_off_in_one_root_shell(tmp_path: Path) -> None:
    cmd = _generate(tmp_path)["builders"][0]["shutdown_command"]
    assert cmd == shutdown_command("packer")
    assert cmd.startswith("sudo -n sh -c '") and cmd.count("sudo") == 1
    assert f"LB_NO_POWEROFF=1 sh {OUR_SCRIPT} packer" in cmd
    assert f"if [ -f {USER_SCRIPT} ]" in cmd  # the template's own deprovision script wins, as in AIB
    assert cmd.endswith("&& shutdown -P now'")


def test_rejects_what_has_no_packer_equivalent(tmp_path: Path) -> None:
    body = json.loads(EXAMPLE.read_text())
    body["properties"]["customize"][2]["destination"] = "/etc/index.html"
    path = tmp_path / "t.json"
    path.write_text(json.dumps(body))
    loaded = load_documents(path)[0]
    template, _ = parse_template(loaded, allow_any_destination=True)
    assert template is not None
    with pytest.raises(UsageError, match=r"customize\[2\]\.destination"):
        _generate(tmp_path, template)


@pytest.mark.skipif(shutil.which("packer") is None, reason="packer is not installed (apt-get install packer)")
def test_packer_accepts_the_generated_template(tmp_path: Path) -> None:
    doc = _generate(tmp_path)
    # packer validate checks that the provisioners' local files exist.
    (tmp_path / "deprovision.sh").write_bytes(script_text())
    (tmp_path / "packer.json").write_text(json.dumps(doc))
    result = run(["packer", "validate", str(tmp_path / "packer.json")], check=False,
                 env={"CHECKPOINT_DISABLE": "1", "PACKER_LOG": ""})
    assert result.returncode == 0, result.stdout + result.stderr
