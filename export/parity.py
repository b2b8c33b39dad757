"""The parity gate: reference vs exported graphs on fixed inputs, as a table, failing loudly."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from longclip.runtime.contract.constants import EOT_TOKEN, SOT_TOKEN, TEXT_INPUT, VISION_INPUT
from longclip.runtime.contract.errors import ParityError
from longclip.runtime.decode.preprocess import preprocess_images
from longclip.runtime.decode.tokenizer import eot_positions, tokenize
from longclip.runtime.model.longclip import bucket_length
from longclip.runtime.model.scoring import l2_normalize, to_score
from longclip.runtime.model.session import create_session

from .model import LongCLIP

MAX_SCORE_DELTA = 1e-5
MIN_COSINE = 0.99999

# EOT at 6, 19, 20 (the two position tables meet there), ~60, and 247 after truncation.
PARITY_TEXTS = (
    "a photo of a cat",
    " ".join(["a"] * 18),
    " ".join(["a"] * 19),
    "A long caption: the image shows a red-brick house with white windows, a wooden door, two bicycles "
    "leaning on the fence, and a grey cat asleep on the stairs while rain falls over the quiet street.",
    "Every word of this caption repeats until it runs past the 248-token limit of LongCLIP. " * 20,
)


def parity_images(seed: int = 0) -> list[Image.Image]:
    """Deterministic images of odd sizes and modes (RGBA, L, wide, tall) that exercise resize and crop."""
    rng = np.random.default_rng(seed)
    shapes = [((333, 517, 3), "RGB"), ((61, 97, 4), "RGBA"), ((400, 50), "L"), ((224, 224, 3), "RGB")]
    return [Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode) for shape, mode in shapes]


@dataclass(frozen=True)
class Check:
    name: str
    value: float
    limit: float
    higher_is_better: bool

    @property
    def ok(self) -> bool:
        return self.value >= self.limit if self.higher_is_better else self.value <= self.limit

    def row(self) -> str:
        if isinstance(self.value, int):  # a count of rows
            value, limit = f"{self.value}", f"<= {self.limit}"
        elif self.higher_is_better:
            value, limit = f"{self.value:.9f}", f">= {self.limit}"
        else:
            value, limit = f"{self.value:.3e}", f"<= {self.limit:.0e}"
        return f"{self.name:<46} {value:>14}  {limit:<11} {'ok' if self.ok else 'FAIL'}"


@dataclass(frozen=True)
class ParityReport:
    checks: tuple[Check, ...]
    n_images: int
    n_texts: int

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def table(self) -> str:
        header = f"{'check':<46} {'value':>14}  limit"
        return "\n".join([header, "-" * len(header), *(c.row() for c in self.checks)])

    def to_dict(self) -> dict[str, object]:
        return {
            "passed": self.ok,
            "n_images": self.n_images,
            "n_texts": self.n_texts,
            "checks": [{"name": c.name, "value": c.value, "limit": c.limit, "ok": c.ok} for c in self.checks],
        }


def _min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.min(np.sum(l2_normalize(a) * l2_normalize(b), axis=-1)))


def _score_delta(img_a: np.ndarray, txt_a: np.ndarray, img_b: np.ndarray, txt_b: np.ndarray) -> float:
    """Max |Δscore| over every image x text pair."""
    score_a = to_score(l2_normalize(img_a) @ l2_normalize(txt_a).T)
    score_b = to_score(l2_normalize(img_b) @ l2_normalize(txt_b).T)
    return float(np.max(np.abs(score_a - score_b)))


@dataclass(frozen=True)
class Tolerance:
    """How close a graph of some precision must stay to the fp32 PyTorch reference."""

    max_score_delta: float
    min_cosine: float


TOLERANCES = {
    "fp32": Tolerance(MAX_SCORE_DELTA, MIN_COSINE),
    "fp16": Tolerance(2e-3, 0.999),  # LayerNorm/softmax stay fp32; the rest rounds to 11-bit mantissas
    "int8": Tolerance(1e-2, 0.99),  # per-row activation scales, per-channel weights, attention fp32
}


@dataclass(frozen=True)
class Reference:
    """The reference's embeddings of the fixed parity inputs, computed once for every gate."""

    pixels: np.ndarray
    ids: np.ndarray
    image: np.ndarray
    text: np.ndarray


def reference_outputs(model: LongCLIP) -> Reference:
    pixels = preprocess_images(parity_images(), model.config.image_size)
    ids = tokenize(list(PARITY_TEXTS))
    with torch.no_grad():
        image = model.encode_image(torch.from_numpy(pixels)).numpy()
        text = model.encode_text(torch.from_numpy(ids)).numpy()
    return Reference(pixels, ids, image, text)


INVARIANCE_BATCHES = (1, 3, 17)
"""Batch sizes whose outputs must agree bit for bit, row by row (a batch of one included: no other path)."""


