"""Did a transformers conversion keep LongCLIP's positions? Compare its one text position table with upstream's.

Upstream LongCLIP adds ``positional_embedding`` at positions 0-19 and ``positional_embedding_res`` at 20-247; a
faithful conversion's single 248-row table holds exactly those rows. A converter that copied only
``positional_embedding`` holds upstream's unused rows 20-247 of it instead, and scores long captions differently.

``python -m longclip.export.compare_positions HF_FOLDER longclip-L.pt`` prints a table and exits 0 when the
conversion kept both, 1 when it did not.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from longclip.runtime.contract.constants import CONTEXT_LENGTH, POSITION_SPLIT
from longclip.runtime.contract.errors import LongCLIPError
from longclip.runtime.model.checkpoints import hf_files

from .checkpoint import find_checkpoint, load_state_dict
from .hf import TEXT_POSITIONS, load_hf_state


@dataclass(frozen=True)
class Comparison:
    """Max |difference| of the conversion's rows against each of upstream's tables, and the storage tolerance."""

    first: float  # rows 0-19 vs positional_embedding
    res: float  # rows 20-247 vs positional_embedding_res
    res_vs_first: float  # rows 20-247 vs positional_embedding (what a copy of the first table alone would match)
    tolerance: float

    @property
    def kept(self) -> bool:
        return self.first <= self.tolerance and self.res <= self.tolerance

    def table(self) -> str:
        rows = ((f"rows 0-{POSITION_SPLIT - 1} vs positional_embedding", self.first),
                (f"rows {POSITION_SPLIT}-{CONTEXT_LENGTH - 1} vs positional_embedding_res", self.res),
                (f"rows {POSITION_SPLIT}-{CONTEXT_LENGTH - 1} vs positional_embedding", self.res_vs_first))
        lines = [f"{'conversion table':<44} {'max |diff|':>11}",
                 *(f"{name:<44} {value:>11.3e}" for name, value in rows)]
        verdict = ("kept: positions 20-247 are upstream's positional_embedding_res" if self.kept else
                   "NOT kept: the conversion's table differs from upstream's tables (beyond "
                   f"{self.tolerance:.0e}, its storage precision)")
        return "\n".join([*lines, verdict])


def compare(table: torch.Tensor, first: torch.Tensor, res: torch.Tensor) -> Comparison:
    """``table (248, W)`` from a conversion vs upstream's ``positional_embedding`` / ``_res`` ``(248, W)``."""
    if table.shape != first.shape or first.shape != res.shape:
        raise ValueError(f"shapes differ: conversion {tuple(table.shape)}, upstream {tuple(first.shape)} and "
                         f"{tuple(res.shape)}: compare the same model size")
    # a conversion stored in fp16/bf16 keeps the rows to that precision, relative to their size
    tolerance = 0.0 if table.dtype == torch.float32 else float(torch.finfo(table.dtype).eps) * float(
        first.abs().max().float().clamp(min=res.abs().max().float()))
    t, f, r, s = table.float(), first.float(), res.float(), POSITION_SPLIT
    return Comparison(first=float((t[:s] - f[:s]).abs().max()), res=float((t[s:] - r[s:]).abs().max()),
                      res_vs_first=float((t[s:] - f[s:]).abs().max()), tolerance=tolerance)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("hf_folder", type=Path, help="the transformers conversion (config.json + weights)")
    parser.add_argument("upstream", type=Path, help="upstream's LongCLIP checkpoint, e.g. longclip-L.pt")
    args = parser.parse_args(argv)
    try:
        table = load_hf_state(hf_files(args.hf_folder)).get(TEXT_POSITIONS)
        upstream = load_state_dict(find_checkpoint(args.upstream))
        if table is None or "positional_embedding_res" not in upstream:
            raise ValueError(f"need {TEXT_POSITIONS} in {str(args.hf_folder)!r} and positional_embedding(_res) in "
                             f"{str(args.upstream)!r}: pass a transformers CLIP folder, then a LongCLIP checkpoint")
        result = compare(table, upstream["positional_embedding"], upstream["positional_embedding_res"])
    except (LongCLIPError, ValueError) as exc:
        print(f"compare_positions: error: {exc}", file=sys.stderr)
        return 2
    print(result.table())
    return 0 if result.kept else 1


if __name__ == "__main__":
    sys.exit(main())
