"""The Windows generalization checks, read offline through libguestfs (NTFS) and its hivex commands.

What Sysprep /generalize /oobe leaves behind when it worked, and what AIB's own Sysprep step is there for:
- the SOFTWARE hive's ``Microsoft\\Windows\\CurrentVersion\\Setup\\State`` value ``ImageState`` is
  ``IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE``. Any other state means Sysprep did not finish (or ran without
  /generalize) and Azure would start the VM without running specialize, or hang in it;
- no answer file keeps a password: Windows Setup looks for ``unattend.xml``/``autounattend.xml`` in
  ``Panther\\Unattend``, ``Panther``, ``System32\\Sysprep`` and the drive root, and Sysprep itself replaces
  the passwords it consumed with ``*SENSITIVE*DATA*DELETED*``. A value left there (plain text, or the
  base64 form with PlainText false, which is an encoding, not a secret) ships in every VM;
- no profile of the build account: neither a ``Users\\<name>`` directory nor a ``ProfileList`` entry.
"""

from __future__ import annotations

import re

from localbuilder.guestfs import Guestfish, GuestfsError, GuestfsReader
from localbuilder.inspect.report import CheckResult, Status

GENERALIZED_STATE = "IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE"
STATE_KEY = ("Microsoft", "Windows", "CurrentVersion", "Setup", "State")
PROFILE_LIST_KEY = ("Microsoft", "Windows NT", "CurrentVersion", "ProfileList")
DELETED = "*SENSITIVE*DATA*DELETED*"
ANSWER_DIRS = ("{win}/Panther/Unattend", "{win}/Panther", "{win}/System32/Sysprep", "")
ANSWER_NAMES = ("unattend.xml", "autounattend.xml")


class Hive:
    """One registry hive opened inside the appliance (guestfish's ``hivex-*`` commands)."""

    def __init__(self, gf: Guestfish, path: str) -> None:
        self.gf = gf
        gf.call("hivex-open", path)
        self.root = int(gf.call("hivex-root")[0])

    def close(self) -> None:
        self.gf.call("hivex-close")

    def key(self, names: tuple[str, ...]) -> int | None:
        node = self.root
        for name in names:
            try:
                node = int(self.gf.call("hivex-node-get-child", str(node), name)[0])
            except GuestfsError:
                return None
            if node == 0:
                return None
        return node

    def value(self, node: int, name: str) -> str | None:
        try:
            handle = int(self.gf.call("hivex-node-get-value", str(node), name)[0])
        except GuestfsError:
            return None
        if handle == 0:
            return None
        return "\n".join(self.gf.call("hivex-value-string", str(handle)))

    def children(self, node: int) -> list[tuple[int, str]]:
        out = []
        for line in self.gf.call("hivex-node-children", str(node)):
            m = re.match(r"^\s*hivex_node_h: (\d+)$", line)
            if m:
                handle = int(m.group(1))
                out.append((handle, self.gf.call("hivex-node-name", str(handle))[0]))
        return out


def check_image_state(hive: Hive | None) -> list[CheckResult]:
    state = None
    node = hive.key(STATE_KEY) if hive is not None else None
    if node is not None and hive is not None:
        state = hive.value(node, "ImageState")
    if state == GENERALIZED_STATE:
        return [CheckResult("image-state", Status.passed, f"ImageState is {GENERALIZED_STATE}")]
    found = "absent" if state is None else state
    return [
        CheckResult(
            "image-state", Status.failed,
            f"ImageState is {found}, not {GENERALIZED_STATE}: Sysprep did not generalize this image",
            hint="Run Sysprep with /generalize /oobe /mode:vm (AIB's default deprovision step) and wait for "
            "it to reach IMAGE_STATE_GENERALIZE_RESEAL_TO_OOBE before the VM stops.",
        )
    ]  # fmt: skip


def _decode(data: bytes) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16", errors="replace")
    return data.decode("utf-8", errors="replace")


