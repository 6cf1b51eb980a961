"""GPU report: TAR's own `tar.outer_step` on real-model shapes, measured on one accelerator (FSDP2 path, bf16).

For each shape (random init from a config; random token batches; no hub, no `datasets`) and micro-batch:
    outer step time   one Alg. 1 step at ONE RANK'S SHARE of the paper's batches on --ranks GPUs (attacker 32, TR
                      64, retain 64 rows in all: 4, 8 and 8 rows per rank on 8 GPUs), seq 256, small K
    sum of parts      K attacker steps + K/4 TR fwd/bwd + retain fwd/bwd + reference fwd, measured in the same run
    MFU               model FLOPs of the step / time / peak (989 TFLOP/s: H100/H200 dense bf16)
                      FLOPs per token: 6·N + 12·L·d·T for a fwd+bwd, a third of that for the reference fwd
                      (N = parameters doing matmuls: all but the input embedding, unless tied)
    memory            torch.cuda.max_memory_allocated vs fsdp.memory_estimate (the start-up estimate of tar.py)
    restore exact     an outer step with outer lr 0 leaves every weight bit-identical (snapshot/restore on CUDA)
Then the rest of the paper's pipeline on the same shapes, a few steps each at one rank's share (`pipeline`):
stage 1 (safeguard.defend's random mapping at --model's settings) and every attack of the paper's red team
(suite.SUITES["paper"], LoRA included), each timed, its losses finite, its peak memory.
Then the CUDA checkpoint path on a small model: 3 outer steps with a checkpoint after step 2, a fresh model
resumed from it (the 3rd step must be identical), the result gathered and written with save_pretrained, reloaded
with transformers and scored the same as the in-memory model.

The model runs as an FSDP2 module in a one-process group (nccl on CUDA, gloo on CPU), exactly as under
`torchrun --nproc_per_node 1 tar.py --model ...`: fp32 master weights, bf16 compute through the mixed-precision
policy on CUDA.

The projection of the paper's run (`projection`) uses only entries measured at the share of the GPUs it projects
to: a micro-batch that no rank of that run can hold (8 rows when each rank has 4 attacker rows) is not projected.

Run:  python benchmarks/gpu.py [--out DIR]      # the card; writes gpu_report.json to $OUT, else DIR
      python benchmarks/gpu.py --tiny --out /tmp # CPU smoke test of the whole script (tests/test_gpu_bench.py)
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import itertools
import json
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import adversary  # noqa: E402
import cli  # noqa: E402
import fsdp  # noqa: E402
import safeguard  # noqa: E402
import scoring  # noqa: E402
import suite  # noqa: E402
import storage  # noqa: E402
import tar  # noqa: E402
from batching import Tokens  # noqa: E402
from config import MINI_REAL, PAPER, configure  # noqa: E402
from cli import UsageError, arg  # noqa: E402
from tokenizer import make_tokenizer  # noqa: E402
from world import World, WorldConfig  # noqa: E402
from tar_step import parts_time  # noqa: E402

PEAK_FLOPS = 989e12  # H100 / H200 SXM, dense bf16
LLAMA = dict(model_type="llama", rope_theta=500000.0, max_position_embeddings=8192, rms_norm_eps=1e-5)
SHAPES = {  # docs/data.md §5 and the issue: Llama-3.2-1B, and Llama-3-8B cut to 4 layers
    "llama-3.2-1b": dict(LLAMA, hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                         intermediate_size=8192, vocab_size=128256, tie_word_embeddings=True),
    "llama-3-8b-4-layers": dict(LLAMA, hidden_size=4096, num_hidden_layers=4, num_attention_heads=32,
                                num_key_value_heads=8, intermediate_size=14336, vocab_size=128256,
                                tie_word_embeddings=False),
}
TINY = {"tiny-llama": dict(LLAMA, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           intermediate_size=128, vocab_size=512, tie_word_embeddings=False)}
STATE = ("parameters", "gradients", "outer optimizer state", "frozen reference")  # kept between outer steps
BATCHES = {k: PAPER[k] for k in ("inner_batch", "tr_batch", "retain_batch")}  # global rows of each batch
WORDS = "leaf pollen river stone cloud lamp tower garden window bridge meadow candle harbor violin orchard".split()


def synthetic_world(vocab: int, seq: int, n_docs: int, tokenizer=None, items: int = 0) -> World:
    """Random token documents for every split the outer step reads; MC items when a tokenizer is given."""
    g = torch.Generator().manual_seed(0)
    split = lambda: Tokens(torch.randint(4, vocab, (n_docs, seq), generator=g), torch.ones(n_docs, seq, dtype=torch.bool),
                           torch.ones(n_docs, seq, dtype=torch.bool))
    rng = random.Random(0)
    mc = [{"question": f"Which {rng.choice(WORDS)} is {rng.choice(WORDS)}?", "choices": rng.sample(WORDS, 4),
           "answer": i % 4} for i in range(items)]
    return World(WorldConfig(), tokenizer, {}, {}, {"E": mc, "Re": mc[::-1]},
                 {s: split() for s in ("T_inner", "T_tr", "Rt", "T", "A", "Rt:pile-bio")}, digest=f"synthetic-{vocab}-{seq}", style="letter",
                 topic="biology")


def per_rank(ranks: int, micro: int) -> dict[str, int]:
    """One rank's rows of each of the paper's global batches on `ranks` GPUs; a UsageError before any work when a
    batch does not split over the ranks or a share into micro-batches of `micro` rows (0: each whole share)."""
    shares = {}
    for name, rows in BATCHES.items():
        if rows % ranks or (micro and (rows // ranks) % micro):
            raise UsageError(f"--{name.replace('_', '-')} {rows} does not split over {ranks} ranks in micro-batches "
                             f"of {micro or 'a whole share'} ({rows / ranks:g} rows per rank)")
        shares[name] = rows // ranks
    return shares


def model_of(config, d):
    from transformers import AutoModelForCausalLM
    torch.manual_seed(0)
    with torch.device(d.device):  # initialise on the card: a 2B-parameter CPU init takes longer than the measuring
        model = AutoModelForCausalLM.from_config(config)
    ref = copy.deepcopy(model).requires_grad_(False)
    return fsdp.shard(model, d), fsdp.shard(ref, d)


def sync(d):
    if d.device.type == "cuda":
        torch.cuda.synchronize()


def flops_per_token(shape: dict, seq: int) -> float:
    """Forward + backward: 6 N + 12 L d T (N = parameters doing matmuls: all but an untied input embedding)."""
    from transformers import AutoConfig
    P = fsdp.count_parameters(AutoConfig.for_model(**shape))
    N = P - (0 if shape["tie_word_embeddings"] else shape["vocab_size"] * shape["hidden_size"])
    return 6 * N + 12 * shape["num_hidden_layers"] * shape["hidden_size"] * seq


def plain_step_mfu(shape: dict, d, args) -> float | None:
    """The yardstick: no TAR, no FSDP: one batch of 32 x seq, bf16 autocast over fp32 weights, fused AdamW."""
    if d.device.type != "cuda":
        return None
    from transformers import AutoConfig, AutoModelForCausalLM
    with torch.device(d.device):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**shape))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    ids = torch.randint(0, shape["vocab_size"], (32, args.seq), device=d.device)

    def step():
        with torch.autocast("cuda", torch.bfloat16):
            model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    step()
    sync(d)
    t0 = time.perf_counter()
    for _ in range(5):
        step()
    sync(d)
    seconds = (time.perf_counter() - t0) / 5
    del model, opt
    torch.cuda.empty_cache()
    return round(flops_per_token(shape, args.seq) * 32 * args.seq / seconds / PEAK_FLOPS, 3)


def measure_shape(name: str, shape: dict, micro: int, d, args) -> dict:
    """One rank's outer step of an args.ranks-GPU run (its share of every batch, `micro` rows per forward), timed
    against the sum of its parts; FSDP's communication between ranks is not in it."""
    from transformers import AutoConfig
    config = AutoConfig.for_model(**shape)
    plain = plain_step_mfu(shape, d, args)
    cfg = configure(preset="paper", inner_steps=args.k, tr_every=min(4, args.k), tr_mask="all", micro_batch=micro,
                    seq_len=args.seq, outer_steps=64, loss_chunk=args.loss_chunk, **per_rank(args.ranks, micro))
    if d.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model, ref = model_of(config, d)
    world = synthetic_world(shape["vocab_size"], args.seq, 4 * cfg.retain_batch)
    opt, _ = tar.outer_optimizer(model, cfg)
    x_tr = next(tar.Stream(world.tokens["T_tr"], cfg.tr_batch, 0))
    x_r = next(tar.Stream(world.tokens["Rt"], cfg.retain_batch, 1))
    rng = random.Random(0)  # outer_step draws the same attack from an equal RNG at every call
    spec, seed = adversary.sample_attack(rng, cfg.train_attacks()), rng.randrange(2**31)
    step = lambda: tar.outer_step(model, ref, opt, world, x_tr, x_r, random.Random(0), cfg, d)
    step()  # warm-up: kernels, allocator, optimizer state
    sync(d)
    static = torch.cuda.memory_allocated() / 2**30 if d.device.type == "cuda" else None  # what stays between steps
    outer, parts = [], []
    for _ in range(args.repeats):
        sync(d)
        t0 = time.perf_counter()
        step()
        sync(d)
        outer.append(time.perf_counter() - t0)
        parts.append(parts_time(model, ref, world, x_tr, x_r, spec, cfg, seed, d))
    o, s = statistics.median(outer), statistics.median(parts)
    P = fsdp.count_parameters(config)
    per_token = flops_per_token(shape, args.seq)
    tokens = args.seq * (cfg.inner_steps * cfg.inner_batch + cfg.inner_steps // cfg.tr_every * cfg.tr_batch
                         + cfg.retain_batch)
    flops = per_token * tokens + per_token / 3 * args.seq * cfg.retain_batch  # + the reference forward
    rows = cfg.micro_batch or max(cfg.inner_batch, cfg.tr_batch, cfg.retain_batch)  # the largest forward
    est = fsdp.memory_estimate(config, 1, rows, args.seq, d.device.type == "cuda", False, cfg.loss_chunk)
    peak = torch.cuda.max_memory_allocated() / 2**30 if d.device.type == "cuda" else None

    # restore exactness on this device: an outer step with lr 0 must leave every weight bit-identical
    before = [fsdp.local(p).detach().clone() for p in model.parameters()]
    frozen = torch.optim.AdamW(model.parameters(), lr=0.0, weight_decay=0.0)
    tar.outer_step(model, ref, frozen, world, x_tr, x_r, random.Random(2), cfg, d)
    restore = max((fsdp.local(p).detach() - b).abs().max().item() for p, b in zip(model.parameters(), before))
    return {"shape": name, "parameters": P, "K": cfg.inner_steps, "seq": args.seq, "ranks": args.ranks,
            "micro_batch": cfg.micro_batch,
            "loss_chunk": cfg.loss_chunk,
            "batches": {"attacker": cfg.inner_batch, "tr": cfg.tr_batch, "retain": cfg.retain_batch},
            "outer_step_s": round(o, 4), "parts_s": round(s, 4), "ratio": round(o / s, 3),
            "tflops_per_s": round(flops / o / 1e12, 1),
            "mfu": round(flops / o / PEAK_FLOPS, 3) if d.device.type == "cuda" else None, "plain_step_mfu": plain,
            "peak_gib": round(peak, 2) if peak is not None else None, "estimate_gib": round(est["total"], 2),
            "between_steps_gib": round(static, 2) if static is not None else None,
            "estimate_between_steps_gib": round(sum(v for k, v in est.items() if k in STATE), 2),
            "estimate_error": round(est["total"] / peak - 1, 3) if peak else None,
            "restore_max_abs_diff": restore}


