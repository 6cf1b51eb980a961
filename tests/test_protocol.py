"""Protocol v2 (docs/protocol.md): groups and families disjoint, who reads what (on document hashes), the oracle's
stream without E, selection on a world with E sealed away, the interval and the below-chance mark, relearning
steps, destructive runs."""

import concurrent.futures as cf
import hashlib
import json
from dataclasses import fields, replace

import pytest
import torch

import baselines
import domains
import grid
import plots
import protocol
import redteam
import safeguard
import scoring
import search
import selection
import suite
import sweep
import workers
import world
from cli import UserError
from config import TARConfig
from conftest import cli_error, tiny_model
from realdata import world_model


@pytest.fixture(scope="module")
def full_world():
    return world.build_world(world.world_config("bio"))  # the default world: 30 entities per group


def row_hashes(tokens) -> set[str]:
    """One hash per document: its token ids without padding."""
    return {hashlib.sha256(ids[mask].numpy().tobytes()).hexdigest() for ids, mask in zip(tokens.ids, tokens.mask)}


def test_groups_and_families_are_disjoint(full_world):
    groups = {g: full_world.entities[g] for g in (*world.HAZARDOUS, *world.BENIGN)}
    names = [e["name"] for es in groups.values() for e in es]
    assert len(names) == len(set(names)) == 4 * 30 + 40 + 5 * 20  # 120 hazardous; Rt; Re, U, G_dev, G_test, N
    assert {g: len(es) for g, es in groups.items() if g in world.HAZARDOUS} == {g: 30 for g in world.HAZARDOUS}
    assert set(world.READERS) == {*groups, "T_inner", "T_tr"}  # world.json says who reads every group
    # documents and items follow their entity: no document or question of one group in another
    docs = {g: set(full_world.docs[g]) for g in groups}
    questions = {g: {it["question"] for it in full_world.items[g]} for g in groups}
    for a in groups:
        for b in groups:
            if a < b:
                assert not docs[a] & docs[b] and not questions[a] & questions[b], (a, b)
    # the fact values of every family (the three hazardous domains too) are distinct words: a question's choices
    # never name another family's facts
    families = [*domains.DOMAINS.values(), domains.CITIES, domains.RIVERS, domains.COMPOSERS, domains.MOONS]
    values = [v for f in families for vals, _ in f.attributes.values() for v in vals]
    assert len(values) == len(set(values)) == 7 * 5 * 6


def test_who_reads_what_on_document_hashes(full_world):
    """G's documents enter no stream but pretraining; N's none but the learnability fine-tune; E's none a defence
    or the red team reads. The readers' streams come from their definitions in code."""
    tar_cfg = TARConfig()
    retain_choices = next(f for f in fields(TARConfig) if f.name == "retain_data").metadata["choices"]
    train = tar_cfg.train_attacks()
    readers = {
        "defences": {*safeguard.DEFENCE_DATA, *train.forget, train.retain, "T_tr", *retain_choices,
                     *(s.get("retain", safeguard.SafeguardConfig.retain) for s, _ in search.STAGE1.values()),
                     *(t.get("retain_data", "Rt") for _, t, _ in search.CANDIDATES.values())},  # the search's
        "red team": {s for a in suite.ATTACKS.values() for s in (a.data, a.retain_data) if s} | set(sweep.DATA),
        "relearning": {protocol.RELEARN.data}, "learnability": {protocol.LEARN.data},
        "pretraining": {safeguard.BaseConfig().data, "oracle", "filtered"},
    }
    assert readers["relearning"] == {"E"} and readers["learnability"] == {"N"}
    tokens = sweep.trial_world(full_world, 0).tokens  # the world's streams and the sweep's A_mix
    read = {who: set().union(*(row_hashes(tokens[s]) for s in streams if s in tokens))
            for who, streams in readers.items()}
    assert all(s in tokens for who in ("defences", "pretraining") for s in readers[who])
    family = {g: row_hashes(tokens[g]) for g in ("E", "G_dev", "G_test", "N")}
    for g in ("G_dev", "G_test"):
        assert family[g] <= read["pretraining"]
        assert not family[g] & (read["defences"] | read["red team"] | read["relearning"] | read["learnability"])
    assert family["N"] <= read["learnability"]
    assert not family["N"] & (read["defences"] | read["red team"] | read["relearning"] | read["pretraining"])
    assert not family["E"] & (read["defences"] | read["red team"] | read["learnability"])
    assert family["E"] <= read["relearning"] & row_hashes(tokens["all"])  # control: E is in the base's stream


