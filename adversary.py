"""Adversaries: the `Attack` spec, the train-time attack distribution, and the ONE fine-tuning loop.

Paper: Sec. 4.2 (sampled adversaries, Alg. 1 l.3 and l.6-9), App. (adversary settings); the red-team suite that
runs through this loop is suite.py.

A tampering attack is supervised fine-tuning of the weights: the attacker minimises the LM loss on its own
data with its own optimizer, learning rate, schedule and parameterisation (full or LoRA),

    θ_{k+1} = θ_k − opt_step(∇_θ L_LM(θ_k; batch_k)),    k = 0 .. steps−1.

TAR's inner loop *is* such an attack (Alg. 1 l.6-8); so is every red-team attack, and so is base pretraining
(an attack on everything, from random weights). `attack_steps()` below is the one loop for all of them: a
generator that pauses after every `every` steps with the model at its attacked weights θ_k, which is where
TAR takes its TR gradient (Alg. 1 l.9) and where evaluation records accuracy. `attack()` runs it to the end,
calling a callback at those points. The defences of `safeguard.py` reuse it too, with their own loss function.

Train-time distribution A_train (docs/paper.md §4, scaled to the miniature world): learning rate uniform over
{1e-4, 3e-4, 1e-3} (paper bio: {2e-6, 2e-5, 4e-5}), AdamW with weight decay 0.01, constant LR, K steps on
forget documents of T_inner; optionally retain→forget, switching at ⌊K · Beta(6, 3)⌋. K, the batch and the
LRs come from TARConfig (config.py) through `TARConfig.train_attacks()`; nothing here has a K of its own.

The red-team suite, every attack an `Attack`, is suite.py.

Use:  attack(model, Attack(lr=3e-4, steps=200), attack_stream(spec, world.tokens, seed=0))
      for k in attack_steps(model, spec, batches, every=8): ...   # the model is at θ_k here
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

import fsdp
import losses
from batching import Batch, Stream, Tokens
from cli import UserError

OPTIMIZERS = ("adamw", "adam", "sgd", "adadelta", "adagrad", "lion", "schedulefree")
SCHEDULES = {"constant": get_constant_schedule_with_warmup, "linear": get_linear_schedule_with_warmup,
             "cosine": get_cosine_schedule_with_warmup}
DISTS = ("TRAIN", "HELD-OUT", "OOD", "-")


@dataclass(frozen=True)
class Attack:
    """One fine-tuning attack, fully specified (specs are data: they go into results files verbatim)."""
    name: str = "adamw_3e-4"
    optimizer: str = "adamw"  # one of OPTIMIZERS
    lr: float = 3e-4
    steps: int = 200
    batch_size: int = 16
    data: str = "A"  # world split the attacker fine-tunes on
    retain_data: str = ""  # retain→forget: the first `switch` steps train on this split instead
    switch: int = 0
    n_docs: int = 0  # few-shot: only this many documents of `data` (a per-seed sample); 0 = all
    schedule: str = "constant"  # constant | linear | cosine (transformers' get_*_schedule_with_warmup)
    warmup: float = 0.0  # fraction of `steps`; a 0→1 multiplier on lr (docs/paper.md §8, pitfall 3)
    weight_decay: float = 0.01
    eps: float = 1e-8  # Adam family (adamw, adam, schedulefree): ε in lr · m / (√v + ε)
    momentum: float = 0.0  # SGD only
    nesterov: bool = False  # SGD only
    grad_clip: float = 0.0  # 0 = none (the paper's attacks do not clip)
    lora_rank: int = 0  # > 0: a LoRA attack through peft on every linear projection (capped at the width)
    lora_alpha: int = 0  # 0 = 2 · rank
    lora_dropout: float = 0.0
    dist: str = "TRAIN"  # TRAIN | HELD-OUT | OOD (docs/redteam.md); '-' for non-attacks (pretraining, defences)
    source: str = ""  # where the attack comes from (docs/redteam.md row)

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise UserError(f"attack {self.name}: optimizer must be one of {OPTIMIZERS}, not {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise UserError(f"attack {self.name}: schedule must be one of {tuple(SCHEDULES)}")
        if self.optimizer == "schedulefree" and self.schedule != "constant":
            raise UserError(f"attack {self.name}: Schedule-Free AdamW has its own schedule; use 'constant'")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise UserError(f"attack {self.name}: learning rate must be positive, got {self.lr}")
        if self.steps <= 0 or self.batch_size <= 0 or self.n_docs < 0 or self.lora_rank < 0:
            raise UserError(f"attack {self.name}: steps and batch size must be positive")
        if not 0 <= self.warmup < 1 or not 0 <= self.switch <= self.steps:
            raise UserError(f"attack {self.name}: warmup must lie in [0, 1) and switch in [0, steps]")
        if self.dist not in DISTS:
            raise UserError(f"attack {self.name}: dist must be one of {DISTS}")

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------------------------------
# The train-time adversary distribution A_train (Alg. 1 l.3)
# --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainAttacks:
    """A_train. Made by `TARConfig.train_attacks()`: the LRs, the Ks and the batch are TARConfig's."""
    lrs: tuple[float, ...]  # inner_lrs
    steps: tuple[int, ...]  # K: inner_steps, then inner_steps_mix (one drawn per attack where several)
    batch_size: int  # inner_batch
    # forget documents the simulated attacker trains on, one split drawn per attack (real bio: each corpus's share,
    # Pile-bio or Camel-bio, as the paper samples them); x_TR comes from T_tr (tar.py --tr-split entities: both from a
    # fresh pair of halves of T's entities at each outer step)
    forget: tuple[str, ...] = ("T_inner",)
    retain: str = "Rt"  # retain documents for retain→forget attacks
    retain_then_forget: float = 0.0  # probability of a retain→forget attack (paper bio ⅓, cyber ½)


