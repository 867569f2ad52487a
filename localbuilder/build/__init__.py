"""Building one template: AIB's phases, in AIB's order, on a local guest.

    orchestrator.py   Build: the phases (Queued, Building, Customizing, Optimizing, Validating,
                      Distributing) and the run record they write
    interrupts.py     buildTimeoutInMinutes and `localbuilder cancel` as interrupts of the main thread
    failures.py       errorHandling / --on-error: clean up, keep the guest, or ask
    checkpointing.py  the checkpoint cache as one build uses it

The machinery (guests, disks) comes in through ``localbuilder.guest.Platform``.
"""

from localbuilder.build.orchestrator import INVOCATION_FILE, WORK_VHD, Build, BuildOptions, exit_code

__all__ = ["INVOCATION_FILE", "WORK_VHD", "Build", "BuildOptions", "exit_code"]
