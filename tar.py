"""TAR: Tamper-Resistant safeguards via adversarial meta-learning (Tamirisa et al. 2024, Alg. 1, Eq. 1).

    min_θ  λ_TR · E_{attack ~ A_train} [ L_TR(attack(θ); x_TR) ]  +  λ_retain · L_retain(θ; x_r)        (Eq. 1)

Start from a safeguarded model θ0 (stage 1, `safeguard.py`). Each outer step simulates a fine-tuning attack
on the current weights, measures how much hazardous knowledge the *attacked* model shows (the entropy TR
loss on held-out forget text x_TR), and moves θ so that future attacks recover less, while a retain loss
keeps benign knowledge. The gradient through the attack is first-order (dθ'/dθ ≈ I): the TR gradient is
taken at the attacked weights and applied to θ.

Run manual
    laptop, no GPU, no network (the built-in miniature world; ~17 min on 2 CPU cores, base pretraining
    included; ~12 min later, reusing the cached base and safeguard):
        python tar.py --domain bio          # or chem, cyber; or refusal (Sec. 5 refusal: DPO TR loss, ASR)
    It pretrains the base model (cached in runs/bio/base), applies the random-mapping safeguard
    (runs/bio/safeguard), runs N outer steps of Alg. 1 (runs/bio/tar, metrics.jsonl), then measures base,
    safeguard and TAR at rest and under three attacks on the red team's documents, and writes
    runs/bio/results.json, results.md and PNG plots.
    Every flag comes from `TARConfig` below: `python tar.py --help` shows each with its paper value.

    at scale (any Hugging Face causal LM; the real datasets of ../shared/DATA.md, or local files in their
    schemas with --data-dir; a real --model implies --preset paper):
        torchrun --nproc_per_node 8 tar.py --domain bio --model meta-llama/Meta-Llama-3-8B-Instruct
    Under torchrun every parameter is an FSDP2 shard (`fsdp.py`); `outer_step` is the same code. The model
    you pass is θ0 (apply an initial safeguard first); the result is written with save_pretrained to
    runs/<domain>/tar. A checkpoint is written every --checkpoint-every steps and on SIGTERM; --resume
    continues exactly.

Files (runs/<domain>/, one writer each): checkpoint/ (resume state), metrics.jsonl (one line per outer step: tr_loss, retain_loss,
retain_lm, retain_rep, inner_lr, grad_norm, seconds; forget_acc / retain_acc (refusal world: ASR / harmless, and refusal) every --eval-every steps),
tar/ (save_pretrained + tokenizer), results.json (schema in `evaluate.run_results`), results.md, *.png.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

import adversary
import evaluate
import fsdp
import losses
import safeguard
from adversary import Attack, TrainAttacks, attack, attack_stream, sample_attack
from data import RealWorldConfig, Stream, UserError, WorldConfig, atomic_write, build_world, load_real_world, shard_batch
from fsdp import Dist


def arg(default, help: str):
    """A config field whose help (and the paper preset's value, when it differs) shows in --help."""
    make = (lambda: list(default)) if isinstance(default, (list, tuple)) else None
    kw = {"default_factory": make} if make else {"default": default}
    return field(metadata={"help": help}, **kw)


@dataclass
class TARConfig:
    """Every hyperparameter, with the miniature recipe (PAPER.md §7) as defaults; PAPER below holds the paper's."""
    # what to run
    domain: str = arg("bio", "bio | chem | cyber (hazardous knowledge) | refusal (harmful requests, DPO TR loss)")
    model: str = arg("", "a Hugging Face causal LM (hub id or directory) to make tamper-resistant: θ0 of Alg. 1, "
                         "trained on the real datasets; empty: the built-in miniature world and its tiny Llama")
    preset: str = arg("mini", "mini (defaults shown) | paper (the values in [paper: ...]); default: paper with "
                          "--model, else mini. Flags you give override the preset")
    data_dir: str = arg("", "with --model: local files in the real datasets' schemas instead of the hub "
                            "(names in data.SOURCES)")
    seq_len: int = arg(256, "with --model: documents are cut to this many tokens")
    max_docs: int = arg(0, "with --model: at most this many documents per split (0 = all)")
    runs: str = arg("runs", "runs directory; this run reads and writes <runs>/<domain>/")
    seed: int = arg(0, "seed of the world, the models and every sampled attack")
    threads: int = arg(1, "torch threads (1 is fastest for the miniature model; never more than your cores)")
    # Alg. 1
    outer_steps: int = arg(150, "N: outer steps")
    inner_steps: int = arg(64, "K: attacker steps per outer step")
    tr_every: int = arg(8, "take the TR gradient after every this many inner steps")
    tr_weights: str = arg("uniform", "weights of the TR points: uniform (mean) | paper (exp(0.0625(k-K)), not "
                                     "normalised)")
    tr_loss: str = arg("entropy", "tamper-resistance loss: entropy (knowledge restriction) | dpo (refusal: chosen "
                                  "= refusal, rejected = compliance; the default with --domain refusal)")
    dpo_beta: float = arg(0.1, "β of the DPO TR loss")
    tr_mask: str = arg("fact", "positions of the entropy TR loss: fact (next token is a fact value; the miniature "
                               "world only) | tokens (real tokens) | all (padding too)")
    inner_lrs: list = arg((1e-4, 3e-4, 1e-3), "train-time attack learning rates (sampled uniformly)")
    inner_batch: int = arg(16, "train-time attacker batch size (global)")
    retain_then_forget: float = arg(0.0, "probability that a sampled attack is retain->forget")
    tr_batch: int = arg(32, "x_TR batch size (global; held-out forget documents)")
    retain_batch: int = arg(64, "x_r batch size (global; retain documents)")
    retain_data: str = arg("Rt", "x_r's documents: Rt (retain-train cities; with --model the retain corpus) | benign "
                                 "(Rt and the unrelated text U: rivers; with --model WikiText)")
    lambda_tr: float = arg(4.0, "λ_TR")
    lambda_retain: float = arg(4.0, "λ_retain")
    outer_params: str = arg("mlp", "the weights the outer step trains: mlp (each layer's MLP, where a transformer "
                                   "stores facts) | all (the paper). Attacks always move every weight")
    outer_optimizer: str = arg("adamw", "outer optimizer: adamw (wd 0) | schedulefree (Schedule-Free AdamW)")
    outer_lr: float = arg(1e-2, "outer learning rate")
    outer_eps: float = arg(1e-3, "ε of the outer Adam(W): lr·m/(√v + ε). Near a clipped gradient's typical entry "
                                 "(1e-3 here) weights with small gradients take smaller steps (README, Results)")
    outer_warmup: int = arg(0, "outer warmup steps")
    outer_schedule: str = arg("cosine", "outer learning-rate schedule after warmup (adamw): constant | cosine (to 0 "
                                        "at step N: the run ends where its updates have died down; cyber held on "
                                        "4 of 5 seeds, 0 of 3 at a constant lr; README, Results)")
    grad_clip: float = arg(1.0, "clip the outer gradient to this norm (0 = off)")
    squared_distance: bool = arg(True, "squared hidden-state distance in the retain loss")
    reference: str = arg("safeguard", "frozen reference of the retain loss: safeguard (θ0) | base (with --model "
                                      "both are the model given)")
    # scale (fsdp.py): memory, accumulation, checkpoints
    micro_batch: int = arg(0, "rows per forward/backward on each process; larger batches are accumulated "
                              "(0 = a process's whole share)")
    snapshot_offload: bool = arg(False, "keep Alg. 1's snapshot in CPU memory (one model copy less on the GPU)")
    checkpoint_every: int = arg(0, "write <runs>/<domain>/checkpoint every this many outer steps (0 = only on "
                                   "SIGTERM)")
    resume: bool = arg(False, "continue from <runs>/<domain>/checkpoint exactly")
    # reporting
    eval_every: int = arg(20, "measure forget / retain accuracy every this many outer steps (0 = never during training)")
    attack_steps: int = arg(200, "length of each end-of-run attack (evaluated every 25 steps)")
    workers: int = arg(2, "processes for the end-of-run attacks (one torch thread each)")
    # earlier stages of the miniature world (cached in <runs>/<domain>/base and safeguard)
    world_entities: int = arg(30, "hazardous entities per group T / A / E (the cities scale along)")
    base_steps: int = arg(2000, "base pretraining steps")
    safeguard_steps: int = arg(safeguard.SafeguardConfig.steps, "random-mapping safeguard steps")

    def validate(self):
        WorldConfig(domain=self.domain)  # raises on an unknown domain
        positive = {name: getattr(self, name) for name in (
            "outer_steps", "inner_steps", "tr_every", "inner_batch", "tr_batch", "retain_batch", "attack_steps",
            "workers", "world_entities", "base_steps", "safeguard_steps", "threads", "outer_lr", "lambda_tr",
            "lambda_retain", "seq_len")}
        positive["inner_lrs"] = min(self.inner_lrs)
        for name, value in positive.items():
            if not 0 < value < float("inf"):
                raise UserError(f"--{name.replace('_', '-')} must be positive, got {value}")
        for name in ("micro_batch", "checkpoint_every", "max_docs", "outer_warmup", "eval_every", "outer_eps"):
            if getattr(self, name) < 0:
                raise UserError(f"--{name.replace('_', '-')} must not be negative")
        if self.outer_warmup >= self.outer_steps:
            raise UserError("--outer-warmup must be shorter than --outer-steps")
        if self.tr_every > self.inner_steps:
            raise UserError("--tr-every must not exceed --inner-steps (no TR point would be taken)")
        choices = {"tr_weights": ("uniform", "paper"), "tr_mask": ("fact", "tokens", "all"), "tr_loss": ("entropy", "dpo"),
                   "outer_schedule": ("constant", "cosine"), "outer_optimizer": ("adamw", "schedulefree"),
                   "reference": ("safeguard", "base"), "preset": ("mini", "paper"), "retain_data": ("Rt", "benign"),
                   "outer_params": ("mlp", "all")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise UserError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}")
        if self.outer_optimizer == "schedulefree" and self.outer_schedule != "constant":
            raise UserError("Schedule-Free AdamW has no schedule: use --outer-schedule constant")
        if self.tr_loss == "dpo" and self.micro_batch % 2:
            raise UserError("--tr-loss dpo keeps (chosen, rejected) rows together: --micro-batch must be even")
        if self.model and self.tr_mask == "fact" and self.tr_loss == "entropy":
            raise UserError("real text has no fact positions: use --tr-mask tokens or all with --model")

    def world(self) -> WorldConfig | RealWorldConfig:
        if self.model:
            return RealWorldConfig(self.domain, self.model, self.data_dir, self.seq_len, self.max_docs)
        n = self.world_entities
        return WorldConfig(domain=self.domain, n_group=n, n_retain_train=max(2, 4 * n // 3),
                           n_retain_heldout=max(2, 2 * n // 3), n_unrelated=max(2, 2 * n // 3), seed=self.seed)

    def train_attacks(self) -> TrainAttacks:
        return TrainAttacks(lrs=tuple(self.inner_lrs), steps=self.inner_steps, batch_size=self.inner_batch,
                            retain_then_forget=self.retain_then_forget)


# The paper's hyperparameters (PAPER.md §4, official code, bio), in one place: --preset paper. Where our
# miniature default differs, the README's deviations list says why.
PAPER = dict(outer_steps=750, inner_steps=64, tr_every=4, tr_weights="paper", tr_mask="all", outer_params="all",
             inner_lrs=[2e-6, 2e-5, 4e-5], inner_batch=32, retain_then_forget=1 / 3, tr_batch=64, retain_batch=64,
             lambda_tr=4.0, lambda_retain=1.0, outer_optimizer="schedulefree", outer_lr=2e-5, outer_eps=1e-8,
             outer_warmup=32, outer_schedule="constant", grad_clip=0.0, squared_distance=False, reference="base",
             seq_len=256)
PAPER_DOMAIN = {"cyber": dict(inner_lrs=[2e-5, 4e-5], retain_then_forget=1 / 2),  # forget, retain→forget (½ each)
                "chem": dict(inner_lrs=[2e-5, 4e-5], lambda_tr=3.0),
                "refusal": dict(tr_loss="dpo", outer_steps=100, retain_then_forget=0.0)}  # Sec. 5: N = 100
# The miniature refusal world's own defaults (given flags still override them), from a short sweep (README,
# Refusal): outer lr 1e-2 broke refusal and harmless answers, 1e-3 resisted little; longer inner attacks (K)
# resist longer and cost harmless accuracy, which λ_retain buys back. It was measured training every weight with
# ε 1e-8, a TR point every 4 inner steps and a constant outer lr (the knowledge worlds' earlier defaults), and
# keeps them.
MINI_DOMAIN = {"refusal": dict(tr_loss="dpo", outer_steps=100, inner_steps=128, outer_lr=3e-3, lambda_retain=16.0,
                               tr_every=4, outer_eps=1e-8, outer_params="all", outer_schedule="constant")}


def configure(**given) -> TARConfig:
    """The config from the flags a user gave: the preset's values (paper with a real --model unless a preset
    is named), then every given flag on top (`tar.configure(model=..., preset="mini", outer_steps=2)`)."""
    preset = given.get("preset") or ("paper" if given.get("model") else "mini")
    domain = given.get("domain", "bio")
    values = {**PAPER, **PAPER_DOMAIN.get(domain, {})} if preset == "paper" else MINI_DOMAIN.get(domain, {})
    if given.get("outer_optimizer") == "schedulefree":  # it has no schedule: the mini preset's cosine does not apply
        values = {**values, "outer_schedule": "constant"}
    return TARConfig(**{**values, **given, "preset": preset})


# --------------------------------------------------------------------------------------------------------
# Alg. 1: one outer step
# --------------------------------------------------------------------------------------------------------
def tr_loss(model, ref, b: Batch, cfg: TARConfig) -> torch.Tensor:
    """L_TR at the current (attacked) weights on one x_TR micro-batch: the entropy loss of Sec. 4.2 (knowledge
    restriction) or, for refusal, DPO against the frozen reference π_ref = θ0 (rows are (refusal, compliance)
    pairs; b.fact_mask marks the response tokens)."""
    logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits  # (B, T, V)
    if cfg.tr_loss == "entropy":
        # deviation: entropy on fact positions by default (official code: every position, padding included)
        # because the hazard is the fact, and padding is not text (PAPER.md §8 pitfall 8); --tr-mask all: the code's.
        mask = {"fact": b.fact_mask, "tokens": b.attention_mask.bool(), "all": torch.ones_like(b.fact_mask)}
        return losses.entropy_tr_loss(logits, mask[cfg.tr_mask])
    if b.input_ids.shape[0] % 2:
        raise UserError("DPO pairs were split: give an even --micro-batch and a --tr-batch whose rows (2 per "
                        "pair) divide evenly over the processes")
    with torch.no_grad():  # the official code precomputes these once; recomputing costs one forward
        logits_ref = ref(input_ids=b.input_ids, attention_mask=b.attention_mask).logits
    logp = losses.sequence_logprobs(logits, b.input_ids, b.fact_mask)  # (2P,)
    return losses.dpo_loss(logp, losses.sequence_logprobs(logits_ref, b.input_ids, b.fact_mask), cfg.dpo_beta)


def outer_step(model, ref, outer_opt, world, x_tr, x_r, spec: Attack, cfg: TARConfig, attack_seed: int,
               d: Dist = Dist()) -> dict:
    """One iteration of Alg. 1. Under torchrun each parameter is this rank's FSDP2 shard and each batch is cut
    to this rank's rows (`shard_batch`); nothing below changes: `fsdp.local` is the whole tensor in one process.
    Gradients come from .backward() into .grad (FSDP2 reduce-scatters them there), so every batch may be a list
    of micro-batches whose gradients accumulate (a global batch larger than memory)."""
    params = [p for p in model.parameters() if p.requires_grad]
    shards = [fsdp.local(p) for p in params]  # this rank's piece of each parameter
    micro = lambda b: shard_batch(b, d.rank, d.world_size, cfg.micro_batch, d.device)
    x_tr, x_r = micro(x_tr), micro(x_r)  # lists of micro-batches
    # deviation: uniform mean over the TR points by default (official code: exp(0.0625 (k − K)), not normalised)
    # because that is the recipe measured here (PAPER.md §7); --tr-weights paper gives the code's weights.
    w = losses.tr_weights(cfg.inner_steps, cfg.tr_every, cfg.tr_weights)  # w_k, keyed by inner step k

    # Alg. 1 l.4: snapshot θ (the attack below moves the weights in place); on the CPU if asked (as the code)
    snapshot = [s.detach().to("cpu" if cfg.snapshot_offload else s.device, copy=True) for s in shards]
    g_tr = [torch.zeros_like(s) for s in shards]  # Σ_k w_k ∇L_TR(θ_k)
    tr_losses = []

    # Alg. 1 l.6-7: every tr_every inner steps, the first-order TR gradient at the attacked weights θ_k
    def tr_gradient(k: int):
        model.zero_grad(set_to_none=True)  # drop the attacker's last gradient
        l_tr = 0.0
        for b in x_tr:
            part = tr_loss(model, ref, b, cfg) / len(x_tr)
            part.backward()
            l_tr = l_tr + part.detach()
        for g, p in zip(g_tr, params):
            g.add_(fsdp.local(p.grad), alpha=w[k])
        tr_losses.append(l_tr)

    # Alg. 1 l.5-7: K steps of the sampled attack with a fresh inner optimizer
    attack(model, spec, map(micro, attack_stream(spec, world.tokens, attack_seed)), every=cfg.tr_every,
           callback=tr_gradient)

    # Alg. 1 l.8: restore θ exactly (the inner optimizer's state died with attack())
    with torch.no_grad():
        for s, snap in zip(shards, snapshot):
            s.copy_(snap)

    # Alg. 1 l.9: g = λ_retain ∇L_retain(θ; x_r) + λ_TR g_TR, the retain gradient at the restored θ (Eq. 2)
    outer_opt.zero_grad(set_to_none=True)
    l_retain, parts = 0.0, {}
    for b in x_r:
        out = model(input_ids=b.input_ids, attention_mask=b.attention_mask, output_hidden_states=True)
        with torch.no_grad():
            out_ref = ref(input_ids=b.input_ids, attention_mask=b.attention_mask, output_hidden_states=True)
        loss, terms = losses.retain_loss(out, out_ref, b.input_ids, b.attention_mask, cfg.squared_distance)
        (cfg.lambda_retain * loss / len(x_r)).backward()
        l_retain = l_retain + loss.detach() / len(x_r)
        parts = {k: parts.get(k, 0.0) + v / len(x_r) for k, v in terms.items()}
    for p, g in zip(params, g_tr):
        fsdp.local(p.grad).add_(g, alpha=cfg.lambda_tr)

    # Alg. 1 l.10: outer optimizer step. It moves the weights it holds (--outer-params): with mlp, the MLP
    # coordinates of the clipped TAR gradient of every weight (the norm is the whole gradient's)
    # deviation: gradient clipping at 1.0 (paper and official code: none) because the miniature recipe of
    # PAPER.md §7 clips; with Adam it only bounds the rare outlier step. --grad-clip 0 turns it off.
    norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
    outer_opt.step()
    logged = {"tr_loss": torch.stack(tr_losses).mean(), "retain_loss": l_retain, **parts}
    return {**{k: fsdp.all_mean(float(v), d) for k, v in logged.items()},
            "inner_lr": spec.lr, "grad_norm": float(fsdp.full(norm))}


# --------------------------------------------------------------------------------------------------------
# The training loop
# --------------------------------------------------------------------------------------------------------
def outer_optimizer(model, cfg: TARConfig):
    """The outer optimizer and its schedule, through adversary.make_optimizer (one place builds optimizers)."""
    # deviation: plain AdamW, lr 1e-2 decayed to 0 by cosine, in the miniature preset (paper: Schedule-Free AdamW,
    # lr 2e-5, warmup 32, --preset paper) because the miniature recipe was measured with it; the outer lr mattered
    # most. At a constant 1e-2 whether an attack on unseen entities recovers flips from one outer step to the next
    # (README, Results); decayed, the run ends where its updates have died down (cyber held the reference attack
    # on 4 of 5 seeds, 0 of 3 at a constant lr), though the verdict still turns on differences too small to see.
    spec = Attack("outer", cfg.outer_optimizer, cfg.outer_lr, cfg.outer_steps, weight_decay=0.0, eps=cfg.outer_eps,
                  warmup=cfg.outer_warmup / cfg.outer_steps)
    opt = adversary.make_optimizer(outer_parameters(model, cfg), spec)
    schedule = adversary.SCHEDULES[cfg.outer_schedule](opt, num_warmup_steps=0 if cfg.outer_optimizer == "schedulefree"
                                                       else cfg.outer_warmup, **(
        {"num_training_steps": cfg.outer_steps} if cfg.outer_schedule != "constant" else {}))
    averaged_weights(opt, False)  # Schedule-Free starts in training mode
    return opt, schedule


def outer_parameters(model, cfg: TARConfig) -> list:
    """The weights TAR trains. deviation: only the MLPs in the miniature preset (paper: every weight, --outer-params
    all). Trained everywhere, TAR also rewrote the attention that routes a name to its facts, and held-out benign
    facts went with the hazardous ones (resetting layer 0's attention of a trained model to θ0 gave back 8 points
    of held-out cities); facts live in the MLPs, and trained there TAR keeps held-out cities (README, Results)."""
    if cfg.outer_params == "all":
        return [p for p in model.parameters() if p.requires_grad]
    mlps = [m for name, m in model.named_modules() if name.rsplit(".", 1)[-1] in ("mlp", "feed_forward")]
    if not mlps:
        raise UserError(f"--outer-params mlp: {type(model).__name__} has no module named mlp or feed_forward; "
                        "use --outer-params all")
    return [p for m in mlps for p in m.parameters() if p.requires_grad]


def averaged_weights(opt, on: bool) -> None:
    """Schedule-Free AdamW trains at one iterate and must evaluate and save another (PAPER.md §8 pitfall 7):
    on=True moves the model to the averaged weights, on=False back to training. No-op for AdamW."""
    if hasattr(opt, "eval"):
        opt.eval() if on else opt.train()


def train_tar(model, ref, world, cfg: TARConfig, run_dir: Path, d: Dist = Dist(), log=print):
    """N outer steps of Alg. 1 from θ0 = `model` (in place); one metrics.jsonl line per step; checkpoints in
    run_dir/checkpoint (every --checkpoint-every steps, and on SIGTERM, after which Stopped is raised)."""
    from tqdm import tqdm
    ref.eval().requires_grad_(False)
    opt, schedule = outer_optimizer(model, cfg)
    rng = random.Random(cfg.seed)  # attacks and their data orders; the same on every rank
    x_trs = Stream(world.tokens["T_tr"], cfg.tr_batch, cfg.seed)  # held-out forget batches (T's other half)
    if cfg.retain_data not in world.tokens:
        raise UserError(f"--retain-data {cfg.retain_data}: this world has no such documents")
    x_rs = Stream(world.tokens[cfg.retain_data], cfg.retain_batch, cfg.seed + 1)
    metrics, ckpt, start = run_dir / "metrics.jsonl", run_dir / "checkpoint", 1

    def save(step: int):  # everything the next step depends on, per rank
        fsdp.save_checkpoint(ckpt, model, opt, {
            "step": step, "config": asdict(cfg), "rng": rng.getstate(), "torch_rng": torch.get_rng_state(),
            "x_tr": x_trs.state_dict(), "x_r": x_rs.state_dict(), "schedule": schedule.state_dict()}, d)

    if cfg.resume:
        if not (ckpt / f"rank{d.rank}.pt").exists():
            raise UserError(f"--resume: no checkpoint in {ckpt}")
        state = fsdp.load_checkpoint(ckpt, model, opt, d)
        changed = [k for k, v in state["config"].items() if k not in ("resume", "checkpoint_every", "workers")
                   and getattr(cfg, k) != v]
        if changed:
            raise UserError(f"--resume: the checkpoint was made with other settings ({', '.join(changed)})")
        start = state["step"] + 1
        rng.setstate(state["rng"])
        torch.set_rng_state(state["torch_rng"])
        x_trs.load_state_dict(state["x_tr"])
        x_rs.load_state_dict(state["x_r"])
        schedule.load_state_dict(state["schedule"])
        if d.is_main:  # the lines of steps after the checkpoint are redone
            kept = [line for line in metrics.read_text().splitlines() if json.loads(line)["step"] <= state["step"]]
            atomic_write(metrics, "".join(line + "\n" for line in kept))
        log(f"TAR: resumed after outer step {state['step']}")

    stop, t0 = fsdp.Stop(), time.time()
    try:
        with open(metrics, "a" if cfg.resume else "w") if d.is_main else open(os.devnull, "w") as f, \
                tqdm(range(start, cfg.outer_steps + 1), desc="TAR", unit="step", disable=None if d.is_main else True,
                     initial=start - 1, total=cfg.outer_steps) as bar:
            for step in bar:
                spec = sample_attack(rng, cfg.train_attacks())  # Alg. 1 l.3: attack ~ A_train
                m = outer_step(model, ref, opt, world, next(x_trs), next(x_rs), spec, cfg, rng.randrange(2**31), d)
                schedule.step()
                m = {"step": step, **m, "seconds": round(time.time() - t0, 2)}
                if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.outer_steps):
                    averaged_weights(opt, True)
                    acc = evaluate.accuracies(model, world)
                    averaged_weights(opt, False)
                    m.update(forget_acc=acc["forget"], retain_acc=acc["retain"],
                             **({"refusal": acc["refusal"]} if "refusal" in acc else {}))  # (refusal world: E)
                    bar.set_postfix(TR=f"{m['tr_loss']:.2f}", retain=f"{m['retain_loss']:.2f}",
                                    forget_acc=f"{acc['forget']:.0%}", retain_acc=f"{acc['retain']:.0%}")
                f.write(json.dumps(m) + "\n")
                f.flush()  # a crash loses nothing already measured
                stopping = fsdp.any_rank(stop.requested, d)
                if stopping or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
                    save(step)
                if stopping:
                    raise fsdp.Stopped(f"stopped by SIGTERM after outer step {step}; checkpoint written to {ckpt}; "
                                  "rerun with the same flags and --resume")
    finally:
        stop.close()
    averaged_weights(opt, True)  # the weights to save and evaluate
    log(f"TAR: outer steps {start}..{cfg.outer_steps} in {time.time() - t0:.0f}s")


# --------------------------------------------------------------------------------------------------------
# Evaluation of base, safeguard and TAR, at rest and under the end-of-run attacks
# --------------------------------------------------------------------------------------------------------
def run(cfg: TARConfig, log=print) -> dict:
    cfg.validate()
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    d = fsdp.setup_dist()
    run_dir = Path(cfg.runs) / cfg.domain
    try:
        if d.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=run_dir).close()
    except OSError as e:
        raise UserError(f"cannot write to {run_dir}: {e.strerror or e}") from None
    if cfg.model:
        return run_real(cfg, run_dir, d, log if d.is_main else (lambda *_: None))
    if d.distributed:
        raise UserError("the miniature world runs in one process; under torchrun pass --model")
    timings, t0 = {}, time.time()
    world = build_world(cfg.world())

    # Stage 1: base model and initial safeguard θ0 (cached): random mapping, or for refusal the refusal-trained
    # "instruct" model (the paper starts refusal-TAR from Llama-3-8B-Instruct itself)
    base, base_key = safeguard.base_model(world, safeguard.BaseConfig(steps=cfg.base_steps, seed=cfg.seed),
                                          run_dir, log)
    method = "refusal" if world.chats else "random_mapping"
    theta0 = safeguard.safeguard_model(base, base_key, world, safeguard.for_method(
        method, steps=cfg.safeguard_steps, seed=cfg.seed), run_dir, log)
    timings["base_and_safeguard"] = round(time.time() - t0, 1)

    # While TAR trains on one core, a worker attacks base and safeguard on the other.
    jobs = {(m, s.name): evaluate.Job(m, str(run_dir / m), s, world.config, cfg.seed, 25)
            for m in (("safeguard", "tar") if world.chats else ("base", "safeguard", "tar"))  # (the refusal
            for s in evaluate.end_of_run_attacks(cfg.attack_steps)}  # world's base already answers all: ASR 100%)
    pool = evaluate.start_pool(max(1, cfg.workers - 1))
    futures = {k: pool.submit(evaluate.run_job, j) for k, j in jobs.items() if k[0] != "tar"}

    # Stage 2: TAR from θ0 (Alg. 1)
    t1 = time.time()
    # deviation: the frozen reference of the retain loss is θ0, the safeguarded model (paper and official code:
    # the original model) because TAR starts from θ0 and the retain term is there to keep θ0's benign behaviour
    # (PAPER.md §7 recipe). --reference base gives the paper's choice.
    ref = copy.deepcopy(theta0 if cfg.reference == "safeguard" else base)
    train_tar(theta0, ref, world, cfg, run_dir, log=log)
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
    return evaluate.write_report(results, run_dir, log)


def run_real(cfg: TARConfig, run_dir: Path, d: Dist, log) -> dict:
    """Alg. 1 on a Hugging Face model and the real datasets, in one process or sharded under torchrun. The
    result is scored in memory (WMDP, MMLU minus the domain; lm-eval letter style, 0-shot) and written with
    save_pretrained; red-team it with evaluate.py."""
    t0 = time.time()
    world = load_real_world(cfg.world())
    model, config = fsdp.load_model(cfg.model, d)
    ref = fsdp.load_model(cfg.model, d)[0]  # the frozen reference: θ0 (with --model, base and θ0 are the same)
    if d.is_main:
        est = fsdp.memory_estimate(config, d.world_size, cfg.micro_batch or max(
            cfg.inner_batch, cfg.tr_batch, cfg.retain_batch) // d.world_size, cfg.seq_len,
            d.device.type == "cuda", cfg.snapshot_offload)
        gpu = torch.cuda.get_device_properties(d.device).total_memory / 2**30 if d.device.type == "cuda" else None
        log(fsdp.format_estimate(est, cfg.model, d.world_size, gpu))
        log(f"data: {', '.join(f'{k} {len(v)} docs' for k, v in world.docs.items())}; "
            f"{', '.join(f'{k} {len(v)} items' for k, v in world.items.items())} (world {world.digest})")
    train_tar(model, ref, world, cfg, run_dir, d, log)
    timings = {"tar": round(time.time() - t0, 1)}
    at_rest = {"tar": evaluate.accuracies(model, world)}  # the in-memory (sharded) model, all ranks in step
    fsdp.save_pretrained(model, world.tokenizer, run_dir / "tar", d,
                         {"what": "TAR", "parent": cfg.model, "config": asdict(cfg)})
    timings["total"] = round(time.time() - t0, 1)
    results = evaluate.run_results(run_dir, world, cfg, {}, timings, at_rest)
    return evaluate.write_report(results, run_dir, log) if d.is_main else results


# --------------------------------------------------------------------------------------------------------
# CLI: one flag per TARConfig field
# --------------------------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump
        sys.exit(f"error: {message} (see --help)")


def parse_args(argv=None) -> TARConfig:
    p = _Parser(description="TAR (Alg. 1): on the built-in miniature world, or on any Hugging Face causal LM "
                            "with --model (under torchrun: FSDP2).")
    for f in dataclasses.fields(TARConfig):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        overrides = "".join(f"; {dom} {v[f.name]}" for dom, v in PAPER_DOMAIN.items() if f.name in v)
        paper = f" [paper: {PAPER[f.name]}{overrides}]" if f.name in PAPER else ""
        mini = "".join(f"; {dom} {v[f.name]}" for dom, v in MINI_DOMAIN.items() if f.name in v)
        shown = f" (default: {default}{mini})" if default != "" and f.name != "preset" else ""  # preset: its help
        help_ = f.metadata["help"] + shown + paper
        flag = "--" + f.name.replace("_", "-")
        kw = dict(default=argparse.SUPPRESS, help=help_.replace("%", "%%"))  # given flags only: presets fill the rest
        if isinstance(default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif isinstance(default, list):
            p.add_argument(flag, type=float, nargs="+", **kw)
        else:
            p.add_argument(flag, type=type(default), **kw)
    return configure(**vars(p.parse_args(argv)))


def main(argv=None):
    cfg = parse_args(argv)
    try:
        run(cfg)
    except (UserError, fsdp.Stopped) as e:
        sys.exit(f"error: {e}" if isinstance(e, UserError) else str(e))
    except KeyboardInterrupt:
        sys.exit("interrupted: finished models and metrics.jsonl lines are kept; nothing half-written remains")
    finally:
        fsdp.teardown()


if __name__ == "__main__":
    main()
