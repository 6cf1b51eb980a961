"""realworld.py's loaders for the real datasets (docs/data.md), on small local files in each dataset's exact
schema (tests/realdata.py writes them) as .jsonl, .json and .parquet; the 80/20 split against `datasets` itself;
the red team's documents disjoint from TAR's (document hashes); the model card; parity with lm-eval's shipped
WMDP and MMLU tasks; and the offline hub error. Bad files and rows: tests/test_inputs.py."""

import hashlib
import json
import shutil
from dataclasses import asdict

import pytest
import torch
import transformers

import batching
import chats
import cli
import config
import realdata
import realworld
import scoring
import storage


def right_padded(t: batching.Tokens) -> bool:
    """Every row starts with a real token and has no real token after padding (batching slices [:, :width])."""
    return bool(t.mask[:, 0].all() and (t.mask.int().diff(dim=1) <= 0).all())


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    return realdata.write_fixtures(root / "fx"), realdata.tiny_model(root / "llama")


def test_each_loader_returns_the_schema_values(fx):
    root, _ = fx
    for name, (hub_id, subset, split, fields) in realworld.SOURCES.items():
        rows = realworld.load_rows(name, str(root))
        written = [json.loads(line) for line in (root / f"{name}.jsonl").read_text().splitlines()]
        assert len(rows) == len(written) and all(set(fields) <= set(r) for r in rows), name
        assert [r[fields[0]] for r in rows] == [w[fields[0]] for w in written], name
    pile = realworld.load_rows("pile-bio", str(root))
    assert {r["label"] for r in pile} == {True, False} and pile[0]["meta"]["pile_set_name"] == "PubMed Abstracts"


def test_json_and_parquet_files_give_the_same_rows(fx, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    root, _ = fx
    for name in ("pile-bio", "magpie", "mmlu"):
        rows = realworld.load_rows(name, str(root))
        (tmp_path / "json").mkdir(exist_ok=True), (tmp_path / "parquet").mkdir(exist_ok=True)
        (tmp_path / "json" / f"{name}.json").write_text(json.dumps(rows))
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / "parquet" / f"{name}.parquet")
        assert realworld.load_rows(name, str(tmp_path / "json")) == rows, name
        assert realworld.load_rows(name, str(tmp_path / "parquet")) == rows, name


