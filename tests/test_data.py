"""The miniature world: deterministic, disjoint groups, WMDP-schema items, a tokenizer that round-trips and
reloads through AutoTokenizer, fact masks on the right tokens, seeded batching, the JSONL export and reading it
back as the same world."""

import json
from dataclasses import asdict

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import batching
import data
import domains
import realdata
import scoring
import world
from conftest import cli_error, tiny_model


def test_world_is_deterministic_and_seeded(small_world):
    world.build_world.cache_clear()
    again = world.build_world(small_world.config)
    assert again is not small_world and again.digest == small_world.digest and again.docs == small_world.docs
    other = world.build_world(world.WorldConfig(**{**small_world.config.__dict__, "seed": 1}))
    assert other.digest != small_world.digest


def test_a_world_is_its_groups_a_new_stream_changes_no_cache_key(small_world, monkeypatch):
    monkeypatch.setitem(world.STREAMS, "extra", ("Rt", "U"))  # as "filtered" was added: no cache went stale
    rebuilt = world.build_world.__wrapped__(small_world.config)
    assert "extra" in rebuilt.docs and rebuilt.digest == small_world.digest  # (another seed's differs: above)


def test_groups_are_disjoint_and_sized(small_world):
    names = {g: {e["name"] for e in small_world.entities[g]} for g in ("T", "V", "A", "E", "Rt", "Re", "U", "G_dev",
                                                                       "G_test", "N")}
    all_names = [n for g in names.values() for n in g]
    assert len(all_names) == len(set(all_names))
    assert len(names["T"]) == len(names["V"]) == len(names["A"]) == len(names["E"]) == 6
    inner = {e["name"] for e in small_world.entities["T_inner"]}
    tr = {e["name"] for e in small_world.entities["T_tr"]}
    assert inner | tr == names["T"] and not inner & tr
    # documents of a group mention only that group's entities
    for doc in small_world.docs["A"]:
        assert any(n in doc for n in names["A"]) and not any(n in doc for n in names["E"] | names["T"])


def test_t_extra_widens_T_alone_and_keeps_every_earlier_key(small_world):
    """--world-t-extra: T gets more entities, half to T_inner and half to T_tr (docs/search.md round 39); the rest
    of the world is the world without them, and at 0 no cache key changes (world.ADDED)."""
    wide = world.build_world(world.WorldConfig(**{**small_world.config.__dict__, "t_extra": 4}))
    per = small_world.config.docs_per_entity
    assert "t_extra" not in world.identity(small_world.config) and wide.digest != small_world.digest
    assert small_world.digest == "4c4ec68ab539f6e1"  # as before the setting: no cached base went stale
    for g in ("V", "A", "E", "Rt", "Re", "U", "G_dev", "G_test", "N", "A_heldout"):
        assert wide.entities.get(g) == small_world.entities.get(g) and wide.docs[g] == small_world.docs[g], g
        assert wide.items.get(g) == small_world.items.get(g), g
    for g in ("T_inner", "T_tr"):  # the earlier half first, then 2 new entities and their documents
        old, new = small_world.entities[g], wide.entities[g]
        assert new[:3] == old and len(new) == 5 and wide.docs[g][:3 * per] == small_world.docs[g]
        assert all(e["name"] in d for i, e in enumerate(new) for d in wide.docs[g][i * per:(i + 1) * per])
        assert set(wide.docs[g]) <= set(wide.docs["all"]) & set(wide.docs["oracle"])  # pretrained on, as T was
    assert wide.entities["T"] == wide.entities["T_inner"] + wide.entities["T_tr"]  # entity_halves' row order
    assert wide.tokens["T"].ids.shape[0] == 10 * per and len(wide.items["T"]) == 10 * 5 * domains.TRAIN_TEMPLATES
    names = [e["name"] for g in ("T", "V", "A", "E") for e in wide.entities[g]]
    assert len(names) == len(set(names)) == 28
    with pytest.raises(world.UserError, match="t_extra"):
        world.WorldConfig(t_extra=-1)


