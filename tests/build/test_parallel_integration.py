"""``localbuilder build T1 T2 --parallel 2`` with real guests: one build fails, the other is not disturbed.

One run of the real CLI (two TCG guests at once, ~2-3 min here) checks: each build in its own child
process, run directory and SSH port; the good build's VHD is a valid fixed VHD; the bad build is Failed
with its step named; the relayed stderr is prefixed per template; the summary table and the --json list;
no guest or child left running.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from localbuilder import vhd
from localbuilder.__main__ import main
from localbuilder.state import RunState
from tests.build.test_build_integration import home, only_run, processes_mentioning, write_template

pytestmark = pytest.mark.integration

__all__ = ["home"]  # the module-scoped LOCALBUILDER_HOME fixture, shared with the other build tests

GUEST_UP = re.compile(r"guest up: ssh \S+@127\.0\.0\.1:(\d+)")


def test_two_builds_in_parallel_one_failing(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tdir = tmp_path / "tpl"
    good = write_template(tdir, "par-good", [
        {"type": "Shell", "name": "mark", "inline": ["echo good-step-ran | sudo tee /etc/lb-par-good"]},
    ])  # fmt: skip
    bad = write_template(tdir, "par-bad", [
        {"type": "Shell", "name": "broken", "inline": ["echo bad-step-ran", "exit 3"]},
        {"type": "Shell", "name": "not-reached", "inline": ["echo unreachable"]},
    ])  # fmt: skip
    # A third build queues behind the first two (at most 2 at once) and overlaps the good one: two builds
    # that both succeed side by side, sharing the checkpoint cache (the booted source is saved once).
    good2 = write_template(tdir, "par-good2", [
        {"type": "Shell", "name": "mark", "inline": ["echo second-good | sudo tee /etc/lb-par-good2"]},
    ])  # fmt: skip
    out_dir = tmp_path / "out"

    code = main(["build", str(good), str(bad), str(good2), "--parallel", "2", "--output-dir", str(out_dir),
                 "--json"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 1, captured.err[-3000:]

    records = json.loads(captured.out)
    assert [r["templateName"] for r in records] == ["par-good", "par-bad", "par-good2"]
    assert [r["lastRunStatus"]["runState"] for r in records] == ["Succeeded", "Failed", "Succeeded"]

    good_run, bad_run = only_run("par-good"), only_run("par-bad")
    assert good_run.path != bad_run.path
    good2_run = only_run("par-good2")
    assert [r["runId"] for r in records] == [good_run.run_id, bad_run.run_id, good2_run.run_id]
    good_rec, bad_rec = good_run.read(), bad_run.read()
    assert good_rec.run_state is RunState.Succeeded
    assert bad_rec.run_state is RunState.Failed
    assert "customize[0] Shell 'broken'" in bad_rec.last_run_status.message
    assert "exit code 3" in bad_rec.last_run_status.message
    assert "unreachable" not in bad_run.customization_log.read_text()

    # The failing build did not disturb the other: a whole, valid fixed VHD, and no output of its own.
    footer = vhd.check_fixed_vhd(out_dir / "par-good.vhd")
    assert footer.current_size % (1024 * 1024) == 0
    vhd.check_fixed_vhd(out_dir / "par-good2.vhd")
    assert sorted(p.name for p in out_dir.iterdir()) == ["par-good.vhd", "par-good2.vhd"]
    good2_rec = good2_run.read()
    assert good2_rec.run_state is RunState.Succeeded
    assert good2_rec.last_run_status.start_time <= str(good_rec.last_run_status.end_time)

    # Isolated guests: each had its own forwarded SSH port, and the two builds really overlapped.
    ports = [GUEST_UP.findall(r.customization_log.read_text()) for r in (good_run, bad_run)]
    assert all(len(p) == 1 for p in ports), ports
    assert ports[0] != ports[1]
    assert good_rec.last_run_status.start_time <= str(bad_rec.last_run_status.end_time)
    assert bad_rec.last_run_status.start_time <= str(good_rec.last_run_status.end_time)

    # Relayed, attributable output, and the summary table naming both runs.
    err = captured.err
    assert "[par-good] " in err and "[par-bad] " in err
    assert "\r" not in err  # no progress bars from the children
    summary = err[err.rindex("TEMPLATE") :]
    good_row = next(line for line in summary.splitlines() if line.startswith("par-good "))
    bad_row = next(line for line in summary.splitlines() if line.startswith("par-bad "))
    assert (
        good_run.run_id in good_row and "Succeeded" in good_row and str(out_dir / "par-good.vhd") in good_row
    )
    assert bad_run.run_id in bad_row and "Failed" in bad_row and "customize[0] Shell 'broken'" in bad_row

    for run in (good_run, bad_run, good2_run):
        assert processes_mentioning(str(run.path)) == []
    print(f"\nparallel builds: ports {ports}; phases good {[(p.name, p.seconds) for p in good_rec.phases]}")
