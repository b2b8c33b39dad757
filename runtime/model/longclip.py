"""``LongCLIP``: two ONNX Runtime sessions, the tokenizer and the preprocessing of a manifest."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..contract.constants import (
    BATCH_SIZE,
    CLIP_CONTEXT_LENGTH,
    LENGTH_BUCKETS,
    MAX_PIXELS,
    TEXT_BATCH_SIZE,
    TEXT_INPUT,
    TEXT_OUTPUT,
    VISION_INPUT,
    VISION_OUTPUT,
)
from ..contract.manifest import Manifest, read_manifest
from ..contract.rows import ItemScores
from ..decode.preprocess import ImageInput, one_or_many, preprocess_images
from ..decode.tokenizer import default_tokenizer, eot_positions
from .device import TENSORRT, parse_device
from .graph_io import TensorSpec, check_io
from .providers import TrtProfile
from .resolve import cache_root, resolve_model_dir
from .scoring import l2_normalize, score_matrix, score_rows
from .session import create_session, run_one
from .verify import verify_graph

log = logging.getLogger(__name__)

TOKENS_PER_ROW = 64
"""int8 text batches hold ``batch_size`` rows, or more when their texts are short: up to ``batch_size *
TOKENS_PER_ROW`` tokens, so such a batch is never larger in memory than ``batch_size`` rows of 64 tokens. An int8
GEMM pays a fixed cost per call (quantizing its input), so short captions gain 11-13 % from the rows; fp32 graphs
measured 2-4 % slower with them (B/16, 2-core CPU), so they keep ``batch_size`` rows."""


def length_batches(lengths: np.ndarray, batch_size: int, tokens_per_row: int = 0,
                   max_rows: int | None = None) -> list[np.ndarray]:
    """Row indices grouped by length bucket (shortest first), ``batch_size`` rows a group, or up to
    ``batch_size * tokens_per_row`` tokens when that is more rows; never more than ``max_rows`` when given.

    >>> [b.tolist() for b in length_batches(np.array([200, 5, 7, 12]), 2)]
    [[1, 2], [3], [0]]
    >>> [len(b) for b in length_batches(np.full(300, 14), 32, tokens_per_row=64)]  # bucket 16: 128 rows
    [128, 128, 44]
    >>> [len(b) for b in length_batches(np.full(300, 14), 32, tokens_per_row=64, max_rows=64)]
    [64, 64, 64, 64, 44]
    """
    order = np.argsort(lengths, kind="stable")
    buckets = np.searchsorted(LENGTH_BUCKETS, lengths[order])
    groups: list[np.ndarray] = []
    for bucket in np.unique(buckets):
        rows = order[buckets == bucket]
        size = max(batch_size, batch_size * tokens_per_row // LENGTH_BUCKETS[bucket])
        size = size if max_rows is None else min(size, max_rows)
        groups.extend(rows[i : i + size] for i in range(0, len(rows), size))
    return groups


def bucket_length(length: int) -> int:
    """The length a text of ``length`` tokens (SOT and EOT counted) runs at: its bucket's.

    >>> bucket_length(6), bucket_length(8), bucket_length(9), bucket_length(300)
    (8, 8, 16, 248)
    """
    return LENGTH_BUCKETS[min(int(np.searchsorted(LENGTH_BUCKETS, length)), len(LENGTH_BUCKETS) - 1)]


TRT_MAX_BATCH = 64
"""TensorRT builds its engines for batches up to this, or up to the batch size asked for when that is larger."""


def trt_cache_root() -> Path:
    """Where TensorRT engines and timing caches live: ``<longclip cache>/tensorrt``."""
    return cache_root() / "tensorrt"


def declared_io(m: Manifest) -> dict[str, tuple[TensorSpec, TensorSpec]]:
    """Each graph's input and output as its manifest declares them ("N", "L": dynamic axes).

    >>> print(declared_io(read_manifest("models/tiny"))["vision"][0])    # doctest: +SKIP
    'pixel_values' float32 (N, 3, 32, 32)
    """
    n, d = m.image_size, m.embed_dim
    return {"vision": (TensorSpec(VISION_INPUT, "float32", ("N", 3, n, n)),
                       TensorSpec(VISION_OUTPUT, "float32", ("N", d))),
            "text": (TensorSpec(TEXT_INPUT, "int64", ("N", "L")), TensorSpec(TEXT_OUTPUT, "float32", ("N", d)))}


def checked_texts(texts: str | Sequence[str]) -> list[str]:
    """``texts`` as a list (one ``str`` is one text), each checked as a row's text is: :class:`.TextError` with
    the CLI's reason code for a null, non-string, empty or whitespace-only one."""
    from ..contract.rows import (
        check_text,  # pandas comes with it: imported when texts are first encoded, not with the model
    )

    return [check_text(text) for text in ([texts] if isinstance(texts, str) else texts)]


