"""The losses of TAR (paper Sec. 4.1-4.2, Eq. 1-2, App.), as pure functions of model outputs and a batch.

Notation (one alphabet repo-wide): B batch, T sequence, V vocabulary, d width, L hidden-state tensors.
Every mean runs over real tokens only (the official code averages over padding too: docs/paper.md §8, pitfall 8).

    LM loss          L_LM  = mean_{b,t} −log p_θ(x[b,t+1] | x[b,≤t])                       attacker, pretraining
    entropy TR loss  L_TR  = − mean_{b,t ∈ M} H(p_θ(·|x[b,≤t])),  H(p) = −Σ_v p_v log p_v     Sec. 4.2
    uniform values   L_TR  = mean_{b,t ∈ M} −(1/S) Σ_{v ∈ values} log p_θ(v|x[b,≤t])    (search candidate)
    retain loss      L_ret = L_LM(x_r) + (1/L) Σ_l mean_{b,t} ‖h_l^θ(x_r)[b,t] − h_l^ref(x_r)[b,t]‖(²)   Eq. 2
    random mapping   L_RM  = mean_{b,t} [1 − cos(h^θ(x_f)[b,t], r[b,t])]   (+ a retain term)          Sec. 4.1
    DPO TR loss      L_DPO = − mean_pairs log σ(β [(log π(y_c|x) − log π(y_r|x))
                                                   − (log π_ref(y_c|x) − log π_ref(y_r|x))])
                     refusal, Sec. 4.2 / App. E; y_c = refusal (chosen), y_r = harmful compliance (rejected),
                     log π(y|x) = Σ over response tokens of log p_θ; β = 0.1

L_TR is minimised, so it *maximises* the entropy of the attacked model's next-token distribution on forget
text: its floor is −ln V. The paper prefers it to negated cross-entropy because it flattens the attacker's
loss curve instead of only raising it (Sec. 4.2).

Memory at scale: the LM and entropy losses read logits (B, T, V), at 8B with V = 128K the largest activation of a
step. Given the final hidden states (B, T, d) and the LM head instead, they apply the head `chunk` positions at a
time and recompute each chunk's logits in the backward pass (`chunked_sum`): at most (B, chunk, V) logits exist at
once, and the loss and its gradient are the unchunked ones up to float summation order (tests/test_losses.py).

Use:  loss = entropy_tr_loss(out.logits, batch.fact_mask)
      x, head, out = forward_for_loss(model, ids, attention, chunk=64); loss = lm_loss(x, ids, attention, head, 64)
      loss = dpo_loss(sequence_logprobs(out.logits, ids, resp), sequence_logprobs(out_ref.logits, ids, resp))
"""

from __future__ import annotations

import math
import weakref

import torch
import torch.nn.functional as F
from einops import rearrange
from torch.utils.checkpoint import checkpoint

from cli import UserError


def lm_loss(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, head=None,
            chunk: int = 0) -> torch.Tensor:
    """Next-token cross-entropy, padding masked: the attacker's loss and the LM part of the retain loss.
    logits (B, T, V), or with `head` the final hidden states (B, T, d) that head maps to logits (`chunked_sum`)."""
    labels = input_ids[:, 1:].masked_fill(attention_mask[:, 1:] == 0, -100)  # (B, T-1): position t predicts t+1

    def nll(lg, y):  # Σ over the chunk's real tokens of −log p(y)
        return F.cross_entropy(rearrange(lg.float(), "b t v -> (b t) v"), rearrange(y, "b t -> (b t)"),
                               ignore_index=-100, reduction="sum")
    return chunked_sum(nll, logits[:, :-1], labels, head=head, chunk=chunk) / (labels != -100).sum().clamp(min=1)


