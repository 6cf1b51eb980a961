"""Work run by tests/test_fsdp.py in one process and under `torchrun --nproc_per_node 2 tests/ranks.py TASK MODEL
OUT [TASK MODEL OUT ...]` (one launch for several checks), each writing full tensors to OUT so the two can be
compared: `lora` (a LoRA attack, its adapters merged: the weights) and `chunked` (the entropy TR, LM and retain
losses with the LM head applied in chunks: every weight's gradient)."""

import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script, tests/ is first on the path

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import adversary  # noqa: E402
import fsdp  # noqa: E402
import losses  # noqa: E402
import storage  # noqa: E402
import suite  # noqa: E402
from batching import Batch, shard_batch  # noqa: E402


def save(tensors: dict, out: Path, d: fsdp.Dist) -> None:
    if d.is_main:
        save_file({k: v.detach().clone() for k, v in tensors.items()}, str(out))  # GPT-2's tied head: its own copy


def lora_attack(model_dir: Path, out: Path, d: fsdp.Dist = fsdp.Dist()) -> None:
    """Three steps of the paper's LoRA attack (r16, α32) on random 4-row batches, micro-batches of one row; no
    dropout (each rank would draw its own masks). Writes the merged weights."""
    model = storage.load_model(model_dir, d)
    model.requires_grad_(True)
    spec = replace(suite.ATTACKS["A8_lora16_1e-4_1000"], steps=3, batch_size=4, lora_dropout=0.0)
    g = torch.Generator().manual_seed(0)
    ids = [torch.randint(3, model.config.vocab_size, (4, 12), generator=g) for _ in range(spec.steps)]
    with torch.no_grad():  # a forward first, as the red team scores at step 0: it leaves FSDP's root gathered
        model(input_ids=ids[0])
    ones = torch.ones_like(ids[0])
    batches = (shard_batch(Batch(x, ones, ones.bool()), d.rank, d.world_size, 1, d.device) for x in ids)
    torch.manual_seed(0)  # the adapters' initialisation, the same on every rank
    adversary.attack(model, spec, batches)
    save(fsdp.full_state_dict(model, d), out, d)


def chunked_grads(model_dir: Path, out: Path, d: fsdp.Dist = fsdp.Dist(), chunk: int = 0) -> None:
    """The entropy TR + LM + retain loss on 4 rows (one padded, a random TR mask), micro-batches of one row (each
    rank its own two; FSDP2 averages over the ranks), the LM head in chunks of `chunk` positions (0: whole
    logits). Writes every weight's full gradient."""
    model, ref = storage.load_model(model_dir, d), storage.load_model(model_dir, d).requires_grad_(False)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, model.config.vocab_size, (4, 8), generator=g)
    attention = torch.ones_like(ids)
    attention[1, 5:] = 0
    mask = torch.rand(4, 8, generator=g) < 0.5
    micro = shard_batch(Batch(ids, attention, mask), d.rank, d.world_size, 1, d.device)
    for b in micro:
        x, head, out_ = losses.forward_for_loss(model, b.input_ids, b.attention_mask, chunk, output_hidden_states=True)
        out_ref = losses.forward_for_loss(ref, b.input_ids, b.attention_mask, chunk, output_hidden_states=True)[2]
        loss = (losses.entropy_tr_loss(x, b.fact_mask, head, chunk)
                + losses.lm_loss(x, b.input_ids, b.attention_mask, head, chunk)
                + losses.retain_loss(out_, out_ref, b.input_ids, b.attention_mask, True, head, chunk)[0])
        (loss / len(micro)).backward()
    save({n: fsdp.full(p.grad) for n, p in model.named_parameters()}, out, d)


if __name__ == "__main__":
    torch.set_num_threads(1)
    dist = fsdp.setup_dist()
    for task, path, target in zip(sys.argv[1::3], sys.argv[2::3], sys.argv[3::3], strict=True):
        if task == "lora":
            lora_attack(Path(path), Path(target), dist)
        else:
            chunked_grads(Path(path), Path(target), dist, chunk=int(task.removeprefix("chunked")))
    fsdp.teardown()
