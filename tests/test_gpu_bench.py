"""benchmarks/gpu.py (the one script the GPU machine runs) smoke-tested on CPU with --tiny: it runs tar.py's own
outer step under a one-process FSDP2 group, restores exactly, resumes a checkpoint identically, and the model it
writes reloads and scores the same."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_report_runs_on_cpu(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--tiny", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_report.json").read_text())
    assert report["errors"] == {} and report["card"] == "cpu"
    (shape,) = report["shapes"]
    assert shape["restore_max_abs_diff"] == 0.0
    assert shape["outer_step_s"] > 0 and shape["parts_s"] > 0 and 0.5 < shape["ratio"] < 3
    assert report["checkpoint"]["resume_max_abs_diff"] == 0.0 and report["checkpoint"]["scores_equal"]
    assert report["checkpoint"]["loglik_max_abs_diff"] < 1e-5


def test_projection_reproduces_the_committed_h200_report():
    """The 8 x H100 projection of docs/scale.md is recomputed from the committed measurements by gpu.projection."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu
    report = json.loads((ROOT / "benchmarks" / "results" / "gpu_h200_2026-11-27.json").read_text())
    entries = [e for e in report["shapes"] if e["shape"] == "llama-3-8b-4-layers"]
    again = [gpu.projection(e, 8, gib) for e in entries for gib in (78.0, 139.0)]
    assert again == report["projection"]
    by_micro = {p["micro_batch"]: p for p in again if p["card_gib"] == 78.0}
    assert 2.0 < by_micro[16]["hours"] < 3.0 and by_micro[16]["fits"] and not by_micro[32]["fits"]
