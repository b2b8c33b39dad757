import importlib.util
import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import GOLDENS
from longclip.runtime.contract.constants import CONTEXT_LENGTH, EOT_TOKEN, SOT_TOKEN
from longclip.runtime.contract.errors import TextError
from longclip.runtime.decode.tokenizer import (
    CACHE_SIZE,
    MAX_CACHED_WORD,
    Tokenizer,
    bpe,
    byte_encode,
    clean,
    eot_positions,
    tokenize,
)

GOLDEN_TOKENS = json.loads((GOLDENS / "tokens.json").read_text())


def test_literal_ids():
    ids = tokenize(["a photo of a cat", "Hello, world!"])
    assert ids.dtype == np.int64 and ids.shape == (2, CONTEXT_LENGTH)
    assert ids[0, :8].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407, 0]
    assert ids[1, :6].tolist() == [49406, 3306, 267, 1002, 256, 49407]
    assert not ids[:, 8:].any()


@pytest.mark.parametrize("case", GOLDEN_TOKENS, ids=lambda c: c["text"][:30])
def test_matches_reference_goldens(case):
    """Ids from OpenAI's simple_tokenizer + LongCLIP's truncation (scripts/make_goldens.py)."""
    want = np.zeros(CONTEXT_LENGTH, dtype=np.int64)
    want[: len(case["ids"])] = case["ids"]
    np.testing.assert_array_equal(tokenize(case["text"])[0], want)


def test_goldens_cover_the_edges():
    lengths = [len(c["ids"]) for c in GOLDEN_TOKENS]
    assert CONTEXT_LENGTH in lengths and max(lengths) == CONTEXT_LENGTH  # truncated ones
    assert {20, 21, 248}.issubset(lengths)  # EOT at 19 / 20 (the positional tables meet) / 247


def test_truncation_forces_eot_last():
    ids = tokenize("word " * 400)[0]
    assert ids[0] == SOT_TOKEN and ids[-1] == EOT_TOKEN and (ids[1:-1] != EOT_TOKEN).all()
    assert eot_positions(ids[None]).tolist() == [CONTEXT_LENGTH - 1]


def test_exactly_full_context_is_not_truncated():
    ids = tokenize(" ".join(["a"] * 246))[0]
    assert ids[-1] == EOT_TOKEN and ids[-2] == 320


def test_truncate_false_raises():
    with pytest.raises(TextError, match="too long for context length 248"):
        tokenize("word " * 400, truncate=False)


def test_literal_eot_in_text_pools_at_first_eot():
    ids = tokenize("a <|endoftext|> b")
    assert ids[0, :5].tolist() == [SOT_TOKEN, 320, EOT_TOKEN, 321, EOT_TOKEN]
    assert eot_positions(ids).tolist() == [2]  # argmax takes the first maximum, as torch does


def test_clean():
    assert clean("  Fish &amp;amp;\n\tChips ") == "fish & chips"
    assert clean("schÃ¶n") == "schön"


def test_non_string_raises():
    with pytest.raises(TextError, match="must be a str"):
        Tokenizer().encode(None)  # type: ignore[arg-type]


def _reference():
    spec = importlib.util.find_spec("clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "simple_tokenizer.py"
    module_spec = importlib.util.spec_from_file_location("clip_simple_tokenizer", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.SimpleTokenizer()


REFERENCE = _reference()


LETTERS = "abcdefghijklmnopqrstuvwxyz"
NEEDS_REFERENCE = pytest.mark.skipif(REFERENCE is None, reason="pip install --no-deps clip-anytorch==2.6.0")


def _random_word(n: int, seed: int = 0, alphabet: str = LETTERS) -> str:
    return "".join(random.Random(seed).choices(alphabet, k=n))


def _longclip(ids: list[int], context_length: int = CONTEXT_LENGTH) -> np.ndarray:
    """LongCLIP's ``tokenize(.., truncate=True)`` on BPE ids, as scripts/make_goldens.py does it."""
    tokens = [SOT_TOKEN, *ids, EOT_TOKEN]
    if len(tokens) > context_length:
        tokens = tokens[:context_length]
        tokens[-1] = EOT_TOKEN
    out = np.zeros(context_length, dtype=np.int64)
    out[: len(tokens)] = tokens
    return out


@pytest.mark.skipif(REFERENCE is None, reason="pip install --no-deps clip-anytorch==2.6.0 (.ci/run does)")
def test_differential_against_openai_tokenizer():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    tok = Tokenizer()
    alphabet = st.characters(codec="utf-8", exclude_categories=("Cs",))
    words = st.sampled_from(["a", "cat", "Dog's", "&amp;", "<|endoftext|>", "  ", "\n", "ß", "😀", "1.5", "-"])

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.one_of(st.text(alphabet, max_size=12), words), max_size=30).map(" ".join))
    def check(text):
        want = REFERENCE.encode(text)
        assert tok.encode(text) == want
        np.testing.assert_array_equal(tok([text])[0], _longclip(want))

    check()


