"""``ImageLongCLIPEvaluator``: the spec'd DataFlow operator, torch-free, over an exported model folder.

This is the plain class; ``longclip.runtime.ImageLongCLIPEvaluator`` is the DataFlow operator built on it
(:mod:`.dataflow_operator`) when DataFlow is installed, else this class.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import TYPE_CHECKING, Any, Protocol

import pandas as pd

from .cpus import plan_cpus
from .engines.chunk import score_frame
from .model import LongCLIP
from .rows import IMAGE_KEY, OUTPUT_KEY, TEXT_KEY, check_columns, check_output_columns
from .session import wants_gpu

if TYPE_CHECKING:
    from .embeddings import EmbeddingStore

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
    that initializes), ``"cpu"``, ``"cuda"`` or ``"tensorrt"``.

    >>> evaluator = ImageLongCLIPEvaluator("models/tiny")            # doctest: +SKIP
    >>> evaluator.run(storage.step())                                # doctest: +SKIP
    ['longclip_score']
    """

    def __init__(self, model_name: str | os.PathLike[str] = DEFAULT_MODEL, device: str | None = None,
                 embeddings_dir: str | os.PathLike[str] | None = None):
        self.split = plan_cpus(wants_gpu(device))  # decode workers start for each run, beside this model
        self.model = LongCLIP(model_name, device=device, threads=self.split.model_threads, spin=self.split.spin)
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
        overwrite_columns: bool = False,
    ) -> list[str]:
        """Read ``storage.read("dataframe")``, add ``output_key`` (and ``<output_key>_error``), write once.

        The frame is checked before any row is scored: both columns present, and the score and reason columns not
        already there unless ``overwrite_columns``.
        """
        frame: pd.DataFrame = storage.read("dataframe")
        check_columns(list(frame.columns), {input_image_key: "input_image_key", input_text_key: "input_text_key"})
        check_output_columns(list(frame.columns), output_key, overwrite_columns, option="overwrite_columns=True")
        with self._store() if self.embeddings_dir is not None else contextlib.nullcontext() as store:
            scored = score_frame(self.model, frame, input_image_key, input_text_key, output_key, image_root=None,
                                 decode_workers=self.split.decode_workers, store=store)
        storage.write(scored)
        return [output_key]

    def _store(self) -> EmbeddingStore:
        from .embeddings import EmbeddingStore, StoreIdentity

        return EmbeddingStore(self.embeddings_dir, StoreIdentity.of(self.model.manifest))  # type: ignore[arg-type]
