"""The single-level safeguards TAR is compared against (paper Table 1; docs/baselines.md).

Each baseline is a forget term on hazardous text x_f plus a retain term on benign text x_r, trained without
an attacker by the one defence loop `safeguard.defend` (which calls the one fine-tuning loop). A `Method` is
that pair plus its tuning grid and the grid's pick (safeguard.py's `--grid`, by protocol v2's rule, selection.py:
lowest forget on the dev group V under the reference attack among the settings that keep G_dev within its bounds,
E and the other reported groups sealed away):

    max_entropy       maximise the entropy of the next-token distribution on forget text    + retain CE
    min_posterior     push p(true next token) on forget text to 0: −log(1 − p)              + retain CE
    llmu              gradient ascent on forget text + fit mismatched (wrong) facts          + KL to the original
    rmu               steer layer-ℓ activations of forget text to c·u, u a random unit vector + match them on retain
    repnoise          forget representations → Gaussian noise (MMD), forget loss up at every layer + retain CE
    circuit_breakers  reroute forget representations orthogonal to the original's (ReLU(cos)) + match on retain

and, beside them, UNDO (Lee et al. 2025; `UNDO`, one per baseline as its teacher): the unlearned teacher's weights
mixed with a random initialisation, θ_student = (1 − α)·θ_teacher + α·θ_init, then distilled from the teacher on
retain text alone, KL(p_teacher ‖ p_student): what the teacher only hid is not in the outputs it distils, so the
student never relearns it (no forget term). The Table 1 row without any defence loop, data filtering, is a
base pretrained without the hazardous domain (safeguard.BaseConfig(data="filtered")).

The loss functions themselves are in losses.py; the recipes are scaled to the 4-layer miniature model
(RMU's layer 7 of 32 -> 2, circuit breakers' layers 10 and 20 -> 2 and 3).

Use:  python safeguard.py --domain bio --method rmu        # runs/bio/baselines/rmu
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

import losses
from storage import digest


def forward(model, x, hidden=True):
    return model(input_ids=x.input_ids, attention_mask=x.attention_mask, output_hidden_states=hidden)


def ce(model, x):
    return losses.lm_loss(forward(model, x, False).logits, x.input_ids, x.attention_mask)


def _max_entropy(model, ref, xf, xr, cfg, ctx):
    logits = forward(model, xf, False).logits
    return cfg.coef * losses.entropy_tr_loss(logits, xf.attention_mask.bool()), ce(model, xr)


def _min_posterior(model, ref, xf, xr, cfg, ctx):
    logits = forward(model, xf, False).logits
    return cfg.coef * losses.min_posterior_loss(logits, xf.input_ids, xf.attention_mask), ce(model, xr)


def _llmu(model, ref, xf, xr, cfg, ctx):
    # forget input with its facts replaced by random retain-domain words: "forget input, wrong continuation"
    mismatched = xf.input_ids.clone()
    facts = torch.zeros_like(xf.fact_mask)
    facts[:, 1:] = xf.fact_mask[:, :-1]  # the value tokens themselves
    pool = ctx["retain_values"]
    mismatched[facts] = pool[torch.randint(len(pool), (int(facts.sum()),), generator=ctx["gen"])]
    forget = -ce(model, xf) + losses.lm_loss(model(input_ids=mismatched, attention_mask=xf.attention_mask).logits,
                                              mismatched, xf.attention_mask)
    # deviation: LLMU's own KL(p_ref ‖ p_θ) retain term (official TAR code: retain CE) because the baseline
    # should be the method as its authors define it.
    return cfg.coef * forget, kl_to(ref, model, xr)


def kl_to(ref, model, x):
    """KL(p_ref ‖ p_θ) on x's real tokens, the frozen `ref` under no_grad: LLMU's retain term, UNDO's distillation."""
    with torch.no_grad():
        ref_logits = forward(ref, x, False).logits
    return losses.kl_to_reference(forward(model, x, False).logits, ref_logits, x.attention_mask)


def _rmu(model, ref, xf, xr, cfg, ctx):
    layer = ctx["rmu_layer"]  # hidden_states index ℓ: the output of decoder layer ℓ
    forget = losses.rmu_forget_loss(forward(model, xf).hidden_states[layer], cfg.coef * ctx["u"], xf.attention_mask)
    with torch.no_grad():
        ref_h = forward(ref, xr).hidden_states[layer]
    retain = losses.rmu_retain_loss(forward(model, xr).hidden_states[layer], ref_h, xr.attention_mask)
    return forget, cfg.alpha * retain


def _repnoise(model, ref, xf, xr, cfg, ctx):
    out_f = forward(model, xf)
    hidden = out_f.hidden_states[1:]
    norm, head = model.base_model.norm, model.get_output_embeddings()
    lens = [head(norm(h)) for h in hidden[:-1]] + [out_f.logits]  # logit lens; the last state is already normed
    forget = losses.repnoise_forget_loss(hidden, lens, xf.input_ids, xf.attention_mask, beta=cfg.coef, alpha=1.0,
                                         generator=ctx["gen"])
    return forget, ce(model, xr)


def _circuit_breakers(model, ref, xf, xr, cfg, ctx):
    layers = ctx["cb_layers"]
    progress = ctx["step"] / (2 * cfg.steps)  # c_rr = a(1 − s/2S), c_ret = a·s/2S   (Zou et al.)
    out_f, out_r = forward(model, xf), forward(model, xr)
    with torch.no_grad():
        ref_f, ref_r = forward(ref, xf), forward(ref, xr)
    forget = sum(losses.circuit_breaker_forget_loss(out_f.hidden_states[ell], ref_f.hidden_states[ell],
                                                    xf.attention_mask) for ell in layers)
    retain = losses.hidden_distance([out_r.hidden_states[ell] for ell in layers],
                                    [ref_r.hidden_states[ell] for ell in layers], xr.attention_mask, squared=False)
    return cfg.coef * (1 - progress) * forget, cfg.coef * progress * retain


