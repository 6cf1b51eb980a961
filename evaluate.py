"""Evaluation from the command line: red-team any run directory or saved model with a held-out attack suite.

Paper: Sec. 5 and App. (red teaming: forget accuracy after held-out fine-tuning attacks, worst case first).
How a model is scored lives in scoring.py (multiple choice as lm-evaluation-harness scores it; the refusal
judge), how attacks are run and tabulated in redteam.py, the attacks themselves in suite.py.

Run:  python evaluate.py runs/bio                          # every model of the run x the held-out suite x 3 seeds
      python evaluate.py runs/bio --suite quick --models tar safeguard
      python evaluate.py runs/bio --attacks A1_adamw_3e-4_256 --seeds 3
      python evaluate.py runs/bio --suite sweep --trials 50         # search for the most harmful attack (sweep.py)
      python evaluate.py --model runs/bio/tar --data-dir world/      # a world python data.py --out wrote
      python evaluate.py --model some/hub-id --data-dir real/        # the real datasets' files (tar.py's layout)
      torchrun --nproc_per_node 8 evaluate.py --model runs/bio/tar --data-dir real/ --suite paper --seeds 5
                  # the paper's attacks at scale, each sharded over the GPUs (FSDP2, bf16); --steps, --every
Writes <run_dir>/redteam/ (or <model>/redteam/, redteam/<owner>--<name>/ for a hub id, or --out): results.json
(resumable: finished model x attack x seed runs are kept), results.md (worst case first, then per attack x
model) and figures (plots.py).

The world is the one the models were made in, as their provenance.json records it (a model from
`tar.py --world-seed 1` is scored in the seed-1 world, not the default one); a model whose tokenizer is not the
world's is refused, since its scores would be on the wrong words. --data-dir reads one of data.py's two
layouts (data.data_layout).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

import cli
import fsdp
import plots
import redteam
import suite
import sweep
from adversary import Attack
from batching import check_split
from cli import UsageError, UserError, arg
from data import LocalWorldConfig, data_layout, load_world
from realworld import RealWorldConfig, model_tokenizer
from storage import atomic_write, read_json
from domains import DOMAINS
from world import ADDED, WORLDS, WorldConfig


@dataclass
class RedTeamArgs:
    run_dir: str = arg("", "a run directory, e.g. runs/bio (its models: every sub-directory holding a config.json)",
                       positional=True)
    model: str = arg("", "instead of a run directory: one saved model directory (or, with a --data-dir of the "
                         "real datasets, a hub id)")
    domain: str = arg("", f"the world's domain, {' | '.join(WORLDS)} (default: the models' provenance.json, else the "
                          "run's results.json, else bio)")
    data_dir: str = arg("", "a world from local files: one python data.py --out wrote (world.json), or the real "
                            "datasets' files that tar.py --data-dir reads (realworld.SOURCES names them)")
    wmdp_revision: str = arg("", "a real world: the hub revision of WMDP (default: the models' provenance.json's, "
                                 "else the newest; tar.py's flag)")
    mmlu_shots: int = arg(5, "a real world: MMLU's few-shot examples from its dev split (lm-eval's --num_fewshot; "
                             "a model whose provenance.json names another number is refused: leave it out)",
                          at_least=0)
    suite: str = arg("heldout", "the attack suite (suite.SUITES), or sweep: a hyperparameter search for the "
                                "most harmful attack (sweep.py)", choices=(*suite.SUITES, "sweep"))
    attacks: list = arg((), "only these attacks (any name of any suite)", of=str)
    models: list = arg((), "only these models of the run directory", of=str)
    seeds: int = arg(3, "seeds 0..N-1 (data order, LoRA init)", above=0)
    steps: int = arg(0, "every attack this many steps long, named <attack>@<steps> (its retain→forget switch "
                        "scaled; 0: each its own length)", at_least=0)
    every: int = arg(0, "score every this many attack steps (0: at 8 evenly spaced steps)", at_least=0)
    micro_batch: int = arg(0, "rows per forward (on each process under torchrun); larger batches are accumulated "
                              "(0: a process's whole share of a batch)", at_least=0)
    loss_chunk: int = arg(0, "apply the LM head this many positions at a time in the attacker's loss (tar.py's "
                             "--loss-chunk: at 8B the (rows, T, 128K) logits are the largest activation; 0 = all)",
                          at_least=0)
    workers: int = arg(cli.WORKERS, "parallel worker processes, one torch thread each", above=0)
    trials: int = arg(50, "--suite sweep: trials per model (the study's total: a resumed study runs what is "
                          "missing)", above=0)
    sampler: str = arg("tpe", "--suite sweep: tpe (the search) | random (its control)", choices=("tpe", "random"))
    sweep_items: int = arg(200, "--suite sweep: items per group a trial is scored on (the best attack is re-scored "
                                "on all)", above=0)
    sweep_optimizers: list = arg(tuple(sweep.SPACE), "--suite sweep: the optimizers it searches over (lora: AdamW "
                                 "on LoRA adapters)", of=str, choices=tuple(sweep.SPACE))
    out: str = arg("", "output directory (default: <run_dir>/redteam, <model>/redteam, or for a hub id "
                       "redteam/<id with / as -->)")


def red_team(args: RedTeamArgs) -> None:
    torch.set_num_threads(1)
    d = fsdp.setup_dist()  # under torchrun: one process group, every attack sharded over it
    if d.distributed and not args.model:
        raise UsageError("under torchrun pass --model (one real model); a run directory is red-teamed in one process")
    if d.distributed and args.suite == "sweep":
        raise UsageError("--suite sweep runs in one process (its trials in workers), not under torchrun")
    if bool(args.run_dir) == bool(args.model):
        raise UsageError("give a run directory or --model PATH (one of them)")
    if args.models and args.model:
        raise UsageError("--models picks models of a run directory; --model names the one model")
    if args.domain and args.domain not in WORLDS:  # not a choice of its field: empty means "the models' own"
        raise UsageError(f"--domain must be one of {', '.join(WORLDS)}, got {args.domain!r}")
    if args.suite == "sweep" and args.attacks:
        raise UsageError("--suite sweep searches its own attacks: leave out --attacks")
    unknown = [a for a in args.attacks if a not in suite.ATTACKS]
    if unknown:
        raise UsageError(f"unknown attack {', '.join(unknown)}; known: {', '.join(suite.ATTACKS)}")
    specs = [at_length(suite.ATTACKS[a], args.steps) for a in args.attacks or
             [s.name for s in suite.SUITES.get(args.suite, [])]]
    check_split({f"{s.name}'s batch of": s.batch_size for s in specs}, args.micro_batch)  # before any work
    layout = data_layout(Path(args.data_dir)) if args.data_dir else None
    run_dir = Path(args.run_dir) if args.run_dir else None
    models, out = models_of(args, run_dir, layout == "real")
    world_cfg = world_for(models, args, run_dir, layout)
    world = load_world(world_cfg)
    if args.domain and world.config.domain != args.domain:  # an export's world.json names its own domain
        raise UsageError(f"--domain {args.domain} contradicts the world in {args.data_dir} ({world.config.domain})")
    check_tokenizers(models, world)
    t0 = time.time()
    if args.suite == "sweep":
        summary = sweep.sweep(models, world_cfg, out, args.trials, args.sampler, args.sweep_items,
                              tuple(args.sweep_optimizers), args.workers)
        figure = plots.plot_sweep(out / "sweep.json")
        print("\n" + sweep.sweep_table(summary))
        print(f"wrote {out / 'sweep.json'}, sweep.md, sweep.db, {figure.name}; {time.time() - t0:.0f}s in all")
        return
    results = redteam.redteam(models, specs, world_cfg, args.seeds, args.workers, out, every=args.every, d=d,
                              micro_batch=args.micro_batch, loss_chunk=args.loss_chunk,
                              log=print if d.is_main else (lambda *_: None))
    if not d.is_main:
        return
    table = redteam.redteam_table(results)
    atomic_write(out / "results.md", table)
    figures = plots.plot_redteam(out / "results.json")
    print("\n" + table)
    print(f"wrote {out / 'results.json'}, results.md, " + ", ".join(f.name for f in figures)
          + f"; {time.time() - t0:.0f}s in all")


def at_length(spec: Attack, steps: int) -> Attack:
    """`spec` run for `steps` steps (0: as it is), its retain→forget switch scaled, named <name>@<steps>. Its dist
    tag stays the full attack's, and its source says so: a cut attack may fall inside A_train (heldout.py)."""
    if not steps or steps == spec.steps:
        return spec
    return replace(spec, name=f"{spec.name}@{steps}", steps=steps, switch=round(spec.switch * steps / spec.steps),
                   source=f"{spec.source}; cut to {steps} steps (dist tag of the full attack)")


