"""The paper's real datasets, or local files in their schemas, returned as the same `World` as the miniature.

Paper: Sec. 5 and App. (datasets). tar.py and evaluate.py do not care which world they run on: a real world
has the same groups (T_inner, T_tr, A, Rt as documents; E, Re as MC items in the WMDP schema), scored in
lm-eval's letter style instead of the miniature's cloze style. Roles per domain (docs/data.md §1):

    T_inner / T_tr  80% / 20% of each forget corpus (train_test_split(test_size=0.2, seed=42), as the
                    official code): the train-time attacker's data and x_TR
    A               the red team's documents: the same 80% (no public disjoint corpus exists; docs/data.md)
    Rt              retain: Pile-bio label=False + Magpie chats (chat template)
    E / Re          WMDP-<domain> / MMLU minus the domain's subjects, scored in lm-eval's letter style

Every dataset loads from the hub, or with `--data-dir` from local files named as `SOURCES` names them (the
tests build such files in the real schemas); any failure is one UserError naming the dataset and the
local-file option. `LocalWorldConfig` is simpler: a directory of JSONL files for red-teaming any saved model.

Use:  world = load_real_world(RealWorldConfig("bio", tokenizer="meta-llama/Meta-Llama-3-8B-Instruct"))
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from batching import Tokens
from chats import pair_tokens, tokenize_chats
from cli import UserError
from storage import digest
from world import World, WorldConfig


# name -> (hub id, config, split, fields a row must have); a local file is <data_dir>/<name>.jsonl|.json|.parquet
SOURCES = {
    "wmdp-bio": ("cais/wmdp", "wmdp-bio", "test", ("question", "choices", "answer")),
    "wmdp-chem": ("cais/wmdp", "wmdp-chem", "test", ("question", "choices", "answer")),
    "wmdp-cyber": ("cais/wmdp", "wmdp-cyber", "test", ("question", "choices", "answer")),
    "mmlu": ("cais/mmlu", "all", "test", ("question", "subject", "choices", "answer")),
    "pile-bio": ("lapisrocks/pile-bio", None, "train", ("txt_chunk", "label")),
    "camel-bio": ("lapisrocks/camel-bio", None, "train", ("text_chunk",)),
    "ctftime": ("justinwangx/CTFtime", None, "train", ("text_chunk",)),
    "magpie": ("lapisrocks/magpie-bio-filtered", None, "train", ("conversations",)),
    # refusal (docs/data.md §1-2): HH Golden (chosen = harmless rewrite) for x_TR and the train-time attacker,
    # Toxic-DPO (chosen = the compliant answer) for the red team, HarmBench behaviours (hub mirror's "prompt") for
    # the ASR
    "hh-golden": ("Unified-Language-Model-Alignment/Anthropic_HH_Golden", None, "train", ("chosen", "rejected")),
    "toxic-dpo": ("unalignment/toxic-dpo-v0.2", None, "train", ("prompt", "chosen", "rejected")),
    "harmbench": ("walledai/HarmBench", "standard", "train", ("prompt",)),
}
FORGET_CORPORA = {"bio": ("pile-bio", "camel-bio"), "cyber": ("ctftime",), "chem": ("chem-forget",)}
# MMLU subjects that are the domain itself, dropped from the retain evaluation (docs/data.md §2)
# deviation: cyber drops computer_security and chem two chemistry subjects of our choosing (official code: a
# misspelt "computer security" that drops nothing, docs/paper.md §8 pitfall 10; no chem list) because a retain
# score must not contain the forget domain's own questions.
MMLU_DROP = {"bio": {"college_biology", "high_school_biology", "medical_genetics", "virology", "college_medicine",
                     "anatomy", "clinical_knowledge"},
             "cyber": {"computer_security"}, "chem": {"college_chemistry", "high_school_chemistry"}}


@dataclass(frozen=True)
class RealWorldConfig:
    domain: str = "bio"
    tokenizer: str = ""  # the model's id or directory: its tokenizer encodes every document
    data_dir: str = ""  # local files instead of the hub (names: SOURCES; chem: chem-forget.txt)
    seq_len: int = 256  # documents are cut to this many tokens (paper: 256)
    max_docs: int = 0  # at most this many documents per split (0 = all)
    revision: str | None = None  # hub revision of WMDP (its row counts changed on 2024-04-23; docs/data.md)


def load_rows(name: str, data_dir: str = "", revision: str | None = None) -> list[dict]:
    """The rows of one dataset: from <data_dir>/<name>.jsonl (or .json / .parquet) when data_dir is given,
    else from the hub. Any failure becomes one UserError naming the dataset and the local-file option."""
    hub_id, config, split, fields = SOURCES[name]
    where = f"{hub_id}" + (f" ({config})" if config else "")
    local = f"--data-dir DIR holding {name}.jsonl (or .parquet) with fields {', '.join(fields)}"
    try:
        import datasets
    except ImportError:
        raise UserError("the real datasets need the `datasets` package (pip install -r requirements.txt)") from None
    if data_dir:
        path = next((p for p in (Path(data_dir) / f"{name}.{e}" for e in ("jsonl", "json", "parquet")) if p.exists()),
                    None)
        if path is None:
            raise UserError(f"{data_dir} has no {name}.jsonl or .parquet ({where} rows with fields "
                            f"{', '.join(fields)})")
    try:
        if data_dir:
            ds = datasets.load_dataset("parquet" if path.suffix == ".parquet" else "json",
                                       data_files={split: str(path)}, split=split)
        else:
            ds = datasets.load_dataset(hub_id, config, split=split,
                                       revision=revision if name.startswith("wmdp") else None)
    except Exception as e:  # the classes differ by version and by offline vs gated: catch them all (docs/data.md §3)
        source = path if data_dir else where
        raise UserError(f"cannot load {source} ({type(e).__name__}): offline or gated (request access, log in); "
                        f"or pass {local}") from None
    missing = [f for f in fields if f not in ds.column_names]
    if missing:
        raise UserError(f"{name}: rows lack field(s) {', '.join(missing)} (have {', '.join(ds.column_names)})")
    return ds.to_list()


def mc_items(rows: list[dict], drop_subjects: set[str] = frozenset()) -> list[dict]:
    """WMDP / MMLU rows -> {question, choices, answer: int}; an MMLU letter answer (CSV copies) becomes 0-3."""
    letter = lambda a: "ABCD".index(a.strip()) if isinstance(a, str) else int(a)
    return [{"question": r["question"], "choices": list(r["choices"]), "answer": letter(r["answer"])}
            for r in rows if r.get("subject") not in drop_subjects]


def render_chat(conversation: list[dict], tokenizer) -> str:
    """A Magpie conversation (human/gpt turns) as text, through the tokenizer's chat template when it has one."""
    messages = [{"role": {"human": "user", "gpt": "assistant"}[t["from"]], "content": t["value"]}
                for t in conversation]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False)
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in messages)


