"""The PyTorch reference: OpenAI-CLIP ViT towers with LongCLIP's 248-position text embedding.

Module and parameter names follow the released checkpoints, so ``load_state_dict`` takes them as they are.
Attention is written out (packed ``in_proj`` as in ``nn.MultiheadAttention``) so that the traced graph keeps
batch and text length dynamic; ``tests/test_model.py`` checks it against ``nn.MultiheadAttention``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from longclip.runtime.contract.constants import CONTEXT_LENGTH, POSITION_SPLIT, VOCAB_SIZE
from longclip.runtime.contract.errors import ExportError

HEAD_WIDTH = 64
ACTIVATIONS = ("quick_gelu", "gelu")
"""MLP activations: OpenAI's ``x * sigmoid(1.702 x)``, and exact (erf) GELU, which some transformers configs name."""


@dataclass(frozen=True)
class LongCLIPConfig:
    """Architecture of a LongCLIP checkpoint, derived from its tensor shapes."""

    embed_dim: int
    image_size: int
    patch_size: int
    vision_width: int
    vision_layers: int
    text_width: int
    text_layers: int
    context_length: int = CONTEXT_LENGTH
    vocab_size: int = VOCAB_SIZE
    # OpenAI's layout fixes these (64-wide heads, 4x MLP, QuickGELU, eps 1e-5, pooling at the largest id);
    # a transformers config may say otherwise. 0 for heads or MLP width: the OpenAI value for that width.
    vision_heads: int = 0
    text_heads: int = 0
    vision_mlp_width: int = 0
    text_mlp_width: int = 0
    vision_activation: str = "quick_gelu"
    text_activation: str = "quick_gelu"
    vision_layer_norm_eps: float = 1e-5
    text_layer_norm_eps: float = 1e-5
    eot_token: int | None = None
    """None: pool at the argmax of the ids (OpenAI, and transformers when ``eos_token_id`` is 2); an id: pool at
    its first occurrence (transformers otherwise). Identical on the tokenizer's ids, whose EOT is the largest."""

    def __post_init__(self) -> None:
        for tower in ("vision", "text"):
            width = getattr(self, f"{tower}_width")
            if not getattr(self, f"{tower}_heads"):
                object.__setattr__(self, f"{tower}_heads", width // HEAD_WIDTH)
            if not getattr(self, f"{tower}_mlp_width"):
                object.__setattr__(self, f"{tower}_mlp_width", 4 * width)
            if getattr(self, f"{tower}_activation") not in ACTIVATIONS:
                raise ExportError(f"{tower}_activation {getattr(self, f'{tower}_activation')!r}: use one of "
                                 f"{', '.join(ACTIVATIONS)}")

    @property
    def variant(self) -> str:
        """``ViT-L/14-336`` for the released shapes, ``ViT-w{width}d{depth}/{patch}-{size}`` otherwise."""
        letter = {(768, 12): "B", (1024, 24): "L", (1280, 32): "H"}.get((self.vision_width, self.vision_layers))
        body = letter or f"w{self.vision_width}d{self.vision_layers}"
        return f"ViT-{body}/{self.patch_size}-{self.image_size}"

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 whatever the input dtype (as OpenAI CLIP)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def activation(name: str) -> nn.Module:
    """The MLP's activation by its transformers name (``ACTIVATIONS``)."""
    return QuickGELU() if name == "quick_gelu" else nn.GELU()


class Attention(nn.Module):
    """Multi-head self-attention with the parameter layout of ``nn.MultiheadAttention``.

    ``contrib_op`` is set only while exporting graphs with fused attention (``onnx_export.contrib_attention``):
    the tracer then records ONNX Runtime's ``com.microsoft.Attention`` (which int8 quantizes to ``QAttention``)
    instead of the explicit math. It computes nothing in eager mode.
    """

    contrib_op = False

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, rows: torch.Tensor | None = None) -> torch.Tensor:
        """``x (N, L, width)``, ``mask (L, L)`` additive causal mask or None -> ``(N, L, width)``.

        With ``rows (N,)`` only the query at ``x[n, rows[n]]`` is computed and the result is ``(N, width)``:
        keys and values still cover every token, so that row's output is unchanged.
        """
        if self.contrib_op:
            y = torch.onnx.ops.symbolic(
                "com.microsoft::Attention", (x, self.in_proj_weight.t(), self.in_proj_bias),
                {"num_heads": self.heads, "unidirectional": int(mask is not None)},
                dtype=x.dtype, shape=x.shape, version=1)
            return self.out_proj(y if rows is None else pick(y, rows))
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        if rows is not None:
            q = pick(q, rows)[:, None]  # (N, 1, width)
            mask = None if mask is None else mask[rows][:, None, None]  # (N, 1, 1, L): the query row's mask
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in (q, k, v))  # (N, H, L or 1, 64)
        scores = (q * (1.0 / math.sqrt(q.shape[-1]))) @ k.transpose(-2, -1)  # (N, H, L or 1, L)
        if mask is not None:
            scores = scores + mask
        y = (scores.softmax(dim=-1) @ v).transpose(1, 2).flatten(2)  # (N, L or 1, width)
        return self.out_proj(y if rows is None else y[:, 0])


