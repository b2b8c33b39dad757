"""``ImageLongCLIPEvaluator`` as a DataFlow operator: an ``OperatorABC``, registered in ``OPERATOR_REGISTRY``.

Imported only when DataFlow (PyPI ``open-dataflow``) is installed and ``ImageLongCLIPEvaluator`` is asked for
from ``longclip.runtime``; without DataFlow nothing of it is imported. It imports :mod:`.operator`, never the
other way round.
"""

from __future__ import annotations

import logging
import os

from dataflow.core import OperatorABC
from dataflow.utils.registry import OPERATOR_REGISTRY

from . import operator

log = logging.getLogger(__name__)


class ImageLongCLIPEvaluator(operator.ImageLongCLIPEvaluator, OperatorABC):
    __doc__ = operator.ImageLongCLIPEvaluator.__doc__

    def __init__(self, model_name: str | os.PathLike[str] = operator.DEFAULT_MODEL, device: str | None = None,
                 embeddings_dir: str | os.PathLike[str] | None = None):
        OperatorABC.__init__(self)
        operator.ImageLongCLIPEvaluator.__init__(self, model_name, device, embeddings_dir)

    @staticmethod
    def get_desc(lang: str = "zh") -> str:
        if lang == "zh":
            return "使用 LongCLIP（ONNX Runtime，无需 PyTorch）计算图像与长文本的对齐分数 (cos+1)/2，范围 [0, 1]。"
        return "Image / long-text alignment with LongCLIP on ONNX Runtime (no PyTorch): (cos + 1) / 2 in [0, 1]."


OPERATOR_REGISTRY.register()(ImageLongCLIPEvaluator)
if getattr(OPERATOR_REGISTRY, "_obj_map", {}).get("ImageLongCLIPEvaluator") is not ImageLongCLIPEvaluator:
    # DataFlow's registry keeps the first class of a name and drops later ones silently: say so
    log.warning("another ImageLongCLIPEvaluator is already registered in DataFlow; OPERATOR_REGISTRY keeps that one")
