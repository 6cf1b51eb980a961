"""TAR: Tamper-Resistant safeguards via adversarial meta-learning (Tamirisa et al. 2024, Alg. 1, Eq. 1).

    min_θ  λ_TR · E_{attack ~ A_train} [ L_TR(attack(θ); x_TR) ]  +  λ_retain · L_retain(θ; x_r)        (Eq. 1)

Start from a safeguarded model θ0 (stage 1, `safeguard.py`). Each outer step simulates a fine-tuning attack
on the current weights, measures how much hazardous knowledge the *attacked* model shows (the entropy TR
loss on held-out forget text x_TR), and moves θ so that future attacks recover less, while a retain loss
keeps benign knowledge. The gradient through the attack is first-order (dθ'/dθ ≈ I): the TR gradient is
taken at the attacked weights and applied to θ. `outer_step` below is Alg. 1 l.3-12 in the order of the
numbered listing in docs/paper.md §2; `train_tar` is its loop (l.2).

Run manual
    laptop, no GPU, no network (the built-in miniature world; 17-21 min on 2 CPU cores with base pretraining):
        python tar.py --domain bio          # or chem, cyber; or refusal (Sec. 5 refusal: DPO TR loss, ASR)
    It pretrains the base model (cached in runs/bio/base), applies the random-mapping safeguard (runs/bio/
    safeguard), runs N outer steps of Alg. 1 (runs/bio/tar), then measures base, safeguard and TAR at rest and
    under three attacks on the red team's documents (report.py). `python tar.py --help`: every flag (config.py).
    at scale (any Hugging Face causal LM, the real datasets of docs/data.md or --data-dir; docs/scale.md):
        torchrun --nproc_per_node 8 tar.py --domain bio --model meta-llama/Meta-Llama-3-8B-Instruct
    Under torchrun every parameter is an FSDP2 shard (`fsdp.py`); `outer_step` is the same code. The model you
    pass is θ0 (`safeguard.py --model` makes it); --loss-chunk 64 keeps the (B, T, V) logits out of memory. A
    checkpoint is written every --checkpoint-every (10) steps and on SIGTERM or Ctrl-C; --resume continues exactly.

Files (runs/<domain>/, one writer each): checkpoint/ (resume state), metrics.jsonl (metrics.partial.jsonl while
training; a line per outer step: tr_loss, retain_loss, retain_lm, retain_rep, grad_norm, inner_lr, inner_steps,
seconds; every --eval-every steps dev_forget on V and dev_benign on G_dev (refusal: ASR / harmless, and refusal),
never E; none with --model), tar/ (save_pretrained + tokenizer), results.json (`report.run_results`), results.md,
*.png. A non-finite loss stops the run: nothing is saved."""

from __future__ import annotations

import copy
import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch
from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

import cli
import disguise
import fsdp
import losses
import neurons
import report
import safeguard
import scoring
import storage
import adversary
from batching import Stream, shard_batch
from config import TARConfig, parse_args
from fsdp import Dist
from realworld import load_real_world
from world import attribute_halves, build_world, document_halves, entity_halves