def pick(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``x[n, rows[n]]`` for each ``n``: ``(N, L, ...)`` -> ``(N, ...)``."""
    return x[torch.arange(x.shape[0], device=x.device), rows]


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int, act: str):
        super().__init__()
        self.c_fc = nn.Linear(width, hidden)
        self.gelu = activation(act)
        self.c_proj = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_width: int, act: str, eps: float):
        super().__init__()
        self.ln_1 = LayerNorm(width, eps=eps)
        self.attn = Attention(width, heads)
        self.ln_2 = LayerNorm(width, eps=eps)
        self.mlp = MLP(width, mlp_width, act)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, rows: torch.Tensor | None = None) -> torch.Tensor:
        """``(N, L, width)`` -> ``(N, L, width)``, or ``(N, width)`` for the token ``rows[n]`` of each sequence."""
        h = self.attn(self.ln_1(x), mask, rows)
        x = x + h if rows is None else pick(x, rows) + h
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, cfg: LongCLIPConfig, tower: str):
        super().__init__()
        width, layers = getattr(cfg, f"{tower}_width"), getattr(cfg, f"{tower}_layers")
        block = (width, getattr(cfg, f"{tower}_heads"), getattr(cfg, f"{tower}_mlp_width"),
                 getattr(cfg, f"{tower}_activation"), getattr(cfg, f"{tower}_layer_norm_eps"))
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(*block) for _ in range(layers))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, rows: torch.Tensor | None = None
                ) -> torch.Tensor:
        """``(N, L, width)`` -> ``(N, L, width)``; with ``rows (N,)``, only the pooled token: ``(N, width)``.

        Pooling needs one token of the last block's output, and every op after its attention is per token, so
        the last block computes that token's query, attention row and MLP only (about 1/16 of a B/16 tower).
        """
        *body, last = self.resblocks
        for block in body:
            x = block(x, mask)
        return last(x, mask, rows)


class VisionTransformer(nn.Module):
    def __init__(self, cfg: LongCLIPConfig):
        super().__init__()
        width, grid = cfg.vision_width, cfg.image_size // cfg.patch_size
        self.conv1 = nn.Conv2d(3, width, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.empty(width))
        self.positional_embedding = nn.Parameter(torch.empty(grid * grid + 1, width))
        self.ln_pre = LayerNorm(width, eps=cfg.vision_layer_norm_eps)
        self.transformer = Transformer(cfg, "vision")
        self.ln_post = LayerNorm(width, eps=cfg.vision_layer_norm_eps)
        self.proj = nn.Parameter(torch.empty(width, cfg.embed_dim))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.conv1(pixel_values).flatten(2).transpose(1, 2)  # (N, grid*grid, width)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)  # (N, 1, width)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)  # (N, grid*grid+1, width)
        pooled = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)  # row 0, the class token, is pooled
        return self.ln_post(self.transformer(self.ln_pre(x), rows=pooled)) @ self.proj  # (N, embed_dim)


class LongCLIP(nn.Module):
    """Both towers; ``encode_image`` / ``encode_text`` return unnormalized embeddings ``(N, embed_dim)``."""

    def __init__(self, cfg: LongCLIPConfig):
        super().__init__()
        self.config = cfg
        self.visual = VisionTransformer(cfg)
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.text_width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.text_width))
        self.positional_embedding_res = nn.Parameter(torch.empty(cfg.context_length, cfg.text_width))
        self.transformer = Transformer(cfg, "text")
        self.ln_final = LayerNorm(cfg.text_width, eps=cfg.text_layer_norm_eps)
        self.text_projection = nn.Parameter(torch.empty(cfg.text_width, cfg.embed_dim))
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / 0.07))
        causal = torch.full((cfg.context_length, cfg.context_length), float("-inf")).triu_(1)
        self.register_buffer("causal_mask", causal, persistent=False)
        first = torch.arange(cfg.context_length)[:, None] < POSITION_SPLIT
        self.register_buffer("use_first_table", first, persistent=False)

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.visual(pixel_values)

    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``(N, L) int64`` ids, any ``L <= 248`` -> ``(N, embed_dim)``, pooled at EOT (``config.eot_token``)."""
        length = input_ids.shape[1]
        # LongCLIP adds pe * mask1 + pe_res * mask2: exactly pe below position 20 and pe_res from 20 on.
        # (A transformers conversion has one table: it is loaded into both, so the sum is that table exactly.)
        positions = torch.where(self.use_first_table, self.positional_embedding, self.positional_embedding_res)
        x = self.token_embedding(input_ids) + positions[:length]  # (N, L, width)
        eot_token = self.config.eot_token
        if eot_token is None:
            eot = input_ids.argmax(dim=-1)  # (N,) on integers
        else:  # the first EOT, as transformers pools when eos_token_id is not 2
            eot = (input_ids == eot_token).to(torch.int64).argmax(dim=-1)
        pooled = self.transformer(x, self.causal_mask[:length, :length], rows=eot)  # (N, width) at EOT
        return self.ln_final(pooled) @ self.text_projection  # (N, embed_dim)


def init_random(model: LongCLIP, seed: int) -> LongCLIP:
    """Fill every parameter with seeded random values at CLIP-like scales (tests and smoke runs only).

    LayerNorm weights and all biases are perturbed too, so a mis-loaded tensor cannot hide.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "logit_scale":
                continue
            if p.ndim == 1:
                base = 1.0 if name.endswith(("ln_1.weight", "ln_2.weight", "ln_pre.weight", "ln_post.weight",
                                              "ln_final.weight")) else 0.0
                p.copy_(base + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                fan_in = p.shape[-1] if p.ndim == 2 else p[0].numel()
                std = 0.02 if "embedding" in name else fan_in**-0.5
                p.copy_(std * torch.randn(p.shape, generator=gen))
    return model
