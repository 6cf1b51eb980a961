# %% [markdown]
# # TAR, one cell at a time
#
# A walkthrough of *Tamper-Resistant Safeguards for Open-Weight LLMs* (Tamirisa et al. 2024) on this
# repository's miniature world, to read beside the paper and [paper.md](paper.md). Every step below calls
# the repository's own code; each markdown cell names the file and function that implements it.
#
# The story, in six sections:
#
# 1. a small world of invented hazardous and benign facts (`world.py`);
# 2. a tiny base model that learns all of them (`safeguard.py`, `adversary.py`);
# 3. the initial safeguard (Alg. 1 l.1): it hides the hazardous facts at rest, but a short fine-tuning
#    attack brings them back;
# 4. one outer step of Alg. 1 (l.3-12) taken apart by hand, then checked against `tar.outer_step`;
# 5. a short TAR run (`tar.train_tar`, Alg. 1 l.2);
# 6. the same attack on the TAR model.
#
# Everything is shrunk so the notebook runs top to bottom in under 3 minutes on one CPU core: a world of
# 8 entities per group instead of 30, a 2-layer width-64 model instead of 4 layers and width 128, K = 16
# attacker steps per outer step instead of 64, 40 outer steps instead of 150. The full-size numbers are in
# [results.md](results.md).
#
# It is also a plain script: `python docs/walkthrough.py` from anywhere. Figures go to the folder named by
# the environment variable `WALKTHROUGH_OUT` (default `runs/walkthrough/`, which git ignores). To open it as
# a notebook: `jupytext --to ipynb docs/walkthrough.py`.
#
# The numbered listing of Alg. 1 that the cells cite (from [paper.md](paper.md) §2):
#
# ```
#  1  θ ← θ0                                            stage 1: the initial safeguard (safeguard.py)
#  2  for i = 1 … N:
#  3      attack ~ A_train
#  4      x_TR ~ D_TR;  x_r ~ D_retain
#  5      snapshot ← θ;  g_TR ← 0
#  6      inner ← a fresh optimizer of the attack's kind on θ
#  7      for k = 1 … K:
#  8          θ ← θ − inner step on the attacker's batch k
#  9          if k mod tr_every = 0:  g_TR ← g_TR + w_k ∇_θ L_TR(θ; x_TR)
# 10      θ ← snapshot
# 11      g ← λ_TR g_TR + λ_retain ∇_θ L_retain(θ; x_r)
# 12      θ ← outer optimizer step with clip(g)
# ```
#
# and the objective it optimises (Eq. 1):
#
# ```
# min_θ   λ_TR · E_{attack ~ A_train} [ L_TR(attack(θ); x_TR) ]   +   λ_retain · L_retain(θ; x_r)
# ```

# %%
# Set-up. The repository root goes on sys.path so the modules import from any working directory; inside
# Jupyter there is no __file__, so we look for the root at the working directory or its parent (the notebook
# lives in docs/).
import copy
import dataclasses
import json
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path


def repo_root() -> Path:
    try:
        return Path(__file__).resolve().parents[1]
    except NameError:  # a notebook kernel
        for candidate in (Path.cwd(), Path.cwd().parent):
            if (candidate / "tar.py").exists():
                return candidate
        raise RuntimeError("start the notebook from the repository root or from docs/")


ROOT = repo_root()
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here needs the network

IN_NOTEBOOK = "ipykernel" in sys.modules
import matplotlib  # noqa: E402

if not IN_NOTEBOOK:
    matplotlib.use("Agg")  # a script writes PNGs and shows nothing
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

# One thread: this tiny model is fastest on one, and two busy threads on a 2-core machine run 10x slower.
torch.set_num_threads(1)

import adversary  # noqa: E402
import batching  # noqa: E402
import candidates  # noqa: E402
import config  # noqa: E402
import losses  # noqa: E402
import redteam  # noqa: E402
import safeguard  # noqa: E402
import scoring  # noqa: E402
import tar  # noqa: E402
import world as worldlib  # noqa: E402

OUT = Path(os.environ.get("WALKTHROUGH_OUT") or ROOT / "runs" / "walkthrough")
OUT.mkdir(parents=True, exist_ok=True)
SUMMARY = {}  # the numbers this run measured, written to OUT/summary.json at the end
T_START = time.time()


def save_figure(fig, name: str) -> None:
    """Writes the figure to OUT/name; shows it in a notebook, closes it in a script."""
    fig.savefig(OUT / name, dpi=110, bbox_inches="tight")
    print(f"figure: {OUT / name}")
    if IN_NOTEBOOK:
        plt.show()
    else:
        plt.close(fig)


def pct(d: dict) -> str:
    return "  ".join(f"{k} {v:6.1%}" for k, v in d.items())


