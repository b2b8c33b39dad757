"""The Ray engine against the local one, where to decode images, and what Ray costs per batch.

    python benchmarks/ray_engine.py MODEL_DIR --rows 2000 --workers 2

Cases, one after the other on one machine (images: generated 640x480 JPEGs, a new one per row):

- ``local``: ``run_file`` in this process (ONNX Runtime on every core);
- ``ray engine``: ``run_ray`` with N workers, end to end (column check, shards written and counted);
- ``ray engine + baseline``: the same, drawing the mismatched-pair baseline: each batch's embeddings travel to
  the driver, which pairs them and writes the shards itself;
- where to decode, as bare pipelines ``read -> ... -> to_pandas``: ``decode in actors`` (the engine's ``Scorer``:
  decode, embed and score in one actor) against ``decode stage`` (Ray tasks decode and crop images to uint8
  arrays, actors only normalize, embed and score: the alternative the engine does not take);
- Ray's cost per batch: a pipeline whose actor returns its batch untouched, at two batch counts; the slope is the
  cost of one batch, the intercept the fixed cost of a run (actor start, scheduling);
- the baseline's own work per row at D=768 (L/14), outside the model and Ray: packing, unpacking, pairing.

Every output is checked against the local one (same order, scores within 1e-6). Ray starts once, with
``workers + 1`` CPUs (one for reading and writing). The cases interleave over ``--repeat`` rounds, so a busy spell
on a shared machine hits all of them; the median of each is printed. Rates include each run's actor start and
model loads, not Ray's own start.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from run_scaling import make_inputs  # noqa: E402

from longclip.runtime import LongCLIP  # noqa: E402
from longclip.runtime.contract.constants import MAX_PIXELS  # noqa: E402
from longclip.runtime.contract.errors import RowError  # noqa: E402
from longclip.runtime.contract.rows import cell_key, check_text, resolve_image_path, row_reason, with_scores  # noqa: E402
from longclip.runtime.decode.images import load_image  # noqa: E402
from longclip.runtime.decode.transforms import center_crop, resize, to_normalized_array  # noqa: E402
from longclip.runtime.engines.local import run_file  # noqa: E402
from longclip.runtime.engines.options import RunOptions  # noqa: E402
from longclip.runtime.engines.ray import RayOptions, Scorer, run_ray  # noqa: E402
from longclip.runtime.engines.work import RowEmbeds  # noqa: E402
from longclip.runtime.model.baseline import Baseline  # noqa: E402
from longclip.runtime.model.scoring import l2_normalize, score_rows  # noqa: E402


def decode_stage(batch: pd.DataFrame, root: str, size: int) -> pd.DataFrame:
    """Stage 1 (Ray tasks): each row's image resized and cropped, ``(n, n, 3) uint8``, or its reason."""
    pixels, reasons = [], []
    for value in batch["image_path"]:
        try:
            image = load_image(resolve_image_path(value, Path(root)), MAX_PIXELS)
            pixels.append(np.asarray(center_crop(resize(image, size), size), dtype=np.uint8))
            reasons.append("")
        except RowError as exc:
            pixels.append(np.zeros((size, size, 3), np.uint8))
            reasons.append(str(exc))
    out = batch.copy()
    out["_pixels"], out["_image_error"] = pixels, reasons
    return out


class EmbedActor:
    """Stage 2 (Ray actors): normalize, embed, score; the helper columns are dropped."""

    def __init__(self, model_dir: str):
        self.model = LongCLIP(model_dir, device="cpu", threads=1)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        m = self.model.manifest
        image_errors = batch["_image_error"].tolist()
        good = [i for i, e in enumerate(image_errors) if not e]
        texts = batch["text"].tolist()
        text_embeds, text_errors = self.embed_texts(texts)
        errors = [row_reason(image_errors[i], text_errors.get(cell_key(t), "")) for i, t in enumerate(texts)]
        scores = np.full(len(batch), np.nan, dtype=np.float32)
        rows = [i for i in good if not errors[i]]
        if rows:
            pixels = np.stack([to_normalized_array(batch["_pixels"].iloc[i], m.mean, m.std) for i in rows])
            scores[rows] = score_rows(l2_normalize(self.model.embed_pixels(pixels)),
                                      l2_normalize(np.stack([text_embeds[cell_key(texts[i])] for i in rows])))
        return with_scores(batch.drop(columns=["_pixels", "_image_error"]), scores, errors, "longclip_score")

    def embed_texts(self, values: list[object]) -> tuple[dict, dict]:
        """(cell key -> text embedding, cell key -> reason) for the distinct texts of a batch, each encoded once."""
        texts: dict = {}
        failed: dict = {}
        for value in values:
            key = cell_key(value)
            if key in texts or key in failed:
                continue
            try:
                texts[key] = check_text(value)
            except RowError as exc:
                failed[key] = str(exc)
        if not texts:
            return {}, failed
        ids, _ = self.model.tokenizer.batch(list(texts.values()), self.model.manifest.context_length)
        return dict(zip(texts, self.model.embed_ids(ids, 32))), failed