# --------------------------------------------------------------------------------------------------------
# Alg. 1: one outer step (docs/paper.md §2)
# --------------------------------------------------------------------------------------------------------
def tr_loss(model, ref, b, cfg: TARConfig, values=None) -> torch.Tensor:
    """L_TR at the current (attacked) weights on one x_TR micro-batch: the entropy loss of Sec. 4.2 (knowledge
    restriction) or, for refusal, DPO against the frozen reference π_ref = θ0 (rows are (refusal, compliance)
    pairs; b.fact_mask marks the response tokens)."""
    if cfg.tr_loss == "entropy":  # logits (B, T, V), or the final hidden states and the head (--loss-chunk)
        x, head, _ = losses.forward_for_loss(model, b.input_ids, b.attention_mask, cfg.loss_chunk)
        # deviation: entropy on fact positions by default (official code: every position, padding included) because
        # the hazard is the fact, and padding is not text (docs/paper.md §8, pitfall 8); --tr-mask all: the code's.
        mask = {"fact": b.fact_mask, "tokens": b.attention_mask.bool(), "all": torch.ones_like(b.fact_mask)}
        if cfg.tr_entropy == "values_ce":
            return losses.uniform_values_loss(x, mask[cfg.tr_mask], values, head, cfg.loss_chunk)
        return losses.entropy_tr_loss(x, mask[cfg.tr_mask], head, cfg.loss_chunk, values)
    logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits  # (B, T, V)
    if b.input_ids.shape[0] % 2:
        raise cli.UserError("DPO pairs were split: give an even --micro-batch and a --tr-batch whose rows (2 per "
                            "pair) divide evenly over the processes")
    # deviation: π_ref's log-probabilities are recomputed at every TR point (official code: precomputed once)
    # because that costs one forward of a frozen model and keeps no per-batch cache.
    with torch.no_grad():
        logits_ref = ref(input_ids=b.input_ids, attention_mask=b.attention_mask).logits
    logp = losses.sequence_logprobs(logits, b.input_ids, b.fact_mask)  # (2P,)
    return losses.dpo_loss(logp, losses.sequence_logprobs(logits_ref, b.input_ids, b.fact_mask), cfg.dpo_beta)


