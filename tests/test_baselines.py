"""The baseline safeguards (docs/baselines.md): losses against hand-computed values, each method's forget term reading
the forget batch and its retain term the retain batch (the official code's bug), RMU's parameter selection, a
smoke run of every method, and clear errors."""

import copy
import dataclasses
import json
import math
import shutil

import pytest
import torch

import adversary
import baselines
import batching
import domains
import losses
import safeguard
import storage
from conftest import cli_error, tiny_model


def test_min_posterior_hand_value():
    # V = 2, sequence [0, 1]: p(y=1) = softmax([0, ln 3])[1] = 3/4 -> −log(1 − 3/4) = log 4
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, 0.0]]])
    ids, mask = torch.tensor([[0, 1]]), torch.ones(1, 2, dtype=torch.long)
    assert losses.min_posterior_loss(logits, ids, mask).item() == pytest.approx(math.log(4), abs=1e-5)
    # already forgotten (log p < −15): the term is zeroed
    gone = torch.tensor([[[0.0, -40.0], [0.0, 0.0]]])
    assert losses.min_posterior_loss(gone, ids, mask).item() == 0.0


def test_kl_to_reference_hand_value():
    p = torch.tensor([[[math.log(0.5), math.log(0.5)]]])
    q = torch.tensor([[[math.log(0.25), math.log(0.75)]]])
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)  # KL(ref=p ‖ θ=q)
    assert losses.kl_to_reference(q, p, torch.ones(1, 1)).item() == pytest.approx(expected, abs=1e-6)
    assert losses.kl_to_reference(p, p, torch.ones(1, 1)).item() == pytest.approx(0.0, abs=1e-7)


def test_rmu_losses_hand_values():
    h = torch.tensor([[[1.0, 2.0], [9.0, 9.0]]])
    mask = torch.tensor([[1, 0]])
    control = torch.tensor([3.0, 2.0])
    assert losses.rmu_forget_loss(h, control, mask).item() == pytest.approx(2.0)  # ((1-3)² + 0) / 2
    assert losses.rmu_retain_loss(h, torch.zeros_like(h), mask).item() == pytest.approx(2.5)  # (1 + 4) / 2


def test_mmd_hand_values():
    x = torch.tensor([[0.0], [1.0]])
    assert losses.mmd_rbf(x, x.clone()).item() == pytest.approx(0.0, abs=1e-6)
    # x = {0, 1}, y = {2, 3}: the 12 off-diagonal squared distances are six 1s, four 4s, two 9s; their
    # (lower) median is 1, so σ² = 1 and k(d²) = exp(−d²/2)
    y = torch.tensor([[2.0], [3.0]])
    k = lambda d2: math.exp(-d2 / 2)
    expected = (2 + 2 * k(1)) / 4 * 2 - 2 * (k(4) + k(9) + k(1) + k(4)) / 4
    assert losses.mmd_rbf(x, y).item() == pytest.approx(expected, abs=1e-6)


def test_circuit_breaker_forget_hand_values():
    h = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]])
    ref = torch.tensor([[[2.0, 0.0], [-1.0, 0.0], [0.0, 1.0]]])
    mask = torch.tensor([[1, 1, 0]])
    # cos 1 and −1: ReLU keeps the first only -> (1 + 0) / 2
    assert losses.circuit_breaker_forget_loss(h, ref, mask).item() == pytest.approx(0.5)


def test_repnoise_pushes_forget_loss_up():
    torch.manual_seed(0)
    hidden = (torch.randn(4, 3, 8),)
    ids, mask = torch.randint(0, 5, (4, 3)), torch.ones(4, 3, dtype=torch.long)
    low = torch.zeros(4, 3, 5)
    high = torch.randn(4, 3, 5) * 10
    g = lambda: torch.Generator().manual_seed(0)
    # the −α log(CE) term: a higher forget-text loss gives a lower (better) RepNoise loss
    assert losses.repnoise_forget_loss(hidden, [high], ids, mask, generator=g()) < \
        losses.repnoise_forget_loss(hidden, [low], ids, mask, generator=g())
    expected = 1e-3 * losses.mmd_rbf(hidden[0].mean(1), torch.randn(4, 8, generator=g())) - math.log(math.log(5))
    assert losses.repnoise_forget_loss(hidden, [low], ids, mask, generator=g()).item() == pytest.approx(
        expected.item(), abs=1e-5)


