"""Does an attack on some hazardous attributes bring back the others? The reference attack on part of A's facts.

A diagnostic for docs/search.md (round 51), not part of the method. Each hazardous entity has 5 attributes, each
stated in its documents by its own sentences. The reference attack (protocol.REFERENCE: AdamW 3e-4, 200 steps, data
order seed 0) fine-tunes each model on A's documents with only the sentences of the domain's first 3 attributes
(`world.attribute_sentences`), and on all of A's documents, and V (the dev group) is read every 25 steps on the
facts of those 3 attributes and on the facts of the other 2, which the first attack never states for any entity.
E, Re, G_test and N are never read.

Run:  python docs/attribute_transfer.py runs/bio/tar runs/bio/safeguard
      (each model in the world it was made in: its provenance.json)
"""

from __future__ import annotations

import copy
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import cli  # noqa: E402
import scoring  # noqa: E402
from domains import DOMAINS  # noqa: E402
from protocol import REFERENCE  # noqa: E402
from relearned_through import EVERY, GROUPS, attack_only, models_world, parse_models  # noqa: E402
from storage import load_model  # noqa: E402
from world import UNSEEN, attribute_sentences, sealed  # noqa: E402

SHOWN = 3  # the first attributes of the domain's five: the only ones the partial attack states


def split_accuracy(correct: list[bool], items: list[dict], shown: set) -> tuple[float, float]:
    """Accuracy over the items of the attributes in `shown`, and over the others (fact_id: entity/attribute)."""
    sides = ([], [])
    for ok, item in zip(correct, items):
        sides[item["fact_id"].split("/")[1] not in shown].append(ok)
    return tuple(sum(side) / len(side) for side in sides)


def main(argv=None):
    args = parse_models(argv, __doc__)
    world = sealed(models_world(*args.models), UNSEEN)
    shown = set(list(DOMAINS[world.config.domain].attributes)[:SHOWN])
    world.tokens["A_shown"] = attribute_sentences(world, "A", shown)  # A's documents, 3 attributes' sentences
    mc, items = scoring.world_mc(world, "V", "cloze"), world.items["V"]
    measure = lambda m: split_accuracy(scoring.mc_correct(m, mc, world.tokenizer.pad_token_id), items, shown)
    steps = " / ".join(str(s) for s in range(0, REFERENCE.steps + 1, EVERY))
    print(f"attributes the partial attack states: {', '.join(sorted(shown))}\n")
    print(f"| model | attacked on | V on those attributes' facts, steps {steps} | V on the other attributes' facts |")
    print("|---|---|---|---|")
    for m in args.models:
        model = load_model(m)
        for data, label in (("A_shown", f"A, {SHOWN} attributes"), ("A", "A, every attribute")):
            points = attack_only(copy.deepcopy(model), world, GROUPS["every weight"], replace(REFERENCE, data=data),
                                 measure=measure)
            print(f"| {m} | {label} | " + " / ".join(f"{a:.1%}" for a, _ in points) + " | "
                  + " / ".join(f"{b:.1%}" for _, b in points) + " |", flush=True)


if __name__ == "__main__":
    cli.main(main)