def outer_step(model, ref, outer_opt, world, x_tr, x_r, rng: random.Random, cfg: TARConfig,
               d: Dist = Dist(), masks: dict | None = None) -> dict:
    """Alg. 1 l.3-12, once. Under torchrun each parameter is this rank's FSDP2 shard and each batch is cut to
    this rank's rows (`shard_batch`); nothing below changes: `fsdp.local` is the whole tensor in one process.
    Gradients come from .backward() into .grad (FSDP2 reduce-scatters them there), so every batch may be a list
    of micro-batches whose gradients accumulate (a global batch larger than memory)."""
    params = fsdp.trainable(model)
    shards = [fsdp.local(p) for p in params]  # this rank's piece of each parameter
    micro = lambda b: shard_batch(b, d.rank, d.world_size, cfg.micro_batch, d.device)
    # l.3: attack ~ A_train (its LR and data; its data order from its own seed), rank 0's draw on every rank
    spec, attack_seed = fsdp.broadcast((adversary.sample_attack(rng, cfg.train_attacks()), rng.randrange(2**31)), d)
    x_tr, x_r = micro(x_tr), micro(x_r)  # l.4: x_TR ~ D_TR, x_r ~ D_retain (the caller's draw), this rank's rows
    # l.5: snapshot θ (the attack moves the weights in place; on the CPU if asked, as the code); g_TR ← 0
    snapshot = [s.detach().to("cpu" if cfg.snapshot_offload else s.device, copy=True) for s in shards]
    g_tr = [torch.zeros_like(s) for s in shards]  # Σ_k w_k ∇L_TR(θ_k)
    tr_losses = []
    w = losses.tr_weights(spec.steps, cfg.tr_every, cfg.tr_weights)  # w_k by inner step k: exp(0.0625 (k − K))
    t = world.tokens["T" if cfg.tr_split == "entities" else "T_tr"]  # --tr-entropy values*: the values x_TR may hold
    values = torch.unique(t.ids[:, 1:][t.fact[:, :-1]]) if cfg.tr_entropy != "vocab" else None

    # l.6-8: K steps of the sampled attack with a fresh inner optimizer; the loop pauses at θ_k every tr_every
    batches = map(micro, adversary.attack_stream(spec, world.tokens, attack_seed))
    attacker_loss = lambda m, b: adversary.lm_batch_loss(m, b, chunk=cfg.loss_chunk)
    for k in adversary.attack_steps(model, spec, batches, loss_fn=attacker_loss, every=cfg.tr_every):
        # l.9: g_TR ← g_TR + w_k ∇_θ L_TR(θ_k; x_TR), the first-order gradient at the attacked weights
        model.zero_grad(set_to_none=True)  # drop the attacker's last gradient
        l_tr = 0.0
        for b in x_tr:
            part = tr_loss(model, ref, b, cfg, values) / len(x_tr)
            part.backward()
            l_tr = l_tr + part.detach()
        for g, p in zip(g_tr, params):
            g.add_(fsdp.local(p.grad), alpha=w[k])
        tr_losses.append(l_tr)

    with torch.no_grad():  # l.10: restore θ exactly (the inner optimizer's state died with the attack)
        for s, snap in zip(shards, snapshot):
            s.copy_(snap)

    # l.11: g = λ_retain ∇L_retain(θ; x_r) + λ_TR g_TR, the retain gradient at the restored θ (Eq. 2)
    outer_opt.zero_grad(set_to_none=True)
    l_retain, parts = 0.0, {}
    for b in x_r:
        _, head, out = losses.forward_for_loss(model, b.input_ids, b.attention_mask, cfg.loss_chunk, True)
        with torch.no_grad():
            out_ref = losses.forward_for_loss(ref, b.input_ids, b.attention_mask, cfg.loss_chunk, True)[2]
        loss, terms = losses.retain_loss(out, out_ref, b.input_ids, b.attention_mask, cfg.squared_distance, head,
                                         cfg.loss_chunk)
        (cfg.lambda_retain * loss / len(x_r)).backward()
        l_retain = l_retain + loss.detach() / len(x_r)
        parts = {k: parts.get(k, 0.0) + v / len(x_r) for k, v in terms.items()}
    fsdp.reshard(ref)  # its forwards alone left its root (the embeddings and head) gathered
    for p, g in zip(params, g_tr):
        fsdp.local(p.grad).add_(g, alpha=cfg.lambda_tr)

    # l.12: the outer optimizer moves the weights it holds (--outer-params) by the gradient of all, clipped as one
    # deviation: gradient clipping at 1.0 (paper and official code: none) because the miniature recipe of
    # docs/paper.md §7 clips; with Adam it only bounds the rare outlier step. --grad-clip 0 turns it off.
    norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
    logged = {"tr_loss": torch.stack(tr_losses).mean(), "retain_loss": l_retain, **parts}
    logged = {**{k: fsdp.all_mean(float(v), d) for k, v in logged.items()}, "grad_norm": float(fsdp.full(norm))}
    bad = [k for k, v in logged.items() if not math.isfinite(v)]  # the same on every rank (means, a global norm)
    if bad:  # stop before the weights move: the last good state is what a checkpoint holds
        raise adversary.Diverged(f"{' and '.join(bad)} not finite (sampled attack {spec.name})", 0)
    neurons.confine(masks)  # --outer-params neurons, neuron_outputs, hazard_words: only some rows/columns move
    outer_opt.step()
    return {**logged, "inner_lr": spec.lr, "inner_steps": spec.steps}  # the attack drawn (l.3)


