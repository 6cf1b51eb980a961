"""Does TAR's resistance carry to hazardous entities it never saw? The reference attack on other documents.

A diagnostic for docs/search.md (round 33), not part of the method. TAR attacks itself on T_inner (half of T's
entities) and reads its TR loss on T_tr (the other half); the red team's reference attack fine-tunes on A, entities
no defence ever reads. Here the reference attack (protocol.REFERENCE: AdamW 3e-4, 200 steps, data order seed 0)
fine-tunes each model on the documents of T_inner, T_tr, all of T, A's first or last half of entities, or all of
A, and V (the dev group) and G_dev are read every 25 steps (relearned_through.EVERY). With --theta0 it also
attacks θ0 carrying only one part of what TAR changed (the embedding and LM-head rows, or the MLPs' down
projections, what the defaults' outer step trains), to see which part resists. E, Re, G_test and N are never read.

Run:  python docs/entity_transfer.py runs/bio/tar [--theta0 runs/bio/safeguard]   # the models' world (provenance)
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
from protocol import REFERENCE  # noqa: E402
from relearned_through import EVERY, GROUPS, attack_only, models_and_world  # noqa: E402
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


def main(argv=None):
    args, world = models_and_world(argv, __doc__, {"theta0": "the model TAR started from: also attack it with one "
                                                               "part of each model's changes"})
    steps = " / ".join(str(s) for s in range(0, REFERENCE.steps + 1, EVERY))
    print(f"| model | attacked on | V at steps {steps} | min G_dev |\n|---|---|---|---|")
    for m in args.models:
        trained = load_model(m)
        variants = {m: trained, **({f"{args.theta0} + {m}'s {part}": with_part(load_model(args.theta0), trained, keeps)
                                    for part, keeps in PARTS.items()} if args.theta0 else {})}
        for label, model in variants.items():
            for data in DATA:
                w, spec = attack_on(world, data)
                points = attack_only(copy.deepcopy(model), sealed(w, UNSEEN), GROUPS["every weight"], spec)
                print(f"| {label} | {data} | " + " / ".join(f"{p['forget']:.1%}" for p in points) +
                      f" | {min(p['G'] for p in points):.1%} |", flush=True)


if __name__ == "__main__":
    cli.main(main)
