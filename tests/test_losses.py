"""Every loss against hand-computed values on tiny tensors, and its gradient where it matters."""

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import losses


def test_entropy_of_uniform_logits_is_minus_log_v():
    for V in (2, 7, 518):
        logits = torch.zeros(2, 3, V)
        mask = torch.ones(2, 3, dtype=torch.bool)
        assert losses.entropy_tr_loss(logits, mask).item() == pytest.approx(-math.log(V), abs=1e-6)


def test_entropy_hand_value_and_mask():
    # p = softmax([0, ln 3]) = (1/4, 3/4): H = -(1/4 ln 1/4 + 3/4 ln 3/4)
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, 0.0]]])  # (B=1, T=2, V=2)
    both = losses.entropy_tr_loss(logits, torch.tensor([[True, True]]))
    first = losses.entropy_tr_loss(logits, torch.tensor([[True, False]]))
    assert first.item() == pytest.approx(-h, abs=1e-6)
    assert both.item() == pytest.approx(-(h + math.log(2)) / 2, abs=1e-6)


def test_entropy_gradient_matches_closed_form():
    # dH/dz_i = -p_i (log p_i + H): the loss is -H, so its gradient is p_i (log p_i + H)
    z = torch.tensor([[[0.3, -1.2, 2.0]]], requires_grad=True)
    losses.entropy_tr_loss(z, torch.ones(1, 1, dtype=torch.bool)).backward()
    p = F.softmax(z.detach(), -1)
    H = -(p * p.log()).sum()
    assert torch.allclose(z.grad, p * (p.log() + H), atol=1e-6)
    # at the uniform distribution the entropy is maximal: zero gradient
    u = torch.zeros(1, 1, 5, requires_grad=True)
    losses.entropy_tr_loss(u, torch.ones(1, 1, dtype=torch.bool)).backward()
    assert u.grad.abs().max().item() < 1e-7


def test_entropy_over_a_token_subset_renormalises_and_leaves_the_rest_alone():
    """--tr-entropy values: the entropy of p renormalised over the subset (its floor −ln S, whatever the other
    logits hold), no gradient to the logits outside it, and the same value through the chunked head path."""
    z = torch.tensor([[[5.0, 0.0, 0.0, -3.0, 0.0]]], requires_grad=True)  # (B=1, T=1, V=5)
    over, one = torch.tensor([1, 2, 4]), torch.ones(1, 1, dtype=torch.bool)
    loss = losses.entropy_tr_loss(z, one, over=over)
    assert loss.item() == pytest.approx(-math.log(3), abs=1e-6)  # uniform among the three: maximal
    assert losses.entropy_tr_loss(z, one).item() > -math.log(5) + 1  # over all 5 tokens: far from uniform
    loss.backward()
    assert z.grad.abs().max().item() < 1e-7
    z.grad = None
    q = torch.tensor([[[5.0, 2.0, 0.0, -3.0, 1.0]]], requires_grad=True)
    losses.entropy_tr_loss(q, one, over=over).backward()
    assert q.grad[0, 0, [0, 3]].abs().max().item() == 0 and q.grad[0, 0, over].abs().min().item() > 0
    x, head = torch.randn(2, 7, 4), torch.nn.Linear(4, 5)
    mask = torch.rand(2, 7) < 0.6
    assert losses.entropy_tr_loss(x, mask, head, 3, over).item() == pytest.approx(
        losses.entropy_tr_loss(head(x), mask, over=over).item(), abs=1e-6)


def test_uniform_values_loss_floor_is_the_oracle_state():
    """--tr-entropy values_ce: ln S exactly where p is uniform over the values and nothing else; the uniform p over
    the whole vocabulary (the paper's entropy maximum) scores ln V, and p off the values (round 15's models) more;
    the chunked head path gives the same value."""
    over, one = torch.tensor([1, 2, 4]), torch.ones(1, 1, dtype=torch.bool)
    oracle = torch.full((1, 1, 5), -1e4)
    oracle[..., over] = 7.0
    assert losses.uniform_values_loss(oracle, one, over).item() == pytest.approx(math.log(3), abs=1e-5)
    assert losses.uniform_values_loss(torch.zeros(1, 1, 5), one, over).item() == pytest.approx(math.log(5), abs=1e-6)
    off = torch.tensor([[[9.0, 0.0, 0.0, 0.0, 0.0]]])
    assert losses.uniform_values_loss(off, one, over).item() > math.log(5) + 5
    x, head = torch.randn(2, 7, 4), torch.nn.Linear(4, 5)
    mask = torch.rand(2, 7) < 0.6
    assert losses.uniform_values_loss(x, mask, over, head, 3).item() == pytest.approx(
        losses.uniform_values_loss(head(x), mask, over).item(), abs=1e-6)