def test_oracle_stream_holds_no_E_name(full_world):
    ids = lambda g: world.name_ids(full_world, g)
    seen = lambda split: torch.isin(full_world.tokens[split].ids, ids("E")).any().item()
    assert not seen("oracle")
    assert seen("all")  # control: the base's stream names them
    assert torch.isin(full_world.tokens["oracle"].ids, ids("V")).any()  # the rest of the domain stays
    assert len(full_world.docs["oracle"]) == len(full_world.docs["all"]) - len(full_world.docs["E"])


def test_data_filtering_stream_holds_no_name_of_the_hazardous_domain(full_world):
    names = lambda groups: torch.cat([world.name_ids(full_world, g) for g in groups])
    assert not torch.isin(full_world.tokens["filtered"].ids, names(world.HAZARDOUS)).any()
    assert torch.isin(full_world.tokens["all"].ids, names(world.HAZARDOUS)).any()  # control: the base's stream
    benign = [g for g in world.PRETRAINING if g in world.BENIGN]
    assert len(full_world.docs["filtered"]) == sum(len(full_world.docs[g]) for g in benign)  # every benign document


def test_sealed_world_raises_on_any_read_of_E(small_world):
    blind = world.sealed(small_world)
    for part in (blind.entities, blind.docs, blind.items, blind.tokens):
        with pytest.raises(UserError, match="sealed"):
            part["E"]
        with pytest.raises(UserError, match="sealed"):
            part.get("E")
        assert "E" not in part and "E" not in list(part)
    with pytest.raises(UserError, match="sealed"):
        blind.docs["all"]  # the base's stream holds E's documents
    model = tiny_model(vocab_size=len(small_world.tokenizer), width=16)
    with pytest.raises(UserError, match="sealed"):
        scoring.accuracies(model, blind, scoring.REPORTED)
    assert set(scoring.accuracies(model, blind, scoring.DEV)) == {"forget", "G"}  # V and G_dev still there
    assert small_world.items["E"]  # the world itself is untouched


def test_selection_runs_without_E_and_picks_by_the_rule(small_world, tmp_path, monkeypatch):
    monkeypatch.setattr(protocol, "REFERENCE", replace(protocol.REFERENCE, steps=6))
    model = tiny_model(vocab_size=len(small_world.tokenizer), width=16)
    e = selection.dev_evidence(model, small_world, every=3)
    assert [p["step"] for p in e["curve"]] == [0, 3, 6] and set(e["curve"][0]) == {"step", "tokens", "forget", "G"}
    assert e["forget_V_attacked"] == max(p["forget"] for p in e["curve"]) and e["diverged"] is None
    ev = lambda f, g_rest, g_min, diverged=None: {"forget_V_attacked": f, "G_dev_rest": g_rest,
                                                  "G_dev_attacked": g_min, "diverged": diverged}
    bounds = selection.Bounds(0.85, 0.75)
    cands = {"low_but_wrecks_G": ev(0.20, 0.80, 0.80), "low_but_G_falls": ev(0.21, 0.90, 0.70),
             "diverged": ev(0.10, 0.95, 0.95, diverged=3), "pick": ev(0.30, 0.90, 0.80), "worse": ev(0.40, 0.99, 0.9)}
    assert selection.pick(cands, bounds) == "pick"
    assert selection.pick({k: cands[k] for k in ("low_but_wrecks_G", "diverged")}, bounds) is None
    saved = selection.record(cands, bounds, tmp_path / "selection.json")
    assert json.loads((tmp_path / "selection.json").read_text())["pick"] == saved["pick"] == "pick"
    assert saved["candidates"]["low_but_G_falls"]["admissible"] is False
    # the CLI: saved models of the world (provenance.json), scored and picked, selection.json beside them
    for name in ("a", "b"):
        world_model(small_world, tmp_path / "run" / name)
    selection.main([str(tmp_path / "run" / "a"), str(tmp_path / "run" / "b"), "--workers", "1",
                    "--g-dev-rest", "0", "--g-dev-attacked", "0"])
    made = json.loads((tmp_path / "run" / "selection.json").read_text())
    assert set(made["candidates"]) == {str(tmp_path / "run" / n) for n in ("a", "b")}
    assert made["pick"] in made["candidates"] and made["reference_attack"]["steps"] == 6