# --------------------------------------------------------------------------------------------------------
# The outer optimizer and the weights it trains
# --------------------------------------------------------------------------------------------------------
def outer_optimizer(model, cfg: TARConfig, masks: dict | None = None):
    """The outer optimizer (over `outer_parameters`) and its learning-rate schedule."""
    params = outer_parameters(model, cfg, masks)
    if cfg.outer_optimizer == "schedulefree":  # the paper's; its warmup is built in and it has no schedule
        import schedulefree
        opt = schedulefree.AdamWScheduleFree(params, lr=cfg.outer_lr, eps=cfg.outer_eps, weight_decay=0.0,
                                             warmup_steps=cfg.outer_warmup)
        averaged_weights(opt, False)  # Schedule-Free starts in training mode
        return opt, get_constant_schedule_with_warmup(opt, 0)
    # deviation: plain AdamW, lr 3e-2 decayed to 0 by cosine, in the miniature preset (paper: Schedule-Free AdamW,
    # lr 2e-5, warmup 32, --preset paper) because the miniature recipe was measured with it. At a constant lr
    # whether an attack on unseen entities recovers flips from one outer step to the next; decayed, the run ends
    # where its updates have died down (cyber held on 4 of 5 seeds, 0 of 3 at a constant lr; docs/results.md).
    # 3e-2, not 1e-2: 3x the lr moved the few word rows and neuron outputs further (docs/search.md rounds 25-27).
    # deviation: Adam's ε = 1e-3 in the miniature preset (paper: 1e-8) because near a clipped gradient's typical
    # entry it gives weights with small gradients smaller steps, which kept held-out facts (docs/results.md).
    fused = (bool(params) and all(p.is_cuda for p in params)) or None  # GPU: one kernel
    opt = torch.optim.AdamW(params, lr=cfg.outer_lr, eps=cfg.outer_eps, weight_decay=0.0, fused=fused)
    if cfg.outer_schedule == "cosine":
        return opt, get_cosine_schedule_with_warmup(opt, cfg.outer_warmup, round(cfg.outer_cosine * cfg.outer_steps))
    return opt, get_constant_schedule_with_warmup(opt, cfg.outer_warmup)


def outer_parameters(model, cfg: TARConfig, masks: dict | None = None) -> list:
    """The weights TAR trains (Alg. 1 l.12); the masked options: the tensors of `masks` (neurons.outer_masks)."""
    if cfg.outer_params not in ("all", "mlp"):
        return list(masks)
    if cfg.outer_params == "all":
        return [p for p in model.parameters() if p.requires_grad]
    # deviation: the MLPs alone with --outer-params mlp, the mini preset's with --model (paper: every weight) because
    # trained everywhere TAR also rewrote the attention that routes a name to its facts, and held-out benign facts
    # went with the hazardous ones (resetting layer 0's attention of a trained model to θ0 gave back 8 points of
    # held-out cities); facts live in the MLPs, and trained there TAR keeps held-out cities (docs/results.md).
    mlps = [m for name, m in model.named_modules() if name.rsplit(".", 1)[-1] in ("mlp", "feed_forward")]
    if not mlps:
        raise cli.UserError(f"--outer-params mlp: {type(model).__name__} has no module named mlp or feed_forward; "
                            "use --outer-params all")
    return [p for m in mlps for p in m.parameters() if p.requires_grad]


def averaged_weights(opt, on: bool) -> None:
    """Schedule-Free AdamW trains at one iterate and evaluates and saves another (docs/paper.md §8, pitfall 7)."""
    if hasattr(opt, "eval"):  # on: the averaged weights, off: the training iterate; AdamW has neither (no-op)
        opt.eval() if on else opt.train()


# --------------------------------------------------------------------------------------------------------
# Alg. 1 l.2: the outer loop
# --------------------------------------------------------------------------------------------------------
METRICS, PARTIAL = "metrics.jsonl", "metrics.partial.jsonl"  # the partial log becomes metrics.jsonl at the end
SHOWN = {"tr_loss": "TR", "retain_loss": "retain", "dev_forget": "forget V", "dev_benign": "G_dev"}  # progress


