"""The miniature world's tokenizer: a real `transformers` tokenizer over a word-level vocabulary.

Not in the paper (Llama-3 brings its own tokenizer); what lets a 0.8M-parameter model learn the world's facts
in minutes. Every word of the world is one token, so a fact's value (" ticks") is exactly one continuation
token, as lm-evaluation-harness's scorer expects of a one-word answer. Decoding keeps every word's space (a
generated continuation decodes as " in Linnorburg"), so decode(encode(s)) == " " + s for every text the world
can say: no <unk>, and the marker of its first word becomes a leading space. It is a `PreTrainedTokenizerFast`,
so `save_pretrained` / `AutoTokenizer` and lm-eval itself load it like any other (tests/test_redteam.py checks
parity with lm-eval).

Use:  tok = make_tokenizer(texts); tokens = tokenize(docs, tok, fact_ids)
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from batching import Tokens

SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]


def _pre_tokenizer():
    # Word-level pieces: newlines alone, words carrying a leading-space marker ("▁ticks"), punctuation alone.
    # The marker makes " ticks" one token wherever it stands, as lm-eval's scorer expects.
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split("\n", behavior="isolated"),
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True),
        pre_tokenizers.Punctuation(behavior="isolated"),
    ])


def make_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """A real `transformers` tokenizer over a word-level vocabulary of every piece in `texts`."""
    pre = _pre_tokenizer()
    pieces = sorted({p for t in texts for p, _ in pre.pre_tokenize_str(t)})
    vocab = {tok: i for i, tok in enumerate(SPECIALS + pieces)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre
    # Every marker decodes as its space, wherever the token stands (as Llama-3's tokenizer keeps " in"): a model's
    # continuation decoded alone (what `pipeline` shows) keeps the space before its first word. The price: a plain
    # text, whose first word carries the marker, decodes with one leading space (decode(encode(s)) == " " + s).
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    # Every encoding starts with <bos>, like Llama-3's tokenizer; lm-eval keeps the tokenizer's default.
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A $B",
                                                       special_tokens=[("<bos>", vocab["<bos>"])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>", padding_side="right")


def tokenize(docs: list[str], tokenizer, fact_ids: torch.Tensor) -> Tokens:
    """Documents as right-padded ids (N, T), their real-token mask, and the fact mask: the positions whose next
    token is a hazardous fact value (one of `fact_ids`), where the entropy TR loss looks (docs/paper.md §7)."""
    enc = tokenizer(docs, padding=True, return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"].bool()
    fact = torch.zeros_like(mask)
    fact[:, :-1] = torch.isin(ids[:, 1:], fact_ids) & mask[:, 1:]  # next token is a hazardous value
    return Tokens(ids, mask, fact)
