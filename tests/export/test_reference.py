"""The export's PyTorch reference computes what the released LongCLIP code computes."""

import pytest

from conftest import needs_torch

pytestmark = needs_torch


def test_reference_matches_official_forward(tiny_state, tiny_reference):
    import torch
    from official import official_encode_image, official_encode_text

    from longclip.runtime.decode.tokenizer import tokenize

    assert not torch.equal(tiny_state["positional_embedding"], tiny_state["positional_embedding_res"])
    ids = torch.from_numpy(tokenize(["a cat", " ".join(["a"] * 30), "word " * 300]))
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(tiny_reference.encode_text(ids), official_encode_text(tiny_state, ids),
                                   rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(tiny_reference.encode_image(pixels), official_encode_image(tiny_state, pixels),
                                   rtol=1e-5, atol=1e-5)


def test_positions_switch_tables_at_20(tiny_state, tiny_reference):
    """Swapping positional_embedding_res changes texts whose EOT is at >= 20 only."""
    import torch

    from longclip.export.checkpoint import build_reference
    from longclip.runtime.decode.tokenizer import tokenize

    ids = torch.from_numpy(tokenize([" ".join(["a"] * 18), " ".join(["a"] * 19)]))  # EOT at 19 and 20
    state = dict(tiny_state)
    state["positional_embedding_res"] = torch.zeros_like(state["positional_embedding_res"])
    other = build_reference(state)
    with torch.no_grad():
        a, b = tiny_reference.encode_text(ids), other.encode_text(ids)
    assert torch.equal(a[0], b[0])
    assert not torch.allclose(a[1], b[1])


def test_own_length_equals_padding(tiny_reference):
    import torch

    from longclip.runtime.decode.tokenizer import tokenize

    ids = torch.from_numpy(tokenize(["a photo of a dog on the grass", "hi"]))
    with torch.no_grad():
        full = tiny_reference.encode_text(ids)
        short = tiny_reference.encode_text(ids[:, :10])
    torch.testing.assert_close(full, short, rtol=1e-5, atol=1e-5)  # equal up to float rounding of the GEMMs


@pytest.mark.parametrize("tower", ["text", "vision"])
def test_pooled_last_block_equals_full_block(tiny_reference, tower):
    """The last block computes only the pooled token: the same values as the full block's row there."""
    import torch

    if tower == "text":
        block, mask = tiny_reference.transformer.resblocks[-1], tiny_reference.causal_mask[:10, :10]
    else:
        block, mask = tiny_reference.visual.transformer.resblocks[-1], None
    width = block.ln_1.normalized_shape[0]
    x = torch.randn(3, 10, width, generator=torch.Generator().manual_seed(2))
    rows = torch.tensor([9, 0, 4])
    with torch.no_grad():
        full, pooled = block(x, mask), block(x, mask, rows)
    assert pooled.shape == (3, width)
    torch.testing.assert_close(pooled, full[torch.arange(3), rows], rtol=1e-5, atol=1e-5)
