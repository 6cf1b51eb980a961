"""The few distributed helpers TAR needs at scale: FSDP2 sharding, agreement over ranks, a memory estimate.

Paper: Sec. 5 trains Llama-3-8B with TAR on 8 GPUs. Under `torchrun` every parameter is a dim-0 shard (a
DTensor), and the snapshot, the TR-gradient buffer, both optimizers' states and the frozen reference are made
from `model.parameters()`, so each rank holds only its shard of them; a single process is the same code with
unsharded tensors. Every rank samples the same attack (the same seeded RNG), and rank 0's draw is broadcast
so the ranks cannot disagree.

    setup_dist()          env (RANK, WORLD_SIZE) -> process group (nccl on CUDA, gloo on CPU), device, is_main
    decoder_layers(m)     the model's repeated blocks, found generically (largest ModuleList of one class)
    shard(m, dist)        fully_shard on each decoder layer, then the root; bf16 compute on CUDA, fp32 on CPU
    reshard(m), trainable(m)   no gathered copy left by a forward alone; the parameters an optimizer may hold
    local(p), full(t)     this rank's shard of a parameter; a gathered DTensor
    any_rank(flag), all_mean(x)   a stop flag / a logged scalar agreed over ranks
    full_state_dict(m)    the gathered, unsharded weights (rank 0), for save_pretrained (storage.py)
    broadcast(obj)        rank 0's sampled attack on every rank
    Stop                  SIGTERM (a scheduler's pre-emption) or Ctrl-C -> checkpoint at the end of the step
    memory_estimate(...)  bytes per rank, from the model config alone

Run:  torchrun --nproc_per_node 8 tar.py --domain bio --model meta-llama/Meta-Llama-3-8B-Instruct
      python fsdp.py --world-size 8 --gpu-gib 80 40      # the memory estimate for Llama-3-8B, no download
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

import cli
from cli import arg


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 or dist.is_initialized()


def setup_dist() -> Dist:
    """A process group when launched by torchrun (RANK in the environment), else a single process."""
    cuda = torch.cuda.is_available()
    if "RANK" not in os.environ:
        return Dist(device=torch.device("cuda" if cuda else "cpu"))
    local = int(os.environ.get("LOCAL_RANK", 0))
    if cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():  # (a second run in the same process reuses the group)
        dist.init_process_group("nccl" if cuda else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), torch.device(f"cuda:{local}" if cuda else "cpu"))


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The repeated transformer blocks of any causal LM (Llama `model.layers`, GPT-2 `transformer.h`, ...):
    the ModuleList of one block class holding the most parameters. No architecture name is hard-coded."""
    best = None
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) and len({type(m) for m in module}) == 1:
            n = sum(p.numel() for p in module.parameters())
            if best is None or n > best[0]:
                best = (n, module)
    if best is None:
        raise ValueError(f"found no decoder layers in {type(model).__name__}")
    return best[1]