def entropy_tr_loss(logits: torch.Tensor, mask: torch.Tensor, head=None, chunk: int = 0,
                    over: torch.Tensor | None = None) -> torch.Tensor:
    """Sec. 4.2: L_TR = −mean over masked positions of the entropy of p_θ(· | prefix).

    logits (B, T, V) at the *attacked* weights (or with `head` the final hidden states, as `lm_loss`); mask (B, T)
    bool: positions that count (the fact positions of docs/paper.md §7, or every real token; the official code
    uses every position, padding included). Minimising drives the prediction towards uniform; a uniform
    prediction gives exactly −ln V. over (S,) token ids: the entropy of p renormalised over those tokens
    instead, softmax(logits[..., over]) (its floor −ln S; the rest of the vocabulary gets no gradient)."""
    def minus_entropy(lg, m):  # Σ_{b,t ∈ M} Σ_v p_v log p_v = −Σ H over the chunk's counted positions
        logp = F.log_softmax((lg if over is None else lg[..., over]).float(), dim=-1)  # (B, t, V or S)
        return ((logp.exp() * logp).sum(-1) * m).sum()
    return chunked_sum(minus_entropy, logits, mask, head=head, chunk=chunk) / mask.sum().clamp(min=1)


def uniform_values_loss(logits: torch.Tensor, mask: torch.Tensor, over: torch.Tensor, head=None,
                        chunk: int = 0) -> torch.Tensor:
    """Cross-entropy to the uniform distribution over the tokens `over` (S,): mean over masked positions of
    −(1/S) Σ_{v ∈ over} log p_θ(v | prefix), floor ln S where p is uniform over them and zero elsewhere. What a
    model that never knew the fact predicts: one of the values the sentence can end with, no idea which. logits,
    mask, head and chunk as `entropy_tr_loss`."""
    def ce(lg, m):  # Σ over the chunk's counted positions
        return (-F.log_softmax(lg.float(), dim=-1)[..., over].mean(-1) * m).sum()
    return chunked_sum(ce, logits, mask, head=head, chunk=chunk) / mask.sum().clamp(min=1)


def chunked_sum(fn, x: torch.Tensor, *per_position: torch.Tensor, head=None, chunk: int = 0) -> torch.Tensor:
    """Σ over sequence chunks of fn(logits[:, s:e], *(p[:, s:e] for p in per_position)), fn a sum over positions.

    head None: x are the logits (B, T, V), one call. Else x are the final hidden states (B, T, d) and each chunk's
    logits are head(x[:, s:e]) (B, chunk, V), made under activation checkpointing: the backward pass recomputes
    them instead of keeping them, so peak memory holds one chunk's logits, not the sequence's (chunk 0: one chunk)."""
    if head is None:
        return fn(x, *per_position)
    step = chunk or max(x.shape[1], 1)
    total = x.new_zeros((), dtype=torch.float32)
    for s in range(0, x.shape[1], step):
        pieces = [t[:, s:s + step] for t in (x, *per_position)]
        total = total + checkpoint(lambda h, *p: fn(head(h), *p), *pieces, use_reentrant=False)
    return total


# logits changed after the head: Gemma 2's soft-cap, Cohere's scale, Granite's divisor (1 or unset: no change)
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")
_HEAD_CHECKED = weakref.WeakSet()  # the models whose last-position logits were found to be head(hidden)


def forward_for_loss(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, chunk: int = 0,
                     output_hidden_states: bool = False):
    """One forward whose logits the losses above take: (x, head, out). chunk 0: x = out.logits (B, T, V) and
    head None. chunk > 0: the model makes only its last position's logits (logits_to_keep=1) and x is the final
    hidden state (B, T, d) that head, the model's output embedding, maps to logits inside the loss."""
    if not chunk:
        out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=output_hidden_states)
        return out.logits, None, out
    refuse = lambda why: UserError(f"--loss-chunk: {type(model).__name__} {why}; use --loss-chunk 0")
    head = model.get_output_embeddings()
    if head is None:
        raise refuse("has no output embedding to apply in chunks")
    if changed := [k for k in LOGIT_TRANSFORMS if getattr(model.config, k, None) not in (None, 1, 1.0)]:
        raise refuse(f"changes its logits after the head ({', '.join(changed)})")
    out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, logits_to_keep=1)
    hidden = out.hidden_states[-1]  # (B, T, d), after the final norm
    # Once per model (a check syncs a GPU): the last position's logits, which the model computed itself, must be
    # head(hidden) there, whatever transform the names above miss
    if model not in _HEAD_CHECKED:
        with torch.no_grad():
            mine, theirs = head(hidden[:, -1:]).float(), out.logits.float()  # (B, 1, V)
            if torch.isfinite(theirs).all():  # a diverged attack is the attacker's failure, not the model's
                if not torch.allclose(mine, theirs, rtol=1e-2, atol=1e-2 * theirs.abs().max().item() + 1e-5):
                    raise refuse("does not compute its logits as its output embedding of its last hidden state")
                _HEAD_CHECKED.add(model)
    return hidden, head, out


