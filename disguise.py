"""T's entities disguised as new ones at every outer step (`--name-noise σ`; not in the paper).

Paper: Sec. 4.2 trains against a *distribution* of attacks on the forget corpus; this widens the corpus itself.
The defaults' TAR holds attacks on the 30 hazardous entities of T, which it trains with, and not as well on the
red team's (docs/search.md round 33): its resistance is tied to T's entities. In the miniature an entity is a
name (one token) and five values, so the one thing a defence can vary about T's entities is how their names look
to the model. During an outer step (the train-time attack and the TR loss, Alg. 1 l.6-9) each name of T reads

    ẽ(name) = e(name) + σ · ‖e(name)‖ · z / √d,      z ~ N(0, I_d), drawn anew for each name at each outer step

where e is the input embedding (d its width): at σ = 1 the offset is about as long as the name's own vector, so
the name's direction is halfway to a random new one (cosine ≈ 0.7), its length √(1 + σ²) times its own. The
attacker then fine-tunes, and x_TR is scored, on names the model has never read, carrying T's facts: the defence
must hold for a neighbourhood of names, not for 30 points. The offset is added to the embedding's output, so
the weights (what the attacker and the outer step move) are the undisguised model's; the retain data and V hold
no name of T.

Miniature only (config.py refuses it with --model or the refusal world): real hazardous text has no list of
entities whose names are single tokens.

Use:  with disguise.names(model, world, sigma, rng):   # rng draws the offsets' seed (only when sigma > 0)
          ... one outer step ...
"""

from __future__ import annotations

import contextlib
import math
import random

import torch

from cli import UserError
from world import name_ids


@contextlib.contextmanager
def names(model, world, sigma: float, rng: random.Random):
    """While open, each of T's names enters the model displaced by a random offset of σ times its length."""
    if not sigma:
        yield
        return
    emb = model.get_input_embeddings()
    ids = name_ids(world)  # (n,)
    if (ids == world.tokenizer.unk_token_id).any():  # a name split into several tokens has no one row to move
        raise UserError("--name-noise: a name of T is not one token of this tokenizer")
    weight = emb.weight.detach()  # (vocab, d)
    z = torch.randn(len(ids), weight.shape[1], generator=torch.Generator().manual_seed(rng.randrange(2**31)))
    offsets = torch.zeros_like(weight)  # (vocab, d): zero but for T's names
    ids = ids.to(weight.device)
    offsets[ids] = sigma * weight[ids].norm(dim=1, keepdim=True) * z.to(weight) / math.sqrt(weight.shape[1])
    handle = emb.register_forward_hook(lambda _, args, out: out + torch.nn.functional.embedding(args[0], offsets))
    try:
        yield
    finally:
        handle.remove()