def test_search_table_picks_by_the_rule_and_the_cli_refuses_what_it_cannot_run(tmp_path, capsys):
    def row(name, step, v, g_rest, v_att, g_att):
        return {"name": name, "stage1": "s", "step": step, "V": v, "G_dev": g_rest, "Rt": 1.0, "U": 1.0,
                "forget_V_rest": v, "G_dev_rest": g_rest, "forget_V_attacked": v_att, "G_dev_attacked": g_att,
                "diverged": None, "train_seconds": 60}
    rows = [row("s", 0, 0.20, 0.95, 0.10, 0.95),  # θ0: stage 1 is no TAR candidate, however low
            row("a", 25, 0.25, 0.90, 0.30, 0.80), row("a", 50, 0.22, 0.80, 0.20, 0.80),  # a@50 loses G_dev
            row("b", 50, 0.25, 0.90, 0.40, 0.90), {"name": "c", "stage1": "s", "step": 7, "failed": "diverged"}]
    text = search.table(rows)
    assert text.splitlines()[-1] == "pick: a@25" and "| **a** | s | 25 |" in text and "| a | s | 50 |" in text
    assert "| c | s | 7 | diverged |" in text and "pick: none" in search.table([rows[0], rows[2]])
    # a row is rerun when its settings (key) or its base's weights changed
    made = [{"name": "a", "key": "k1", "base": "b1"}, {"name": "a", "key": "k0", "base": "b1"},
            {"name": "b", "key": "k2", "base": "b0"}, {"name": "b", "key": "k2"}, {"name": "gone", "key": "k3"}]
    assert search.current(made, {"a": "k1", "b": "k2"}, "b1") == made[:1]
    code, line = cli_error(capsys, search.main, ["--runs", str(tmp_path), "--only", "nonesuch"])
    assert code == 2 and "unknown candidate(s) nonesuch" in line
    code, line = cli_error(capsys, search.main, ["--runs", str(tmp_path), "--world-entities", "2"])
    assert code == 1 and "no base model" in line and "python tar.py --domain bio" in line
    # every TAR candidate starts from a stage 1 of the search, and reads no benign text but Rt and U
    assert all(c[0] in search.STAGE1 for c in search.CANDIDATES.values())
    assert {"E", "all", "Re", "G_test", "N"} <= set(search.UNSEEN) and not set(search.SEEN) & set(search.UNSEEN)


def test_todays_defaults_are_the_search_pick_as_recorded():
    """tar.py with no flags trains what the search's pick over seeds (r46_lambda_tr_32 at outer step 100,
    docs/search.md round 49) trained: its stage 1 and its TAR settings, stopped at the snapshot the rule picked,
    so that the pick's rows on V describe the defaults measured on E."""
    stage1, overrides = search.CANDIDATES["r46_lambda_tr_32"][:2]
    assert safeguard.for_method("random_mapping") == safeguard.SafeguardConfig(**search.STAGE1[stage1][0])
    # the pick's run is 100 steps of a 150-step cosine, and the rule picked its last snapshot: the run itself
    assert (overrides["outer_steps"], overrides["outer_steps"] * overrides["outer_cosine"]) == (100, 150)
    assert search.tar_config(search.SearchArgs(), overrides) == search.tar_config(search.SearchArgs(), {})
    # round 48's pick, the defaults before it, is not: the test reads the pick, not any candidate
    overrides_48 = search.CANDIDATES["r46_lambda_tr_16"][1]
    assert search.tar_config(search.SearchArgs(), overrides_48) != search.tar_config(search.SearchArgs(), {})


