"""The MC scorer against a brute-force per-choice log-probability, in both styles, and attack curves."""

import copy

import pytest
import torch
import torch.nn.functional as F

import redteam
import scoring
import adversary
from conftest import tiny_model


def brute_force_scores(model, tok, context: str, continuations: list[str]) -> list[float]:
    """One unbatched forward per choice, no sharing: Σ log p(cont token | everything before it)."""
    scores = []
    for cont in continuations:
        n_spaces = len(context) - len(context.rstrip())
        ctx, full = context[:len(context) - n_spaces], context[len(context) - n_spaces:] + cont
        whole = tok(ctx + full)["input_ids"]
        n_ctx = len(tok(ctx)["input_ids"])
        with torch.no_grad():
            logp = F.log_softmax(model(torch.tensor([whole])).logits[0], -1)
        scores.append(sum(logp[i - 1, whole[i]].item() for i in range(n_ctx, len(whole))))
    return scores


@pytest.mark.parametrize("style", ["cloze", "letter"])
def test_scorer_equals_brute_force(small_world, style):
    tok = small_world.tokenizer
    model = tiny_model(vocab_size=len(tok), width=32, seed=3)
    items = small_world.items["E"][:12]
    # a multi-token choice and a context ending in a space exercise lm-eval's whitespace rule
    items = items + [{"question": items[0]["question"] + " ", "choices": ["ticks fleas", "water", "brain cough",
                                                                          "rash"], "answer": 2}]
    mc = scoring.prepare_mc(tok, items, style, small_world.topic)
    scores = scoring.mc_loglikelihoods(model, mc, tok.pad_token_id, max_tokens=64)  # several chunks
    expected = [s for it in items for s in brute_force_scores(model, tok, *scoring.requests(it, style,
                                                                                              small_world.topic))]
    assert torch.allclose(scores, torch.tensor(expected), atol=1e-4)
    preds = scoring.mc_predictions(model, mc, tok.pad_token_id)
    expected_preds = [max(range(4), key=lambda i: expected[4 * n + i]) for n in range(len(items))]
    assert preds == expected_preds
    acc = scoring.mc_accuracy(model, mc, tok.pad_token_id)
    assert acc == pytest.approx(sum(p == it["answer"] for p, it in zip(preds, items)) / len(items))
    if style == "cloze":  # one-token continuations share one forward pass per item
        assert len(mc.inputs) == len(small_world.items["E"][:12]) + 3


def test_ties_go_to_the_first_choice(small_world):
    class Flat(torch.nn.Module):  # every continuation equally likely
        def __init__(self, V):
            super().__init__()
            self.V, self.w = V, torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids, attention_mask=None):
            return type("Out", (), {"logits": torch.zeros(*input_ids.shape, self.V)})

    mc = scoring.prepare_mc(small_world.tokenizer, small_world.items["E"][:20])
    assert scoring.mc_predictions(Flat(len(small_world.tokenizer)), mc) == [0] * 20


def test_attack_curve_records_every_point(small_world):
    model = tiny_model(vocab_size=len(small_world.tokenizer))
    original = copy.deepcopy(model)
    spec = adversary.Attack(lr=1e-2, steps=10, batch_size=4, data="A")
    curve = redteam.attack_curve(model, spec, small_world, seed=0, every=4)
    assert [p["step"] for p in curve] == [0, 4, 8, 10]
    assert all(set(p) == {"step", "tokens", "forget", "retain", "G", *(["loss"] if p["step"] else [])}
               and 0 <= p["forget"] <= 1 for p in curve)
    assert all(p["loss"] > 0 for p in curve[1:])  # the attacker's LM loss at the point
    stream = adversary.attack_stream(spec, small_world.tokens, 0)  # the tokens fine-tuned on, counted by hand
    seen = [int(next(stream).attention_mask.sum()) for _ in range(10)]
    assert [p["tokens"] for p in curve] == [0, sum(seen[:4]), sum(seen[:8]), sum(seen)]
    assert curve[0]["forget"] == scoring.accuracies(original, small_world)["forget"]
