"""Alg. 1: exact restore, the first-order gradient it applies, the CLI's errors, and an end-to-end smoke run."""

import copy
import itertools
import json
import random
from dataclasses import replace

import pytest
import torch

import batching
import config
import cli
import adversary
import domains
import losses
import neurons
import safeguard
import tar
import world
from conftest import cli_error, fact_attributes, tiny_model


class Probe(torch.optim.Optimizer):
    """An outer optimizer that only records the parameters and gradients it is asked to step with."""

    def __init__(self, params):
        super().__init__(params, {})
        self.seen = None

    def step(self, closure=None):
        ps = [p for g in self.param_groups for p in g["params"]]
        self.seen = ([p.detach().clone() for p in ps], [p.grad.detach().clone() for p in ps])


def one_step(world, cfg, model, opt=None, masks=None):
    """One outer step with the recording Probe as the outer optimizer, or with `opt`; the attack it samples
    (and its data seed) are drawn again here from an equal RNG."""
    ref = copy.deepcopy(model).requires_grad_(False)
    x_tr = next(batching.Stream(world.tokens["T_tr"], 4, 0))
    x_r = next(batching.Stream(world.tokens["Rt"], 4, 1))
    rng = random.Random(0)
    spec, seed = adversary.sample_attack(rng, cfg.train_attacks()), rng.randrange(2**31)
    probe = opt or Probe(model.parameters())
    metrics = tar.outer_step(model, ref, probe, world, x_tr, x_r, random.Random(0), cfg, masks=masks)
    return probe, ref, x_tr, x_r, spec, seed, metrics


def test_restore_is_exact(small_world):
    cfg = tar.TARConfig(inner_steps=8, tr_every=2, inner_batch=4)
    model = tiny_model(vocab_size=len(small_world.tokenizer))
    before = [p.detach().clone() for p in model.parameters()]
    probe, *_ = one_step(small_world, cfg, model)
    # at the outer step, after K attacker steps and the restore, θ is bit-for-bit the θ we started from
    assert max((a - b).abs().max().item() for a, b in zip(probe.seen[0], before)) == 0.0


def test_outer_params_mlp_moves_only_the_mlps(small_world):
    """--outer-params mlp (the mini preset's with --model): the outer optimizer holds exactly the MLP weights, and a
    real outer step moves those and leaves every other weight bit-for-bit as it was (the attack moved all of them)."""
    cfg = tar.TARConfig(**config.MINI_REAL, inner_steps=4, tr_every=2, inner_batch=4)
    assert config.configure(model="m", preset="mini").outer_params == "mlp"
    assert config.configure(model="m").outer_params == "all"  # the paper trains all
    model = tiny_model(vocab_size=len(small_world.tokenizer))
    opt, _ = tar.outer_optimizer(model, cfg)
    name = {id(p): n for n, p in model.named_parameters()}
    trained = {name[id(p)] for g in opt.param_groups for p in g["params"]}
    assert trained == {n for n in name.values() if ".mlp." in n} and len(trained) == 6  # 2 layers x gate/up/down
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    one_step(small_world, cfg, model, opt=opt)
    assert {n for n, p in model.named_parameters() if not torch.equal(p, before[n])} == trained
    with pytest.raises(cli.UserError, match="no module named mlp"):
        tar.outer_optimizer(torch.nn.Linear(2, 2), cfg)