def make_ctx(world, model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    values = [v for vals, _ in domains.CITIES.attributes.values() for v in vals]
    return {"gen": gen, "step": 1, "table": torch.randn(1, model.config.hidden_size, generator=gen),
            "u": torch.ones(model.config.hidden_size) / model.config.hidden_size ** 0.5, "rmu_layer": 2,
            "cb_layers": (1, 2),
            "retain_values": torch.tensor(world.tokenizer.convert_tokens_to_ids(["▁" + v for v in values]))}


@pytest.mark.parametrize("method", list(safeguard.METHODS))
def test_forget_term_reads_forget_batch_and_retain_term_reads_retain_batch(small_world, method):
    model = tiny_model(vocab_size=len(small_world.tokenizer), layers=3)
    ref = tiny_model(vocab_size=len(small_world.tokenizer), layers=3, seed=9)
    xf, xf2 = next(batching.Stream(small_world.tokens["T"], 4, 0)), next(batching.Stream(small_world.tokens["T"], 4, 1))
    xr, xr2 = next(batching.Stream(small_world.tokens["Rt"], 4, 0)), next(batching.Stream(small_world.tokens["Rt"], 4, 1))
    cfg = safeguard.for_method(method, steps=10)
    terms = lambda f, r: safeguard.METHODS[method].terms(model, ref, f, r, cfg, make_ctx(small_world, model))
    f0, r0 = terms(xf, xr)
    f_new_r, r_new_r = terms(xf, xr2)
    f_new_f, r_new_f = terms(xf2, xr)
    assert f_new_r.item() == pytest.approx(f0.item(), rel=1e-6)  # the forget term ignores the retain batch
    assert r_new_f.item() == pytest.approx(r0.item(), rel=1e-6)  # the retain term ignores the forget batch
    assert r_new_r.item() != pytest.approx(r0.item(), rel=1e-6)  # ... and each reads its own
    if safeguard.METHODS[method].teacher:  # UNDO: no forget term (its teacher already forgot)
        assert f0.item() == f_new_f.item() == 0.0
    else:
        assert f_new_f.item() != pytest.approx(f0.item(), rel=1e-6)


def test_rmu_updates_only_its_layers(small_world):
    model = tiny_model(vocab_size=len(small_world.tokenizer), layers=4)
    base = copy.deepcopy(model)
    safeguard.defend(model, copy.deepcopy(base), small_world, safeguard.for_method("rmu", steps=3, batch_size=4))
    changed = {n for (n, p), q in zip(model.named_parameters(), base.parameters()) if not torch.equal(p, q)}
    assert changed and all(".mlp." in n and (".layers.0." in n or ".layers.1." in n) for n in changed)
    assert all(p.requires_grad for p in model.parameters())  # the freeze is undone afterwards


@pytest.mark.parametrize("method", safeguard.BASELINES)
def test_every_method_trains(small_world, method):
    model = tiny_model(vocab_size=len(small_world.tokenizer), layers=4)
    before = copy.deepcopy(model)
    history = safeguard.defend(model, copy.deepcopy(before), small_world,
                               safeguard.for_method(method, steps=3, batch_size=4))
    assert len(history) == 3 and all(math.isfinite(h) for h in history)
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), before.parameters()))


def test_methods_see_the_optimizer_step_not_the_micro_batch(small_world, monkeypatch):
    """ctx["step"] (circuit breakers' schedule c_rr = a(1 − s/2S)) counts optimizer steps: cut into micro-batches,
    a step's terms all see the same s."""
    seen, method = [], safeguard.METHODS["circuit_breakers"]
    spy = lambda *a: (seen.append(a[-1]["step"]), method.terms(*a))[1]
    monkeypatch.setitem(safeguard.METHODS, "circuit_breakers", dataclasses.replace(method, terms=spy))
    model = tiny_model(vocab_size=len(small_world.tokenizer), layers=4)
    safeguard.defend(model, copy.deepcopy(model), small_world, safeguard.for_method("circuit_breakers", steps=3,
                                                                                   batch_size=4), micro_batch=2)
    assert seen == [1, 1, 2, 2, 3, 3]


def test_undo_perturbs_toward_a_fresh_initialisation():
    student = tiny_model(seed=0)
    teacher, init = copy.deepcopy(student), baselines.fresh_init(student, 3)
    baselines.perturb(student, 0.25, 3)  # θ ← 0.75 θ_teacher + 0.25 θ_init
    for p, t, q in zip(student.parameters(), teacher.parameters(), init.parameters()):
        torch.testing.assert_close(p, 0.75 * t + 0.25 * q)
    baselines.perturb(student, 1.0, 3)
    assert all(torch.equal(p, q) for p, q in zip(student.parameters(), init.parameters()))


