"""Which weights the attacker relearns the hazardous facts through: the reference attack with the rest frozen.

A diagnostic for docs/search.md (round 25), not part of the method. The reference attack (protocol.REFERENCE:
AdamW 3e-4, 200 steps, data order seed 0) runs on a copy of each model in which only one group of weights may
move: every weight (as the red team attacks), every weight but the embedding and the LM head, those two alone, the
MLPs alone, attention alone. Forget on V and benign accuracy on G_dev are read every 25 steps; the world is sealed
as the search's (E, Re, G_test and N are never read).

Run:  python docs/relearned_through.py runs/bio/search/stage1/stage1_benign_lr_1e-3 runs/bio/search/<name>/tar
      (in the world the models were made in, from their provenance.json, as entity_transfer.py and fact_entropy.py)
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import adversary  # noqa: E402
import cli  # noqa: E402
from evaluate import miniature_world_of  # noqa: E402
from protocol import REFERENCE  # noqa: E402
from scoring import DEV, accuracies  # noqa: E402
from storage import load_model  # noqa: E402
from world import UNSEEN, build_world, sealed  # noqa: E402

EVERY = 25
TABLES = ("embed_tokens", "lm_head")
GROUPS = {  # what the attack may move -> which parameter names are in it
    "every weight": lambda name: True,
    "all but embedding, LM head": lambda name: not any(t in name for t in TABLES),
    "embedding, LM head": lambda name: any(t in name for t in TABLES),
    "MLPs": lambda name: ".mlp." in name,
    "attention": lambda name: ".self_attn." in name,
}


def attack_only(model, world, moves, spec=REFERENCE, seed: int = 0, measure=None) -> list[dict]:
    """`spec` on `model` in place, with only the weights whose names `moves` accepts trainable: V and G_dev (or
    `measure(model)`) at step 0 and every EVERY steps."""
    for name, p in model.named_parameters():
        p.requires_grad_(moves(name))
    torch.manual_seed(seed)
    measure = measure or (lambda m: accuracies(m, world, DEV))
    points = [measure(model)]
    adversary.attack(model, spec, adversary.attack_stream(spec, world.tokens, seed), every=EVERY,
                     callback=lambda k: points.append(measure(model)))
    return points


def parse_models(argv, doc: str, options: dict[str, str] | None = None) -> argparse.Namespace:
    """The diagnostics' command line: model directories, and `options` (--name -> help, each a path or ""); one
    torch thread."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("models", nargs="+", help="model directories (saved by tar.py, safeguard.py or search.py)")
    for name, text in (options or {}).items():
        ap.add_argument(f"--{name}", default="", help=text)
    torch.set_num_threads(1)
    return ap.parse_args(argv)


def models_world(*models: str):
    """The miniature world the models (empty names skipped) were made in, from their provenance.json (a world of
    --world-t-extra too); a real world, or models of two, is one error line."""
    return build_world(miniature_world_of({m: Path(m) for m in models if m}, "the diagnostics run"))


def main(argv=None):
    args = parse_models(argv, __doc__)
    world = sealed(models_world(*args.models), UNSEEN)
    steps = " / ".join(str(s) for s in range(0, REFERENCE.steps + 1, EVERY))
    print(f"| model | the attack moves | V at steps {steps} | G_dev, the same steps |\n|---|---|---|---|")
    for m in args.models:
        model = load_model(m)
        for group, moves in GROUPS.items():
            points = attack_only(copy.deepcopy(model), world, moves)
            print(f"| {m} | {group} | " + " / ".join(f"{p['forget']:.0%}" for p in points) + " | "
                  + " / ".join(f"{p['G']:.0%}" for p in points) + " |", flush=True)


if __name__ == "__main__":
    cli.main(main)