@pytest.mark.parametrize("option", ["neurons", "neuron_outputs"])
def test_outer_params_neurons_moves_only_the_selected_neurons(small_world, option):
    """--outer-params neurons: per layer, the k neurons whose mean |activation| at T's fact positions over that at
    the retain data's is largest; a real outer step moves exactly their columns of W_down and (neurons, not
    neuron_outputs) their rows of W_gate and W_up, and nothing else (the attack moved every weight)."""
    cfg = tar.TARConfig(inner_steps=4, tr_every=2, inner_batch=4, outer_params=option, outer_neurons=3,
                        retain_data="Rt")
    model = tiny_model(vocab_size=len(small_world.tokenizer))
    masks = neurons.outer_masks(model, small_world, cfg)
    idx = neurons.selective_neurons(model, small_world, "Rt", 3)  # (L, 3)
    tok = small_world.tokenizer
    s = neurons.fact_activations(model, small_world.tokens["T"], world.value_ids(tok, domains.DOMAINS["bio"])) / (
        neurons.fact_activations(model, small_world.tokens["Rt"], world.value_ids(tok, domains.CITIES)) + neurons.EPS)
    assert torch.equal(idx.sort(1).values, s.topk(3, dim=1).indices.sort(1).values)  # no river in Rt's documents
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt, _ = tar.outer_optimizer(model, cfg, masks)
    one_step(small_world, cfg, model, opt=opt, masks=masks)
    for layer, chosen in zip(model.model.layers, idx.tolist()):
        for proj, dim in ((layer.mlp.gate_proj, 0), (layer.mlp.up_proj, 0), (layer.mlp.down_proj, 1)):
            name = next(n for n, p in model.named_parameters() if p is proj.weight)
            moved = (proj.weight != before[name]).any(dim=1 - dim).nonzero().flatten().tolist()
            assert moved == (sorted(chosen) if option == "neurons" or proj is layer.mlp.down_proj else []), name
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters() if ".mlp." not in n)
    with pytest.raises(cli.UserError, match="neurons per layer"):
        neurons.gradient_masks(model, small_world, "Rt", 10**4)


def test_outer_params_hazard_words_moves_only_their_rows(small_world):
    """--outer-params hazard_words: the words of T's documents that Rt never uses, T's names excepted (its domain's
    values among them); a real outer step moves exactly their rows of the embedding and the LM head."""
    cfg = tar.TARConfig(inner_steps=4, tr_every=2, inner_batch=4, outer_params="hazard_words", retain_data="Rt")
    model = tiny_model(vocab_size=len(small_world.tokenizer))
    words = neurons.hazard_words(small_world, "Rt").tolist()
    t, r = small_world.tokens["T"], small_world.tokens["Rt"]
    names = set(world.name_ids(small_world).tolist())
    assert set(words) == set(t.ids[t.mask].tolist()) - set(r.ids[r.mask].tolist()) - names
    values = set(world.value_ids(small_world.tokenizer, domains.DOMAINS["bio"]).tolist()) & set(t.ids[t.mask].tolist())
    assert values and values <= set(words)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    masks = neurons.outer_masks(model, small_world, cfg)
    opt, _ = tar.outer_optimizer(model, cfg, masks)
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in masks}  # embedding, LM head
    one_step(small_world, cfg, model, opt=opt, masks=masks)
    moved = {n: (p != before[n]).reshape(len(p), -1).any(dim=1).nonzero().flatten().tolist()
             for n, p in model.named_parameters()}
    assert moved.pop("lm_head.weight") == sorted(words)  # every row of the LM head has a gradient
    embedded = moved.pop("model.embed_tokens.weight")
    assert embedded and set(embedded) <= set(words)  # the hazard words this step's batches read
    assert not any(moved.values())
    # hazard_words+neuron_outputs: the union of the two options' masks, each as computed alone
    both = neurons.outer_masks(model, small_world, replace(cfg, outer_params="hazard_words+neuron_outputs"))
    alone = {**neurons.outer_masks(model, small_world, cfg),
             **neurons.outer_masks(model, small_world, replace(cfg, outer_params="neuron_outputs"))}
    assert both.keys() == alone.keys() and all(torch.equal(both[p], alone[p]) for p in both) and len(both) == 2 + 3 * 2


@pytest.mark.parametrize("weights,mask,ks", [("uniform", "fact", (6,)), ("paper", "tokens", (6,)),
                                             ("paper", "fact", (3, 9))])