# %% [markdown]
# ## 1. A small world
#
# The paper trains and judges TAR on three kinds of data (Sec. 5): hazardous *forget* text (e.g. Pile-bio),
# benign *retain* text, and 4-choice questions (WMDP for the hazard, MMLU for benign knowledge). The
# miniature world (`world.build_world(world.WorldConfig(...))`, described in [paper.md](paper.md) §7) invents
# a stand-in for each: pathogens with five one-word attributes, and benign families (cities, rivers, composers,
# moons). A document is the five facts of one entity in random order and random phrasing.
#
# The hazardous entities are split into four disjoint groups, and the split is the point of the whole
# evaluation (protocol v2, [protocol.md](protocol.md)):
#
# - **T** is what the defences see. TAR's simulated attacker fine-tunes on `T_inner` (the first half) and
#   TAR measures its tamper-resistance loss on held-out forget text x_TR from `T_tr` (the second half).
# - **V** is the dev group: what training logs, and what any choice of a setting may read.
# - **A** is what the red team's attacker fine-tunes on. No defence ever sees it.
# - **E** is only evaluated. Every forget accuracy reported here is on E's questions.
#
# Benign knowledge: cities **Rt** (retain-train, used by the retain losses) and **Re** (held out), rivers **U**
# (the red team's benign text), composers **G** (read by nothing after pretraining: the miniature's MMLU, split
# into G_dev and G_test) and moons **N** (in no pretraining at all: a family to learn later).
#
# The base model will be pretrained on all of it but N, so it knows E's facts; a defence must hide E although it
# only ever trains on T. It can only do that by learning something like "this domain → scramble".

# %%
WORLD_CONFIG = worldlib.WorldConfig(domain="bio", n_group=8, n_retain_train=8, n_retain_heldout=6,
                                    n_unrelated=6, n_general=6, n_new=6, docs_per_entity=8, seed=0)
world = worldlib.build_world(WORLD_CONFIG)

print("entities per group:")
for g in ("T_inner", "T_tr", "A", "E", "Rt", "Re", "U"):
    names = [e["name"] for e in world.entities[g]]
    print(f"  {g:8s} {len(names):2d}  {', '.join(names[:4])}{', …' if len(names) > 4 else ''}")
print("documents per split:", {k: len(v) for k, v in world.docs.items()})
print("MC items per group: ", {k: len(v) for k, v in world.items.items()})
print("vocabulary:", len(world.tokenizer), "words")

# %% [markdown]
# One hazardous document (group E), a benign one (Rt) and an unrelated one (U):

# %%
for g in ("E", "Rt", "U"):
    print(f"[{g}] {world.docs[g][0]}\n")

# %% [markdown]
# An evaluation item, in the WMDP schema `{question, choices, answer}` that the real WMDP loader also returns
# (`realworld.py`), so one scorer serves both worlds. The miniature world is scored *cloze* style
# (`scoring.py`): the model's summed log-probability of each choice as a continuation of the question, argmax
# wins (how lm-evaluation-harness scores ARC-style tasks; a model this small never learns the letter format).
# Chance is 25%.

# %%
item = world.items["E"][0]
print(json.dumps(item, indent=1))
print("correct answer:", item["question"], item["choices"][item["answer"]])

# %% [markdown]
# Tokenized documents carry a **fact mask**: the positions whose *next* token is a hazardous fact value. The
# entropy TR loss is taken there by default (`--tr-mask fact`; the official code takes every position,
# padding included; [paper.md](paper.md) §3). Below, each fact value is in brackets: the mask is on the word
# just before it.

# %%
toks = world.tokens["E"]
ids, mask, fact = toks.ids[0], toks.mask[0], toks.fact[0]
words = world.tokenizer.convert_ids_to_tokens(ids[mask].tolist())
marked = [f"[{w}]" if t > 0 and fact[t - 1] else w for t, w in enumerate(words)]
print(" ".join(marked).replace("▁", ""))
print(f"{int(fact.sum())} fact positions in {int(mask.sum())} tokens")

# %% [markdown]
# ## 2. A tiny base model
#
# The paper starts from Llama-3-8B-Instruct, a model that *knows* hazardous biology. Our stand-in is a tiny
# `LlamaForCausalLM` (`safeguard.new_model`) pretrained on every document of the world. Pretraining is not a
# special routine: it is `adversary.attack` (the one fine-tuning loop that also runs every attack, every
# defence and TAR's inner loop) with the LM loss, from random weights. `safeguard.BaseConfig(...).spec()`
# gives that "attack": AdamW, warmup then cosine decay, gradient clipping.
#
# We use a smaller model than the repository's default (`safeguard.ModelConfig()`: 4 layers, width 128) so
# everything fits in a few minutes; it still learns the world.

# %%
MODEL = safeguard.ModelConfig(width=64, layers=2, heads=2, mlp=128)
BASE = safeguard.BaseConfig(model=MODEL, steps=500, lr=2e-3, batch_size=32, seed=0)

base = safeguard.new_model(len(world.tokenizer), MODEL, world.tokenizer, seed=0)
print(f"{sum(p.numel() for p in base.parameters()) / 1e3:.0f}k parameters, {BASE.steps} pretraining steps")
t0 = time.time()
pretrain_losses = adversary.attack(base, BASE.spec(), batching.Stream(world.tokens["all"], BASE.batch_size, BASE.seed))
KNOWN = {g: g for g in scoring.EVERY_GROUP if g != "N"}  # every group the base read (N: in no pretraining)
base_acc = scoring.accuracies(base, world, KNOWN)
print(f"pretraining: {time.time() - t0:.0f}s; final LM loss {pretrain_losses[-1]:.3f}")
print("base accuracy:", pct(base_acc))
# The rest of the story needs a base that knows the facts; stop here if it does not.
assert min(base_acc.values()) >= 0.9, f"the base model did not learn the world: {base_acc}"
SUMMARY["base"] = base_acc