def train_tar(model, ref, world, cfg: TARConfig, run_dir: Path, d: Dist = Dist(), log=print, on_step=None):
    """N outer steps of Alg. 1 from θ0 = `model` (in place). A line per step goes to metrics.partial.jsonl (the
    caller publishes it with the results: a failed rerun never touches the last run's log); a checkpoint every
    --checkpoint-every steps and on SIGTERM or Ctrl-C (then cli.Stopped). A non-finite loss or gradient stops the
    run before the weights move (adversary.Diverged, naming the outer step); the caller then saves nothing.
    on_step(step, model) after each step sees the weights that would be saved (search.py scores snapshots)."""
    ref.eval().requires_grad_(False)
    world = document_halves(world) if cfg.tr_split == "documents" else world  # each half: every entity of T
    masks = neurons.outer_masks(model, world, cfg)  # at θ0: --resume loads a checkpoint's weights below
    opt, schedule = outer_optimizer(model, cfg, masks)
    rng = random.Random(cfg.seed)  # attacks and their data orders; the same on every rank
    x_trs = Stream(world.tokens["T_tr"], cfg.tr_batch, cfg.seed)  # held-out forget batches (T's other half)
    x_rs = Stream(world.tokens[cfg.retain_data], cfg.retain_batch, cfg.seed + 1)
    ckpt, partial, start, saved_at = run_dir / "checkpoint", run_dir / PARTIAL, 1, None
    state = {"rng": rng, "x_tr": x_trs, "x_r": x_rs, "schedule": schedule}  # what the next step depends on
    if cfg.resume:
        saved_at = resume(ckpt, model, opt, state, cfg, run_dir, d)
        start = saved_at + 1
        log(f"TAR: resumed after outer step {saved_at}")
    elif d.is_main:  # an earlier run's checkpoint must not resume into this run's log
        shutil.rmtree(ckpt, ignore_errors=True)

    stop, t0 = fsdp.Stop(), time.time()
    try:
        with open(partial, "a" if cfg.resume else "w") if d.is_main else open(os.devnull, "w") as f, \
                cli.progress(cfg.outer_steps, "TAR", start - 1, leave=True, enabled=d.is_main) as bar:
            for step in range(start, cfg.outer_steps + 1):
                try:  # l.3-4's data: the world's halves of T, or (--tr-split entities, attributes) a fresh pair
                    fresh = {"entities": entity_halves, "attributes": attribute_halves}.get(cfg.tr_split)
                    w, x_tr = fresh(world, rng, cfg.tr_batch) if fresh else (world, next(x_trs))
                    with disguise.names(model, world, cfg.name_noise, rng):  # --name-noise: T's names made new
                        m = outer_step(model, ref, opt, w, x_tr, next(x_rs), rng, cfg, d, masks)
                except adversary.Diverged as e:
                    kept = f"; the checkpoint of outer step {saved_at} is kept in {ckpt}" if saved_at else ""
                    raise adversary.Diverged(f"TAR diverged at outer step {step}: {e}; no model or results were "
                                             f"written{kept}. Lower --outer-lr or --inner-lrs", step) from None
                schedule.step()
                m = {"step": step, **m, "seconds": round(time.time() - t0, 2)}
                if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.outer_steps):
                    averaged_weights(opt, True)
                    acc = scoring.accuracies(model, world, scoring.dev(world))  # V and G_dev: never E
                    averaged_weights(opt, False)
                    m.update(dev_forget=acc["forget"], dev_benign=acc["G" if "G" in acc else "retain"],
                             **({"refusal": acc["refusal"]} if "refusal" in acc else {}))  # (refusal world: on V)
                if on_step is not None:  # at the weights that would be saved (Schedule-Free: the averaged ones)
                    averaged_weights(opt, True), on_step(step, model), averaged_weights(opt, False)
                bar.set_postfix(**{SHOWN[k]: f"{v:.2f}" if "loss" in k else f"{v:.0%}"
                                   for k, v in m.items() if k in SHOWN})
                bar.update(1)
                f.write(json.dumps(m, allow_nan=False) + "\n")
                f.flush()  # a crash loses nothing already measured
                stopping = fsdp.any_rank(bool(stop.requested), d)
                if stopping or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
                    storage.save_checkpoint(ckpt, model, opt, {
                        "step": step, "config": asdict(cfg), "rng": rng.getstate(), "torch_rng": torch.get_rng_state(),
                        "x_tr": x_trs.state_dict(), "x_r": x_rs.state_dict(), "schedule": schedule.state_dict()}, d)
                    saved_at = step
                if stopping:
                    raise cli.Stopped(f"stopped by {stop.requested or 'a signal on another rank'} after outer step "
                                      f"{step}; checkpoint written to {ckpt}; rerun with the same flags and --resume")
    finally:
        stop.close()
    averaged_weights(opt, True)  # the weights to save and evaluate
    log(f"TAR: outer steps {start}..{cfg.outer_steps} in {time.time() - t0:.0f}s")


