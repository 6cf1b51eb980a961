"""Everything before TAR: the base model, and the initial safeguard (random mapping) that TAR starts from.

Paper: Sec. 4.1 ("initial safeguard", Alg. 1 stage 1: θ0 = safeguard(θ_base)) and App. (random mapping).

Base model. A tiny `LlamaForCausalLM` (4 layers, width 128: 0.74M parameters) pretrained on the whole
miniature world through `adversary.attack()` with an LM spec, until it knows every fact (forget and retain
accuracy ≥ 95%). It plays the part of Llama-3-8B-Instruct: a model that knows hazardous facts.

Random-mapping safeguard. Train the model so that its representation of forget text points at fixed random
directions (scrambling what later layers can read off it) while retain text keeps its representations:

    L_safeguard = L_RM(x_f) + L_LM(x_r) + (1/L) Σ_l mean_t ‖h_l^θ(x_r)[t] − h_l^base(x_r)[t]‖²
    L_RM(x_f)   = (1/L) Σ_l mean_{b,t} [1 − cos(h_l^θ(x_f)[b,t], r)],   r ~ N(0, I) fixed
                  (the paper draws one r per token id; `SafeguardConfig.per` offers that and one per position)

A safeguard is "a forget term + a retain term, trained without an attacker", run by the one fine-tuning loop
`adversary.attack()` with that loss. It hides the facts of T *and* of the never-seen groups A and E (it
learns "this domain -> scramble"), but a few dozen attack steps bring them back: the knowledge is latent.

Run:  python safeguard.py --domain bio      # builds (or reuses) runs/bio/base and runs/bio/safeguard
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

import adversary
import evaluate
import losses
from data import UserError, WorldConfig, atomic_write, build_world, replace_dir, stream


@dataclass(frozen=True)
class ModelConfig:
    width: int = 128  # Llama-3-8B: 4096
    layers: int = 4  # 32
    heads: int = 4  # 32 (8 KV heads)
    mlp: int = 256  # 14336
    max_positions: int = 128


@dataclass(frozen=True)
class BaseConfig:
    """Base pretraining = an attack on everything from random weights (PAPER.md §7)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    steps: int = 2000
    lr: float = 2e-3
    batch_size: int = 32
    warmup: float = 0.05  # 100 of 2000 steps, then cosine decay
    seed: int = 0

    def spec(self) -> adversary.Attack:
        return adversary.Attack(name="pretrain", lr=self.lr, steps=self.steps, batch_size=self.batch_size,
                                data="all", schedule="cosine", warmup=self.warmup, grad_clip=1.0, dist="-")


@dataclass(frozen=True)
class SafeguardConfig:
    """Random-mapping safeguard (Sec. 4.1). The miniature default maps every real token of a forget document,
    at every layer, to ONE fixed random direction.

    # deviation: one random target for all tokens (paper: one per token id; PAPER.md §7 prototype: one per
    # position) because here it is the form that generalises from group T to the unseen groups. Measured on bio
    # (seed 0, lr 3e-3, all real tokens), forget accuracy E / A after the safeguard: constant target at every
    # layer, 200 steps: 31% / 38%; constant, final layer, 300 steps: 34% / 40%; per token id, final layer: 54% /
    # 58%; per position, final layer: 52% / 58%, every layer: 54% / 63%. A per-token or per-position target can
    # be fitted entity by entity; one direction is reached most cheaply by a domain-level switch."""
    steps: int = 250  # PAPER.md §7: 300
    lr: float = 3e-3  # PAPER.md §7: 3e-4 (too slow here: E 72% after 300 steps)
    batch_size: int = 32  # forget and retain batches each
    per: str = "constant"  # random target per 'token' id (paper), per 'position' (PAPER.md §7), or 'constant'
    absolute: bool = False  # 1 − |cos| (paper) instead of 1 − cos
    all_layers: bool = True  # map every hidden state after the embeddings (paper) instead of the final one only
    seed: int = 0


