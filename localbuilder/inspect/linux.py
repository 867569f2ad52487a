"""The Linux generalization checks: one function each, all reading through a ``diskread.FileReader``.

The same checks run whichever reader opened the root (debugfs for ext2/3/4, libguestfs for XFS, btrfs and
LVM); ``run_checks`` runs them all.
"""

from __future__ import annotations

import re

from localbuilder.diskread import FileReader, fstab_mounts
from localbuilder.inspect.report import CheckResult, Status
from localbuilder.quiesce import MARKER_DIR


def _names_in(text: str | None, user: str) -> bool:
    return bool(text) and any(line.split(":", 1)[0] == user for line in (text or "").splitlines())


def _member_of(text: str | None, user: str) -> list[str]:
    groups = []
    for line in (text or "").splitlines():
        fields = line.split(":")
        if len(fields) >= 4 and user in fields[3].split(","):
            groups.append(fields[0])
    return groups


def check_build_user(fs: FileReader, user: str | None) -> list[CheckResult]:
    passwd = fs.read_text("/etc/passwd")
    if passwd is None:
        return [
            CheckResult(
                "build-user", Status.failed, "/etc/passwd is missing: this is not a usable Linux root"
            )
        ]
    if user is None:
        humans = []
        for line in passwd.splitlines():
            f = line.split(":")
            if len(f) >= 3 and f[2].isdigit() and 1000 <= int(f[2]) < 60000:
                humans.append(f"{f[0]} ({f[2]})")
        msg = "build user not given; accounts with uid ≥ 1000: " + (", ".join(humans) or "none")
        return [
            CheckResult("build-user", Status.info, msg, hint="Pass --build-user NAME to check it is gone.")
        ]
    where = []
    for path in ("/etc/passwd", "/etc/shadow", "/etc/group", "/etc/gshadow"):
        text = passwd if path == "/etc/passwd" else fs.read_text(path)
        if _names_in(text, user):
            where.append(path)
        for group in _member_of(text, user) if path in ("/etc/group", "/etc/gshadow") else []:
            where.append(f"{path} (member of {group})")
    home = f"/home/{user}"
    if fs.entry(home) is not None:
        where.append(home)
    if where:
        return [
            CheckResult(
                "build-user",
                Status.failed,
                f"build user '{user}' remains in: {', '.join(where)}",
                tuple(where),
                hint="waagent deletes only the user named in /var/lib/waagent/ovf-env.xml (FACTS §4); "
                "localbuilder's deprovision script writes it.",
            )
        ]
    return [
        CheckResult(
            "build-user", Status.passed,
            f"build user '{user}' is absent from passwd, shadow, group and gshadow, and {home} is gone",
        )
    ]  # fmt: skip


def _key_blob(line: str) -> str | None:
    """The base64 key of an OpenSSH public-key line (options and comment ignored)."""
    parts = line.split()
    for i, part in enumerate(parts[:-1]):
        if part.startswith(("ssh-", "ecdsa-", "sk-")) and len(parts[i + 1]) > 40:
            return parts[i + 1]
    return None


def list_authorized_keys(fs: FileReader) -> list[str]:
    homes = ["/root"]
    for name, entry in sorted((fs.listdir("/home") or {}).items()):
        if entry.kind == "dir":
            homes.append(f"/home/{name}")
    found = []
    for home in homes:
        ssh_dir = fs.listdir(f"{home}/.ssh") or {}
        for name in ("authorized_keys", "authorized_keys2"):
            if name in ssh_dir:
                found.append(f"{home}/.ssh/{name}")
    return found


def check_authorized_keys(fs: FileReader, files: list[str], build_key: str | None) -> list[CheckResult]:
    if not files:
        return [CheckResult("authorized-keys", Status.passed, "no authorized_keys under /root or /home/*")]
    wanted = _key_blob(build_key) if build_key else None
    holding, counts = [], []
    for path in files:
        text = fs.read_text(path) or ""
        blobs = {b for b in map(_key_blob, text.splitlines()) if b}
        counts.append(f"{path} ({len(blobs)} keys)")
        if wanted and wanted in blobs:
            holding.append(path)
    if holding:
        return [
            CheckResult(
                "authorized-keys", Status.failed,
                f"the build key is still authorized in: {', '.join(holding)}",
                tuple(holding), hint="Delete the build user with its home (waagent -deprovision+user).",
            )
        ]  # fmt: skip
    status = Status.warning if any(not c.endswith("(0 keys)") for c in counts) else Status.info
    what = "the build key is in none of them" if wanted else "pass --build-key to look for the build key"
    return [
        CheckResult(
            "authorized-keys", status, f"authorized_keys present: {', '.join(counts)}; {what}", tuple(files),
            hint="Keys baked into an image grant access to every VM made from it; "
            "remove them unless intended.",
        )
    ]  # fmt: skip