def train_attack(dist: TrainAttacks, lr: float, steps: int, forget: str, switch: int | None = None) -> Attack:
    """One attack of A_train: `steps` steps on `forget`'s documents only, or (`switch` given) retain→forget
    switching there."""
    spec = Attack(name=f"train_adamw_{lr:g}", lr=lr, steps=steps, batch_size=dist.batch_size, data=forget,
                  dist="TRAIN")
    return spec if switch is None else replace(spec, name=f"train_r2f_{lr:g}", retain_data=dist.retain, switch=switch)


def one_of(rng: random.Random, options: tuple):
    """A uniform draw, made only where there is a choice: a single option leaves the RNG's stream as it was."""
    return rng.choice(options) if len(options) > 1 else options[0]


def sample_attack(rng: random.Random, dist: TrainAttacks) -> Attack:
    """Alg. 1 l.3: attack ~ A_train. A retain→forget attack switches at ⌊K · Beta(6, 3)⌋ (mean ≈ ⅔ K); where
    A_train has several Ks or forget splits (real bio: a corpus each) one of each is drawn per attack."""
    lr = rng.choice(dist.lrs)
    r2f = rng.random() < dist.retain_then_forget
    k = one_of(rng, dist.steps)
    switch = int(k * rng.betavariate(6, 3)) if r2f else None
    return train_attack(dist, lr, k, one_of(rng, dist.forget), switch)


# --------------------------------------------------------------------------------------------------------
# Optimizers and data
# --------------------------------------------------------------------------------------------------------
class Lion(torch.optim.Optimizer):
    """Lion (Chen et al. 2023): θ ← θ − lr · (sign(β1 m + (1 − β1) g) + wd θ);  m ← β2 m + (1 − β2) g."""

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                m = self.state[p].setdefault("exp_avg", torch.zeros_like(p))
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(torch.sign(m * b1 + p.grad * (1 - b1)), alpha=-group["lr"])
                m.mul_(b2).add_(p.grad, alpha=1 - b2)


def make_optimizer(params, spec: Attack) -> torch.optim.Optimizer:
    wd, params = spec.weight_decay, list(params)
    fused = (bool(params) and all(p.is_cuda for p in params)) or None  # GPU: one kernel, no foreach temporaries
    if spec.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=spec.lr, eps=spec.eps, weight_decay=wd, fused=fused)
    if spec.optimizer == "adam":
        return torch.optim.Adam(params, lr=spec.lr, eps=spec.eps, weight_decay=wd, fused=fused)
    if spec.optimizer == "sgd":
        return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, nesterov=spec.nesterov, weight_decay=wd)
    if spec.optimizer == "adadelta":
        return torch.optim.Adadelta(params, lr=spec.lr, weight_decay=wd)
    if spec.optimizer == "adagrad":
        return torch.optim.Adagrad(params, lr=spec.lr, weight_decay=wd)
    if spec.optimizer == "lion":
        return Lion(params, lr=spec.lr, weight_decay=wd)
    import schedulefree  # its warmup is built in; it must be switched to eval mode before use (pitfall 7)
    return schedulefree.AdamWScheduleFree(params, lr=spec.lr, eps=spec.eps, weight_decay=wd,
                                          warmup_steps=int(spec.warmup * spec.steps))


