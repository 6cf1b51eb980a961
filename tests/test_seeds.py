"""seeds.py: the seed study trains what `tar.py --seed s` trains, measures what tar.py's report measures, and
checks each cell against the targets on both sides."""

import json
import shutil

import pytest
from safetensors.torch import load_file

import config
import seeds
import workers
from conftest import cli_error, smoke_run


def test_the_study_trains_and_measures_as_tar_py(smoke, tmp_path, monkeypatch):
    run = smoke[0]
    r = seeds.study(run, [0, 1], [0, 1], workers=1)
    assert r["tar"][0] == {"path": str(run / "tar"), "seconds": None}  # the run's own, reused

    # seed 1 is the model `tar.py --seed 1` trains from the same cached stage 1
    other = tmp_path / "other" / "chem"
    other.mkdir(parents=True)
    for name in ("base", "oracle", "safeguard"):
        shutil.copytree(run / name, other / name)
    smoke_run(other.parent, "--seed", "1")
    mine, theirs = (load_file(p / "tar" / "model.safetensors") for p in (run / "seeds" / "seed_1", other))
    assert mine.keys() == theirs.keys() and all((mine[k] == theirs[k]).all() for k in mine)
    assert any((mine[k] != load_file(run / "tar" / "model.safetensors")[k]).any() for k in mine)  # not seed 0's

    # cell (0, 0) is what the run's own report measured at --attack-seed 0
    report = json.loads((run / "results.json").read_text())
    cell = next(c for c in r["cells"] if (c["seed"], c["order"]) == (0, 0))
    ref = next(a for a in report["attacks"] if a["spec"]["name"] == "adamw_3e-4")
    assert cell["curve"] == ref["curves"]["tar"]
    assert cell["relearn"] == report["relearning"]["steps"]["tar"]
    assert cell["oracle_relearn"] == report["relearning"]["steps"]["oracle"]
    assert cell["base_learn"] == report["learnability"]["steps"]["base"]
    assert [(c["seed"], c["order"]) for c in r["cells"]] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert (run / "seeds" / "grid.md").read_text().count("\n| ") == 4

    # a rerun trains nothing again ...
    stamp = (run / "seeds" / "seed_1" / "tar" / "model.safetensors").stat().st_mtime_ns
    cfg = config.TARConfig(**r["config"])
    assert seeds.tar_models(run, cfg, [0, 1], workers=1) == {s: {"path": r["tar"][s]["path"], "seconds": None}
                                                             for s in (0, 1)}
    assert (run / "seeds" / "seed_1" / "tar" / "model.safetensors").stat().st_mtime_ns == stamp
    # ... and measures nothing again: every run is in runs.jsonl
    monkeypatch.setattr(workers, "Workers", lambda n: pytest.fail("a run was measured again"))
    assert seeds.study(run, [0, 1], [0, 1], workers=1)["cells"] == r["cells"]


def cell(forget=0.25, retain=0.99, g=0.97, peak=0.30, g_low=0.95, relearn=(190, 190, 200), learn=(330, 340, 350)):
    curve = [{"forget": forget, "G": g}, {"forget": peak, "G": g_low}]
    return {"at_rest": {"forget": forget, "retain": retain, "G": g}, "curve": curve, "relearn": list(relearn),
            "learn": list(learn)}


@pytest.mark.parametrize("change, missed", [
    ({}, []),
    ({"peak": 0.36}, ["E under attack"]),
    ({"forget": 0.36, "peak": 0.36}, ["E at rest", "E under attack"]),
    ({"g": 0.84}, ["G_test at rest"]),
    ({"g_low": 0.74}, ["G_test under attack"]),
    ({"retain": 0.89}, ["Re"]),
    ({"relearn": (20, 30, None)}, []),  # the median: the oracle's 30
    ({"relearn": (20, 20, None)}, ["relearning"]),
    ({"learn": (380, 390, None)}, []),  # 1.5 x 260
    ({"learn": (380, None, None)}, ["learning N"]),  # never learned within the cap: above it
])
def test_misses_names_each_target_missed(change, missed):
    assert seeds.misses(cell(**change), oracle_relearn=30, base_learn=260) == missed


def test_a_run_without_tar_is_one_clear_error(tmp_path, capsys):
    code, err = cli_error(capsys, seeds.main, [str(tmp_path)])
    assert code == 1 and "holds no TAR model" in err and "python tar.py" in err
