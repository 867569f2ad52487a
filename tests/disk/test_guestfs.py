"""The libguestfs reader's own logic, without an appliance: the guestfish pipe protocol (against a stand-in
``guestfish`` on PATH), argument quoting, answer-file password scanning, and when an inspection must leave
the debugfs fast path (a separate /var) or cannot run at all.
"""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest

from localbuilder import guestfs
from localbuilder.inspect import inspect_image
from localbuilder.inspect.linux import separate_mounts
from localbuilder.inspect.windows import leaked_passwords
from tests.disk import craft
from tests.disk.test_inspect import BASE, LINKS

# A guestfish stand-in: echoes its input protocol the way guestfish does. "-fail X" prints a libguestfs
# error; "-ls /d" prints names (one of them looks like an error line and one like a sentinel from another
# session); "-hang" never answers; "-die" exits.
FAKE_GUESTFISH = textwrap.dedent('''\
    #!{python}
    import sys, time
    for n, line in enumerate(sys.stdin, start=1):
        words = line.split()
        if not words:
            continue
        cmd = words[0].lstrip("-")
        if cmd == "echo":
            print(" ".join(words[1:]), flush=True)
        elif cmd == "fail":
            print(f"*stdin*:{{n}}: libguestfs: error: fail: no such thing", flush=True)
        elif cmd == "ls":
            print("a b\\n@@localbuilder-0000000000000000-1@@\\nlibguestfs: not an error", flush=True)
        elif cmd == "args":
            print(line.strip(), flush=True)
        elif cmd == "hang":
            time.sleep(60)
        elif cmd == "die":
            sys.exit(3)
''')


@pytest.fixture
def fake_guestfish(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    script = bindir / "guestfish"
    script.write_text(FAKE_GUESTFISH.format(python=sys.executable))
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")


def test_replies_errors_and_a_hostile_name(fake_guestfish: None) -> None:
    with guestfs.Guestfish() as gf:
        names = gf.call("ls", "/d")
        assert names == ["a b", "@@localbuilder-0000000000000000-1@@", "libguestfs: not an error"]
        with pytest.raises(guestfs.GuestfsError, match="fail: no such thing"):
            gf.call("fail", "x")
        assert gf.call("args", 'a "q" \\ b', "line\nbreak") == [r'-args "a \"q\" \\ b" "line\x0abreak"']


def test_a_reply_split_anywhere_reads_the_same(
    fake_guestfish: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pipe may deliver a reply in pieces (a sentinel without its newline): read one byte at a time."""
    real_read = os.read
    monkeypatch.setattr(guestfs.os, "read", lambda fd, n: real_read(fd, 1))
    with guestfs.Guestfish() as gf:
        for _ in range(3):
            assert gf.call("args", "x") == ['-args "x"']
            with pytest.raises(guestfs.GuestfsError):
                gf.call("fail")


def test_a_silent_guestfish_times_out_and_a_dead_one_is_reported(fake_guestfish: None) -> None:
    with guestfs.Guestfish() as gf, pytest.raises(guestfs.GuestfsError, match="did not answer within 1 s"):
        gf.call("hang", timeout=1)
    with guestfs.Guestfish() as gf, pytest.raises(guestfs.GuestfsError, match="exited unexpectedly"):
        gf.call("die")


def test_the_appliance_is_kept_off_kvm_unless_told(
    fake_guestfish: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LIBGUESTFS_BACKEND_SETTINGS", raising=False)
    seen = {}

    def spawn(cmd, **kw):  # type: ignore[no-untyped-def]
        seen.update(kw["env"])
        return real_spawn(cmd, **kw)

    real_spawn = guestfs.runmod.spawn
    monkeypatch.setattr(guestfs.runmod, "spawn", spawn)
    with guestfs.Guestfish(tcg=True):
        pass
    assert seen["LIBGUESTFS_BACKEND_SETTINGS"] == "force_tcg" and seen["LIBGUESTFS_BACKEND"] == "direct"
    seen.clear()
    with guestfs.Guestfish(tcg=False):
        pass
    assert "LIBGUESTFS_BACKEND_SETTINGS" not in seen


@pytest.mark.parametrize("xml,found", [
    ("<AdministratorPassword><Value>pw</Value><PlainText>true</PlainText></AdministratorPassword>",
     ["AdministratorPassword (plain text)"]),
    ("<Password><Value>cAB3AFAAYQBzAHMA</Value><PlainText>false</PlainText></Password>",
     ["Password (base64, reversible)"]),
    ("<AutoLogon><Password><Value>*SENSITIVE*DATA*DELETED*</Value></Password></AutoLogon>", []),
    ("<Password><Value></Value><PlainText>true</PlainText></Password>", []),
    ('<u:LocalAccount><u:Password xmlns:u="x"><u:Value>pw</u:Value><u:PlainText>true</u:PlainText>'
     "</u:Password></u:LocalAccount>", ["Password (plain text)"]),
    ("<settings>nothing here</settings>", []),
], ids=["plain", "base64", "sanitized", "empty", "namespaced", "none"])  # fmt: skip
def test_answer_file_passwords(xml: str, found: list[str]) -> None:
    assert leaked_passwords(xml) == found


def test_separate_mounts_that_hide_what_the_checks_read() -> None:
    fstab = textwrap.dedent("""\
        # <file system> <mount point> <type> <options> <dump> <pass>
        /dev/mapper/vg-root  /          xfs   defaults 0 0
        UUID=abcd            /boot      ext4  defaults 0 2
        UUID=ef01            /boot/efi  vfat  umask=0077 0 1
        /dev/mapper/vg-var   /var       xfs   defaults 0 0
        LABEL=home           /home/     ext4  defaults 0 2
        tmpfs                /tmp       tmpfs defaults 0 0
        /swapfile            none       swap  sw 0 0
        /srv/data            /var/lib/cloud none bind 0 0
        UUID=99              /var/lib/waagent ext4 defaults 0 2
        UUID=98              /opt/app   ext4  defaults 0 2
    """)
    assert separate_mounts(fstab) == ["/var", "/home", "/var/lib/waagent"]
    assert separate_mounts(None) == []


def test_separate_var_without_libguestfs_is_not_inspected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("localbuilder.guestfs.unavailable", lambda: "libguestfs is not installed (test)")
    files = {**BASE, "/etc/fstab": "UUID=1234 /var ext4 defaults 0 2\n"}
    tree = craft.make_tree(tmp_path / "tree", files, LINKS)
    root = craft.make_ext4(tmp_path / "r.ext4", tree)
    disk = craft.disk_with_partitions(tmp_path / "d.raw", [(0x83, root)], disk_mib=12)
    report = inspect_image(disk)
    assert not report.inspected and not report.generalized
    assert "/var on a separate filesystem" in report.reason and "libguestfs is not installed" in report.reason


def test_unavailable_names_the_missing_piece(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(guestfs.runmod, "which", lambda tool: None)
    assert "apt-get install libguestfs-tools" in (guestfs.unavailable() or "")