_WARNED_NOT_INVARIANT: set[Path] = set()


def _warn_not_row_invariant(root: Path) -> None:
    """Once per folder and process: an int8 folder exported before per-row activation scales."""
    key = root.resolve()
    if key in _WARNED_NOT_INVARIANT:
        return
    _WARNED_NOT_INVARIANT.add(key)
    log.warning("%s is an int8 export with per-batch activation scales: a row's score moves slightly with what "
                "shares its batch (no row_invariant in its manifest); re-export it with this version's "
                "`longclip-export --precision int8` for scores that depend on the row alone", root)


def _one_name(model_name: str | os.PathLike[str] | None, model_dir: str | os.PathLike[str] | None
              ) -> str | os.PathLike[str]:
    """``model_name``, or its older keyword ``model_dir``: exactly one of them."""
    if (model_name is None) == (model_dir is None):
        raise TypeError("LongCLIP() takes one model: pass model_name (an exported folder, a checkpoint or a Hugging "
                        f"Face repo id), not {'both it and model_dir' if model_name is not None else 'neither'}")
    return model_name if model_name is not None else model_dir  # type: ignore[return-value]


class LongCLIP:
    """A LongCLIP model, ready to embed and score.

    ``model_name`` takes every form ``longclip-run -m`` and ``ImageLongCLIPEvaluator`` take, resolved the same way
    (:func:`.resolve.resolve_model_dir`): an exported folder, a checkpoint file or a folder holding one (exported
    once into a cache; needs the export extra), or a Hugging Face repo id. ``model_dir=`` is its older name.
    ``device``: ``None``/``"auto"``, ``"cpu"``, ``"cuda[:N]"``, ``"tensorrt[:N]"``.

    ``max_batch`` matters on TensorRT only, whose engines are built for batches up to it (larger batches are split
    there); CPU and CUDA run any batch as given. ``threads``: ONNX Runtime's intra-op threads per session;
    ``spin=False`` makes them sleep between runs (where decode workers share the cores).

    >>> model = LongCLIP("models/tiny")                       # doctest: +SKIP
    >>> model.score(["cat.jpg"], ["a photo of a cat"])        # doctest: +SKIP
    array([0.62], dtype=float32)
    """

    def __init__(self, model_name: str | os.PathLike[str] | None = None, device: str | None = None,
                 threads: int | None = None, max_batch: int = TRT_MAX_BATCH, *,
                 model_dir: str | os.PathLike[str] | None = None, spin: bool = True):
        self.manifest: Manifest = read_manifest(resolve_model_dir(_one_name(model_name, model_dir)))
        m, cache = self.manifest, trt_cache_root()
        n, batch, opt = m.image_size, max(1, max_batch), min(BATCH_SIZE, max(1, max_batch))
        vision_trt = TrtProfile(VISION_INPUT, (1, 3, n, n), (opt, 3, n, n), (batch, 3, n, n), m.vision_sha256, cache)
        text_trt = TrtProfile(TEXT_INPUT, (1, 1), (opt, CLIP_CONTEXT_LENGTH), (batch, m.context_length),
                              m.text_sha256, cache)
        self.trt_max_batch = batch
        if parse_device(device)[0] == "tensorrt" and m.attention == "fused":
            log.warning("%s has attention fused into ONNX Runtime's Attention op, which TensorRT cannot build: "
                        "those nodes run on CUDA between TensorRT engines; for TensorRT export with "
                        "`longclip-export --attention explicit`", m.root)
        # Loading is start-up latency that every process pays: ONNX Runtime builds the two sessions without the
        # GIL, so both, the tokenizer's vocabulary and the graphs' sha256 (when not stamped) load at once. The
        # sessions are not used before their graphs are verified, and a wrong sha256 is the error reported.
        with ThreadPoolExecutor(max_workers=5, thread_name_prefix="longclip-load") as pool:
            checks = [pool.submit(verify_graph, graph) for graph in m.graphs.values()]
            vision = pool.submit(create_session, m.vision_graph, device, threads, vision_trt, spin, m.root)
            text = pool.submit(create_session, m.text_graph, device, threads, text_trt, spin, m.root)
            tokenizer = pool.submit(default_tokenizer)
            for check in checks:
                check.result()
            self.vision, self.text, self.tokenizer = vision.result(), text.result(), tokenizer.result()
        if not m.row_invariant:
            _warn_not_row_invariant(m.root)
        io = declared_io(m)
        check_io(self.vision, m.vision_graph, *io["vision"])
        check_io(self.text, m.text_graph, *io["text"])

    @property
    def provider(self) -> str:
        """The execution provider the sessions run on."""
        return self.vision.get_providers()[0]

    @property
    def image_size(self) -> int:
        return self.manifest.image_size

    def preprocess(self, images: ImageInput | Sequence[ImageInput]) -> np.ndarray:
        """Images (every form :meth:`encode_images` takes) -> ``(N, 3, n, n) float32`` with this model's size,
        mean and std."""
        m = self.manifest
        return preprocess_images(one_or_many(images), m.image_size, m.mean, m.std)

    def _batch_cap(self) -> int | None:
        """TensorRT engines are built for batches up to ``trt_max_batch``; the other providers take any batch."""
        return self.trt_max_batch if self.provider == TENSORRT else None

    def embed_pixels(self, pixels: np.ndarray, batch_size: int = BATCH_SIZE) -> np.ndarray:
        """``(N, 3, n, n) float32`` -> unnormalized ``(N, D) float32``, ``batch_size`` images per forward."""
        out = np.empty((len(pixels), self.manifest.embed_dim), dtype=np.float32)
        batch_size = min(batch_size, self._batch_cap() or batch_size)
        for start in range(0, len(pixels), batch_size):
            out[start : start + batch_size] = self.run_vision(pixels[start : start + batch_size])
        return out

    def run_vision(self, pixels: np.ndarray, run_options: ort.RunOptions | None = None) -> np.ndarray:
        """One forward of the image tower: ``(B, 3, n, n)`` -> unnormalized ``(B, D) float32``."""
        return run_one(self.vision, VISION_INPUT, np.ascontiguousarray(pixels, dtype=np.float32), run_options)

    def text_batches(self, ids: np.ndarray, batch_size: int = TEXT_BATCH_SIZE) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(rows, ids[rows, :length])`` per forward: rows grouped into length buckets, each batch at its
        bucket's upper bound (:func:`bucket_length`). With a causal mask and EOT pooling the tokens after EOT cannot
        change the embedding in exact arithmetic, but a text run at exactly its own length takes other float paths
        than a padded one (fp32 moved rows by up to 6e-8): a length fixed by the row's own bucket, never by its
        batch's longest text, keeps every row's bits independent of its neighbours. int8 batches of short texts
        hold up to ``batch_size * TOKENS_PER_ROW`` tokens."""
        eot = eot_positions(ids)
        cap = self._batch_cap()
        per_row = TOKENS_PER_ROW if self.manifest.precision == "int8" else 0
        out = []
        for rows in length_batches(eot + 1, min(batch_size, cap or batch_size), per_row, cap):
            length = min(bucket_length(int(eot[rows[0]]) + 1), ids.shape[1])
            out.append((rows, np.ascontiguousarray(ids[rows, :length], dtype=np.int64)))
        return out

    def run_text(self, ids: np.ndarray, run_options: ort.RunOptions | None = None) -> np.ndarray:
        """One forward of the text tower: ``(B, L) int64`` -> unnormalized ``(B, D) float32``."""
        return run_one(self.text, TEXT_INPUT, ids, run_options)

    def embed_ids(self, ids: np.ndarray, batch_size: int = TEXT_BATCH_SIZE) -> np.ndarray:
        """``(N, 248) int64`` ids -> unnormalized ``(N, D) float32``, batched as :meth:`text_batches` says."""
        out = np.empty((len(ids), self.manifest.embed_dim), dtype=np.float32)
        for rows, batch in self.text_batches(ids, batch_size):
            out[rows] = self.run_text(batch)
        return out

    def encode_images(self, images: ImageInput | Sequence[ImageInput], batch_size: int = BATCH_SIZE) -> np.ndarray:
        """Images -> L2-normalized ``(N, D) float32``; one image (not in a list) gives ``(1, D)``.

        An image is a path (``str`` or ``os.PathLike``), its encoded bytes (``bytes``, or a binary file object such
        as ``io.BytesIO``, read from its start), a PIL image, or a decoded ``numpy`` array: ``(H, W, 3) uint8`` RGB
        or ``(H, W) uint8`` grayscale. A bad image raises :class:`.ImageError` with the CLI's reason code.

        >>> model.encode_images("cat.jpg").shape                # doctest: +SKIP
        (1, 768)
        """
        return l2_normalize(self.embed_pixels(self.preprocess(images), batch_size))

    def encode_texts(self, texts: str | Sequence[str], batch_size: int = TEXT_BATCH_SIZE) -> np.ndarray:
        """Texts -> L2-normalized ``(N, D) float32`` (LongCLIP tokenization, truncated at 248 tokens); one ``str``
        gives ``(1, D)``. A null, non-string, empty or whitespace-only text raises :class:`.TextError` with the
        CLI's reason code (``empty_text``...), never a score."""
        return l2_normalize(self.embed_ids(self.tokenizer(checked_texts(texts)), batch_size))

    def score_items(self, images: Sequence[object], texts: Sequence[object],
                    image_root: str | os.PathLike[str] | None = None, batch_size: int = BATCH_SIZE,
                    max_pixels: int = MAX_PIXELS) -> ItemScores:
        """Score ``images[i]`` against ``texts[i]`` under the row contract: an item that cannot be scored costs
        only itself. Returns :class:`.rows.ItemScores`: per item the score (``NaN`` when not scored), the reason
        ``longclip-run`` writes (``"<code>: <detail>"``, ``""`` when scored) and whether the text was truncated.

        Images are paths (relative ones resolve against ``image_root``, default the current folder) or an image
        file's ``bytes``; texts are strings. Scores are bit for bit those ``longclip-run`` writes for the same
        pairs (the same pipeline scores them). :meth:`score` is the strict form: it raises on the first bad item.

        >>> out = model.score_items(["cat.jpg", "missing.jpg"], ["a cat", "a dog"])   # doctest: +SKIP
        >>> out.scores, out.errors                                                      # doctest: +SKIP
        (array([0.62, nan], dtype=float32), ['', "missing_file: image not found: 'missing.jpg'"])
        """
        from ..engines.chunk import score_chunk  # the engines import this module (pyproject: ignore_imports)

        if isinstance(images, (str, bytes)) or isinstance(texts, str):
            raise TypeError("score_items takes a list of images and a list of texts, not one "
                            f"{type(images if isinstance(images, (str, bytes)) else texts).__name__}: wrap it "
                            "in a list")
        if len(images) != len(texts):
            raise ValueError(f"score_items needs as many images as texts, got {len(images)} and {len(texts)}")
        root = Path(image_root) if image_root is not None else None
        return score_chunk(self, list(images), list(texts), root, batch_size, max_pixels)

    def score(self, images: ImageInput | Sequence[ImageInput], texts: str | Sequence[str]) -> np.ndarray:
        """Row-wise ``(cos + 1) / 2`` of ``images[i]`` and ``texts[i]`` -> ``(N,) float32`` in ``[0, 1]``.

        One image and one ``str`` are one pair: ``(1,)``, as ``encode_*`` give ``(1, D)`` for one item.

        >>> model.score("cat.jpg", "a photo of a cat")          # doctest: +SKIP
        array([0.62], dtype=float32)
        """
        images, texts = one_or_many(images), checked_texts(texts)
        if len(images) != len(texts):
            raise ValueError(f"score needs as many images as texts, got {len(images)} and {len(texts)}: for "
                             "every image against every text use similarity()")
        return score_rows(self.encode_images(images), self.encode_texts(texts))

    def similarity(self, images: ImageInput | Sequence[ImageInput], texts: str | Sequence[str]) -> np.ndarray:
        """Every image against every text: ``(N, M) float32`` of ``(cos + 1) / 2`` (retrieval, dedup); cell
        ``[i, j]`` is bit for bit ``score([images[i]], [texts[j]])[0]``.

        >>> model.similarity(["cat.jpg", "dog.jpg"], ["a cat", "a dog", "a car"]).shape   # doctest: +SKIP
        (2, 3)
        """
        return score_matrix(self.encode_images(images), self.encode_texts(texts))
