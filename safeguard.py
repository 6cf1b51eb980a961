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

Baselines (paper Table 1, BASELINES.md): Max-Entropy, Min-Posterior, LLMU, RMU, RepNoise, circuit breakers. Each
is a name -> (forget term, retain term) pair in `METHODS`, trained by the same loop `defend()`.

Run:  python safeguard.py --domain bio                     # builds (or reuses) runs/bio/base and runs/bio/safeguard
      python safeguard.py --domain bio --method rmu        # runs/bio/baselines/rmu (or --method all)
      python safeguard.py --domain bio --method all --grid # the tuning grid -> runs/bio/baselines/grid.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

import adversary
import evaluate
import losses
from data import CITIES, Stream, UserError, WorldConfig, atomic_write, build_world, replace_dir


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
    """One single-level safeguard: `method`'s forget term on T documents + its retain term on Rt documents, no
    attacker. The defaults are the random-mapping safeguard (TAR's stage 1); `METHODS` lists the baselines and
    `for_method()` gives each one's picked setting (BASELINES.md; `--grid` picks them).

    # deviation: random mapping sends every real token of a forget document, at every layer, to ONE fixed random
    # direction (paper: one per token id; PAPER.md §7 prototype: one per position) because here it is the form
    # that generalises from group T to the unseen groups. Measured on bio (seed 0, lr 3e-3, all real tokens),
    # forget accuracy E / A after the safeguard: constant target at every layer, 200 steps: 31% / 38%; constant,
    # final layer, 300 steps: 34% / 40%; per token id, final layer: 54% / 58%; per position, final layer:
    # 52% / 58%, every layer: 54% / 63%. A per-token or per-position target can be fitted entity by entity; one
    # direction is reached most cheaply by a domain-level switch."""
    method: str = "random_mapping"
    steps: int = 250  # PAPER.md §7: 300
    lr: float = 3e-3  # PAPER.md §7: 3e-4 (too slow here: E 72% after 300 steps)
    batch_size: int = 32  # forget and retain batches each
    coef: float = 1.0  # the method's own coefficient (METHODS[method].coef says which)
    alpha: float = 1.0  # a second coefficient where the method has one (RMU's retain weight)
    per: str = "constant"  # random mapping: target per 'token' id (paper), per 'position' (PAPER.md §7), 'constant'
    absolute: bool = False  # random mapping: 1 − |cos| (paper) instead of 1 − cos
    all_layers: bool = True  # random mapping: every hidden state after the embeddings (paper) or the final one
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
    log(f"base: pretraining a {n / 1e6:.2f}M-parameter Llama on {world.tokens['all'].ids.shape[0]} sequences "
        f"for {cfg.steps} steps")
    t0 = time.time()
    from tqdm import tqdm
    with tqdm(total=cfg.steps, desc="pretrain", leave=False, disable=None) as bar:
        adversary.attack(model, cfg.spec(), Stream(world.tokens["all"], cfg.batch_size, cfg.seed), progress=bar)
    acc = evaluate.accuracies(model, world, evaluate.EVERY_GROUP, chat=False)  # knowledge, also in the refusal world
    log(f"base: {time.time() - t0:.0f}s, accuracy " + " ".join(f"{g} {a:.1%}" for g, a in acc.items()))
    if min(acc.values()) < 0.95:
        log("base: WARNING: some group is below 95% accuracy; train longer (--base-steps)")
    save_model(model, world.tokenizer, path, {"key": key, "what": "base", "world": asdict(world.config),
                                               "config": asdict(cfg), "accuracy": acc})
    return model, key


# --------------------------------------------------------------------------------------------------------
# Safeguards: a method = its forget and retain terms (BASELINES.md), all trained by the one loop `defend`
# --------------------------------------------------------------------------------------------------------
def _forward(model, x, hidden=True):
    return model(input_ids=x.input_ids, attention_mask=x.attention_mask, output_hidden_states=hidden)


def _ce(model, x):
    return losses.lm_loss(_forward(model, x, False).logits, x.input_ids, x.attention_mask)