class Identity:
    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        return batch


def _check(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert got["image_path"].tolist() == want["image_path"].tolist(), "row order differs"
    np.testing.assert_allclose(got["longclip_score"].astype(float), want["longclip_score"].astype(float), rtol=1e-6)


def _ray_dataset(ray, path: Path):
    ds = ray.data.read_json([str(path)])
    ds.context.execution_options.preserve_order = True
    ds.context.enable_progress_bars = False
    return ds


def _cases(ray, args, folder: Path, data: Path, model_dir: str) -> dict:
    """name -> a function that runs the case once and returns the scored frame."""
    opts = RunOptions(image_root=str(folder), chunk_rows=args.batch_rows)
    model = LongCLIP(model_dir, device="cpu")

    def local():
        run_file(model, data, folder / "local.parquet", opts, progress=False)
        return pd.read_parquet(folder / "local.parquet")

    def in_actors(workers, baseline=False):
        def run():
            out = folder / f"ray-{workers}"
            shutil.rmtree(out, ignore_errors=True)
            run_ray(model_dir, str(data), f"{out}/", opts, "cpu", RayOptions(workers=workers, baseline=baseline),
                    progress=False)
            return pd.concat([pd.read_parquet(p) for p in sorted(out.iterdir())], ignore_index=True)
        return run

    def decode_in_actors(workers):
        def run():
            return _ray_dataset(ray, data).map_batches(
                Scorer, fn_constructor_args=(model_dir, "cpu", replace(opts, image_root=str(folder))),
                batch_format="pandas", batch_size=args.batch_rows, num_cpus=1,
                compute=ray.data.ActorPoolStrategy(size=workers)).to_pandas()
        return run

    def decode_stage_then(workers):
        def run():
            staged = _ray_dataset(ray, data).map_batches(
                decode_stage, fn_kwargs={"root": str(folder), "size": model.image_size}, batch_format="pandas",
                batch_size=args.batch_rows, num_cpus=1)
            return staged.map_batches(EmbedActor, fn_constructor_args=(model_dir,), batch_format="pandas",
                                      batch_size=args.batch_rows, num_cpus=1,
                                      compute=ray.data.ActorPoolStrategy(size=workers)).to_pandas()
        return run

    cases = {"local engine": local}
    for workers in sorted({1, args.workers}):
        cases[f"ray engine (run_ray, shards out), {workers} worker(s)"] = in_actors(workers)
        cases[f"ray engine + baseline (embeddings to the driver, which writes), {workers} worker(s)"] = \
            in_actors(workers, baseline=True)
    for workers in sorted({1, args.workers}):
        cases[f"pipeline, decode in {workers} actor(s)"] = decode_in_actors(workers)
        cases[f"pipeline, decode stage + {workers} embedding actor(s)"] = decode_stage_then(workers)
    return cases


def _overhead(ray, folder: Path, batch_counts: tuple[int, int] = (40, 4000)) -> tuple[float, float]:
    """(seconds per batch, fixed seconds per run) through one identity actor, from two batch counts."""
    few, many = batch_counts
    n = 2 * many  # rows: two per batch at the larger count
    rows = folder / "overhead.jsonl"
    rows.write_text("".join(json.dumps({"image_path": f"{i}.jpg", "text": f"caption {i}"}) + "\n" for i in range(n)))
    timings = {}
    for batches in (few, many):
        t = time.perf_counter()
        _ray_dataset(ray, rows).map_batches(Identity, batch_format="pandas", batch_size=n // batches, num_cpus=1,
                                            compute=ray.data.ActorPoolStrategy(size=1)).materialize()
        timings[batches] = time.perf_counter() - t
    per_batch = (timings[many] - timings[few]) / (many - few)
    return per_batch, timings[few] - few * per_batch


def _baseline_cost(dim: int = 768, rows: int = 20_000, batch: int = 256) -> tuple[float, float]:
    """(microseconds per row, bytes per row) of the baseline's work outside the model at ``dim`` (L/14: 768): an
    actor packing its rows' embeddings, the driver unpacking them and pairing them (``Baseline.add_chunk``).
    What Ray adds to carry the bytes is in the per-batch cost above and the rates with and without it."""
    rng = np.random.default_rng(0)
    embeds = [RowEmbeds(np.ones(batch, bool), l2_normalize(rng.standard_normal((batch, dim), np.float32)),
                        l2_normalize(rng.standard_normal((batch, dim), np.float32)),
                        rng.integers(0, 2**63, batch, dtype=np.uint64), rng.integers(0, 2**63, batch, dtype=np.uint64))
              for _ in range(rows // batch)]
    base = Baseline(None)
    t = time.perf_counter()
    for i, e in enumerate(embeds):
        back = RowEmbeds.from_cells(e.to_cells())
        base.add_chunk(i * batch, back.valid, back.image_embeds, back.text_embeds, back.image_keys, back.text_keys)
    base.finish(len(embeds) * batch)
    seconds = time.perf_counter() - t
    return seconds / (len(embeds) * batch) * 1e6, len(embeds[0].to_cells()[0])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-rows", type=int, default=256, help="rows per Ray batch (--chunk-rows)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the cases interleave, medians are printed")
    parser.add_argument("--overhead-batches", type=int, nargs=2, default=[40, 4000], metavar=("FEW", "MANY"),
                        help="the two batch counts of the per-batch cost (rows: twice MANY)")
    args = parser.parse_args(argv)
    few, many = args.overhead_batches
    if not 0 < few < many:
        parser.error(f"--overhead-batches {few} {many}: want 0 < FEW < MANY")
    import ray

    model_dir = str(Path(args.model).resolve())
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data = make_inputs(folder, args.rows, args.rows)
        ray.init(num_cpus=args.workers + 1, object_store_memory=300 * 2**20, include_dashboard=False,
                 logging_level="ERROR")
        try:
            cases = _cases(ray, args, folder, data, model_dir)
            seconds: dict[str, list[float]] = {name: [] for name in cases}
            overhead = []
            for _ in range(args.repeat):  # interleaved, so a busy spell on a shared machine hits every case
                want = None
                for name, case in cases.items():
                    t = time.perf_counter()
                    got = case()
                    seconds[name].append(time.perf_counter() - t)
                    want = got if want is None else want
                    _check(got, want)
                overhead.append(_overhead(ray, folder, (few, many)))
        finally:
            ray.shutdown()
    for name, runs in seconds.items():
        rates = sorted(args.rows / s for s in runs)
        print(f"{name}: {statistics.median(rates):.0f} rows/s (runs {', '.join(f'{r:.0f}' for r in rates)})")
    per_batch, fixed = (statistics.median(v) for v in zip(*overhead))
    frame = pd.read_json(io.StringIO('{"image_path": "a.jpg", "text": "b"}\n' * 256), lines=True)
    t = time.perf_counter()
    for _ in range(1000):
        Identity()(frame)
    direct = (time.perf_counter() - t) / 1000
    print(f"Ray per batch: {per_batch * 1e3:.2f} ms (identity actor, slope from {few} to {many} batches); "
          "fixed per run "
          f"(actor start, scheduling): {fixed:.2f} s; the same call made directly: {direct * 1e6:.1f} us")
    micros, size = _baseline_cost()
    print(f"baseline per row at D=768 (pack in the actor, unpack and pair on the driver): {micros:.1f} us, "
          f"{size:,} bytes carried")


if __name__ == "__main__":
    main()