# %%
fig, ax = plt.subplots(figsize=(6, 3))
ax.plot(pretrain_losses, lw=0.8)
ax.set(xlabel="pretraining step", ylabel="LM loss (next token)", yscale="log",
       title="Base pretraining = an attack on everything from random weights")
save_figure(fig, "01_pretraining_loss.png")

# %% [markdown]
# How one item is scored: the four choices' summed log-probabilities under the base model
# (`scoring.prepare_mc`, `scoring.mc_loglikelihoods`). The base knows the fact, so the true value wins by a
# wide margin.

# %%
mc = scoring.prepare_mc(world.tokenizer, [item])
for choice, score in zip(item["choices"], scoring.mc_loglikelihoods(base, mc, world.tokenizer.pad_token_id)):
    print(f"  {item['question']} … {choice:10s} log p = {score:7.2f}{'   ← answer' if choice == item['choices'][item['answer']] else ''}")

# %% [markdown]
# ## 3. The initial safeguard (stage 1, Alg. 1 l.1)
#
# TAR does not start from the base model but from θ0, a model that already carries a safeguard (Sec. 4.1).
# For knowledge restriction that is *random mapping*: train the model so that the hidden states of forget
# text (group T) point at a fixed random direction, which scrambles whatever later layers read off them,
# while retain text (Rt) keeps its LM loss and its hidden states close to the base's:
#
# ```
# L_safeguard = (1/L) Σ_l mean_t [1 − cos(h_l(x_f)[t], r)]  +  L_LM(x_r)  +  (1/L) Σ_l mean_t ‖h_l(x_r)[t] − h_l^base(x_r)[t]‖²
# ```
#
# Code: `safeguard.defend(model, base, world, safeguard.SafeguardConfig(...))` (trains `model` in place, `base`
# is the frozen reference), with `losses.random_mapping_loss` and `losses.retain_loss`. The repository's
# random mapping uses one constant direction for every token (the paper: one per token id); the reason is
# in `SafeguardConfig`'s docstring and [deviations.md](deviations.md).

# %%
theta0 = copy.deepcopy(base)  # the base stays untouched: it is the safeguard's frozen reference
t0 = time.time()
safeguard.defend(theta0, base, world, safeguard.SafeguardConfig(steps=120, seed=0))
safeguard_acc = scoring.accuracies(theta0, world, KNOWN)
print(f"safeguard: {time.time() - t0:.0f}s")
print("base     :", pct(base_acc))
print("safeguard:", pct(safeguard_acc))
SUMMARY["safeguard"] = safeguard_acc

# %%
groups = list(base_acc)
fig, ax = plt.subplots(figsize=(6, 3))
xs = range(len(groups))
ax.bar([x - 0.2 for x in xs], [base_acc[g] for g in groups], 0.4, label="base")
ax.bar([x + 0.2 for x in xs], [safeguard_acc[g] for g in groups], 0.4, label="safeguard (θ0)")
ax.axhline(0.25, color="grey", ls=":", label="chance")
ax.set_xticks(list(xs), groups)
ax.set(ylabel="MC accuracy", ylim=(0, 1.05), title="At rest: hazardous groups T, V, A, E vs benign families")
ax.legend(fontsize=8, bbox_to_anchor=(1.01, 1), loc="upper left")
save_figure(fig, "02_accuracy_at_rest.png")

# %% [markdown]
# At rest the safeguard looks like it worked: forget accuracy on T, and on the never-seen groups A and E,
# falls to chance or below (below is possible: the argmax over four values of a scrambled model can
# systematically prefer wrong ones) while the retain-train cities Rt stay. The held-out cities Re lose more
# here than at full size ([results.md](results.md) §1: 99.8%), where 40 retain cities instead of 8 show the
# retain term what "benign" covers.
#
# Now the attack that TAR is about. The attacker fine-tunes the safeguarded model on *other* hazardous
# documents, group A's, with plain AdamW at lr 3e-4 and batch 16: the repository's reference attack
# (`report.end_of_run_attacks`), shortened. `redteam.attack_curve` runs it on a **copy** of the model and
# measures forget (E) and retain (Re) accuracy every few steps. The attacker never sees a single E
# document.

# %%
ATTACK = adversary.Attack(name="adamw_3e-4", optimizer="adamw", lr=3e-4, steps=120, batch_size=16, data="A",
                          dist="HELD-OUT")
EVERY = 10
t0 = time.time()
curve_safeguard = redteam.attack_curve(theta0, ATTACK, world, seed=0, every=EVERY)
print(f"attack: {time.time() - t0:.0f}s")
for p in curve_safeguard:
    print(f"  step {p['step']:3d}   forget (E) {p['forget']:6.1%}   retain (Re) {p['retain']:6.1%}")
SUMMARY["curve_safeguard"] = curve_safeguard