def models_of(args: RedTeamArgs, run_dir: Path | None, real_data: bool) -> tuple[dict[str, Path], Path]:
    """The models to attack (name -> directory) and the output directory."""
    if args.model:
        model = Path(args.model)
        if model.is_dir():
            if not (model / "config.json").exists():
                raise UserError(f"{model} holds no saved model (no config.json)")
            return {model.name: model}, Path(args.out or model / "redteam")
        if not real_data:
            raise UserError(f"no model directory {model} (a hub id needs a --data-dir of the real datasets' files)")
        return {args.model: hub_snapshot(args.model)}, Path(args.out or Path("redteam") / args.model.replace("/", "--"))
    if not run_dir.is_dir():
        raise UserError(f"no run directory {run_dir}")
    models = redteam.find_models(run_dir)
    if args.models:
        missing = [m for m in args.models if m not in models]
        if missing:
            raise UserError(f"no model {', '.join(missing)} in {run_dir} (have {', '.join(models)})")
        models = {m: models[m] for m in args.models}
    if not models:
        raise UserError(f"no models (directories with a config.json) in {run_dir}")
    return models, Path(args.out or run_dir / "redteam")


def hub_snapshot(model_id: str) -> Path:
    """A hub model's files in the Hugging Face cache (fetched once): the red team keys its runs by a digest of
    the weight files, so it needs them on disk. Config, tokenizer and safetensors only: never pickled weights."""
    from huggingface_hub import snapshot_download
    try:
        return Path(snapshot_download(model_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt",
                                                                "*.jinja"]))
    except Exception as e:  # the classes differ by version and by offline vs gated: catch them all
        raise UserError(f"cannot fetch model {model_id} ({type(e).__name__}): offline, gated or no such model; "
                        "pass a local directory") from None


