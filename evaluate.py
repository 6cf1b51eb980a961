"""Evaluation from the command line: red-team any run directory or saved model with a held-out attack suite.

Paper: Sec. 5 and App. (red teaming: forget accuracy after held-out fine-tuning attacks, worst case first).
How a model is scored lives in scoring.py (multiple choice as lm-evaluation-harness scores it; the refusal
judge), how attacks are run and tabulated in redteam.py, the attacks themselves in adversary.py.

Run:  python evaluate.py runs/bio                          # every model of the run x the held-out suite x 3 seeds
      python evaluate.py runs/bio --suite quick --models tar safeguard
      python evaluate.py runs/bio --attacks A1_adamw_3e-4_256 --seeds 3
      python evaluate.py --model runs/bio/tar --data-dir my_jsonl/   # local JSONL files (realworld.LocalWorldConfig)
Writes <run_dir>/redteam/ (or <model>/redteam/, or --out): results.json (resumable: finished model x attack x
seed runs are kept), results.md (worst case first, then per attack x model) and figures (plots.py).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

import adversary
import cli
import plots
import redteam
from cli import UserError, arg
from realworld import LocalWorldConfig
from storage import atomic_write
from world import WorldConfig


@dataclass
class RedTeamArgs:
    run_dir: str = arg("", "a run directory, e.g. runs/bio (its models: every sub-directory holding a config.json)",
                       positional=True)
    model: str = arg("", "instead of a run directory: one saved model directory")
    domain: str = arg("", "miniature world of --model (default: read from the run's results, else bio)")
    data_dir: str = arg("", "local JSONL files instead of the miniature world (realworld.LocalWorldConfig says which)")
    topic: str = arg("biology", "WMDP subject of the letter prompt with --data-dir")
    suite: str = arg("heldout", "the attack suite (adversary.SUITES)", choices=tuple(adversary.SUITES))
    attacks: list = arg((), "only these attacks (any name of any suite)", of=str)
    models: list = arg((), "only these models of the run directory", of=str)
    seeds: int = arg(3, "seeds 0..N-1 (data order, LoRA init)")
    workers: int = arg(os.cpu_count() or 1, "parallel worker processes, one torch thread each")
    out: str = arg("", "output directory (default: <run_dir>/redteam)")


def red_team(args: RedTeamArgs) -> None:
    torch.set_num_threads(1)
    if bool(args.run_dir) == bool(args.model):
        raise UserError("give a run directory or --model PATH (one of them)")
    if args.seeds <= 0 or args.workers <= 0:
        raise UserError("--seeds and --workers must be positive")
    unknown = [a for a in args.attacks if a not in adversary.ATTACKS]
    if unknown:
        raise UserError(f"unknown attack {', '.join(unknown)}; known: {', '.join(adversary.ATTACKS)}")
    specs = [adversary.ATTACKS[a] for a in args.attacks] or adversary.SUITES[args.suite]
    run_dir = Path(args.run_dir) if args.run_dir else None
    if args.model:
        model = Path(args.model)
        if not (model / "config.json").exists():
            raise UserError(f"{model} holds no saved model (no config.json)")
        models, out = {model.name: model}, Path(args.out or model / "redteam")
    else:
        if not run_dir.is_dir():
            raise UserError(f"no run directory {run_dir}")
        models, out = redteam.find_models(run_dir), Path(args.out or run_dir / "redteam")
        if args.models:
            missing = [m for m in args.models if m not in models]
            if missing:
                raise UserError(f"no model {', '.join(missing)} in {run_dir} (have {', '.join(models)})")
            models = {m: models[m] for m in args.models}
        if not models:
            raise UserError(f"no models (directories with a config.json) in {run_dir}")
    if args.data_dir:
        world_cfg = LocalWorldConfig(str(Path(args.data_dir)), str(next(iter(models.values()))), args.topic)
    else:
        world_cfg = world_of(run_dir, args.domain or None)
    t0 = time.time()
    results = redteam.redteam(models, specs, world_cfg, args.seeds, args.workers, out)
    table = redteam.redteam_table(results)
    atomic_write(out / "results.md", table)
    figures = plots.plot_redteam(out / "results.json")
    print("\n" + table)
    print(f"wrote {out / 'results.json'}, results.md, " + ", ".join(f.name for f in figures)
          + f"; {time.time() - t0:.0f}s in all")


def world_of(run_dir: Path | None, domain: str | None) -> WorldConfig:
    """The miniature world a run was made in: from its results.json (tar.py wrote it), else the default world."""
    if run_dir is not None and (run_dir / "results.json").exists():
        saved = json.loads((run_dir / "results.json").read_text())["world"]["config"]
        if domain is None or domain == saved["domain"]:
            return WorldConfig(**saved)
    return WorldConfig(domain=domain or (run_dir.name if run_dir is not None and run_dir.name in
                                         ("bio", "chem", "cyber") else "bio"))


def main(argv=None):
    cli.run(RedTeamArgs, red_team, argv, "Red-team the models of a run directory (or one saved model) with the "
            "held-out attack suite; resumable.")


if __name__ == "__main__":
    main()