def leaked_passwords(xml: str) -> list[str]:
    """The password elements of an answer file that still hold a value: their names, as found."""
    leaks = []
    flags = re.DOTALL | re.IGNORECASE
    for m in re.finditer(r"<((?:\w+:)?(\w*Password))\b[^>]*>(.*?)</\1\s*>", xml, flags):
        body = m.group(3)
        value = re.search(r"<(?:\w+:)?Value\b[^>]*>(.*?)</(?:\w+:)?Value\s*>", body, flags)
        text = (value.group(1) if value else ("" if "<" in body else body)).strip()
        if text and text != DELETED:
            plain = re.search(r"<(?:\w+:)?PlainText\b[^>]*>\s*true\s*<", body, re.IGNORECASE)
            leaks.append(f"{m.group(2)} ({'plain text' if plain else 'base64, reversible'})")
    return leaks


def check_answer_files(fs: GuestfsReader, windows_root: str) -> list[CheckResult]:
    leaking, present = [], []
    for folder in ANSWER_DIRS:
        for name in ANSWER_NAMES:
            path = fs.case_path(f"{folder.format(win=windows_root)}/{name}")
            if path is None:
                continue
            present.append(path)
            data = fs.read_bytes(path)
            leaks = leaked_passwords(_decode(data or b""))
            if leaks:
                leaking.append(f"{path}: {', '.join(leaks)}")
    if leaking:
        return [
            CheckResult(
                "unattend-passwords", Status.failed, "answer files keep passwords: " + "; ".join(leaking),
                tuple(p.split(":")[0] for p in leaking),
                hint="Delete the answer file after use, or let Sysprep consume it (it blanks the passwords "
                "it used); every VM from this image would carry them.",
            )
        ]  # fmt: skip
    if present:
        return [CheckResult("unattend-passwords", Status.passed,
                            f"answer files hold no password: {', '.join(present)}", tuple(present))]
    return [CheckResult("unattend-passwords", Status.passed, "no unattend.xml or autounattend.xml left")]


def check_build_profile(fs: GuestfsReader, hive: Hive | None, user: str | None) -> list[CheckResult]:
    profiles: list[str] = []
    if hive is not None and (node := hive.key(PROFILE_LIST_KEY)) is not None:
        for handle, _sid in hive.children(node):
            path = hive.value(handle, "ProfileImagePath")
            if path:
                profiles.append(path)
    if user is None:
        return [CheckResult("build-user", Status.info,
                            "build user not given; profiles: " + (", ".join(profiles) or "none"),
                            hint="Pass --build-user NAME to check its profile is gone.")]
    where = [p for p in profiles if re.split(r"[\\/]", p)[-1].lower() == user.lower()]
    home = fs.case_path(f"/Users/{user}")
    if home is not None:
        where.append(home)
    if where:
        return [
            CheckResult(
                "build-user", Status.failed, f"the build account's profile remains: {', '.join(where)}",
                tuple(where), hint="Delete the build account and its profile before Sysprep "
                "(AIB's packer account is removed by its deprovision step).",
            )
        ]  # fmt: skip
    return [CheckResult("build-user", Status.passed, f"no profile of '{user}' (Users folder, ProfileList)")]


def run_checks(gf: Guestfish, windows_root: str, build_user: str | None) -> list[CheckResult]:
    fs = GuestfsReader(gf)
    software = fs.case_path(f"{windows_root}/System32/config/SOFTWARE")
    hive = Hive(gf, software) if software is not None else None
    try:
        checks = check_image_state(hive)
        checks += check_answer_files(fs, windows_root)
        checks += check_build_profile(fs, hive, build_user)
    finally:
        if hive is not None:
            hive.close()
    if software is None:
        checks.insert(0, CheckResult("registry", Status.failed,
                                     f"no SOFTWARE hive under {windows_root}/System32/config"))
    return checks