def _random_mapping(model, ref, xf, xr, cfg, ctx):
    out_f = _forward(model, xf)
    targets = losses.random_targets(ctx["table"], xf.input_ids, cfg.per)  # (B, T, d)
    hidden = out_f.hidden_states[1:] if cfg.all_layers else out_f.hidden_states[-1:]
    forget = sum(losses.random_mapping_loss(h, targets, xf.attention_mask, cfg.absolute) for h in hidden) / len(hidden)
    with torch.no_grad():
        ref_r = _forward(ref, xr)
    retain, _ = losses.retain_loss(_forward(model, xr), ref_r, xr.input_ids, xr.attention_mask, squared=True)
    return cfg.coef * forget, retain


def _max_entropy(model, ref, xf, xr, cfg, ctx):
    logits = _forward(model, xf, False).logits
    return cfg.coef * losses.entropy_tr_loss(logits, xf.attention_mask.bool()), _ce(model, xr)


def _min_posterior(model, ref, xf, xr, cfg, ctx):
    logits = _forward(model, xf, False).logits
    return cfg.coef * losses.min_posterior_loss(logits, xf.input_ids, xf.attention_mask), _ce(model, xr)


def _llmu(model, ref, xf, xr, cfg, ctx):
    # forget input with its facts replaced by random retain-domain words: "forget input, wrong continuation"
    mismatched = xf.input_ids.clone()
    facts = torch.zeros_like(xf.fact_mask)
    facts[:, 1:] = xf.fact_mask[:, :-1]  # the value tokens themselves
    pool = ctx["retain_values"]
    mismatched[facts] = pool[torch.randint(len(pool), (int(facts.sum()),), generator=ctx["gen"])]
    forget = -_ce(model, xf) + losses.lm_loss(model(input_ids=mismatched, attention_mask=xf.attention_mask).logits,
                                              mismatched, xf.attention_mask)
    with torch.no_grad():
        ref_logits = _forward(ref, xr, False).logits
    # LLMU's KL(p_ref ‖ p_θ) retain term (the official TAR code swaps in retain CE)
    return cfg.coef * forget, losses.kl_to_reference(_forward(model, xr, False).logits, ref_logits, xr.attention_mask)


def _rmu(model, ref, xf, xr, cfg, ctx):
    layer = ctx["rmu_layer"]  # hidden_states index ℓ: the output of decoder layer ℓ
    forget = losses.rmu_forget_loss(_forward(model, xf).hidden_states[layer], cfg.coef * ctx["u"], xf.attention_mask)
    with torch.no_grad():
        ref_h = _forward(ref, xr).hidden_states[layer]
    retain = losses.rmu_retain_loss(_forward(model, xr).hidden_states[layer], ref_h, xr.attention_mask)
    return forget, cfg.alpha * retain


def _repnoise(model, ref, xf, xr, cfg, ctx):
    out_f = _forward(model, xf)
    hidden = out_f.hidden_states[1:]
    norm, head = model.base_model.norm, model.get_output_embeddings()
    lens = [head(norm(h)) for h in hidden[:-1]] + [out_f.logits]  # logit lens; the last state is already normed
    forget = losses.repnoise_forget_loss(hidden, lens, xf.input_ids, xf.attention_mask, beta=cfg.coef, alpha=1.0,
                                         generator=ctx["gen"])
    return forget, _ce(model, xr)


def _circuit_breakers(model, ref, xf, xr, cfg, ctx):
    layers = ctx["cb_layers"]
    progress = ctx["step"] / (2 * cfg.steps)  # c_rr = a(1 − s/2S), c_ret = a·s/2S   (Zou et al.)
    out_f, out_r = _forward(model, xf), _forward(model, xr)
    with torch.no_grad():
        ref_f, ref_r = _forward(ref, xf), _forward(ref, xr)
    forget = sum(losses.circuit_breaker_forget_loss(out_f.hidden_states[ell], ref_f.hidden_states[ell],
                                                    xf.attention_mask) for ell in layers)
    retain = losses.hidden_distance([out_r.hidden_states[ell] for ell in layers],
                                    [ref_r.hidden_states[ell] for ell in layers], xr.attention_mask, squared=False)
    return cfg.coef * (1 - progress) * forget, cfg.coef * progress * retain