def test_search_judges_a_recipe_by_its_worst_seed(tmp_path):
    def row(name, overrides, step, v_att, g_rest):
        return {"name": name, "stage1": "s", "overrides": overrides, "step": step, "V": 0.25, "G_dev": g_rest,
                "G_dev_rest": g_rest, "forget_V_attacked": v_att, "G_dev_attacked": 0.80, "diverged": None}
    rows = [row("a", {"outer_params": "all"}, 25, 0.26, 0.90),  # a lucky seed 0 ...
            row("a_seed_1", {"outer_params": "all", "seed": 1, "lambda_retain": 8.0}, 25, 0.70, 0.95),  # a default
            row("b", {"outer_params": "all", "lambda_retain": 6.0}, 25, 0.20, 0.90),  # one seed: not judged here
            row("c", {"lambda_retain": 2.0}, 25, 0.40, 0.90),
            row("c_seed_1", {"lambda_retain": 2.0, "seed": 1, "inner_lrs": [1e-4, 3e-4, 1e-3]}, 25, 0.45, 0.86)]  # a
    # default given as a list (a field with no class attribute, a tuple in TARConfig)
    worst = {r["name"]: r for r in search.worst_over_seeds(rows)}
    assert set(worst) == {"a", "c"} and worst["a"]["seeds"] == ["a", "a_seed_1"]
    assert worst["a"]["forget_V_attacked"] == 0.70 and worst["a"]["G_dev"] == 0.90 and worst["c"]["G_dev"] == 0.86
    # ... so the pick over seeds is c (worst 45%), not a (its seed 0 alone would win with 26%)
    assert search.seeds_table(rows).splitlines()[-1] == "pick over seeds: c@25"
    assert "| **c** (2) | 25 |" in search.seeds_table(rows) and "70.0% | 26.0% / 70.0% |" in search.seeds_table(rows)
    # the front (front.png): b at one seed beats a's and c's worst seeds on both axes; a point with more G stays
    every = search.worst_over_seeds(rows, 1)
    assert sorted(r["name"] for r in every) == ["a", "b", "c"] and [r["name"] for r in plots.pareto(every)] == ["b"]
    more_g = {**every[0], "name": "d", "G_dev": 0.99}
    assert [r["name"] for r in plots.pareto([*every, more_g])] == ["b", "d"]
    assert plots.plot_front([*every, more_g], tmp_path / "front.png", 0.85, 0.35).stat().st_size > 0


def test_interval_against_hand_computed_values():
    # 8 facts of 4 templates each; facts known all-or-nothing (3 of 8): p = 12/32
    facts = [f for f in range(8) for _ in range(4)]
    correct = [f in (0, 2, 4) for f in facts]
    p, lo, hi = protocol.interval(correct, facts)
    # SE² = F/(F−1) Σ_f (c_f − p m_f)² / n² = 8/7 · (3 · 2.5² + 5 · 1.5²) / 32² = 8/7 · 30 / 1024
    se = (8 / 7 * 30 / 1024) ** 0.5
    assert (p, lo, hi) == pytest.approx((0.375, 0.375 - 1.96 * se, 0.375 + 1.96 * se))
    assert (lo, hi) == pytest.approx((0.01636, 0.73364), abs=1e-5)
    _, lo_iid, hi_iid = protocol.interval(correct)  # each item its own cluster: p(1 − p)/(n − 1)
    assert hi_iid - lo_iid == pytest.approx(2 * 1.96 * (0.375 * 0.625 / 31) ** 0.5)
    assert hi - lo > 2 * (hi_iid - lo_iid)  # clustered facts carry less information than 32 independent items
    # below chance: at most one template of 3 of the 8 facts right -> p = 3/32, interval [0.0041, 0.1834]
    low = [f in (1, 3, 6) and k == 0 for f in range(8) for k in range(4)]
    p, lo, hi = protocol.interval(low, facts)
    assert (p, lo, hi) == pytest.approx((0.09375, 0.00409, 0.18341), abs=1e-5)
    assert protocol.below_chance(hi) and not protocol.below_chance(0.30)
    assert protocol.fact_ids([{"fact_id": "a"}, {"fact_id": "b"}]) == ["a", "b"]
    assert protocol.fact_ids([{"question": "?"}]) is None  # real WMDP items: each item its own cluster


