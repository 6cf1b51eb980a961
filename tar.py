"""TAR: Tamper-Resistant safeguards via adversarial meta-learning (Tamirisa et al. 2024, Alg. 1, Eq. 1).

    min_θ  λ_TR · E_{attack ~ A_train} [ L_TR(attack(θ); x_TR) ]  +  λ_retain · L_retain(θ; x_r)        (Eq. 1)

Start from a safeguarded model θ0 (stage 1, `safeguard.py`). Each outer step simulates a fine-tuning attack
on the current weights, measures how much hazardous knowledge the *attacked* model shows (the entropy TR
loss on held-out forget text x_TR), and moves θ so that future attacks recover less, while a retain loss
keeps benign knowledge. The gradient through the attack is first-order (dθ'/dθ ≈ I): the TR gradient is
taken at the attacked weights and applied to θ.

Run manual
    laptop, no GPU, no network (the built-in miniature world; ~15 min on 2 CPU cores, base pretraining
    included; later runs reuse the cached base):
        python tar.py --domain bio          # or chem, cyber
    It pretrains the base model (cached in runs/bio/base), applies the random-mapping safeguard
    (runs/bio/safeguard), runs N outer steps of Alg. 1 (runs/bio/tar, metrics.jsonl), then measures base,
    safeguard and TAR at rest and under three attacks on the red team's documents, and writes
    runs/bio/results.json, results.md and PNG plots.
    Every flag comes from `TARConfig` below: `python tar.py --help` shows each with its paper value.

Files (runs/<domain>/, one writer each): metrics.jsonl (one line per outer step: tr_loss, retain_loss,
retain_lm, retain_rep, inner_lr, grad_norm, seconds; forget_acc / retain_acc every --eval-every steps),
tar/ (save_pretrained + tokenizer), results.json (schema in `evaluate_run`), results.md, *.png.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import json
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

import adversary
import evaluate
import losses
import plots
import safeguard
from adversary import Attack, TrainAttacks, attack, attack_stream, sample_attack
from data import Stream, UserError, WorldConfig, atomic_write, build_world


def arg(default, help: str, paper=None):
    """A config field whose help (and the paper's value, when it differs) shows in --help."""
    make = (lambda: list(default)) if isinstance(default, (list, tuple)) else None
    kw = {"default_factory": make} if make else {"default": default}
    return field(metadata={"help": help, "paper": paper}, **kw)


@dataclass
class TARConfig:
    # what to run
    domain: str = arg("bio", "hazardous knowledge domain: bio | chem | cyber")
    runs: str = arg("runs", "runs directory; this run reads and writes <runs>/<domain>/")
    seed: int = arg(0, "seed of the world, the models and every sampled attack")
    threads: int = arg(1, "torch threads (1 is fastest for the miniature model; never more than your cores)")
    # Alg. 1
    outer_steps: int = arg(220, "N: outer steps", paper=750)
    inner_steps: int = arg(32, "K: attacker steps per outer step", paper=64)
    tr_every: int = arg(4, "take the TR gradient after every this many inner steps", paper=4)
    tr_weights: str = arg("uniform", "weights of the TR points: uniform (mean) | paper (exp(0.0625(k-K)), not normalised)",
                          paper="paper")
    tr_mask: str = arg("fact", "positions of the entropy TR loss: fact (next token is a fact value) | tokens (real "
                       "tokens) | all (padding too)", paper="all")
    inner_lrs: list = arg((1e-4, 3e-4, 1e-3), "train-time attack learning rates (sampled uniformly)",
                          paper="2e-6 2e-5 4e-5")
    inner_batch: int = arg(16, "train-time attacker batch size", paper=32)
    retain_then_forget: float = arg(0.0, "probability that a sampled attack is retain->forget", paper="1/3")
    tr_batch: int = arg(32, "x_TR batch size (held-out forget documents)", paper=64)
    retain_batch: int = arg(64, "x_r batch size (retain documents)", paper=64)
    lambda_tr: float = arg(4.0, "λ_TR", paper=4)
    lambda_retain: float = arg(4.0, "λ_retain", paper=1)
    outer_lr: float = arg(1e-2, "outer AdamW learning rate (wd 0)", paper="2e-5, Schedule-Free AdamW")
    outer_schedule: str = arg("constant", "outer learning-rate schedule: constant | cosine (decay to 0 over N)",
                              paper="Schedule-Free, warmup 32")
    grad_clip: float = arg(1.0, "clip the outer gradient to this norm (0 = off)", paper="off")
    squared_distance: bool = arg(True, "squared hidden-state distance in the retain loss", paper=False)
    reference: str = arg("safeguard", "frozen reference of the retain loss: safeguard (θ0) | base", paper="base")
    # reporting
    eval_every: int = arg(20, "measure forget / retain accuracy every this many outer steps (0 = only at the end)")
    attack_steps: int = arg(200, "length of each end-of-run attack (evaluated every 25 steps)")
    workers: int = arg(2, "processes for the end-of-run attacks (one torch thread each)")
    # earlier stages (cached in <runs>/<domain>/base and safeguard)
    world_entities: int = arg(30, "hazardous entities per group T / A / E (the cities scale along)")
    base_steps: int = arg(2000, "base pretraining steps")
    safeguard_steps: int = arg(safeguard.SafeguardConfig.steps, "random-mapping safeguard steps")

    def validate(self):
        WorldConfig(domain=self.domain)  # raises on an unknown domain
        positive = {name: getattr(self, name) for name in (
            "outer_steps", "inner_steps", "tr_every", "inner_batch", "tr_batch", "retain_batch", "attack_steps",
            "workers", "world_entities", "base_steps", "safeguard_steps", "threads", "outer_lr", "lambda_tr",
            "lambda_retain")}
        positive["inner_lrs"] = min(self.inner_lrs)
        for name, value in positive.items():
            if not 0 < value < float("inf"):
                raise UserError(f"--{name.replace('_', '-')} must be positive, got {value}")
        if self.tr_every > self.inner_steps:
            raise UserError("--tr-every must not exceed --inner-steps (no TR point would be taken)")
        choices = {"tr_weights": ("uniform", "paper"), "tr_mask": ("fact", "tokens", "all"),
                   "outer_schedule": ("constant", "cosine"),
                   "reference": ("safeguard", "base")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise UserError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}")

    def world(self) -> WorldConfig:
        n = self.world_entities
        return WorldConfig(domain=self.domain, n_group=n, n_retain_train=max(2, 4 * n // 3),
                           n_retain_heldout=max(2, 2 * n // 3), n_unrelated=max(2, 2 * n // 3), seed=self.seed)

    def train_attacks(self) -> TrainAttacks:
        return TrainAttacks(lrs=tuple(self.inner_lrs), steps=self.inner_steps, batch_size=self.inner_batch,
                            retain_then_forget=self.retain_then_forget)


# --------------------------------------------------------------------------------------------------------
# Alg. 1: one outer step
# --------------------------------------------------------------------------------------------------------
def outer_step(model, ref, outer_opt, world, x_tr, x_r, spec: Attack, cfg: TARConfig, attack_seed: int) -> dict:
    params = [p for p in model.parameters() if p.requires_grad]
    # deviation: entropy on fact positions by default (official code: every position, padding included)
    # because the hazard is the fact, and padding is not text (PAPER.md §8 pitfall 8); --tr-mask all gives the code's.
    tr_mask = {"fact": x_tr.fact_mask, "tokens": x_tr.attention_mask.bool(),
               "all": torch.ones_like(x_tr.fact_mask)}[cfg.tr_mask]
    # deviation: uniform mean over the TR points by default (official code: exp(0.0625 (k − K)), not normalised)
    # because that is the recipe measured here (PAPER.md §7); --tr-weights paper gives the code's weights.
    w = losses.tr_weights(cfg.inner_steps, cfg.tr_every, cfg.tr_weights)  # w_k, keyed by inner step k

    # Alg. 1 l.4: snapshot θ (the attack below moves the weights in place)
    snapshot = [p.detach().clone() for p in params]
    g_tr = [torch.zeros_like(p) for p in params]  # Σ_k w_k ∇L_TR(θ_k)
    tr_losses = []

    # Alg. 1 l.6-7: every tr_every inner steps, the first-order TR gradient at the attacked weights θ_k
    def tr_gradient(k: int):
        logits = model(input_ids=x_tr.input_ids, attention_mask=x_tr.attention_mask).logits  # (B, T, V)
        l_tr = losses.entropy_tr_loss(logits, tr_mask)
        for g, grad in zip(g_tr, torch.autograd.grad(l_tr, params)):
            g.add_(grad, alpha=w[k])
        tr_losses.append(l_tr.detach())

    # Alg. 1 l.5-7: K steps of the sampled attack with a fresh inner optimizer
    attack(model, spec, attack_stream(spec, world.tokens, attack_seed), every=cfg.tr_every, callback=tr_gradient)

    # Alg. 1 l.8: restore θ exactly (the inner optimizer's state died with attack())
    with torch.no_grad():
        for p, s in zip(params, snapshot):
            p.copy_(s)

    # Alg. 1 l.9: g = λ_retain ∇L_retain(θ; x_r) + λ_TR g_TR, the retain gradient at the restored θ (Eq. 2)
    outer_opt.zero_grad(set_to_none=True)
    out = model(input_ids=x_r.input_ids, attention_mask=x_r.attention_mask, output_hidden_states=True)
    with torch.no_grad():
        out_ref = ref(input_ids=x_r.input_ids, attention_mask=x_r.attention_mask, output_hidden_states=True)
    l_retain, parts = losses.retain_loss(out, out_ref, x_r.input_ids, x_r.attention_mask, cfg.squared_distance)
    (cfg.lambda_retain * l_retain).backward()
    for p, g in zip(params, g_tr):
        p.grad.add_(g, alpha=cfg.lambda_tr)

    # Alg. 1 l.10: outer optimizer step
    # deviation: gradient clipping at 1.0 (paper and official code: none) because the miniature recipe of
    # PAPER.md §7 clips; with Adam it only bounds the rare outlier step. --grad-clip 0 turns it off.
    norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
    outer_opt.step()
    return {"tr_loss": torch.stack(tr_losses).mean().item(), "retain_loss": l_retain.item(), **parts,
            "inner_lr": spec.lr, "grad_norm": norm.item()}


# --------------------------------------------------------------------------------------------------------
# The training loop
# --------------------------------------------------------------------------------------------------------
def train_tar(model, ref, world, cfg: TARConfig, metrics_path: Path, log=print):
    """N outer steps of Alg. 1 from θ0 = `model` (in place); one metrics.jsonl line per step."""
    from tqdm import tqdm
    ref.eval().requires_grad_(False)
    # deviation: plain AdamW for the outer optimizer (paper: Schedule-Free AdamW, lr 2e-5, warmup 32) because
    # the miniature recipe was measured with it; the outer learning rate is the knob that mattered most.
    outer_opt = torch.optim.AdamW(model.parameters(), lr=cfg.outer_lr, weight_decay=0.0)
    schedule = adversary.SCHEDULES[cfg.outer_schedule](outer_opt, num_warmup_steps=0, **(
        {"num_training_steps": cfg.outer_steps} if cfg.outer_schedule != "constant" else {}))
    rng = random.Random(cfg.seed)  # attacks and their data orders
    x_trs = Stream(world.tokens["T_tr"], cfg.tr_batch, cfg.seed)  # held-out forget batches (T's other half)
    x_rs = Stream(world.tokens["Rt"], cfg.retain_batch, cfg.seed + 1)
    t0 = time.time()
    with open(metrics_path, "w") as f, tqdm(range(1, cfg.outer_steps + 1), desc="TAR", unit="step", disable=None) as bar:
        for step in bar:
            spec = sample_attack(rng, cfg.train_attacks())  # Alg. 1 l.3: attack ~ A_train
            m = outer_step(model, ref, outer_opt, world, next(x_trs), next(x_rs), spec, cfg, rng.randrange(2**31))
            schedule.step()
            m = {"step": step, **m, "seconds": round(time.time() - t0, 2)}
            if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.outer_steps):
                acc = evaluate.accuracies(model, world)
                m.update(forget_acc=acc["forget"], retain_acc=acc["retain"])
                bar.set_postfix(TR=f"{m['tr_loss']:.2f}", retain=f"{m['retain_loss']:.2f}",
                                forget_acc=f"{acc['forget']:.0%}", retain_acc=f"{acc['retain']:.0%}")
            f.write(json.dumps(m) + "\n")
            f.flush()  # a crash loses nothing already measured
    log(f"TAR: {cfg.outer_steps} outer steps in {time.time() - t0:.0f}s")


# --------------------------------------------------------------------------------------------------------
# Evaluation of base, safeguard and TAR, at rest and under the end-of-run attacks
# --------------------------------------------------------------------------------------------------------
def run(cfg: TARConfig, log=print) -> dict:
    cfg.validate()
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    run_dir = Path(cfg.runs) / cfg.domain
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=run_dir).close()
    except OSError as e:
        raise UserError(f"cannot write to {run_dir}: {e.strerror or e}") from None
    timings, t0 = {}, time.time()
    world = build_world(cfg.world())

    # Stage 1: base model and initial safeguard θ0 (cached)
    base, base_key = safeguard.base_model(world, safeguard.BaseConfig(steps=cfg.base_steps, seed=cfg.seed),
                                          run_dir, log)
    theta0 = safeguard.safeguard_model(base, base_key, world,
                                       safeguard.SafeguardConfig(steps=cfg.safeguard_steps, seed=cfg.seed),
                                       run_dir, log)
    timings["base_and_safeguard"] = round(time.time() - t0, 1)

    # While TAR trains on one core, a worker attacks base and safeguard on the other.
    jobs = {(m, s.name): evaluate.Job(m, str(run_dir / m), s, world.config, cfg.seed, 25)
            for m in ("base", "safeguard", "tar") for s in evaluate.end_of_run_attacks(cfg.attack_steps)}
    pool = evaluate.start_pool(max(1, cfg.workers - 1))
    futures = {k: pool.submit(evaluate.run_job, j) for k, j in jobs.items() if k[0] != "tar"}

    # Stage 2: TAR from θ0 (Alg. 1)
    t1 = time.time()
    # deviation: the frozen reference of the retain loss is θ0, the safeguarded model (paper and official code:
    # the original model) because TAR starts from θ0 and the retain term is there to keep θ0's benign behaviour
    # (PAPER.md §7 recipe). --reference base gives the paper's choice.
    ref = copy.deepcopy(theta0 if cfg.reference == "safeguard" else base)
    train_tar(theta0, ref, world, cfg, run_dir / "metrics.jsonl", log)
    safeguard.save_model(theta0, world.tokenizer, run_dir / "tar",
                         {"key": safeguard.digest("tar", base_key, asdict(cfg)), "what": "TAR",
                          "parent": str(run_dir / "safeguard"), "config": asdict(cfg)})
    timings["tar"] = round(time.time() - t1, 1)

    # End-of-run attacks: TAR's in this process, base and safeguard's finish in the worker meanwhile.
    t2 = time.time()
    from tqdm import tqdm
    curves = {}
    for key in tqdm([k for k in jobs if k[0] == "tar"], desc="attacking TAR", leave=False, disable=None):
        curves[key] = evaluate.run_job(jobs[key])["curve"]
    curves.update({k: f.result()["curve"] for k, f in futures.items()})
    pool.shutdown()
    timings["attacks"] = round(time.time() - t2, 1)
    timings["total"] = round(time.time() - t0, 1)

    results = evaluate.run_results(run_dir, world, cfg, curves, timings)
    atomic_write(run_dir / "results.json", json.dumps(results, indent=1))
    table = evaluate.results_table(results)
    atomic_write(run_dir / "results.md", table)
    figures = plots.plot_results(run_dir / "results.json")
    figures.append(plots.plot_training(run_dir / "metrics.jsonl"))
    log("\n" + table)
    log(f"wrote {run_dir / 'results.json'}, results.md and " + ", ".join(p.name for p in figures)
        + f"; total {timings['total']:.0f}s")
    return results


# --------------------------------------------------------------------------------------------------------
# CLI: one flag per TARConfig field
# --------------------------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        sys.exit(f"error: {message} (see --help)")


def parse_args(argv=None) -> TARConfig:
    p = _Parser(description="TAR (Alg. 1) on the built-in miniature world.",
                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in dataclasses.fields(TARConfig):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        help_ = f.metadata["help"] + (f" [paper: {f.metadata['paper']}]" if f.metadata["paper"] is not None else "")
        flag = "--" + f.name.replace("_", "-")
        if isinstance(default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_)
        elif isinstance(default, list):
            p.add_argument(flag, type=float, nargs="+", default=default, help=help_)
        else:
            p.add_argument(flag, type=type(default), default=default, help=help_)
    return TARConfig(**vars(p.parse_args(argv)))


def main(argv=None):
    cfg = parse_args(argv)
    try:
        run(cfg)
    except UserError as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        sys.exit("interrupted: finished models and metrics.jsonl lines are kept; nothing half-written remains")


if __name__ == "__main__":
    main()