def _refusal_training(model, ref, xf, xr, cfg, ctx):
    """The refusal world's "instruct" base: SFT on refusals of T's harmful prompts + answers to Rt's harmless ones."""
    return cfg.coef * _ce(model, xf), _ce(model, xr)


def _mlps_of_first_two_layers(model):
    """RMU trains only the MLPs of layers ℓ−2..ℓ (WMDP: 5-7 of 32); scaled to 4 layers: layers 1-2."""
    return [p for layer in model.base_model.layers[:2] for p in layer.mlp.parameters()]


@dataclass(frozen=True)
class Method:
    terms: object  # (model, ref, x_f, x_r, cfg, ctx) -> (forget term, retain term)
    coef: str  # what SafeguardConfig.coef means for this method
    grid: dict  # the tuning grid (lr x steps x coefficients), BASELINES.md
    picked: dict  # the grid's pick (lowest forget on group A with Rt ≥ 90%): the method's defaults
    trainable: object = None  # model -> the parameters it trains (None: all)


LRS = (1e-4, 3e-4, 1e-3)
# `picked` = the grid's pick on bio (runs/bio/baselines/grid.json, 2026-11-27: 42 settings x {150, 300} steps,
# 25 min on 2 cores), with its at-rest accuracy on group A / E and held-out retain Re in the comment.
METHODS: dict[str, Method] = {
    "random_mapping": Method(_random_mapping, "weight of the mapping term", {}, {}),
    "max_entropy": Method(_max_entropy, "weight of the entropy term", dict(lr=LRS, coef=(1.0, 4.0)),
                          dict(lr=1e-4, steps=150, coef=1.0)),  # A 42.7%, E 46.0%, Re 99.8%
    "min_posterior": Method(_min_posterior, "weight of the forget term", dict(lr=LRS, coef=(1.0, 4.0)),
                            dict(lr=1e-3, steps=150, coef=4.0)),  # A 42.8%, E 46.0%, Re 99.5%
    "llmu": Method(_llmu, "weight of the gradient-ascent + mismatch term", dict(lr=LRS, coef=(0.5, 1.0)),
                   dict(lr=1e-3, steps=150, coef=1.0)),  # A 19.3%, E 22.5%, Re 97.5%
    "rmu": Method(_rmu, "steering coefficient c (alpha: retain weight α)",
                  dict(lr=LRS, coef=(5.0, 20.0), alpha=(10.0, 100.0)), dict(lr=1e-3, steps=300, coef=20.0, alpha=10.0),
                  _mlps_of_first_two_layers),  # A 29.3%, E 37.3%, Re 100%
    "repnoise": Method(_repnoise, "β, the weight of the noise (MMD) term", dict(lr=LRS, coef=(1e-3, 1e-1)),
                       dict(lr=3e-4, steps=300, coef=1e-3)),  # A 22.3%, E 28.2%, Re 99.2%
    "circuit_breakers": Method(_circuit_breakers, "a, the scale of the rerouting schedule", dict(lr=LRS, coef=(1.0, 10.0)),
                               dict(lr=3e-4, steps=150, coef=1.0)),  # A 35.2%, E 36.3%, Re 100%
}
METHODS["refusal"] = Method(_refusal_training, "weight of the refusal term", {}, dict(lr=1e-3))  # refusal world
BASELINES = [m for m in METHODS if m not in ("random_mapping", "refusal")]


def for_method(method: str, **overrides) -> SafeguardConfig:
    if method not in METHODS:
        raise UserError(f"unknown method {method!r}: choose one of {', '.join(METHODS)} or all")
    return SafeguardConfig(method=method, **{**METHODS[method].picked, **overrides})