def plot_curves(curves: dict, name: str, title: str) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for label, (curve, style) in curves.items():
        ax.plot([p["step"] for p in curve], [p["forget"] for p in curve], style, marker="o", ms=3,
                label=f"{label}: forget (E)")
        ax.plot([p["step"] for p in curve], [p["retain"] for p in curve], style, ls="--", alpha=0.5,
                label=f"{label}: retain (Re)")
    ax.axhline(0.25, color="grey", ls=":", label="chance 25%")
    ax.axhline(base_acc["E"], color="black", lw=0.6, ls="-.", label="base model, E")
    ax.set(xlabel=f"attack step ({ATTACK.name}, on group A's documents)", ylabel="MC accuracy", ylim=(0, 1.05),
           title=title)
    ax.legend(fontsize=7, loc="lower right")
    save_figure(fig, name)


plot_curves({"safeguard": (curve_safeguard, "C1")}, "03_attack_on_safeguard.png",
            "An attack on other hazardous text brings E back")

# %% [markdown]
# Within a few dozen steps the facts of E are back, although the attacker trained only on A's. The
# safeguard had hidden the knowledge, not removed it: the facts were latent, and a small push in weight space
# reconnected them. This is the failure TAR is built for (paper Sec. 1 and [paper.md](paper.md) §1).

# %% [markdown]
# ## 4. One outer step, taken apart
#
# TAR's answer: during training, *simulate* such attacks on the current weights, measure how much hazardous
# knowledge the attacked model shows, and move the weights so that the next attack finds less. `tar.outer_step`
# is one pass of Alg. 1 l.3-12. Here we do the same by hand, one line of the listing per cell, and then check
# that `tar.outer_step` gives bit-for-bit the same weights.
#
# The hyperparameters live in one dataclass, `config.TARConfig`; `config.configure(...)` applies the miniature
# preset and then what we give. We take the recipe closest to the paper's loss, the miniature's defaults before
# the dev-split search (`candidates.BEFORE`: the vocabulary's entropy, x_r from Rt, the outer step on the MLPs;
# today's defaults confine it to the domain's own words and neurons: [search.md](search.md)), shrink K (attacker
# steps per outer step) from 64 to 16 and take a TR point every 4 steps, so 4 TR points per outer step (the
# paper: K = 64, every 4, 16 points).

# %%
cfg = config.configure(domain="bio", **{**candidates.BEFORE, "outer_steps": 40, "inner_steps": 16, "tr_every": 4,
                                        "eval_every": 5, "seed": 0})
cfg.validate()
for name in ("inner_steps", "tr_every", "inner_lrs", "inner_batch", "tr_batch", "retain_batch", "lambda_tr",
             "lambda_retain", "tr_weights", "tr_mask", "outer_params", "outer_optimizer", "outer_lr", "outer_eps",
             "outer_schedule", "grad_clip", "reference"):
    print(f"  {name:16s} {getattr(cfg, name)}")

# %% [markdown]
# What we work on: a copy of θ0 (`theta`), the frozen reference of the retain loss (θ0 itself here; the
# paper uses the base model: `--reference base`), the outer optimizer `tar.outer_optimizer` (AdamW with a
# cosine schedule, over the MLP weights only: `--outer-params mlp`, see `tar.outer_parameters` and
# [results.md](results.md) §3 for why), and the two batches of **l.4**: x_TR from T_tr (held-out forget
# text) and x_r from the retain cities Rt, drawn from seeded `batching.Stream`s as `tar.train_tar` draws them.

# %%
theta = copy.deepcopy(theta0)
ref = copy.deepcopy(theta0).eval().requires_grad_(False)
outer_opt, schedule = tar.outer_optimizer(theta, cfg)
n_outer = sum(p.numel() for g in outer_opt.param_groups for p in g["params"])
print(f"outer optimizer {type(outer_opt).__name__} over {n_outer} of {sum(p.numel() for p in theta.parameters())} "
      f"weights (the MLPs)")

x_tr = next(batching.Stream(world.tokens["T_tr"], cfg.tr_batch, cfg.seed))  # l.4: x_TR ~ D_TR
x_r = next(batching.Stream(world.tokens["Rt"], cfg.retain_batch, cfg.seed + 1))  # l.4: x_r ~ D_retain
print("x_TR", tuple(x_tr.input_ids.shape), f"({int(x_tr.fact_mask.sum())} fact positions);",
      "x_r", tuple(x_r.input_ids.shape))

# %% [markdown]
# **l.3: attack ~ A_train.** `adversary.sample_attack(rng, cfg.train_attacks())` draws one attack from the
# train-time distribution (Sec. 4.2): here AdamW at a learning rate drawn from `cfg.inner_lrs`, K steps on
# T_inner documents, batch 16 (with `--retain-then-forget p`, a retain→forget attack with probability p). The
# same RNG then draws the attack's own data-order seed, so the attacker never walks through TAR's batches in
# TAR's order ([paper.md](paper.md) §8, pitfall 2). Seed 5 happens to draw the largest rate, 1e-3, whose effect
# is easiest to see in 16 steps.

# %%
STEP_SEED = 5
rng = random.Random(STEP_SEED)
spec = adversary.sample_attack(rng, cfg.train_attacks())  # l.3
attack_seed = rng.randrange(2**31)  # the attacker's data order (outer_step draws it right after the spec)
print(spec)
print("attack data seed:", attack_seed)