def test_lm_loss_hand_value_with_padding():
    # V = 3, sequence [1, 2, pad]: only the prediction of token 2 at position 0 counts
    logits = torch.tensor([[[0.0, 0.0, math.log(2.0)], [5.0, 5.0, 5.0], [9.0, 0.0, 0.0]]])
    ids = torch.tensor([[1, 2, 0]])
    mask = torch.tensor([[1, 1, 0]])
    assert losses.lm_loss(logits, ids, mask).item() == pytest.approx(-math.log(2 / 4), abs=1e-6)


def test_hidden_distance_hand_values():
    h = (torch.zeros(1, 2, 2), torch.zeros(1, 2, 2))
    ref = (torch.tensor([[[3.0, 4.0], [0.0, 0.0]]]), torch.tensor([[[1.0, 0.0], [9.0, 9.0]]]))
    mask = torch.tensor([[1, 0]])  # the second token is padding and must not count
    # layer 1: ‖(3,4)‖² = 25, layer 2: 1 -> mean 13; unsquared: (5 + 1) / 2 = 3
    assert losses.hidden_distance(h, ref, mask, squared=True).item() == pytest.approx(13.0)
    assert losses.hidden_distance(h, ref, mask, squared=False).item() == pytest.approx(3.0, abs=1e-5)
    assert losses.hidden_distance(ref, ref, torch.ones(1, 2), squared=True).item() == 0.0


def test_retain_loss_of_a_model_against_itself_is_its_lm_loss():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 6)
    hidden = tuple(torch.randn(2, 4, 3) for _ in range(3))
    out = SimpleNamespace(logits=logits, hidden_states=hidden)
    ids, mask = torch.randint(0, 6, (2, 4)), torch.ones(2, 4, dtype=torch.long)
    total, parts = losses.retain_loss(out, out, ids, mask)
    assert parts["retain_rep"] == 0.0
    assert total.item() == pytest.approx(losses.lm_loss(logits, ids, mask).item())


def test_random_mapping_loss_hand_values():
    h = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [5.0, 5.0]]])
    target = torch.tensor([[[2.0, 0.0], [1.0, 0.0], [-1.0, -1.0]]])
    mask = torch.tensor([[1, 1, 0]])
    # cos = 1 (loss 0) and cos = 0 (loss 1); the third token is masked
    assert losses.random_mapping_loss(h, target, mask).item() == pytest.approx(0.5)
    anti = torch.tensor([[[-1.0, 0.0]]])
    assert losses.random_mapping_loss(anti[:, :1] * -1, anti, torch.ones(1, 1)).item() == pytest.approx(2.0)
    assert losses.random_mapping_loss(-anti, anti, torch.ones(1, 1), absolute=True).item() == pytest.approx(0.0)


def test_random_targets_shapes_and_rows():
    table = torch.arange(12.0).reshape(4, 3)
    ids = torch.tensor([[3, 1], [0, 0]])
    assert torch.equal(losses.random_targets(table, ids, "token")[0, 0], table[3])
    assert torch.equal(losses.random_targets(table, ids, "position")[1, 1], table[1])
    assert torch.equal(losses.random_targets(table, ids, "constant")[0, 1], table[0])
    with pytest.raises(ValueError):
        losses.random_targets(table, ids, "bogus")


def test_tr_weights():
    uniform = losses.tr_weights(32, 4, "uniform")
    assert list(uniform) == [4, 8, 12, 16, 20, 24, 28, 32]  # never at k = 0, always after an attacker step
    assert sum(uniform.values()) == pytest.approx(1.0)
    paper = losses.tr_weights(64, 4, "paper")
    assert paper[64] == 1.0 and paper[4] == pytest.approx(math.exp(0.0625 * (4 - 64)))
    assert sum(paper.values()) == pytest.approx(4.44, abs=0.01)  # docs/paper.md §2: Σw ≈ 4.44 over 16 points


