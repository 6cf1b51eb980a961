"""The paper's real datasets, or local files in their schemas, returned as the same `World` as the miniature.

Paper: Sec. 5 and App. (datasets). tar.py and evaluate.py do not care which world they run on: a real world
has the same groups (T = T_inner + T_tr, A, Rt as documents; E, Re as MC items in the WMDP schema), scored in
lm-eval's letter style instead of the miniature's cloze style. Roles per domain (docs/data.md §1):

    T_inner / T_tr  80% / 20% of each forget corpus (train_test_split(test_size=0.2, seed=42), as the
                    official code), less A: the train-time attacker's data (per corpus too, T_inner:<corpus>,
                    which it draws from as the paper does) and x_TR
    A               the red team's documents: an eighth of each corpus's 80% (10% of it), which TAR never reads
    Rt              retain: Pile-bio label=False + Magpie chats (chat template)
    E / Re          WMDP-<domain> / MMLU minus the domain's subjects, scored in lm-eval's letter style

Every dataset loads from the hub, or with `--data-dir` from local files named as `SOURCES` names them (the
tests build such files in the real schemas). Every row is checked, from the hub or a file (`check_rows`: each
field present and of its type, an MC answer one of its choices); any failure is one UserError naming the
dataset or file, the row and what to do. (A miniature world that `python data.py --out DIR` wrote is read back by
data.py: `data.LocalWorldConfig`.)

Use:  world = load_real_world(RealWorldConfig("bio", tokenizer="meta-llama/Meta-Llama-3-8B-Instruct"))
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from batching import Tokens
from chats import pair_tokens, tokenize_chats
from cli import UserError, reason
from storage import digest, read_json, read_jsonl
from world import World, WorldConfig


# name -> (hub id, config, split, fields a row must have); a local file is <data_dir>/<name>.jsonl|.json|.parquet
SOURCES = {
    "wmdp-bio": ("cais/wmdp", "wmdp-bio", "test", ("question", "choices", "answer")),
    "wmdp-chem": ("cais/wmdp", "wmdp-chem", "test", ("question", "choices", "answer")),
    "wmdp-cyber": ("cais/wmdp", "wmdp-cyber", "test", ("question", "choices", "answer")),
    "mmlu": ("cais/mmlu", "all", "test", ("question", "subject", "choices", "answer")),
    "mmlu-dev": ("cais/mmlu", "all", "dev", ("question", "subject", "choices", "answer")),  # the few-shot examples
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


def attack_splits(domain: str) -> tuple[str, ...]:
    """The splits the train-time attacker draws from: each corpus's share where a domain has several (bio, as the
    paper samples Pile-bio and Camel-bio), else T_inner."""
    corpora = FORGET_CORPORA.get(domain, ())
    return tuple(f"T_inner:{c}" for c in corpora) if len(corpora) > 1 else ("T_inner",)


def hub_datasets(domain: str, wmdp_revision: str = "") -> list[str]:
    """The hub datasets a real run of `domain` reads (its model card), WMDP at its revision; chem's forget corpus
    is private and has no hub id."""
    names = ["hh-golden", "toxic-dpo", "harmbench", "magpie"] if domain == "refusal" else \
        [*FORGET_CORPORA[domain], "pile-bio", "magpie", f"wmdp-{domain}", "mmlu", "mmlu-dev"]
    at = f"@{wmdp_revision}" if wmdp_revision else ""
    return list(dict.fromkeys(SOURCES[n][0] + (at if n.startswith("wmdp") else "") for n in names if n in SOURCES))
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
    mmlu_shots: int = 5  # MMLU few-shot examples: the first n of the item's subject in the dev split (lm-eval's)


# --------------------------------------------------------------------------------------------------------
# Rows: every row a world is made of, from the hub or a local file, is checked before it is used
# --------------------------------------------------------------------------------------------------------
# What each field must hold, and how the error line says it. A wrong value fails here, naming the file and the
# row, not as a traceback deep in scoring or, worse, as a number: an MC answer outside the choices is never
# predicted, so it would score every model 0% forget, a "perfect defence".
_STRING = (lambda v: isinstance(v, str), "a string")
FIELD_TYPES = {
    **{f: _STRING for f in ("question", "subject", "txt_chunk", "text_chunk", "prompt", "chosen", "rejected",
                            "text", "answer")},  # "answer" of an MC row is checked against its choices instead
    "choices": (lambda v: isinstance(v, list) and 2 <= len(v) <= 4 and all(isinstance(c, str) for c in v),
                "a list of 2 to 4 strings (the letter prompt labels them A-D)"),
    "label": (lambda v: isinstance(v, bool) or (isinstance(v, int) and v in (0, 1)), "true or false"),
    "conversations": (lambda v: isinstance(v, list) and len(v) > 0 and all(
        isinstance(t, dict) and t.get("from") in ("human", "gpt") and isinstance(t.get("value"), str) for t in v),
                      "a non-empty list of {from: human | gpt, value: string} turns"),
    "fact": (lambda v: v is None or isinstance(v, str), "a string or null"),
    "harmful": (lambda v: isinstance(v, bool), "true or false"),
}
LETTERS = "ABCD"


def answer_index(answer, n_choices: int) -> int | None:
    """An MC answer as the index of its choice: an int in range(n_choices) (WMDP, MMLU on the hub), or a
    letter "A".. (copies of MMLU made from its CSV files); None when it is neither."""
    if isinstance(answer, str) and len(answer.strip()) == 1 and answer.strip() in LETTERS[:n_choices]:
        return LETTERS.index(answer.strip())
    if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < n_choices:
        return answer
    return None


def row_problem(row: dict, fields: tuple[str, ...]) -> str | None:
    """What is wrong with one row in words, or None: a field of `fields` missing or not of its FIELD_TYPES
    type; with `choices` among the fields (an MC row), an `answer` that names none of them."""
    missing = [f for f in fields if f not in row]
    if missing:
        return f"lacks {', '.join(missing)} (each row needs {', '.join(fields)})"
    for f in fields:
        if f == "answer" and "choices" in fields:  # fields list choices before answer: they are checked by now
            n = len(row["choices"])
            if answer_index(row[f], n) is None:
                return f"answer {row[f]!r:.40} is not one of its {n} choices (give 0..{n - 1} or A..{LETTERS[n - 1]})"
        elif not FIELD_TYPES[f][0](row[f]):
            return f"{f} must be {FIELD_TYPES[f][1]}, got {row[f]!r:.60}"
    return None


def check_rows(rows: list, fields: tuple[str, ...], source: str, fix: str) -> list[dict]:
    """`rows` when there is at least one and each is an object with every one of `fields`, of its type
    (row_problem); else one UserError naming `source`, the row (counted from 1) and `fix`."""
    if not rows:
        raise UserError(f"{source} holds no rows (each needs {', '.join(fields)}); {fix}")
    for n, row in enumerate(rows, 1):
        problem = row_problem(row, fields) if isinstance(row, dict) else "is not a JSON object"
        if problem:
            raise UserError(f"{source} row {n}: {problem}; {fix}")
    return rows


def read_rows(path: Path, fields: tuple[str, ...], fix: str) -> list[dict]:
    """The checked rows (check_rows) of one local file: .jsonl (one object a line) and .json (a list of
    objects) with the json module, so that no `datasets` package is needed (the GPU machines may lack it);
    .parquet with pyarrow. Any problem is one UserError naming the file."""
    if path.suffix == ".jsonl":
        rows = read_jsonl(path, fields, fix)
    elif path.suffix == ".json":
        rows = read_json(path, fix)
        if not isinstance(rows, list):
            raise UserError(f"{path} is not a JSON list of rows; {fix}")
    else:
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise UserError(f"reading {path} needs pyarrow (pip install -r requirements.txt); or convert it to "
                            ".jsonl") from None
        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as e:  # pyarrow's classes for a damaged file vary: catch them all
            raise UserError(f"cannot read {path} as parquet ({reason(e)}); {fix}") from None
    return check_rows(rows, fields, str(path), fix)


def load_rows(name: str, data_dir: str = "", revision: str | None = None) -> list[dict]:
    """The checked rows of one dataset: from <data_dir>/<name>.jsonl (or .json / .parquet) when data_dir is
    given, else from the hub. Any failure becomes one UserError naming the dataset or file and what to do."""
    hub_id, config, split, fields = SOURCES[name]
    where = f"{hub_id}" + (f" ({config})" if config else "")
    local = f"--data-dir DIR holding {name}.jsonl (or .json, .parquet) with fields {', '.join(fields)}"
    if data_dir:
        path = next((p for p in (Path(data_dir) / f"{name}.{e}" for e in ("jsonl", "json", "parquet")) if p.exists()),
                    None)
        if path is None:
            raise UserError(f"{data_dir} has no {name}.jsonl, .json or .parquet ({where} rows with fields "
                            f"{', '.join(fields)})")
        return read_rows(path, fields, f"fix the file (rows of {where}; docs/data.md §2)")
    try:
        import datasets
    except ImportError:
        raise UserError(f"reading {where} from the hub needs the `datasets` package (pip install -r "
                        f"requirements.txt); or pass {local}") from None
    try:
        ds = datasets.load_dataset(hub_id, config, split=split, revision=revision if name.startswith("wmdp") else None)
    except Exception as e:  # the classes differ by version and by offline vs gated: catch them all (docs/data.md §3)
        raise UserError(f"cannot load {where} ({type(e).__name__}): offline or gated (request access, log in); "
                        f"or pass {local}") from None
    return check_rows(ds.to_list(), fields, where, f"the hub's rows are not in the schema read here; pass {local}")


def mc_items(rows: list[dict], drop_subjects: set[str] = frozenset()) -> list[dict]:
    """Checked WMDP / MMLU rows (check_rows) -> {question, choices, answer: int}; a letter answer becomes its
    index; MMLU's `subject` (its prompt's description) and the miniature world's `fact_id` (an item's fact, for
    clustered intervals) are kept. `drop_subjects`: MMLU rows of these subjects are left out."""
    return [{"question": r["question"], "choices": list(r["choices"]),
             "answer": answer_index(r["answer"], len(r["choices"])),
             **{k: r[k] for k in ("subject", "fact_id") if k in r}}
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


def split_forget(texts: list) -> tuple[list, list]:
    """80% / 20% as the official code splits each forget corpus, `datasets`' train_test_split(test_size=0.2,
    seed=42): a permutation from numpy's default generator seeded 42, its first ceil(20%) rows the test split.
    Computed here with numpy, so that local files need no `datasets` package (a test checks it against
    `datasets` itself); a corpus of one row leaves the train split empty (an error line later, not a crash)."""
    order = np.random.default_rng(42).permutation(len(texts)).tolist()
    n_test = math.ceil(0.2 * len(texts))
    return [texts[i] for i in order[n_test:]], [texts[i] for i in order[:n_test]]


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


def model_tokenizer(name: str):
    """The tokenizer of a model (hub id or directory), padded on the right with a pad token: padding is masked
    by attention_mask, never by id, and batching slices every split [:, :width] (chat templates too)."""
    from transformers import AutoTokenizer
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except Exception as e:
        raise UserError(f"cannot load the tokenizer of {name} ({type(e).__name__}): offline, gated or not a model; "
                        "pass a local model directory") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


@functools.lru_cache(maxsize=2)
def load_real_world(cfg: RealWorldConfig) -> World:
    if cfg.domain not in FORGET_CORPORA and cfg.domain != "refusal":
        raise UserError(f"unknown domain {cfg.domain!r}: choose one of {', '.join(FORGET_CORPORA)}, refusal")
    tokenizer = model_tokenizer(cfg.tokenizer)
    rows = functools.lru_cache(None)(lambda name: load_rows(name, cfg.data_dir, cfg.revision))  # pile-bio twice
    if cfg.domain == "refusal":
        if not getattr(tokenizer, "chat_template", None):
            raise UserError(f"--domain refusal needs a chat model: {cfg.tokenizer}'s tokenizer has no chat template")
        return _real_refusal(cfg, tokenizer, rows)
    docs, seen = {"T_inner": [], "T_tr": [], "A": []}, set()
    for corpus in FORGET_CORPORA[cfg.domain]:
        if corpus == "chem-forget":  # private in the paper (docs/data.md): one passage per non-empty line
            path = Path(cfg.data_dir or ".") / "chem-forget.txt"
            if not path.exists():
                raise UserError(f"the chem forget corpus is private (docs/data.md): put one passage per line in {path} "
                                "and pass --data-dir")
            try:
                texts = [line for line in path.read_text().splitlines() if line.strip()]
            except (OSError, UnicodeDecodeError) as e:
                raise UserError(f"cannot read {path} ({e})") from None
            if not texts:
                raise UserError(f"{path} holds no passages (one per non-empty line)")
        else:
            texts = [r["txt_chunk"] for r in rows(corpus) if r["label"]] if corpus == "pile-bio" else \
                [r["text_chunk"] for r in rows(corpus)]
        # a passage twice in a corpus, or in two, goes to one split: the red team's A shares no text with TAR's
        texts = [t for t in dict.fromkeys(texts) if t not in seen]
        seen.update(texts)
        train, tr = split_forget(texts)
        # deviation: TAR's attacker trains on 70% of each forget corpus (official code: the 80% train split) because
        # an eighth of that split is the red team's (A): no public hazardous corpus disjoint from TAR's exists, so
        # a held-out attack's data is carved from the same corpora (docs/data.md §1).
        inner, red = [t for i, t in enumerate(train) if i % 8 != 7], train[7::8]  # every eighth row: A
        docs |= {"T_inner": docs["T_inner"] + inner, "T_tr": docs["T_tr"] + tr, "A": docs["A"] + red}
        if attack_splits(cfg.domain) != ("T_inner",):  # the train-time attacker draws a corpus per attack
            docs[f"T_inner:{corpus}"] = inner
    retain_text = [r["txt_chunk"] for r in rows("pile-bio") if not r["label"]]  # Rt:pile-bio: the red team's A6
    retain = retain_text + [render_chat(r["conversations"], tokenizer) for r in rows("magpie")]
    docs = {split: texts[:cfg.max_docs] if cfg.max_docs else texts  # T: what stage 1 (safeguard.py --model) reads
            for split, texts in {**docs, "T": docs["T_inner"] + docs["T_tr"], "Rt": retain,
                                 "Rt:pile-bio": retain_text}.items()}
    items = {"E": mc_items(rows(f"wmdp-{cfg.domain}")), "Re": mc_items(rows("mmlu"), MMLU_DROP[cfg.domain])}
    dev = mc_items(rows("mmlu-dev")) if cfg.mmlu_shots else []  # lm-eval: fewshot_split dev, sampler first_n
    items["Re"] = [{**it, "shots": [d for d in dev if d["subject"] == it["subject"]][:cfg.mmlu_shots]} if dev else it
                   for it in items["Re"]]
    for split, texts in docs.items():
        if not texts:
            raise UserError(f"the real {cfg.domain} world has no {split} documents")
    if not items["Re"]:
        raise UserError(f"the real {cfg.domain} world has no retain items: every MMLU row is of a {cfg.domain} "
                        f"subject ({', '.join(sorted(MMLU_DROP[cfg.domain]))})")
    tokens = {split: tokenize_texts(texts, tokenizer, cfg.seq_len) for split, texts in docs.items()}
    topic = {"bio": "biology", "chem": "chemistry", "cyber": "cybersecurity"}[cfg.domain]
    return World(WorldConfig(domain=cfg.domain), tokenizer, {}, docs, items, tokens, digest(asdict(cfg), docs, items),
                 style="letter", topic=topic)
