"""The benchmarks smoke-tested on CPU. benchmarks/gpu.py (the one script the GPU machine runs) with --tiny: it runs
tar.py's own outer step at one rank's share under a one-process FSDP2 group, restores exactly, runs stage 1 and every
attack of the paper's red team, resumes a checkpoint identically, and the model it writes reloads and scores the
same. benchmarks/tar_step.py on a tiny model: its timing and its memory census."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

import cli
import suite

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_report_runs_on_cpu(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--tiny", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_report.json").read_text())
    assert report["errors"] == {} and report["card"] == "cpu"
    (shape,) = report["shapes"]
    assert shape["ranks"] == 8 and shape["batches"] == {"attacker": 4, "tr": 8, "retain": 8}  # one rank's share
    assert shape["restore_max_abs_diff"] == 0.0
    assert shape["outer_step_s"] > 0 and shape["parts_s"] > 0 and 0.5 < shape["ratio"] < 3
    (pipeline,) = report["pipeline"]  # stage 1 and every paper attack, LoRA included, at one rank's share
    assert set(pipeline["runs"]) == {"stage 1 (random mapping)", *(s.name for s in suite.SUITES["paper"])}
    assert all(run.get("finite") for run in pipeline["runs"].values()), pipeline
    assert report["checkpoint"]["resume_max_abs_diff"] == 0.0 and report["checkpoint"]["scores_equal"]
    assert report["checkpoint"]["loglik_max_abs_diff"] < 1e-5


def test_cpu_step_benchmark_runs_and_counts_the_steps_buffers():
    """benchmarks/tar_step.py times tar.outer_step against its parts and counts the tensors alive at a TR point:
    the census wraps the TR loss tar.py calls, so it must follow that loss's signature (it broke once, silently,
    when the loss gained arguments). AdamW holds two moments per weight; the snapshot and the TR buffer one
    copy each; the frozen reference one."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "tar_step.py"), "--width", "32", "--layers", "1",
                           "--inner-steps", "24", "--repeats", "1"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ratio" in done.stdout
    rows = [line.rsplit(None, 1) for line in done.stdout.splitlines() if line.startswith("  ")]  # "  role   1.00x"
    share = {role.strip(): float(value.rstrip("x")) for role, value in rows}
    assert share["parameters"] == 1.0 and share["frozen reference"] == 1.0
    assert share["inner optimizer state"] == 2.0 and share["snapshot + TR buffer"] == 2.0
    assert 0 < share["outer optimizer state"] < 1  # Adam over the MLPs only (tar.py's default --outer-params)


def test_projection_uses_only_one_ranks_share_of_the_run_it_projects():
    """The committed H200 report (2026-11-27) ran the whole batch in one process at micro-batches of 8-32 rows: no
    rank of an 8-card run holds them (4 attacker rows each), so none of it is projected to 8 cards. An entry
    measured at one rank's share of 8 is: its FLOPs at its MFU, its memory at its micro-batch. Batches that do
    not split over the ranks fail before any work."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu
    report = json.loads((ROOT / "benchmarks" / "results" / "gpu_h200_2026-11-27.json").read_text())
    entries = [e for e in report["shapes"] if e["shape"] == "llama-3-8b-4-layers"]
    assert {e["micro_batch"] for e in entries} == {8, 16, 32}
    assert not any(gpu.projection(e, 8, 78.0)["projected"] for e in entries)
    share = {**entries[0], "ranks": 8, "micro_batch": 4}  # as if measured at 4 rows per rank (MFU 27.5%)
    at_4, whole = gpu.projection(share, 8, 78.0), gpu.projection({**share, "micro_batch": 0}, 8, 78.0)
    assert at_4["projected"] and 3.4 < at_4["hours"] < 3.6 and at_4["fits"]
    assert whole["gib_per_rank"] > at_4["gib_per_rank"]  # 8 TR and retain rows per forward, not 4
    assert gpu.per_rank(8, 4) == {"inner_batch": 4, "tr_batch": 8, "retain_batch": 8}
    with pytest.raises(cli.UsageError, match="does not split over 8 ranks in micro-batches of 8"):
        gpu.per_rank(8, 8)
    with pytest.raises(cli.UsageError, match="does not split over 64 ranks"):
        gpu.per_rank(64, 0)