def _tiny(arch: str):
    """A random tiny Llama (untied head) or GPT-2 (head tied to the embedding) in eval mode (no dropout)."""
    from transformers import AutoModelForCausalLM, GPT2Config
    from conftest import tiny_model
    if arch == "llama":
        return tiny_model(vocab_size=50).eval()
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(GPT2Config(vocab_size=50, n_embd=16, n_layer=2, n_head=2,
                                                       bos_token_id=1, eos_token_id=2)).eval()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_chunked_losses_equal_the_full_logits_in_value_and_gradient(arch):
    """Issue: the TR and LM losses without the (B, T, V) logits. Applied in chunks of 3 positions from the final
    hidden states (8 positions for the entropy, 7 for the LM loss: both end in a short chunk), the entropy TR loss,
    the LM loss and the retain loss equal the unchunked ones, and so does the gradient of every weight (≤ 1e-6),
    with a padded row and a TR mask."""
    model = _tiny(arch)
    ids = torch.randint(3, 50, (3, 8), generator=torch.Generator().manual_seed(1))
    attention = torch.ones_like(ids)
    attention[1, 5:] = 0  # a padded row
    mask = torch.rand(3, 8, generator=torch.Generator().manual_seed(2)) < 0.5
    ref = _tiny(arch).requires_grad_(False)

    def loss_and_grads(chunk):
        model.zero_grad()
        x, head, _ = losses.forward_for_loss(model, ids, attention, chunk)
        tr = losses.entropy_tr_loss(x, mask, head, chunk)
        lm = losses.lm_loss(x, ids, attention, head, chunk)
        _, head, out = losses.forward_for_loss(model, ids, attention, chunk, output_hidden_states=True)
        out_ref = losses.forward_for_loss(ref, ids, attention, chunk, output_hidden_states=True)[2]
        retain = losses.retain_loss(out, out_ref, ids, attention, True, head, chunk)[0]
        (tr + lm + retain).backward()
        return torch.stack([tr, lm, retain]).detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    full, full_grads = loss_and_grads(0)
    assert full[0] < 0 and full[1] > 0  # a real entropy and a real cross-entropy, not zeros
    for chunk in (3, 7, 100):
        values, grads = loss_and_grads(chunk)
        assert torch.allclose(values, full, atol=1e-6, rtol=0), chunk
        assert max((grads[n] - g).abs().max().item() for n, g in full_grads.items()) <= 1e-6, chunk
        assert all(g.abs().max() > 0 for n, g in grads.items() if "wte" in n or "lm_head" in n)  # the head learns


def test_chunked_losses_refuse_a_model_whose_logits_are_not_its_head():
    """A model that changes its logits after the head would be scored wrongly in chunks: one error line, from its
    config (Gemma 2's soft-cap of 30) or, for a transform no config names, from the model's own last position."""
    from transformers import Gemma2Config, Gemma2ForCausalLM
    from cli import UserError
    torch.manual_seed(0)
    model = Gemma2ForCausalLM(Gemma2Config(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                           num_attention_heads=2, num_key_value_heads=2, head_dim=8)).eval()
    ids = torch.randint(3, 50, (2, 5))
    with pytest.raises(UserError, match=r"final_logit_softcapping\); use --loss-chunk 0"):
        losses.forward_for_loss(model, ids, torch.ones_like(ids), chunk=2)
    llama = _tiny("llama")
    losses.forward_for_loss(llama, ids, torch.ones_like(ids), chunk=2)  # control: a Llama is its head
    scaled = _tiny("llama")
    with torch.no_grad():
        scaled.lm_head.weight.mul_(2.0)
    llama2 = _tiny("llama")
    llama2.get_output_embeddings = lambda: scaled.lm_head  # logits that are not head(hidden)
    with pytest.raises(UserError, match="does not compute its logits as its output embedding"):
        losses.forward_for_loss(llama2, ids, torch.ones_like(ids), chunk=2)


def test_chunked_losses_keep_one_chunk_of_logits_for_the_backward_pass():
    """The memory claim: in chunks, the forward keeps no logits-shaped tensor (…, V) for the backward pass (each
    chunk's are recomputed there, one at a time); unchunked, it keeps the (B, T, V) logits."""
    model = _tiny("llama")
    ids = torch.randint(3, 50, (2, 8))
    for chunk, most in ((2, 0), (0, 2 * 8 * 50)):
        kept = []
        keep = lambda t: kept.append(t.numel() if t.dim() >= 3 and t.shape[-1] == 50 else 0) or t
        with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
            x, head, _ = losses.forward_for_loss(model, ids, torch.ones_like(ids), chunk)
            loss = losses.entropy_tr_loss(x, torch.ones_like(ids, dtype=torch.bool), head, chunk)
        loss.backward()
        assert max(kept) == most, chunk
