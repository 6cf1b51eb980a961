"""Everything before TAR: the base model, and the initial safeguard (random mapping) that TAR starts from.

Paper: Sec. 4.1 ("initial safeguard", Alg. 1 stage 1: θ0 = safeguard(θ_base)) and App. (random mapping).

Base model. A tiny `LlamaForCausalLM` (4 layers, width 128: about 0.9M parameters with the bio world's
vocabulary) pretrained on the miniature world's stream "all" (every family but N) through `adversary.attack()`
with an LM spec, until it knows every fact (≥ 95%). It plays the part of Llama-3-8B-Instruct: a model that knows
hazardous facts. The oracle is the same recipe on the stream "oracle" (E's documents removed, same steps and
seed): the model that never knew E, the floor a perfect defence reaches (docs/protocol.md).

Random-mapping safeguard. Train the model so that its representation of forget text points at fixed random
directions (scrambling what later layers can read off it) while retain text keeps its representations:

    L_safeguard = L_RM(x_f) + L_LM(x_r) + (1/L) Σ_l mean_t ‖h_l^θ(x_r)[t] − h_l^base(x_r)[t]‖²
    L_RM(x_f)   = (1/L) Σ_l mean_{b,t} [1 − cos(h_l^θ(x_f)[b,t], r)],   r ~ N(0, I) fixed
                  (the paper draws one r per token id; `SafeguardConfig.per` offers that and one per position)

A safeguard is "a forget term + a retain term, trained without an attacker", run by the one fine-tuning loop
`adversary.attack()` with that loss. It hides the facts of T *and* of the never-seen groups A and E (it
learns "this domain -> scramble"), but a few dozen attack steps bring them back: the knowledge is latent.

Baselines (paper Table 1, docs/baselines.md): Max-Entropy, Min-Posterior, LLMU, RMU, RepNoise, circuit breakers
(baselines.py). Each is a name -> (forget term, retain term) pair in `METHODS`, trained by the same loop
`defend()`; `--grid` tunes them by protocol v2's selection rule (selection.py), as every method is chosen. UNDO
distils one of them into a perturbed copy of itself by the same loop; data filtering is the base's recipe on a
stream without the hazardous domain.

Run:  python safeguard.py --domain bio                     # builds (or reuses) runs/bio/base and runs/bio/safeguard
      python safeguard.py --domain bio --method rmu        # runs/bio/baselines/rmu (or --method all)
      python safeguard.py --domain bio --method all --grid # the tuning grid -> runs/bio/baselines/grid.json
      python safeguard.py --domain bio --method undo_rmu   # runs/bio/baselines/undo_rmu (rmu trained first)
      python safeguard.py --domain bio --method data_filtering   # runs/bio/filtered
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import adversary
import cli
import fsdp
import losses
import scoring
from baselines import BASELINES, UNDO, Method, ce, forward, perturb, start_dir
from batching import Stream, check_split, shard_batch
from cli import UsageError, UserError, arg
from fsdp import Dist
from realworld import FORGET_CORPORA, RealWorldConfig, hub_datasets, load_real_world
from domains import CITIES
from storage import cached, digest, file_digest, load_model, provenance, save_model
from workers import Workers, result
from world import STREAMS, WORLDS, build_world, entities_flag, t_extra_flag, value_ids, world_config


@dataclass(frozen=True)
class ModelConfig:
    width: int = 128  # Llama-3-8B: 4096
    layers: int = 4  # 32
    heads: int = 4  # 32 (8 KV heads)
    mlp: int = 256  # 14336
    max_positions: int = 128


@dataclass(frozen=True)
class BaseConfig:
    """Base pretraining = an attack on everything from random weights (docs/paper.md §7); data="oracle": the
    oracle (world.py's stream without E); data="filtered": the data-filtering baseline (no hazardous document)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: str = "all"  # the world's pretraining stream: all (the base) | oracle (never knew E) | filtered
    steps: int = 2000
    lr: float = 2e-3
    batch_size: int = 32
    warmup: float = 0.05  # 100 of 2000 steps, then cosine decay
    seed: int = 0

    def spec(self) -> adversary.Attack:
        return adversary.Attack(name="pretrain", lr=self.lr, steps=self.steps, batch_size=self.batch_size,
                                data=self.data, schedule="cosine", warmup=self.warmup, grad_clip=1.0, dist="-")

    @property
    def name(self) -> str:  # its directory in runs/<domain>/
        return "base" if self.data == "all" else self.data


@dataclass(frozen=True)
class SafeguardConfig:
    """One single-level safeguard: `method`'s forget term on T documents + its retain term on Rt documents, no
    attacker. `METHODS` lists random mapping (TAR's stage 1) and the baselines, and `for_method()` gives each one's
    picked setting on top of these defaults (docs/search.md, docs/baselines.md; `--grid` picks the baselines').

    # deviation: random mapping sends every real token of a forget document, at every layer, to ONE fixed random
    # direction (paper: one per token id; docs/paper.md §7 prototype: one per position) because here it is the form
    # that generalises from group T to the unseen groups. Measured on bio (seed 0, lr 3e-3, all real tokens),
    # forget accuracy E / A after the safeguard: constant target at every layer, 200 steps: 31% / 38%; constant,
    # final layer, 300 steps: 34% / 40%; per token id, final layer: 54% / 58%; per position, final layer:
    # 52% / 58%, every layer: 54% / 63%. A per-token or per-position target can be fitted entity by entity; one
    # direction is reached most cheaply by a domain-level switch."""
    method: str = "random_mapping"
    steps: int = 250  # docs/paper.md §7: 300
    lr: float = 3e-3  # docs/paper.md §7: 3e-4 (too slow here: E 72% after 300 steps)
    batch_size: int = 32  # forget and retain batches each
    coef: float = 1.0  # the method's own coefficient (METHODS[method].coef says which)
    alpha: float = 1.0  # a second coefficient where the method has one (RMU's retain weight)
    per: str = "constant"  # random mapping: per 'token' id (paper), per 'position' (docs/paper.md §7), 'constant'
    absolute: bool = False  # random mapping: 1 − |cos| (paper) instead of 1 − cos
    all_layers: bool = True  # random mapping: every hidden state after the embeddings (paper) or the final one
    retain: str = "Rt"  # the retain term's documents: Rt (retain-train cities) or benign (Rt and the rivers U)
    seed: int = 0


# --------------------------------------------------------------------------------------------------------
# Base model (saved and cached through storage.py: save_pretrained + tokenizer + provenance.json)
# --------------------------------------------------------------------------------------------------------
def new_model(vocab_size: int, cfg: ModelConfig, tokenizer, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=cfg.width, intermediate_size=cfg.mlp,
                         num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads, num_key_value_heads=cfg.heads,
                         max_position_embeddings=cfg.max_positions, tie_word_embeddings=False,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    return LlamaForCausalLM(config)


def base_model(world, cfg: BaseConfig, run_dir: Path, log=print):
    """The pretrained base model (or the oracle, or data filtering's base: cfg.data), from the cache at
    run_dir/<cfg.name> when its key matches, else trained; returns (model, its key). log=None: silent, no bar."""
    key, path, name = base_key(world, cfg), run_dir / cfg.name, cfg.name
    shown, log = log is not None, log or (lambda *_: None)
    if (model := cached(path, key)) is not None:
        log(f"{name}: reusing {path}")
        return model, key
    if path.exists():
        log(f"{name}: {path} was made from another world or config, or its files changed since; retraining")
    model = new_model(len(world.tokenizer), cfg.model, world.tokenizer, cfg.seed)
    n = sum(p.numel() for p in model.parameters())
    log(f"{name}: pretraining a {n / 1e6:.2f}M-parameter Llama on {world.tokens[cfg.data].ids.shape[0]} sequences "
        f"for {cfg.steps} steps")
    t0 = time.time()
    with cli.progress(cfg.steps, f"pretrain {name}", enabled=shown) as bar:
        adversary.attack(model, cfg.spec(), Stream(world.tokens[cfg.data], cfg.batch_size, cfg.seed), progress=bar)
    acc = scoring.accuracies(model, world, scoring.every_group(world, chat=False), chat=False)  # knowledge
    log(f"{name}: {time.time() - t0:.0f}s, accuracy " + " ".join(f"{g} {a:.1%}" for g, a in acc.items()))
    read = {"T" if g.startswith("T_") else g for g in STREAMS[cfg.data]}  # T_inner and T_tr are group T
    known = [a for g, a in acc.items() if g in read]
    if min(known) < 0.95:
        log(f"{name}: WARNING: some group it read is below 95% accuracy; train longer (--base-steps)")
    what = {"all": "base", "oracle": "oracle (never knew E)", "filtered": "data filtering (no hazardous document)"}
    save_model(model, world.tokenizer, path, {"key": key, "what": what[cfg.data], "world": asdict(world.config),
                                               "config": asdict(cfg), "accuracy": acc})
    return model, key


def base_key(world, cfg: BaseConfig) -> str:
    """The cache key of a base (or oracle): its world and every setting of its pretraining."""
    return digest("base", world.digest, asdict(cfg))


def pretrain_job(job: tuple) -> str:
    """`base_model` in a worker process (tar.py trains the oracle on the second core while the base trains):
    job = (world config, BaseConfig, run_dir); returns the cache key (the model is on disk)."""
    world_cfg, cfg, run_dir = job
    torch.set_num_threads(1)
    return base_model(build_world(world_cfg), cfg, Path(run_dir), log=None)[1]


def stage_one(world, base_cfg: BaseConfig, cfg: "SafeguardConfig", run_dir: Path, log=print):
    """Alg. 1 l.1 with its references: the base, the oracle (knowledge worlds: pretrained in a worker on the second
    core while the base trains here) and θ0 = the safeguarded base; each cached. Returns (base, its key, θ0)."""
    t0, oracle_cfg = time.time(), replace(base_cfg, data="oracle")
    # the refusal world's question is refusal, not knowledge: it has no oracle; a cached oracle needs no worker
    oracle = world.chats is None and cached(run_dir / oracle_cfg.name, base_key(world, oracle_cfg)) is None
    with Workers(1) if oracle else contextlib.nullcontext() as pool:
        job = pool.submit(pretrain_job, (world.config, oracle_cfg, str(run_dir))) if oracle else None
        base, key = base_model(world, base_cfg, run_dir, log)
        if job is not None:
            result(job)
            log(f"oracle: ready in {run_dir / 'oracle'} after {time.time() - t0:.0f}s (pretrained without E's "
                "documents on the second core)")
    return base, key, safeguard_model(base, key, world, cfg, run_dir, log)


# --------------------------------------------------------------------------------------------------------
# The safeguards: random mapping (TAR's stage 1) and refusal training; baselines.py holds Table 1's others
# --------------------------------------------------------------------------------------------------------
def _random_mapping(model, ref, xf, xr, cfg, ctx):
    """Sec. 4.1: forget tokens' hidden states -> fixed random targets; retain text keeps its representations."""
    out_f = forward(model, xf)
    targets = losses.random_targets(ctx["table"], xf.input_ids, cfg.per)  # (B, T, d)
    # deviation: the hidden states after the embeddings only (paper: all of them, the embedding output too)
    # because the embedding output of a token is its embedding row alone, the same in every context: mapping it
    # would move words that forget and benign text share (a reason, not a measurement against the paper's form).
    hidden = out_f.hidden_states[1:] if cfg.all_layers else out_f.hidden_states[-1:]
    # deviation: 1 − cos, not the paper's 1 − |cos| (cfg.absolute gives the paper's) because the recipe that
    # first worked here (docs/paper.md §7) used the plain cosine, and the safeguard was tuned with it.
    forget = sum(losses.random_mapping_loss(h, targets, xf.attention_mask, cfg.absolute) for h in hidden) / len(hidden)
    with torch.no_grad():
        ref_r = forward(ref, xr)
    # deviation: the retain term adds a hidden-state distance to the base model to the paper's retain CE because
    # the recipe that first worked here (docs/paper.md §7) kept retain text's representations as well as its loss.
    retain, _ = losses.retain_loss(forward(model, xr), ref_r, xr.input_ids, xr.attention_mask, squared=True)
    return cfg.coef * forget, retain


def _refusal_training(model, ref, xf, xr, cfg, ctx):
    """The refusal world's "instruct" base: SFT on refusals of T's harmful prompts + answers to Rt's harmless ones."""
    return cfg.coef * ce(model, xf), ce(model, xr)


# Stage 1's methods and the baselines: (forget term, retain term). Random mapping's is the dev-split search's: retain
# on Rt and U at lr 1e-3 (G_dev 99-100%; SafeguardConfig's Rt at 3e-3: 75%; docs/search.md)
METHODS: dict[str, Method] = {"random_mapping": Method(_random_mapping, "weight of the mapping term", {},
                                                       dict(retain="benign", lr=1e-3)), **BASELINES, **UNDO,
                              "refusal": Method(_refusal_training, "weight of the refusal term", {}, dict(lr=1e-3))}


def for_method(method: str, **overrides) -> SafeguardConfig:
    if method not in METHODS:
        raise UserError(f"unknown method {method!r}: choose one of {', '.join(METHODS)} or all")
    return SafeguardConfig(method=method, **{**METHODS[method].picked, **overrides})


DEFENCE_DATA = ("T", "Rt")  # what every single-level defence reads: T's forget and Rt's retain documents (or benign)


def defend(model, ref, world, cfg: SafeguardConfig, every: int = 0, callback=None, d: Dist = Dist(),
           micro_batch: int = 0) -> list[float]:
    """THE defence loop: trains `model` in place on forget term(T) + retain term(Rt) with `adversary.attack()`
    (no attacker: the "attack" here is the defender's own fine-tuning); `ref` is the frozen original model. Under
    torchrun (or with micro_batch) each step's batches are cut into this rank's micro-batches, as TAR's are."""
    method = METHODS[cfg.method]
    ref.eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(cfg.seed)
    width = model.config.hidden_size
    rows = {"constant": 1, "position": model.config.max_position_embeddings, "token": model.config.vocab_size}
    table = torch.randn(rows[cfg.per], width, generator=gen).to(d.device)  # random-mapping targets r ~ N(0, I)
    u = torch.rand(width, generator=gen).to(d.device)
    ctx = {"gen": gen, "step": 0, "table": table,
           "u": u / u.norm(),  # RMU's fixed random unit vector (uniform [0, 1), normalised)
           "rmu_layer": 2, "cb_layers": (2, 3),  # of 4 layers: RMU ℓ = 7 of 32 -> 2; circuit breakers 10, 20 -> 2, 3
           "retain_values": value_ids(world.tokenizer, CITIES) if cfg.method == "llmu" else None}  # LLMU's wrong answers
    if method.trainable is not None:
        keep = {id(p) for p in method.trainable(model)}
        for p in model.parameters():
            p.requires_grad_(id(p) in keep)

    def loss_fn(model, batches):
        forget, retain = method.terms(model, ref, *batches, cfg, ctx)
        return forget + retain  # a non-finite value stops the loop: adversary.Diverged, nothing saved

    def counted(steps):  # ctx["step"]: the optimizer step (circuit breakers' schedule), however it is cut
        for ctx["step"], batch in enumerate(steps, start=1):
            yield batch

    forget, retain = DEFENCE_DATA[0], cfg.retain
    spec = adversary.Attack(name=cfg.method, lr=cfg.lr, steps=cfg.steps, batch_size=cfg.batch_size, data=forget,
                            weight_decay=0.0, grad_clip=1.0 if cfg.method == "llmu" else 0.0, dist="-")
    batches = zip(Stream(world.tokens[forget], cfg.batch_size, cfg.seed),
                  Stream(world.tokens[retain], cfg.batch_size, cfg.seed + 1))
    if d.distributed or micro_batch or d.device.type != "cpu":  # this rank's (forget, retain) micro-batch pairs
        cut = lambda b: shard_batch(b, d.rank, d.world_size, micro_batch, d.device)
        batches = (list(zip(cut(xf), cut(xr))) for xf, xr in batches)
    try:
        with cli.progress(cfg.steps, cfg.method, enabled=d.is_main) as bar:
            return adversary.attack(model, spec, counted(batches), loss_fn=loss_fn, progress=bar, every=every,
                                    callback=callback)
    finally:
        model.requires_grad_(True)


def safeguard_model(base, base_key: str, world, cfg: SafeguardConfig, run_dir: Path, log=print,
                    path: Path | None = None):
    """A safeguarded copy of `base` (θ0 for TAR when cfg is the default random mapping), cached at run_dir/safeguard
    or `path` (baselines/<method>) under a key of its parent and config. UNDO starts from its teacher (that baseline
    at the settings `--method <teacher>` trains, trained first if need be), perturbed, and distils it."""
    import grid  # grid.py imports this module
    teacher = METHODS[cfg.method].teacher
    teacher_cfg = for_method(teacher, seed=cfg.seed, **grid.pick_for(teacher, run_dir)[0]) if teacher else None
    parent = start_dir(teacher, run_dir)
    # the base's weights too: a base pretrained again (another machine's rounding) makes every safeguard again
    key = digest("safeguard", base_key, file_digest(run_dir / "base"), asdict(cfg),
                 *([asdict(teacher_cfg)] if teacher else []))
    if (model := cached(path := path or run_dir / "safeguard", key)) is not None:
        log(f"{cfg.method}: reusing {path}")
        return model
    if "tokenizer" in provenance(path).get("world", {}):  # never retrain the miniature's over a real θ0
        raise UserError(f"{path} holds a safeguard of a real model (safeguard.py --model): use another --runs")
    ref = safeguard_model(base, base_key, world, teacher_cfg, run_dir, log, parent) if teacher else base  # frozen
    model, t0 = load_model(parent), time.time()  # a fresh copy of the base (UNDO: of its teacher)
    if teacher:
        perturb(model, cfg.coef, cfg.seed)  # UNDO's noise
    defend(model, ref, world, cfg)
    acc = scoring.accuracies(model, world, scoring.every_group(world))
    log(f"{cfg.method}: {time.time() - t0:.0f}s, accuracy " + " ".join(f"{g} {a:.1%}" for g, a in acc.items()))
    save_model(model, world.tokenizer, path, {"key": key, "what": f"{cfg.method} safeguard", "world": asdict(
        world.config), "parent": str(parent), "config": asdict(cfg), "accuracy": acc})
    return model


@dataclass
class SafeguardArgs:
    domain: str = arg("bio", "the miniature world (with --model: bio, chem or cyber)", choices=WORLDS)
    model: str = arg("", "a Hugging Face causal LM (hub id or directory) to safeguard on the real datasets (under "
                         "torchrun: FSDP2), writing <runs>/<domain>/safeguard; empty: the miniature world")
    data_dir: str = arg("", "with --model: local files in the real datasets' schemas (tar.py's --data-dir)")
    seq_len: int = arg(256, "with --model: documents are cut to this many tokens", above=0)
    max_docs: int = arg(0, "with --model: at most this many documents per split (0 = all)", at_least=0)
    micro_batch: int = arg(0, "with --model: rows per forward/backward on each process (0 = its whole share)",
                           at_least=0)
    runs: str = arg("runs", "runs directory; writes <runs>/<domain>/base, safeguard, baselines/", nonempty=True)
    method: str = arg("", f"a method ({', '.join(METHODS)}) or 'all' (the baselines): writes "
                          "<runs>/<domain>/baselines/<method>/ (empty: the random-mapping safeguard); data_filtering: "
                          "a base pretrained without the hazardous domain, <runs>/<domain>/filtered/")
    grid: bool = arg(False, "run the tuning grid of --method instead (baselines/grid.json)")
    workers: int = arg(cli.WORKERS, "processes for --grid (one torch thread each)", above=0)
    # tar.py's world and base flags, its defaults: a run made with other ones is reused, not silently retrained over
    world_seed: int = arg(0, "seed of the world and the models (tar.py's --world-seed)", at_least=0)
    world_entities: int = entities_flag()
    world_t_extra: int = t_extra_flag()
    base_steps: int = arg(BaseConfig.steps, "base pretraining steps", above=0)
    safeguard_steps: int = arg(SafeguardConfig.steps, "random-mapping safeguard steps (with --model too)", above=0)


def build(args: SafeguardArgs) -> None:
    torch.set_num_threads(1)
    if args.model:
        return build_real(args)
    if args.data_dir or args.max_docs or args.micro_batch or args.seq_len != 256:  # given and ignored misleads
        raise UsageError("--data-dir, --seq-len, --max-docs and --micro-batch only apply to a real --model")
    if args.method and args.method not in ("all", "data_filtering") and args.method not in METHODS:
        raise UsageError(f"unknown method {args.method!r}: choose one of {', '.join(METHODS)}, data_filtering or all")
    methods = {"": [], "all": list(BASELINES), "data_filtering": []}.get(args.method, [args.method])
    import grid  # grid.py imports this module
    if args.grid:
        grid.check(methods, Path(args.runs) / args.domain)  # before any work
    world = build_world(world_config(args.domain, args.world_entities, args.world_seed, args.world_t_extra))
    run_dir = Path(args.runs) / args.domain
    run_dir.mkdir(parents=True, exist_ok=True)
    base_cfg = BaseConfig(steps=args.base_steps, seed=args.world_seed)
    if args.method == "data_filtering":  # no defence loop: the base's recipe on another pretraining stream
        base_model(world, replace(base_cfg, data="filtered"), run_dir)
        return
    base, key = base_model(world, base_cfg, run_dir)
    if args.grid:
        grid.run_grid(methods, world, run_dir, args.workers)
    elif methods:  # settings: the grid's pick on the weights a method starts from, else baselines.py's
        for m in [t for m in methods for t in (METHODS[m].teacher, m) if t]:  # UNDO's teacher first (its start)
            settings, source = grid.pick_for(m, run_dir)
            print(f"{m}: {', '.join(f'{k} {v}' for k, v in settings.items())} ({source})")
            safeguard_model(base, key, world, for_method(m, seed=args.world_seed, **settings), run_dir,
                            path=run_dir / "baselines" / m)
    else:
        safeguard_model(base, key, world, for_method("random_mapping", steps=args.safeguard_steps,
                                                     seed=args.world_seed), run_dir)


# Stage 1 at real scale: random mapping (the baselines' picks are the miniature's: lr 1e-3 would wreck an 8B model)
REAL_METHODS = ("random_mapping",)
# deviation: real-scale random mapping trains at lr 2e-5 for 250 steps (paper: neither published) because 2e-5 is
# the paper's TAR outer lr; it maps one random row per token id with |cos| as the paper does, and keeps this
# repository's other departures (no embedding output, a hidden-state retain term).
REAL_RANDOM_MAPPING = dict(per="token", absolute=True, lr=2e-5, retain="Rt")  # the retain corpus


def build_real(args: SafeguardArgs) -> None:
    """Stage 1 on a Hugging Face model and the real corpora, in one process or sharded under torchrun (FSDP2), by
    the same defend loop; saved with save_pretrained, its tokenizer and a model card naming the parent (so that
    tar.py --reference base finds it)."""
    method = args.method or "random_mapping"
    if method not in REAL_METHODS or args.grid or args.domain not in FORGET_CORPORA:
        raise UsageError(f"--model takes --domain {' | '.join(FORGET_CORPORA)} and --method "
                         f"{' | '.join(REAL_METHODS)}, no --grid")
    check_split({"the safeguard's batches of": SafeguardConfig.batch_size}, args.micro_batch)  # before any work
    d = fsdp.setup_dist()
    try:
        world_cfg = RealWorldConfig(args.domain, args.model, args.data_dir, args.seq_len, args.max_docs,
                                    mmlu_shots=0)  # stage 1 scores nothing: no MMLU dev split needed
        world = load_real_world(world_cfg)
        model, ref = (load_model(args.model, d, safetensors_only=True) for _ in range(2))  # ref: frozen original
        cfg = for_method(method, **REAL_RANDOM_MAPPING, steps=args.safeguard_steps, seed=args.world_seed)
        defend(model, ref, world, cfg, d=d, micro_batch=args.micro_batch)
        save_model(model, world.tokenizer, Path(args.runs) / args.domain / "safeguard", {
            "what": f"{method} safeguard", "parent": args.model, "world": asdict(world_cfg), "config": asdict(cfg),
            "datasets": hub_datasets(args.domain)}, d)
    finally:
        fsdp.teardown()


def main(argv=None):
    cli.run(SafeguardArgs, build, argv, "Build (or reuse) the base model and the random-mapping safeguard; with "
            "--method, the baseline safeguards (Table 1).")


if __name__ == "__main__":
    main()