def check_host_keys(fs: FileReader) -> list[CheckResult]:
    keys = sorted(f"/etc/ssh/{n}" for n in (fs.listdir("/etc/ssh") or {}) if n.startswith("ssh_host_"))
    if keys:
        return [
            CheckResult(
                "ssh-host-keys", Status.failed, f"{len(keys)} SSH host key files remain: {', '.join(keys)}",
                tuple(keys), hint="Every VM from this image would share them; delete /etc/ssh/ssh_host_* "
                "(they are regenerated on first boot).",
            )
        ]  # fmt: skip
    return [CheckResult("ssh-host-keys", Status.passed, "no /etc/ssh/ssh_host_* files")]


def check_cloud_init(fs: FileReader) -> list[CheckResult]:
    cloud = fs.listdir("/var/lib/cloud")
    if cloud is None:
        return [CheckResult("cloud-init", Status.passed, "no /var/lib/cloud (no cloud-init state)")]
    left = []
    if "instance" in cloud:
        left.append("/var/lib/cloud/instance")
    left += sorted(f"/var/lib/cloud/instances/{n}" for n in (fs.listdir("/var/lib/cloud/instances") or {}))
    if left:
        return [
            CheckResult(
                "cloud-init", Status.failed,
                f"cloud-init instance state remains: {', '.join(left)}", tuple(left),
                hint="Run 'cloud-init clean --logs' before power-off, "
                "or the first Azure boot is not a new instance.",
            )
        ]  # fmt: skip
    return [CheckResult("cloud-init", Status.passed, "no cloud-init instance state under /var/lib/cloud")]


def check_build_traces(fs: FileReader) -> list[CheckResult]:
    """localbuilder's own state in the guest (the checkpoint marker, localbuilder.quiesce): deprovision
    removes it, so finding it means the image was not deprovisioned by this build's last step."""
    if fs.entry(MARKER_DIR) is not None:
        return [CheckResult("localbuilder-state", Status.failed,
                            f"{MARKER_DIR} remains (the build's checkpoint marker)", (MARKER_DIR,),
                            hint="Deprovision removes it; nothing after deprovision may write it.")]
    return [CheckResult("localbuilder-state", Status.passed, f"no {MARKER_DIR}")]


def check_machine_id(fs: FileReader) -> list[CheckResult]:
    results = []
    text = fs.read_text("/etc/machine-id")
    value = (text or "").strip()
    # systemd treats an empty file and the literal "uninitialized" as "first boot: generate one".
    if value and value != "uninitialized":
        results.append(
            CheckResult(
                "machine-id", Status.failed, f"/etc/machine-id is set ({value}); every VM would share it",
                ("/etc/machine-id",), hint="Truncate it (: > /etc/machine-id) before power-off.",
            )
        )  # fmt: skip
    else:
        state = "absent" if text is None else "empty"
        results.append(CheckResult("machine-id", Status.passed, f"/etc/machine-id is {state}"))
    dbus = fs.entry("/var/lib/dbus/machine-id")
    if dbus is not None and dbus.kind == "file" and dbus.size > 0:
        results.append(
            CheckResult(
                "machine-id", Status.failed, "/var/lib/dbus/machine-id is a non-empty file",
                ("/var/lib/dbus/machine-id",), hint="Remove it; D-Bus then links to /etc/machine-id.",
            )
        )  # fmt: skip
    return results


def check_sudoers(fs: FileReader) -> list[CheckResult]:
    path = "/etc/sudoers.d/90-cloud-init-users"
    if fs.entry(path) is not None:
        return [
            CheckResult(
                "sudoers", Status.failed, f"{path} remains (grants the build user sudo)", (path,),
                hint="Remove it in the same root shell as the deprovision (FACTS §4).",
            )
        ]  # fmt: skip
    return [CheckResult("sudoers", Status.passed, f"{path} is absent")]