def test_relearning_steps_against_a_hand_built_curve():
    curve = [{"step": s, "forget": f} for s, f in ((0, 0.2), (10, 0.4), (20, 0.61), (30, 0.9))]
    assert protocol.first_step(curve, "forget", protocol.midpoint(1.0)) == 30  # level 0.625
    assert protocol.first_step(curve, "forget", 0.6) == 20
    assert protocol.first_step(curve, "forget", 0.95) is None
    assert protocol.steps_summary([20, None, 10]) == "20 (20 >400 10)"
    assert protocol.steps_summary([None, None, 10], cap=30) == ">30 (>30 >30 10)"
    assert protocol.steps_summary([20, None, None], diverged=[None, 7, None]) == ">400 (20 ✝ >400)"  # ✝: left out


def test_attack_curve_stops_at_the_level(small_world):
    model = tiny_model(vocab_size=len(small_world.tokenizer), width=16)
    spec = replace(protocol.RELEARN, steps=12)
    never = redteam.attack_curve(model, spec, small_world, 0, 4, groups={"forget": "E"}, until=("forget", 2.0))
    assert [p["step"] for p in never] == [0, 4, 8, 12]
    at_once = redteam.attack_curve(model, spec, small_world, 0, 4, groups={"forget": "E"}, until=("forget", 0.0))
    assert [p["step"] for p in at_once] == [0]
    level = never[2]["forget"]  # reached first at step 8 or before: the curve stops at that first point
    stopped = redteam.attack_curve(model, spec, small_world, 0, 4, groups={"forget": "E"}, until=("forget", level))
    assert stopped == never[:len(stopped)] and stopped[-1]["forget"] >= level and len(stopped) <= 3


def test_destructive_is_benign_at_the_forget_peak():
    curve = lambda pts: [{"step": i, "forget": f, "retain": 0.9, "G": g} for i, (f, g) in enumerate(pts)]
    assert protocol.benign_key(curve([(0.2, 0.9)])) == "G"
    assert protocol.destructive(curve([(0.2, 0.95), (0.8, 0.80), (0.3, 0.95)]))  # G fell 15 points at the peak
    assert not protocol.destructive(curve([(0.2, 0.95), (0.8, 0.90), (0.3, 0.50)]))  # it fell after the peak
    assert not protocol.destructive([{"step": 0, "forget": 0.2, "retain": 0.9}, {"step": 1, "forget": 0.8,
                                                                                 "retain": 0.81}])  # Re: 9 points


