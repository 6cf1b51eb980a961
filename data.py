"""The data a run reads: `load_world` picks the miniature world, an exported one or the real datasets; the
command line writes the miniature world as JSONL for people and other tools (lm-evaluation-harness, scripts),
and evaluate.py --data-dir reads it back.

Paper: Sec. 5 (experimental setup). The pieces live in modules of their own:

    world.py       the built-in miniature world (hazardous T / V / A / E; benign Rt / Re, U, G_dev / G_test, N)
    domains.py     its invented vocabularies;  tokenizer.py its word-level tokenizer;  chats.py its refusal chats
    realworld.py   the paper's datasets (WMDP, MMLU, Pile-bio, Camel-bio, CTFtime, Magpie, HH, Toxic-DPO,
                   HarmBench) from the hub or local files, and the miniature world read back from this export
    batching.py    tokens, batches, the seeded stream of batches

A directory of local data holds one of two layouts (`data_layout`, docs/data.md §3):

    export   what `python data.py --out DIR` writes: world.json (its config and digest, every group and family
             with its entities and who may read it), docs_<split>.jsonl, mc_<group>.jsonl, chats_<group>.jsonl
             (refusal), tokenizer/                              -> realworld.LocalWorldConfig
    real     the real datasets' files as realworld.SOURCES names them: wmdp-bio.jsonl, mmlu.jsonl,
             pile-bio.jsonl, ... (.json or .parquet too; chem: chem-forget.txt), what tar.py --data-dir
             reads                                              -> realworld.RealWorldConfig

Run:  python data.py --domain bio --out world/     # docs_<split>.jsonl, mc_<group>.jsonl, tokenizer/, world.json
Use:  world = load_world(WorldConfig(domain="bio"))
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import cli
from cli import UserError, arg
from realworld import SOURCES, LocalWorldConfig, RealWorldConfig, load_local_world, load_real_world
from storage import atomic_write, write_jsonl
from world import READERS, STREAMS, WORLDS, World, build_world, entities_flag, world_config


def load_world(cfg) -> World:
    """The world a config describes: the built-in miniature world, an exported one or the real datasets."""
    if isinstance(cfg, RealWorldConfig):
        return load_real_world(cfg)
    return load_local_world(cfg) if isinstance(cfg, LocalWorldConfig) else build_world(cfg)


def data_layout(data_dir: Path) -> str:
    """Which layout a directory of local data holds: "export" (a world.json) or "real" (any file realworld
    reads); neither is one error line saying what each layout needs."""
    if not Path(data_dir).is_dir():
        raise UserError(f"--data-dir {data_dir} is not a directory")
    if (Path(data_dir) / "world.json").exists():
        return "export"
    real = {f"{name}.{ext}" for name in SOURCES for ext in ("jsonl", "json", "parquet")} | {"chem-forget.txt"}
    if any(p.name in real for p in Path(data_dir).iterdir()):
        return "real"
    raise UserError(f"--data-dir {data_dir} holds neither layout: a world written by python data.py --out "
                    "(world.json, mc_E.jsonl, mc_Re.jsonl, docs_<split>.jsonl) or the real datasets' files "
                    "(wmdp-<domain>.jsonl, mmlu.jsonl and the domain's corpora, named as realworld.SOURCES names "
                    "them; .json or .parquet also do)")


def write_world(world: World, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = [write_jsonl(out / f"docs_{split}.jsonl", [{"text": d} for d in docs])
               for split, docs in world.docs.items()]
    written += [write_jsonl(out / f"mc_{group}.jsonl", items) for group, items in world.items.items()]
    written += [write_jsonl(out / f"chats_{group}.jsonl", chats) for group, chats in (world.chats or {}).items()]
    world.tokenizer.save_pretrained(out / "tokenizer")
    groups = {g: {"family": family, "read_by": readers, "entities": len(world.entities[g]),
                  "documents": len(world.docs.get(g, [])), "items": len(world.items.get(g, []))}
              for g, (family, readers) in READERS.items() if g in world.entities}
    atomic_write(out / "world.json", json.dumps({"config": asdict(world.config), "digest": world.digest,
                                                 "groups": groups, "streams": STREAMS,
                                                 "entities": world.entities}, indent=1))
    return written


@dataclass
class WorldArgs:
    out: str = arg("world", "directory to write", nonempty=True)
    domain: str = arg("bio", "the miniature world", choices=WORLDS)
    world_entities: int = entities_flag()
    world_seed: int = arg(0, "seed of the world (tar.py's --world-seed)", at_least=0)


def write(args: WorldArgs) -> None:
    world = build_world(world_config(args.domain, args.world_entities, args.world_seed))  # tar.py's world
    files = write_world(world, Path(args.out))
    print(f"wrote {len(files)} files to {args.out} (world digest {world.digest}): "
          + ", ".join(f"{s}={len(d)} docs" for s, d in world.docs.items()))


def main(argv=None):
    cli.run(WorldArgs, write, argv, "Write the miniature world (documents and MC items) as JSONL.")


if __name__ == "__main__":
    main()
