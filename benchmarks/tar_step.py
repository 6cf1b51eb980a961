"""Benchmark: one TAR outer step (`tar.outer_step`, Alg. 1) against the sum of its parts, and its memory.

    parts = K attacker steps (forward, backward, AdamW step) + K/tr_every TR forward/backward
            + 1 retain forward/backward + 1 frozen-reference forward
    ratio = time(outer step) / time(parts), measured interleaved in the same run (the machine is noisy);
            what the ratio shows above 1 is the snapshot, the restore, the TR-gradient accumulation and Python.

Memory: every tensor alive at the step's peak (a TR point inside the inner loop), found by a census of live
tensors and attributed to its role, in units of the model's parameter bytes (process RSS says nothing for a
3 MB model): parameters, gradients, inner optimizer state, outer optimizer state, snapshot, TR buffer, frozen
reference, other (activations, batches).

Under torchrun (FSDP2 over gloo on CPU, `fsdp.py`) the same comparison shows what sharding, the per-shard snapshot
and restore, and the all-gathers / reduce-scatters add: the parts are then run on the sharded model too, so the
ratio isolates Alg. 1's own overhead; compare the absolute times with the single-process run for the
communication cost. (The memory census is single-process only.)

Run:  python benchmarks/tar_step.py                        # the miniature model (width 128, 4 layers)
      python benchmarks/tar_step.py --width 512 --layers 8  # a model big enough for the overhead to matter
      OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 benchmarks/tar_step.py --width 512 --layers 8
"""

from __future__ import annotations

import copy
import gc
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import adversary  # noqa: E402
import cli  # noqa: E402
import config  # noqa: E402
import fsdp  # noqa: E402
import losses  # noqa: E402
import safeguard  # noqa: E402
import tar  # noqa: E402
from batching import Stream, shard_batch  # noqa: E402
from cli import arg  # noqa: E402
from world import WorldConfig, build_world  # noqa: E402


def live_tensors() -> dict[int, torch.Tensor]:
    """Every live tensor, keyed by its storage (views of one storage count once)."""
    found = {}
    for obj in gc.get_objects():
        try:
            if isinstance(obj, torch.Tensor) and obj.device.type == "cpu":
                found.setdefault(obj.untyped_storage().data_ptr(), obj)
        except Exception:  # objects that die or refuse inspection mid-scan
            pass
    return found


def nbytes(t: torch.Tensor) -> int:
    return t.untyped_storage().nbytes()


