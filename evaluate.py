"""Evaluation: multiple-choice accuracy scored as lm-evaluation-harness scores it, and accuracy under attack.

Paper: Sec. 5 and App. (WMDP / MMLU accuracy; red teaming = accuracy after fine-tuning attacks).

Multiple choice (DATA.md §4). An item {question, choices, answer} becomes one (context, continuation) request
per choice; the prediction is the choice whose continuation has the highest summed log-probability,

    score(c) = Σ_{i ∈ cont(c)} log p_θ(tok_i | tok_<i),   pred = argmax_c score(c),   acc = mean[pred = answer]

with lm-eval's encoding rule: trailing whitespace of the context moves into the continuation, the pair is
encoded whole as tok(ctx + cont), and the continuation's tokens are whole[len(tok(ctx)):] (the tokenizer's
default special tokens, i.e. <bos>, included). Two styles:

    letter  context = the zero-shot WMDP/MMLU prompt ("...\nA. c0\nB. c1\nC. c2\nD. c3\nAnswer:"), continuations
            " A".." D"; for real models
    cloze   context = the question, continuations " " + choice text (as lm-eval scores ARC-style tasks); the
            default for the miniature world, whose tiny models never learn the letter format

Requests whose model inputs are identical (same context, one-token continuations) share one forward pass,
as lm-eval's one-token-continuation cache does: numbers are the same, the cost is ~1/4.

Under attack: `attack_curve` runs one `adversary.attack()` on a copy of a model and records forget and retain
accuracy at step 0 and every `every` steps. `run_jobs` runs many such attacks in worker processes, one
torch thread each.

Use:  mc = prepare_mc(tok, world.items["E"]); mc_accuracy(model, mc)
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import adversary
from data import WorldConfig, build_world, letter_prompt


# --------------------------------------------------------------------------------------------------------
# Multiple-choice scoring
# --------------------------------------------------------------------------------------------------------
@dataclass
class MCSet:
    """A list of MC items tokenized once: unique model inputs plus where each choice's tokens sit in them."""
    inputs: list[list[int]]  # unique input rows (context + continuation, minus its last token)
    tok_row: torch.Tensor  # (P,) for each continuation token: its input row,
    tok_pos: torch.Tensor  # (P,)   the position whose logits predict it,
    tok_id: torch.Tensor  # (P,)    its id,
    tok_choice: torch.Tensor  # (P,) and the choice it belongs to
    choice_item: torch.Tensor  # (C,) the item of each choice
    answers: torch.Tensor  # (N,)
    prompts: list[str]  # the context of each item, as rendered (for parity checks and provenance)


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-evaluation-harness's `_encode_pair` for causal models."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = tokenizer(context + continuation)["input_ids"]
    ctx = tokenizer(context)["input_ids"]
    return ctx, whole[len(ctx):]


def requests(item: dict, style: str, topic: str | None) -> tuple[str, list[str]]:
    """(context, continuations) of one item in the given style."""
    if style == "letter":
        return letter_prompt(item, topic), [f" {'ABCD'[i]}" for i in range(len(item["choices"]))]
    if style == "cloze":
        return item["question"], [f" {c}" for c in item["choices"]]
    raise ValueError(f"MC style must be 'letter' or 'cloze', not {style!r}")


def prepare_mc(tokenizer, items: list[dict], style: str = "cloze", topic: str | None = None) -> MCSet:
    rows: dict[tuple, int] = {}
    tok_row, tok_pos, tok_id, tok_choice, choice_item, prompts = [], [], [], [], [], []
    for n, item in enumerate(items):
        context, conts = requests(item, style, topic)
        prompts.append(context)
        for cont in conts:
            ctx, cont_ids = encode_pair(tokenizer, context, cont)
            inp = tuple(ctx + cont_ids)[:-1]  # the model never sees the last continuation token
            row = rows.setdefault(inp, len(rows))
            start = len(inp) - len(cont_ids)  # logits at start+i predict cont_ids[i]
            c = len(choice_item)
            for i, t in enumerate(cont_ids):
                tok_row.append(row), tok_pos.append(start + i), tok_id.append(t), tok_choice.append(c)
            choice_item.append(n)
    t = lambda xs: torch.tensor(xs, dtype=torch.long)
    return MCSet([list(r) for r in rows], t(tok_row), t(tok_pos), t(tok_id), t(tok_choice), t(choice_item),
                 t([it["answer"] for it in items]), prompts)