def _companions(n: int, length: int, seed: int = 0) -> np.ndarray:
    """``(n, length) int64`` random captions that fit ``length``: what shares a text's batch in a run."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((n, length), dtype=np.int64)
    for row in ids:
        eot = int(rng.integers(1, length))
        row[0], row[1:eot], row[eot] = SOT_TOKEN, rng.integers(1, SOT_TOKEN, eot - 1), EOT_TOKEN
    return ids


def _moved_rows(run, inputs: np.ndarray, rows: int) -> int:
    """How many of the first ``rows`` rows of ``inputs`` get other bits in batches of 1, 3 or 17 (in that order)."""
    outs = []
    for size in INVARIANCE_BATCHES:
        outs.append(np.concatenate([run(inputs[i : i + size]) for i in range(0, len(inputs), size)])[:rows])
    return int(sum((out != outs[0]).reshape(rows, -1).any(axis=1).sum() for out in outs[1:]))


def _image_moves(vision, pixels: np.ndarray) -> int:
    """Each parity image alone vs among 16 others (the parity images and noise), in batches of 1, 3 and 17."""
    noise = np.random.default_rng(1).standard_normal((17 - len(pixels), *pixels.shape[1:])).astype(np.float32)
    batch = np.concatenate([pixels, noise])
    return _moved_rows(lambda x: vision.run(None, {VISION_INPUT: x})[0], batch, len(pixels))


def _text_moves(text, ids: np.ndarray) -> int:
    """Each parity text at its bucket's length (as the runtime runs it), alone vs among 16 random captions of that
    bucket, in batches of 1, 3 and 17."""
    moved = 0
    for row, eot in zip(ids, eot_positions(ids)):
        length = min(bucket_length(int(eot) + 1), ids.shape[1])
        batch = np.concatenate([row[None, :length], _companions(16, length, seed=int(eot))])
        moved += _moved_rows(lambda x: text.run(None, {TEXT_INPUT: x})[0], batch, 1)
    return moved


def run_parity(model: LongCLIP | Reference, vision_path: Path, text_path: Path,
               tolerance: Tolerance = TOLERANCES["fp32"], what: str = "exported graphs") -> ParityReport:
    """Compare the reference with both graphs (ORT, CPU), and each graph with itself across batches of 1, 3 and
    17 (bit for bit); raise :class:`ParityError` with the table on failure."""
    ref = model if isinstance(model, Reference) else reference_outputs(model)
    pixels, ids, ref_img, ref_txt = ref.pixels, ref.ids, ref.image, ref.text
    min_cos, max_delta = tolerance.min_cosine, tolerance.max_score_delta
    vision = create_session(vision_path, "cpu")
    text = create_session(text_path, "cpu")
    onnx_img = vision.run(None, {VISION_INPUT: pixels})[0]
    onnx_img_single = np.concatenate([vision.run(None, {VISION_INPUT: pixels[i : i + 1]})[0] for i in range(len(pixels))])
    onnx_txt = text.run(None, {TEXT_INPUT: ids})[0]
    eot = eot_positions(ids)
    onnx_txt_own = np.concatenate([text.run(None, {TEXT_INPUT: ids[i : i + 1, : e + 1]})[0] for i, e in enumerate(eot)])
    onnx_txt_bucket = np.concatenate([text.run(None, {TEXT_INPUT: ids[i : i + 1, : min(bucket_length(e + 1), ids.shape[1])]})[0]
                                      for i, e in enumerate(eot)])
    checks = (
        Check("image cosine, reference vs graph (batch 4)", _min_cosine(ref_img, onnx_img), min_cos, True),
        Check("image cosine, reference vs graph (batch 1)", _min_cosine(ref_img, onnx_img_single), min_cos, True),
        Check("text cosine, reference vs graph (L=248)", _min_cosine(ref_txt, onnx_txt), min_cos, True),
        Check("text cosine, reference vs graph (own length)", _min_cosine(ref_txt, onnx_txt_own), min_cos, True),
        Check("text cosine, reference vs graph (bucket length)", _min_cosine(ref_txt, onnx_txt_bucket), min_cos,
              True),
        Check("max |Δscore|, reference vs graphs", _score_delta(ref_img, ref_txt, onnx_img, onnx_txt), max_delta,
              False),
        Check("max |Δscore|, reference vs bucket length",
              _score_delta(ref_img, ref_txt, onnx_img, onnx_txt_bucket), max_delta, False),
        Check("images whose bits move, batch 1 vs 3 vs 17", _image_moves(vision, pixels), 0, False),
        Check("texts whose bits move, batch 1 vs 3 vs 17", _text_moves(text, ids), 0, False),
    )
    report = ParityReport(checks, n_images=len(pixels), n_texts=len(ids))
    if not report.ok:
        raise ParityError(f"{what} disagree with the PyTorch reference:\n" + report.table())
    return report