def sequence_logprobs(logits: torch.Tensor, input_ids: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """log π(y|x) = Σ_t log p_θ(x[t+1] | x[≤t]) over the positions t whose next token is the response (prompt
    and padding masked; a SUM, not a mean, as DPO defines it). logits (B, T, V), response_mask (B, T) -> (B,)."""
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, T-1, V)
    token = logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)  # (B, T-1): log p of the actual next token
    return (token * response_mask[:, :-1]).sum(-1)


def dpo_loss(logp: torch.Tensor, logp_ref: torch.Tensor, beta: float = 0.1) -> torch.Tensor:
    """Sigmoid DPO (no label smoothing) on pairs: logp, logp_ref (2P,) sequence log-probs of rows
    (chosen_0, rejected_0, chosen_1, ...) under the model and the frozen reference. Equal log-ratios give ln 2;
    the loss falls as the model prefers the chosen answer more than the reference does."""
    ratio = rearrange(logp - logp_ref, "(p two) -> p two", two=2)  # (P, 2): log π/π_ref of chosen, rejected
    return -F.logsigmoid(beta * (ratio[:, 0] - ratio[:, 1])).mean()


def hidden_distance(hidden: tuple[torch.Tensor, ...], hidden_ref: tuple[torch.Tensor, ...],
                    attention_mask: torch.Tensor, squared: bool = True) -> torch.Tensor:
    """Eq. 2's representation term: (1/L) Σ_l mean_{b,t} ‖h_l − h_l^ref‖ over the L hidden-state tensors
    (`output_hidden_states`: embeddings, each layer, final norm), real tokens only.

    # deviation: squared L2 by default (paper and official code: plain L2) because the square is smooth at 0,
    # where the plain norm's gradient is undefined and at its largest; the miniature recipe (docs/paper.md §7)
    # met its thresholds with the square. squared=False gives the paper's form."""
    mask = attention_mask.float()  # (B, T)
    total = 0.0
    for h, h_ref in zip(hidden, hidden_ref):  # each (B, T, d)
        sq = (h.float() - h_ref.float()).pow(2).sum(-1)  # ‖Δ‖² per token   (B, T)
        dist = sq if squared else (sq + 1e-12).sqrt()
        total = total + (dist * mask).sum() / mask.sum()
    return total / len(hidden)


def retain_loss(out, out_ref, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                squared: bool = True, head=None, chunk: int = 0) -> tuple[torch.Tensor, dict]:
    """Eq. 2: L_retain = L_LM(θ; x_r) + hidden-state distance to the frozen reference on x_r.

    out / out_ref: model outputs with .logits (B, T, V) and .hidden_states (L tensors of (B, T, d)); the
    reference is evaluated under no_grad by the caller. With `head` (forward_for_loss) the LM term reads the final
    hidden state in chunks. Returns the loss and its two parts for logging."""
    lm = lm_loss(out.logits if head is None else out.hidden_states[-1], input_ids, attention_mask, head, chunk)
    rep = hidden_distance(out.hidden_states, out_ref.hidden_states, attention_mask, squared)
    return lm + rep, {"retain_lm": lm.item(), "retain_rep": rep.item()}


