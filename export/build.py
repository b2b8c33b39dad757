"""Checkpoint -> verified model folder: load, export both towers, parity gate, manifest, then move into place.

Nothing reaches ``out_dir`` unless every step passed: work happens in a sibling temporary folder.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnxruntime
import torch

from longclip.runtime.contract.constants import (
    CONTEXT_LENGTH,
    EOT_TOKEN,
    IMAGE_MEAN,
    IMAGE_STD,
    OPSET,
    POSITION_SPLIT,
    SOT_TOKEN,
    TOKENIZER_ID,
)
from longclip.runtime.contract.errors import ExportError
from longclip.runtime.contract.manifest import sha256_file, write_manifest

from .checkpoint import load_reference, source_record
from .model import LongCLIP
from .onnx_export import EXTERNAL_DATA_BYTES, export_tower, graph_specs, tower_bytes
from .parity import TOLERANCES, ParityReport, reference_outputs, run_parity
from .precision import ATTENTION, PRECISIONS, convert
from .quantize import ACTIVATION_SCALES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportResult:
    model_dir: Path
    checkpoint: Path
    variant: str
    report: ParityReport
    accuracy: ParityReport | None  # the precision's own gate; None for fp32
    precision: str
    seconds: float


def fused_attention(precision: str, attention: str = "auto") -> bool:
    """Whether ``precision``'s graphs trace attention as ONNX Runtime's ``com.microsoft.Attention``.

    ``auto`` fuses for int8 (it quantizes to ``QAttention``) and fp16 (fused kernels on CUDA: flash or
    memory-efficient attention, softmax accumulated in fp32), and keeps fp32 plain ONNX.

    >>> fused_attention("fp16"), fused_attention("fp32"), fused_attention("fp16", "explicit")
    (True, False, False)
    """
    if attention not in ATTENTION:
        raise ExportError(f"attention {attention!r}: use one of {', '.join(ATTENTION)}")
    return attention == "fused" or (attention == "auto" and precision != "fp32")


def pooling(eot_token: int | None) -> str:
    """The manifest's words for where the text tower pools (``LongCLIPConfig.eot_token``).

    >>> pooling(None), pooling(49407)
    ('argmax of input_ids (EOT)', 'first input_ids == 49407 (EOT)')
    """
    return "argmax of input_ids (EOT)" if eot_token is None else f"first input_ids == {eot_token} (EOT)"


def _manifest(model: LongCLIP, checkpoint: Path, work: Path, report: ParityReport, opset: int, precision: str,
              accuracy: ParityReport | None, fused: bool) -> dict[str, object]:
    cfg = model.config
    graphs = {}
    for tower, spec in graph_specs(model).items():
        files = sorted(p.name for p in work.iterdir() if p.name.startswith(spec.file))
        graphs[tower] = {
            "file": spec.file,
            "files": files,
            "sha256": sha256_file(work / spec.file),
            "data_sha256": {name: sha256_file(work / name) for name in files if name != spec.file},
            "input": {"name": spec.input_name, "dims": list(spec.input_dims),
                      "dtype": onnx.TensorProto.DataType.Name(spec.input_dtype).lower()},
            "output": {"name": spec.output_name, "dims": list(spec.output_dims), "dtype": "float32",
                       "normalized": False},
        }
    return {
        "variant": cfg.variant,
        "precision": precision,
        "attention": "fused" if fused else "explicit",
        # the parity gate proved it (batches of 1, 3 and 17, bit for bit); int8 gets there with per-row scales
        "row_invariant": True,
        "activation_scales": ACTIVATION_SCALES if precision == "int8" else None,
        "opset": opset,
        "embed_dim": cfg.embed_dim,
        "config": cfg.to_dict(),
        "image": {
            "size": cfg.image_size,
            "mean": list(IMAGE_MEAN),
            "std": list(IMAGE_STD),
            "steps": ["open: first frame", "convert('RGB'): alpha dropped, no EXIF transpose",
                      "resize: short side to size, bicubic (torchvision Resize)",
                      "center crop: offsets int(round((side - size) / 2))", "/255", "(x - mean) / std"],
        },
        "text": {
            "context_length": CONTEXT_LENGTH,
            "tokenizer": TOKENIZER_ID,
            "sot_token": SOT_TOKEN,
            "eot_token": EOT_TOKEN,
            "position_split": POSITION_SPLIT,
            "pooling": pooling(cfg.eot_token),
            "dynamic_length": True,
        },
        "graphs": graphs,
        "checkpoint": source_record(checkpoint),
        "parity": report.to_dict(),
        "accuracy": None if accuracy is None else {
            "precision": precision, "against": "fp32 PyTorch reference",
            "max_score_delta_limit": TOLERANCES[precision].max_score_delta, **accuracy.to_dict()},
        "exporter": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
    }


def export_model(checkpoint: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, opset: int = OPSET,
                 overwrite: bool = False, precision: str = "fp32", attention: str = "auto") -> ExportResult:
    """Export ``checkpoint`` (file or folder) to ``out_dir`` with ``vision.onnx``, ``text.onnx``, ``manifest.json``.

    The fp32 graphs always pass the parity gate first; ``precision="fp16"``/``"int8"`` then converts them and
    gates the result against the same reference with that precision's tolerance. ``attention`` (see
    :func:`fused_attention`): graphs with fused attention are re-exported and proven at fp32 before any
    conversion. Raises
    :class:`CheckpointError` for a bad checkpoint and :class:`ParityError` when a gate fails; in both cases
    ``out_dir`` is left as it was.
    """
    if precision not in PRECISIONS:
        raise ExportError(f"precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    fused = fused_attention(precision, attention)
    start = time.perf_counter()
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"output folder {str(out)!r} is not empty: pass --overwrite or choose another folder")
    model, ckpt = load_reference(checkpoint)
    log.info("loaded %s: %s", ckpt, model.config.variant)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    work.chmod(0o755)  # mkdtemp makes it private; the finished folder is an ordinary one
    try:
        vision = export_tower(model, "vision", work, opset)
        text = export_tower(model, "text", work, opset)
        reference = reference_outputs(model)
        report = run_parity(reference, vision, text)
        accuracy = None
        if fused:  # re-export with fused attention, prove it at fp32, then convert
            vision = export_tower(model, "vision", work, opset, contrib_ops=True)
            text = export_tower(model, "text", work, opset, contrib_ops=True)
            run_parity(reference, vision, text, what="graphs with fused attention")
        if precision != "fp32":
            for tower, path in (("vision", vision), ("text", text)):
                convert(path, precision, external_data=tower_bytes(model, tower) // 2 > EXTERNAL_DATA_BYTES)
            accuracy = run_parity(reference, vision, text, TOLERANCES[precision], f"{precision} graphs")
        write_manifest(work, _manifest(model, ckpt, work, report, opset, precision, accuracy, fused))
        if out.exists():
            shutil.rmtree(out)
        os.replace(work, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return ExportResult(out, ckpt, model.config.variant, report, accuracy, precision, time.perf_counter() - start)
