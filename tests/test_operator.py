import logging

import numpy as np
import pandas as pd
import pytest

from conftest import GOLDENS
from longclip.runtime import ImageLongCLIPEvaluator, InputError, LongCLIP

IMG = GOLDENS / "images"


class MemoryStorage:
    """The two calls of DataFlow's storage that the operator uses, over an in-memory frame."""

    def __init__(self, frame: pd.DataFrame):
        self.frame, self.written = frame, []

    def read(self, output_type: str) -> pd.DataFrame:
        assert output_type == "dataframe"
        return self.frame

    def write(self, data: pd.DataFrame) -> str:
        self.written.append(data)
        return "memory"


@pytest.fixture()
def frame(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    rows = [
        (str(IMG / "rgb_333x517.png"), "a photo of a cat", "keep-1"),
        (str(IMG / "small_41x97.jpg"), "a long caption " * 50, "keep-2"),
        (str(IMG / "rgb_333x517.png"), "a photo of a cat", "duplicate of row 0"),
        (str(tmp_path / "missing.png"), "a cat", "missing image"),
        (str(tmp_path / "notes.txt"), "a cat", "not an image"),
        (str(tmp_path), "a cat", "a directory"),
        (None, "a cat", "null path"),
        (str(IMG / "rgba_61x45.png"), None, "null text"),
        (str(IMG / "rgba_61x45.png"), "   ", "blank text"),
        (str(IMG / "rgba_61x45.png"), "", "empty text"),
    ]
    return pd.DataFrame(rows, columns=["image_path", "text", "note"], index=[10 * i + 7 for i in range(len(rows))])


def test_run_scores_rows_and_explains_failures(tiny_model_dir, frame):
    storage = MemoryStorage(frame)
    assert ImageLongCLIPEvaluator(str(tiny_model_dir)).run(storage) == ["longclip_score"]
    (out,) = storage.written
    assert list(out.index) == list(frame.index) and list(out.columns) == ["image_path", "text", "note",
                                                                          "longclip_score", "longclip_score_error"]
    pd.testing.assert_frame_equal(out[frame.columns], frame)
    scores, errors = out["longclip_score"].to_numpy(), out["longclip_score_error"].tolist()
    assert np.isfinite(scores[:3]).all() and (errors[:3] == ["", "", ""])
    assert scores[0] == scores[2]
    assert np.isnan(scores[3:]).all()
    codes = ["missing_file", "not_an_image", "directory", "null_path", "null_text", "empty_text", "empty_text"]
    assert [e.split(":")[0] for e in errors[3:]] == codes
    model = LongCLIP(tiny_model_dir)
    expected = model.score([frame.image_path.iloc[0], frame.image_path.iloc[1]], list(frame.text.iloc[:2]))
    np.testing.assert_allclose(scores[:2], expected, rtol=1e-6)


def test_custom_keys_and_unknown_column(tiny_model_dir, frame):
    renamed = frame.rename(columns={"image_path": "img", "text": "caption"})
    storage = MemoryStorage(renamed)
    evaluator = ImageLongCLIPEvaluator(str(tiny_model_dir), device="cpu")
    assert evaluator.run(storage, "img", "caption", "s") == ["s"]
    assert {"s", "s_error"} <= set(storage.written[0].columns)
    with pytest.raises(InputError, match=r"column 'image_path' not in the input; columns are \['img', 'caption'"):
        evaluator.run(MemoryStorage(renamed))


def test_score_columns_already_in_the_frame_are_refused_unless_asked(tiny_model_dir, frame):
    evaluator = ImageLongCLIPEvaluator(str(tiny_model_dir), device="cpu")
    taken = frame.assign(longclip_score_error="kept")
    storage = MemoryStorage(taken)
    with pytest.raises(InputError, match=r"column 'longclip_score_error' is already in the input.*"
                                         r"ImageLongCLIPEvaluator\(\.\.\., overwrite_columns=True\)"):
        evaluator.run(storage)
    assert storage.written == []
    with pytest.raises(InputError, match=r"column 'caption' not in the input.*pass input_text_key"):
        evaluator.run(MemoryStorage(frame), input_text_key="caption")
    evaluator = ImageLongCLIPEvaluator(str(tiny_model_dir), device="cpu", overwrite_columns=True)
    assert evaluator.run(storage) == ["longclip_score"]
    assert storage.written[0]["longclip_score_error"].iloc[0] == ""


def test_embeddings_dir_keeps_and_reuses_embeddings(tiny_model_dir, frame, tmp_path, monkeypatch):
    evaluator = ImageLongCLIPEvaluator(str(tiny_model_dir), device="cpu", embeddings_dir=tmp_path / "emb")
    first = MemoryStorage(frame)
    evaluator.run(first)
    stored = pd.read_parquet(tmp_path / "emb" / "images")
    assert len(stored) == 3  # the distinct images that decode (rgb, small, rgba: its text failed, it is kept)
    encoded = []
    real = evaluator.model.run_vision
    monkeypatch.setattr(evaluator.model, "run_vision", lambda batch, *rest: encoded.append(len(batch)) or
                        real(batch, *rest))
    again = MemoryStorage(frame)
    evaluator.run(again)
    assert encoded == []  # every image came from the folder
    np.testing.assert_array_equal(again.written[0]["longclip_score"].to_numpy(),
                                  first.written[0]["longclip_score"].to_numpy())


def test_run_takes_only_the_storage_and_its_keys():
    """DataFlow's compile() warns about any run() argument other than storage, input_* and output_* strings."""
    import inspect

    from longclip.runtime.cli.operator import ImageLongCLIPEvaluator as Plain

    params = list(inspect.signature(Plain.run).parameters)
    assert params == ["self", "storage", "input_image_key", "input_text_key", "output_key"]


def test_a_run_logs_its_summary_and_shows_progress_when_asked(tiny_model_dir, frame, caplog, capsys):
    evaluator = ImageLongCLIPEvaluator(str(tiny_model_dir), device="cpu", progress=True)
    with caplog.at_level(logging.INFO, logger="longclip"):
        evaluator.run(MemoryStorage(frame))
    (summary,) = [r for r in caplog.records if "rows: scored" in r.getMessage()]
    assert summary.levelno == logging.WARNING
    assert summary.getMessage() == ("ImageLongCLIPEvaluator: 10 rows: scored 3, failed 7 (empty_text 2, "
                                    "missing_file 1, not_an_image 1, directory 1, null_path 1, null_text 1); each "
                                    "reason is in the error column")
    assert "10/10" in capsys.readouterr().err


def test_integer_column_names_are_columns_like_any_other(tiny_model_dir, frame):
    """A frame whose columns are ints (``pd.DataFrame(rows)``) is scored with ``input_image_key=0``: the same scores
    as the same frame with string names."""
    evaluator = ImageLongCLIPEvaluator(str(tiny_model_dir), device="cpu")
    named = MemoryStorage(frame)
    evaluator.run(named)
    numbered = MemoryStorage(frame.set_axis([0, 1, 2], axis=1))
    assert evaluator.run(numbered, input_image_key=0, input_text_key=1) == ["longclip_score"]
    (out,) = numbered.written
    assert list(out.columns) == [0, 1, 2, "longclip_score", "longclip_score_error"]
    np.testing.assert_array_equal(out["longclip_score"].to_numpy(), named.written[0]["longclip_score"].to_numpy())
    assert out["longclip_score_error"].tolist() == named.written[0]["longclip_score_error"].tolist()
    floats = MemoryStorage(frame.set_axis([0.5, "text", 7], axis=1))  # mixed labels: a float and an int too
    evaluator.run(floats, input_image_key=0.5, input_text_key="text")
    assert floats.written[0]["longclip_score"].tolist()[:1] == named.written[0]["longclip_score"].tolist()[:1]


@pytest.mark.parametrize(("image_key", "columns", "message"), [
    (0, ["image_path", "text", "note"], r"column 0 not in the input; columns are \['image_path', 'text', 'note'\]"),
    ("0", [0, 1, 2], r"column '0' not in the input; columns are \['0', '1', '2'\]; did you mean 0\? "
                     r"\(pass input_image_key 0 \(a int, not '0'\)\)"),
    (True, [1, 0, 2], r"input_image_key=True \(bool\) is not a column name"),  # True == 1: never column 1
    (["image_path"], ["image_path", "text", "note"], r"input_image_key=\['image_path'\] \(list\) is not a column"),
    (None, ["image_path", "text", "note"], r"column None not in the input"),
])
def test_a_key_that_names_no_column_is_one_clear_error(tiny_model_dir, frame, image_key, columns, message):
    evaluator = ImageLongCLIPEvaluator(str(tiny_model_dir), device="cpu")
    storage = MemoryStorage(frame.set_axis(columns, axis=1))
    with pytest.raises(InputError, match=message):
        evaluator.run(storage, input_image_key=image_key, input_text_key=columns[1])
    assert storage.written == []


@pytest.mark.parametrize("output_key", [0, "", None, ("a",)])
def test_an_output_key_that_is_not_a_name_is_refused(tiny_model_dir, frame, output_key):
    storage = MemoryStorage(frame)
    with pytest.raises(InputError, match=r"output_key=.*: pass a non-empty string"):
        ImageLongCLIPEvaluator(str(tiny_model_dir), device="cpu").run(storage, output_key=output_key)
    assert storage.written == []
