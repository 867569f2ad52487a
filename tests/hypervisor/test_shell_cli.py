"""``localbuilder shell`` argument handling (no guest)."""

from __future__ import annotations

import pytest

from localbuilder.cli import build_parser
from localbuilder.commands.shell import split_command
from localbuilder.errors import UsageError


def parse(*argv: str) -> tuple[object, list[str]]:
    args = build_parser().parse_args(["shell", *argv])
    return args, split_command(args)


def test_options_before_and_after_source() -> None:
    args, cmd = parse("--accel", "tcg", "img.qcow2", "--hypervisor", "libvirt", "--", "uname", "-a")
    got = (args.accel, args.hypervisor, args.source, cmd)  # type: ignore[attr-defined]
    assert got == ("tcg", "libvirt", "img.qcow2", ["uname", "-a"])
    args, cmd = parse("img.qcow2", "--size", "Standard_B1s")
    assert (args.size, args.accel, cmd) == ("Standard_B1s", "auto", [])  # type: ignore[attr-defined]
    args, cmd = parse("img.qcow2", "--", "ls", "--accel")
    assert cmd == ["ls", "--accel"] and args.accel == "auto"  # type: ignore[attr-defined]


def test_command_without_separator_and_bad_option() -> None:
    assert parse("img.qcow2", "uname", "-a")[1] == ["uname", "-a"]
    with pytest.raises(UsageError) as err:
        parse("img.qcow2", "--bogus", "x")
    assert err.value.hint and "--" in err.value.hint


def test_missing_file_source(tmp_path: object) -> None:
    from localbuilder.__main__ import main

    assert main(["shell", "/nonexistent/disk.qcow2", "--", "true"]) in (1, 2)
