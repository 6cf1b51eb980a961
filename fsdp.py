"""The few distributed helpers TAR needs at scale: FSDP2 sharding, checkpoints, a memory estimate.

Paper: Sec. 5 trains Llama-3-8B with TAR on 8 GPUs. Under `torchrun` every parameter is a dim-0 shard (a
DTensor), and the snapshot, the TR-gradient buffer, both optimizers' states and the frozen reference are made
from `model.parameters()`, so each rank holds only its shard of them; a single process is the same code with
unsharded tensors. Every rank samples the same attack (the same seeded RNG), so no broadcast is needed.

    setup_dist()          env (RANK, WORLD_SIZE) -> process group (nccl on CUDA, gloo on CPU), device, is_main
    decoder_layers(m)     the model's repeated blocks, found generically (largest ModuleList of one class)
    shard(m, dist)        fully_shard on each decoder layer, then the root; bf16 compute on CUDA, fp32 on CPU
    local(p), full(t)     this rank's shard of a parameter; a gathered DTensor
    any_rank(flag), all_mean(x)   a stop flag / a logged scalar agreed over ranks
    full_state_dict(m)    the gathered, unsharded weights (rank 0), for save_pretrained
    save_checkpoint / load_checkpoint    torch.distributed.checkpoint for the sharded model and optimizer,
                          plus each rank's RNG and data positions (one small file per rank)
    memory_estimate(...)  bytes per rank, from the model config alone

Run:  torchrun --nproc_per_node 8 tar.py --domain bio --model meta-llama/Meta-Llama-3-8B-Instruct
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist


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
    fully_shard(model, mp_policy=mp)
    return model


def local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a (DTensor) parameter or gradient; the tensor itself in one process. In-place
    changes to it change the parameter: that is how Alg. 1 snapshots and restores only its own shard."""
    return t.to_local() if hasattr(t, "to_local") else t


def full(t: torch.Tensor) -> torch.Tensor:
    """A DTensor gathered to a plain tensor (e.g. the clipped gradient norm); a plain tensor as is."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


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


def load_model(name: str, d: Dist):
    """A Hugging Face causal LM in fp32 (safetensors only: user weights never go through pickle), sharded under
    torchrun (each layer is moved to the device and cut as it is wrapped), else on the device. Returns
    (model, config). Every rank reads the file; the OS page cache shares it."""
    from transformers import AutoModelForCausalLM
    try:
        model = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32, use_safetensors=True)
    except Exception as e:
        from data import UserError
        raise UserError(f"cannot load model {name} ({type(e).__name__}: {str(e).splitlines()[0][:200]}): offline, "
                        "gated or not a safetensors causal LM; pass a local directory") from None
    model.config.use_cache = False
    if d.distributed:
        shard(model, d)
    else:
        model.to(d.device)
    return model, model.config


def save_pretrained(model, tokenizer, path: Path, d: Dist, provenance: dict) -> None:
    """The final model, gathered to a full state dict on rank 0 and written with save_pretrained (safetensors)
    plus the tokenizer, under a temporary name renamed when complete."""
    import json
    from data import atomic_write, replace_dir
    state = full_state_dict(model, d)  # a collective: every rank takes part
    first = {}
    for name, p in model.named_parameters(remove_duplicate=False):  # tied weights are written once
        if first.setdefault(id(p), name) != name:
            state.pop(name, None)
    if d.is_main:
        tmp = path.with_name(path.name + ".tmp")
        model.save_pretrained(tmp, state_dict=state)
        config = json.loads((tmp / "config.json").read_text())  # FSDP2 renamed the class (FSDPLlamaForCausalLM)
        config["architectures"] = [c.__name__ for c in type(model).__mro__ if "FSDP" not in c.__name__][:1]
        atomic_write(tmp / "config.json", json.dumps(config, indent=2))
        tokenizer.save_pretrained(tmp)
        atomic_write(tmp / "provenance.json", json.dumps(provenance, indent=1))
        replace_dir(tmp, path)
    if d.distributed:
        dist.barrier()


def full_state_dict(model: torch.nn.Module, d: Dist) -> dict:
    """The unsharded weights on CPU (rank 0 gets them; the others an empty dict)."""
    if not d.distributed:
        return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


# --------------------------------------------------------------------------------------------------------
# Checkpoints: DCP for sharded model + optimizer (each rank writes its shards), plain files single-process
# --------------------------------------------------------------------------------------------------------
def save_checkpoint(path: Path, model, optimizer, rank_state: dict, d: Dist) -> None:
    """Writes path.tmp and renames it to path when every rank has finished (a killed save leaves the previous
    checkpoint intact). rank_state: this rank's RNG and data positions (tensors, numbers, lists, dicts)."""
    tmp = path.with_name(path.name + ".tmp")
    if d.is_main:
        tmp.mkdir(parents=True, exist_ok=True)
    if d.distributed:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict
        dist.barrier()
        model_sd, optim_sd = get_state_dict(model, optimizer)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp / "dcp"))
    else:
        torch.save({"model": model.state_dict(), "optim": optimizer.state_dict()}, tmp / "state.pt")
    torch.save(rank_state, tmp / f"rank{d.rank}.pt")
    if d.distributed:
        dist.barrier()
    if d.is_main:
        from data import replace_dir
        replace_dir(tmp, path)
    if d.distributed:
        dist.barrier()