def _long_words():
    from hypothesis import strategies as st

    repeated = st.builds(lambda unit, n: unit * n, st.text(st.sampled_from("abé中😀1-'"), min_size=1, max_size=4),
                         st.integers(50, 800))
    letters = st.text(st.sampled_from(LETTERS), min_size=100, max_size=1500)
    scripts = st.text(st.sampled_from("abcxyzäöüßéабвгдαβγ中文字日本한국😀🎉0123456789"), min_size=100, max_size=800)
    anything = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=100, max_size=400)
    return st.one_of(repeated, letters, scripts, anything)


@NEEDS_REFERENCE
def test_differential_long_words_and_texts():
    """Words of hundreds to thousands of letters (where BPE is no longer a few merges) and texts past 248 tokens:
    all the ids of ``encode`` and the truncated ones of ``tokenize`` equal the reference's."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    tok = Tokenizer()
    short = st.sampled_from(["a", "cat", "Dog's", "&amp;", "<|endoftext|>", "\n", "ß", "😀", "1.5", "-"])
    long_text = st.lists(short, min_size=200, max_size=400)  # around and past 246 ids
    pieces = st.lists(st.one_of(_long_words(), short), min_size=1, max_size=4)

    @settings(max_examples=60, deadline=None, derandomize=True, database=None)
    @given(st.one_of(pieces, long_text, st.tuples(long_text, pieces).map(lambda t: t[0] + t[1])).map(" ".join))
    def check(text):
        want = REFERENCE.encode(text)
        assert tok.encode(text) == want
        np.testing.assert_array_equal(tok([text])[0], _longclip(want))

    check()


LONG_CASES = {
    "a*1000": "a" * 1000,
    "ab*700": "ab" * 700,
    "abc*500": "abc" * 500,
    "letters 3000": _random_word(3000),
    "emoji*300": "😀" * 300,
    "digits": "1234567890" * 100,
    "scripts": _random_word(800, 1, "aäßé中文한국абв"),
    "word across the cut": "a " * 240 + _random_word(2000, 2) + " b",
    "600 words": " ".join(_random_word(random.Random(n).randint(1, 9), n) for n in range(600)),
}


@NEEDS_REFERENCE
@pytest.mark.parametrize("text", LONG_CASES.values(), ids=LONG_CASES.keys())
def test_long_cases_match_reference(text):
    want = REFERENCE.encode(text)
    assert Tokenizer().encode(text) == want
    np.testing.assert_array_equal(tokenize(text)[0], _longclip(want))


class _Official:
    """The official ``SimpleTokenizer.bpe`` loop, run on a vocabulary of our choosing."""

    def __init__(self, ranks):
        self.bpe_ranks, self.cache = ranks, {}

    def parts(self, word):
        return type(REFERENCE).bpe(self, word).split(" ")


def test_bpe_merges_every_occurrence_of_a_rank_before_the_pairs_it_creates():
    # ("ab", "a") ranks below ("a", "b"), whose first merge creates it. The official loop merges every ("a", "b")
    # first; a heap that took the new pair at once would give ["aba", "b", "c</w>"].
    merges = [("ab", "a"), ("a", "b")]
    ranks = {pair: rank for rank, pair in enumerate(merges)}
    assert bpe("ababc", ranks, merges) == ["ab", "ab", "c</w>"]
    assert bpe("aaaa", {("a", "a"): 0}, [("a", "a")]) == ["aa", "a", "a</w>"]  # left to right, not overlapping
    if REFERENCE is not None:
        assert _Official(ranks).parts("ababc") == ["ab", "ab", "c</w>"]


def _synthetic_merges(seed: int) -> list[tuple[str, str]]:
    """Merges grown as BPE training would (each part made by an earlier merge), then partly shuffled so that
    pairs rank below their parts' merges, with repeats, and with pairs whose parts are never made."""
    rng = random.Random(seed)
    made = [*"abc"]
    ends = [c + "</w>" for c in "abc"]
    merges = []
    for _ in range(rng.randint(1, 40)):
        left, right = rng.choice(made), rng.choice(made + ends)
        merges.append((left, right))
        (ends if right.endswith("</w>") else made).append(left + right)
    # Move about a third of them (or, one time in two, all) to random ranks: their parts' merges may now come later.
    moved = [merges.pop(rng.randrange(len(merges))) for _ in range(len(merges) // 3)]
    for pair in moved:
        merges.insert(rng.randint(0, len(merges)), pair)
    if rng.random() < 0.5:
        rng.shuffle(merges)
    return merges + rng.sample(merges, min(3, len(merges))) + [("zz", "a")]


@NEEDS_REFERENCE
def test_bpe_matches_the_official_loop_on_synthetic_vocabularies():
    """The real vocabulary never ranks a pair below its parts' merges (so it cannot tell a sweep from a plain
    heap); these do, and repeat pairs, and the ids still follow the official loop exactly."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=300, deadline=None, derandomize=True, database=None)
    @given(st.integers(0, 2**32), st.lists(st.text("abc", min_size=1, max_size=40), min_size=1, max_size=10))
    def check(seed, words):
        merges = _synthetic_merges(seed)
        ranks = {pair: rank for rank, pair in enumerate(merges)}  # as the official: a repeat keeps its last rank
        official = _Official(ranks)
        for word in words:
            assert bpe(word, ranks, merges) == official.parts(word)

    check()


def test_real_vocabulary_has_no_rank_inversions():
    """Each merged token is made by exactly one merge, ranked below every pair that uses it: why the synthetic
    vocabularies above are needed to exercise the sweep."""
    tok = Tokenizer()
    made = {left + right: rank for (left, right), rank in tok.bpe_ranks.items()}
    assert len(made) == len(tok.bpe_ranks) == 49152 - 256 - 2
    assert all(made.get(part, -1) < rank for (left, right), rank in tok.bpe_ranks.items() for part in (left, right))


@pytest.mark.parametrize("n_bpe", [245, 246, 247, 248])
@pytest.mark.parametrize("last", ["a", "qwxz"], ids=["one-token words", "a 3-token word last"])
def test_truncation_edge(n_bpe, last):
    tok = Tokenizer()
    last_ids = tok.encode(last)
    text = "a " * (n_bpe - len(last_ids)) + last
    bpe_ids = tok.encode(text)
    assert len(bpe_ids) == n_bpe and bpe_ids[-len(last_ids):] == last_ids
    ids, lengths = tok.batch([text, "a"])
    truncated = n_bpe > CONTEXT_LENGTH - 2
    assert (lengths > CONTEXT_LENGTH).tolist() == [truncated, False]
    if truncated:
        assert ids[0].tolist() == [SOT_TOKEN, *bpe_ids[: CONTEXT_LENGTH - 2], EOT_TOKEN]
        with pytest.raises(TextError, match="too long") as raised:
            tok.batch([text], truncate=False)
        assert raised.value.code == "too_long"
    else:
        assert lengths[0] == n_bpe + 2 and ids[0, : n_bpe + 2].tolist() == [SOT_TOKEN, *bpe_ids, EOT_TOKEN]
        assert not ids[0, n_bpe + 2 :].any()
        # it fits, so refusing long texts must not refuse it (248 ids exactly: the context, not past it)
        np.testing.assert_array_equal(tok.batch([text], truncate=False)[0][0], ids[0])
    assert eot_positions(ids)[0] == min(n_bpe + 1, CONTEXT_LENGTH - 1)
    np.testing.assert_array_equal(ids[0], _longclip(bpe_ids))


def test_stops_tokenizing_once_the_cut_is_certain():
    tok = Tokenizer()
    seen: list[str] = []
    word_ids = tok._word_ids
    tok._word_ids = lambda token: seen.append(token) or word_ids(token)  # type: ignore[method-assign]
    text = "a " * (CONTEXT_LENGTH - 1) + _random_word(5000) + " b"
    ids, lengths = tok.batch([text])
    assert seen == ["a"] * (CONTEXT_LENGTH - 1)  # the long word and what follows are never BPE'd
    assert lengths[0] == CONTEXT_LENGTH + 1  # a lower bound once the cut is certain, and above the context
    assert ids[0].tolist() == [SOT_TOKEN, *[320] * (CONTEXT_LENGTH - 2), EOT_TOKEN]
    seen.clear()
    assert len(tok.encode(text)) > 2000 and seen[-2:] == [_random_word(5000), "b"]  # encode still gives them all


def _distinct_words(n: int) -> list[str]:
    """``n`` different letter-only words ("a", ..., "z", "ba", ...): digits would split into one-digit tokens."""
    words = []
    for i in range(n):
        word = ""
        while True:
            i, digit = divmod(i, 26)
            word = LETTERS[digit] + word
            if not i:
                break
        words.append(word)
    return words


def test_word_cache_stays_bounded():
    tok = Tokenizer()
    tok.encode(" ".join(_distinct_words(CACHE_SIZE + 5000)))
    assert 0 < len(tok._cache) <= CACHE_SIZE

    small = Tokenizer(cache_size=100)
    words = [_random_word(8, seed) for seed in range(1000)]
    got = [small.encode(word) for word in words]
    assert 0 < len(small._cache) <= 100
    assert got == [tok.encode(word) for word in words]  # emptying the cache changes no ids
    long_word = _random_word(MAX_CACHED_WORD + 1)
    small.encode(long_word)
    assert long_word not in small._cache and words[-1] in small._cache


def _many_lines(n_bytes: int) -> str:
    """Words, mojibake and newlines: ftfy's slow case (each line is a segment it decodes on its own)."""
    rng = random.Random(3)
    words = ["schÃ¶n", "cafÃ©", "&amp;", *(_random_word(rng.randint(1, 12), seed) for seed in range(1000))]
    lines, size = [], 0
    while size < n_bytes:
        lines.append(" ".join(rng.choices(words, k=rng.randint(1, 4))))
        size += len(lines[-1]) + 1
    return "\n".join(lines)[:n_bytes]


class _OverBudget(Exception):
    pass


def _lines_run(fn, budget: int) -> int:
    """Python lines executed by ``fn()`` (ours, ftfy's, html's: all of it), stopped once over ``budget``: work
    counted, not timed, and a quadratic loop is cut short instead of running for minutes."""
    count = 0

    def local(frame, event, arg):
        nonlocal count
        if event == "line":
            count += 1
            if count > budget:
                raise _OverBudget(f"more than {budget} lines")
        return local

    sys.settrace(lambda frame, event, arg: local)
    try:
        fn()
    finally:
        sys.settrace(None)
    return count


HOSTILE = {  # lines executed per character: measured ~25 for one word, ~13 for lines of words (before the 248 cut)
    "one long word": _random_word,
    "lines of words and mojibake": _many_lines,
}


@pytest.mark.parametrize("make", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_texts_tokenize_in_linear_work(make):
    """A single word is BPE'd whole by the official loop, quadratic in its length (28 s on a 32k-letter word here);
    ours is linear: the work per character is bounded, and doubling the text at most doubles the work."""
    tokenize("warm up")
    small, large = make(20_000), make(40_000)
    work_small = _lines_run(lambda: tokenize(small), budget=60 * len(small))
    work_large = _lines_run(lambda: tokenize(large), budget=60 * len(large))
    assert work_large <= 2.3 * work_small, (work_small, work_large)
    assert tokenize(large)[0][-1] == EOT_TOKEN


def test_the_work_count_cuts_a_quadratic_loop_short():
    def quadratic():
        for i in range(10_000):
            for _ in range(i):
                pass

    with pytest.raises(_OverBudget):
        _lines_run(quadratic, budget=100_000)


def test_byte_encode():
    assert byte_encode("é😀!") == "Ã©ðŁĺĢ!"  # 2 + 4 utf-8 bytes; "!" is printable, itself
    if REFERENCE is not None:
        for token in ["cat", "café", "😀", "\x00\x7f\x80", "中文", "ÿ", "".join(map(chr, range(256)))]:
            assert byte_encode(token) == "".join(REFERENCE.byte_encoder[b] for b in token.encode("utf-8"))