def resumable(ckpt: Path, cfg: TARConfig, d: Dist) -> dict:
    """The checkpoint's state (step, config, RNGs, data positions), checked to continue this run (at the start)."""
    saved = storage.load_rank_state(ckpt, d)
    if missing := {"step", "config", "rng", "torch_rng", "x_tr", "x_r", "schedule"} - set(saved):
        raise cli.UserError(f"--resume: the checkpoint in {ckpt} lacks {', '.join(sorted(missing))}; delete it")
    if changed := cfg.changed_since(saved["config"]):
        raise cli.UserError(f"--resume: the checkpoint was made with other settings ({', '.join(changed)})")
    return saved


def resume(ckpt: Path, model, opt, state: dict, cfg: TARConfig, run_dir: Path, d: Dist) -> int:
    """Restores model, optimizer, RNGs, data positions and schedule from `ckpt`, and the metrics lines up to it
    (they must be exactly steps 1..its step); returns its outer step."""
    saved = resumable(ckpt, cfg, d)
    storage.load_checkpoint(ckpt, model, opt, d)
    state["rng"].setstate(saved["rng"])
    torch.set_rng_state(saved["torch_rng"])
    for name in ("x_tr", "x_r", "schedule"):
        state[name].load_state_dict(saved[name])
    if d.is_main:  # the lines of steps after the checkpoint are redone (a finished run's log was published)
        log = next((p for p in (run_dir / PARTIAL, run_dir / METRICS) if p.exists()), None)
        rows = storage.read_jsonl(log, ("step",), "delete it to start over", torn_tail=True) if log else []
        kept = [r for r in rows if r["step"] <= saved["step"]]
        if [r["step"] for r in kept] != list(range(1, saved["step"] + 1)):
            raise cli.UserError(f"--resume: {log} does not hold steps 1..{saved['step']} of the checkpoint's run; "
                                "delete the checkpoint to start over")
        storage.write_jsonl(run_dir / PARTIAL, kept)
    return saved["step"]


def publish_metrics(run_dir: Path, d: Dist) -> None:  # the finished run's log, once its model is saved and attacked
    if d.is_main:
        os.replace(run_dir / PARTIAL, run_dir / METRICS)


# --------------------------------------------------------------------------------------------------------
# A whole run: stage 1 (cached), TAR, the end-of-run report
# --------------------------------------------------------------------------------------------------------
def stage_two(theta0, base, base_key: str, world, cfg: TARConfig, run_dir: Path, out: Path, log=print) -> float:
    """Alg. 1 l.2-12: TAR from θ0 (in place), logged under `out`, saved as out/tar; its seconds (tar.py, seeds.py)."""
    t0 = time.time()
    # deviation: the retain loss's frozen reference is θ0 (paper, official code: the original model) because TAR
    # starts from θ0 and the retain term keeps θ0's benign behaviour (docs/paper.md §7); --reference base: the paper's.
    train_tar(theta0, copy.deepcopy(theta0 if cfg.reference == "safeguard" else base), world, cfg, out, log=log)
    storage.save_model(theta0, world.tokenizer, out / "tar", {"key": storage.digest("tar", base_key, asdict(cfg)),
        "what": "TAR", "world": asdict(world.config), "parent": str(run_dir / "safeguard"), "config": asdict(cfg)})
    return round(time.time() - t0, 1)


