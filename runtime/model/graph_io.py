"""A graph's inputs and outputs against the ones its manifest declares (names, dtypes, ranks, fixed sizes)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import onnxruntime as ort

from ..contract.errors import ModelDirError
from ..contract.manifest import REEXPORT


@dataclass(frozen=True)
class TensorSpec:
    """A declared graph input or output: name, numpy dtype, and dims (a name such as ``"N"``: a dynamic axis)."""

    name: str
    dtype: str
    dims: tuple[int | str, ...]

    def __str__(self) -> str:
        return f"{self.name!r} {self.dtype} ({', '.join(map(str, self.dims))})"


_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
           "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(uint8)": "uint8"}


def _found(arg: ort.NodeArg) -> TensorSpec:
    dims = tuple(d if isinstance(d, (int, str)) else "?" for d in arg.shape)  # None: a dim ONNX leaves unnamed
    return TensorSpec(arg.name, _DTYPES.get(arg.type, arg.type), dims)


def _matches(found: list[TensorSpec], want: TensorSpec) -> bool:
    if len(found) != 1:
        return False
    (got,) = found
    if (got.name, got.dtype, len(got.dims)) != (want.name, want.dtype, len(want.dims)):
        return False
    return all(isinstance(g, str) or isinstance(w, str) or g == w for g, w in zip(got.dims, want.dims))


def check_io(session: ort.InferenceSession, path: str | os.PathLike[str], want_input: TensorSpec,
             want_output: TensorSpec) -> None:
    """:class:`ModelDirError` unless ``session`` has exactly one input and one output as declared: names, dtypes,
    ranks, and each size that both the graph and the declaration fix."""
    for kind, args, want in (("input", session.get_inputs(), want_input),
                             ("output", session.get_outputs(), want_output)):
        found = [_found(arg) for arg in args]
        if not _matches(found, want):
            raise ModelDirError(f"graph {os.fspath(path)!r} has {kind} {', '.join(map(str, found)) or 'none'}, its "
                                f"manifest declares {want}: graph and manifest disagree (graphs swapped, or another "
                                f"model's); {REEXPORT}")
