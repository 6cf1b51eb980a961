"""Honest tuning of the baselines (docs/baselines.md): a small grid per method, picked by protocol v2's rule.

Not in the paper, which grid-searched its baselines without saying by what (docs/paper.md §5). Each grid point of
a method (baselines.Method.grid: lr x the method's coefficients, at 150 and 300 steps) is trained from the cached
base by the one defence loop (safeguard.defend) in a world with E sealed away, and scored as selection.py scores
every candidate: at rest on every group but E, and under the reference attack on V and G_dev. The pick is
selection.pick's: the lowest forget on V under the attack among the points that keep G_dev within its bounds.

Run:  python safeguard.py --domain bio --method all --grid      # runs/bio/baselines/grid.json
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import adversary
import scoring
import selection
from safeguard import METHODS, SafeguardConfig, defend
from storage import atomic_write, load_model
from workers import Workers
from world import build_world, sealed


def grid_point(job) -> list[dict]:
    """Trains one grid setting for its longest step count, measuring at every step count of the grid on the way
    (at rest on every group but E, and selection's evidence)."""
    method, overrides, steps, world_cfg, base_path = job
    world = sealed(build_world(world_cfg))  # nothing here can read E
    cfg = SafeguardConfig(method=method, **{**overrides, "steps": max(steps)})
    base, model = load_model(base_path), load_model(base_path)
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


def run_grid(methods: list[str], world, run_dir: Path, workers: int, log=print) -> dict:
    path = run_dir / "baselines" / "grid.json"
    saved = json.loads(path.read_text()) if path.exists() else {}
    jobs = []
    for m in methods:
        axes = METHODS[m].grid
        for values in itertools.product(*axes.values()):
            jobs.append((m, dict(zip(axes, values)), (150, 300), world.config, str(run_dir / "base")))
    log(f"grid: {len(jobs)} settings x 2 step counts over {', '.join(methods)} on {workers} worker(s)")
    t0, bounds = time.time(), selection.Bounds()
    with Workers(min(workers, len(jobs))) as pool:
        results = list(pool.map(grid_point, jobs))
    for m in methods:
        rows = [r for (jm, *_), rs in zip(jobs, results) if jm == m for r in rs]
        scored = {str(i): r for i, r in enumerate(rows) if r.get("steps")}
        chosen = selection.pick(scored, bounds)
        pick = scored[chosen] if chosen is not None else None
        saved[m] = {"rule": f"selection.py: lowest forget on V under the reference attack among settings with "
                            f"G_dev >= {bounds.g_dev_rest:.0%} at rest and >= {bounds.g_dev_attacked:.0%} under it",
                    "grid": rows, "pick": pick, "default": METHODS[m].picked}
        log(f"grid {m}: pick {pick}" if pick else f"grid {m}: no setting keeps G_dev within the bounds")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(saved, indent=1))
    log(f"grid: {time.time() - t0:.0f}s; wrote {path}")
    return saved
