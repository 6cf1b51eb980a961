"""Adversaries: the `Attack` spec, the train-time attack distribution, and the ONE fine-tuning loop.

Paper: Sec. 4.2 (sampled adversaries, Alg. 1 lines 3-7) and App. (adversary settings).

A tampering attack is supervised fine-tuning of the weights: the attacker minimises the LM loss on its own
data with its own optimizer, learning rate and schedule,

    θ_{k+1} = θ_k − opt_step(∇_θ L_LM(θ_k; batch_k)),    k = 0 .. steps−1.

TAR's inner loop *is* such an attack (Alg. 1 l.6); so is every red-team attack, and so is base pretraining
(an attack on everything, from random weights). `attack()` below serves all of them. Its callback, fired
every `every` steps, is how TAR accumulates TR gradients at the attacked weights and how evaluation records
accuracy along the way. The defences of `safeguard.py` reuse it too, with their own loss function.

Train-time distribution (PAPER.md §4, scaled to the miniature world): learning rate uniform over
{1e-4, 3e-4, 1e-3} (paper bio: {2e-6, 2e-5, 4e-5}), AdamW with weight decay 0.01, constant LR, K steps on
forget documents of T_inner; optionally retain→forget, switching at ⌊K · Beta(6, 3)⌋.

Use:  attack(model, Attack(lr=3e-4, steps=200), attack_stream(spec, world.tokens, seed=0))
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import asdict, dataclass, replace
from typing import Callable, Iterator

import torch
from transformers import (get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup,
                          get_linear_schedule_with_warmup)

import losses
from data import Batch, Tokens, UserError, stream

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = {"constant": get_constant_schedule_with_warmup, "linear": get_linear_schedule_with_warmup,
             "cosine": get_cosine_schedule_with_warmup}


@dataclass(frozen=True)
class Attack:
    """One fine-tuning attack, fully specified (specs are data: they go into results files verbatim)."""
    name: str = "adamw_3e-4"
    optimizer: str = "adamw"  # adamw | adam | sgd
    lr: float = 3e-4
    steps: int = 200
    batch_size: int = 16
    data: str = "A"  # world split the attacker fine-tunes on
    retain_data: str = ""  # retain→forget: the first `switch` steps train on this split instead
    switch: int = 0
    schedule: str = "constant"  # constant | linear | cosine (transformers' get_*_schedule_with_warmup)
    warmup: float = 0.0  # fraction of `steps`; a 0→1 multiplier on lr (PAPER.md §8 pitfall 3)
    weight_decay: float = 0.01
    momentum: float = 0.0  # SGD only
    grad_clip: float = 0.0  # 0 = none (the paper's attacks do not clip)
    dist: str = "TRAIN"  # TRAIN | HELD-OUT | OOD (ATTACKS.md)

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise UserError(f"attack {self.name}: optimizer must be one of {OPTIMIZERS}, not {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise UserError(f"attack {self.name}: schedule must be one of {tuple(SCHEDULES)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UserError(f"attack {self.name}: learning rate must be positive, got {self.lr}")
        if self.steps <= 0 or self.batch_size <= 0:
            raise UserError(f"attack {self.name}: steps and batch size must be positive")
        if not 0 <= self.warmup < 1 or not 0 <= self.switch <= self.steps:
            raise UserError(f"attack {self.name}: warmup must lie in [0, 1) and switch in [0, steps]")

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------------------------------
# The train-time adversary distribution A_train (Alg. 1 l.3)
# --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainAttacks:
    lrs: tuple[float, ...] = (1e-4, 3e-4, 1e-3)  # paper bio {2e-6, 2e-5, 4e-5}; cyber/chem {2e-5, 4e-5}
    steps: int = 32  # K (paper 64)
    batch_size: int = 16  # paper 32
    forget: str = "T_inner"  # forget documents the simulated attacker trains on (x_TR comes from T_tr)
    retain: str = "Rt"  # retain documents for retain→forget attacks
    retain_then_forget: float = 0.0  # probability of a retain→forget attack (paper bio ⅓, cyber ½)


def sample_attack(rng: random.Random, dist: TrainAttacks) -> Attack:
    """Alg. 1 l.3: attack ~ A_train. A retain→forget attack switches at ⌊K · Beta(6, 3)⌋ (mean ≈ ⅔ K)."""
    lr = rng.choice(dist.lrs)
    spec = Attack(name=f"train_adamw_{lr:g}", lr=lr, steps=dist.steps, batch_size=dist.batch_size,
                  data=dist.forget, dist="TRAIN")
    if rng.random() < dist.retain_then_forget:
        spec = replace(spec, name=f"train_r2f_{lr:g}", retain_data=dist.retain,
                       switch=int(dist.steps * rng.betavariate(6, 3)))
    return spec


def attack_stream(spec: Attack, tokens: dict[str, Tokens], seed: int) -> Iterator[Batch]:
    """The attacker's batches: its split shuffled by `seed` (retain split first for retain→forget)."""
    for split in filter(None, (spec.data, spec.retain_data)):
        if split not in tokens:
            raise UserError(f"attack {spec.name}: no data split {split!r} (have {', '.join(tokens)})")
    forget = stream(tokens[spec.data], spec.batch_size, seed)
    if not spec.retain_data or spec.switch == 0:
        return forget
    return itertools.chain(itertools.islice(stream(tokens[spec.retain_data], spec.batch_size, seed + 1),
                                            spec.switch), forget)


def make_optimizer(params, spec: Attack) -> torch.optim.Optimizer:
    if spec.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)
    if spec.optimizer == "adam":
        return torch.optim.Adam(params, lr=spec.lr)
    return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay)


def lm_batch_loss(model, batch: Batch) -> torch.Tensor:
    """The attacker's loss: next-token cross-entropy on its batch (labels = inputs, padding masked)."""
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    return losses.lm_loss(out.logits, batch.input_ids, batch.attention_mask)


# --------------------------------------------------------------------------------------------------------
# The one fine-tuning loop
# --------------------------------------------------------------------------------------------------------
def attack(model: torch.nn.Module, spec: Attack, batches: Iterator, *,
           loss_fn: Callable = lm_batch_loss, every: int = 0, callback: Callable[[int], None] | None = None,
           progress=None) -> list[float]:
    """Fine-tunes `model` in place for `spec.steps` steps with a fresh optimizer; returns the losses.

    batches  : iterator of whatever `loss_fn(model, batch)` takes (an LM Batch for attacks; a pair of
               forget/retain batches for a defence)
    callback : called as callback(step) after steps every, 2·every, ... (step counts from 1), with the
               model at its current, attacked weights: TAR's TR-gradient hook, evaluation's recorder
    progress : an optional tqdm bar, advanced once per step
    """
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, spec)  # fresh each attack (Alg. 1 l.5: the inner optimizer is never reused)
    sched = SCHEDULES[spec.schedule](opt, num_warmup_steps=int(spec.warmup * spec.steps),
                                     **({} if spec.schedule == "constant" else {"num_training_steps": spec.steps}))
    model.train()
    history = []
    for step, batch in enumerate(itertools.islice(batches, spec.steps), start=1):
        loss = loss_fn(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if spec.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, spec.grad_clip)
        opt.step()
        sched.step()
        history.append(loss.detach())  # no .item() here: a GPU would sync every step
        if callback is not None and every and step % every == 0:
            callback(step)
        if progress is not None:
            progress.update(1)
    opt.zero_grad(set_to_none=True)  # leave no attacker gradients behind in .grad
    return torch.stack(history).tolist() if history else []
