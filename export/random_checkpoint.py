"""Random-weight checkpoints in the official LongCLIP key layout: plumbing for tests and smoke runs.

They score nothing meaningful. ``python -m longclip.export.random_checkpoint tiny models/tiny-random.pt``
"""

from __future__ import annotations

import argparse
import os
from collections import OrderedDict

import torch

from .model import LongCLIP, LongCLIPConfig, init_random

PRESETS = {
    "tiny": LongCLIPConfig(embed_dim=32, image_size=32, patch_size=16, vision_width=64, vision_layers=2,
                           text_width=64, text_layers=2),
    "b16": LongCLIPConfig(embed_dim=512, image_size=224, patch_size=16, vision_width=768, vision_layers=12,
                          text_width=512, text_layers=12),
    "l14": LongCLIPConfig(embed_dim=768, image_size=224, patch_size=14, vision_width=1024, vision_layers=24,
                          text_width=768, text_layers=12),
    "l14-336": LongCLIPConfig(embed_dim=768, image_size=336, patch_size=14, vision_width=1024, vision_layers=24,
                              text_width=768, text_layers=12),
}


def random_state_dict(cfg: LongCLIPConfig, seed: int = 0) -> "OrderedDict[str, torch.Tensor]":
    """A plain fp32 ``OrderedDict`` with every key of a released LongCLIP checkpoint."""
    return OrderedDict(init_random(LongCLIP(cfg), seed).state_dict())


def save_random_checkpoint(path: str | os.PathLike[str], preset: str = "tiny", seed: int = 0) -> str:
    """Write a random checkpoint of ``preset`` to ``path`` (as ``torch.save`` of a state dict)."""
    torch.save(random_state_dict(PRESETS[preset], seed), path)
    return os.fspath(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("preset", choices=sorted(PRESETS))
    parser.add_argument("output")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    save_random_checkpoint(args.output, args.preset, args.seed)


if __name__ == "__main__":
    main()
