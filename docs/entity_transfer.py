"""Does TAR's resistance carry to hazardous entities it never saw? The reference attack on other documents.

A diagnostic for docs/search.md (round 33), not part of the method. TAR attacks itself on T_inner (half of T's
entities) and reads its TR loss on T_tr (the other half); the red team's reference attack fine-tunes on A, entities
no defence ever reads. Here the reference attack (protocol.REFERENCE: AdamW 3e-4, 200 steps, data order seed 0)
fine-tunes each model on the documents of T_inner, T_tr, all of T, A's first or last half of entities, or all of
A, and V (the dev group) and G_dev are read every 25 steps (relearned_through.EVERY). With --theta0 it also
attacks θ0 carrying only one part of what TAR changed (the embedding and LM-head rows, or the MLPs' down
projections, what the defaults' outer step trains), to see which part resists. E, Re, G_test and N are never read.

Run:  python docs/entity_transfer.py runs/bio/tar [--theta0 runs/bio/safeguard] [--plot transfer.png]
      (each model in the world it was made in: its provenance.json; several may come from several worlds)
"""

from __future__ import annotations

import copy
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import cli  # noqa: E402
from protocol import HELD, REFERENCE  # noqa: E402
from relearned_through import EVERY, GROUPS, attack_only, models_world, parse_models  # noqa: E402
from storage import load_model  # noqa: E402
from world import UNSEEN, sealed  # noqa: E402

DATA = ("T_inner", "T_tr", "T", "A[:half]", "A[half:]", "A")
PARTS = {"word rows": lambda name: "embed_tokens" in name or "lm_head" in name,
         "neuron outputs": lambda name: "down_proj" in name}


def attack_on(world, data: str):
    """(the world, the reference attack) fine-tuning on `data`: a split, or half of A's entities (A's rows are its
    entities' documents in order, docs_per_entity each)."""
    if not data.startswith("A["):
        return world, replace(REFERENCE, data=data)
    a, cut = world.tokens["A"], len(world.entities["A"]) // 2 * world.config.docs_per_entity
    rows = slice(0, cut) if data == "A[:half]" else slice(cut, None)
    return replace(world, tokens={**world.tokens, data: a.take(rows)}), replace(REFERENCE, data=data)


def with_part(theta0, trained, keeps):
    """A copy of θ0 holding `trained`'s tensors where `keeps(name)`, θ0's elsewhere."""
    model, got = copy.deepcopy(theta0), dict(trained.named_parameters())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if keeps(name):
                p.copy_(got[name])
    return model


def plot(curves: dict[str, dict[str, list[float]]], path: Path) -> None:
    """One panel per model (two a row): V under the reference attack on each split (T's dashed, A's solid), and
    the 35% target."""
    import textwrap
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = (len(curves) + 1) // 2
    fig, axes = plt.subplots(rows, 2, figsize=(10, 3.6 * rows), sharey=True, squeeze=False)
    for ax, (label, by_data) in zip(axes.flat, curves.items()):
        for i, (data, v) in enumerate(by_data.items()):
            ax.plot(range(0, EVERY * len(v), EVERY), [100 * x for x in v], "--" if data.startswith("T") else "-",
                    color=f"C{i}", label=data)
        ax.axhline(100 * HELD, color="grey", lw=0.8)
        ax.set(xlabel="reference attack step", ylabel="forget on V (%)")
        ax.set_title(textwrap.fill(label, 55), fontsize=8)
    for ax in axes.flat[len(curves):]:
        ax.axis("off")
    axes.flat[0].legend(title="attacked on", fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    args = parse_models(argv, __doc__, {"theta0": "the model TAR started from: also attack it with one part of each "
                                                  "model's changes", "plot": "also draw V's curves here (a .png)"})
    steps = " / ".join(str(s) for s in range(0, REFERENCE.steps + 1, EVERY))
    print(f"| model | attacked on | V at steps {steps} | min G_dev |\n|---|---|---|---|")
    curves = {}  # label -> split -> V at each point
    for m in args.models:
        world, trained = models_world(m, args.theta0), load_model(m)  # each model in the world it was made in
        variants = {m: trained, **({f"{args.theta0} + {m}'s {part}": with_part(load_model(args.theta0), trained, keeps)
                                    for part, keeps in PARTS.items()} if args.theta0 else {})}
        for label, model in variants.items():
            for data in DATA:
                w, spec = attack_on(world, data)
                points = attack_only(copy.deepcopy(model), sealed(w, UNSEEN), GROUPS["every weight"], spec)
                curves.setdefault(f"{label} (T: {len(world.entities['T'])} entities)", {})[data] = \
                    [p["forget"] for p in points]
                print(f"| {label} | {data} | " + " / ".join(f"{p['forget']:.1%}" for p in points) +
                      f" | {min(p['G'] for p in points):.1%} |", flush=True)
    if args.plot:
        plot(curves, Path(args.plot))


if __name__ == "__main__":
    cli.main(main)
