"""The data a run reads: `load_world` picks the miniature world, local JSONL files or the real datasets; the
command line writes the miniature world as JSONL for people and other tools (lm-evaluation-harness, scripts).

Paper: Sec. 5 (experimental setup). The pieces live in modules of their own:

    world.py       the built-in miniature world (groups T / A / E, cities Rt / Re, rivers U), seeded
    domains.py     its invented vocabularies;  tokenizer.py its word-level tokenizer;  chats.py its refusal chats
    realworld.py   the paper's datasets (WMDP, MMLU, Pile-bio, Camel-bio, CTFtime, Magpie, HH, Toxic-DPO,
                   HarmBench) from the hub or --data-dir, and plain local JSONL worlds for red-teaming
    batching.py    tokens, batches, the seeded stream of batches

Run:  python data.py --domain bio --out world/     # docs_<split>.jsonl, mc_<group>.jsonl, tokenizer/, world.json
Use:  world = load_world(WorldConfig(domain="bio"))
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import cli
from cli import arg
from realworld import LocalWorldConfig, RealWorldConfig, load_local_world, load_real_world
from storage import atomic_write, write_jsonl
from world import WORLDS, World, WorldConfig, build_world


def load_world(cfg) -> World:
    """The world a config describes: the built-in miniature world, local JSONL files or the real datasets."""
    if isinstance(cfg, RealWorldConfig):
        return load_real_world(cfg)
    return load_local_world(cfg) if isinstance(cfg, LocalWorldConfig) else build_world(cfg)


def write_world(world: World, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = [write_jsonl(out / f"docs_{split}.jsonl", [{"text": d} for d in docs])
               for split, docs in world.docs.items()]
    written += [write_jsonl(out / f"mc_{group}.jsonl", items) for group, items in world.items.items()]
    written += [write_jsonl(out / f"chats_{group}.jsonl", chats) for group, chats in (world.chats or {}).items()]
    world.tokenizer.save_pretrained(out / "tokenizer")
    atomic_write(out / "world.json", json.dumps({"config": asdict(world.config), "digest": world.digest,
                                                 "entities": world.entities}, indent=1))
    return written


@dataclass
class WorldArgs:
    out: str = arg("", "directory to write (required)")
    domain: str = arg("bio", "the miniature world", choices=WORLDS)
    seed: int = arg(0, "seed of the world")


def write(args: WorldArgs) -> None:
    if not args.out:
        raise cli.UserError("--out DIR is required")
    world = build_world(WorldConfig(domain=args.domain, seed=args.seed))
    files = write_world(world, Path(args.out))
    print(f"wrote {len(files)} files to {args.out} (world digest {world.digest}): "
          + ", ".join(f"{s}={len(d)} docs" for s, d in world.docs.items()))


def main(argv=None):
    cli.run(WorldArgs, write, argv, "Write the miniature world (documents and MC items) as JSONL.")


if __name__ == "__main__":
    main()