def shard(model: torch.nn.Module, d: Dist) -> torch.nn.Module:
    """FSDP2: each decoder layer is its own all-gather unit, then the root (embeddings, final norm, head)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
          if d.device.type == "cuda" else MixedPrecisionPolicy())  # fp32 master weights either way
    for layer in decoder_layers(model):
        fully_shard(layer, mp_policy=mp)
    # the root stays gathered from its forward to its backward (FSDP2's default for a root, said explicitly):
    # --loss-chunk applies the LM head after the forward, in chunks (losses.chunked_sum)
    fully_shard(model, mp_policy=mp, reshard_after_forward=False)
    return model


def reshard(model: torch.nn.Module) -> torch.nn.Module:
    """Drops any gathered copy of an FSDP2 model's weights (no-op in one process). A forward without a backward
    (scoring, the frozen reference) leaves the root gathered (reshard_after_forward=False), its unsharded tensors
    registered in place of the shards: the next backward frees them, and a change made to the shards meanwhile
    (Schedule-Free's train/eval swap) would not reach the next forward."""
    if hasattr(model, "reshard"):  # an FSDPModule
        model.reshard()
    return model


def trainable(model: torch.nn.Module) -> list:
    """The parameters an optimizer, a snapshot or a checkpoint may hold: under FSDP2 the shards, even after a
    forward alone (`reshard`)."""
    return [p for p in reshard(model).parameters() if p.requires_grad]


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a (DTensor) parameter or gradient; the tensor itself in one process. In-place
    changes to it change the parameter: that is how Alg. 1 snapshots and restores only its own shard."""
    return t.to_local() if hasattr(t, "to_local") else t


def full(t: torch.Tensor) -> torch.Tensor:
    """A DTensor gathered to a plain tensor (e.g. the clipped gradient norm); a plain tensor as is."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def add_full(param: torch.Tensor, delta: torch.Tensor) -> None:
    """param += delta, `delta` full-size on every rank: under FSDP2 each rank adds the rows its shard holds (sliced
    locally, no communication); in one process the whole of it."""
    if hasattr(param, "device_mesh"):  # a DTensor shard
        from torch.distributed.tensor import distribute_tensor
        delta = distribute_tensor(delta, param.device_mesh, param.placements, src_data_rank=None)
    with torch.no_grad():
        local(param).add_(local(delta))


def average_replicated_grads(params: list) -> None:
    """Averages over ranks the gradients of parameters FSDP2 does not shard (a LoRA attack's adapters, injected
    after `shard`: whole on every rank, each rank's gradient from its own rows), as FSDP2 averages its shards'
    (DDP's rule). A no-op in one process, and where every parameter is sharded."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    grads = [p.grad for p in params if p.grad is not None and not hasattr(p.grad, "to_local")]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])  # one all-reduce per step, not one per adapter
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    for g, part in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(part.view_as(g))


def any_rank(flag: bool, d: Dist) -> bool:
    """True on every rank when it is true on any (a SIGTERM reaches the ranks at slightly different times)."""
    if not d.distributed:
        return flag
    t = torch.tensor([int(flag)], device=d.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def all_mean(value: float, d: Dist) -> float:
    """The mean over ranks of a logged scalar."""
    if not d.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=d.device)
    dist.all_reduce(t)
    return (t / d.world_size).item()


def full_state_dict(model: torch.nn.Module, d: Dist) -> dict:
    """The unsharded weights on CPU (rank 0 gets them; the others an empty dict)."""
    if not d.distributed:
        return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    return get_model_state_dict(reshard(model), options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def broadcast(obj, d: Dist):
    """Rank 0's Python object on every rank (the sampled attack of Alg. 1 l.3: each rank draws it from the
    same seeded RNG, and this makes sure they agree even if one rank's RNG drifted)."""
    if not d.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=d.device if d.device.type == "cuda" else None)
    return box[0]


class Stop:
    """SIGTERM (a scheduler's pre-emption) or a first Ctrl-C: the loop checkpoints at the end of the step and
    stops. `requested` names the signal. A second Ctrl-C interrupts at once (KeyboardInterrupt)."""

    def __init__(self):
        self.requested = None
        # a worker process (workers.py; search.py trains TAR in one) leaves both to its parent, which stops the pool
        worker = multiprocessing.parent_process() is not None
        self.previous = {} if worker else {s: signal.signal(s, self.request) for s in (signal.SIGTERM, signal.SIGINT)}

    def request(self, signum, _frame):
        self.requested = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, self.previous[signal.SIGINT])  # the next Ctrl-C is not deferred
        if signum == signal.SIGINT and os.environ.get("RANK", "0") == "0":  # one message, not one per rank
            print("\nCtrl-C: stopping after this step with a checkpoint (Ctrl-C again to stop at once)",
                  file=sys.stderr, flush=True)

    def close(self):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


# --------------------------------------------------------------------------------------------------------
# Memory estimate per rank, from the config alone
# --------------------------------------------------------------------------------------------------------
def count_parameters(config) -> int:
    """Exact parameter count of any transformers config: the model is built on the meta device (no memory)."""
    from transformers import AutoModelForCausalLM
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def memory_estimate(config, world_size: int, micro_batch: int, seq_len: int, cuda: bool = True,
                    snapshot_offload: bool = False, loss_chunk: int = 0) -> dict[str, float]:
    """GiB per rank for one TAR outer step (FSDP2, fp32 master weights, bf16 compute on CUDA):

        parameters, gradients                 4 B x P / W each
        inner AdamW state (exp_avg, exp_avg_sq) 8 B x P / W
        outer optimizer state                  8 B x P / W (AdamW: 2 moments; Schedule-Free: z + exp_avg_sq)
        snapshot (0 if offloaded to CPU), TR-gradient buffer, frozen reference   4 B x P / W each
        all-gathered layers                    2 unsharded decoder layers in compute precision
        activations of one micro-batch         every layer's saved tensors + the logits in fp32
    P from the config (exact), W = world size. The activation term follows Korthikanti et al. (2022) for
    attention through SDPA (no s² term) with a SwiGLU MLP: per token and layer ≈ bytes·(10 h + 4 kv + 5 m)
    + 8 h in fp32 residuals, plus 3 x 4 B x V per token for the logits and their softmax/gradient: per token of
    one chunk of loss_chunk positions when the losses apply the head in chunks (losses.chunked_sum)."""
    P = count_parameters(config)
    gib, W = 2 ** 30, world_size
    h, L = config.hidden_size, config.num_hidden_layers
    m = getattr(config, "intermediate_size", 4 * h)
    kv = h * getattr(config, "num_key_value_heads", config.num_attention_heads) // config.num_attention_heads
    V = config.vocab_size
    act_bytes = 2 if cuda else 4
    tokens = micro_batch * seq_len
    layer_params = (P - V * h * (1 if getattr(config, "tie_word_embeddings", False) else 2)) / L
    est = {
        "parameters": 4 * P / W,
        "gradients": 4 * P / W,
        "inner AdamW state": 8 * P / W,
        "outer optimizer state": 8 * P / W,
        "snapshot": 0 if snapshot_offload else 4 * P / W,
        "TR-gradient buffer": 4 * P / W,
        "frozen reference": 4 * P / W,
        "all-gathered layers": 2 * layer_params * act_bytes,
        "activations": tokens * L * (act_bytes * (10 * h + 4 * kv + 5 * m) + 8 * h)
        + micro_batch * min(loss_chunk or seq_len, seq_len) * 3 * 4 * V,
    }
    est = {k: v / gib for k, v in est.items()}
    est["total"] = sum(est.values())
    return est


