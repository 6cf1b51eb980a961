"""The outer step confined to the MLP neurons that recall the hazardous domain's facts (`--outer-params neurons`,
`neuron_outputs`), or to the hazardous domain's own word rows (`hazard_words`).

Not in the paper: Alg. 1 l.12 moves every weight. Search options of docs/search.md (rounds 21-26), for the
miniature world only. Trained on every MLP weight, TAR's state spreads to a benign family no loss reads
(docs/fact_entropy.py: the composers' facts end where L_TR drives the hazardous ones). Here the outer step may
only move the neurons that, in θ0, fire where a hazardous fact is recalled and not where a retained one is.

For layer ℓ and MLP neuron j, a_ℓj = act(W_gate x)_j · (W_up x)_j is its activation (the input of W_down), read
in θ0 at the positions whose next token is a fact value:

    s_ℓj = mean_{T's fact positions} |a_ℓj|  /  (mean_{the retain data's fact positions} |a_ℓj| + ε)

The k neurons of each layer with the largest s are trained: their rows of W_gate and W_up (what they read) and
their column of W_down (what they write), or with `--outer-params neuron_outputs` the column alone (when each
fires stays θ0's); every other coordinate of the outer gradient is zeroed before the outer step. Attacks still
move every weight. T and the retain data are what a defence may read (protocol v2); the composers (G) and V are
never looked at. `hazard_words` instead trains the embedding and LM-head rows of the words of T the retain data
never uses (`hazard_words+neuron_outputs`: those rows and the selected neurons' outputs); it leans on the
miniature's disjoint vocabularies (real hazardous text shares its words with general text), which is why these
options refuse --model.

Use:  masks = outer_masks(model, world, cfg)   # at θ0, before TAR's first step (None: --outer-params mlp or all)
      tar.outer_optimizer(model, cfg, masks)   # the optimizer holds the masks' tensors
      confine(masks)                           # after the outer gradient is complete, before the outer step
"""

from __future__ import annotations

import torch

from cli import UserError
from domains import CITIES, DOMAINS, RIVERS
from world import name_ids, value_ids

EPS = 1e-2  # ε of s: activations at fact positions are ~0.1-3 in the miniature; a silent neuron is not selective
ROWS = 256  # documents read per group (one forward each)


@torch.no_grad()
def fact_activations(model, tokens, values: torch.Tensor) -> torch.Tensor:
    """mean |a_ℓj| over the positions of `tokens`' first ROWS documents whose next token is in `values`: (L, I)."""
    mlps = [layer.mlp for layer in model.model.layers]
    acts = []
    hooks = [m.down_proj.register_forward_pre_hook(lambda _, inp: acts.append(inp[0])) for m in mlps]
    try:
        ids, mask = tokens.ids[:ROWS], tokens.mask[:ROWS]
        model(input_ids=ids, attention_mask=mask.long())
    finally:
        for h in hooks:
            h.remove()
    at = torch.zeros_like(mask)
    at[:, :-1] = torch.isin(ids[:, 1:], values) & mask[:, 1:]  # (B, T): the next token is a value
    if not at.any():
        raise UserError("--outer-params neurons: no fact positions in the documents read")
    return torch.stack([a[at].abs().mean(0) for a in acts])  # (L, I)


def selective_neurons(model, world, retain: str, k: int) -> torch.Tensor:
    """The k neurons per layer with the largest s (docstring): (L, k) indices, at the model's current weights."""
    tok = world.tokenizer
    hazardous = fact_activations(model, world.tokens["T"], value_ids(tok, DOMAINS[world.config.domain]))
    retained = fact_activations(model, world.tokens[retain], torch.cat([value_ids(tok, CITIES),
                                                                         value_ids(tok, RIVERS)]))
    if k > hazardous.shape[1]:
        raise UserError(f"--outer-neurons {k}: the MLPs have {hazardous.shape[1]} neurons per layer")
    return (hazardous / (retained + EPS)).topk(k, dim=1).indices


def gradient_masks(model, world, retain: str, k: int, reads: bool = True) -> dict:
    """{parameter: 0/1 mask of its shape}: the selected neurons' columns of W_down and, with `reads`, their rows of
    W_gate and W_up (reads=False: when each neuron fires stays θ0's; only what it writes moves)."""
    masks = {}
    for mlp, idx in zip((layer.mlp for layer in model.model.layers), selective_neurons(model, world, retain, k)):
        for p, dim in ((mlp.gate_proj.weight, 0), (mlp.up_proj.weight, 0), (mlp.down_proj.weight, 1)):
            masks[p] = torch.zeros_like(p)  # every MLP weight is an outer parameter: unselected ones are held
            if reads or p is mlp.down_proj.weight:
                masks[p].index_fill_(dim, idx.to(p.device), 1.0)
    return masks


def hazard_words(world, retain: str) -> torch.Tensor:
    """The tokens of T's documents that the retain data never uses, T's entity names excepted (S,): the domain's
    template words and values (a name of T would let L_TR hide x_TR's entities themselves, and E's are others)."""
    t, r = world.tokens["T"], world.tokens[retain]
    words = torch.unique(t.ids[t.mask])
    return words[~torch.isin(words, torch.cat([r.ids[r.mask], name_ids(world)]))]


def word_masks(model, world, retain: str) -> dict:
    """{parameter: mask}: the rows of the input embedding and of the LM head of `hazard_words` (untied here)."""
    words = hazard_words(world, retain)
    masks = {}
    for p in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
        masks[p] = torch.zeros_like(p)
        masks[p][words.to(p.device)] = 1.0
    return masks


def outer_masks(model, world, cfg) -> dict | None:
    """The masks of --outer-params (a TARConfig) at the model's weights, θ0; None where it trains whole tensors.
    Options joined by '+' train the union (their tensors are disjoint: word rows, MLP weights)."""
    if cfg.outer_params in ("mlp", "all"):
        return None
    masks = {}
    for option in cfg.outer_params.split("+"):
        masks |= (word_masks(model, world, cfg.retain_data) if option == "hazard_words" else
                  gradient_masks(model, world, cfg.retain_data, cfg.outer_neurons, option == "neurons"))
    return masks


def confine(masks: dict | None) -> None:
    """Zero every coordinate of the outer gradient outside `masks` (selected neurons or word rows; None: no-op)."""
    for p, m in (masks or {}).items():
        p.grad.mul_(m)