def _undo(model, ref, xf, xr, cfg, ctx):
    return torch.zeros(()), kl_to(ref, model, xr)  # `ref` is the teacher


def start_dir(teacher: str, run_dir: Path) -> Path:
    """Where a defence starts: the cached base, or (UNDO) its teacher's trained model."""
    return run_dir / (f"baselines/{teacher}" if teacher else "base")


def fresh_init(model, seed: int):
    """θ_init: a new random initialisation of `model`'s architecture, from a seed of its own (the base was drawn
    from `seed` itself: its starting point is no fresh one)."""
    torch.manual_seed(int(digest("undo", seed), 16) % 2**31)
    return type(model)(model.config)


def perturb(student, alpha: float, seed: int) -> None:
    """UNDO's noise: θ_student ← (1 − α)·θ_student + α·θ_init, in place, θ_init = fresh_init(student, seed)."""
    with torch.no_grad():
        for p, q in zip(student.parameters(), fresh_init(student, seed).parameters(), strict=True):
            p.mul_(1 - alpha).add_(q, alpha=alpha)


def _mlps_of_first_two_layers(model):
    """RMU trains only the MLPs of layers ℓ−2..ℓ (WMDP: 5-7 of 32); scaled to 4 layers: layers 1-2."""
    return [p for layer in model.base_model.layers[:2] for p in layer.mlp.parameters()]


@dataclass(frozen=True)
class Method:
    terms: object  # (model, ref, x_f, x_r, cfg, ctx) -> (forget term, retain term)
    coef: str  # what SafeguardConfig.coef means for this method
    grid: dict  # the tuning grid (lr x steps x coefficients), docs/baselines.md
    picked: dict  # the grid's pick by protocol v2's rule: the defaults
    trainable: object = None  # model -> the parameters it trains (None: all)
    teacher: str = ""  # UNDO: the baseline it distils (its model, perturbed, is the start; the reference is it)
    grid_steps: tuple = (150, 300)  # the step counts each grid setting is measured at
    by_length: bool = False  # its loss reads the run's length (a schedule): each step count is a run of its own


LRS = (1e-4, 3e-4, 1e-3)
# `picked` = the grid's pick on bio by protocol v2's rule (runs/bio/baselines/grid.json, 2026-12-04, on base B: the
# base older AMD EPYCs pretrain, bitwise, each CPU model drawing its own; 42 settings x {150, 300} steps, 48 min on 2
# cores; docs/baselines.md), with its dev evidence in the comment: V at rest / its peak under the reference attack,
# G_dev at rest / lowest under it. Every method had admissible settings. Where a run directory's grid.json was chosen
# from the very base a method starts from, safeguard.py trains that grid's pick instead (grid.pick_for).
BASELINES: dict[str, Method] = {
    "max_entropy": Method(_max_entropy, "weight of the entropy term", dict(lr=LRS, coef=(1.0, 4.0)),
                          dict(lr=1e-3, steps=300, coef=4.0)),  # V 61.5% / 94.0%, G_dev 91.5% / 91.5%
    "min_posterior": Method(_min_posterior, "weight of the forget term", dict(lr=LRS, coef=(1.0, 4.0)),
                            dict(lr=1e-3, steps=300, coef=4.0)),  # V 43.5% / 89.7%, G_dev 97.5% / 95.5%
    "llmu": Method(_llmu, "weight of the gradient-ascent + mismatch term", dict(lr=LRS, coef=(0.5, 1.0)),
                   dict(lr=3e-4, steps=300, coef=1.0)),  # V 20.5% / 88.2%, G_dev 89.0% / 87.0%
    "rmu": Method(_rmu, "steering coefficient c (alpha: retain weight α)",
                  dict(lr=LRS, coef=(5.0, 20.0), alpha=(10.0, 100.0)), dict(lr=1e-3, steps=300, coef=5.0, alpha=10.0),
                  _mlps_of_first_two_layers),  # V 63.8% / 97.3%, G_dev 97.8% / 97.8%
    "repnoise": Method(_repnoise, "β, the weight of the noise (MMD) term", dict(lr=LRS, coef=(1e-3, 1e-1)),
                       dict(lr=3e-4, steps=300, coef=0.1)),  # V 25.8% / 87.0%, G_dev 85.8% / 85.8%
    "circuit_breakers": Method(_circuit_breakers, "a, the scale of the rerouting schedule",
                               dict(lr=LRS, coef=(1.0, 10.0)), dict(lr=1e-3, steps=150, coef=1.0),
                               by_length=True),  # V 35.3% / 96.7%, G_dev 97.8% / 97.8%
}
# UNDO, scaled to the miniature (Lee et al. distil for a share of pretraining's compute, α their main knob): 500
# distillation steps, a quarter of the base's 2000, at lr 1e-3 (the base's peak is 2e-3), batch 32, on Rt and U
# (the retain text a defence may read; never G), α = 0.5; its grid is α at 250 and 500 steps, from the teacher
# trained first (python safeguard.py --method <teacher>). On bio from RepNoise (the rule's first, on bases C
# and B) no α kept G_dev within the bounds (docs/baselines.md): α stays the recipe's.
UNDO: dict[str, Method] = {
    f"undo_{name}": Method(_undo, "α, the share of random initialisation in the student", dict(coef=(0.25, 0.5, 0.75)),
                           dict(lr=1e-3, steps=500, coef=0.5, retain="benign"), teacher=name, grid_steps=(250, 500))
    for name in BASELINES}
