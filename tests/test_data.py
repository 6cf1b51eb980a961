"""The miniature world: deterministic, disjoint groups, WMDP-schema items, a tokenizer that round-trips and
reloads through AutoTokenizer, fact masks on the right tokens, seeded batching, the JSONL export."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import batching
import domains
import scoring
import world
import data
from conftest import tiny_model


def test_world_is_deterministic_and_seeded(small_world):
    world.build_world.cache_clear()
    again = world.build_world(small_world.config)
    assert again is not small_world and again.digest == small_world.digest and again.docs == small_world.docs
    other = world.build_world(world.WorldConfig(**{**small_world.config.__dict__, "seed": 1}))
    assert other.digest != small_world.digest


def test_groups_are_disjoint_and_sized(small_world):
    names = {g: {e["name"] for e in small_world.entities[g]} for g in ("T", "A", "E", "Rt", "Re", "U")}
    all_names = [n for g in names.values() for n in g]
    assert len(all_names) == len(set(all_names))
    assert len(names["T"]) == len(names["A"]) == len(names["E"]) == 6
    inner = {e["name"] for e in small_world.entities["T_inner"]}
    tr = {e["name"] for e in small_world.entities["T_tr"]}
    assert inner | tr == names["T"] and not inner & tr
    # documents of a group mention only that group's entities
    for doc in small_world.docs["A"]:
        assert any(n in doc for n in names["A"]) and not any(n in doc for n in names["E"] | names["T"])


def test_items_follow_the_wmdp_schema(small_world):
    items = small_world.items["E"]
    assert len(items) == 6 * 5 * domains.TRAIN_TEMPLATES  # every entity x attribute x template
    for it in items:
        assert set(it) == {"question", "choices", "answer"}
        assert len(it["choices"]) == 4 == len(set(it["choices"])) and it["answer"] in range(4)
    # the answer is the entity's fact: check through the documents
    it = items[0]
    assert any(f"{it['question']} {it['choices'][it['answer']]}." in d for d in small_world.docs["E"])
    assert {it["answer"] for it in items} == {0, 1, 2, 3}


def test_tokenizer_round_trip_and_save_load(small_world, tmp_path):
    tok = small_world.tokenizer
    texts = small_world.docs["all"][:50] + [world.letter_prompt(small_world.items["E"][0], small_world.topic)]
    for text in texts:
        ids = tok(text)["input_ids"]
        assert ids[0] == tok.bos_token_id and tok.unk_token_id not in ids
        assert tok.decode(ids, skip_special_tokens=True) == text
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


def test_cli_writes_jsonl(tmp_path):
    data.main(["--domain", "cyber", "--out", str(tmp_path)])
    items = [json.loads(line) for line in (tmp_path / "mc_E.jsonl").read_text().splitlines()]
    assert len(items) == 30 * 5 * 4 and set(items[0]) == {"question", "choices", "answer"}
    assert (tmp_path / "docs_A.jsonl").exists() and (tmp_path / "tokenizer" / "tokenizer.json").exists()
    assert not list(tmp_path.glob("*.tmp"))


def test_unknown_domain_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as e:
        data.main(["--domain", "physics", "--out", "/tmp/never"])
    assert "unknown domain 'physics'" in str(e.value.code)