# %% [markdown]
# **l.5: snapshot θ, g_TR ← 0.** The attack will move the weights in place; the snapshot is what we come back
# to. `losses.tr_weights` gives the weight w_k of each TR point: a plain mean here (`--tr-weights uniform`);
# the official code's exp(0.0625 (k − K)) with `--tr-weights paper`.

# %%
params = [p for p in theta.parameters() if p.requires_grad]
snapshot = [p.detach().clone() for p in params]  # l.5
g_tr = [torch.zeros_like(p) for p in params]  # Σ_k w_k ∇L_TR(θ_k), for every weight, not only the MLPs
w = losses.tr_weights(cfg.inner_steps, cfg.tr_every, cfg.tr_weights)
print("TR points k and weights w_k:", w)

# %% [markdown]
# **l.6-9: the inner attack and the TR gradient.** `adversary.attack_steps(model, spec, batches, every=...)` is
# the fine-tuning loop: it creates a fresh optimizer of the attack's kind (l.6), takes K steps of the LM loss on
# the attacker's batches (l.7-8, every weight moves), and is a *generator*: after every `tr_every` steps it
# pauses and yields k with the model sitting at the attacked weights θ_k. There we take the tamper-resistance
# gradient (l.9), with `tar.tr_loss`, which for knowledge restriction is the entropy loss of Sec. 4.2
# (`losses.entropy_tr_loss`):
#
# ```
# L_TR(θ; x_TR) = − mean_{fact positions} H(p_θ(· | prefix)),     H(p) = − Σ_v p_v log p_v
# ```
#
# Minimising L_TR *raises* the attacked model's entropy on hazardous text. Its floor is −ln V, a uniform
# prediction over the vocabulary. The gradient is **first order**: ∇_θ L_TR is evaluated at θ_k and applied to
# θ as if the attack were the identity (dθ_k/dθ ≈ I), so nothing is differentiated through the K inner steps.
#
# Watch the numbers: as the attack proceeds, the model relearns, its predictions on hazardous text sharpen,
# the entropy falls and L_TR rises away from the floor (not monotonically: each step follows one batch of
# other entities' documents). The predictions sharpen before they become right, so in 16 steps the entropy
# moves a lot and forget accuracy little. That rise of L_TR is what TAR pushes against: g_TR points the way
# that would have kept the attacked model's entropy high.

# %%
V = theta.config.vocab_size
print(f"V = {V}: floor of L_TR = −ln V = {-math.log(V):.3f}  (entropy ln V = {math.log(V):.3f} nats)\n")
with torch.no_grad():  # k = 0, for reference only: Alg. 1 never takes L_TR before the first attacker step
    tr_at_0 = tar.tr_loss(theta, ref, x_tr, cfg).item()
forget_at_0 = scoring.accuracies(theta, world)["forget"]
print(f"  k =  0   L_TR {tr_at_0:7.3f}   entropy {-tr_at_0:6.3f}   forget (E) at θ_k {forget_at_0:6.1%}   (not used)")

attacker_losses, tr_points = [], []  # the attacker's LM loss per step; (k, L_TR, forget accuracy) per pause
batches = adversary.attack_stream(spec, world.tokens, attack_seed)  # the attacker's data: T_inner, its own order
for k in adversary.attack_steps(theta, spec, batches, every=cfg.tr_every, history=attacker_losses):  # l.6-8
    # the model is at θ_k now. l.9: g_TR ← g_TR + w_k ∇_θ L_TR(θ_k; x_TR)
    theta.zero_grad(set_to_none=True)  # drop the attacker's last gradient: .grad must hold ∇L_TR alone
    l_tr = tar.tr_loss(theta, ref, x_tr, cfg)
    l_tr.backward()
    for g, p in zip(g_tr, params):
        g.add_(p.grad, alpha=w[k])
    # measuring at θ_k changes no weight (no_grad inside; the model's train/eval mode is restored)
    forget_k = scoring.accuracies(theta, world)["forget"]
    tr_points.append((k, l_tr.item(), forget_k))
    print(f"  k = {k:2d}   L_TR {l_tr.item():7.3f}   entropy {-l_tr.item():6.3f}   forget (E) at θ_k {forget_k:6.1%}")
# attack_steps has dropped its optimizer (l.6's "fresh optimizer" is never reused) and every .grad
attacker_losses = [float(x) for x in attacker_losses]
print("\nattacker LM loss on T_inner, steps 1..K:", " ".join(f"{x:.2f}" for x in attacker_losses))
print("gradients left in .grad:", sum(p.grad is not None for p in theta.parameters()))

# %%
fig, axes = plt.subplots(1, 3, figsize=(11, 3))
axes[0].plot(range(1, len(attacker_losses) + 1), attacker_losses, marker=".")
axes[0].set(xlabel="inner step k", ylabel="LM loss", title="l.8: the attacker's loss (T_inner)")
ks = [0] + [k for k, _, _ in tr_points]
axes[1].plot(ks, [tr_at_0] + [t for _, t, _ in tr_points], marker="o", color="C3")
axes[1].plot([0], [tr_at_0], marker="o", color="white", mec="C3")  # k = 0: hollow, not used by Alg. 1
axes[1].axhline(-math.log(V), color="grey", ls=":", label="floor −ln V")
axes[1].set(xlabel="inner step k", ylabel="L_TR = −entropy", title="l.9: L_TR(θ_k; x_TR) at the TR points")
axes[1].legend(fontsize=8)
axes[2].plot(ks, [forget_at_0] + [f for _, _, f in tr_points], marker="o", color="C2")
axes[2].axhline(0.25, color="grey", ls=":")
axes[2].set(xlabel="inner step k", ylabel="forget accuracy (E)", ylim=(0, 1.05), title="what the attack recovers")
fig.suptitle(f"One simulated attack ({spec.name}, K = {cfg.inner_steps}) on θ0", y=1.03)
save_figure(fig, "04_inner_attack.png")

