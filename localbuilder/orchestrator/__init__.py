"""Building one template: AIB's phases, in AIB's order, on a local guest.

    phases.py         Build: the phases (Queued, Building, Customizing, Optimizing, Validating,
                      Distributing) and the run record they write
    prepare.py        the Queued phase: preflight checks of every step and target, inputs fetched
    distribute.py     the Distributing phase: each target on its own
    rundir.py         --resume's reopened run directory, the guests' work directories
    interrupts.py     buildTimeoutInMinutes and `localbuilder cancel` as interrupts of the main thread
    failures.py       errorHandling / --on-error: clean up, keep the guest, or ask
    chain.py          BuildChain: the checkpoint keys of one build, where it resumes, what it saves
    checkpointing.py  what the build logs and pins around its chain

The machinery (guests, disks) comes in through ``localbuilder.guest.Platform``.
"""

from localbuilder.orchestrator.phases import INVOCATION_FILE, WORK_VHD, Build, BuildOptions, exit_code

__all__ = ["INVOCATION_FILE", "WORK_VHD", "Build", "BuildOptions", "exit_code"]