def test_items_follow_the_wmdp_schema(small_world):
    items = small_world.items["E"]
    assert len(items) == 6 * 5 * domains.TRAIN_TEMPLATES  # every entity x attribute x template
    for it in items:
        assert set(it) == {"question", "choices", "answer", "fact_id"}  # fact_id: its cluster in intervals
        assert len(it["choices"]) == 4 == len(set(it["choices"])) and it["answer"] in range(4)
    # the answer is the entity's fact (fact_id names it), and the question with it is a sentence of E's documents
    facts = {e["name"]: e["facts"] for e in small_world.entities["E"]}
    for it in items:
        name, attribute = it["fact_id"].split("/")
        assert it["choices"][it["answer"]] == facts[name][attribute] and it["question"].count(name) == 1
    assert any(f"{it['question']} {it['choices'][it['answer']]}." in d for it in items for d in small_world.docs["E"])
    assert {it["answer"] for it in items} == {0, 1, 2, 3}


def test_tokenizer_round_trip_and_save_load(small_world, tmp_path):
    tok = small_world.tokenizer
    texts = small_world.docs["all"][:50] + [world.letter_prompt(small_world.items["E"][0], small_world.topic)]
    for text in texts:
        ids = tok(text)["input_ids"]
        assert ids[0] == tok.bos_token_id and tok.unk_token_id not in ids
        assert tok.decode(ids, skip_special_tokens=True) == " " + text  # every word keeps its space (tokenizer.py)
    model = tiny_model(vocab_size=len(tok))
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    tok2 = AutoTokenizer.from_pretrained(tmp_path)
    model2 = AutoModelForCausalLM.from_pretrained(tmp_path)
    for text in texts:
        assert tok2(text)["input_ids"] == tok(text)["input_ids"]
    ids = torch.tensor([tok(texts[0])["input_ids"]])
    assert torch.allclose(model(ids).logits, model2(ids).logits)


def test_continuation_is_one_word_token(small_world):
    # " ticks" after a question is exactly one token, as lm-eval's scorer needs for cloze items
    tok = small_world.tokenizer
    it = small_world.items["E"][0]
    ctx, cont = scoring.encode_pair(tok, it["question"], " " + it["choices"][0])
    assert len(cont) == 1 and tok.convert_ids_to_tokens(cont) == ["▁" + it["choices"][0]]


def test_fact_mask_marks_positions_before_fact_values(small_world):
    tok = small_world.tokenizer
    values = {v for vals, _ in domains.DOMAINS["bio"].attributes.values() for v in vals}
    toks = small_world.tokens["T"]
    for row in range(5):
        ids, fact = toks.ids[row], toks.fact[row]
        next_tokens = tok.convert_ids_to_tokens(ids[1:][fact[:-1]].tolist())
        assert sorted(t.lstrip("▁") for t in next_tokens) == sorted(
            w.rstrip(".") for s in small_world.docs["T"][row].split(". ") for w in [s.split()[-1]])
        assert set(t.lstrip("▁") for t in next_tokens) <= values
    assert not small_world.tokens["Rt"].fact.any()  # retain text holds no hazardous facts


