"""A row's score is a function of the row alone, bit for bit: whatever subset, order, batch size, chunk or worker
count it is scored with, through ``LongCLIP``, the operator and ``longclip-run``, in fp32 and int8 (CPU).

Which broken code would still pass? A text run at its batch's longest length (fp32 rows moved by up to 6e-8)
fails the fp32 LongCLIP case, on embeddings (see TEXTS); the score-only fp32 cases (operator, CLI, Ray) would
not see it with these pairs. Per-batch int8
activation scales fail every int8 case (all rows moved by up to 8e-3)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import GOLDENS, HAS_TORCH
from longclip.runtime import ImageLongCLIPEvaluator, LongCLIP
from longclip.runtime.model.scoring import score_rows

IMG = GOLDENS / "images"
IMAGES = [IMG / n for n in ("rgb_333x517.png", "exact_48x48.png", "rgba_61x45.png", "gray_64x50.png",
                            "small_41x97.jpg", "rgb_wide_301x100.png", "la_30x40.png", "odd_crop_49x224.png")]
# "dog grey river dusk dog" (7 tokens) gets other fp32 bits at its own length than padded to 8 (the tiny model): a
# batch that runs at its longest text moves its embedding whenever "a photo of the red house" (8 tokens) shares its
# batch (its float32 score happens to absorb the change: the LongCLIP case asserts on embeddings too)
TEXTS = ["a cat", "a photo of a dog", "dog grey river dusk dog", "a long caption " * 8, "stripes and dots " * 8,
         "a house by the river under grey clouds " * 4, "word " * 300, "a photo of the red house"]
PAIRS = list(zip(IMAGES, TEXTS))
SCRIPT = Path(sys.executable).with_name("longclip-run")
EXAMPLES = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def int8_model_dir(request, tmp_path_factory) -> Path:
    if not HAS_TORCH:  # before the checkpoint fixture, which needs torch too (the torch-free run skips these)
        pytest.skip("needs the export extra (torch)")
    from longclip.export import export_model

    out = tmp_path_factory.mktemp("int8") / "model"
    export_model(request.getfixturevalue("tiny_checkpoint"), out, precision="int8")
    return out


@pytest.fixture(scope="module", params=["fp32", "int8"])
def model(request, tiny_model_dir) -> LongCLIP:
    folder = tiny_model_dir if request.param == "fp32" else request.getfixturevalue("int8_model_dir")
    return LongCLIP(folder, device="cpu")


@pytest.fixture(scope="module")
def alone(model) -> np.ndarray:
    """Each pair's score scored by itself: the reference every other way must equal bit for bit."""
    return np.concatenate([model.score([image], [text]) for image, text in PAIRS])


@pytest.fixture(scope="module")
def alone_embeds(model) -> tuple[np.ndarray, np.ndarray]:
    return (np.concatenate([model.encode_images([image]) for image, _ in PAIRS]),
            np.concatenate([model.encode_texts([text]) for _, text in PAIRS]))


subsets = st.lists(st.integers(0, len(PAIRS) - 1), min_size=1, max_size=12)  # repeats too: a pair twice


def test_the_pairs_share_buckets_at_different_lengths(model):
    """The fixed pairs put texts of different lengths in one bucket: padding would show if a row depended on it."""
    from longclip.runtime.decode.tokenizer import eot_positions
    from longclip.runtime.model.longclip import bucket_length

    lengths = eot_positions(model.tokenizer(TEXTS)) + 1
    buckets = [bucket_length(int(n)) for n in lengths]
    assert len(set(buckets)) < len(set(lengths.tolist()))


@EXAMPLES
@given(rows=subsets, batch_size=st.integers(1, 9))
def test_longclip_score_and_encode_are_the_pairs_alone(model, alone, alone_embeds, rows, batch_size):
    images, texts = [PAIRS[r][0] for r in rows], [PAIRS[r][1] for r in rows]
    np.testing.assert_array_equal(model.score(images, texts), alone[rows])
    img, txt = model.encode_images(images, batch_size), model.encode_texts(texts, batch_size)
    np.testing.assert_array_equal(img, alone_embeds[0][rows])
    np.testing.assert_array_equal(txt, alone_embeds[1][rows])
    np.testing.assert_array_equal(score_rows(img, txt), alone[rows])