# --------------------------------------------------------------------------------------------------------
# Models on disk: `save_pretrained` + tokenizer + provenance.json, written atomically
# --------------------------------------------------------------------------------------------------------
def new_model(vocab_size: int, cfg: ModelConfig, tokenizer, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=cfg.width, intermediate_size=cfg.mlp,
                         num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, num_key_value_heads=cfg.heads,
                         max_position_embeddings=cfg.max_positions, tie_word_embeddings=False,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    return LlamaForCausalLM(config)


def save_model(model, tokenizer, path: Path, provenance: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    model.save_pretrained(tmp)  # safetensors
    tokenizer.save_pretrained(tmp)
    atomic_write(tmp / "provenance.json", json.dumps(provenance, indent=1))
    replace_dir(tmp, path)


def load_model(path: Path):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def cached(path: Path, key: str):
    """The model at `path` if it was made from exactly this key (world, config, seed, parent), else None."""
    try:
        if json.loads((path / "provenance.json").read_text())["key"] == key:
            return load_model(path)
    except (OSError, KeyError, ValueError):
        pass
    return None


def digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------------------
# Base model
# --------------------------------------------------------------------------------------------------------
def base_model(world, cfg: BaseConfig, run_dir: Path, log=print):
    """The pretrained base model, from the cache at run_dir/base when its key matches, else trained."""
    key, path = digest("base", world.digest, asdict(cfg)), run_dir / "base"
    if (model := cached(path, key)) is not None:
        log(f"base: reusing {path}")
        return model, key
    if path.exists():
        log(f"base: {path} was made from another world or config; retraining")
    model = new_model(len(world.tokenizer), cfg.model, world.tokenizer, cfg.seed)
    n = sum(p.numel() for p in model.parameters())
    log(f"base: pretraining a {n / 1e6:.2f}M-parameter Llama on {len(world.docs['all'])} documents "
        f"for {cfg.steps} steps")
    t0 = time.time()
    from tqdm import tqdm
    with tqdm(total=cfg.steps, desc="pretrain", leave=False, disable=None) as bar:
        adversary.attack(model, cfg.spec(), stream(world.tokens["all"], cfg.batch_size, cfg.seed), progress=bar)
    acc = evaluate.accuracies(model, world, evaluate.EVERY_GROUP)
    log(f"base: {time.time() - t0:.0f}s, accuracy " + " ".join(f"{g} {a:.1%}" for g, a in acc.items()))
    if min(acc.values()) < 0.95:
        log("base: WARNING: some group is below 95% accuracy; train longer (--base-steps)")
    save_model(model, world.tokenizer, path, {"key": key, "what": "base", "world": asdict(world.config),
                                               "config": asdict(cfg), "accuracy": acc})
    return model, key


# --------------------------------------------------------------------------------------------------------
# The random-mapping safeguard (TAR's stage 1)
# --------------------------------------------------------------------------------------------------------
def random_mapping(model, base, world, cfg: SafeguardConfig) -> list[float]:
    """Trains `model` in place with L_RM on T documents + retain terms on Rt documents; `base` is the frozen
    reference of the retain term. Returns the loss history."""
    base.eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(cfg.seed)
    d = model.config.hidden_size
    rows = {"constant": 1, "position": model.config.max_position_embeddings, "token": model.config.vocab_size}
    table = torch.randn(rows[cfg.per], d, generator=gen)  # fixed random targets r ~ N(0, I)   (rows, d)

    def loss_fn(model, batches):
        xf, xr = batches
        out_f = model(input_ids=xf.input_ids, attention_mask=xf.attention_mask, output_hidden_states=True)
        targets = losses.random_targets(table, xf.input_ids, cfg.per)  # (B, T, d)
        hidden = out_f.hidden_states[1:] if cfg.all_layers else out_f.hidden_states[-1:]
        forget = sum(losses.random_mapping_loss(h, targets, xf.attention_mask, cfg.absolute)
                     for h in hidden) / len(hidden)
        out_r = model(input_ids=xr.input_ids, attention_mask=xr.attention_mask, output_hidden_states=True)
        with torch.no_grad():
            ref_r = base(input_ids=xr.input_ids, attention_mask=xr.attention_mask, output_hidden_states=True)
        retain, _ = losses.retain_loss(out_r, ref_r, xr.input_ids, xr.attention_mask, squared=True)
        return forget + retain

    spec = adversary.Attack(name="random_mapping", lr=cfg.lr, steps=cfg.steps, batch_size=cfg.batch_size,
                            data="T", weight_decay=0.0, dist="-")
    batches = zip(stream(world.tokens["T"], cfg.batch_size, cfg.seed), stream(world.tokens["Rt"], cfg.batch_size,
                                                                              cfg.seed + 1))
    from tqdm import tqdm
    with tqdm(total=cfg.steps, desc="safeguard", leave=False, disable=None) as bar:
        return adversary.attack(model, spec, batches, loss_fn=loss_fn, progress=bar)


def safeguard_model(base, base_key: str, world, cfg: SafeguardConfig, run_dir: Path, log=print):
    """θ0: the random-mapping safeguard of `base`, cached at run_dir/safeguard."""
    key, path = digest("safeguard", base_key, asdict(cfg)), run_dir / "safeguard"
    if (model := cached(path, key)) is not None:
        log(f"safeguard: reusing {path}")
        return model
    model = load_model(run_dir / "base")  # a fresh copy of the base; `base` stays the frozen reference
    t0 = time.time()
    random_mapping(model, base, world, cfg)
    acc = evaluate.accuracies(model, world, evaluate.EVERY_GROUP)
    log(f"safeguard: {time.time() - t0:.0f}s, accuracy " + " ".join(f"{g} {a:.1%}" for g, a in acc.items()))
    save_model(model, world.tokenizer, path, {"key": key, "what": "random-mapping safeguard",
                                               "parent": str(run_dir / "base"), "config": asdict(cfg),
                                               "accuracy": acc})
    return model


def main(argv=None):
    p = argparse.ArgumentParser(description="Build (or reuse) the base model and the random-mapping safeguard.")
    p.add_argument("--domain", default="bio")
    p.add_argument("--runs", type=Path, default=Path("runs"), help="runs directory (default: runs)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    try:
        world = build_world(WorldConfig(domain=args.domain))
        run_dir = args.runs / args.domain
        run_dir.mkdir(parents=True, exist_ok=True)
        base, key = base_model(world, BaseConfig(), run_dir)
        safeguard_model(base, key, world, SafeguardConfig(), run_dir)
    except (UserError, OSError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
