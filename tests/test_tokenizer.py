import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import GOLDENS
from longclip.runtime.constants import CONTEXT_LENGTH, EOT_TOKEN, SOT_TOKEN
from longclip.runtime.errors import TextError
from longclip.runtime.tokenizer import Tokenizer, clean, eot_positions, tokenize

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
        assert tok.encode(text) == REFERENCE.encode(text)

    check()