def projection(entry: dict, gpus: int = 8, gpu_gib: float = 78.0) -> dict:
    """The paper's run (Llama-3-8B, --preset paper: N 750, K 64) on `gpus` cards from one measured 8B-shaped
    entry: the full model's FLOPs per outer step at the MFU measured per layer-shaped work (the 4-layer model is
    the 8B's own layers, embedding and head), and whether the estimate at that micro-batch, corrected by the
    error measured here and with the snapshot in CPU memory (as the official code keeps it), fits a card of gpu_gib
    (78 GiB: what an H100 80 GB offers; 139 for an H200). FSDP's all-gathers across cards are not measured here.
    Only an entry measured at one rank's share of a `gpus`-card run is projected: MFU falls with the rows per
    forward, and the report of 2026-11-27 (no "ranks": the whole batch in one process, micro-batches of 8-32 rows,
    more than the 4 attacker rows each of 8 ranks holds) is not."""
    from transformers import AutoConfig
    head = {"gpus": gpus, "card_gib": gpu_gib, "micro_batch": entry["micro_batch"], "mfu": entry["mfu"]}
    measured = entry.get("ranks", 1)
    if measured != gpus:
        return {**head, "projected": False,
                "why": f"measured at {measured} rank(s)' batches, not one rank's share of {gpus}"}
    cfg = configure(preset="paper", model="llama")
    shape = dict(SHAPES["llama-3-8b-4-layers"], num_hidden_layers=fsdp.LLAMA3_8B["num_hidden_layers"])
    per_token = flops_per_token(shape, entry["seq"])
    tokens = entry["seq"] * (cfg.inner_steps * cfg.inner_batch + cfg.inner_steps // cfg.tr_every * cfg.tr_batch
                             + cfg.retain_batch)
    flops = cfg.outer_steps * (per_token * tokens + per_token / 3 * entry["seq"] * cfg.retain_batch)
    hours = flops / (gpus * PEAK_FLOPS * entry["mfu"]) / 3600
    rows = entry["micro_batch"] or max(per_rank(gpus, 0).values())  # the largest forward on a rank
    est = fsdp.memory_estimate(AutoConfig.for_model(**fsdp.LLAMA3_8B), gpus, rows, entry["seq"], snapshot_offload=True)
    need = est["total"] / (1 + min(entry["estimate_error"], 0.0))  # the estimator ran low by that much here
    return {**head, "projected": True, "hours": round(hours, 2), "gib_per_rank": round(need, 1),
            "fits": need <= gpu_gib}


