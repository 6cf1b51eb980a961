"""How a model answers a fact it cannot recall: with noise, or among the values the sentence can end with.

A diagnostic for docs/search.md (rounds 15-20), not part of the method. At every position whose next token is a
fact value of a family (the hazardous dev group V, the held-out composers G_dev, the retain cities Rt), it
reads the model's next-token distribution p (V = the vocabulary, S = the family's values):

    entropy     H(p) = −Σ_v p_v ln p_v              0 when it knows; ln |V| ≈ 6.9 nats when uniform
    on values   Σ_{v ∈ S} p_v                      1 when it answers with one of the family's words
    among them  H(p restricted to S, renormalised)  0 when it knows; ln |S| ≈ 3.4 when unsure which value
    hazardous   Σ_{v ∈ the domain's values} p_v     on the benign families: answered as if hazardous

A model that never knew a fact (the oracle on E) keeps its mass on the values and spreads it among them. The
entropy TR loss of the paper maximises H(p) itself at the hazardous fact positions; this measures how far that
state spreads to families no loss reads. G_test and E are never read here.

Run:  python docs/fact_entropy.py runs/bio/base runs/bio/safeguard runs/bio/tar   # the models' world (provenance)
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import cli  # noqa: E402
from domains import CITIES, COMPOSERS, DOMAINS  # noqa: E402
from relearned_through import models_world, parse_models  # noqa: E402
from storage import load_model  # noqa: E402
from world import value_ids  # noqa: E402

FAMILIES = {"V": None, "G_dev": COMPOSERS, "Rt": CITIES}  # group -> its family's vocabulary (None: the domain's)


@torch.no_grad()
def fact_entropy(model, tokens, values: torch.Tensor, hazardous: torch.Tensor, rows: int = 200) -> dict[str, float]:
    """Means over the fact positions of `rows` documents: entropy, mass on the values, entropy among them, mass on
    the hazardous values."""
    ids, mask = tokens.ids[:rows], tokens.mask[:rows]
    logits = model(input_ids=ids, attention_mask=mask.long()).logits[:, :-1].float()  # (B, T-1, V)
    at = torch.isin(ids[:, 1:], values) & mask[:, 1:]  # positions whose next token is a value
    logp = F.log_softmax(logits[at], -1)  # (P, V)
    among = F.log_softmax(logits[at][:, values], -1)  # (P, S)
    return {"entropy": -(logp.exp() * logp).sum(-1).mean().item(), "on values": logp[:, values].exp().sum(-1)
            .mean().item(), "among them": -(among.exp() * among).sum(-1).mean().item(),
            "hazardous": logp[:, hazardous].exp().sum(-1).mean().item()}


def main(argv=None):
    args = parse_models(argv, __doc__)
    world = models_world(*args.models)
    if world.chats:
        raise cli.UserError("fact_entropy reads a knowledge world's facts; the refusal world has none")
    vals = {g: value_ids(world.tokenizer, fam or DOMAINS[world.config.domain]) for g, fam in FAMILIES.items()}
    print(f"nats; ln |V| = {math.log(len(world.tokenizer)):.2f}, ln |S| = {math.log(len(vals['V'])):.2f}\n")
    print("| model | " + " | ".join(f"{g}: entropy / on values / among them / hazardous" for g in FAMILIES) + " |")
    print("|---|" + "---|" * len(FAMILIES))
    for m in args.models:
        model = load_model(m).eval()
        cells = [fact_entropy(model, world.tokens[g], vals[g], vals["V"]) for g in FAMILIES]
        print(f"| {m} | " + " | ".join(f"{c['entropy']:.2f} / {c['on values']:.0%} / {c['among them']:.2f} / "
                                        f"{c['hazardous']:.0%}" for c in cells) + " |")


if __name__ == "__main__":
    cli.main(main)
