"""A LoRA attack on a tiny saved model, its adapters merged and the full weights written to a file: called in one
process by tests/test_fsdp.py and run by it under `torchrun --nproc_per_node 2 tests/lora_ranks.py MODEL OUT ...`,
so that the two can be compared."""

import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script, tests/ is first on the path

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

import adversary  # noqa: E402
import fsdp  # noqa: E402
import storage  # noqa: E402
import suite  # noqa: E402
from batching import Batch, shard_batch  # noqa: E402


def lora_attack(model_dir: Path, out: Path, d: fsdp.Dist = fsdp.Dist()) -> None:
    """Three steps of the paper's LoRA attack (r16, α32) on random 4-row batches, micro-batches of one row; no
    dropout (each rank would draw its own masks)."""
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
    state = fsdp.full_state_dict(model, d)
    if d.is_main:
        save_file({k: v.clone() for k, v in state.items()}, str(out))  # GPT-2's tied head: a copy of its own


if __name__ == "__main__":
    torch.set_num_threads(1)
    dist = fsdp.setup_dist()
    for path, target in zip(sys.argv[1::2], sys.argv[2::2], strict=True):
        lora_attack(Path(path), Path(target), dist)
    fsdp.teardown()