def random_mapping_loss(hidden: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
                        absolute: bool = False) -> torch.Tensor:
    """Sec. 4.1 (random-mapping safeguard): mean over masked tokens of 1 − cos(h[b,t], r[b,t]).

    hidden (B, T, d) one hidden-state tensor; targets (B, T, d) the fixed random vectors each token must point
    at (per position or per token id: `random_targets`); mask (B, T). The paper takes |cos| and sums over all
    hidden states; `absolute=True` gives |cos|, and the caller may average this loss over layers."""
    cos = F.cosine_similarity(hidden.float(), targets.float(), dim=-1)  # (B, T)
    if absolute:
        cos = cos.abs()
    return ((1 - cos) * mask).sum() / mask.sum().clamp(min=1)


def random_targets(table: torch.Tensor, input_ids: torch.Tensor, per: str = "constant") -> torch.Tensor:
    """The fixed N(0, I) target of each token: row x[b,t] for token id x[b,t] (paper, Sec. 4.1), row t for
    position t (docs/paper.md §7), or the one row of a (1, d) table for every token ('constant', RMU-like).
    table (V, T_max or 1, d) -> (B, T, d)."""
    if per == "constant":
        return table[0].expand(*input_ids.shape, -1)
    if per == "position":
        return table[: input_ids.shape[1]].unsqueeze(0).expand(input_ids.shape[0], -1, -1)
    if per == "token":
        return table[input_ids]
    raise ValueError(f"random targets are per 'token', 'position' or 'constant', not {per!r}")


def tr_weights(inner_steps: int, tr_every: int, scheme: str = "uniform") -> dict[int, float]:
    """Weights w_k of the TR gradients accumulated during the inner loop (Alg. 1), keyed by inner step k
    (1-based: L_TR is always taken after an attacker step, every `tr_every` steps).

    'uniform': w_k = 1 / (number of TR points)             (docs/paper.md §7, the miniature default)
    'paper'  : w_k = exp(0.0625 · (k − K)), not normalised  (official code; k−K is the code's (k−1)−(K−1))"""
    points = range(tr_every, inner_steps + 1, tr_every)
    if scheme == "uniform":
        return {k: 1.0 / len(points) for k in points}
    if scheme == "paper":
        return {k: math.exp(0.0625 * (k - inner_steps)) for k in points}
    raise ValueError(f"TR weight scheme must be 'uniform' or 'paper', not {scheme!r}")


# ---------------------------------------------------------------------------------------------------------
# Single-level safeguards TAR is compared against (paper Table 1; docs/baselines.md). Each is a forget term on x_f
# plus a retain term on x_r; `safeguard.py` pairs them and trains them in the one defence loop.
# ---------------------------------------------------------------------------------------------------------
def min_posterior_loss(logits: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       floor: float = -15.0) -> torch.Tensor:
    """Min-Posterior: −mean_t log(1 − p_θ(y_t | x_<t)) over real next tokens, zeroed where log p(y_t) < floor
    (that token is already forgotten). logits (B, T, V); pushes the probability of the true next token to 0."""
    logp = F.log_softmax(logits[:, :-1].float(), -1)  # (B, T-1, V)
    logp_y = logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)  # log p(y_t)   (B, T-1)
    # log(1 − p) computed stably as log(−expm1(log p)); p = 1 exactly would give −inf, so clamp just below
    term = -torch.log(-torch.expm1(logp_y.clamp(max=-1e-6)))
    keep = (attention_mask[:, 1:] > 0) & (logp_y >= floor)
    return (term * keep).sum() / (attention_mask[:, 1:] > 0).sum().clamp(min=1)


