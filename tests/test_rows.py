"""The row contract: column checks that suggest the right option, the null test, paths, texts, reasons."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from longclip.runtime.contract import errors
from longclip.runtime.contract.errors import ImageError, InputError, TextError
from longclip.runtime.contract.rows import (
    cell_key,
    check_columns,
    check_output_columns,
    check_text,
    error_key,
    is_null,
    no_rows,
    resolve_image_path,
    row_reason,
    with_scores,
)


def test_check_columns_names_the_column_the_columns_and_the_option():
    with pytest.raises(InputError, match=r"column 'caption' not in the input; columns are \['img', 'text'\]; "
                                         r"pass --text-key naming one"):
        check_columns(["img", "text"], {"img": "--image-key", "caption": "--text-key"})
    with pytest.raises(InputError, match=r"did you mean 'image_paths'\? \(pass --image-key image_paths\)"):
        check_columns(["image_paths", "text"], {"image_path": "--image-key"})
    check_columns(["a", "b"], {"a": "x", "b": "y"})


def test_output_columns_are_never_replaced_without_asking():
    for key in ("longclip_score", "longclip_score_error"):
        with pytest.raises(InputError, match=f"column '{key}' is already in the input.*--overwrite-columns"):
            check_output_columns(["image_path", key], "longclip_score")
    check_output_columns(["image_path", "longclip_score"], "longclip_score", overwrite=True)
    with pytest.raises(InputError, match="overwrite_columns=True"):
        check_output_columns(["s"], "s", option="overwrite_columns=True")


def test_nulls_and_keys():
    assert [is_null(v) for v in (None, np.nan, pd.NA, pd.NaT, "", "nan", 0, [])] == [True] * 4 + [False] * 4
    assert cell_key(None) == cell_key(np.nan) == cell_key(pd.NA)
    assert cell_key(["a"]) == cell_key(["a"]) != cell_key(("a",))


@pytest.mark.parametrize(("value", "code"), [(None, errors.NULL_PATH), (np.nan, errors.NULL_PATH),
                                             ("", errors.BAD_PATH), ("  ", errors.BAD_PATH), (7, errors.BAD_PATH),
                                             (["a.jpg"], errors.BAD_PATH)])
def test_unusable_image_cells(value, code):
    with pytest.raises(ImageError) as error:
        resolve_image_path(value, None)
    assert error.value.code == code and str(error.value).startswith(f"{code}: ")


def test_paths_resolve_against_the_root_unless_absolute():
    assert resolve_image_path("a.jpg", Path("/data")) == Path("/data/a.jpg")
    assert resolve_image_path("/x/a.jpg", Path("/data")) == Path("/x/a.jpg")
    assert resolve_image_path("a.jpg", None) == Path("a.jpg")


@pytest.mark.parametrize(("value", "code"), [(None, errors.NULL_TEXT), (3, errors.NOT_TEXT), (b"x", errors.NOT_TEXT),
                                             ("", errors.EMPTY_TEXT), (" \n\t", errors.EMPTY_TEXT)])
def test_unusable_text_cells(value, code):
    with pytest.raises(TextError) as error:
        check_text(value)
    assert error.value.code == code


def test_the_image_reason_comes_first():
    assert row_reason("missing_file: a", "empty_text: b") == "missing_file: a"
    assert row_reason("", "empty_text: b") == "empty_text: b"
    assert row_reason("", "") == ""


def test_output_columns():
    frame = pd.DataFrame({"a": [1, 2]}, index=[5, 9])
    out = with_scores(frame, np.array([0.5, np.nan], np.float32), ["", "x: y"], "s")
    assert list(out.columns) == ["a", "s", error_key("s")] and list(out.index) == [5, 9]
    assert out["s"].dtype == np.float64 and np.isnan(out["s"].iloc[1]) and out["s_error"].tolist() == ["", "x: y"]
    assert list(frame.columns) == ["a"]  # the input frame is left as it was
    assert list(no_rows(["a", "b"], "s").columns) == ["a", "b", "s", "s_error"]
