"""The adaptive red team (sweep.py): the objective and its utility cap, the search space, a study killed mid-way
resumes and runs exactly the missing trials, an optimizer outside the space is one usage error, and a tiny
sweep end to end."""

import json

import optuna
import pytest

import adversary
import evaluate
import storage
import sweep
from conftest import cli_error, tiny_model


def point(step, forget, retain, tokens=0):
    return {"step": step, "tokens": tokens, "forget": forget, "retain": retain}


def test_objective_is_the_peak_and_the_cap_is_benign_accuracy_at_the_peak():
    curve = [point(0, 0.25, 0.90), point(10, 0.60, 0.85), point(20, 0.70, 0.75), point(30, 0.70, 0.50)]
    value, violation, peak = sweep.score(curve)
    assert value == 0.70 and peak["step"] == 20  # the first point at the maximum
    assert violation == pytest.approx((0.90 - 0.10) - 0.75) and violation > 0  # 15 points lost: infeasible
    curve[2]["retain"] = 0.81
    assert sweep.score(curve)[1] == pytest.approx(-0.01)  # 9 points lost: feasible
    assert sweep.score(curve, diverged=True)[1] > 0  # a diverged attack is never a feasible one


@pytest.mark.parametrize("kind", sweep.SPACE)
def test_every_optimizer_of_the_space_makes_a_valid_attack(kind):
    params = {"optimizer": kind, f"lr_{kind}": sweep.SPACE[kind][0], "steps": 16, "batch_size": 4, "data": "A_mix",
              "schedule": "cosine", "schedulefree_warmup": 0.1, "nesterov": True, "lora_rank": 8}
    spec = sweep.suggest(optuna.trial.FixedTrial(params), tuple(sweep.SPACE))
    assert spec.lr == sweep.SPACE[kind][0] and spec.data == "A_mix" and spec.steps == 16
    assert (spec.lora_rank == 8) == (kind == "lora") and (spec.nesterov is True) == (kind == "sgd")
    assert spec.schedule == ("constant" if kind == "schedulefree" else "cosine") and spec.warmup == 0.1


def test_an_optimizer_outside_the_space_is_one_usage_error(tmp_path, capsys):
    code, line = cli_error(capsys, evaluate.main, [str(tmp_path), "--suite", "sweep", "--sweep-optimizers",
                                                    "adamw", "rmsprop"])
    assert code == 2 and "--sweep-optimizers must be one of" in line and "rmsprop" in line
    with pytest.raises(sweep.UsageError, match="cannot search optimizer rmsprop"):
        sweep.sweep({}, None, tmp_path, optimizers=("rmsprop",))


@pytest.fixture
def saved_model(small_world, tmp_path):
    storage.save_model(tiny_model(vocab_size=len(small_world.tokenizer)), small_world.tokenizer, tmp_path / "m",
                       {"what": "test", "world": {}})
    return tmp_path / "m"


class Killed(Exception):
    """A kill in the middle of a trial (pytest reserves KeyboardInterrupt for itself)."""


def test_a_killed_study_resumes_with_exactly_the_missing_trials(small_world, saved_model, tmp_path, monkeypatch):
    calls, kill = [], [3]

    def fake(job):  # a made-up curve: forget grows with the learning rate, benign holds
        calls.append(job)
        if len(calls) == kill[0]:
            kill[0] = 0
            raise Killed  # the kill: this trial stays RUNNING in the database
        f = min(0.9, 0.25 + 100 * job.spec.lr)
        return {"curve": [point(0, 0.25, 0.9), point(job.spec.steps, f, 0.88, 1000)], "diverged": None,
                "seconds": 0.0}

    monkeypatch.setattr(sweep, "run_trial", fake)
    kw = dict(models={"m": saved_model}, world_cfg=small_world.config, out=tmp_path / "rt", trials=5, items=20,
              rescore_seeds=(1,), log=lambda *_: None)
    with pytest.raises(Killed):
        sweep.sweep(**kw)
    killed = calls[-1].spec
    calls.clear()
    summary = sweep.sweep(**kw)
    search = [c for c in calls if c.seed == 0]
    assert len(search) == 3  # 2 were done, 1 killed: 3 to reach 5
    assert dataclasses_equal(search[0].spec, killed)  # the killed configuration runs first, the same
    study = optuna.load_study(study_name=summary["models"]["m (tpe)"]["study"],
                              storage=f"sqlite:///{tmp_path / 'rt' / 'sweep.db'}")
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 5 and states.count(optuna.trial.TrialState.FAIL) == 1
    calls.clear()
    sweep.sweep(**kw)  # complete: nothing runs but the re-scoring
    assert not [c for c in calls if c.seed == 0]


def dataclasses_equal(a: adversary.Attack, b: adversary.Attack) -> bool:
    return {**a.to_dict(), "name": ""} == {**b.to_dict(), "name": ""}


def test_a_tiny_sweep_end_to_end(small_world, saved_model, tmp_path, monkeypatch):
    monkeypatch.setitem(sweep.SPACE, "adamw", (1e-3, 1e-2))
    monkeypatch.setattr(sweep, "STEPS", (16, 32))
    monkeypatch.setattr(sweep, "BATCH", (4, 8))
    summary = sweep.sweep({"m": saved_model}, small_world.config, tmp_path / "rt", trials=3, items=12,
                          optimizers=("adamw", "sgd"), rescore_seeds=(1,), log=lambda *_: None)
    m = summary["models"]["m (tpe)"]
    assert m["trials"] == 3 and len(m["so_far"]["all"]) == 3
    assert m["all"]["tokens"] > 0 and m["all"]["params"]["optimizer"] in ("adamw", "sgd")
    saved = json.loads((tmp_path / "rt" / "sweep.json").read_text())
    assert saved["models"]["m (tpe)"]["study"] == m["study"] and (tmp_path / "rt" / "sweep.md").exists()
