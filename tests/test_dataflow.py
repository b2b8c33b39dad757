"""The spec's example with DataFlow's real FileStorage and a compiled DataFlow pipeline, torch-free.

Runs in an environment with open-dataflow and its pins (numpy 1.26, pandas 2.3.3, pyarrow 20) and no torch;
``.ci/run`` builds it and sets LONGCLIP_TEST_MODEL_DIR / LONGCLIP_TEST_CHECKPOINT (made with the export extra).
"""

import importlib.util
import json
import logging
import math
import os
import sys
from pathlib import Path

import pytest

from conftest import GOLDENS

try:
    from dataflow.core import OperatorABC
except ImportError:
    OperatorABC = None

pytestmark = [
    pytest.mark.skipif(OperatorABC is None, reason="needs open-dataflow (.ci/run makes a venv for it)"),
    pytest.mark.skipif(not os.environ.get("LONGCLIP_TEST_MODEL_DIR"), reason="set LONGCLIP_TEST_MODEL_DIR"),
]


@pytest.fixture()
def workspace(tmp_path, monkeypatch):
    rows = [{"image_path": str(GOLDENS / "images" / "small_41x97.jpg"),
             "text": "The image shows a man and a woman in what appears to be a car."},
            {"image_path": str(GOLDENS / "images" / "rgb_333x517.png"), "text": "Stripes. " * 100},
            {"image_path": str(tmp_path / "missing.png"), "text": "a cat"}]
    (tmp_path / "test_image_eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _check_output(path: Path) -> None:
    out = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(out) == 3
    assert all(0.0 <= r["longclip_score"] <= 1.0 for r in out[:2]) and out[0]["longclip_score_error"] == ""
    assert out[2]["longclip_score"] is None or math.isnan(out[2]["longclip_score"])
    assert out[2]["longclip_score_error"].startswith("missing_file")


def test_is_a_registered_dataflow_operator():
    from dataflow.utils.registry import OPERATOR_REGISTRY

    from longclip.runtime import ImageLongCLIPEvaluator

    assert issubclass(ImageLongCLIPEvaluator, OperatorABC)
    assert OPERATOR_REGISTRY.get("ImageLongCLIPEvaluator") is ImageLongCLIPEvaluator
    assert "torch" not in sys.modules
    assert ImageLongCLIPEvaluator.get_desc("en").startswith("Image / long-text")


def test_spec_example_with_file_storage(workspace):
    from dataflow.utils.storage import FileStorage

    from longclip.runtime import ImageLongCLIPEvaluator  # the only line changed from the spec's example

    storage = FileStorage(first_entry_file_name="./test_image_eval.jsonl", cache_path="./cache_local",
                          file_name_prefix="longclip_eval", cache_type="jsonl")
    evaluator = ImageLongCLIPEvaluator(model_name=os.environ["LONGCLIP_TEST_MODEL_DIR"], device=None)
    cols = evaluator.run(storage=storage.step(), input_image_key="image_path", input_text_key="text",
                         output_key="longclip_score")
    assert cols == ["longclip_score"]
    _check_output(workspace / "cache_local" / "longclip_eval_step1.jsonl")
    assert "torch" not in sys.modules


def test_compiled_pipeline(workspace, capsys):
    from dataflow.pipeline import PipelineABC
    from dataflow.utils.storage import FileStorage

    from longclip.runtime import ImageLongCLIPEvaluator

    class LongCLIPPipeline(PipelineABC):
        def __init__(self):
            super().__init__()
            self.storage = FileStorage(first_entry_file_name="./test_image_eval.jsonl", cache_path="./cache_pipe",
                                       file_name_prefix="step", cache_type="jsonl")
            self.scorer = ImageLongCLIPEvaluator(model_name=os.environ["LONGCLIP_TEST_MODEL_DIR"])

        def forward(self):
            self.scorer.run(storage=self.storage.step(), input_image_key="image_path", input_text_key="text",
                            output_key="longclip_score")

    pipeline = LongCLIPPipeline()
    capsys.readouterr()
    pipeline.compile()
    said = capsys.readouterr()
    assert "Unexpected key" not in said.out + said.err  # run() takes only storage and input_* / output_* keys
    assert not (workspace / "cache_pipe").exists()  # compile records the run, it does not score
    pipeline.forward()
    _check_output(workspace / "cache_pipe" / "step_step1.jsonl")


@pytest.mark.skipif(importlib.util.find_spec("torch") is not None, reason="checks the torch-free message")
def test_checkpoint_without_export_extra_says_what_to_run(tmp_path, monkeypatch, caplog):
    from longclip.runtime import ImageLongCLIPEvaluator, ModelDirError

    checkpoint = os.environ.get("LONGCLIP_TEST_CHECKPOINT")
    if not checkpoint:
        pytest.skip("set LONGCLIP_TEST_CHECKPOINT")
    monkeypatch.setenv("LONGCLIP_CACHE", str(tmp_path))
    caplog.set_level(logging.INFO, logger="longclip")
    with pytest.raises(ModelDirError, match=r"needs the export extra: pip install 'longclip\[export\]'"):
        ImageLongCLIPEvaluator(model_name=checkpoint)
    assert "exporting" not in caplog.text  # nothing announced that will not happen
    assert not (tmp_path / "exports").exists()
