"""The attack spec, the train-time distribution, and the one fine-tuning loop."""

import random
import statistics
from dataclasses import replace

import pytest
import torch

import adversary
from adversary import Attack, TrainAttacks
from conftest import tiny_model
from cli import UserError
from config import TARConfig


def test_bad_specs_are_user_errors():
    for bad in (dict(lr=0), dict(lr=float("nan")), dict(steps=0), dict(optimizer="rmsprop"), dict(optimizer="schedulefree", schedule="cosine"), dict(schedule="step"),
                dict(warmup=1.0), dict(switch=500)):
        with pytest.raises(UserError):
            Attack(**bad)


def test_sample_attack_follows_the_distribution():
    rng = random.Random(0)
    dist = TrainAttacks(lrs=(1e-4, 3e-4, 1e-3), steps=(32,), batch_size=16, retain_then_forget=0.5)
    specs = [adversary.sample_attack(rng, dist) for _ in range(3000)]
    lrs = [s.lr for s in specs]
    for lr in dist.lrs:  # uniform over the grid
        assert abs(lrs.count(lr) / len(lrs) - 1 / 3) < 0.04
    r2f = [s for s in specs if s.retain_data]
    assert abs(len(r2f) / len(specs) - 0.5) < 0.04
    switches = [s.switch for s in r2f]
    assert 0 <= min(switches) and max(switches) < 32
    # ⌊K · Beta(6, 3)⌋: mean K·2/3 − ~0.5 for the floor
    assert statistics.mean(switches) == pytest.approx(32 * 2 / 3 - 0.5, abs=0.6)
    assert all(s.steps == 32 and s.optimizer == "adamw" and s.schedule == "constant" for s in specs)
    defaults = TARConfig().train_attacks()  # A_train of the defaults: K and the batch come from TARConfig
    assert defaults.steps == (TARConfig().inner_steps,) and defaults.batch_size == TARConfig().inner_batch
    assert not any(s.retain_data for s in (adversary.sample_attack(rng, defaults) for _ in range(200)))


def test_a_mix_of_k_draws_each_k_and_one_k_draws_nothing():
    """--inner-steps-mix: each attack's K is drawn uniformly and its retain→forget switch falls inside that K; with
    one K the RNG's stream is what it was before K could be drawn (so runs of one K reproduce)."""
    mixed = TrainAttacks(lrs=(1e-4, 1e-3), steps=(96, 288), batch_size=16, retain_then_forget=0.5)
    specs = [adversary.sample_attack(random.Random(i), mixed) for i in range(2000)]
    assert abs(sum(s.steps == 288 for s in specs) / len(specs) - 0.5) < 0.04
    assert {s.steps for s in specs} == {96, 288} and all(s.switch < s.steps for s in specs)
    assert max(s.switch for s in specs if s.steps == 96) < 96 < max(s.switch for s in specs if s.steps == 288)
    one = replace(mixed, steps=(96,))
    for i in range(50):
        a, b = random.Random(i), random.Random(i)
        spec = adversary.sample_attack(a, one)
        lr, r2f = b.choice(one.lrs), b.random() < 0.5
        assert (spec.lr, spec.switch) == (lr, int(96 * b.betavariate(6, 3)) if r2f else 0)
        assert a.random() == b.random()


def test_retain_then_forget_stream_switches(small_world):
    spec = Attack(data="A", retain_data="Rt", switch=3, steps=6, batch_size=4)
    batches = list(zip(range(6), adversary.attack_stream(spec, small_world.tokens, seed=0)))
    retain_ids = {tuple(r[:4].tolist()) for r in small_world.tokens["Rt"].ids}
    forget_ids = {tuple(r[:4].tolist()) for r in small_world.tokens["A"].ids}
    for k, b in batches:
        rows = {tuple(r[:4].tolist()) for r in b.input_ids}
        assert rows <= (retain_ids if k < 3 else forget_ids)
    with pytest.raises(UserError):
        adversary.attack_stream(Attack(data="nowhere"), small_world.tokens, 0)


def test_attack_moves_weights_lowers_loss_and_calls_back(small_world):
    model = tiny_model(vocab_size=len(small_world.tokenizer))
    before = [p.detach().clone() for p in model.parameters()]
    calls = []
    spec = Attack(lr=1e-2, steps=12, batch_size=8, data="A")
    history = adversary.attack(model, spec, adversary.attack_stream(spec, small_world.tokens, 0),
                               every=4, callback=calls.append)
    assert calls == [4, 8, 12] and len(history) == 12
    assert history[-1] < history[0]
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.grad is None for p in model.parameters())  # no attacker gradients left behind


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
def test_schedule_and_warmup_multiplier(small_world, schedule):
    # Warmup is a 0 -> 1 multiplier on the base LR (the official helper multiplied by the LR twice)
    model = tiny_model(vocab_size=len(small_world.tokenizer))
    spec = Attack(optimizer="sgd", lr=0.1, steps=10, batch_size=4, data="A", schedule=schedule, warmup=0.2,
                  weight_decay=0.0)
    seen = []
    opt_cls = torch.optim.SGD

    class Spy(opt_cls):
        def step(self, *a, **k):
            seen.append(self.param_groups[0]["lr"])
            return super().step(*a, **k)

    torch.optim.SGD = Spy
    try:
        adversary.attack(model, spec, adversary.attack_stream(spec, small_world.tokens, 0))
    finally:
        torch.optim.SGD = opt_cls
    assert seen[0] == 0.0 and seen[1] == pytest.approx(0.05) and seen[2] == pytest.approx(0.1)
    if schedule == "constant":
        assert seen[-1] == pytest.approx(0.1)
    elif schedule == "linear":
        assert seen[-1] == pytest.approx(0.1 * 1 / 8)  # step 9 of 10: (10 − 9) / (10 − 2)
    else:
        assert 0 < seen[-1] < 0.01