class _Memory:
    def __init__(self, frame: pd.DataFrame):
        self.frame, self.written = frame, []

    def read(self, output_type: str) -> pd.DataFrame:
        return self.frame

    def write(self, data: pd.DataFrame) -> str:
        self.written.append(data)
        return "memory"


@pytest.fixture(scope="module")
def operator(model) -> ImageLongCLIPEvaluator:
    return ImageLongCLIPEvaluator(str(model.manifest.root), device="cpu")


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=subsets)
def test_operator_scores_are_the_pairs_alone(operator, alone, rows):
    frame = pd.DataFrame({"image_path": [str(PAIRS[r][0]) for r in rows], "text": [PAIRS[r][1] for r in rows]})
    storage = _Memory(frame)
    operator.run(storage)
    np.testing.assert_array_equal(storage.written[0]["longclip_score"].to_numpy(dtype=np.float32), alone[rows])


def _run(tmp_path: Path, model_dir: Path, name: str, rows: list[int], *args: object) -> np.ndarray:
    table = tmp_path / f"{name}.jsonl"
    table.write_text("".join(json.dumps({"image_path": str(PAIRS[r][0]), "text": PAIRS[r][1]}) + "\n" for r in rows))
    out = tmp_path / f"{name}.out.jsonl"
    proc = subprocess.run([str(SCRIPT), str(table), "-m", str(model_dir), "-o", str(out), "--device", "cpu", "-q",
                           *map(str, args)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return pd.read_json(out, lines=True)["longclip_score"].to_numpy(dtype=np.float32)


def test_longclip_run_scores_are_the_pairs_alone(tmp_path, model, alone):
    """A handful of fixed runs (each a process): the whole set, a reversed subset with a pair twice, odd batch
    sizes, chunks of 2 and 3 rows, no decode workers and two, and a resumed run."""
    folder = model.manifest.root
    everything = list(range(len(PAIRS)))
    np.testing.assert_array_equal(_run(tmp_path, folder, "all", everything, "--batch-size", 3), alone)
    some = [6, 2, 2, 0, 5, 3]
    np.testing.assert_array_equal(
        _run(tmp_path, folder, "some", some, "--batch-size", 1, "--chunk-rows", 2, "--decode-workers", 0), alone[some])
    np.testing.assert_array_equal(
        _run(tmp_path, folder, "chunks", everything[::-1], "--batch-size", 5, "--chunk-rows", 3, "--decode-workers",
             2), alone[::-1])
    np.testing.assert_array_equal(
        _run(tmp_path, folder, "chunks", everything[::-1], "--batch-size", 5, "--chunk-rows", 3, "--resume"),
        alone[::-1])



def test_ray_engine_scores_are_the_pairs_alone(tmp_path, model, alone):
    """The Ray engine (a local cluster, batches of 2): the same bits as each pair alone."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        pytest.skip('needs the ray extra: pip install "longclip[ray]"')
    import ray

    from longclip.runtime.engines.local import RunOptions
    from longclip.runtime.engines.ray import RayOptions, run_ray

    rows = [3, 1, 4, 1, 5, 0, 2, 6, 7]
    table = tmp_path / "in.jsonl"
    table.write_text("".join(json.dumps({"image_path": str(PAIRS[r][0]), "text": PAIRS[r][1]}) + "\n" for r in rows))
    ray.init(num_cpus=2, object_store_memory=256 * 2**20, include_dashboard=False, logging_level="ERROR")
    try:
        run_ray(model.manifest.root, str(table), str(tmp_path / "out.jsonl"), RunOptions(batch_size=2), "cpu",
                RayOptions())
    finally:
        ray.shutdown()
    got = pd.read_json(tmp_path / "out.jsonl", lines=True)["longclip_score"].to_numpy(dtype=np.float32)
    np.testing.assert_array_equal(got, alone[rows])