def defend(model, ref, world, cfg: SafeguardConfig, every: int = 0, callback=None) -> list[float]:
    """THE defence loop: trains `model` in place on forget term(T) + retain term(Rt) with `adversary.attack()`
    (no attacker: the "attack" here is the defender's own fine-tuning); `ref` is the frozen original model."""
    method = METHODS[cfg.method]
    ref.eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(cfg.seed)
    d = model.config.hidden_size
    rows = {"constant": 1, "position": model.config.max_position_embeddings, "token": model.config.vocab_size}
    table = torch.randn(rows[cfg.per], d, generator=gen)  # random-mapping targets r ~ N(0, I)
    u = torch.rand(d, generator=gen)
    city_values = [v for vals, _ in CITIES.attributes.values() for v in vals]
    ctx = {"gen": gen, "step": 0, "table": table,
           "u": u / u.norm(),  # RMU's fixed random unit vector (uniform [0, 1), normalised)
           "rmu_layer": 2, "cb_layers": (2, 3),  # of 4 layers: RMU ℓ = 7 of 32 -> 2; circuit breakers 10, 20 -> 2, 3
           "retain_values": torch.tensor(world.tokenizer.convert_tokens_to_ids(["▁" + v for v in city_values]))}
    if method.trainable is not None:
        keep = {id(p) for p in method.trainable(model)}
        for p in model.parameters():
            p.requires_grad_(id(p) in keep)

    def loss_fn(model, batches):
        ctx["step"] += 1
        forget, retain = method.terms(model, ref, *batches, cfg, ctx)
        loss = forget + retain
        if not torch.isfinite(loss):
            raise UserError(f"{cfg.method}: the loss became {loss.item()} at step {ctx['step']} (lr {cfg.lr:g}, "
                            f"coefficient {cfg.coef:g}); nothing was saved")
        return loss

    spec = adversary.Attack(name=cfg.method, lr=cfg.lr, steps=cfg.steps, batch_size=cfg.batch_size, data="T",
                            weight_decay=0.0, grad_clip=1.0 if cfg.method == "llmu" else 0.0, dist="-")
    batches = zip(Stream(world.tokens["T"], cfg.batch_size, cfg.seed),
                  Stream(world.tokens["Rt"], cfg.batch_size, cfg.seed + 1))
    from tqdm import tqdm
    try:
        with tqdm(total=cfg.steps, desc=cfg.method, leave=False, disable=None) as bar:
            return adversary.attack(model, spec, batches, loss_fn=loss_fn, progress=bar, every=every,
                                    callback=callback)
    finally:
        model.requires_grad_(True)


def safeguard_model(base, base_key: str, world, cfg: SafeguardConfig, run_dir: Path, log=print,
                    path: Path | None = None):
    """A safeguarded copy of `base` (θ0 for TAR when cfg is the default random mapping), cached at
    run_dir/safeguard or `path` (baselines/<method>) under a key of its parent and config."""
    key, path = digest("safeguard", base_key, asdict(cfg)), path or run_dir / "safeguard"
    if (model := cached(path, key)) is not None:
        log(f"{cfg.method}: reusing {path}")
        return model
    model = load_model(run_dir / "base")  # a fresh copy of the base; `base` stays the frozen reference
    t0 = time.time()
    defend(model, base, world, cfg)
    acc = evaluate.accuracies(model, world, evaluate.EVERY_GROUP)
    log(f"{cfg.method}: {time.time() - t0:.0f}s, accuracy " + " ".join(f"{g} {a:.1%}" for g, a in acc.items()))
    save_model(model, world.tokenizer, path, {"key": key, "what": f"{cfg.method} safeguard",
                                               "parent": str(run_dir / "base"), "config": asdict(cfg),
                                               "accuracy": acc})
    return model


# --------------------------------------------------------------------------------------------------------
# Honest tuning (BASELINES.md): a small grid per method, picked by at-rest forget accuracy on group A (unseen by
# the method, and not the evaluation group E) among settings that keep retain-train Rt ≥ 90%
# --------------------------------------------------------------------------------------------------------
RETAIN_FLOOR = 0.90