def test_stream_is_seeded_and_covers_each_epoch(small_world):
    toks = small_world.tokens["A"]
    n = toks.ids.shape[0]  # 24 documents
    batches = batching.Stream(toks, 8, seed=3)
    epoch = [next(batches) for _ in range(n // 8)]
    seen = torch.cat([b.input_ids[:, :5] for b in epoch])
    assert len({tuple(r.tolist()) for r in seen}) == len({tuple(r.tolist()) for r in toks.ids[:, :5]})
    same = next(batching.Stream(toks, 8, seed=3))
    assert torch.equal(same.input_ids, epoch[0].input_ids)
    assert not torch.equal(next(batching.Stream(toks, 8, seed=4)).input_ids, epoch[0].input_ids)
    b = epoch[0]
    assert b.attention_mask[:, -1].any()  # trimmed to the longest document of the batch
    # a split smaller than the batch still gives full batches, each holding every document (a defence pairs its
    # forget and retain micro-batches: a short batch would drop rows of the other, different rows on each rank)
    five = batching.Tokens(toks.ids[:5], toks.mask[:5], toks.fact[:5])
    docs = {tuple(r.tolist()) for r in five.ids[:, :5]}
    short = batching.Stream(five, 8, seed=3)
    for b in (next(short) for _ in range(3)):
        assert b.input_ids.shape[0] == 8 and {tuple(r.tolist()) for r in b.input_ids[:, :5]} == docs


def test_cli_writes_jsonl(tmp_path):
    data.main(["--domain", "cyber", "--world-entities", "4", "--world-seed", "2", "--out", str(tmp_path)])
    items = [json.loads(line) for line in (tmp_path / "mc_E.jsonl").read_text().splitlines()]
    assert len(items) == 4 * 5 * 4 and set(items[0]) == {"question", "choices", "answer", "fact_id"}
    meta = json.loads((tmp_path / "world.json").read_text())
    assert meta["config"] == asdict(world.world_config("cyber", 4, 2))
    # every group and family is written and listed, with who may read it
    groups = ("T", "T_inner", "T_tr", "V", "A", "E", "Rt", "Re", "U", "G_dev", "G_test", "N")
    assert set(meta["groups"]) == set(groups) and meta["groups"]["G_test"]["family"] == "composers"
    for g in groups:
        assert (tmp_path / f"docs_{g}.jsonl").exists()
        assert meta["groups"][g]["entities"] == len(meta["entities"][g]) > 0
    assert {"all", "oracle"} <= set(meta["streams"]) and (tmp_path / "docs_oracle.jsonl").exists()
    assert (tmp_path / "docs_A.jsonl").exists() and (tmp_path / "tokenizer" / "tokenizer.json").exists()
    assert not list(tmp_path.glob("*.tmp"))


def test_empty_out_is_a_usage_error(capsys):  # every flag's domain: tests/test_cli.py
    code, line = cli_error(capsys, data.main, ["--domain", "bio", "--out", ""])
    assert code == 2 and "--out must not be empty" in line


@pytest.mark.parametrize("domain", ["bio", "refusal"])
def test_export_reads_back_as_the_same_world(domain, tmp_path):
    """python data.py --out, read back with the model's tokenizer: the same documents, items, chats, token
    tensors and digest as build_world's world, so the same scores (computed afresh, not from the scorer's cache)."""
    data.main(["--domain", domain, "--world-entities", "4", "--out", str(tmp_path / "w")])
    built = world.build_world(world.world_config(domain, 4))
    model = realdata.world_model(built, tmp_path / "m")
    back = data.load_local_world(data.LocalWorldConfig(str(tmp_path / "w"), str(tmp_path / "m")))
    assert back.digest == built.digest and back.config == built.config and back.style == "cloze"
    assert back.docs == built.docs and back.items == built.items and back.chats == built.chats
    assert back.entities == built.entities and back.topic == built.topic and back.tokens.keys() == built.tokens.keys()
    for split, t in built.tokens.items():
        b = back.tokens[split]
        assert torch.equal(b.ids, t.ids) and torch.equal(b.mask, t.mask) and torch.equal(b.fact, t.fact), split
        assert b.rows_per_item == t.rows_per_item, split
    if domain == "bio":
        assert back.tokens["T"].fact.any()  # the fact mask is rebuilt, not left empty
        for group in ("E", "Re"):
            scores = [scoring.mc_loglikelihoods(model, scoring.prepare_mc(w.tokenizer, w.items[group]),
                                                w.tokenizer.pad_token_id) for w in (back, built)]
            assert torch.equal(*scores), group
