"""Batching: a split's tokens, one batch, the seeded stream of batches, and a batch cut over ranks.

Not in the paper; what every training loop here reads. A split is tokenized and right-padded once (`Tokens`),
so drawing a batch is only indexing. `Stream` is an endless, seeded, epoch-shuffled stream of batches over one
split: the attacker's data order is drawn from its own seed, never TAR's training order (docs/paper.md §8,
pitfall 2), and its position is a state_dict, so a resumed run sees exactly the batches it would have seen.
`shard_batch` cuts a global batch into this rank's micro-batches (gradient accumulation; FSDP under torchrun).

Use:  batch = next(Stream(world.tokens["A"], batch_size=16, seed=0))     # Batch of (B, T) tensors
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from cli import UsageError, UserError


@dataclass
class Tokens:
    """A split's documents, tokenized and right-padded once, so batching is only indexing."""
    ids: torch.Tensor  # (N, T) int64, <pad> after each document
    mask: torch.Tensor  # (N, T) bool, real tokens
    fact: torch.Tensor  # (N, T) bool, positions whose NEXT token is a hazardous fact value (docs/paper.md §7);
    #                     in a chat split: positions whose next token is the assistant's answer
    rows_per_item: int = 1  # 2: rows (2i, 2i+1) are one DPO pair (chosen, rejected), batched and shuffled together

    def take(self, rows) -> Tokens:
        """These rows (an index tensor or a slice) as a split of their own, one document a row."""
        return Tokens(self.ids[rows], self.mask[rows], self.fact[rows])


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T) long, as transformers expects
    fact_mask: torch.Tensor  # (B, T) bool


def concat_tokens(a: Tokens, b: Tokens, pad_id: int) -> Tokens:
    """The rows of two splits in one, right-padded to the wider."""
    w = max(a.ids.shape[1], b.ids.shape[1])
    pad = lambda t, v: torch.nn.functional.pad(t, (0, w - t.shape[1]), value=v)
    return Tokens(torch.cat([pad(a.ids, pad_id), pad(b.ids, pad_id)]),
                  torch.cat([pad(a.mask, False), pad(b.mask, False)]),
                  torch.cat([pad(a.fact, False), pad(b.fact, False)]))


class Stream:
    """An endless, seeded, epoch-shuffled stream of batches over one split: each epoch is a fresh permutation
    drawn from `seed`. Every batch holds batch_size items, also from a split with fewer (a small real corpus, or
    --max-docs): a defence pairs its forget and retain batches micro-batch by micro-batch, so a short one would
    drop rows of the other, and drop different rows on each rank.
    Columns past the longest document of the batch are trimmed, so short documents cost nothing. Its position
    is a state_dict, so a resumed run continues with exactly the batches it would have seen."""

    def __init__(self, tokens: Tokens, batch_size: int, seed: int):
        self.tokens, self.batch_size = tokens, batch_size
        self.gen = torch.Generator().manual_seed(seed)
        self.perm, self.pos = None, 0

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        k = self.tokens.rows_per_item  # a batch is batch_size items of k rows (k = 2: DPO pairs)
        n = self.tokens.ids.shape[0] // k
        if n < self.batch_size:  # a split smaller than a batch: fresh permutations end to end, always full batches
            items = torch.cat([torch.randperm(n, generator=self.gen)
                               for _ in range(-(-self.batch_size // n))])[:self.batch_size]
        else:
            if self.perm is None or self.pos > n - self.batch_size:  # past the last start of a full batch
                self.perm, self.pos = torch.randperm(n, generator=self.gen), 0
            items = self.perm[self.pos:self.pos + self.batch_size]
            self.pos += self.batch_size
        idx = (items[:, None] * k + torch.arange(k)).flatten()  # (batch_size * k,) rows, an item's rows adjacent
        width = int(self.tokens.mask[idx].sum(1).max())
        return Batch(self.tokens.ids[idx, :width], self.tokens.mask[idx, :width].long(), self.tokens.fact[idx, :width])

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state(), "perm": self.perm, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(state["gen"])
        self.perm, self.pos = state["perm"], state["pos"]


def check_split(batches: dict[str, int], micro: int) -> None:
    """Before any work: each global batch ({flag name: rows}) splits evenly over the processes (torchrun's
    WORLD_SIZE) and each process's share into micro-batches of `micro` rows (0: the whole share)."""
    ranks = int(os.environ.get("WORLD_SIZE", 1))
    for name, n in batches.items():
        if n % ranks or (micro and (n // ranks) % micro):
            raise UsageError(f"{name} {n} rows do not split over {ranks} process(es) in micro-batches of "
                             f"{micro or 'a whole share'}")


def shard_batch(batch: Batch, rank: int = 0, world_size: int = 1, micro: int = 0,
                device: torch.device | str = "cpu") -> list[Batch]:
    """This rank's contiguous share of a global batch, cut into micro-batches of `micro` rows (0: the whole
    share), each trimmed to its own longest document. Rank r of W with micro-batch m and one process with
    micro-batch m see the same micro-batches, so their averaged gradients agree (gradient accumulation)."""
    n = batch.input_ids.shape[0]
    if n % world_size:
        raise UserError(f"a global batch of {n} does not split over {world_size} processes")
    share = n // world_size
    micro = micro or share
    if share % micro:
        raise UserError(f"each process's share of {share} rows does not split into micro-batches of {micro}")
    out = []
    for start in range(rank * share, (rank + 1) * share, micro):
        rows = slice(start, start + micro)
        width = int(batch.attention_mask[rows].sum(1).max())
        parts = (batch.input_ids, batch.attention_mask, batch.fact_mask)
        out.append(Batch(*(t[rows, :width].to(device) for t in parts)))
    return out
