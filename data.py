"""The data a run reads: `load_world` picks the miniature world, an exported one or the real datasets; the
command line writes the miniature world as JSONL for people and other tools (lm-evaluation-harness, scripts),
and evaluate.py --data-dir reads it back.

Paper: Sec. 5 (experimental setup). The pieces live in modules of their own:

    world.py       the built-in miniature world (hazardous T / V / A / E; benign Rt / Re, U, G_dev / G_test, N)
    domains.py     its invented vocabularies;  tokenizer.py its word-level tokenizer;  chats.py its refusal chats
    realworld.py   the paper's datasets (WMDP, MMLU, Pile-bio, Camel-bio, CTFtime, Magpie, HH, Toxic-DPO,
                   HarmBench) from the hub or local files
    batching.py    tokens, batches, the seeded stream of batches

A directory of local data holds one of two layouts (`data_layout`, docs/data.md §3):

    export   what `python data.py --out DIR` writes: world.json (its config and digest, every group and family
             with its entities and who may read it), docs_<split>.jsonl, mc_<group>.jsonl, chats_<group>.jsonl
             (refusal), tokenizer/                              -> LocalWorldConfig (below)
    real     the real datasets' files as realworld.SOURCES names them: wmdp-bio.jsonl, mmlu.jsonl,
             pile-bio.jsonl, ... (.json or .parquet too; chem: chem-forget.txt), what tar.py --data-dir
             reads                                              -> realworld.RealWorldConfig

Run:  python data.py --domain bio --out world/     # docs_<split>.jsonl, mc_<group>.jsonl, tokenizer/, world.json
Use:  world = load_world(WorldConfig(domain="bio"))
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

import cli
from chats import HAZARD, refusal_tokens
from cli import UserError, arg
from domains import DOMAINS
from realworld import SOURCES, RealWorldConfig, load_real_world, mc_items, model_tokenizer, read_rows
from storage import atomic_write, read_json, write_jsonl
from tokenizer import tokenize
from world import (READERS, STREAMS, WORLDS, World, WorldConfig, build_world, entities_flag, t_extra_flag, world_config,
                   world_key)


# --------------------------------------------------------------------------------------------------------
# A miniature world that `python data.py --out DIR` wrote, read back (evaluate.py --data-dir DIR)
# --------------------------------------------------------------------------------------------------------
MC_FIELDS = ("question", "choices", "answer")
CHAT_FIELDS = ("prompt", "answer", "fact", "harmful")
REFUSAL_NEEDS = [f"chats_{g}.jsonl" for g in ("T_inner", "T_tr", "V", "A", "A_heldout", "E", "Rt", "Re", "G_dev",
                                               "G_test")] + \
    ["docs_all.jsonl", "docs_U.jsonl"]  # what chats.refusal_tokens reads


@dataclass(frozen=True)
class LocalWorldConfig:
    """A world written by `python data.py --out DIR` (data.write_world): world.json (its WorldConfig),
    docs_<split>.jsonl {text}, mc_<group>.jsonl {question, choices, answer, fact_id} (E and Re at least) and, for the
    refusal world, chats_<group>.jsonl {prompt, answer, fact, harmful}. Read back it is the world build_world
    makes (scored cloze style), its text encoded by `tokenizer`'s."""
    data_dir: str
    tokenizer: str  # the model (directory or hub id) whose tokenizer encodes the text


@functools.lru_cache(maxsize=4)
def load_local_world(cfg: LocalWorldConfig) -> World:
    """The exported world as a World: the same documents, items, chats and token tensors as build_world's
    when `tokenizer` is the world's own (a test checks it); a tokenizer that cannot spell the world's words
    (a model of another world: another seed, size or domain) is one error line, not scores on <unk>."""
    root = Path(cfg.data_dir)
    fix = f"write it again with python data.py --out {root}"
    meta = read_json(root / "world.json", fix)
    try:
        config = WorldConfig(**meta["config"])
    except (TypeError, KeyError, UserError) as e:
        raise UserError(f"{root / 'world.json'} holds no world config ({type(e).__name__}: {e}); {fix}") from None
    read = lambda prefix, fields: {p.stem[len(prefix):]: read_rows(p, fields, fix)
                                   for p in sorted(root.glob(f"{prefix}*.jsonl"))}
    docs = {split: [r["text"] for r in rows] for split, rows in read("docs_", ("text",)).items()}
    items = {group: mc_items(rows) for group, rows in read("mc_", MC_FIELDS).items()}
    talks = read("chats_", CHAT_FIELDS) or None
    present = {p.name for p in root.iterdir()}
    need = REFUSAL_NEEDS if config.domain == "refusal" else ["mc_E.jsonl", "mc_Re.jsonl"]
    if not set(need) <= present:
        raise UserError(f"{root} lacks {', '.join(n for n in need if n not in present)}; {fix}")
    tokenizer = model_tokenizer(cfg.tokenizer)
    if talks and not getattr(tokenizer, "chat_template", None):
        raise UserError(f"the refusal world needs a chat model: {cfg.tokenizer}'s tokenizer has no chat template")
    # the fact mask (the entropy TR loss's positions) of build_world: the domain's values as whole-word tokens
    domain, vocab = DOMAINS[HAZARD.get(config.domain, config.domain)], tokenizer.get_vocab()
    fact_ids = torch.tensor([vocab[t] for t in ("▁" + v for vals, _ in domain.attributes.values() for v in vals)
                             if t in vocab], dtype=torch.long)
    tokens = {split: tokenize(texts, tokenizer, fact_ids) for split, texts in docs.items()}
    if talks:
        tokens.update(refusal_tokens(talks, tokenizer, tokens))
    unk = tokenizer.unk_token_id
    if unk is not None and unk not in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id):
        texts = [f"{it['question']} {' '.join(it['choices'])}" for group in items.values() for it in group]
        unknown = sum(int(((t.ids == unk) & t.mask).any(1).sum()) for t in tokens.values()) + \
            sum(unk in ids for ids in tokenizer(texts)["input_ids"])
        if unknown:
            raise UserError(f"the tokenizer of {cfg.tokenizer} cannot spell {unknown} documents and items of the "
                            f"world in {root} (unknown words): the model was made in another world")
    key = world_key(config, vocab, docs, items, talks)  # build_world's key: equal for the same world
    return World(config, tokenizer, meta.get("entities", {}), docs, items, tokens, key, topic=domain.topic,
                 chats=talks)


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
    world_t_extra: int = t_extra_flag()


def write(args: WorldArgs) -> None:
    world = build_world(world_config(args.domain, args.world_entities, args.world_seed,  # tar.py's world
                                     args.world_t_extra))
    files = write_world(world, Path(args.out))
    print(f"wrote {len(files)} files to {args.out} (world digest {world.digest}): "
          + ", ".join(f"{s}={len(d)} docs" for s, d in world.docs.items()))


def main(argv=None):
    cli.run(WorldArgs, write, argv, "Write the miniature world (documents and MC items) as JSONL.")


if __name__ == "__main__":
    main()
