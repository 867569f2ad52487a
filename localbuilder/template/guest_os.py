"""The guest's OS family, told from a template: the source image's publisher, else the step types.

AIB is told nothing about the OS; a marketplace publisher says it (MicrosoftWindowsServer …), and for
a managed or gallery image the steps do (PowerShell/WindowsRestart/WindowsUpdate only run on Windows,
Shell only on Linux, and a File destination like ``C:\\x`` is a Windows path).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from localbuilder.template import model as m
from localbuilder.template.placeholders import is_placeholder

WINDOWS_DRIVE_PATH = re.compile(r"[A-Za-z]:[\\/]")

# Marketplace publishers whose images are Windows. Others (Canonical, RedHat, SUSE, Debian, …) are Linux.
WINDOWS_PUBLISHERS = frozenset(
    p.lower()
    for p in (
        "MicrosoftWindowsServer",
        "MicrosoftWindowsDesktop",
        "MicrosoftVisualStudio",
        "MicrosoftWindowsServerHPCPack",
        "MicrosoftSQLServer",
        "MicrosoftDynamicsAX",
        "MicrosoftBizTalkServer",
        "MicrosoftSharePoint",
        "MicrosoftWindowsServerEssentials",
    )
)
_LINUX_OFFER_HINTS = ("ubuntu", "rhel", "sles", "linux", "centos", "debian")
WINDOWS_ONLY = frozenset({"PowerShell", "WindowsRestart", "WindowsUpdate"})


def detect_os(source: Mapping[str, Any], steps: Sequence[Mapping[str, Any]]) -> tuple[m.OsType, bool]:
    """(OS, decided by the source?) — from the marketplace publisher, else from the step types."""
    publisher = source.get("publisher")
    if source.get("type") == "PlatformImage" and isinstance(publisher, str) and not is_placeholder(publisher):
        offer = str(source.get("offer", "")).lower()
        windows = publisher.lower() in WINDOWS_PUBLISHERS or publisher.lower().startswith("microsoftwindows")
        if windows and not any(hint in offer for hint in _LINUX_OFFER_HINTS):
            return m.OsType.windows, True
        return m.OsType.linux, True
    types = {s.get("type") for s in steps}
    if types & WINDOWS_ONLY:
        return m.OsType.windows, False
    if "Shell" in types:
        return m.OsType.linux, False
    for step in steps:
        dest = step.get("destination")
        if isinstance(dest, str) and WINDOWS_DRIVE_PATH.match(dest):
            return m.OsType.windows, False
    return m.OsType.linux, False