def _grid_point(job) -> list[dict]:
    """Trains one grid setting for its longest step count, measuring at every step count of the grid on the way."""
    method, overrides, steps, world_cfg, base_path = job
    torch.set_num_threads(1)
    world = build_world(world_cfg)
    cfg = SafeguardConfig(method=method, **{**overrides, "steps": max(steps)})
    base, model = load_model(base_path), load_model(base_path)
    rows = []

    def record(step):
        if step in steps:
            acc = evaluate.accuracies(model, world, evaluate.EVERY_GROUP)
            rows.append({**overrides, "steps": step, **{g: round(a, 4) for g, a in acc.items()}})

    try:
        defend(model, base, world, cfg, every=min(steps), callback=record)
    except UserError as e:  # a diverging setting is a grid result, not a crash
        rows.append({**overrides, "steps": None, "error": str(e)})
    return rows


def run_grid(methods: list[str], world, run_dir: Path, workers: int, log=print) -> dict:
    import itertools
    path = run_dir / "baselines" / "grid.json"
    saved = json.loads(path.read_text()) if path.exists() else {}
    jobs = []
    for m in methods:
        axes = METHODS[m].grid
        for values in itertools.product(*axes.values()):
            jobs.append((m, dict(zip(axes, values)), (150, 300), world.config, str(run_dir / "base")))
    log(f"grid: {len(jobs)} settings x 2 step counts over {', '.join(methods)} on {workers} worker(s)")
    t0 = time.time()
    if workers > 1:
        with evaluate.start_pool(workers) as pool:
            results = list(pool.map(_grid_point, jobs))
    else:
        results = list(map(_grid_point, jobs))
    for m in methods:
        rows = [r for (jm, *_), rs in zip(jobs, results) if jm == m for r in rs]
        ok = [r for r in rows if r.get("steps") and r["Rt"] >= RETAIN_FLOOR]
        pick = min(ok, key=lambda r: (r["A"], -r["Rt"])) if ok else None
        saved[m] = {"rule": f"lowest forget on A among settings with Rt >= {RETAIN_FLOOR:.0%}", "grid": rows,
                    "pick": pick, "default": METHODS[m].picked}
        log(f"grid {m}: pick {pick}" if pick else f"grid {m}: no setting keeps Rt >= {RETAIN_FLOOR:.0%}")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(saved, indent=1))
    log(f"grid: {time.time() - t0:.0f}s; wrote {path}")
    return saved


def main(argv=None):
    p = argparse.ArgumentParser(description="Build (or reuse) the base model and the random-mapping safeguard; with "
                                            "--method, the baseline safeguards of BASELINES.md.")
    p.error = lambda message: sys.exit(f"error: {message} (see --help)")
    p.add_argument("--domain", default="bio")
    p.add_argument("--runs", type=Path, default=Path("runs"), help="runs directory (default: runs)")
    p.add_argument("--method", help=f"a baseline ({', '.join(BASELINES)}) or 'all': writes "
                                    "<runs>/<domain>/baselines/<method>/")
    p.add_argument("--grid", action="store_true", help="run the tuning grid of --method instead (grid.json)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes for --grid")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    try:
        methods = (BASELINES if args.method == "all" else [for_method(args.method).method]) if args.method else []
        if args.grid and not methods:
            raise UserError("--grid needs --method NAME or --method all")
        world = build_world(WorldConfig(domain=args.domain))
        run_dir = args.runs / args.domain
        run_dir.mkdir(parents=True, exist_ok=True)
        base, key = base_model(world, BaseConfig(), run_dir)
        if args.grid:
            run_grid(methods, world, run_dir, args.workers)
        elif methods:
            t0 = time.time()
            for m in methods:
                safeguard_model(base, key, world, for_method(m), run_dir, path=run_dir / "baselines" / m)
            print(f"baselines: {time.time() - t0:.0f}s")
        else:
            safeguard_model(base, key, world, SafeguardConfig(), run_dir)
    except (UserError, OSError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