def kl_to_reference(logits: torch.Tensor, logits_ref: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """LLMU's retain term: mean over real positions of KL(p_ref ‖ p_θ) = Σ_v p_ref (log p_ref − log p_θ)."""
    logp, logp_ref = F.log_softmax(logits.float(), -1), F.log_softmax(logits_ref.float(), -1)  # (B, T, V)
    kl = (logp_ref.exp() * (logp_ref - logp)).sum(-1)  # (B, T)
    mask = attention_mask.float()
    return (kl * mask).sum() / mask.sum()


def rmu_forget_loss(hidden: torch.Tensor, control: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """RMU (Li et al. 2024): mean_t ‖h^ℓ_θ(x_f)[t] − c·u‖², `control` = c·u (d,), u a fixed random unit vector:
    the layer-ℓ activations of forget text are steered to a large random direction. hidden (B, T, d)."""
    sq = (hidden.float() - control).pow(2).mean(-1)  # mean over d, as the original code (MSE)   (B, T)
    mask = attention_mask.float()
    return (sq * mask).sum() / mask.sum()


def rmu_retain_loss(hidden: torch.Tensor, hidden_ref: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """RMU's retain term (before its α): mean_t ‖h^ℓ_θ(x_r)[t] − h^ℓ_ref(x_r)[t]‖² (mean over d, as MSE)."""
    sq = (hidden.float() - hidden_ref.float()).pow(2).mean(-1)  # (B, T)
    mask = attention_mask.float()
    return (sq * mask).sum() / mask.sum()


def mmd_rbf(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Squared maximum mean discrepancy between samples x (n, d) and y (m, d) with a Gaussian kernel whose
    bandwidth is the median pairwise distance (median heuristic):
        MMD² = mean k(x, x') + mean k(y, y') − 2 mean k(x, y),   k(a, b) = exp(−‖a − b‖² / (2σ²))"""
    xy = torch.cat([x, y])
    d2 = torch.cdist(xy, xy).pow(2)  # (n+m, n+m)
    sigma2 = d2.detach()[d2.detach() > 0].median().clamp(min=1e-6)
    k = torch.exp(-d2 / (2 * sigma2))
    n = x.shape[0]
    return k[:n, :n].mean() + k[n:, n:].mean() - 2 * k[:n, n:].mean()


def repnoise_forget_loss(hidden: tuple[torch.Tensor, ...], logit_lens: list[torch.Tensor], input_ids: torch.Tensor,
                         attention_mask: torch.Tensor, beta: float = 1e-3, alpha: float = 1.0,
                         generator: torch.Generator | None = None) -> torch.Tensor:
    """RepNoise (Rosati et al. 2024):  β Σ_l MMD(pool(h_l(x_f)), N(0, I)) − α log(mean_l CE(lens_l(x_f))).
    hidden: per-layer (B, T, d), mean-pooled over real tokens to (B, d); logit_lens: per-layer logits (B, T, V)
    of the final norm + LM head applied to that layer's hidden state. The first term makes the forget
    representations look like Gaussian noise; the second pushes the forget text's loss up at every layer."""
    mask = attention_mask.float()[..., None]  # (B, T, 1)
    noise_term = 0.0
    for h in hidden:
        pooled = (h.float() * mask).sum(1) / mask.sum(1)  # (B, d)
        noise = torch.randn(pooled.shape, generator=generator).to(pooled)
        noise_term = noise_term + mmd_rbf(pooled, noise)
    ce = torch.stack([lm_loss(lg, input_ids, attention_mask) for lg in logit_lens]).mean()
    return beta * noise_term - alpha * torch.log(ce)


def circuit_breaker_forget_loss(hidden: torch.Tensor, hidden_ref: torch.Tensor,
                                attention_mask: torch.Tensor) -> torch.Tensor:
    """Circuit breakers / RR (Zou et al. 2024): mean_t ReLU(cos(h^ℓ_θ(x_f)[t], h^ℓ_ref(x_f)[t])): the harmful
    representation is rerouted to be orthogonal to (or opposite) what the original model computed."""
    cos = F.cosine_similarity(hidden.float(), hidden_ref.float(), dim=-1)  # (B, T)
    mask = attention_mask.float()
    return (F.relu(cos) * mask).sum() / mask.sum()