def world_for(models: dict[str, Path], args: RedTeamArgs, run_dir: Path | None, layout: str | None):
    """The world to red-team `models` in: the one their provenance.json names (a real one read with the first
    model's tokenizer), or --data-dir's (an export, or the real datasets' files in the provenance's domain);
    for models without provenance, the run's results.json or the default world. An explicit --domain must
    agree with the provenance."""
    saved = provenance_world(models)
    if saved is not None and args.domain and args.domain != saved.get("domain"):
        raise UsageError(f"--domain {args.domain} contradicts the models' provenance.json (made in the "
                         f"{saved.get('domain')} world); leave --domain out")
    tokenizer = str(next(iter(models.values())))  # a saved model's directory holds its tokenizer
    if layout == "export":
        return LocalWorldConfig(args.data_dir, tokenizer)
    real = saved if saved is not None and "tokenizer" in saved else None
    scoring_flags = {"revision": args.wmdp_revision or None, "mmlu_shots": args.mmlu_shots}  # a real world's
    for (key, value), flag in zip(scoring_flags.items(), ("--wmdp-revision", "--mmlu-shots")):
        if real is not None and value not in (real.get(key), getattr(RealWorldConfig, key)):  # given, and not theirs
            raise UsageError(f"{flag} {value} contradicts the models' provenance.json ({real.get(key)}); leave "
                             f"{flag} out")
    if layout == "real":
        domain = args.domain or (saved or {}).get("domain") or "bio"
        return config_of({**scoring_flags, **(real or {}), "domain": domain, "tokenizer": tokenizer,
                          "data_dir": args.data_dir}, "--data-dir")
    if real is not None:
        return config_of({**real, "tokenizer": tokenizer}, "the models' provenance.json")
    if saved is not None:
        return config_of(saved, "the models' provenance.json")
    return world_of(run_dir, args.domain or None)


