"""Issue 24, item 7: one enormous word. A pre-token whose ids reach the cut is BPE'd only as far as its first ids
are certain (prefixes of a few thousand characters), so work and memory follow the 248 tokens, not the word;
what stays is linear in the text (ftfy, unescaping, lowercasing, the regex), and the ids stay the official ones.

| kind | cases |
| --- | ---: |
| BPE work: longest and total characters BPE'd for a 100,000-character word | 6 |
| memory: tracemalloc peak within 8 bytes per UTF-8 byte of the text + 1 MiB | 4 |
| ids equal OpenAI's simple_tokenizer on long hostile words, at and past the cut | 10 |
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from test_tokenizer import NEEDS_REFERENCE, REFERENCE, _longclip, _random_word

from longclip.runtime.contract.constants import CONTEXT_LENGTH
from longclip.runtime.decode import tokenizer
from longclip.runtime.decode.tokenizer import Tokenizer

N = 100_000
WORDS = {
    "zero-width spaces": "\u200b" * N,
    "one letter": "a" * N,
    "two letters": "ab" * (N // 2),
    "emoji (8 to a token)": "\U0001f602" * N,
    "random letters": _random_word(N, 5),
    "240 words, then the word": "a " * 240 + "\u200b" * N,
}


@pytest.fixture()
def bpe_calls(monkeypatch):
    """The length of each word :func:`tokenizer.bpe` is given."""
    seen: list[int] = []
    real = tokenizer.bpe
    monkeypatch.setattr(tokenizer, "bpe", lambda word, *a, **k: seen.append(len(word)) or real(word, *a, **k))
    return seen


@pytest.mark.parametrize("text", WORDS.values(), ids=WORDS.keys())
def test_a_huge_word_is_bped_only_as_far_as_its_first_ids(bpe_calls, text):
    ids, lengths = Tokenizer().batch([text])
    assert lengths[0] > CONTEXT_LENGTH and ids[0, -1] == tokenizer.EOT_TOKEN and ids[0].all()
    longest = max(bpe_calls)
    assert longest <= 8192, longest  # the whole word is 100,000 characters or more (300,000 bytes for most)
    assert sum(bpe_calls) <= 600_000, sum(bpe_calls)  # a few dozen prefixes per try, doubling a few times at most
    assert Tokenizer().encode(text[:50]) == Tokenizer().encode(text[:50], limit=CONTEXT_LENGTH)  # short: untouched


@pytest.mark.parametrize("name", ["zero-width spaces", "one letter", "emoji (8 to a token)", "random letters"])
def test_memory_follows_the_text_not_its_bpe(name):
    text = WORDS[name]
    size = len(text.encode())
    tok = Tokenizer()
    tok([text[:2000]])  # the tokenizer's own tables are not the text's
    tracemalloc.start()
    try:
        tok([text])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= 8 * size + (1 << 20), (name, size, peak)


LONG = {
    "zero-width spaces": "\u200b" * 3000,
    "one letter": "a" * 3000,
    "two letters": "ab" * 1500,
    "emoji": "\U0001f602" * 2000,
    "ellipses": "\u2026" * 2000,
    "letters": _random_word(2500, 7),
    "mixed scripts": _random_word(3000, 3, "a\u00e4\u00df\u00e9\u4e2d\u6587\ud55c\uad6d\u0430\u0431\u0432\U0001f602\u2026\u200b"),
    "after 240 words": "a " * 240 + "\u200b" * 2000,
    "after 100 words": "cat " * 100 + "\U0001f602" * 3000,
    "after 246 ids": "a " * 246 + "ab" * 1500,
}


@NEEDS_REFERENCE
@pytest.mark.parametrize("text", LONG.values(), ids=LONG.keys())
def test_cut_words_give_the_official_ids(text):
    np.testing.assert_array_equal(Tokenizer()([text])[0], _longclip(REFERENCE.encode(text)))