@torch.no_grad()
def mc_loglikelihoods(model, mc: MCSet, pad_id: int = 0, max_tokens: int = 16384) -> torch.Tensor:
    """Summed log-probability of every choice's continuation   (C,)"""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(mc.inputs)), key=lambda r: -len(mc.inputs[r]))  # long rows first: little padding
    token_logp = torch.zeros(len(mc.tok_row))
    start = 0
    while start < len(order):
        width = len(mc.inputs[order[start]])
        chunk = order[start:start + max(1, max_tokens // width)]
        start += len(chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(chunk):  # right padding: a causal model's real positions never see the pads
            ids[i, :len(mc.inputs[r])] = torch.tensor(mc.inputs[r])
            mask[i, :len(mc.inputs[r])] = 1
        logp = F.log_softmax(model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float(), -1)
        local = torch.full((len(mc.inputs),), -1, dtype=torch.long)
        local[torch.tensor(chunk)] = torch.arange(len(chunk))
        sel = (local[mc.tok_row] >= 0).nonzero().squeeze(1)  # continuation tokens whose row is in this chunk
        token_logp[sel] = logp[local[mc.tok_row[sel]].to(device), mc.tok_pos[sel].to(device),
                               mc.tok_id[sel].to(device)].cpu()
    model.train(was_training)
    return torch.zeros(len(mc.choice_item)).index_add_(0, mc.tok_choice, token_logp)


def mc_predictions(model, mc: MCSet, pad_id: int = 0) -> list[int]:
    """argmax over each item's choices; ties go to the first (numpy's argmax, as lm-eval)."""
    scores = mc_loglikelihoods(model, mc, pad_id).tolist()  # (C,)
    preds, start = [], 0
    for k in torch.bincount(mc.choice_item, minlength=len(mc.answers)).tolist():
        preds.append(max(range(k), key=lambda i: scores[start + i]))
        start += k
    return preds


def mc_accuracy(model, mc: MCSet, pad_id: int = 0) -> float:
    preds = mc_predictions(model, mc, pad_id)
    return sum(p == a for p, a in zip(preds, mc.answers.tolist())) / len(preds)


# --------------------------------------------------------------------------------------------------------
# The miniature world's standard evaluation sets (cached per process: tokenizing is the slow part)
# --------------------------------------------------------------------------------------------------------
_MC_CACHE: dict = {}


def world_mc(world, group: str, style: str = "cloze") -> MCSet:
    key = (world.digest, group, style)
    if key not in _MC_CACHE:
        _MC_CACHE[key] = prepare_mc(world.tokenizer, world.items[group], style, world.topic)
    return _MC_CACHE[key]


FORGET_RETAIN = {"forget": "E", "retain": "Re"}  # what every reported forget / retain accuracy is measured on
EVERY_GROUP = {g: g for g in ("T", "A", "E", "Rt", "Re")}


def accuracies(model, world, groups: dict[str, str] = FORGET_RETAIN) -> dict[str, float]:
    """{label: cloze accuracy on that world group} (chance 25%)."""
    return {label: mc_accuracy(model, world_mc(world, g), world.tokenizer.pad_token_id) for label, g in groups.items()}


def attack_curve(model, spec: adversary.Attack, world, seed: int, every: int) -> list[dict]:
    """Runs `spec` on `model` (in place: pass a copy) and records accuracies at step 0, every, 2·every, ...
    The attack data order is drawn from `seed` (never TAR's order: PAPER.md §8 pitfall 2)."""
    points = [{"step": 0, **accuracies(model, world)}]
    record = lambda step: points.append({"step": step, **accuracies(model, world)})
    adversary.attack(model, spec, adversary.attack_stream(spec, world.tokens, seed), every=every, callback=record)
    if points[-1]["step"] != spec.steps:  # always include the last step
        points.append({"step": spec.steps, **accuracies(model, world)})
    return points


# --------------------------------------------------------------------------------------------------------
# Attacks in parallel worker processes (one torch thread each: two busy threads per core run 10-25x slower)
# --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    model: str  # a name for reports ("tar")
    path: str  # a saved model directory
    spec: adversary.Attack
    world: WorldConfig
    seed: int = 0
    every: int = 25


def run_job(job: Job) -> dict:
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(job.path, dtype=torch.float32)
    torch.manual_seed(job.seed)
    curve = attack_curve(model, job.spec, build_world(job.world), job.seed, job.every)
    return {"model": job.model, "attack": job.spec.name, "seed": job.seed, "curve": curve}


def _one_thread():
    torch.set_num_threads(1)


def start_pool(workers: int) -> cf.Executor:
    """A pool of `workers` spawned processes with one torch thread each (spawn: forking a process that has
    run torch can deadlock its thread pools)."""
    return cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_one_thread)
