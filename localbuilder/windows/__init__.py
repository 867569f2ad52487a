"""Windows guests: PowerShell wrappers, restarts, Windows Update, Sysprep, first-boot media.

Everything here talks to the guest through a ``Communicator`` (in practice ``WinRMCommunicator``) and is
written as plain functions taking the communicator and options; the customizer classes in
``localbuilder.customizers`` (PowerShell, WindowsRestart, WindowsUpdate) are thin adapters over them.

Nothing here has run against a real Windows guest yet: it is proven against the WS-Management test
server in ``tests/windows`` (see docs/windows.md for exactly what that covers).
"""

from __future__ import annotations

from localbuilder.windows.files import upload_file
from localbuilder.windows.powershell import PowerShellRun, run_powershell_script
from localbuilder.windows.restart import RestartOptions, parse_restart_timeout, restart_windows
from localbuilder.windows.sysprep import deprovision_windows
from localbuilder.windows.update import UpdateOptions, windows_update

__all__ = [
    "PowerShellRun",
    "RestartOptions",
    "UpdateOptions",
    "deprovision_windows",
    "parse_restart_timeout",
    "restart_windows",
    "run_powershell_script",
    "upload_file",
    "windows_update",
]