def test_mc_items_normalise_letters_and_drop_subjects(tmp_path):
    rows = realdata._mc(__import__("random").Random(1), 4, "virology", letter=True) + \
        realdata._mc(__import__("random").Random(2), 4, "astronomy", letter=True)
    (tmp_path / "mmlu.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    items = realworld.mc_items(realworld.load_rows("mmlu", str(tmp_path)), realworld.MMLU_DROP["bio"])
    assert [it["answer"] for it in items] == [0, 1, 2, 3]  # "A".."D" -> 0..3; virology (bio) dropped
    assert items[0] == {"question": rows[4]["question"], "choices": rows[4]["choices"], "answer": 0,
                        "subject": "astronomy"}  # kept: MMLU's prompt is about the item's subject
    assert len(realworld.mc_items(realworld.load_rows("mmlu", str(tmp_path)), realworld.MMLU_DROP["cyber"])) == 8


def test_a_repeated_passage_lands_in_one_split(fx, tmp_path):
    """Real corpora repeat passages (within one, across two): each text goes to one split only, so the red team's
    A holds no text TAR trains on even then."""
    root, model = fx
    shutil.copytree(root, tmp_path / "fx")
    pile = [json.loads(line) for line in (root / "pile-bio.jsonl").read_text().splitlines()]
    camel = [json.loads(line) for line in (root / "camel-bio.jsonl").read_text().splitlines()]
    repeated = [r["txt_chunk"] for r in pile if r["label"]]  # every hazardous pile-bio passage, again in camel-bio
    camel += [{"text_chunk": t} for t in repeated] + camel[:5]  # and five camel-bio passages twice
    (tmp_path / "fx" / "camel-bio.jsonl").write_text("".join(json.dumps(r) + "\n" for r in camel))
    w = realworld.load_real_world(realworld.RealWorldConfig("bio", str(model), str(tmp_path / "fx"), seq_len=16))
    texts = [t for s in ("T_inner", "T_tr", "A") for t in w.docs[s]]
    assert len(texts) == len(set(texts)) == 20 + 20  # 20 distinct pile-bio passages, 20 distinct camel-bio ones


def test_real_worlds_have_every_role(fx):
    root, model = fx
    for domain in ("bio", "cyber", "chem"):
        w = realworld.load_real_world(realworld.RealWorldConfig(domain, str(model), str(root), seq_len=16))
        # MMLU fixture: 4 items each of college_biology, computer_security, high_school_geography and
        # college_chemistry; each domain drops its own 4
        assert w.style == "letter" and len(w.items["E"]) == 8 and len(w.items["Re"]) == 12
        forget = {"bio": 20 + 20, "cyber": 20, "chem": 20}[domain]  # pile-bio label=True (20) + camel-bio (20)
        assert len(w.docs["T_inner"]) + len(w.docs["T_tr"]) + len(w.docs["A"]) == forget
        assert len(w.docs["T_tr"]) == {"bio": 4 + 4, "cyber": 4, "chem": 4}[domain]  # 20% of each corpus
        assert len(w.docs["A"]) == {"bio": 2 + 2, "cyber": 2, "chem": 2}[domain]  # an eighth of the other 80%
        # the red team's documents are none that TAR reads (its attacker, x_TR, the retain batch), by hash
        hashes = lambda *splits: {hashlib.sha256(d.encode()).hexdigest() for s in splits for d in w.docs[s]}
        tar_reads = [s for s in w.docs if s.startswith("T")] + ["Rt"]  # stage 1's T, TAR's T_inner and T_tr
        assert hashes("A") and not hashes("A") & hashes(*tar_reads) and not hashes("T_inner") & hashes("T_tr")
        corpora = [s for s in w.docs if s.startswith("T_inner:")]
        assert corpora == (["T_inner:pile-bio", "T_inner:camel-bio"] if domain == "bio" else [])
        assert hashes(*corpora) == (hashes("T_inner") if corpora else set())  # the attacker's sources, split up
        assert w.docs["T"] == w.docs["T_inner"] + w.docs["T_tr"]
        sources = config.configure(domain=domain, model=str(model)).train_attacks().forget
        assert set(sources) <= set(w.tokens) and sources == (tuple(corpora) or ("T_inner",))
        assert len(w.docs["Rt"]) == 20 + 20  # pile-bio label=False + Magpie chats
        assert w.tokens["Rt"].ids.shape[1] <= 16 and not w.tokens["T_tr"].fact.any()
    bio = realworld.load_real_world(realworld.RealWorldConfig("bio", str(model), str(root), seq_len=16))
    assert any(d.startswith("user: ") and "\n\nassistant: " in d for d in bio.docs["Rt"])  # no chat template


def test_chat_template_renders_magpie(fx):
    _, model = fx
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(model)
    tok.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
    text = realworld.render_chat([{"from": "human", "value": "leaf"}, {"from": "gpt", "value": "stone"}], tok)
    assert text == "<user>leaf<assistant>stone"


def test_split_matches_datasets_train_test_split():
    import datasets
    for n in (2, 3, 7, 50, 101, 7558):  # 7558: Pile-bio's forget rows
        texts = [f"doc {i}" for i in range(n)]
        parts = datasets.Dataset.from_dict({"text": texts}).train_test_split(test_size=0.2, seed=42)
        assert realworld.split_forget(texts) == (list(parts["train"]["text"]), list(parts["test"]["text"])), n
    assert realworld.split_forget(["one"]) == ([], ["one"]) and realworld.split_forget([]) == ([], [])


def test_offline_hub_and_bad_files_fail_with_one_clear_message(fx, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(cli.UserError) as e:
        realworld.load_rows("wmdp-bio")
    msg = str(e.value)
    assert "cais/wmdp (wmdp-bio)" in msg and "offline or gated" in msg and "--data-dir" in msg
    assert "question, choices, answer" in msg
    with pytest.raises(cli.UserError, match="has no ctftime.jsonl"):
        realworld.load_rows("ctftime", str(tmp_path))
    (tmp_path / "ctftime.jsonl").write_text(json.dumps({"text": "wrong field"}) + "\n")
    with pytest.raises(cli.UserError, match="ctftime.jsonl line 1 lacks text_chunk"):
        realworld.load_rows("ctftime", str(tmp_path))
    with pytest.raises(cli.UserError, match="chem forget corpus is private"):
        realworld.load_real_world(realworld.RealWorldConfig("chem", str(fx[1]), str(tmp_path)))
    with pytest.raises(cli.UserError, match="cannot load the tokenizer of no/such-model"):
        realworld.load_real_world(realworld.RealWorldConfig("bio", "no/such-model", str(fx[0])))


def test_real_refusal_world_has_every_role(fx, tmp_path):
    """HH Golden -> DPO pairs (x_TR) and SFT-on-rejected (attacker), Toxic-DPO -> red team, HarmBench -> ASR
    prompts, Magpie -> retain and held-out harmless prompts; a model without a chat template is refused."""
    root, model = fx
    with pytest.raises(cli.UserError, match="needs a chat model"):
        realworld.load_real_world(realworld.RealWorldConfig("refusal", str(model), str(root), seq_len=24))
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(model)
    tok.chat_template = chats.CHAT_TEMPLATE
    tok.padding_side = "left"  # the world is right-padded all the same (batching slices [:, :width])
    tok.save_pretrained(tmp_path / "chat")
    w = realworld.load_real_world(realworld.RealWorldConfig("refusal", str(tmp_path / "chat"), str(root), seq_len=64))
    assert all(right_padded(t) for t in w.tokens.values())
    assert w.style == "chat" and len(w.chats["E"]) == 6 and all(c["fact"] is None for c in w.chats["E"])
    assert len(w.chats["A"]) == 10 and len(w.chats["Re"]) == 2  # Toxic-DPO rows; a tenth of Magpie held out
    assert w.tokens["T_tr"].rows_per_item == 2 and w.tokens["T_tr"].ids.shape[0] == 2 * 4  # 20% of 20 HH rows
    assert w.tokens["T_inner"].ids.shape[0] == 16 and len(w.docs["Rt"]) == 18
    assert all(t.ids.shape[1] <= 64 for t in w.tokens.values())
    # a pair shares its prompt; only the answers (the response-masked tokens) differ
    ids, resp = w.tokens["T_tr"].ids, w.tokens["T_tr"].fact
    first = lambda r: int(resp[r].nonzero()[0])
    assert first(0) == first(1) and torch.equal(ids[0, :first(0) + 1], ids[1, :first(1) + 1])
    assert realworld.hh_turns("\n\nHuman: a?\n\nAssistant: b.\n\nHuman: c?\n\nAssistant: d.") == [
        {"role": "user", "content": "a?"}, {"role": "assistant", "content": "b."},
        {"role": "user", "content": "c?"}, {"role": "assistant", "content": "d."}]


def test_every_real_document_starts_with_one_bos(fx, tmp_path):
    """Plain documents get <bos> from the tokenizer; Magpie chats rendered by a chat template that writes <bos>
    itself (as Llama-3's does) must not get a second one."""
    root, model = fx
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(model)
    tok.chat_template = chats.CHAT_TEMPLATE  # starts with {{ bos_token }}
    tok.padding_side = "left"  # some chat tokenizers ship so; batching needs right padding
    tok.save_pretrained(tmp_path / "chat")
    w = realworld.load_real_world(realworld.RealWorldConfig("bio", str(tmp_path / "chat"), str(root), seq_len=32))
    templated = [d.startswith(tok.bos_token) for d in w.docs["Rt"]]
    assert sum(templated) == 20 and not all(templated)  # the 20 Magpie chats; pile-bio text is plain
    for split in ("Rt", "T_inner", "T_tr"):
        t = w.tokens[split]
        first = [row[m].tolist()[:2] for row, m in zip(t.ids, t.mask)]  # the first two real tokens of each row
        assert all(f[0] == tok.bos_token_id and f[1] != tok.bos_token_id for f in first), split
        assert right_padded(t), split
    assert realworld.tokenize_texts([], tok, 8).ids.shape[0] == 0


def test_a_saved_model_carries_its_model_card(fx, tmp_path):
    root, model = fx
    cfg = config.configure(domain="bio", model=str(model), data_dir=str(root), wmdp_revision="r1")
    assert cfg.world().revision == "r1" and "cais/wmdp@r1" in cfg.datasets()
    provenance = {"what": "TAR", "key": "k", "parent": str(model), "world": asdict(cfg.world()), "config": asdict(cfg),
                  "datasets": cfg.datasets()}
    loaded = storage.load_model(model)
    assert loaded.config.use_cache is False  # every load trains or scores: no KV cache in the forwards
    storage.save_model(loaded, realworld.model_tokenizer(str(model)), tmp_path / "m", provenance)
    card = (tmp_path / "m" / "README.md").read_text()
    meta = card.split("---")[1]  # the Hugging Face card's YAML header
    assert f'base_model: "{model}"' in meta and '- "cais/wmdp"' in meta and '- "lapisrocks/camel-bio"' in meta
    assert "cais/wmdp@r1" in card and f"transformers {transformers.__version__}" in card and "from local files" in card
    assert json.loads(card.split("```json")[1].split("```")[0])["config"]["wmdp_revision"] == "r1"
    assert storage.cached(tmp_path / "m", "k") is not None  # the card leaves the cache key and the weights' digest
    with pytest.raises(cli.UsageError, match="--wmdp-revision only apply to a real --model"):
        config.parse_args(["--wmdp-revision", "r1"])


def test_scores_equal_lm_evaluation_harness_shipped_wmdp_and_mmlu_tasks(fx, tmp_path):
    """lm-eval's own wmdp_bio (0-shot) and mmlu_<subject> (5-shot from dev, about the subject) task configs, as the
    installed package ships them, pointed at local files in the hub schema: the same prompts, per-choice
    log-likelihoods and accuracy as our scorer on the real world's items. The 5-shot contexts outgrow the tiny
    model's 128 positions: both sides cut them from the left."""
    import copy

    import lm_eval  # a test dependency (requirements-test.txt): missing, this test fails rather than skips
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    root, model = fx
    subject = "high_school_geography"  # a subject with dev rows in the fixtures (the few-shot split)
    for name in ("mmlu", "mmlu-dev"):
        rows = [r for r in realworld.load_rows(name, str(root)) if r["subject"] == subject]
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tasks, shipped = TaskManager(), {}
    for task, files in (("wmdp_bio", {"test": root / "wmdp-bio.jsonl"}),
                        (f"mmlu_{subject}", {"test": tmp_path / "mmlu.jsonl", "dev": tmp_path / "mmlu-dev.jsonl"})):
        cfg = copy.deepcopy(tasks.task_index[task].cfg)  # the installed package's YAML, includes resolved
        cfg.pop("tag", None)
        shipped[task] = {**cfg, "task": f"local_{task}", "dataset_path": "json", "dataset_name": None,
                         "dataset_kwargs": {"data_files": {k: str(v) for k, v in files.items()}},
                         **({"num_fewshot": 5} if task.startswith("mmlu") else {})}
    assert shipped["wmdp_bio"]["num_fewshot"] == 0 and shipped[f"mmlu_{subject}"]["fewshot_split"] == "dev"
    lm = HFLM(pretrained=str(model), device="cpu", batch_size=4, dtype="float32")
    out = lm_eval.simple_evaluate(model=lm, tasks=list(shipped.values()), log_samples=True, task_manager=tasks)
    world = realworld.load_real_world(realworld.RealWorldConfig("cyber", str(model), str(root), 32))  # MMLU kept
    ours_items = {"wmdp_bio": realworld.mc_items(realworld.load_rows("wmdp-bio", str(root))),
                  f"mmlu_{subject}": [it for it in world.items["Re"] if it["subject"] == subject]}
    for task, items in ours_items.items():
        samples = sorted(out["samples"][f"local_{task}"], key=lambda s: s["doc_id"])
        mc = scoring.prepare_mc(world.tokenizer, items, "letter", "biology")  # WMDP-bio: about biology
        assert [s["arguments"][0][0] if isinstance(s["arguments"][0], (list, tuple))
                else s["arguments"]["gen_args_0"]["arg_0"] for s in samples] == mc.prompts, task
        theirs = torch.tensor([r[0][0] for s in samples for r in s["resps"]])
        assert (scoring.mc_loglikelihoods(lm.model, mc, world.tokenizer.pad_token_id) - theirs).abs().max() < 1e-4
        preds = scoring.mc_predictions(lm.model, mc, world.tokenizer.pad_token_id)
        assert out["results"][f"local_{task}"]["acc,none"] == pytest.approx(
            sum(p == it["answer"] for p, it in zip(preds, items)) / len(items))
    assert mc.prompts[0].count("\nAnswer: ") == 5 and "about high school geography." in mc.prompts[0]


def test_the_red_teams_real_world_takes_wmdp_revision_and_shots(fx, tmp_path):
    """evaluate.py --model with --data-dir: a model from elsewhere is scored with the given WMDP revision and MMLU
    shots; a model whose provenance names its own is scored with those, and a flag contradicting them is refused."""
    import evaluate
    root, model = fx
    args = evaluate.RedTeamArgs(model=str(model), data_dir=str(root), wmdp_revision="abc123", mmlu_shots=0)
    cfg = evaluate.world_for({"m": model}, args, None, "real")
    assert (cfg.revision, cfg.mmlu_shots, cfg.domain) == ("abc123", 0, "bio")
    made = tmp_path / "made"
    shutil.copytree(model, made)
    world = asdict(realworld.RealWorldConfig("bio", str(made), str(root), 16, revision="v1", mmlu_shots=3))
    (made / "provenance.json").write_text(json.dumps({"world": world}))
    mine = evaluate.world_for({"m": made}, evaluate.RedTeamArgs(model=str(made), data_dir=str(root)), None, "real")
    assert (mine.revision, mine.mmlu_shots, mine.seq_len) == ("v1", 3, 16)
    with pytest.raises(cli.UsageError, match="--mmlu-shots 0 contradicts the models' provenance.json"):
        evaluate.world_for({"m": made}, evaluate.RedTeamArgs(model=str(made), data_dir=str(root), mmlu_shots=0),
                           None, "real")