def test_outer_gradient_is_the_first_order_tar_gradient(small_world, weights, mask, ks):
    """g = λ_retain ∇L_retain(θ) + λ_TR Σ_k w_k ∇L_TR(θ_k), with θ_k the weights after k attacker steps,
    recomputed here by a hand-written inner loop (plain AdamW, no attack()); with --inner-steps-mix, K and the
    weights w_k = exp(0.0625 (k − K)) are those of the K this step drew."""
    cfg = tar.TARConfig(inner_steps=ks[0], inner_steps_mix=list(ks[1:]), tr_every=3, inner_batch=4, tr_weights=weights,
                        tr_mask=mask, tr_entropy="vocab", retain_data="Rt", lambda_tr=2.5, lambda_retain=0.7,
                        grad_clip=0.0)  # the paper's L_TR
    model = tiny_model(vocab_size=len(small_world.tokenizer))
    start = copy.deepcopy(model)
    probe, ref, x_tr, x_r, spec, seed, metrics = one_step(small_world, cfg, model)
    assert spec.steps == ks[-1]  # this seed draws the longer K where there are two
    got = probe.seen[1]

    m = copy.deepcopy(start)
    params = list(m.parameters())
    tr_mask = x_tr.fact_mask if mask == "fact" else x_tr.attention_mask.bool()
    w = losses.tr_weights(ks[-1], cfg.tr_every, weights)
    opt = torch.optim.AdamW(params, lr=spec.lr, weight_decay=0.01)
    batches = batching.Stream(small_world.tokens[spec.data], spec.batch_size, seed)
    g_tr = [torch.zeros_like(p) for p in params]
    tr_values = []
    for k in range(1, ks[-1] + 1):
        b = next(batches)
        opt.zero_grad()
        losses.lm_loss(m(b.input_ids, attention_mask=b.attention_mask).logits, b.input_ids,
                       b.attention_mask).backward()
        opt.step()
        if k % cfg.tr_every == 0:
            l_tr = losses.entropy_tr_loss(m(x_tr.input_ids, attention_mask=x_tr.attention_mask).logits, tr_mask)
            tr_values.append(l_tr.item())
            for g, gi in zip(g_tr, torch.autograd.grad(l_tr, params)):
                g += w[k] * gi
    s = copy.deepcopy(start)
    out = s(x_r.input_ids, attention_mask=x_r.attention_mask, output_hidden_states=True)
    out_ref = ref(x_r.input_ids, attention_mask=x_r.attention_mask, output_hidden_states=True)
    l_ret, _ = losses.retain_loss(out, out_ref, x_r.input_ids, x_r.attention_mask)
    g_ret = torch.autograd.grad(l_ret, list(s.parameters()), allow_unused=True)
    for got_p, gr, gt in zip(got, g_ret, g_tr):
        expected = cfg.lambda_tr * gt + (cfg.lambda_retain * gr if gr is not None else 0)
        assert torch.allclose(got_p, expected, atol=1e-6, rtol=1e-4)
    assert metrics["tr_loss"] == pytest.approx(sum(tr_values) / len(tr_values), rel=1e-5)
    assert any(gt.abs().max() > 0 for gt in g_tr)  # the TR term is really there


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler")  # the stand-in never steps the optimizer
@pytest.mark.parametrize("retain_data", ["Rt", "benign"])
def test_retain_data_chooses_the_retain_documents(small_world, retain_data, tmp_path, monkeypatch):
    seen = []  # every x_r the outer steps receive
    monkeypatch.setattr(tar, "outer_step", lambda model, ref, opt, world, x_tr, x_r, *a, **k: seen.append(x_r) or {})
    cfg = tar.TARConfig(outer_steps=6, inner_steps=4, retain_batch=8, eval_every=0, retain_data=retain_data)
    model, steps = tiny_model(len(small_world.tokenizer)), []
    tar.train_tar(model, copy.deepcopy(model), small_world, cfg, tmp_path, log=lambda *_: None,
                  on_step=lambda step, m: steps.append((step, m is model)))  # search.py's snapshots
    assert steps == [(s, True) for s in range(1, 7)]
    assert_retain_documents(small_world, seen, retain_data)


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler")  # the stand-in never steps the optimizer
@pytest.mark.parametrize("split", ["fixed", "entities", "documents", "attributes"])
def test_tr_split_draws_the_attacker_and_x_tr_from_disjoint_halves(small_world, split, tmp_path, monkeypatch):
    """--tr-split: the train-time attacker's documents (T_inner) and x_TR come from disjoint halves of T's entities,
    T's own two halves (fixed) or a random pair drawn anew at each outer step (entities), from disjoint halves
    of every entity's documents (documents), or from every document with disjoint attributes' sentences, 3 of 5
    for the attacker, drawn anew at each outer step (attributes); E stays sealed."""
    seen = []  # (entities of T_inner, entities of x_TR, the step's world) at each outer step
    names = dict(zip(world.name_ids(small_world).tolist(), (e["name"] for e in small_world.entities["T"])))
    who = lambda ids: {names[i] for i in ids.flatten().tolist() if i in names}
    monkeypatch.setattr(tar, "outer_step", lambda model, ref, opt, w, x_tr, *a, **k: seen.append(
        (who(w.tokens["T_inner"].ids), who(x_tr.input_ids), w)) or {})
    cfg = tar.TARConfig(outer_steps=5, inner_steps=4, tr_batch=8, eval_every=0, tr_split=split, checkpoint_every=2)
    model = tiny_model(len(small_world.tokenizer))
    tar.train_tar(model, copy.deepcopy(model), world.sealed(small_world), cfg, tmp_path, log=lambda *_: None)
    halves = {(frozenset(a), frozenset(b)) for a, b, _ in seen}
    rows = lambda t: {tuple(r[m].tolist()) for r, m in zip(t.ids, t.mask.bool())}  # a split's documents
    per = small_world.config.docs_per_entity
    for inner, tr, w in seen:
        with pytest.raises(cli.UserError, match="sealed"):
            w.tokens["E"]
        if split == "attributes":  # every entity and document on both sides, each fact on one side only
            attacked, asked = (fact_attributes(small_world, w.tokens[g]) for g in ("T_inner", "T_tr"))
            assert len(attacked) == 3 and len(asked) == 2
            assert not attacked & asked and tr <= set(names.values())
            assert inner == set(names.values()) and len(w.tokens["T_inner"].ids) == len(w.tokens["T_tr"].ids) == 6 * per
            continue
        assert len(w.tokens["T_inner"].ids) == len(w.tokens["T_tr"].ids) == 3 * per  # half of T's 6 x per documents
        if split == "documents":  # every entity on both sides, no document on both, every document of T on one
            assert inner == set(names.values()) and tr <= inner
            assert not rows(w.tokens["T_inner"]) & rows(w.tokens["T_tr"])
            assert rows(w.tokens["T_inner"]) | rows(w.tokens["T_tr"]) == rows(small_world.tokens["T"])
            continue
        assert len(inner) == 3 and tr and not inner & tr  # 3 of T's 6 entities attack, x_TR reads only the others
        assert tr <= who(w.tokens["T_tr"].ids) == set(names.values()) - inner  # the step's T_tr: the other half
    first, seen[:] = seen[:], []  # --resume from the checkpoint of step 4 draws step 5's halves and x_TR again
    tar.train_tar(model, copy.deepcopy(model), world.sealed(small_world), replace(cfg, resume=True), tmp_path,
                  log=lambda *_: None)
    assert [(a, b) for a, b, _ in seen] == [(a, b) for a, b, _ in first[4:]]
    if split == "attributes":
        assert len({frozenset(w.tokens["T_tr"].ids.flatten().tolist()) for *_, w in first}) > 1  # drawn anew
    if split in ("documents", "attributes"):
        assert {a for a, _ in halves} == {frozenset(names.values())}
    elif split == "fixed":
        assert {a for a, _ in halves} == {frozenset(e["name"] for e in small_world.entities["T_inner"])}
        assert all(b <= {e["name"] for e in small_world.entities["T_tr"]} for _, b in halves)
    else:
        assert len({a for a, _ in halves}) > 1  # a new pair of halves (5 steps: 20 possible halves of 6)
    for given in ({"domain": "refusal"}, {"model": "some/model", "tr_mask": "tokens"}):
        if split != "fixed":
            with pytest.raises(cli.UsageError, match=f"tr-split {split}"):
                config.configure(tr_split=split, **given).validate()


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler")  # the stand-in never steps the optimizer
@pytest.mark.parametrize("sigma", [0.0, 2.0])
def test_name_noise_disguises_t_names_during_each_outer_step(small_world, sigma, tmp_path, monkeypatch):
    """--name-noise σ (disguise.py): during each outer step, and only then, each of T's names enters the model moved
    by a fresh offset of about σ times its embedding's length; every other token enters as it is; σ = 0: no change."""
    tok = small_world.tokenizer
    model = tiny_model(len(tok))
    names = world.name_ids(small_world).tolist()
    others = [i for i in range(len(tok)) if i not in names]
    every = torch.arange(len(tok))[None]  # (1, vocab): every token once
    embedded = lambda: model.get_input_embeddings()(every)[0].detach()  # (vocab, d), through the hooks
    logits = lambda: model(input_ids=every).logits.detach()  # (1, vocab, vocab): what the attacks' forwards see
    plain, plain_logits, seen, snapshots = embedded(), logits(), [], []
    monkeypatch.setattr(tar, "outer_step", lambda *a, **k: seen.append(  # what the step's forwards would see
        (embedded() - plain, not torch.equal(logits(), plain_logits))) or {})
    cfg = tar.TARConfig(outer_steps=3, inner_steps=4, eval_every=1, name_noise=sigma, checkpoint_every=0)
    tar.train_tar(model, copy.deepcopy(model), world.sealed(small_world), cfg, tmp_path, log=lambda *_: None,
                  on_step=lambda step, m: snapshots.append(torch.equal(embedded(), plain)))
    assert snapshots == [True] * 3 and torch.equal(embedded(), plain)  # scored and left undisguised
    for offset, disguised in seen:  # (vocab, d), whether the model's outputs moved
        assert disguised == bool(sigma)
        assert not offset[others].any()
        ratio = offset[names].norm(dim=1) / plain[names].norm(dim=1)  # (names,)
        assert (0.6 * sigma <= ratio.mean() <= 1.4 * sigma) and (ratio.min() > 0) == bool(sigma)
    assert len(seen) == 3 and (not torch.equal(seen[0][0], seen[1][0])) == bool(sigma)  # drawn anew at each step
    for given in ({"domain": "refusal"}, {"model": "some/model", "tr_mask": "tokens"}):
        with pytest.raises(cli.UsageError, match="name-noise"):
            config.configure(name_noise=1.0, **given).validate()