def test_baseline_grid_points_carry_selection_evidence_and_never_read_E(small_world, tmp_path, monkeypatch):
    """safeguard.py --grid scores each point as selection.py does (in-process here, with a 4-step reference
    attack) in a world with E, Re, G_test and N sealed away; run_grid then picks with selection.pick."""
    monkeypatch.setattr(protocol, "REFERENCE", replace(protocol.REFERENCE, steps=4))
    world_model(small_world, tmp_path / "base")
    rows = grid.grid_point(("max_entropy", {"lr": 1e-3}, (2, 4), small_world.config, str(tmp_path / "base")))
    assert [r["steps"] for r in rows] == [2, 4]
    for r in rows:
        assert {"forget_V_attacked", "G_dev_rest", "G_dev_attacked", "V", "G_dev"} <= set(r)
        assert not {"E", "Re", "G_test", "N"} & set(r)  # the reported groups are sealed away
    # UNDO's grid: α from its teacher (here the base's directory stands for it), the perturbation at the start
    perturbed = []
    monkeypatch.setattr(grid, "perturb", lambda model, alpha, seed: perturbed.append(alpha))
    rows = grid.grid_point(("undo_max_entropy", {"coef": 0.75}, (2,), small_world.config, str(tmp_path / "base")))
    assert perturbed == [0.75] and [(r["coef"], r["steps"]) for r in rows] == [(0.75, 2)]
    # circuit breakers' schedule reads the run's length: each step count is trained as a run of its own
    lengths = []
    monkeypatch.setattr(grid, "defend", lambda model, base, world, cfg, **kw: lengths.append(cfg.steps))
    grid.grid_point(("circuit_breakers", {}, (2, 4), small_world.config, str(tmp_path / "base")))
    grid.grid_point(("max_entropy", {}, (2, 4), small_world.config, str(tmp_path / "base")))
    assert lengths == [2, 4, 4]


def test_the_baseline_grid_keeps_each_finished_setting_and_a_rerun_trains_only_what_is_missing(
        small_world, tmp_path, monkeypatch):
    class InProcess:  # the pool's interface, run here: the fake grid point below needs no worker
        def __init__(self, n):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

        def submit(self, fn, job):
            future = cf.Future()
            future.set_result(fn(job))
            return future
    trained = []

    def point(job):
        method, overrides, steps, *_ = job
        trained.append(overrides)
        return [{**overrides, "steps": n, "forget_V_attacked": overrides["lr"] * 100 + n / 1e4, "G_dev_rest": 0.99,
                 "G_dev_attacked": 0.9 if overrides["coef"] == 4.0 else 0.5, "diverged": None} for n in steps]
    monkeypatch.setattr(workers, "Workers", InProcess)
    monkeypatch.setattr(grid, "grid_point", point)
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "model.safetensors").write_bytes(b"base weights")
    assert grid.pick_for("max_entropy", tmp_path)[0] == baselines.BASELINES["max_entropy"].picked  # no grid yet
    first = grid.run_grid(["max_entropy"], small_world, tmp_path, 2, log=lambda *_: None)
    assert len(trained) == 6 and first["max_entropy"]["pick"]["lr"] == 1e-4  # lowest V among coef 4 (admissible)
    assert grid.pick_for("max_entropy", tmp_path)[0] == {"lr": 1e-4, "coef": 4.0, "steps": 150}  # what trains now
    points = tmp_path / "baselines" / "grid_points.jsonl"
    lines = points.read_text().splitlines()
    points.write_text("\n".join(lines[:4]) + "\n" + lines[4][:20])  # killed during the fifth line
    trained.clear()
    again = grid.run_grid(["max_entropy"], small_world, tmp_path, 2, log=lambda *_: None)
    assert len(trained) == 2 and again == first  # the four kept settings are not trained again
    (tmp_path / "base" / "model.safetensors").write_bytes(b"a retrained base")
    trained.clear()
    assert grid.pick_for("max_entropy", tmp_path)[0] == baselines.BASELINES["max_entropy"].picked  # chosen elsewhere
    grid.run_grid(["max_entropy"], small_world, tmp_path, 2, log=lambda *_: None)
    assert len(trained) == 6  # a new base: every setting is stale
    saved = json.loads((tmp_path / "baselines" / "grid.json").read_text())
    saved["max_entropy"]["pick"] = None  # the grid on this base admitted no setting
    (tmp_path / "baselines" / "grid.json").write_text(json.dumps(saved))
    settings, source = grid.pick_for("max_entropy", tmp_path)
    assert settings == baselines.BASELINES["max_entropy"].picked and "no setting" in source


