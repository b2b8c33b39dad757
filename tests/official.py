"""Test-side twins of the released LongCLIP code, written independently of ``longclip.export``.

- ``official_state_dict``: random tensors under the exact keys and shapes of a released checkpoint.
- ``official_encode_text`` / ``official_encode_image``: the official forward passes (seq-first layout,
  ``nn.MultiheadAttention``, ``pe * mask1 + pe_res * mask2``, ``ln_final`` on every token, then EOT), used to
  check that the export's reference model computes the same numbers.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn


def _block_keys(prefix: str, width: int) -> dict[str, tuple[int, ...]]:
    return {
        f"{prefix}.attn.in_proj_weight": (3 * width, width),
        f"{prefix}.attn.in_proj_bias": (3 * width,),
        f"{prefix}.attn.out_proj.weight": (width, width),
        f"{prefix}.attn.out_proj.bias": (width,),
        f"{prefix}.ln_1.weight": (width,),
        f"{prefix}.ln_1.bias": (width,),
        f"{prefix}.mlp.c_fc.weight": (4 * width, width),
        f"{prefix}.mlp.c_fc.bias": (4 * width,),
        f"{prefix}.mlp.c_proj.weight": (width, 4 * width),
        f"{prefix}.mlp.c_proj.bias": (width,),
        f"{prefix}.ln_2.weight": (width,),
        f"{prefix}.ln_2.bias": (width,),
    }


def official_shapes(embed: int = 32, image: int = 32, patch: int = 16, vision_width: int = 64, vision_layers: int = 2,
                    text_width: int = 64, text_layers: int = 2, vocab: int = 49408, context: int = 248
                    ) -> "OrderedDict[str, tuple[int, ...]]":
    """Keys and shapes of a released LongCLIP state dict (L/14-336: 768, 336, 14, 1024, 24, 768, 12)."""
    grid = image // patch
    shapes: OrderedDict[str, tuple[int, ...]] = OrderedDict()
    shapes["positional_embedding"] = (context, text_width)
    shapes["positional_embedding_res"] = (context, text_width)
    shapes["text_projection"] = (text_width, embed)
    shapes["logit_scale"] = ()
    shapes["visual.class_embedding"] = (vision_width,)
    shapes["visual.positional_embedding"] = (grid * grid + 1, vision_width)
    shapes["visual.proj"] = (vision_width, embed)
    shapes["visual.conv1.weight"] = (vision_width, 3, patch, patch)
    shapes["visual.ln_pre.weight"] = (vision_width,)
    shapes["visual.ln_pre.bias"] = (vision_width,)
    for i in range(vision_layers):
        shapes.update(_block_keys(f"visual.transformer.resblocks.{i}", vision_width))
    shapes["visual.ln_post.weight"] = (vision_width,)
    shapes["visual.ln_post.bias"] = (vision_width,)
    for i in range(text_layers):
        shapes.update(_block_keys(f"transformer.resblocks.{i}", text_width))
    shapes["token_embedding.weight"] = (vocab, text_width)
    shapes["ln_final.weight"] = (text_width,)
    shapes["ln_final.bias"] = (text_width,)
    return shapes


def official_state_dict(seed: int = 0, **dims: int) -> "OrderedDict[str, torch.Tensor]":
    """Random fp32 tensors in the official layout; LayerNorm weights near 1, everything else small."""
    gen = torch.Generator().manual_seed(seed)
    state: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, shape in official_shapes(**dims).items():
        t = torch.randn(shape, generator=gen)
        if key.endswith("weight") and len(shape) == 1:
            t = 1.0 + 0.1 * t
        elif len(shape) <= 1:
            t = 0.1 * t
        else:
            t = t * (0.02 if "embedding" in key else shape[-1] ** -0.5)
        state[key] = t if key != "logit_scale" else torch.tensor(4.6052)
    return state


def _blocks(state: dict[str, torch.Tensor], prefix: str, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """OpenAI CLIP's ``Transformer`` on ``(L, N, width)`` with real ``nn.MultiheadAttention`` modules."""
    width = x.shape[-1]
    i = 0
    while f"{prefix}.{i}.ln_1.weight" in state:
        p = f"{prefix}.{i}"
        attn = nn.MultiheadAttention(width, width // 64)
        attn.load_state_dict({k.removeprefix(f"{p}.attn."): v for k, v in state.items() if k.startswith(f"{p}.attn.")})
        attn.eval()
        h = F.layer_norm(x, (width,), state[f"{p}.ln_1.weight"], state[f"{p}.ln_1.bias"])
        x = x + attn(h, h, h, need_weights=False, attn_mask=mask)[0]
        h = F.layer_norm(x, (width,), state[f"{p}.ln_2.weight"], state[f"{p}.ln_2.bias"])
        h = F.linear(h, state[f"{p}.mlp.c_fc.weight"], state[f"{p}.mlp.c_fc.bias"])
        h = h * torch.sigmoid(1.702 * h)
        x = x + F.linear(h, state[f"{p}.mlp.c_proj.weight"], state[f"{p}.mlp.c_proj.bias"])
        i += 1
    return x


@torch.no_grad()
def official_encode_text(state: dict[str, torch.Tensor], text: torch.Tensor) -> torch.Tensor:
    """LongCLIP ``encode_text`` on ``(N, 248)`` ids, as released."""
    context, width = state["positional_embedding"].shape
    mask1 = torch.zeros([context, 1])
    mask1[:20, :] = 1
    mask2 = torch.zeros([context, 1])
    mask2[20:, :] = 1
    x = F.embedding(text, state["token_embedding.weight"])
    x = x + state["positional_embedding"] * mask1 + state["positional_embedding_res"] * mask2
    causal = torch.empty(context, context).fill_(float("-inf")).triu_(1)
    x = _blocks(state, "transformer.resblocks", x.permute(1, 0, 2), causal).permute(1, 0, 2)
    x = F.layer_norm(x, (width,), state["ln_final.weight"], state["ln_final.bias"])
    return x[torch.arange(x.shape[0]), text.argmax(dim=-1)] @ state["text_projection"]


@torch.no_grad()
def official_encode_image(state: dict[str, torch.Tensor], image: torch.Tensor) -> torch.Tensor:
    """OpenAI CLIP ``VisionTransformer.forward`` on ``(N, 3, n, n)`` pixels."""
    w = state["visual.conv1.weight"]
    width, patch = w.shape[0], w.shape[-1]
    x = F.conv2d(image, w, stride=patch)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = state["visual.class_embedding"] + torch.zeros(x.shape[0], 1, x.shape[-1])
    x = torch.cat([cls, x], dim=1) + state["visual.positional_embedding"]
    x = F.layer_norm(x, (width,), state["visual.ln_pre.weight"], state["visual.ln_pre.bias"])
    x = _blocks(state, "visual.transformer.resblocks", x.permute(1, 0, 2), None).permute(1, 0, 2)
    x = F.layer_norm(x[:, 0, :], (width,), state["visual.ln_post.weight"], state["visual.ln_post.bias"])
    return x @ state["visual.proj"]
