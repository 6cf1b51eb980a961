"""Honest tuning of the baselines (docs/baselines.md): a small grid per method, picked by protocol v2's rule.

Not in the paper, which grid-searched its baselines without saying by what (docs/paper.md §5). Each grid point of
a method (baselines.Method.grid: lr x the method's coefficients, at 150 and 300 steps) is trained from the cached
base by the one defence loop (safeguard.defend) in a world with E, Re, G_test and N sealed away (the groups the
tables report), and scored as selection.py scores every candidate: at rest on every group left, and under the
reference attack on V and G_dev. The pick is
selection.pick's: the lowest forget on V under the attack among the points that keep G_dev within its bounds.
UNDO's grid (α at 250 and 500 steps) starts from its teacher, which must be trained first. Each finished
setting is appended to baselines/grid_points.jsonl at once; a rerun after a crash trains only what is missing.
`python safeguard.py --method <m>` then trains the grid's pick where grid.json chose it from the weights the method
starts from (`pick_for`), and baselines.py's pick (made on the base it names) otherwise.

Run:  python safeguard.py --domain bio --method all --grid      # runs/bio/baselines/grid.json
      python safeguard.py --domain bio --method undo_rmu --grid # after python safeguard.py --method rmu
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import asdict
from pathlib import Path

import adversary
import protocol
import scoring
import selection
from baselines import perturb, start_dir
from cli import UsageError, UserError
from safeguard import METHODS, SafeguardConfig, defend
from storage import atomic_write, digest, file_digest, load_model, read_json
from workers import logged_map
from world import UNSEEN, build_world, identity, sealed


def grid_point(job) -> list[dict]:
    """Trains one grid setting for its longest step count, measuring at every step count of the grid on the way
    (at rest on every group but E, and selection's evidence). UNDO's student starts from its teacher perturbed
    towards a fresh initialisation, the teacher its reference."""
    method, overrides, steps, world_cfg, start = job  # start: the base, or UNDO's teacher
    if METHODS[method].by_length and len(steps) > 1:  # 150 steps of a 300-step schedule are not a 150-step run
        return [row for n in steps for row in grid_point((method, overrides, (n,), world_cfg, start))]
    world = sealed(build_world(world_cfg), UNSEEN)  # nothing here can read E, Re, G_test or N
    cfg = SafeguardConfig(method=method, **{**METHODS[method].picked, **overrides, "steps": max(steps)})
    base, model = load_model(start), load_model(start)
    if METHODS[method].teacher:
        perturb(model, cfg.coef, cfg.seed)
    rows = []

    def record(step):
        if step in steps:
            acc = scoring.accuracies(model, world, scoring.every_group(world))
            evidence = {k: v for k, v in selection.dev_evidence(model, world).items() if k != "curve"}
            rows.append({**overrides, "steps": step, **{g: round(a, 4) for g, a in acc.items()}, **evidence})

    try:
        defend(model, base, world, cfg, every=min(steps), callback=record)
    except adversary.Diverged as e:  # a diverging setting is a grid result, not a crash
        rows.append({**overrides, "steps": None, "error": str(e)})
    return rows


def check(methods: list[str], run_dir: Path) -> None:
    """Before any work: a method to tune, and UNDO's teacher trained (its grid starts from it)."""
    if not methods:
        raise UsageError("--grid needs --method NAME or --method all (data filtering and stage 1 have none)")
    for m in methods:
        if (teacher := METHODS[m].teacher) and not (start_dir(teacher, run_dir) / "model.safetensors").exists():
            raise UserError(f"{m}'s grid starts from its teacher: train it first (python safeguard.py --domain "
                            f"{run_dir.name} --method {teacher})")


def job_key(job, weights: str) -> str:
    """A grid point's cache key: the config it trains (grid_point's, but for its length), its step counts, how it
    is scored (the reference attack), its world and `weights`, the digest of the model it starts from (a retrained
    base or teacher makes every point again)."""
    method, overrides, steps, world_cfg, start = job
    cfg = asdict(SafeguardConfig(method=method, **{**METHODS[method].picked, **overrides}))
    return digest({**cfg, "steps": None}, list(steps), METHODS[method].by_length, protocol.REFERENCE.to_dict(),
                  identity(world_cfg), weights)


def grid_file(run_dir: Path) -> Path:
    """Where the grid keeps each method's pick and the weights it chose on (its points beside it)."""
    return run_dir / "baselines" / "grid.json"


def pick_for(method: str, run_dir: Path) -> tuple[dict, str]:
    """The settings `method` is trained with, and where they come from: the grid's pick where grid.json chose it
    from the very weights the method starts from (this machine's base, or UNDO's teacher as trained now), else the
    pick in baselines.py (made on the base named there; each CPU model pretrains its own, docs/baselines.md)."""
    path = grid_file(run_dir)
    entry = (read_json(path) if path.exists() else {}).get(method, {})
    here = entry.get("start") == file_digest(start_dir(METHODS[method].teacher, run_dir))
    if here and entry.get("pick"):
        settings = {k: entry["pick"][k] for k in (*METHODS[method].grid, "steps")}
        return settings, f"the grid's pick on these weights ({path})"
    why = "no setting of its grid on these weights was admissible" if here else "no grid run from these weights"
    return dict(METHODS[method].picked), f"the pick in baselines.py: {why}"


def run_grid(methods: list[str], world, run_dir: Path, workers: int, log=print) -> dict:
    path = grid_file(run_dir)
    points = path.with_name("grid_points.jsonl")  # a line per finished setting: a crash or Ctrl-C loses none
    saved = read_json(path) if path.exists() else {}
    jobs, weights = {}, {}  # weights: the digest of each method's start, which its grid chooses on
    for m in methods:
        method, start = METHODS[m], start_dir(METHODS[m].teacher, run_dir)
        weights[m] = file_digest(start)
        for values in itertools.product(*method.grid.values()):
            job = (m, dict(zip(method.grid, values)), method.grid_steps, world.config, str(start))
            jobs[job_key(job, weights[m])] = job
    path.parent.mkdir(parents=True, exist_ok=True)
    log(f"grid: {len(jobs)} settings x their step counts over {', '.join(methods)} on {workers} worker(s), each "
        f"kept in {points.name} as it ends (a rerun trains only those not there)")
    t0, bounds = time.time(), selection.Bounds()
    done = logged_map(grid_point, jobs, points, workers, "grid")
    for m in methods:
        rows = [r for k, (jm, *_) in jobs.items() if jm == m for r in done[k]]
        scored = {str(i): r for i, r in enumerate(rows) if r.get("steps")}
        chosen = selection.pick(scored, bounds)
        pick = scored[chosen] if chosen is not None else None
        saved[m] = {"rule": f"selection.py: lowest forget on V under the reference attack among settings with "
                            f"G_dev >= {bounds.g_dev_rest:.0%} at rest and >= {bounds.g_dev_attacked:.0%} under it",
                    "grid": rows, "pick": pick, "default": METHODS[m].picked, "start": weights[m]}
        log(f"grid {m}: pick {pick}" if pick else f"grid {m}: no setting keeps G_dev within the bounds")
    atomic_write(path, json.dumps(saved, indent=1))
    log(f"grid: {time.time() - t0:.0f}s; wrote {path}")
    return saved
