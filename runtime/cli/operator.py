"""``ImageLongCLIPEvaluator``: the spec'd DataFlow operator, torch-free, over an exported model folder.

This is the plain class; ``longclip.runtime.ImageLongCLIPEvaluator`` is the DataFlow operator built on it
(:mod:`.dataflow_operator`) when DataFlow is installed, else this class.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import Counter
from typing import TYPE_CHECKING, Any, Protocol

import pandas as pd

from ..contract.errors import InputError, error_code
from ..contract.rows import IMAGE_KEY, OUTPUT_KEY, TEXT_KEY, check_columns, check_output_columns, error_key
from ..engines.assemble import load_model, open_store, split_cpus
from ..engines.chunk import score_frame

if TYPE_CHECKING:
    from ..embeddings.store import EmbeddingStore

log = logging.getLogger(__name__)


class Storage(Protocol):
    """What the operator needs of DataFlow's storage (``FileStorage`` and friends)."""

    def read(self, output_type: str) -> Any: ...

    def write(self, data: Any) -> Any: ...


DEFAULT_MODEL = "BeichenZhang/LongCLIP-L-336px"


class ImageLongCLIPEvaluator:
    """Score ``image_path`` + ``text`` rows with LongCLIP: ``(cos + 1) / 2`` in ``[0, 1]``.

    ``model_name``: any form ``LongCLIP`` takes (an exported model folder, a checkpoint file or a folder holding one,
    exported once into a cache, or a Hugging Face repo id found in the local cache or downloaded). ``device``: ``None`` (best provider
    that initializes), ``"cpu"``, ``"cuda"`` or ``"tensorrt"``. ``overwrite_columns``: replace score and reason
    columns the frame already has (else it is refused). ``progress``: a progress bar on stderr (``None``: when
    stderr is a terminal). Each run logs a summary (rows, scored, failed by reason; a warning when rows failed).

    As DataFlow's operators do, settings are ``__init__`` arguments and ``run`` takes only the storage and its
    ``input_*`` / ``output_*`` keys, so ``PipelineABC.compile()`` finds no unexpected key.

    >>> evaluator = ImageLongCLIPEvaluator("models/tiny")            # doctest: +SKIP
    >>> evaluator.run(storage.step())                                # doctest: +SKIP
    ['longclip_score']
    """

    def __init__(self, model_name: str | os.PathLike[str] = DEFAULT_MODEL, device: str | None = None,
                 embeddings_dir: str | os.PathLike[str] | None = None, overwrite_columns: bool = False,
                 progress: bool | None = None):
        self.overwrite_columns, self.progress = overwrite_columns, progress
        self.split = split_cpus(device)  # decode workers start for each run, beside this model
        self.model = load_model(model_name, device, self.split)
        self.embeddings_dir = embeddings_dir
        if embeddings_dir is not None:  # another model's folder is refused now, not at the first run
            self._store().close()
        log.info("ImageLongCLIPEvaluator: %s on %s", self.model.manifest.variant, self.model.provider)

    def run(
        self,
        storage: Storage,
        input_image_key: str = IMAGE_KEY,
        input_text_key: str = TEXT_KEY,
        output_key: str = OUTPUT_KEY,
    ) -> list[str]:
        """Read ``storage.read("dataframe")``, add ``output_key`` (and ``<output_key>_error``), write once.

        The frame is checked before any row is scored: both columns present (column names need not be strings:
        ``input_image_key=0`` names a column ``0``), and the score and reason columns not already there unless
        the operator was made with ``overwrite_columns=True``; a key that names no column is an :class:`InputError` naming it and the columns.
        """
        if not isinstance(output_key, str) or not output_key:  # it names two new columns: key and key + "_error"
            raise InputError(f"output_key={output_key!r} ({type(output_key).__name__}): pass a non-empty string, the "
                             "name of the score column to add")
        frame: pd.DataFrame = storage.read("dataframe")
        check_columns(list(frame.columns), [(input_image_key, "input_image_key"), (input_text_key, "input_text_key")])
        check_output_columns(list(frame.columns), output_key, self.overwrite_columns,
                             option="ImageLongCLIPEvaluator(..., overwrite_columns=True)")
        with self._store() if self.embeddings_dir is not None else contextlib.nullcontext() as store:
            scored = score_frame(self.model, frame, input_image_key, input_text_key, output_key, image_root=None,
                                 decode_workers=self.split.decode_workers, store=store, progress=self.progress)
        _log_summary(scored[error_key(output_key)])
        storage.write(scored)
        return [output_key]

    def _store(self) -> EmbeddingStore:
        return open_store(self.embeddings_dir, self.model.manifest)  # type: ignore[arg-type]


def _log_summary(reasons: pd.Series) -> None:
    """One line: rows, scored, failed by reason code (a warning when any failed, so it shows by default)."""
    codes = Counter(error_code(reason) for reason in reasons)
    scored = codes.pop("", 0)
    failed = ", ".join(f"{code} {n}" for code, n in codes.most_common())
    if codes:
        log.warning("ImageLongCLIPEvaluator: %d rows: scored %d, failed %d (%s); each reason is in the error column",
                    len(reasons), scored, sum(codes.values()), failed)
    else:
        log.info("ImageLongCLIPEvaluator: %d rows: scored %d, failed 0", len(reasons), scored)
