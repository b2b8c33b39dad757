"""Scoring end to end on whatever onnxruntime, numpy, pandas, pyarrow and Pillow are installed: .ci/run runs it in
the venv of the oldest versions the project admits (.ci/floor.txt), where the rest of the suite does not run."""

from __future__ import annotations

import numpy as np
import pandas as pd

from conftest import GOLDENS
from longclip.runtime import LongCLIP
from longclip.runtime.engines.local import run_file
from longclip.runtime.engines.options import RunOptions
from longclip.runtime.inputs.tables import read_table

IMAGES = ["rgb_333x517.png", "small_41x97.jpg", "animated_50x70.gif", "cmyk_80x60.jpg"]
TEXTS = ["a photo", "a long caption " * 30, "x", "two dogs on a red sofa"]


def test_scores_from_a_parquet_of_paths_and_of_bytes_agree_with_the_model(tiny_model_dir, tmp_path):
    model = LongCLIP(tiny_model_dir, device="cpu")
    paths = [GOLDENS / "images" / name for name in IMAGES]
    want = model.score(paths, TEXTS)
    assert want.shape == (4,) and np.isfinite(want).all() and ((want >= 0) & (want <= 1)).all()
    frame = pd.DataFrame({"image_path": [str(p) for p in paths] + ["missing.png"], "text": TEXTS + ["t"]})
    frame.to_parquet(tmp_path / "paths.parquet")
    frame.assign(image_path=[p.read_bytes() for p in paths] + [b"%!PS-Adobe-3.0"]).to_parquet(tmp_path / "b.parquet")
    for name in ("paths", "b"):
        run_file(model, tmp_path / f"{name}.parquet", tmp_path / f"{name}.out.parquet", RunOptions(), progress=False)
        out = read_table(tmp_path / f"{name}.out.parquet")
        np.testing.assert_array_equal(out["longclip_score"].to_numpy()[:4], want)  # a row's score is the row's alone
        assert pd.isna(out["longclip_score"].iloc[4])
        assert out["longclip_score_error"].tolist()[:4] == [""] * 4
    assert read_table(tmp_path / "b.out.parquet")["longclip_score_error"].iloc[4].startswith(
        "not_an_image: '<bytes>' is EPS")