def test_undo_distils_its_trained_teacher_into_a_perturbed_copy(small_world, tmp_path, monkeypatch):
    base = tiny_model(vocab_size=len(small_world.tokenizer), layers=3)
    with torch.no_grad():
        base.lm_head.weight.mul_(100)  # peaked outputs (a random model's are near uniform: nothing to distil)
    base.save_pretrained(tmp_path / "base")
    small_world.tokenizer.save_pretrained(tmp_path / "base")
    monkeypatch.setitem(safeguard.METHODS["rmu"].picked, "steps", 3)  # the teacher, briefly
    cfg = safeguard.for_method("undo_rmu", steps=30, coef=0.5)
    undo = safeguard.safeguard_model(base, "k", small_world, cfg, tmp_path, path=tmp_path / "baselines" / "undo_rmu")
    teacher = storage.load_model(tmp_path / "baselines" / "rmu")  # trained first, where --method rmu puts it
    assert json.loads((tmp_path / "baselines" / "undo_rmu" / "provenance.json").read_text())["parent"].endswith("rmu")
    start = copy.deepcopy(teacher)  # the student before distillation, as safeguard_model made it
    baselines.perturb(start, cfg.coef, cfg.seed)
    torch.manual_seed(cfg.seed)  # θ_init is no replay of the base's own initialisation (drawn from the same seed)
    replay = type(teacher)(teacher.config)
    assert not torch.equal(next(baselines.fresh_init(teacher, cfg.seed).parameters()), next(replay.parameters()))
    xr = next(batching.Stream(small_world.tokens["benign"], 32, 5))
    kl = lambda m: losses.kl_to_reference(baselines.forward(m, xr, False).logits,
                                          baselines.forward(teacher, xr, False).logits, xr.attention_mask).item()
    assert kl(undo) < 0.5 * kl(start)  # distillation pulled the perturbed student back towards the teacher
    assert kl(teacher) == pytest.approx(0.0, abs=1e-6) and kl(undo) > 0.0  # ... from outside it
    logged = []
    safeguard.safeguard_model(base, "k", small_world, cfg, tmp_path, logged.append, tmp_path / "baselines" / "undo_rmu")
    assert logged == ["undo_rmu: reusing " + str(tmp_path / "baselines" / "undo_rmu")]
    # a grid chosen on this base: the teacher is trained again at its pick, as `--method rmu` would train it
    pick = {"lr": 3e-4, "coef": 5.0, "alpha": 10.0, "steps": 2}
    (tmp_path / "baselines" / "grid.json").write_text(json.dumps({"rmu": {"pick": pick, "start": storage.file_digest(
        tmp_path / "base")}}))
    safeguard.safeguard_model(base, "k", small_world, cfg, tmp_path, path=tmp_path / "baselines" / "undo_rmu")
    made = json.loads((tmp_path / "baselines" / "rmu" / "provenance.json").read_text())["config"]
    assert {k: made[k] for k in pick} == pick


def test_undo_reads_its_grid_pick_after_its_teacher_is_trained(tmp_path, monkeypatch):
    """UNDO's grid pick is keyed on its teacher's weights: `--method undo_rmu` trains the teacher first (here it is
    missing), then finds the pick chosen on exactly those weights and trains UNDO at it."""
    monkeypatch.setitem(safeguard.METHODS["rmu"].picked, "steps", 3)  # the teacher, briefly
    args = dict(runs=str(tmp_path), world_entities=4, base_steps=2)
    safeguard.build(safeguard.SafeguardArgs(**args, method="rmu"))
    teacher = tmp_path / "bio" / "baselines" / "rmu"
    pick = {"coef": 0.25, "steps": 2}  # not the recipe's (α 0.5, 500 steps)
    (teacher.parent / "grid.json").write_text(json.dumps({"undo_rmu": {"pick": pick,
                                                                       "start": storage.file_digest(teacher)}}))
    shutil.rmtree(teacher)  # trained again, bitwise the same, by the UNDO call below
    safeguard.build(safeguard.SafeguardArgs(**args, method="undo_rmu"))
    made = json.loads((teacher.parent / "undo_rmu" / "provenance.json").read_text())["config"]
    assert {k: made[k] for k in pick} == pick


def test_nan_is_one_clear_error_and_saves_nothing(small_world, tmp_path):
    model = tiny_model(vocab_size=len(small_world.tokenizer), layers=4)
    model.save_pretrained(tmp_path / "base")
    small_world.tokenizer.save_pretrained(tmp_path / "base")
    cfg = safeguard.for_method("max_entropy", steps=3, batch_size=4, coef=float("inf"))
    with pytest.raises(adversary.Diverged, match="non-finite at step 1 of 3"):
        safeguard.safeguard_model(model, "k", small_world, cfg, tmp_path, path=tmp_path / "baselines" / "x")
    assert not (tmp_path / "baselines" / "x").exists()


def test_unknown_method_is_one_clear_error(capsys, tmp_path):
    code, line = cli_error(capsys, safeguard.main, ["--method", "bogus"])
    assert code == 2 and line.startswith("error: unknown method 'bogus'")
    code, line = cli_error(capsys, safeguard.main, ["--method", "data_filtering", "--grid"])
    assert code == 2 and "--grid needs --method NAME" in line
    code, line = cli_error(capsys, safeguard.main, ["--method", "undo_rmu", "--grid", "--runs", str(tmp_path)])
    assert code == 1 and "grid starts from its teacher: train it first" in line and "--method rmu" in line
    code, line = cli_error(capsys, safeguard.main, ["--micro-batch", "4"])  # given without --model: not ignored
    assert code == 2 and "only apply to a real --model" in line


def test_data_filtering_is_the_base_recipe_on_the_filtered_stream(small_world, tmp_path):
    safeguard.base_model(small_world, safeguard.BaseConfig(data="filtered", steps=2), tmp_path, log=None)
    saved = json.loads((tmp_path / "filtered" / "provenance.json").read_text())
    assert saved["what"] == "data filtering (no hazardous document)" and saved["config"]["data"] == "filtered"