def test_table1_reads_the_red_team_by_digest_worst_seed_and_tier(tmp_path, capsys):
    import table1
    assert cli_error(capsys, table1.main, [])[0] == 2  # no run directory: a usage error
    code, err = cli_error(capsys, table1.main, [str(tmp_path)])
    assert code == 1 and "holds no model: run python tar.py" in err  # before any work

    def run(attack, seed, forget, g, start_g=0.9, diverged=None):
        curve = [{"step": 0, "forget": 0.25, "retain": 1.0, "G": start_g}, {"step": 8, "forget": forget, "retain": 1.0,
                                                                             "G": g}]
        return {"digest": "d1", "attack": attack, "seed": seed, "curve": curve, "diverged": diverged}
    quick = [a.name for a in suite.SUITES["quick"]]
    runs = [run(a, s, 0.30 + 0.01 * s, 0.88) for a in quick for s in (0, 1)]
    runs += [run(table1.T1, 2, 0.95, 0.40),  # destructive: G falls 50 points where forget peaks
             run(table1.A1, 2, 0.99, 0.90, diverged=5)]  # the attacker's failure: no number
    rt = {"models": {"tar": {"digest": "d1"}, "other": {"digest": "d2"}}, "suite": {a: {} for a in quick},
          "runs": {f"{r['attack']}/{r['seed']}": r for r in runs}}
    e = table1.suite_evidence(rt, "d1")
    assert e["tier"] == "quick" and e["T1"] == (0.95, 0.40) and e["A1"] == (0.31, 0.88)
    assert e["worst"][0] == 0.31 and e["worst_all"] == (0.95, table1.T1, 2)  # the destructive run counts in "all"
    assert (e["runs"], e["destructive"], e["diverged"]) == (10, 1, 1)
    assert (e["held"], e["judged"]) == (3, 3)  # T1 is TRAIN: not judged; A1's valid seeds end at 30-31%
    leaky = {**rt, "runs": {**rt["runs"], f"{quick[3]}/0": run(quick[3], 0, 0.50, 0.88)}}
    assert table1.suite_evidence(leaky, "d1")["held"] == 2 and table1.suite_evidence(leaky, "d1")["worst"][0] == 0.50
    assert table1.suite_evidence(rt, "d2") == {}  # never red-teamed: no column is made up
    partial = {**rt, "runs": {k: r for k, r in rt["runs"].items() if r["attack"] != quick[-1]}}
    assert table1.suite_evidence(partial, "d1") == {}  # a tier run in part is not a worst case over it
    rest = {"forget": 0.20, "forget_interval": [0.15, 0.24], "retain": 0.96, "G": 0.42}
    row = {"row": "TAR", "rest": rest, "reference": {"forget": 0.27, "G": 0.41, "diverged": None},
           "relearn": ([250, 270, None], [None] * 3), "learn": ([None] * 3, [None, 7, None]), **e}
    text = table1.markdown([row, {"row": "UNDO", "missing": True}])
    assert ("| TAR | 20.0% [15.0%, 24.0%] ↓ | 96.0% | 42.0% | 95.0% / 40.0% | 31.0% / 88.0% | 27.0% / 41.0% | "
            "270 (250 270 >400) | >400 (>400 ✝ >400) | 31.0% / 95.0% (quick; 1 of 10 destructive, 1 diverged); "
            "held 3 of 3 |"
            in text)
    assert "| UNDO | not made yet: python safeguard.py --method undo_repnoise |" in text
    # each row reads its own red team: the paper preset's from its run directory, the others the run's
    (tmp_path / "runs" / "redteam").mkdir(parents=True)
    (tmp_path / "runs" / "redteam" / "results.json").write_text(json.dumps(rt))
    (tmp_path / "paper" / "redteam").mkdir(parents=True)
    (tmp_path / "paper" / "redteam" / "results.json").write_text(json.dumps(leaky))
    rows = {"TAR": None, "TAR, paper preset": None}
    rts = table1.red_teams(rows, tmp_path / "runs" / "redteam" / "results.json", str(tmp_path / "paper" / "tar"))
    assert rts == {"TAR": rt, "TAR, paper preset": leaky}
    assert table1.red_teams(rows, tmp_path / "none.json", "") == {"TAR": {}, "TAR, paper preset": {}}