# %% [markdown]
# **l.10: θ ← snapshot.** The attack was only a probe. The weights go back exactly (a copy into the same
# tensors, so bit-equal: `tests/test_tar.py` checks this too); what TAR keeps from the attack is g_TR.

# %%
moved = max((p.detach() - s).abs().max().item() for p, s in zip(params, snapshot))
with torch.no_grad():
    for p, s in zip(params, snapshot):  # l.10
        p.copy_(s)
restore_diff = max((p.detach() - s).abs().max().item() for p, s in zip(params, snapshot))
vs_theta0 = max((a - b).abs().max().item() for a, b in zip(theta.parameters(), theta0.parameters()))
print(f"the attack had moved some weight by {moved:.3g}; after the restore: max |θ − snapshot| = {restore_diff}, "
      f"max |θ − θ0| = {vs_theta0}")
assert restore_diff == 0.0 and vs_theta0 == 0.0
SUMMARY["restore_max_abs_diff"] = restore_diff

# %% [markdown]
# **l.11: the retain gradient and the full gradient.** At the restored θ, the retain loss of Eq. 2
# (`losses.retain_loss`): the LM loss on retain text plus the distance of θ's hidden states on that text to the
# frozen reference's, averaged over layers (squared here, `--squared-distance`; the paper: plain L2). Its
# gradient is added to λ_TR · g_TR:
#
# ```
# g = λ_TR Σ_k w_k ∇_θ L_TR(θ_k; x_TR)  +  λ_retain ∇_θ [ L_LM(θ; x_r) + (1/L) Σ_l mean_t ‖h_l^θ(x_r) − h_l^ref(x_r)‖² ]
# ```

# %%
outer_opt.zero_grad(set_to_none=True)
out = theta(input_ids=x_r.input_ids, attention_mask=x_r.attention_mask, output_hidden_states=True)
with torch.no_grad():
    out_ref = ref(input_ids=x_r.input_ids, attention_mask=x_r.attention_mask, output_hidden_states=True)
l_retain, parts = losses.retain_loss(out, out_ref, x_r.input_ids, x_r.attention_mask, cfg.squared_distance)
(cfg.lambda_retain * l_retain).backward()  # λ_retain ∇L_retain
print(f"L_retain = {l_retain.item():.4f}  (LM {parts['retain_lm']:.4f} + hidden-state distance "
      f"{parts['retain_rep']:.4f}; the distance is 0 because θ is θ0, the reference, right now)")
retain_norm = torch.norm(torch.stack([p.grad.norm() for p in params])).item()
for p, g in zip(params, g_tr):
    p.grad.add_(g, alpha=cfg.lambda_tr)  # + λ_TR g_TR
tr_norm = torch.norm(torch.stack([g.norm() for g in g_tr])).item()
print(f"|λ_retain ∇L_retain| = {retain_norm:.3f}   |g_TR| = {tr_norm:.3f}   (λ_TR = {cfg.lambda_tr})")

# %% [markdown]
# **l.12: the outer step.** Clip the whole gradient to norm 1 (`--grad-clip`; the paper does not clip), then
# the outer optimizer steps. It holds only the MLP weights, so only they move, although the gradient and its
# norm were computed for every weight.

# %%
norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)  # l.12: clip(g)
outer_opt.step()  # l.12: θ ← outer optimizer step
print(f"gradient norm before clipping: {norm.item():.3f}")
moved_names = [n for (n, a), b in zip(theta.named_parameters(), theta0.parameters()) if not torch.equal(a, b)]
print(f"{len(moved_names)} weight tensors moved, all MLP: {all('.mlp.' in n for n in moved_names)}")
print("  " + ", ".join(moved_names))

# %% [markdown]
# **The same step by the library.** `tar.outer_step(model, ref, opt, world, x_tr, x_r, rng, cfg)` runs lines
# 3-12 as above. From an identical copy of θ0, a fresh outer optimizer, the same batches and an RNG in the same
# state, it should land on exactly the same weights: same operations in the same order, one CPU thread.
# (`outer_step` also cuts each batch into micro-batches for gradient accumulation and FSDP ranks, and divides
# each loss by their number; with one process and one micro-batch that is a division by 1, which changes no
# bit.)