def pipeline(name: str, shape: dict, d, args) -> dict:
    """Stage 1 and the paper's red team on `shape`, args.pipeline_steps steps each at one rank's share of an
    args.ranks-GPU run (their batches / ranks, whole shares per forward): seconds per step, the last loss (finite,
    or the run's error), peak memory. The attacks each start from the stage-1 weights (this rank's shards put
    back: FSDP2 modules cannot be deep-copied)."""
    from transformers import AutoConfig
    model, ref = model_of(AutoConfig.for_model(**shape), d)
    world = synthetic_world(shape["vocab_size"], args.seq, 4 * max(s.batch_size for s in suite.SUITES["paper"]))
    rows = lambda batch: max(batch // args.ranks, 1)
    out = {"shape": name, "ranks": args.ranks, "steps": args.pipeline_steps, "runs": {}}

    def timed(what: str, run) -> None:
        if d.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        sync(d)
        t0 = time.perf_counter()
        try:
            losses = run()
            sync(d)
            out["runs"][what] = {"s_per_step": round((time.perf_counter() - t0) / args.pipeline_steps, 4),
                                 "last_loss": losses[-1], "finite": all(map(torch.isfinite, torch.tensor(losses)))}
        except Exception as e:  # one failing piece is a finding; the others still run
            out["runs"][what] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
        if d.device.type == "cuda":
            out["runs"][what]["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)

    cfg = safeguard.for_method("random_mapping", **safeguard.REAL_RANDOM_MAPPING, steps=args.pipeline_steps,
                               batch_size=rows(safeguard.SafeguardConfig.batch_size))
    timed("stage 1 (random mapping)", lambda: safeguard.defend(model, ref, world, cfg, d=d))
    theta0 = [fsdp.local(p).detach().clone() for p in fsdp.reshard(model).parameters()]
    for spec in suite.SUITES["paper"]:
        spec = dataclasses.replace(spec, steps=args.pipeline_steps, switch=min(spec.switch, 1),
                                   batch_size=rows(spec.batch_size))
        torch.manual_seed(0)  # LoRA's initialisation
        timed(spec.name, lambda: adversary.attack(model, spec, adversary.attack_stream(spec, world.tokens, 0)))
        with torch.no_grad():
            for p, start in zip(fsdp.reshard(model).parameters(), theta0, strict=True):
                fsdp.local(p).copy_(start)
    return out


def checkpoint_round_trip(d, args, root: Path) -> dict:
    """3 outer steps (checkpoint after 2); a fresh model resumed from it; save_pretrained; reload and score."""
    from transformers import AutoConfig, AutoModelForCausalLM
    tok = make_tokenizer([" ".join(WORDS) + " Which is ? A. B. C. D. Answer: A B C D The following are multiple "
                          "choice questions (with answers) about biology ."])
    shape = dict(TINY["tiny-llama"], vocab_size=len(tok))
    config = AutoConfig.for_model(**shape)
    world = synthetic_world(len(tok), 32, 16, tok, items=8)
    cfg = configure(preset="mini", **MINI_REAL, tr_mask="tokens", inner_steps=4, tr_every=2, inner_batch=4,
                    tr_batch=4, retain_batch=4, outer_steps=3, checkpoint_every=2, eval_every=0, runs=str(root))
    run_dir = root / "ckpt"
    run_dir.mkdir(parents=True, exist_ok=True)
    model, ref = model_of(config, d)
    tar.train_tar(model, ref, world, cfg, run_dir, d, log=lambda *_: None)
    straight = [fsdp.local(p).detach().clone() for p in model.parameters()]
    again, ref2 = model_of(config, d)  # fresh weights: everything must come from the checkpoint
    tar.train_tar(again, ref2, world, dataclasses.replace(cfg, resume=True), run_dir, d,
                  log=lambda *_: None)
    resumed = max((fsdp.local(p).detach() - s).abs().max().item() for p, s in zip(again.parameters(), straight))
    in_memory = scoring.accuracies(again, world)
    storage.save_model(again, tok, run_dir / "tar", {"what": "gpu report"}, d)
    reloaded = AutoModelForCausalLM.from_pretrained(run_dir / "tar", dtype=torch.float32).to(d.device)
    mc = scoring.world_mc(world, "E", "letter")
    gap = (scoring.mc_loglikelihoods(again, mc) - scoring.mc_loglikelihoods(reloaded, mc)).abs().max().item()
    return {"resume_max_abs_diff": resumed, "in_memory": in_memory, "reloaded": scoring.accuracies(reloaded, world),
            "scores_equal": in_memory == scoring.accuracies(reloaded, world), "loglik_max_abs_diff": gap}


@dataclass
class GpuArgs:
    tiny: bool = arg(False, "CPU smoke test: a tiny shape, K 2, seq 32")
    out: str = arg("", "report directory (default: $OUT, else benchmarks/results)")
    k: int = arg(8, "inner steps K (small: the step's shape, not its length, matters)", above=0)
    seq: int = arg(256, "tokens per row", above=0)
    ranks: int = arg(8, "measure one rank's share of a run on this many GPUs (the paper's batches / ranks) and "
                        "project to it", above=0)
    micro_batches: list = arg((4, 0), "rows per forward on the rank, each measured (0: each batch's whole share; on "
                                      "8 GPUs 4 attacker, 8 TR and 8 retain rows)", of=int, at_least=0)
    loss_chunk: int = arg(0, "tar.py --loss-chunk: the LM head applied this many positions at a time (0: all)",
                          at_least=0)
    repeats: int = arg(3, "timed repeats", above=0)
    pipeline_steps: int = arg(4, "steps of stage 1 and of each paper attack in the pipeline check", above=0)
    shapes: list = arg(sorted(SHAPES), "shapes to measure", of=str, choices=tuple(sorted(SHAPES)))


def report_gpu(args: GpuArgs) -> None:
    shapes = TINY if args.tiny else {k: SHAPES[k] for k in args.shapes}
    if args.tiny:
        args.k, args.seq, args.micro_batches, args.repeats, args.pipeline_steps = 2, 32, [0], 1, 2
        args.loss_chunk = args.loss_chunk or 8  # the smoke test goes through the chunked losses too
        torch.set_num_threads(1)
    for micro in args.micro_batches:
        per_rank(args.ranks, micro)  # a batch that does not split fails here, before any model is built
    out = Path(args.out or os.environ.get("OUT") or Path(__file__).parent / "results")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    d = fsdp.setup_dist()
    card = torch.cuda.get_device_name(d.device) if d.device.type == "cuda" else "cpu"
    report = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "card": card,
              "torch": torch.__version__, "shapes": [], "errors": {}}
    for (name, shape), micro in itertools.product(shapes.items(), args.micro_batches):
        try:
            report["shapes"].append(measure_shape(name, shape, micro, d, args))
            print(json.dumps(report["shapes"][-1]), flush=True)
        except Exception as e:  # e.g. out of memory on a smaller card: say so in the report, go on
            report["errors"][f"{name} micro-batch {micro}"] = f"{type(e).__name__}: {str(e)[:300]}"
            print(f"{name} micro-batch {micro}: {type(e).__name__}: {str(e)[:300]}", flush=True)
        if d.device.type == "cuda":
            torch.cuda.empty_cache()
    report["projection"] = [projection(e, args.ranks, gib) for e in report["shapes"] for gib in (78.0, 139.0)
                            if e["shape"] == "llama-3-8b-4-layers" and e["mfu"]]
    report["pipeline"] = []
    for name, shape in shapes.items():
        report["pipeline"].append(pipeline(name, shape, d, args))
        print(json.dumps(report["pipeline"][-1]), flush=True)
        if d.device.type == "cuda":
            torch.cuda.empty_cache()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            report["checkpoint"] = checkpoint_round_trip(d, args, Path(tmp))
        except Exception as e:
            report["errors"]["checkpoint"] = f"{type(e).__name__}: {str(e)[:300]}"
    out.mkdir(parents=True, exist_ok=True)
    path = out / "gpu_report.json"
    path.write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "shapes"}, indent=1))
    print(f"wrote {path}")
    fsdp.teardown()


def main(argv=None):
    cli.run(GpuArgs, report_gpu, argv, __doc__.split("\n\n")[0])


if __name__ == "__main__":
    main()
