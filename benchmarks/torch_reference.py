"""The PyTorch ways to score that ``longclip-run`` is measured against (whole process, CPU; ``gpu.py`` puts the
same model on a GPU in fp16).

Built like the released LongCLIP code: ``nn.MultiheadAttention`` (so PyTorch's fused fast path runs),
seq-first layout, texts padded to 248 as ``longclip.tokenize`` returns them. Preprocessing and tokenization use
this project's (bit-identical to torchvision / OpenAI's) so only the model differs.

    python benchmarks/torch_reference.py CHECKPOINT ROWS.jsonl --mode batched|row-by-row [--batch-size 32]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from torch import nn

from longclip.export.checkpoint import load_reference
from longclip.export.model import LongCLIP
from longclip.runtime.decode.preprocess import preprocess_images
from longclip.runtime.model.scoring import score_rows
from longclip.runtime.decode.tokenizer import tokenize


class OfficialBlock(nn.Module):
    """OpenAI CLIP's ResidualAttentionBlock over ``(L, N, W)``, weights taken from the reference block."""

    def __init__(self, block: nn.Module, mask: torch.Tensor | None):
        super().__init__()
        width = block.ln_1.normalized_shape[0]
        self.ln_1, self.ln_2, self.mlp = block.ln_1, block.ln_2, block.mlp
        self.register_buffer("mask", mask, persistent=False)  # follows .to(device / dtype); None stays None
        self.attn = nn.MultiheadAttention(width, width // 64)
        self.attn.in_proj_weight, self.attn.in_proj_bias = block.attn.in_proj_weight, block.attn.in_proj_bias
        self.attn.out_proj = block.attn.out_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=self.mask)[0]
        return x + self.mlp(self.ln_2(x))


class OfficialLongCLIP(nn.Module):
    def __init__(self, ref: LongCLIP):
        super().__init__()
        self.ref = ref
        self.visual_blocks = nn.Sequential(*(OfficialBlock(b, None) for b in ref.visual.transformer.resblocks))
        mask = torch.empty(248, 248).fill_(float("-inf")).triu_(1)
        self.text_blocks = nn.Sequential(*(OfficialBlock(b, mask) for b in ref.transformer.resblocks))

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        v = self.ref.visual
        x = v.conv1(x).flatten(2).transpose(1, 2)
        x = torch.cat([v.class_embedding + x.new_zeros(x.shape[0], 1, x.shape[-1]), x], dim=1) + v.positional_embedding
        x = self.visual_blocks(v.ln_pre(x).permute(1, 0, 2)).permute(1, 0, 2)
        return v.ln_post(x[:, 0, :]) @ v.proj

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        r = self.ref
        pos = torch.where(r.use_first_table, r.positional_embedding, r.positional_embedding_res)
        x = self.text_blocks((r.token_embedding(ids) + pos).permute(1, 0, 2)).permute(1, 0, 2)
        x = r.ln_final(x)
        return x[torch.arange(x.shape[0], device=x.device), ids.argmax(dim=-1)] @ r.text_projection


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint")
    parser.add_argument("rows")
    parser.add_argument("--mode", choices=["batched", "row-by-row"], default="batched")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--output")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    torch.set_num_threads(os.cpu_count() or 1)
    model = OfficialLongCLIP(load_reference(args.checkpoint)[0]).eval()
    rows = [json.loads(line) for line in Path(args.rows).read_text().splitlines()]
    root = Path(args.rows).parent
    size = model.ref.config.image_size
    batch = 1 if args.mode == "row-by-row" else args.batch_size
    scores = []
    with torch.inference_mode():
        for i in range(0, len(rows), batch):
            part = rows[i : i + batch]
            pixels = torch.from_numpy(preprocess_images([root / r["image_path"] for r in part], size))
            ids = torch.from_numpy(tokenize([r["text"] for r in part]))
            scores.extend(score_rows(model.encode_image(pixels).numpy(), model.encode_text(ids).numpy()).tolist())
    if args.output:
        Path(args.output).write_text(json.dumps(scores))
    print(json.dumps({"rows": len(rows), "seconds": time.perf_counter() - start}))


if __name__ == "__main__":
    main()
