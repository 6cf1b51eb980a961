"""docs/walkthrough.py: it runs top to bottom as a plain script (about a minute on one thread) and tells the story it
claims, and it is a jupytext "percent" notebook whose cells work on their own."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "docs" / "walkthrough.py"
FIGURES = ["01_pretraining_loss.png", "02_accuracy_at_rest.png", "03_attack_on_safeguard.png", "04_inner_attack.png",
           "05_tar_training.png", "06_attack_safeguard_vs_tar.png", "07_tr_loss_along_attack.png"]
PNG = re.compile(r'"(\d\d_\w+\.png)"')  # a figure's file name, as the script writes it (save_figure, plot_curves)


def env(out: Path) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "WALKTHROUGH_OUT": str(out)}


def cells(text: str) -> list[tuple[str, str]]:
    """(kind, body) per cell, as jupytext reads the percent format: a cell starts at a line '# %%', markdown when
    the marker says [markdown]; nothing may come before the first marker (it would become a stray cell)."""
    out, kind, body = [], None, []
    for line in text.splitlines():
        if line.startswith("# %%"):
            if kind is not None:
                out.append((kind, "\n".join(body).strip("\n")))
            kind, body = ("markdown" if "[markdown]" in line else "code"), []
        else:
            assert kind is not None or not line.strip(), f"text before the first cell marker: {line!r}"
            body.append(line)
    if kind is not None:
        out.append((kind, "\n".join(body).strip("\n")))
    return out


def test_walkthrough_is_a_percent_notebook():
    parsed = cells(SCRIPT.read_text())
    code = [b for k, b in parsed if k == "code"]
    markdown = [b for k, b in parsed if k == "markdown"]
    assert parsed[0][0] == "markdown" and parsed[0][1].startswith("# # ")  # a title cell first
    assert len(code) >= 10 and len(markdown) >= 10
    assert all(b.strip() for _, b in parsed), "an empty cell"
    for b in markdown:  # every markdown line is commented, or jupytext would turn the cell into code
        assert all(line == "#" or line.startswith("# ") for line in b.splitlines()), b[:80]
    # the six sections, in order
    headings = [line[5:] for b in markdown for line in b.splitlines() if line.startswith("# ## ")]
    assert [h.split(".")[0] for h in headings if h[0].isdigit()] == ["1", "2", "3", "4", "5", "6"]
    # a notebook compiles each cell on its own: no statement may span two cells
    for i, b in enumerate(code):
        compile(b, f"<cell {i}>", "exec")
    # every figure is saved by a code cell (a call in a markdown cell would never run in Jupyter), each once
    saved = [name for b in code for name in PNG.findall(b)]
    assert saved == FIGURES
    assert len(PNG.findall(SCRIPT.read_text())) == len(FIGURES)


def test_setup_cell_finds_the_repo_without_file(tmp_path):
    """In Jupyter there is no __file__ and the working directory is docs/: the set-up cell must still find the
    repository and import it."""
    setup = next(b for k, b in cells(SCRIPT.read_text()) if k == "code")
    probe = setup + "\nassert ROOT == Path(%r), ROOT\nprint('ok', OUT)\n" % str(ROOT)
    r = subprocess.run([sys.executable, "-c", probe], cwd=ROOT / "docs", env=env(tmp_path), capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"ok {tmp_path}" in r.stdout


def test_walkthrough_runs_and_tells_its_story(tmp_path):
    r = subprocess.run([sys.executable, str(SCRIPT)], cwd=ROOT, env=env(tmp_path), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    for name in FIGURES:
        png = tmp_path / name
        assert png.exists(), name
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name  # a real, drawn image
    s = json.loads((tmp_path / "summary.json").read_text())
    # the mechanics the walkthrough asserts and prints
    assert s["restore_max_abs_diff"] == 0.0 and s["outer_step_bit_equal"] is True
    assert len(s["tar_metrics"]) == 40 and all("tr_loss" in m for m in s["tar_metrics"])
    # the story its text tells: the base knows; the safeguard hides E at rest, but the attack brings E back;
    # TAR hides E at rest too and the same attack recovers less, and later
    assert min(s["base"].values()) >= 0.9
    assert s["safeguard"]["E"] <= 0.4 and s["safeguard"]["Rt"] >= 0.9
    assert max(p["forget"] for p in s["curve_safeguard"]) >= 0.8
    assert s["tar"]["E"] <= 0.4 and s["tar"]["Rt"] >= 0.9
    mean = s["mean_forget_under_attack"]
    assert mean["tar"] < mean["safeguard"] - 0.1
    rec = s["recovers_at"]
    assert rec["safeguard"] is not None and (rec["tar"] is None or rec["tar"] > rec["safeguard"])