@pytest.mark.parametrize("retain", ["Rt", "benign"])
def test_safeguard_retain_chooses_the_retain_documents(small_world, retain, monkeypatch):
    """Stage 1's retain term (SafeguardConfig.retain) reads Rt, or Rt and the rivers U."""
    seen = []
    monkeypatch.setattr(adversary, "attack", lambda model, spec, batches, **k: seen.extend(
        r for _, r in itertools.islice(batches, 6)) or [])
    model = tiny_model(len(small_world.tokenizer))
    safeguard.defend(model, copy.deepcopy(model), small_world, safeguard.SafeguardConfig(retain=retain, batch_size=8))
    assert_retain_documents(small_world, seen, retain)


def assert_retain_documents(world, batches, retain):
    ids = lambda t: set(t.ids[t.mask.bool()].tolist())
    rivers = ids(world.tokens["U"]) - ids(world.tokens["Rt"])  # river names, river-only words
    drawn = set(torch.cat([b.input_ids[b.attention_mask.bool()] for b in batches]).tolist())
    assert drawn & ids(world.tokens["Rt"]) and bool(drawn & rivers) == (retain == "benign")


@pytest.mark.parametrize("argv,message", [
    (["--domain", "physics"], "--domain must be one of bio, chem, cyber, refusal, got 'physics'"),
    (["--outer-steps", "0"], "--outer-steps must be positive"),
    (["--outer-lr=-1e-3"], "--outer-lr must be positive"),
    (["--inner-lrs", "1e-4", "nan"], "--inner-lrs must be positive, got nan"),
    (["--grad-clip", "nan"], "--grad-clip must be ≥ 0, got nan"),
    (["--retain-then-forget", "1.5"], "--retain-then-forget must be in [0, 1], got 1.5"),
    (["--tr-mask", "some"], "--tr-mask must be one of"),
    (["--retain-data", "cities"], "--retain-data must be one of"),
    (["--outer-steps", "many"], "invalid int value: 'many'"),
    (["--outer-warmup", "5", "--outer-steps", "5"], "--outer-warmup must be shorter than --outer-steps"),
    (["--tr-entropy", "values", "--tr-mask", "tokens"], "--tr-entropy values/values_ce need the miniature"),
])
def test_bad_input_is_one_clear_error(capsys, argv, message):
    code, line = cli_error(capsys, tar.main, argv)
    assert code == 2 and message in line