class Stop:
    """Set by SIGTERM (a scheduler's pre-emption): the loop checkpoints at the end of the step and stops."""
    def __init__(self):
        self.requested = False
        self.previous = signal.signal(signal.SIGTERM, self.request)

    def request(self, *_):
        self.requested = True

    def close(self):
        signal.signal(signal.SIGTERM, self.previous)


class Stopped(Exception):
    pass


def load_checkpoint(path: Path, model, optimizer, d: Dist) -> dict:
    """Restores model and optimizer in place; returns this rank's saved state. Loads only what
    save_checkpoint wrote (weights_only torch files; DCP's metadata is pickled by torch itself)."""
    if d.distributed:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
        model_sd, optim_sd = get_state_dict(model, optimizer)
        state = {"model": model_sd, "optim": optim_sd}
        dcp.load(state, checkpoint_id=str(path / "dcp"))
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    else:
        state = torch.load(path / "state.pt", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optim"])
    rank_file = path / f"rank{d.rank}.pt"
    if not rank_file.exists():
        from data import UserError
        raise UserError(f"{path} was written by a run with another number of processes (no {rank_file.name})")
    return torch.load(rank_file, weights_only=True)


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
                    snapshot_offload: bool = False) -> dict[str, float]:
    """GiB per rank for one TAR outer step (FSDP2, fp32 master weights, bf16 compute on CUDA):

        parameters, gradients                 4 B x P / W each
        inner AdamW state (exp_avg, exp_avg_sq) 8 B x P / W
        outer optimizer state                  8 B x P / W (AdamW: 2 moments; Schedule-Free: z + exp_avg_sq)
        snapshot (0 if offloaded to CPU), TR-gradient buffer, frozen reference   4 B x P / W each
        all-gathered layers                    2 unsharded decoder layers in compute precision
        activations of one micro-batch         every layer's saved tensors + the logits in fp32
    P from the config (exact), W = world size. The activation term follows Korthikanti et al. (2022) for
    attention through SDPA (no s² term) with a SwiGLU MLP: per token and layer ≈ bytes·(10 h + 4 kv + 5 m)
    + 8 h in fp32 residuals, plus 3 x 4 B x V per token for the logits and their softmax/gradient."""
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
        "activations": tokens * (L * (act_bytes * (10 * h + 4 * kv + 5 * m) + 8 * h) + 3 * 4 * V),
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


# Llama-3-8B(-Instruct)'s shape (../shared/DATA.md §5), for the estimate without the hub
LLAMA3_8B = dict(model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False,
                 rope_theta=500000.0, max_position_embeddings=8192, rms_norm_eps=1e-5)


def main(argv=None):
    import argparse
    from transformers import AutoConfig
    p = argparse.ArgumentParser(description="Per-rank memory of one TAR outer step, from a model config alone.")
    p.add_argument("--model", default="llama3-8b", help="llama3-8b (built in) or a model directory / hub id")
    p.add_argument("--world-size", type=int, nargs="+", default=[8])
    p.add_argument("--gpu-gib", type=float, nargs="+", default=[80.0, 40.0])
    p.add_argument("--micro-batch", type=int, default=4, help="rows per forward on a rank")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--snapshot-offload", action="store_true")
    args = p.parse_args(argv)
    if args.model == "llama3-8b":
        config = AutoConfig.for_model(**LLAMA3_8B)
    else:
        config = AutoConfig.from_pretrained(args.model)
    for w in args.world_size:
        for offload in sorted({False, args.snapshot_offload}):
            est = memory_estimate(config, w, args.micro_batch, args.seq_len, True, offload)
            print(f"[micro-batch {args.micro_batch} x {args.seq_len} tokens, snapshot "
                  f"{'on CPU' if offload else 'on GPU'}]")
            for gib in args.gpu_gib:
                print(format_estimate(est, args.model, w, gib) if gib == args.gpu_gib[0] else
                      format_estimate(est, args.model, w, gib).splitlines()[-1])


if __name__ == "__main__":
    main()
