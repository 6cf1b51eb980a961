"""Does averaging TAR's outer iterates, or another attack data order, change what the pick on V says?

A diagnostic for docs/search.md (round 47), not part of the method. Between snapshots 25 outer steps apart the
reference attack's peak on V moves by 3-5 points, and the rule picks one snapshot. Two questions about that noise:

    averaging   would the uniform average of the iterates θ_a ... θ_b (stochastic weight averaging's tail
                average, θ̄ = (1 / (b - a + 1)) Σ_{t=a..b} θ_t over what the outer step trains) resist more
                steadily than the snapshot θ_b?
    orders      does a snapshot that holds V at the reference attack's data order 0 (the order selection.py
                scores) hold it at orders 1 and 2 too, as the 3 x 3 grid's orders on E ask?
    spread      (--spread) how precisely does a group of 30 entities measure forget under the attack? The
                standard error of V's accuracy at the attack's last point clustered by entity (protocol.interval's
                estimator, all of an entity's questions one cluster): V and E are two draws of entities, so a pick
                on V predicts E only to within it

It reruns one candidate of search.py from the search's cached stage 1 (the same weights as the search's run: TAR
is deterministic given its seed), saves the tensors the outer step trains after every step under
<runs>/<domain>/iterates/<candidate>/, and scores each window on V under the reference attack (protocol.REFERENCE,
`selection.dev_evidence`) at each data order. E, Re, G_test and N are never read.

Run:  python docs/iterates.py r27dh_lambda_tr_8_inner_batch_8 --windows 75 100 51-75 51-100 76-100 --orders 0 1 2
      (one worker, ~15 min of TAR at N = 100 and ~17 s a scored point; a rerun reuses the saved iterates)
"""

from __future__ import annotations

import copy
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import cli  # noqa: E402
import protocol  # noqa: E402
import redteam  # noqa: E402
import scoring  # noqa: E402
import search  # noqa: E402
import selection  # noqa: E402
import tar  # noqa: E402
from cli import arg  # noqa: E402
from world import sealed  # noqa: E402


@dataclass
class IteratesArgs:
    candidate: str = arg("r27dh_lambda_tr_8_inner_batch_8", "a TAR candidate of candidates.py", positional=True)
    runs: str = arg("runs", "runs directory: reads <runs>/<domain>/base and the search's stage 1", nonempty=True)
    domain: str = arg("bio", "the world", choices=("bio", "chem", "cyber"))
    windows: list = arg(("75", "51-75"), "outer steps to score: b (the snapshot) or a-b (the average of a..b)",
                        of=str)
    orders: list = arg((0,), "the reference attack's data orders", of=int, at_least=0)
    spread: bool = arg(False, "also the standard error over V's entities at the attack's last point (the attack again)")


def window(spec: str) -> tuple[int, int]:
    """'b' -> (b, b); 'a-b' -> (a, b), 1 ≤ a ≤ b."""
    try:
        a, b = (int(x) for x in (spec.split("-") if "-" in spec else (spec, spec)))
    except ValueError:
        raise cli.UserError(f"--windows: {spec!r} is not b or a-b (outer steps)") from None
    if not 1 <= a <= b:
        raise cli.UserError(f"--windows: {spec!r} needs 1 ≤ a ≤ b")
    return a, b


def averaged(states: list[dict], theta0: dict) -> dict:
    """The uniform average of the saved iterates, tensor by tensor (a tensor an iterate lacks is θ0's there)."""
    names = sorted({k for s in states for k in s})
    return {k: torch.stack([s.get(k, theta0[k]) for s in states]).mean(0) for k in names}


def entity_spread(model, world, order: int) -> float:
    """The standard error of V's accuracy clustered by entity, after the reference attack on a copy of `model`."""
    attacked = copy.deepcopy(model)
    spec = protocol.REFERENCE
    redteam.attack_curve(attacked, spec, sealed(world), order, spec.steps, groups=scoring.DEV, fresh=True)
    return entity_se(scoring.mc_correct(attacked, scoring.world_mc(world, "V", "cloze")), world.items["V"])


def entity_se(correct: list[bool], items: list[dict]) -> float:
    """protocol.interval's clustered standard error with an entity, not a fact, as the cluster (a fact_id is
    "<entity>/<relation>"): how far another draw of as many entities would move the accuracy."""
    return protocol.clustered_se(correct, [it["fact_id"].split("/")[0] for it in items])[1]


def save_iterates(args: IteratesArgs, out: Path, last: int):
    """(world, θ0) of the candidate's stage 1; its TAR run's trained tensors saved at every step (run if missing)."""
    sargs = search.SearchArgs(runs=args.runs, domain=args.domain)
    stage1, overrides = search.parts(args.candidate)
    if overrides is None:
        raise cli.UserError(f"{args.candidate} is a stage 1, not a TAR candidate")
    world, base, theta0 = search.stage_one(sargs, stage1)
    cfg = search.tar_config(sargs, overrides)
    if last > cfg.outer_steps:
        raise cli.UserError(f"--windows: step {last} is past the candidate's N = {cfg.outer_steps}")
    if not (out / f"step_{cfg.outer_steps}.pt").exists():
        out.mkdir(parents=True, exist_ok=True)
        model, ref = copy.deepcopy(theta0), copy.deepcopy(theta0 if cfg.reference == "safeguard" else base)
        start = theta0.state_dict()  # an iterate keeps the tensors the outer step has moved off θ0

        def save(step, m):
            torch.save({n: t.detach().clone() for n, t in m.state_dict().items() if not torch.equal(t, start[n])},
                       out / f"step_{step}.pt")
        tar.train_tar(model, ref, world, cfg, out, log=print, on_step=save)
    return world, theta0


def iterates(args: IteratesArgs) -> None:
    torch.set_num_threads(1)
    spans = {spec: window(spec) for spec in args.windows}
    out = Path(args.runs) / args.domain / "iterates" / args.candidate
    world, theta0 = save_iterates(args, out, max(b for _, b in spans.values()))
    print("| window | order | V at rest | reference attack: max V | min G_dev |\n|---|---|---|---|---|")
    for spec, (a, b) in spans.items():
        model = copy.deepcopy(theta0)
        states = [torch.load(out / f"step_{t}.pt", weights_only=True) for t in range(a, b + 1)]
        model.load_state_dict(averaged(states, theta0.state_dict()), strict=False)
        for order in args.orders:
            e = selection.dev_evidence(model, world, seed=order)
            row = {"window": spec, "order": order, **{k: v for k, v in e.items() if k != "curve"},
                   "curve_V": [round(p["forget"], 4) for p in e["curve"]]}
            if args.spread:
                row["V_entity_sd"] = entity_spread(model, world, order)
            with open(out / "scores.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")
            spread = f" (± {row['V_entity_sd']:.1%} over V's entities)" if args.spread else ""
            print(f"| {spec} | {order} | {e['forget_V_rest']:.1%} | {e['forget_V_attacked']:.1%}{spread} | "
                  f"{e['G_dev_attacked']:.1%} |", flush=True)


def main(argv=None):
    cli.run(IteratesArgs, iterates, argv, __doc__.split("\n")[0])


if __name__ == "__main__":
    main()