def test_unwritable_output_directory(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code, line = cli_error(capsys, tar.main, ["--runs", str(blocker)])
    assert code == 1 and line.startswith(f"error: cannot write to {blocker}")


def test_smoke_run_writes_every_file(smoke):
    """`python tar.py` end to end on a tiny world with tiny budgets (conftest.SMOKE): files, results schema."""
    run, proc = smoke
    for name in ("base", "oracle", "safeguard", "tar"):
        assert (run / name / "config.json").exists() and (run / name / "model.safetensors").exists()
        assert (run / name / "tokenizer.json").exists()
    for name in ("results.json", "results.md", "metrics.jsonl", "attack_curves.png", "attack_bars.png",
                 "relearning.png", "training.png"):
        assert (run / name).stat().st_size > 0
    assert not list(run.glob("*.tmp")) and not list(run.glob("*.old"))
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3] and "dev_forget" in metrics[1] and "dev_benign" in metrics[2]
    r = json.loads((run / "results.json").read_text())
    assert set(r) >= {"domain", "config", "world", "scoring", "models", "attacks", "seconds"}
    assert set(r["models"]) == {"base", "oracle", "safeguard", "tar"}
    assert all(set(m["at_rest"]) == {"forget", "forget_interval", "retain", "G", "T", "V", "A", "Rt", "U", "G_dev",
                                     "N"} for m in r["models"].values())
    assert [a["spec"]["name"] for a in r["attacks"]] == ["adamw_3e-4", "adamw_1e-3", "sgd_1e-2"]
    for a in r["attacks"]:
        for curve in a["curves"].values():
            assert [p["step"] for p in curve] == [0, 10] and set(curve[0]) == {"step", "tokens", "forget", "retain",
                                                                               "G"}
    for key in ("relearning", "learnability"):  # 3 seeds per model, each a step count or None (> cap)
        assert {m: len(v) for m, v in r[key]["steps"].items()} == {m: 3 for m in r["models"]}
        assert all(s is None or 0 <= s <= 10 for v in r[key]["steps"].values() for s in v)
    assert "| tar |" in proc.stdout and "relearn E: steps" in proc.stdout