def config_of(saved: dict, source: str) -> WorldConfig | RealWorldConfig:
    """A world's config from its asdict() as provenance.json and results.json store it (a real world's names a
    tokenizer); one error line naming `source` when it is no config this code knows."""
    try:
        return RealWorldConfig(**saved) if "tokenizer" in saved else WorldConfig(**saved)
    except (TypeError, UserError) as e:
        raise UserError(f"{source} names no world this code knows ({e})") from None


def provenance_world(models: dict[str, Path]) -> dict | None:
    """The world the models were made in, as their provenance.json records it ("world": asdict of its config);
    None when none records one. Models made in different worlds are one error line: one red team, one world."""
    worlds = {}
    for name, path in models.items():
        if (Path(path) / "provenance.json").exists():
            saved = read_json(Path(path) / "provenance.json", "delete it, or make the model again")
            if isinstance(saved, dict) and isinstance(saved.get("world"), dict):
                world = saved["world"]  # a miniature world saved before a setting was added had ADDED's value
                worlds[name] = world if "tokenizer" in world else {**ADDED, **world}
    differ = sorted({k for w in worlds.values() for v in worlds.values() for k in {*w, *v} if w.get(k) != v.get(k)})
    if differ:
        raise UserError("the models were made in different worlds (" + "; ".join(
            f"{name}: " + ", ".join(f"{k} {w.get(k)}" for k in differ) for name, w in worlds.items())
                        + "); red-team them separately (--models)")
    return next(iter(worlds.values()), None)


def miniature_world_of(models: dict[str, Path], what: str) -> WorldConfig:
    """The miniature world the models were made in (their provenance.json); anything else is one error line
    saying that `what` (e.g. "Table 1 is measured") needs it."""
    saved = provenance_world(models)
    if saved is None or "tokenizer" in saved:
        raise UserError(f"{what} in a miniature world: the models need the provenance.json that tar.py, "
                        "safeguard.py and search.py write")
    return config_of(saved, "the models' provenance.json")


def world_of(run_dir: Path | None, domain: str | None) -> WorldConfig:
    """The miniature world of models without provenance: from the run's results.json (tar.py wrote it), else
    the default world of `domain` (else of the run directory's name, else bio)."""
    path = run_dir / "results.json" if run_dir is not None else None
    if path is not None and path.exists():
        saved = read_json(path, "delete it (tar.py writes it again)")
        world = saved.get("world") if isinstance(saved, dict) else None
        if not isinstance(world, dict) or not isinstance(world.get("config"), dict):
            raise UserError(f"{path} names no world (no world.config); delete it (tar.py writes it again)")
        cfg = config_of(world["config"], str(path))
        if domain is None or domain == cfg.domain:
            return cfg
    return WorldConfig(domain=domain or (run_dir.name if run_dir is not None and run_dir.name in DOMAINS else "bio"))


def check_tokenizers(models: dict[str, Path], world) -> None:
    """Every model's saved tokenizer has the world's vocabulary, else one error line: a model of another world
    (another --world-seed orders the same words differently) would be scored on the wrong words, and read as a
    defence."""
    unk = world.tokenizer.unk_token_id
    if unk is not None and world.tokens:  # the world's own text in words its tokenizer does not know: wrong model
        t = next(iter(world.tokens.values()))
        share = float(((t.ids == unk) & t.mask).sum() / t.mask.sum().clamp(min=1))
        if share > 0.05:
            raise UserError(f"{share:.0%} of the world's tokens are unknown to the tokenizer of "
                            f"{next(iter(models.values()))}: it was made for another world (a miniature model on "
                            "real data?); its scores would read as a defence")
    vocab = world.tokenizer.get_vocab()
    for name, path in models.items():
        if model_tokenizer(str(path)).get_vocab() != vocab:
            raise UserError(f"{path}'s tokenizer is not the one of the world it would be scored in "
                            f"({world.config.domain}, digest {world.digest}): it was made in another world; "
                            "red-team it in its own (--domain, --data-dir, or its run directory)")


def main(argv=None):
    try:
        cli.run(RedTeamArgs, red_team, argv, "Red-team the models of a run directory (or one saved model) with "
                "the held-out attack suite; resumable.")
    finally:
        fsdp.teardown()


if __name__ == "__main__":
    main()
