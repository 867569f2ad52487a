"""Several builds at once: ``localbuilder build T1 T2 … --parallel N``.

Each build runs in its own child process (``python -m localbuilder build Ti … --json``), never in a
thread of this one: a build owns process-wide things — the SIGTERM/SIGUSR1 handlers and watchdog of
its cancel/timeout logic, the logging handlers of its build.log, its guest, port and run directory —
and a crash or a stuck guest in one must not reach the others. At most N children run at a time; the
rest wait in order.

Children start in their own session (``spawn(new_session=True)``), so a Ctrl-C on the terminal
reaches only this parent. The parent forwards it as SIGTERM to each running child — the signal
``localbuilder cancel`` sends, on which a build powers its guest down in order and records
``Canceled`` — starts no more children, and waits for the running ones to finish that cleanup.
Further Ctrl-Cs are forwarded again but never escalate to SIGKILL: a killed build would leave its
guest running (qemu has its own session too).

A child's stderr is relayed line by line, prefixed with ``[<template name>] ``; being a pipe, it is no
terminal, so the child draws no progress bars. Its stdout carries the final state.json (``--json``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import re
import signal
import threading
import time
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import IO, Any

from localbuilder.errors import Canceled, CommandError, LocalBuilderError
from localbuilder.log import format_duration
from localbuilder.run import PIPE, Popen, spawn

log = logging.getLogger("localbuilder.parallel")

# How often the parent looks at its children and at pending signals.
POLL_SECONDS = 0.1
NOT_STARTED = "not started (the builds were canceled)"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclasses.dataclass(frozen=True)
class Job:
    label: str  # shown in the relayed lines and the summary (the template name, made unique)
    template: Path
    argv: tuple[str, ...]  # the child's command line


@dataclasses.dataclass(frozen=True)
class JobResult:
    job: Job
    returncode: int | None  # None: never started
    record: Mapping[str, Any] | None  # the child's state.json (its --json output), when it printed one
    seconds: float
    error: str = ""  # the child's first "error: …" line: the failure when there is no record

    @property
    def state(self) -> str:
        if self.record is not None:
            return str(self.record.get("lastRunStatus", {}).get("runState", "Failed"))
        if self.returncode is None or self.returncode == Canceled.exit_code:
            return "Canceled"
        return "Succeeded" if self.returncode == 0 else "Failed"

    @property
    def run_id(self) -> str:
        return str(self.record.get("runId") or "-") if self.record else "-"

    def outcome(self) -> str:
        """Where the outputs are (success) or the first line of what went wrong."""
        if self.returncode is None:
            return NOT_STARTED
        if self.record is not None:
            outputs = [
                _display_uri(o.get("artifactUri") or "")
                for o in self.record.get("runOutputs") or ()
                if o.get("provisioningState") == "Succeeded"
            ]
            if self.state == "Succeeded":
                return ", ".join(o for o in outputs if o) or "-"
            message = str(self.record.get("lastRunStatus", {}).get("message") or "")
            if message:
                return message.splitlines()[0]
        if self.error:
            return self.error
        if self.returncode is not None and self.returncode < 0:
            try:
                name = signal.Signals(-self.returncode).name
            except ValueError:
                name = f"signal {-self.returncode}"
            return f"the build process was killed by {name}"
        return f"the build process exited with code {self.returncode}"

    def as_dict(self) -> dict[str, Any]:
        """The child's state.json; for a build that never recorded one, a record of the same shape."""
        if self.record is not None:
            return dict(self.record)
        return {
            "runId": None,
            "templateName": self.job.label,
            "templateFile": str(self.job.template),
            "lastRunStatus": {"runState": self.state, "message": self.outcome()},
            "runOutputs": [],
        }


@dataclasses.dataclass(frozen=True)
class Outcome:
    results: tuple[JobResult, ...]
    canceled: bool  # the parent got SIGINT/SIGTERM

    def exit_code(self) -> int:
        """130 when canceled; 0 when every build succeeded; else 1 (any failure, partial success)."""
        if self.canceled:
            return Canceled.exit_code
        if all(r.returncode == 0 and r.state == "Succeeded" for r in self.results):
            return 0
        if all(r.state in ("Succeeded", "Canceled") for r in self.results):
            return Canceled.exit_code  # builds canceled one by one (`localbuilder cancel RUN`)
        return 1


def _display_uri(uri: str) -> str:
    if uri.startswith("file:"):
        return urllib.request.url2pathname(urllib.parse.urlsplit(uri).path)
    return uri