def parts_time(model, ref, world, x_tr, x_r, spec, cfg, seed, d=fsdp.Dist()) -> float:
    """The same work as one outer step, done as separate plain pieces (on this rank's rows and micro-batches,
    as outer_step cuts them)."""
    params = [p for p in model.parameters() if p.requires_grad]
    state = [fsdp.local(p).detach().clone() for p in params]  # put the weights back afterwards (not timed)
    mine = lambda b: shard_batch(b, d.rank, d.world_size, cfg.micro_batch, d.device)
    x_tr, x_r = mine(x_tr), mine(x_r)
    sync = torch.cuda.synchronize if d.device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    adversary.attack(model, spec, map(mine, adversary.attack_stream(spec, world.tokens, seed)))  # K attacker steps
    for _ in range(cfg.inner_steps // cfg.tr_every):  # K/tr_every TR forward/backward
        for b in x_tr:
            logits = model(input_ids=b.input_ids, attention_mask=b.attention_mask).logits
            losses.entropy_tr_loss(logits, b.fact_mask).backward()
    for b in x_r:
        out = model(input_ids=b.input_ids, attention_mask=b.attention_mask, output_hidden_states=True)
        with torch.no_grad():  # reference forward
            out_ref = ref(input_ids=b.input_ids, attention_mask=b.attention_mask, output_hidden_states=True)
        losses.retain_loss(out, out_ref, b.input_ids, b.attention_mask)[0].backward()  # retain fwd/bwd
    sync()
    elapsed = time.perf_counter() - t0
    with torch.no_grad():
        for p, s in zip(params, state):
            fsdp.local(p).copy_(s)
            p.grad = None
    return elapsed


@dataclass
class BenchArgs:
    width: int = arg(128, "model width", above=0)
    layers: int = arg(4, "decoder layers", above=0)
    inner_steps: int = arg(tar.TARConfig.inner_steps, "K (tar.py --inner-steps)", above=0)
    outer_params: str = arg(config.MINI_REAL["outer_params"], "tar.py --outer-params", choices=("mlp", "all"))
    repeats: int = arg(5, "timed repeats (interleaved)", above=0)
    threads: int = arg(1, "torch threads", above=0)


def bench(args: BenchArgs) -> None:
    torch.set_num_threads(args.threads)
    d = fsdp.setup_dist()

    world = build_world(WorldConfig("bio"))
    mcfg = safeguard.ModelConfig(width=args.width, layers=args.layers, heads=max(1, args.width // 32),
                                 mlp=2 * args.width)
    model = safeguard.new_model(len(world.tokenizer), mcfg, world.tokenizer, seed=0)
    ref = copy.deepcopy(model).requires_grad_(False)
    n_params = sum(q.numel() for q in model.parameters())
    if d.distributed:
        fsdp.shard(model, d)
        fsdp.shard(ref, d)
    cfg = tar.TARConfig(**{**config.MINI_REAL, "inner_steps": args.inner_steps, "outer_params": args.outer_params})
    cfg.validate()  # the same checks as tar.py's flags
    outer_opt, _ = tar.outer_optimizer(model, cfg)  # Adam state for the weights the outer step trains
    x_tr = next(Stream(world.tokens["T_tr"], cfg.tr_batch, 0))
    x_r = next(Stream(world.tokens["Rt"], cfg.retain_batch, 1))
    rng = random.Random(0)  # outer_step draws the same attack from an equal RNG at every call
    spec, seed = adversary.sample_attack(rng, cfg.train_attacks()), rng.randrange(2**31)
    say = print if d.is_main else (lambda *_: None)
    say(f"{d.world_size} process(es); model: width {args.width}, {args.layers} layers, {n_params / 1e6:.2f}M parameters; K = {cfg.inner_steps}, "
          f"TR every {cfg.tr_every}, outer step trains {cfg.outer_params}, batches attacker {cfg.inner_batch} / TR {cfg.tr_batch} / retain {cfg.retain_batch}; "
          f"{torch.get_num_threads()} torch thread(s)")

    step = lambda: tar.outer_step(model, ref, outer_opt, world, x_tr, x_r, random.Random(0), cfg, d=d)
    step()  # warm-up (also creates the outer optimizer's state)
    parts_time(model, ref, world, x_tr, x_r, spec, cfg, seed, d)
    outer, parts = [], []
    for _ in range(args.repeats):  # interleaved: both see the same machine conditions
        t0 = time.perf_counter()
        step()
        outer.append(time.perf_counter() - t0)
        parts.append(parts_time(model, ref, world, x_tr, x_r, spec, cfg, seed, d))
    o, s = statistics.median(outer), statistics.median(parts)
    say(f"outer step {o * 1000:.0f} ms (median of {args.repeats}), sum of parts {s * 1000:.0f} ms, "
          f"ratio {o / s:.3f} (goal ≤ 1.10)")

    if d.distributed:
        fsdp.teardown()
        return
    # ---- memory census at a TR point (the peak: all of the step's buffers alive at once) ----
    gc.collect()
    before = set(live_tensors())
    inner_state, census = [], {}
    hook = register_optimizer_step_post_hook(
        lambda opt, *_: inner_state.append(opt) if opt is not outer_opt else None)
    original = losses.entropy_tr_loss

    def counting(*args, **kwargs):
        if not census:
            census.update(live_tensors())
        return original(*args, **kwargs)

    tar.losses.entropy_tr_loss = counting
    try:
        step()
    finally:
        tar.losses.entropy_tr_loss = original
        hook.remove()
    param_bytes = sum(nbytes(q) for q in model.parameters())
    ptr = lambda t: t.untyped_storage().data_ptr()
    roles = {
        "parameters": {ptr(q) for q in model.parameters()},
        "gradients": {ptr(q.grad) for q in model.parameters() if q.grad is not None},
        "outer optimizer state": {ptr(v) for st in outer_opt.state.values() for v in st.values()
                                  if torch.is_tensor(v) and v.numel() > 1},
        "inner optimizer state": {ptr(v) for st in inner_state[-1].state.values() for v in st.values()
                                  if torch.is_tensor(v) and v.numel() > 1},
        "frozen reference": {ptr(q) for q in ref.parameters()},
    }
    assigned = set().union(*roles.values())
    # new parameter-shaped tensors are the snapshot and the TR buffer (two per parameter)
    shapes = {}
    for q in model.parameters():
        shapes.setdefault(tuple(q.shape), 0)
        shapes[tuple(q.shape)] += 2
    new_param_like, other = set(), set()
    for key, t in census.items():
        if key in assigned or key in before:
            continue
        if shapes.get(tuple(t.shape), 0) > 0:
            shapes[tuple(t.shape)] -= 1
            new_param_like.add(key)
        else:
            other.add(key)
    roles["snapshot + TR buffer"] = new_param_like
    roles["other (activations, batches)"] = other
    print(f"\nmemory at a TR point, in units of the model's parameter bytes ({param_bytes / 2**20:.2f} MiB):")
    total = 0
    for role, keys in roles.items():
        b = sum(nbytes(census[k]) for k in keys if k in census)
        total += b
        print(f"  {role:32s} {b / param_bytes:6.2f}x")
    print(f"  {'total':32s} {total / param_bytes:6.2f}x")


def main(argv=None):
    cli.run(BenchArgs, bench, argv, __doc__.split("\n\n")[0])


if __name__ == "__main__":
    main()