def check_waagent(fs: FileReader) -> list[CheckResult]:
    state = fs.listdir("/var/lib/waagent")
    if state is None:
        return [
            CheckResult(
                "waagent", Status.info, "no /var/lib/waagent (the Azure Linux agent is not installed?)"
            )
        ]
    left = sorted(f"/var/lib/waagent/{n}" for n in ("provisioned", "ovf-env.xml") if n in state)
    if left:
        return [
            CheckResult(
                "waagent", Status.failed,
                f"waagent provisioning state remains: {', '.join(left)}", tuple(left),
                hint="Run 'waagent -force -deprovision+user'; the agent would skip provisioning on Azure.",
            )
        ]  # fmt: skip
    return [CheckResult("waagent", Status.passed, "no waagent provisioning state (provisioned, ovf-env.xml)")]


def check_history(fs: FileReader) -> list[CheckResult]:
    homes = ["/root"] + [
        f"/home/{n}" for n, e in sorted((fs.listdir("/home") or {}).items()) if e.kind == "dir"
    ]
    found = [f"{h}/.bash_history" for h in homes if fs.entry(f"{h}/.bash_history") is not None]
    if found:
        return [
            CheckResult(
                "shell-history", Status.warning, f"shell history remains: {', '.join(found)}", tuple(found)
            )
        ]
    return [CheckResult("shell-history", Status.passed, "no .bash_history under /root or /home/*")]


# systemd-tmpfiles creates these on every boot (tmpfiles.d/x11.conf): not anybody's leftovers.
TMP_SYSTEM_DIRS = frozenset({".X11-unix", ".ICE-unix", ".XIM-unix", ".font-unix", ".Test-unix"})


def list_tmp(fs: FileReader) -> list[str]:
    entries = fs.listdir("/tmp") or {}
    return sorted(
        f"/tmp/{n}" for n, e in entries.items() if not (n in TMP_SYSTEM_DIRS and e.kind == "dir")
    )


def run_checks(
    fs: FileReader, build_user: str | None, build_key: str | None
) -> tuple[list[CheckResult], list[str], list[str]]:
    """Every Linux check: (results, /tmp leftovers, authorized_keys files)."""
    keys = list_authorized_keys(fs)
    checks: list[CheckResult] = []
    checks += check_build_user(fs, build_user)
    checks += check_authorized_keys(fs, keys, build_key)
    checks += check_host_keys(fs)
    checks += check_cloud_init(fs)
    checks += check_machine_id(fs)
    checks += check_build_traces(fs)
    checks += check_sudoers(fs)
    checks += check_waagent(fs)
    checks += check_history(fs)
    tmp = list_tmp(fs)
    checks.append(
        CheckResult("tmp", Status.warning,
                    f"{len(tmp)} entries left in /tmp: {', '.join(tmp)}", tuple(tmp),
                    hint="Leftovers of customizers; clean them up in a last Shell step if unwanted.")
        if tmp else CheckResult("tmp", Status.passed, "/tmp is empty")
    )  # fmt: skip
    return checks, tmp, keys


def os_name(fs: FileReader) -> str:
    """PRETTY_NAME from os-release, or ""."""
    text = fs.read_text("/etc/os-release") or fs.read_text("/usr/lib/os-release") or ""
    m = re.search(r'^PRETTY_NAME="?([^"\n]*)"?', text, re.MULTILINE)
    return m.group(1) if m else ""


# What the checks read. A filesystem mounted at boot on one of these (or above one) holds what the checks
# must see: reading only the root's empty mount point there would pass a dirty image.
CHECKED_PATHS = ("/etc", "/root", "/home", "/tmp", "/var/lib/cloud", "/var/lib/waagent", "/var/lib/dbus")


def separate_mounts(fstab: str | None) -> list[str]:
    """Mount points in ``fstab`` other than / that hold (or contain) a path the checks read."""
    return [point for _, point in fstab_mounts(fstab)
            if any(p == point or p.startswith(point + "/") for p in CHECKED_PATHS)]