# %%
theta_lib = copy.deepcopy(theta0)
opt_lib, _ = tar.outer_optimizer(theta_lib, cfg)
m = tar.outer_step(theta_lib, ref, opt_lib, world, x_tr, x_r, random.Random(STEP_SEED), cfg)
print({k: round(v, 4) if isinstance(v, float) else v for k, v in m.items()})
max_diff = max((a - b).abs().max().item() for a, b in zip(theta.parameters(), theta_lib.parameters()))
same = all(torch.equal(a, b) for a, b in zip(theta.parameters(), theta_lib.parameters()))
hand_tr = sum(t for _, t, _ in tr_points) / len(tr_points)
print(f"by hand vs tar.outer_step: max |Δθ| = {max_diff}, bit-equal: {same}")
print(f"mean L_TR: by hand {hand_tr:.6f}, outer_step {m['tr_loss']:.6f};  "
      f"L_retain: by hand {l_retain.item():.6f}, outer_step {m['retain_loss']:.6f}")
assert same, "the hand-made outer step and tar.outer_step disagree"
SUMMARY["outer_step_bit_equal"] = same

# %% [markdown]
# ## 5. A short TAR run (Alg. 1 l.2)
#
# `tar.train_tar(model, ref, world, cfg, run_dir)` is line 2's loop around `outer_step`: N outer steps, each
# with a freshly sampled attack, the next x_TR and x_r from seeded streams, and the outer learning rate's
# cosine schedule stepped after each. It writes one line per step to `run_dir/metrics.partial.jsonl` (TR loss,
# retain loss, the sampled inner lr, the gradient norm; forget and retain accuracy every `eval_every` steps),
# which `tar.run` renames metrics.jsonl once the model is saved and attacked. The
# repository's default run is N = 100 at K = 192 (10-13 minutes of TAR on 2 cores); this one is N = 40 at K = 16.

# %%
model_tar = copy.deepcopy(theta0)
ref_tar = copy.deepcopy(theta0)  # the retain loss's frozen reference: θ0 (cfg.reference = "safeguard")
t0 = time.time()
with tempfile.TemporaryDirectory(prefix="tar-walkthrough-") as run_dir:
    tar.train_tar(model_tar, ref_tar, world, cfg, Path(run_dir), log=print)
    metrics = [json.loads(line) for line in (Path(run_dir) / tar.PARTIAL).read_text().splitlines()]
print(f"TAR: {len(metrics)} outer steps in {time.time() - t0:.0f}s; last line of the metrics log:")
print(json.dumps(metrics[-1]))
tar_acc = scoring.accuracies(model_tar, world, KNOWN)
print("safeguard:", pct(safeguard_acc))
print("TAR      :", pct(tar_acc))
SUMMARY["tar"] = tar_acc
SUMMARY["tar_metrics"] = metrics

# %%
steps = [m["step"] for m in metrics]
fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
lrs = sorted({m["inner_lr"] for m in metrics})
for i, lr in enumerate(lrs):
    sel = [m for m in metrics if m["inner_lr"] == lr]
    axes[0].scatter([m["step"] for m in sel], [m["tr_loss"] for m in sel], s=12, color=f"C{i}",
                    label=f"sampled inner lr {lr:g}")
axes[0].axhline(-math.log(V), color="grey", ls=":", label="floor −ln V")
axes[0].set(xlabel="outer step", ylabel="mean L_TR over the TR points", title="TR loss")
axes[0].legend(fontsize=7)
axes[1].plot(steps, [m["retain_loss"] for m in metrics], label="L_retain")
axes[1].plot(steps, [m["retain_lm"] for m in metrics], ls="--", label="LM part")
axes[1].plot(steps, [m["retain_rep"] for m in metrics], ls=":", label="hidden-state distance")
axes[1].set(xlabel="outer step", title="retain loss (Eq. 2)")
axes[1].legend(fontsize=7)
evals = [(0, scoring.accuracies(theta0, world, scoring.DEV))] + [(m["step"], {"forget": m["dev_forget"],
                                                                              "G": m["dev_benign"]})
                                                                 for m in metrics if "dev_forget" in m]
axes[2].plot([s for s, _ in evals], [a["forget"] for _, a in evals], marker="o", label="forget (V)")
axes[2].plot([s for s, _ in evals], [a["G"] for _, a in evals], marker="o", label="benign (G_dev)")
axes[2].axhline(0.25, color="grey", ls=":", label="chance")
axes[2].set(xlabel="outer step", ylabel="MC accuracy at rest", ylim=(0, 1.05), title="accuracy during TAR")
axes[2].legend(fontsize=7)
save_figure(fig, "05_tar_training.png")

# %% [markdown]
# Reading the curves: the TR loss (the attacked models' negated entropy on x_TR, averaged over the 4 TR
# points) sinks towards its floor: the simulated attacks find less and less to sharpen. Early on, each point
# depends on the attack sampled at that step: a larger inner lr recovers more and gives a higher L_TR. The
# retain loss, measured at θ itself (not under attack), jumps in the first outer steps, when the outer lr
# (1e-2, at the top of its cosine) moves the MLPs far from θ0 and the hidden states of retain text drift with
# them; the retain term then pulls them back as the lr decays. Training logs the dev group V and G_dev only
# (never E): forget on V stays at or below chance; G_dev shows what the outer steps cost a family no loss reads.

# %% [markdown]
# ## 6. The attack again, on the TAR model
#
# The same attack as in section 3 (group A's documents, AdamW 3e-4, the same data order), now on the TAR
# model. Remember that TAR never saw A or E, and trained against attacks of K = 16 steps only.