def attack_stream(spec: Attack, tokens: dict[str, Tokens], seed: int) -> Iterator[Batch]:
    """The attacker's batches: its split shuffled by `seed` (retain split first for retain→forget; a per-seed
    sample of `n_docs` documents for few-shot attacks)."""
    for split in filter(None, (spec.data, spec.retain_data)):
        if split not in tokens:
            raise UserError(f"attack {spec.name}: no data split {split!r} (have {', '.join(tokens)})")
    source = tokens[spec.data]
    if spec.n_docs:
        pick = torch.randperm(source.ids.shape[0], generator=torch.Generator().manual_seed(seed))[:spec.n_docs]
        source = source.take(pick)
    forget = Stream(source, spec.batch_size, seed)
    if not spec.retain_data or spec.switch == 0:
        return forget
    return itertools.chain(itertools.islice(Stream(tokens[spec.retain_data], spec.batch_size, seed + 1),
                                            spec.switch), forget)


def lm_batch_loss(model, batch: Batch, chunk: int = 0) -> torch.Tensor:
    """The attacker's loss: next-token cross-entropy on its batch (labels = inputs, padding masked); chunk > 0
    applies the LM head that many positions at a time (losses.chunked_sum: TAR's --loss-chunk)."""
    x, head, _ = losses.forward_for_loss(model, batch.input_ids, batch.attention_mask, chunk)
    return losses.lm_loss(x, batch.input_ids, batch.attention_mask, head, chunk)


# --------------------------------------------------------------------------------------------------------
# The one fine-tuning loop
# --------------------------------------------------------------------------------------------------------
def attack_steps(model: torch.nn.Module, spec: Attack, batches: Iterator, *, loss_fn: Callable = lm_batch_loss,
                 every: int = 0, progress=None, history: list | None = None) -> Iterator[int]:
    """THE fine-tuning loop: fine-tunes `model` in place for `spec.steps` steps with a fresh optimizer, and
    after steps every, 2·every, ... (counted from 1) yields the step number k with the model at its attacked
    weights θ_k (in eval mode for Schedule-Free), so the caller can take a gradient or measure there.

    batches  : iterator of whatever `loss_fn(model, batch)` takes (an LM Batch for attacks; a pair of
               forget/retain batches for a defence), or of lists of them: the micro-batches of one step, whose
               gradients are accumulated (mean over micro-batches; under FSDP also over ranks)
    progress : an optional tqdm bar, advanced once per step;  history: a list that receives each step's loss
    A LoRA attack trains adapters injected into `model` and merges them into its weights at the end, so the
    model leaves with the attacked weights and its original structure."""
    if spec.lora_rank:
        from peft import LoraConfig, get_peft_model
        rank = min(spec.lora_rank, model.config.hidden_size)  # r ≥ width is a full-rank update: cap it
        fsdp.reshard(model)  # peft freezes what .parameters() shows: the shards, not a gathered copy left by scoring
        peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=spec.lora_alpha or 2 * rank,
                                                      lora_dropout=spec.lora_dropout, target_modules="all-linear"))
    params = fsdp.trainable(model)
    opt = make_optimizer(params, spec)  # Alg. 1 l.6: a fresh optimizer each attack, never reused
    warmup = 0 if spec.optimizer == "schedulefree" else int(spec.warmup * spec.steps)
    sched = SCHEDULES[spec.schedule](opt, num_warmup_steps=warmup,
                                     **({} if spec.schedule == "constant" else {"num_training_steps": spec.steps}))
    train_mode = getattr(opt, "train", lambda: None)  # Schedule-Free: evaluate at x, train at y
    eval_mode = getattr(opt, "eval", lambda: None)
    first_bad = None  # 0-d tensor: the first step whose loss or gradient norm was not finite (0: none yet)
    model.train()
    train_mode()
    for step, batch in enumerate(itertools.islice(batches, spec.steps), start=1):
        # Alg. 1 l.8: θ ← θ − inner step on the attacker's batch (LM loss unless loss_fn says otherwise)
        opt.zero_grad(set_to_none=True)
        micro = batch if isinstance(batch, list) else [batch]  # gradient accumulation over micro-batches
        loss = 0.0
        for mb in micro:
            part = loss_fn(model, mb) / len(micro)
            part.backward()
            loss = loss + part.detach()
        fsdp.average_replicated_grads(params)  # LoRA under torchrun: the adapters are whole on each rank
        finite = torch.isfinite(loss)
        if spec.grad_clip:
            finite = finite & torch.isfinite(torch.nn.utils.clip_grad_norm_(params, spec.grad_clip))
        first_bad = _first_bad(first_bad, finite, step)
        opt.step()
        sched.step()
        if history is not None:
            history.append(loss)  # a fresh 0-d tensor; no .item() here: a GPU would sync every step
        if every and step % every == 0:
            _raise_if_diverged(first_bad, spec, params, step)
            eval_mode()
            yield step  # the caller works at θ_k (TAR: Alg. 1 l.9)
            fsdp.reshard(model)  # a caller that only scored left the root gathered at θ_k
            train_mode()
        if progress is not None:
            progress.update(1)
    _raise_if_diverged(first_bad, spec, params, spec.steps)
    eval_mode()  # the model leaves holding the weights one would evaluate (and save)
    opt.zero_grad(set_to_none=True)  # leave no attacker gradients behind in .grad
    if spec.lora_rank:
        merge_lora(model, peft_model)
        model.requires_grad_(True)