def format_estimate(est: dict[str, float], name: str, world_size: int, gpu_gib: float | None = None) -> str:
    """The estimate as a few lines, ending with whether it fits a card of gpu_gib GiB and by how much."""
    lines = [f"memory per rank, estimated from the config of {name} on {world_size} process(es):"]
    unit, scale = ("GiB", 1) if est["total"] >= 1 else ("MiB", 1024)  # a tiny test model reads in MiB
    lines += [f"  {k:<24} {v * scale:8.2f} {unit}" for k, v in est.items()]
    if gpu_gib:
        margin = gpu_gib - est["total"]
        lines.append(f"  {'fits' if margin >= 0 else 'does NOT fit'} a {gpu_gib:.0f} GiB card: "
                     f"{abs(margin):.1f} GiB {'to spare' if margin >= 0 else 'short'}")
    return "\n".join(lines)


def estimate_here(config, name: str, d: Dist, micro_batch: int, seq_len: int, snapshot_offload: bool,
                  loss_chunk: int = 0) -> str:
    """The estimate for this run's processes and device, against this GPU's memory when there is one."""
    cuda = d.device.type == "cuda"
    est = memory_estimate(config, d.world_size, micro_batch, seq_len, cuda, snapshot_offload, loss_chunk)
    gpu = torch.cuda.get_device_properties(d.device).total_memory / 2**30 if cuda else None
    return format_estimate(est, name, d.world_size, gpu)


# Llama-3-8B(-Instruct)'s shape (docs/data.md §5), for the estimate without the hub
LLAMA3_8B = dict(model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False,
                 rope_theta=500000.0, max_position_embeddings=8192, rms_norm_eps=1e-5)


@dataclass
class EstimateArgs:
    model: str = arg("llama3-8b", "llama3-8b (built in) or a model directory / hub id", nonempty=True)
    world_size: list = arg((8,), "processes (GPUs)", of=int, above=0)
    gpu_gib: list = arg((80.0, 40.0), "card sizes to compare against (GiB)", above=0)
    micro_batch: int = arg(4, "rows per forward on a rank", above=0)
    seq_len: int = arg(256, "tokens per row", above=0)
    snapshot_offload: bool = arg(False, "also show the estimate with Alg. 1's snapshot in CPU memory")
    loss_chunk: int = arg(0, "positions per chunk of the LM head in the losses (tar.py --loss-chunk; 0 = all)",
                          at_least=0)


def estimate(args: EstimateArgs) -> None:
    from transformers import AutoConfig
    config = AutoConfig.for_model(**LLAMA3_8B) if args.model == "llama3-8b" else AutoConfig.from_pretrained(args.model)
    for w in args.world_size:
        for offload in sorted({False, args.snapshot_offload}):
            est = memory_estimate(config, w, args.micro_batch, args.seq_len, True, offload, args.loss_chunk)
            print(f"[micro-batch {args.micro_batch} x {args.seq_len} tokens, snapshot "
                  f"{'on CPU' if offload else 'on GPU'}]")
            for gib in args.gpu_gib:
                print(format_estimate(est, args.model, w, gib) if gib == args.gpu_gib[0] else
                      format_estimate(est, args.model, w, gib).splitlines()[-1])


def main(argv=None):
    cli.run(EstimateArgs, estimate, argv, "Per-rank memory of one TAR outer step, from a model config alone.")


if __name__ == "__main__":
    main()