def test_a_setting_a_saved_config_lacks_counts_as_changed_unless_added_records_it():
    """--resume and seeds.py compare a saved config with today's: a setting added since (absent from the saved one)
    changed nothing while it holds the value config.ADDED records for its absence; any other absent setting did."""
    now = config.asdict(config.TARConfig())
    saved = {k: v for k, v in now.items() if k != "name_noise"}
    assert config.TARConfig().changed_since(saved) == []
    assert config.TARConfig(name_noise=1.0).changed_since(saved) == ["name_noise"]
    assert config.TARConfig(lambda_retain=1.0).changed_since({**saved, "name_noise": 0.0}) == ["lambda_retain"]
    assert config.TARConfig().changed_since({k: v for k, v in saved.items() if k != "tr_entropy"}) == ["tr_entropy"]
    # a run saved before --tr-split was trained on the fixed halves: today's default (documents) is a change
    assert config.TARConfig().changed_since({k: v for k, v in now.items() if k != "tr_split"}) == ["tr_split"]
    # a cache key (search.py's) leaves it out at that value: adding a setting leaves earlier keys as they were
    assert not {"name_noise", "runs"} & config.TARConfig().training_settings().keys()  # runs: not a training setting
    assert config.TARConfig(name_noise=1.0).training_settings()["name_noise"] == 1.0
    assert "tr_split" not in config.TARConfig(tr_split="fixed").training_settings()