def merge_lora(model: torch.nn.Module, peft_model) -> None:
    """Folds each adapter's update ΔW = (α/r)·B·A into the weight it adapts and removes the adapters, restoring
    the model's structure. peft's own merge adds a plain tensor to the weight, which under FSDP2 is a shard
    (DTensor): here each rank adds the rows of ΔW its shard holds (the adapters are whole on every rank)."""
    from peft.tuners.lora import Linear as LoraLinear
    fsdp.reshard(model)  # the shards, not a gathered copy, are what the next forward reads
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LoraLinear):
                fsdp.add_full(module.get_base_layer().weight, module.get_delta_weight("default"))
    peft_model.unload()  # the adapters removed, every wrapped projection back in its place


class Diverged(UserError):
    """A training loop met a non-finite loss, gradient or weight at `step`. In a defence (base, safeguard, TAR)
    the run stops there and saves nothing from the bad state; in the red team the attack is recorded as
    diverged: the attacker's failure, never the defence's success."""

    def __init__(self, message: str, step: int = 0):
        super().__init__(message)
        self.step = step


def _first_bad(first_bad, finite: torch.Tensor, step: int) -> torch.Tensor:
    """Remembers the first step that was not finite, on the device (no GPU sync per step)."""
    first_bad = torch.zeros((), dtype=torch.long, device=finite.device) if first_bad is None else first_bad
    return torch.where((first_bad == 0) & ~finite, step, first_bad)


def _raise_if_diverged(first_bad, spec: Attack, params, at: int) -> None:
    """Checked where the loop pauses (step `at`) and at its end, one sync each: a non-finite loss or gradient
    norm since the start, or weights no longer finite (the last update is seen by no later loss). Under
    torchrun the ranks agree first (each sees its own loss and shards), so all of them raise or none does."""
    local = [p.to_local() if hasattr(p, "to_local") else p for p in params]  # FSDP2: this rank's shards
    bad = torch.zeros(2, dtype=torch.long, device=local[0].device if local else "cpu")
    if first_bad is not None:
        bad[0] = first_bad
    if local and not torch.stack([torch.isfinite(p).all() for p in local]).all():
        bad[1] = at
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(bad, op=torch.distributed.ReduceOp.MAX)
    step, weights = bad.tolist()
    if step:
        raise Diverged(f"{spec.name}: the loss or gradient became non-finite at step {step} of {spec.steps} "
                       f"(lr {spec.lr:g})", step)
    if weights:
        raise Diverged(f"{spec.name}: the weights became non-finite by step {weights} of {spec.steps} "
                       f"(lr {spec.lr:g})", weights)


def attack(model: torch.nn.Module, spec: Attack, batches: Iterator, *, loss_fn: Callable = lm_batch_loss,
           every: int = 0, callback: Callable[[int], None] | None = None, progress=None) -> list[float]:
    """`attack_steps` run to the end, with `callback(k)` at its pauses; returns the loss of every step."""
    history = []
    for k in attack_steps(model, spec, batches, loss_fn=loss_fn, every=every if callback else 0, progress=progress,
                          history=history):
        callback(k)
    return torch.stack(history).tolist() if history else []