# %%
t0 = time.time()
curve_tar = redteam.attack_curve(model_tar, ATTACK, world, seed=0, every=EVERY)
print(f"attack: {time.time() - t0:.0f}s")
print("step   safeguard: forget  retain     TAR: forget  retain")
for a, b in zip(curve_safeguard, curve_tar):
    print(f"{a['step']:4d}          {a['forget']:6.1%}  {a['retain']:6.1%}         {b['forget']:6.1%}  {b['retain']:6.1%}")
SUMMARY["curve_tar"] = curve_tar

# "Recovers at": the first measured step where forget accuracy is at least midway between chance and the
# base model, as docs/results.md reports it.
midpoint = (0.25 + base_acc["E"]) / 2


def recovers_at(curve):
    return next((p["step"] for p in curve if p["forget"] >= midpoint), None)


mean_forget = {n: sum(p["forget"] for p in c) / len(c) for n, c in (("safeguard", curve_safeguard), ("tar", curve_tar))}
for name, c in (("safeguard", curve_safeguard), ("TAR", curve_tar)):
    r = recovers_at(c)
    print(f"{name:9s}: recovers (≥ {midpoint:.0%}) at step {r if r is not None else f'never (in {ATTACK.steps})'}; "
          f"max forget {max(p['forget'] for p in c):.1%}; mean forget along the attack {mean_forget[name.lower()]:.1%}")
SUMMARY["recovers_at"] = {"safeguard": recovers_at(curve_safeguard), "tar": recovers_at(curve_tar)}
SUMMARY["mean_forget_under_attack"] = mean_forget

plot_curves({"safeguard": (curve_safeguard, "C1"), "TAR": (curve_tar, "C0")}, "06_attack_safeguard_vs_tar.png",
            "The same attack on the safeguard and on TAR")

# %% [markdown]
# One more view of what TAR optimised. Run the section-4 train-time attack (the same spec and data order)
# for three times K on θ0 and on the TAR model, and record L_TR on x_TR every 4 steps (no gradients now, only
# the measurement). TAR was trained to keep this curve near the floor for K = 16 steps; the plot shows how
# far past K that lasts.

# %%
def tr_curve(model, steps):
    victim = copy.deepcopy(model)
    long_spec = dataclasses.replace(spec, steps=steps)
    points = []
    for k in adversary.attack_steps(victim, long_spec, adversary.attack_stream(long_spec, world.tokens, attack_seed),
                                    every=cfg.tr_every):
        with torch.no_grad():
            points.append((k, tar.tr_loss(victim, ref, x_tr, cfg).item()))
    return points


fig, ax = plt.subplots(figsize=(6, 3.2))
for label, model, color in (("safeguard (θ0)", theta0, "C1"), ("TAR", model_tar, "C0")):
    pts = tr_curve(model, 3 * cfg.inner_steps)
    ax.plot([k for k, _ in pts], [t for _, t in pts], marker="o", ms=3, color=color, label=label)
ax.axhline(-math.log(V), color="grey", ls=":", label="floor −ln V")
ax.axvline(cfg.inner_steps, color="black", lw=0.6, ls="--", label=f"K = {cfg.inner_steps} (trained horizon)")
ax.set(xlabel=f"step of the train-time attack ({spec.name})", ylabel="L_TR(θ_k; x_TR)",
       title="The quantity TAR minimises, along an attack")
ax.legend(fontsize=7)
save_figure(fig, "07_tr_loss_along_attack.png")

# %% [markdown]
# ## What this small run shows, and what it does not
#
# **Shows.** The paper's story holds in miniature, with every step visible: the base knows every fact; the
# random-mapping safeguard hides the hazardous facts at rest, also for entities it never trained on, but a
# short fine-tune on *other* hazardous text brings them back within a few dozen steps; after 40 outer steps of
# TAR the same attack recovers the facts much later (compare the two "recovers at" lines above). The
# inner loop, the exact restore and the first-order TAR gradient are the library's own: the hand-made outer
# step and `tar.outer_step` agree bit for bit.
#
# **Does not show.** That TAR *stops* the attack: in this short run, trained against 16-step attacks, the
# attack is delayed, and given more steps it recovers most of E anyway. One seed, one attack, one data
# order, a 130k-parameter model and 8 entities per group: the numbers move by several points with any of
# them, and on another CPU they may round differently. Benign knowledge pays too: held-out cities (Re) lose
# accuracy to the safeguard and then to TAR, and attacking the TAR model costs it retain accuracy as well. At
# full size (N = 150, K = 64, 30 entities per group, a 0.8M-parameter model) the reference attack never
# recovers on bio, but some held-out attacks do (Adadelta, AdamW at twice the rate, SGD with Nesterov on one
# seed), most attacks cost the TAR model retain accuracy, and the verdict turns on small differences across
# seeds: see [results.md](results.md) for those numbers and [redteam.md](redteam.md) §4 for the held-out
# red-team suite. The paper's own claims are about Llama-3-8B and real data; this notebook
# demonstrates the mechanism, not those claims.

# %%
SUMMARY["seconds"] = round(time.time() - T_START, 1)
(OUT / "summary.json").write_text(json.dumps(SUMMARY, indent=1))
print(f"walkthrough: {SUMMARY['seconds']:.0f}s; figures and summary.json in {OUT}")
