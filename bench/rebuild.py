"""Rebuild after editing only the last customizer vs a full build, with the checkpoint cache, in one run.

On a private, empty LOCALBUILDER_HOME whose catalog ``--link``s the cached Debian 12 test image (as
bench/packer.py does), three timed ``localbuilder build`` commands of ``examples/debian-hello.json``
(override: ``LB_BENCH_TEMPLATE``; it must end with an inline Shell step):

(a) **cold**: a full build on the empty cache. It stores a checkpoint after the boot and after every
    customizer (``localbuilder/checkpoints.py``);
(b) **rebuild**: the same template with one line added to the last Shell step's ``inline``
    (``edit_last_customizer``). Its chain shares every checkpoint but the last, so it resumes the live
    checkpoint after the next-to-last step and runs only the edited step, deprovision and the conversion;
(c) **no-cache**: a full build with ``--no-cache`` for reference (rebuild / no-cache is reported too).
    ``LB_BENCH_REBUILD_NO_CACHE=0`` skips it. What storing the checkpoints costs is (a)'s "checkpoints"
    phase, not (a) − (c): two TCG boots here differ by more than that.

Reported: each build's wall clock and state.json phase table, the ratio (b)/(a) (target ≤ 0.25×), the
time the cold build spent saving checkpoints, the cache's size on disk after each build, and which
customizers each build really ran — (b) must run the last one only, otherwise the ratio says
nothing and the benchmark fails.

The edited copy is written next to the original (a hidden ``.<name>.rebuild-bench-<pid>.json``) so its
relative scriptUri/sourceUri resolve to the same files (a checkpoint key covers the URI text and the
fetched file's digest), and removed afterwards. Each build holds ``/tmp/lb-guest.lock`` (override:
``LB_GUEST_LOCK``) and its clock starts once the lock is held; do not wrap this benchmark in ``flock``.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.packer import (
    DEFAULT_TEMPLATE,
    REPO,
    RESULTS,
    _fingerprint,
    add_source,
    lb_build,
    load_template,
    source_image,
)
from localbuilder import vhd
from localbuilder.errors import LocalBuilderError, SourceError, UsageError
from localbuilder.hypervisor.probe import resolve_accel
from localbuilder.template import jsonc
from localbuilder.template.load import detect_shape

ARTIFACTS = RESULTS / "rebuild-artifacts"  # the three build logs, for a look afterwards
TARGET_RATIO = 0.25
# Harmless and visible in the build log; any change of the step's definition gives it a new checkpoint key.
EDIT_LINE = "echo 'localbuilder rebuild benchmark: this step was edited'"


def _log(msg: str) -> None:
    print(f"[bench rebuild] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------
# The edit


def _template_body(doc: dict[str, Any], path: Path) -> dict[str, Any]:
    """The imageTemplates resource inside a bare, REST or ARM document (``detect_shape``'s shapes)."""
    shape = detect_shape(doc, path)
    if shape == "bare":
        return doc
    if shape == "rest":
        body: dict[str, Any] = doc["parameters"]["parameters"]
        return body
    resources = doc.get("resources")
    # detect_shape said "arm": resources is a list, or a dict keyed by symbolic name (languageVersion 2.0).
    items = list(resources.values()) if isinstance(resources, dict) else list(resources or [])
    found = [r for r in items if isinstance(r, dict)
             and str(r.get("type", "")).casefold() == "microsoft.virtualmachineimages/imagetemplates"]
    if len(found) != 1:
        raise UsageError(f"{path}: {len(found)} imageTemplates resources in 'resources'",
                         hint="Benchmark a document with exactly one image template.")
    return found[0]


def edit_last_customizer(doc: dict[str, Any], path: Path, line: str = EDIT_LINE) -> dict[str, Any]:
    """A copy of the template document ``doc`` (read from ``path``) whose last customizer has ``line``
    appended to its ``inline`` commands; every other step is left exactly as it was, so a rebuild of the
    copy shares their checkpoints. The last step must be an inline Shell step: editing a scriptUri or a
    File source would mean writing a new file, and the benchmark must not touch the template's files."""
    edited = copy.deepcopy(doc)
    props = _template_body(edited, path).get("properties")
    steps = props.get("customize") if isinstance(props, dict) else None
    if not isinstance(steps, list) or not steps:
        raise UsageError(f"{path}: properties.customize is not a non-empty list",
                         hint="The rebuild benchmark edits the last customizer; use a template that has one.")
    where = f"{path}: properties.customize[{len(steps) - 1}]"
    last = steps[-1]
    if not isinstance(last, dict) or str(last.get("type", "")).casefold() != "shell":
        kind = last.get("type") if isinstance(last, dict) else type(last).__name__
        raise UsageError(f"{where} is a {kind!r} step; the benchmark edits an inline Shell step",
                         hint="End the template with a Shell step that has 'inline' commands.")
    inline = last.get("inline")
    if not isinstance(inline, list) or not all(isinstance(c, str) for c in inline):
        raise UsageError(f"{where}.inline is not a list of commands (a scriptUri step?)",
                         hint="End the template with a Shell step that has 'inline' commands.")
    inline.append(line)
    return edited


def write_edited_copy(template_file: Path) -> Path:
    """Write ``edit_last_customizer`` of ``template_file`` beside it; the caller removes the copy."""
    doc = jsonc.load_file(template_file).value
    if not isinstance(doc, dict):
        raise UsageError(f"{template_file}: the document is not a JSON object",
                         hint="Pass an AIB image template.")
    edited = edit_last_customizer(doc, template_file)
    dst = template_file.with_name(f".{template_file.stem}.rebuild-bench-{os.getpid()}.json")
    dst.write_text(json.dumps(edited, indent=2) + "\n", encoding="utf-8")
    return dst


# ---------------------------------------------------------------------------------------------------------
# Reading the results


def allocated_bytes(root: Path) -> int:
    """Disk space the files under ``root`` take (sparse files count what is allocated, not their size)."""
    if not root.is_dir():
        return 0
    return sum(p.lstat().st_blocks * 512 for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def customizers_run(phase_detail: Sequence[dict[str, Any]]) -> list[str]:
    """The customize[] phases a build ran, in order (restored steps have no phase)."""
    return [str(p["name"]) for p in phase_detail if str(p["name"]).startswith("customize[")]


def phase_table(builds: Sequence[tuple[str, dict[str, Any]]]) -> str:
    """state.json phases of several builds side by side: one row per phase name, in first-seen order."""
    names: list[str] = []
    for _, build in builds:
        for p in build["phase_detail"]:
            if p["name"] not in names:
                names.append(p["name"])
    width = max([len("phase (seconds)"), *(len(n) for n in names)]) + 2
    rule = "-" * (width + 11 * len(builds))

    def row(label: str, cells: Sequence[str]) -> str:
        return f"{label:<{width}}" + "".join(f" {c:>10}" for c in cells)

    lines = [row("phase (seconds)", [label for label, _ in builds]), rule]
    for name in names:
        cells = []
        for _, build in builds:
            secs = [float(p["seconds"]) for p in build["phase_detail"] if p["name"] == name]
            cells.append(f"{sum(secs):.1f}" if secs else "-")
        lines.append(row(name, cells))
    lines.append(rule)
    lines.append(row("total (wall clock)", [f"{b['total_seconds']:.1f}" for _, b in builds]))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------


def main() -> dict[str, Any]:
    template_file = Path(os.environ.get("LB_BENCH_TEMPLATE", DEFAULT_TEMPLATE)).absolute()
    template = load_template(template_file)
    source, _ = source_image()
    accel = resolve_accel("auto").value
    with_no_cache = os.environ.get("LB_BENCH_REBUILD_NO_CACHE", "1") != "0"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    last = len(template.customize) - 1
    _log(f"{template.name}: source {source}, accel {accel}, {len(template.customize)} customizers; "
         f"the rebuild edits customize[{last}]")
    with open(source, "rb") as fh:  # no build pays for a cold page cache
        while fh.read(1 << 24):
            pass
    before = _fingerprint(source)
    edited = write_edited_copy(template_file)
    # Short on purpose: QMP socket paths under LOCALBUILDER_HOME/runs/… must fit in 108 bytes.
    try:
        with tempfile.TemporaryDirectory(prefix="lbr-", dir="/tmp") as tmp:
            work = Path(tmp)
            home = work / "h"
            add_source(home, template, source, ARTIFACTS / "image-add.log")

            def build(name: str, tpl: Path, *extra: str) -> dict[str, Any]:
                _log(f"build {name}: {tpl.name} {' '.join(extra)}")
                log_file = ARTIFACTS / f"{name}.log"
                result = lb_build(tpl, home, work / name, accel, extra=extra, log_file=log_file)
                result["customizers_run"] = customizers_run(result["phase_detail"])
                result["vhd_virtual_size"] = vhd.check_fixed_vhd(result.pop("vhd")).current_size
                # What the checkpoints cost on disk (qcow2 layers + live memory states), after this build.
                result["checkpoint_cache_bytes_after"] = allocated_bytes(home / "cache" / "checkpoints")
                return result

            cold = build("cold", template_file)
            rebuild = build("rebuild", edited)
            builds = [("cold", cold), ("rebuild", rebuild)]
            if with_no_cache:
                builds.append(("no-cache", build("no-cache", template_file, "--no-cache")))
            if _fingerprint(source) != before:
                raise SourceError(f"the source image {source} changed during the benchmark",
                                  hint="Something wrote the backing file; rebuild it, then run again.")
    finally:
        edited.unlink(missing_ok=True)
    expected = [name for name in cold["customizers_run"] if name.startswith(f"customize[{last}]")]
    if rebuild["customizers_run"] != expected or rebuild["resumed_from"] is None:
        raise LocalBuilderError(
            f"the rebuild ran {rebuild['customizers_run']} (resumed: {rebuild['resumed_from']}); expected "
            f"only {expected} after resuming the checkpoint taken just before it",
            hint=f"A checkpoint was not stored or not matched: see {ARTIFACTS / 'cold.log'} and "
            f"{ARTIFACTS / 'rebuild.log'} ('checkpoint …' lines).",
        )
    ratio = rebuild["total_seconds"] / cold["total_seconds"]
    text = phase_table(builds)
    print(text)
    print(f"rebuild after editing customize[{last}] / full cold build: {ratio:.2f}x (target <= "
          f"{TARGET_RATIO}x); the rebuild ran only {', '.join(rebuild['customizers_run'])}")
    result: dict[str, Any] = {
        "template": str(template_file.relative_to(REPO) if template_file.is_relative_to(REPO)
                        else template_file),
        "source_image": str(source),
        "accel": accel,
        "edited_step": f"customize[{last}]",
        "edit": EDIT_LINE,
        **{name: b for name, b in builds},
        "ratio_rebuild_over_cold": round(ratio, 3),
        "target_ratio": TARGET_RATIO,
        "meets_target": ratio <= TARGET_RATIO,
        # What storing the checkpoints cost: the cold build's "checkpoints" phase. The difference of the
        # cold and no-cache totals would mostly measure how two TCG boots went on this shared machine.
        "checkpoint_save_seconds": cold["phases"].get("checkpoints", 0.0),
        "table": text,
    }
    if with_no_cache:
        nc = result["no-cache"]
        result["ratio_rebuild_over_no_cache"] = round(rebuild["total_seconds"] / nc["total_seconds"], 3)
        print(f"rebuild / full --no-cache build: {result['ratio_rebuild_over_no_cache']:.2f}x; the cold "
              f"build spent {cold['phases'].get('checkpoints', 0.0):.1f} s saving checkpoints")
    return result
