"""Small local files in the real datasets' exact schemas (docs/data.md §2-3; invented placeholder text)
and tiny Hugging Face models that read them, for the real-data and FSDP tests; and a small untrained model of
a miniature world saved as this repository saves its models. Not a test module."""

import json
import random
from dataclasses import asdict
from pathlib import Path

from tokenizer import make_tokenizer

WORDS = ("leaf pollen river stone cloud lamp tower garden window bridge meadow candle harbor violin "
         "orchard lantern pebble quilt").split()


def _text(rng: random.Random, n: int = 12) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)) + "."


def _mc(rng: random.Random, n: int, subject: str | None = None, letter: bool = False) -> list[dict]:
    rows = []
    for i in range(n):
        answer = i % 4  # answers 0 and 3 both occur
        row = {"question": f"Which {rng.choice(WORDS)} is {rng.choice(WORDS)}?",
               "choices": [rng.choice(WORDS) for _ in range(4)], "answer": "ABCD"[answer] if letter else answer}
        if subject is not None:
            row = {"question": row["question"], "subject": subject, "choices": row["choices"], "answer": row["answer"]}
        rows.append(row)
    return rows


def write_fixtures(root: Path, n: int = 20) -> Path:
    """Every dataset tar.py --model reads, as <root>/<name>.jsonl (chem: chem-forget.txt)."""
    rng = random.Random(0)
    root.mkdir(parents=True, exist_ok=True)
    rows = {f"wmdp-{d}": _mc(rng, 8) for d in ("bio", "chem", "cyber")}
    rows["mmlu"] = (_mc(rng, 4, "college_biology") + _mc(rng, 4, "computer_security")
                    + _mc(rng, 4, "high_school_geography") + _mc(rng, 4, "college_chemistry"))
    rows["mmlu-dev"] = [r for s in ("high_school_geography", "college_biology") for r in _mc(rng, 6, s)]  # 6 a subject
    rows["pile-bio"] = [{"txt_chunk": _text(rng), "meta": {"pile_set_name": "PubMed Abstracts"},
                         "reasoning": "Placeholder.", "label": i % 2 == 0} for i in range(2 * n)]
    rows["camel-bio"] = [{"text_chunk": _text(rng)} for _ in range(n)]
    rows["ctftime"] = [{"text_chunk": _text(rng)} for _ in range(n)]
    rows["magpie"] = [{"conversations": [{"from": "human", "value": _text(rng, 5)}, {"from": "gpt", "value": _text(rng, 6)},
                                         {"from": "human", "value": _text(rng, 4)}, {"from": "gpt", "value": _text(rng, 3)}]}
                      for _ in range(n)]
    # refusal: HH Golden transcripts (one and two exchanges), Toxic-DPO, HarmBench (hub mirror columns)
    hh = lambda turns: "".join(f"\n\n{who}: {text}" for who, text in turns)
    rows["hh-golden"] = [{"chosen": hh([("Human", _text(rng, 4))] * (i % 2) + [("Assistant", _text(rng, 3))] * (i % 2)
                                      + [("Human", f"how {i}?"), ("Assistant", "sorry, no.")]),
                          "rejected": ""} for i in range(n)]
    for r in rows["hh-golden"]:  # the same conversation, a harmful last turn
        r["rejected"] = r["chosen"].rsplit("\n\nAssistant: ", 1)[0] + "\n\nAssistant: " + _text(rng, 5)
    rows["toxic-dpo"] = [{"prompt": _text(rng, 4), "chosen": _text(rng, 6), "rejected": "sorry, no.", "id": f"fx-{i}"}
                         for i in range(n // 2)]
    rows["harmbench"] = [{"prompt": _text(rng, 5), "category": "placeholder"} for _ in range(6)]
    for name, rs in rows.items():
        (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rs))
    (root / "chem-forget.txt").write_text("\n".join(_text(rng) + ("\n" if i % 3 == 0 else "") for i in range(n)))
    return root


def tokenizer():
    """A word-level tokenizer covering the fixtures, the letter prompt and the chat fallback."""
    topics = "The following are multiple choice questions (with answers) about biology chemistry cybersecurity . " \
             "college high school geography computer security"
    extra = [topics, "Which is ? A. B. C. D. Answer: A B C D", "user: assistant:"]
    return make_tokenizer([" ".join(WORDS)] + extra)


def tiny_model(path: Path, arch: str = "llama", seed: int = 0) -> Path:
    """A random tiny causal LM of the given architecture saved with the fixture tokenizer (safetensors)."""
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig
    tok = tokenizer()
    special = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    if arch == "llama":
        config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128, **special)
    else:  # GPT-2: learned positions, Conv1D projections, tied embeddings, `transformer.h` blocks
        config = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=128, resid_pdrop=0.0,
                            embd_pdrop=0.0, attn_pdrop=0.0, **special)  # dropout masks differ per rank: off
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def world_model(world, path: Path, provenance: bool = True):
    """An untrained small Llama of the miniature `world`, saved with its tokenizer as this repository saves
    every model (storage.save_model: provenance.json names the world); provenance=False: save_pretrained
    alone, as a model from elsewhere."""
    import safeguard
    import storage
    model = safeguard.new_model(len(world.tokenizer), safeguard.ModelConfig(width=32, layers=2, heads=2, mlp=64),
                                world.tokenizer, seed=0)
    if provenance:
        storage.save_model(model, world.tokenizer, path, {"world": asdict(world.config)})
    else:
        model.save_pretrained(path)
        world.tokenizer.save_pretrained(path)
    return model