def run(cfg: TARConfig, log=print) -> dict:
    cfg.validate()
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    d = fsdp.setup_dist()
    run_dir = storage.writable_dir(Path(cfg.runs) / cfg.domain, d)
    if cfg.resume:
        resumable(run_dir / "checkpoint", cfg, d)  # refused now, not after stage 1 has retrained
    if cfg.model:
        return run_real(cfg, run_dir, d, log if d.is_main else (lambda *_: None))
    if d.distributed:
        raise cli.UserError("the miniature world runs in one process; under torchrun pass --model")
    timings, t0 = {}, time.time()
    world = build_world(cfg.world())

    # Alg. 1 l.1, stage 1 (cached, from --world-seed): base, oracle and θ0: random mapping, or for refusal the
    # refusal-trained "instruct" model (the paper starts refusal-TAR from Llama-3-8B-Instruct itself)
    method = "refusal" if world.chats else "random_mapping"
    base, base_key, theta0 = safeguard.stage_one(
        world, safeguard.BaseConfig(steps=cfg.base_steps, seed=cfg.world_seed),
        safeguard.for_method(method, steps=cfg.safeguard_steps, seed=cfg.world_seed), run_dir, log)
    timings["base_and_safeguard"] = round(time.time() - t0, 1)

    # While TAR trains on one core, a worker attacks the other models and measures their relearning and
    # learnability (the refusal world's base answers every prompt: not attacked); an error ends the worker at once
    with report.EndOfRun(run_dir, world, cfg, base) as end:
        timings["tar"] = stage_two(theta0, base, base_key, world, cfg, run_dir, run_dir, log)

        # End-of-run attacks: TAR's in this process, base and safeguard's finish in the worker meanwhile
        t2 = time.time()
        curves = end.finish()
    timings.update(attacks=round(time.time() - t2, 1), total=round(time.time() - t0, 1))
    publish_metrics(run_dir, d)
    return report.write_report(report.run_results(run_dir, world, cfg, curves, timings), run_dir, log)


def run_real(cfg: TARConfig, run_dir: Path, d: Dist, log) -> dict:
    """Alg. 1 on a Hugging Face model and the real datasets, in one process or sharded under torchrun. Scored in
    memory (WMDP 0-shot, MMLU minus the domain with its shots; lm-eval letter style), saved with save_pretrained."""
    t0 = time.time()
    world = load_real_world(cfg.world())
    (reference, why), model = cfg.reference_model(), storage.load_model(cfg.model, d, safetensors_only=True)
    ref = storage.load_model(reference, d, safetensors_only=True)  # frozen: θ0, its parent, or --reference
    if d.is_main:
        micro = cfg.micro_batch or max(cfg.inner_batch, cfg.tr_batch, cfg.retain_batch) // d.world_size
        log(fsdp.estimate_here(model.config, cfg.model, d, micro, cfg.seq_len, cfg.snapshot_offload, cfg.loss_chunk))
        log(f"reference of the retain loss: {reference} ({why})")
        log(f"data: {', '.join(f'{k} {len(v)} docs' for k, v in world.docs.items())}; "
            f"{', '.join(f'{k} {len(v)} items' for k, v in world.items.items())} (world {world.digest})")
    train_tar(model, ref, world, cfg, run_dir, d, log)
    timings = {"tar": round(time.time() - t0, 1)}
    at_rest = {"tar": report.at_rest(model, world, scoring.reported(world))}  # in memory (sharded), ranks in step
    storage.save_model(model, world.tokenizer, run_dir / "tar", {"what": "TAR", "parent": cfg.model, "world": asdict(
        cfg.world()), "config": asdict(cfg), "datasets": cfg.datasets()}, d)
    timings["total"] = round(time.time() - t0, 1)
    publish_metrics(run_dir, d)
    results = report.run_results(run_dir, world, cfg, {}, timings, at_rest)
    return report.write_report(results, run_dir, log) if d.is_main else results


# --------------------------------------------------------------------------------------------------------
# CLI: one flag per TARConfig field (config.parse_args), the paper's value beside each default
# --------------------------------------------------------------------------------------------------------
def main(argv=None):
    try:
        cli.main(lambda: run(parse_args(argv)))
    finally:
        fsdp.teardown()


if __name__ == "__main__":
    main()
