"""Trace the reference towers into two ONNX graphs with declared, checked I/O."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from torch import nn

from longclip.runtime.contract.constants import (
    CLIP_CONTEXT_LENGTH,
    CONTEXT_LENGTH,
    EOT_TOKEN,
    OPSET,
    SOT_TOKEN,
    TEXT_GRAPH,
    TEXT_INPUT,
    TEXT_OUTPUT,
    VISION_GRAPH,
    VISION_INPUT,
    VISION_OUTPUT,
)
from longclip.runtime.contract.errors import ExportError

from .model import Attention, LongCLIP

log = logging.getLogger(__name__)

EXTERNAL_DATA_BYTES = 2_000_000_000  # protobuf's 2 GB ceiling, with room for the graph itself
TRACE_BATCH = 2  # parity runs other batch sizes and lengths, so nothing traced can hide
TRACE_LENGTH = CLIP_CONTEXT_LENGTH


@dataclass(frozen=True)
class GraphSpec:
    """Declared I/O of one graph: names, dtypes and which axes are dynamic."""

    file: str
    input_name: str
    input_dtype: int
    input_dims: tuple[str | int, ...]
    output_name: str
    output_dims: tuple[str | int, ...]


def graph_specs(model: LongCLIP) -> dict[str, GraphSpec]:
    cfg = model.config
    n = cfg.image_size
    return {
        "vision": GraphSpec(VISION_GRAPH, VISION_INPUT, onnx.TensorProto.FLOAT, ("batch", 3, n, n),
                            VISION_OUTPUT, ("batch", cfg.embed_dim)),
        "text": GraphSpec(TEXT_GRAPH, TEXT_INPUT, onnx.TensorProto.INT64, ("batch", "length"),
                          TEXT_OUTPUT, ("batch", cfg.embed_dim)),
    }


class _Tower(nn.Module):
    def __init__(self, model: LongCLIP, tower: str):
        super().__init__()
        self.model, self.tower = model, tower

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(x) if self.tower == "vision" else self.model.encode_text(x)


def _example(model: LongCLIP, tower: str) -> tuple[torch.Tensor, dict[int, torch.export.Dim]]:
    batch = torch.export.Dim("batch")
    if tower == "vision":
        n = model.config.image_size
        return torch.zeros(TRACE_BATCH, 3, n, n), {0: batch}
    ids = torch.full((TRACE_BATCH, TRACE_LENGTH), 320, dtype=torch.int64)
    ids[:, 0], ids[:, TRACE_LENGTH // 2] = SOT_TOKEN, EOT_TOKEN
    return ids, {0: batch, 1: torch.export.Dim("length", max=CONTEXT_LENGTH)}


def _dims(value_info: onnx.ValueInfoProto) -> tuple[str | int, ...]:
    return tuple(d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim)


def check_graph(path: Path, spec: GraphSpec) -> None:
    """The saved graph declares exactly the contract: names, dtypes, static and dynamic axes."""
    graph = onnx.load(str(path), load_external_data=False).graph
    if [i.name for i in graph.input] != [spec.input_name] or [o.name for o in graph.output] != [spec.output_name]:
        raise ExportError(f"{path.name}: I/O {[i.name for i in graph.input]} -> {[o.name for o in graph.output]}, "
                          f"expected [{spec.input_name!r}] -> [{spec.output_name!r}]")
    (inp,), (out,) = graph.input, graph.output
    if inp.type.tensor_type.elem_type != spec.input_dtype:
        raise ExportError(f"{path.name}: {spec.input_name} has dtype {inp.type.tensor_type.elem_type}, "
                          f"expected {spec.input_dtype}")
    if out.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise ExportError(f"{path.name}: {spec.output_name} is not float32")
    for got, want, name in ((_dims(inp), spec.input_dims, spec.input_name),
                            (_dims(out), spec.output_dims, spec.output_name)):
        matches = [bool(g) and isinstance(g, str) if isinstance(w, str) else g == w for g, w in zip(got, want)]
        if len(got) != len(want) or not all(matches):
            raise ExportError(f"{path.name}: {name} has dims {got}, expected {want} (strings are dynamic axes)")


@contextlib.contextmanager
def _quiet_loggers(names: tuple[str, ...] = ("torch", "onnxscript", "onnx_ir")) -> Iterator[None]:
    """The exporter narrates every rewrite through logging; keep it to errors while it runs."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def tower_bytes(model: LongCLIP, tower: str) -> int:
    """Bytes of the parameters that go into one tower's graph."""
    visual = {id(p) for p in model.visual.parameters()}
    params = [p for p in model.parameters() if (id(p) in visual) == (tower == "vision")]
    return sum(p.numel() * p.element_size() for p in params)


@contextlib.contextmanager
def contrib_attention(model: LongCLIP) -> Iterator[None]:
    """Trace attention as ONNX Runtime's fused ``com.microsoft.Attention`` (``build.fused_attention``)."""
    blocks = [m for m in model.modules() if isinstance(m, Attention)]
    for block in blocks:
        block.contrib_op = True
    try:
        yield
    finally:
        for block in blocks:
            block.contrib_op = False


def export_tower(model: LongCLIP, tower: str, out_dir: Path, opset: int = OPSET, contrib_ops: bool = False) -> Path:
    """Export one tower to ``out_dir/<spec.file>`` and check its declared I/O.

    ``contrib_ops``: fuse attention into ``com.microsoft.Attention`` (ONNX Runtime only; int8 and fp16).
    """
    spec = graph_specs(model)[tower]
    example, dims = _example(model, tower)
    wrapper = _Tower(model, tower).eval()
    n_bytes = tower_bytes(model, tower)
    path = out_dir / spec.file
    log.info("exporting %s tower (%.0f MB) to %s", tower, n_bytes / 1e6, path)
    fused = contrib_attention(model) if contrib_ops else contextlib.nullcontext()
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), _quiet_loggers(), fused:
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapper, (example,), input_names=[spec.input_name], output_names=[spec.output_name],
            dynamic_shapes={"x": dims}, opset_version=opset, dynamo=True, verbose=False,
        )
        program.save(str(path), external_data=n_bytes > EXTERNAL_DATA_BYTES)
    check_graph(path, spec)
    return path