class _Child:
    """A running child: its process, the threads draining its pipes, what they collected."""

    def __init__(self, job: Job, out: IO[str], lock: threading.Lock) -> None:
        self.job = job
        self.start = time.monotonic()
        self.proc: Popen[bytes] = spawn(job.argv, stdout=PIPE, stderr=PIPE, new_session=True)
        self.stdout = bytearray()
        self.error = ""
        self._threads = [
            threading.Thread(target=self._relay, args=(out, lock), name=f"relay-{job.label}", daemon=True),
            threading.Thread(target=self._collect, name=f"stdout-{job.label}", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _relay(self, out: IO[str], lock: threading.Lock) -> None:
        assert self.proc.stderr is not None
        prefix = f"[{self.job.label}] "
        relaying = True
        for raw in iter(self.proc.stderr.readline, b""):
            # A carriage return redraws a line on a terminal: keep only what would remain visible.
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n").rsplit("\r", 1)[-1]
            plain = _ANSI.sub("", line).strip()
            if not self.error and plain.startswith("error: "):
                self.error = plain.removeprefix("error: ")
            if not relaying:
                continue
            try:
                with lock:
                    out.write(prefix + line + "\n")
                    out.flush()
            except (OSError, ValueError):
                # Our stderr is gone (a closed pipe): keep draining the child's, or it would block
                # writing to a full pipe and never finish its build.
                relaying = False

    def _collect(self) -> None:
        stream = self.proc.stdout
        assert stream is not None
        for chunk in iter(lambda: stream.read(65536), b""):
            self.stdout += chunk

    def result(self) -> JobResult:
        for thread in self._threads:
            thread.join()
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        returncode = self.proc.wait()
        return JobResult(
            job=self.job,
            returncode=returncode,
            record=_parse_record(bytes(self.stdout)),
            seconds=time.monotonic() - self.start,
            error=self.error,
        )


def _parse_record(data: bytes) -> Mapping[str, Any] | None:
    try:
        value = json.loads(data.decode("utf-8", errors="replace"))
    except ValueError:
        return None
    return value if isinstance(value, dict) and "lastRunStatus" in value else None


class _Signals:
    """Turns SIGINT/SIGTERM into a flag the main loop acts on (a handler must not do the work)."""

    def __init__(self) -> None:
        self.received = 0
        self.pending = False

    def handler(self, signum: int, frame: FrameType | None) -> None:
        self.received += 1
        self.pending = True

    @contextlib.contextmanager
    def installed(self) -> Iterator[_Signals]:
        if threading.current_thread() is not threading.main_thread():
            yield self  # signals are delivered to the main thread only; nothing to install
            return
        old = {sig: signal.signal(sig, self.handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)


def run_jobs(jobs: Sequence[Job], parallel: int, *, out: IO[str]) -> Outcome:
    """Run ``jobs`` as child processes, at most ``parallel`` at once; relay their stderr to ``out``."""
    if parallel < 1:
        raise ValueError("parallel must be at least 1")
    queue = deque(enumerate(jobs))
    running: list[tuple[int, _Child]] = []
    done: dict[int, JobResult] = {}
    lock = threading.Lock()
    with _Signals().installed() as signals:
        try:
            while queue or running:
                if signals.pending:
                    signals.pending = False
                    _forward([c for _, c in running], signals.received)
                    while queue:  # nothing new starts once canceled
                        index, job = queue.popleft()
                        done[index] = JobResult(job, None, None, 0.0)
                while queue and len(running) < parallel and not signals.received:
                    index, job = queue.popleft()
                    log.debug("starting the build of %s", job.label)
                    try:
                        running.append((index, _Child(job, out, lock)))
                    except (LocalBuilderError, OSError) as exc:
                        detail = exc.stderr_tail if isinstance(exc, CommandError) else str(exc)
                        done[index] = JobResult(job, 127, None, 0.0, error=f"could not start: {detail}")
                for index, child in [(i, c) for i, c in running if c.proc.poll() is not None]:
                    running.remove((index, child))
                    done[index] = child.result()
                if queue or running:
                    time.sleep(POLL_SECONDS)
        except BaseException:
            # A bug here must not orphan builds with running guests: stop them and wait, then re-raise.
            for _, child in running:
                with contextlib.suppress(ProcessLookupError):
                    child.proc.send_signal(signal.SIGTERM)
            for _, child in running:
                child.result()  # waits, and drains and closes its pipes
            raise
    return Outcome(tuple(done[i] for i in range(len(jobs))), canceled=signals.received > 0)


def _forward(running: list[_Child], count: int) -> None:
    names = ", ".join(c.job.label for c in running) or "none"
    if count == 1:
        log.warning("canceling: stopping the running builds (%s) and starting no more", names)
    else:
        log.warning("still waiting for the running builds (%s) to shut their guests down", names)
    for child in running:
        with contextlib.suppress(ProcessLookupError):
            child.proc.send_signal(signal.SIGTERM)


def summary_table(results: Sequence[JobResult]) -> str:
    header = ("TEMPLATE", "RUN ID", "STATE", "DURATION", "OUTPUT / FAILURE")
    rows = [
        (r.job.label, r.run_id, r.state, format_duration(r.seconds) if r.returncode is not None else "-",
         r.outcome())
        for r in results
    ]  # fmt: skip
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
    lines = []
    for row in [header, *rows]:
        cells = [row[i].ljust(widths[i]) for i in range(4)]
        lines.append("  ".join([*cells, row[4]]).rstrip())
    return "\n".join(lines)


def unique_labels(names: Sequence[str]) -> list[str]:
    """The template names, with ``#2``, ``#3`` … on repeats so every relayed line is attributable."""
    seen: dict[str, int] = {}
    labels = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        labels.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return labels