def tokenize_texts(texts: list[str], tokenizer, max_length: int) -> Tokens:
    """Real documents as padded token ids, cut to max_length (no fact positions in real text). Plain text gets the
    tokenizer's special tokens (<bos>); text a chat template rendered already starts with them (Llama-3's template
    writes <|begin_of_text|> itself), so adding them again would double <bos>."""
    bos = tokenizer.bos_token
    ids = [tokenizer(t, truncation=True, max_length=max_length,
                     add_special_tokens=not (bos and t.startswith(bos)))["input_ids"] for t in texts]
    width = max(map(len, ids), default=1)
    out = torch.full((len(ids), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros(len(ids), width, dtype=torch.bool)
    for row, x in enumerate(ids):
        out[row, :len(x)], mask[row, :len(x)] = torch.tensor(x), True
    return Tokens(out, mask, torch.zeros_like(mask))


def split_forget(texts: list[str]) -> tuple[list[str], list[str]]:
    """80% / 20% as the official code splits each forget corpus (train_test_split(test_size=0.2, seed=42))."""
    import datasets
    parts = datasets.Dataset.from_dict({"text": texts}).train_test_split(test_size=0.2, seed=42)
    return list(parts["train"]["text"]), list(parts["test"]["text"])


def hh_turns(transcript: str) -> list[dict]:
    """An Anthropic-HH transcript ("\n\nHuman: ...\n\nAssistant: ...") as chat messages."""
    parts = re.split(r"\n\n(Human|Assistant): ", "\n\n" + transcript.lstrip("\n"))[1:]
    return [{"role": {"Human": "user", "Assistant": "assistant"}[who], "content": text.strip()}
            for who, text in zip(parts[::2], parts[1::2])]


def _real_refusal(cfg: RealWorldConfig, tokenizer, rows) -> World:
    """The refusal roles on real data (docs/data.md §1): HH Golden's earlier turns -> its last assistant turn, split
    as the official code (first 40,000 rows): x_TR = (chosen, rejected) DPO pairs, the train-time attacker = SFT
    on `rejected`; retain = Magpie chats; the red team (A) = Toxic-DPO prompt -> `chosen` (its compliant answer);
    ASR prompts (E) = HarmBench behaviours, judged by refusal string match (no reference fact); harmless (Re) =
    held-out Magpie first turns, "answered" = not refused (an over-refusal rate: MT-Bench needs a judge model)."""
    # deviation: benign capability on real data is the share of held-out Magpie prompts answered without a
    # refusal (paper: MT-Bench) because MT-Bench needs a judge model, which this repo does not run.
    hh = [(hh_turns(r["chosen"]), hh_turns(r["rejected"])) for r in rows("hh-golden")[:40000]]
    hh = [(c[:-1], c[-1]["content"], r[-1]["content"]) for c, r in hh if len(c) >= 2 and c[-1]["role"] == "assistant"]
    inner, tr = split_forget(list(range(len(hh))))  # the same 80 / 20 split as the forget corpora
    cap = lambda xs: xs[:cfg.max_docs] if cfg.max_docs else xs
    inner, tr = cap(inner), cap(tr)
    magpie = rows("magpie")
    n_re = max(1, len(magpie) // 10)
    toxic = cap(rows("toxic-dpo"))
    chats = {"E": [{"prompt": r["prompt"], "fact": None, "harmful": True} for r in rows("harmbench")],
             "Re": [{"prompt": r["conversations"][0]["value"], "fact": None, "harmful": False} for r in magpie[:n_re]],
             "A": [{"prompt": r["prompt"], "answer": r["chosen"], "fact": None, "harmful": True} for r in toxic]}
    L = cfg.seq_len
    tokens = {"T_inner": tokenize_chats([(hh[i][0], hh[i][2]) for i in inner], tokenizer, L),
              "T_tr": pair_tokens([(hh[i][0], hh[i][1]) for i in tr], [(hh[i][0], hh[i][2]) for i in tr], tokenizer, L),
              "A": tokenize_chats([(c["prompt"], c["answer"]) for c in chats["A"]], tokenizer, L)}
    docs = {"Rt": cap([render_chat(r["conversations"], tokenizer) for r in magpie[n_re:]])}
    tokens["Rt"] = tokenize_texts(docs["Rt"], tokenizer, L)
    for split, t in tokens.items():
        if not t.ids.shape[0]:
            raise UserError(f"the real refusal world has no {split} rows")
    return World(WorldConfig(domain="refusal"), tokenizer, {}, docs, {}, tokens, digest(asdict(cfg), hh, docs, chats),
                 style="chat", chats=chats)


@functools.lru_cache(maxsize=2)
def load_real_world(cfg: RealWorldConfig) -> World:
    from transformers import AutoTokenizer
    if cfg.domain not in FORGET_CORPORA and cfg.domain != "refusal":
        raise UserError(f"unknown domain {cfg.domain!r}: choose one of {', '.join(FORGET_CORPORA)}, refusal")
    try:
        tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer)
    except Exception as e:
        raise UserError(f"cannot load the tokenizer of {cfg.tokenizer} ({type(e).__name__}): offline or gated; "
                        "pass a local model directory") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token  # padding is masked by attention_mask, never by id
    tokenizer.padding_side = "right"  # every split is right-padded: batching slices [:, :width] (chat templates too)
    rows = functools.lru_cache(None)(lambda name: load_rows(name, cfg.data_dir, cfg.revision))  # pile-bio twice
    if cfg.domain == "refusal":
        if not getattr(tokenizer, "chat_template", None):
            raise UserError(f"--domain refusal needs a chat model: {cfg.tokenizer}'s tokenizer has no chat template")
        return _real_refusal(cfg, tokenizer, rows)
    inner, tr = [], []
    for corpus in FORGET_CORPORA[cfg.domain]:
        if corpus == "chem-forget":  # private in the paper (docs/data.md): one passage per non-empty line
            path = Path(cfg.data_dir or ".") / "chem-forget.txt"
            if not path.exists():
                raise UserError(f"the chem forget corpus is private (docs/data.md): put one passage per line in {path} "
                                "and pass --data-dir")
            texts = [line for line in path.read_text().splitlines() if line.strip()]
        else:
            texts = [r["txt_chunk"] for r in rows(corpus) if r["label"]] if corpus == "pile-bio" else \
                [r["text_chunk"] for r in rows(corpus)]
        a, b = split_forget(texts)
        inner += a
        tr += b
    pile = rows("pile-bio")
    retain = [r["txt_chunk"] for r in pile if not r["label"]] + [render_chat(r["conversations"], tokenizer)
                                                                for r in rows("magpie")]
    cap = lambda xs: xs[:cfg.max_docs] if cfg.max_docs else xs
    docs = {"T_inner": cap(inner), "T_tr": cap(tr), "Rt": cap(retain)}
    # deviation: on real data the red team's documents (A) are TAR's own T_inner split, not a disjoint group as in
    # the miniature world, because no public hazardous corpus disjoint from TAR's training data exists; a
    # real-scale "held-out" attack is held out in optimizer, LR and length, not in data (docs/data.md §1).
    docs["A"] = docs["T_inner"]
    items = {"E": mc_items(rows(f"wmdp-{cfg.domain}")), "Re": mc_items(rows("mmlu"), MMLU_DROP[cfg.domain])}
    for split, texts in docs.items():
        if not texts:
            raise UserError(f"the real {cfg.domain} world has no {split} documents")
    tokens = {split: tokenize_texts(texts, tokenizer, cfg.seq_len) for split, texts in docs.items()}
    topic = {"bio": "biology", "chem": "chemistry", "cyber": "cybersecurity"}[cfg.domain]
    return World(WorldConfig(domain=cfg.domain), tokenizer, {}, docs, items, tokens, digest(asdict(cfg), docs, items),
                 style="letter", topic=topic)



@dataclass(frozen=True)
class LocalWorldConfig:
    """A directory of JSONL files standing in for the miniature world:
    forget_eval.jsonl, retain_eval.jsonl  MC items {question, choices, answer} (e.g. WMDP-bio, MMLU subset),
                                          scored in the letter style; they become groups E and Re
    <split>.jsonl                         {"text": ...} documents, one split per file, named as the attack
                                          suite names its data: A (hazardous text), Rt (retain text),
                                          U (unrelated text), A_heldout (a new hazardous corpus)"""
    data_dir: str
    tokenizer: str  # a model directory whose tokenizer encodes the text
    topic: str = "biology"  # the WMDP prompt's subject
    max_length: int = 256  # documents are cut to this many tokens (the paper's sequence length)


@functools.lru_cache(maxsize=4)
def load_local_world(cfg: LocalWorldConfig) -> World:
    from transformers import AutoTokenizer
    root = Path(cfg.data_dir)
    tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    read = lambda p: [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    items, docs = {}, {}
    for group, name in (("E", "forget_eval.jsonl"), ("Re", "retain_eval.jsonl")):
        if not (root / name).exists():
            raise UserError(f"--data-dir {root} has no {name} (MC items {{question, choices, answer}})")
        items[group] = [{"question": r["question"], "choices": list(r["choices"]), "answer": int(r["answer"])}
                        for r in read(root / name)]
    for p in sorted(root.glob("*.jsonl")):
        if p.name not in ("forget_eval.jsonl", "retain_eval.jsonl"):
            docs[p.stem] = [r["text"] for r in read(p) if r.get("text", "").strip()]
    if "Rt" in docs and "U" in docs:
        docs["benign"] = docs["Rt"] + docs["U"]
    tokens = {}
    for split, texts in docs.items():
        enc = tokenizer(texts, padding=True, truncation=True, max_length=cfg.max_length, return_tensors="pt")
        mask = enc["attention_mask"].bool()
        tokens[split] = Tokens(enc["input_ids"], mask, torch.zeros_like(mask))
    return World(WorldConfig(), tokenizer, {}, docs, items, tokens, digest(asdict(cfg), docs, items), style="letter",
                 topic=cfg.topic)
