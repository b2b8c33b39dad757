"""The pipeline's own guarantees, on the tiny model: pixels waiting for the model stay bounded, a run that stops
with jobs outstanding leaves its pool refused (its workers may still write into slots), and an embedding that is
not finite costs its row with a reason."""

import shutil
import time

import numpy as np
import pandas as pd
import pytest

from conftest import GOLDENS
from longclip.runtime import LongCLIP
from longclip.runtime.contract import errors
from longclip.runtime.contract.errors import EngineError
from longclip.runtime.decode.pool import ImageSpec, ThreadPool, make_pool
from longclip.runtime.engines import pipeline as pipeline_module
from longclip.runtime.engines.pipeline import Pipeline
from longclip.runtime.engines.recording import RecentKeys
from longclip.runtime.engines.work import Work

IMG = GOLDENS / "images"
DISTINCT = ("rgb_333x517.png", "small_41x97.jpg", "rgba_61x45.png")  # three images of different bytes


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return LongCLIP(tiny_model_dir, device="cpu")


def _images(folder, n):
    paths = []
    for i in range(n):  # distinct paths: each one is decoded and embedded
        path = folder / f"img{i}.jpg"
        shutil.copy(IMG / "small_41x97.jpg", path)
        paths.append(str(path))
    return paths


def test_pixels_waiting_for_a_slow_model_stay_bounded(tmp_path, model, monkeypatch):
    paths = _images(tmp_path, 48)
    run_vision = model.run_vision

    def slow(batch, stop=None):
        time.sleep(0.05)
        return run_vision(batch, stop)

    monkeypatch.setattr(model, "run_vision", slow)
    with make_pool(ImageSpec.of(model.manifest, 10**8), 2, 0) as pool:
        pipe = Pipeline(model, pool, batch_size=2)
        seen = []
        send = pipe._send_images

        def watch(chunk, model_queue):
            send(chunk, model_queue)
            seen.append(pipe._vision_queued)

        monkeypatch.setattr(pipe, "_send_images", watch)
        result = next(pipe.run([Work(paths, ["a photo"] * len(paths))]))
        # at most the batches allowed to wait, plus those the slots already decoded could fill (without the bound:
        # nearly all 24, the slots being freed as each batch is copied out)
        bound = pipeline_module.MAX_VISION_QUEUED + pool.n_slots // 2
    assert len(seen) == 24 and max(seen) <= bound < 12
    assert not any(result.errors) and np.isfinite(result.scores).all()


def test_a_run_stopped_with_jobs_outstanding_leaves_its_pool_refused(tmp_path, model):
    paths = _images(tmp_path, 12)
    with ThreadPool(ImageSpec.of(model.manifest, 10**8), 8, 1) as pool:
        works = [Work(paths[:2], ["a", "b"]), Work(paths[2:], ["c"] * 10)]
        run = Pipeline(model, pool, batch_size=2).run(works)
        next(run)
        run.close()  # the caller stops: the second chunk's images are still being decoded
        assert "jobs outstanding" in pool.broken
        with pytest.raises(EngineError, match="this decode pool cannot be used again: a run on it stopped with"):
            next(Pipeline(model, pool, batch_size=2).run(works))


def test_a_pool_a_run_finished_on_can_take_the_next_run(tmp_path, model):
    paths = _images(tmp_path, 4)
    with ThreadPool(ImageSpec.of(model.manifest, 10**8), 8, 1) as pool:
        first = list(Pipeline(model, pool, batch_size=2).run([Work(paths, ["a"] * 4)]))
        second = list(Pipeline(model, pool, batch_size=2).run([Work(paths, ["a"] * 4)]))
        assert pool.broken == ""
    np.testing.assert_array_equal(first[0].scores, second[0].scores)


@pytest.mark.parametrize("tower", ["vision", "text"])
def test_an_embedding_that_is_not_finite_costs_its_row_with_a_reason(tmp_path, model, monkeypatch, tower):
    paths = _images(tmp_path, 3)
    real = model.run_vision if tower == "vision" else model.run_text

    def poisoned(batch, stop=None):
        out = real(batch, stop)
        out[1] = np.inf if tower == "vision" else np.nan
        return out

    monkeypatch.setattr(model, "run_vision" if tower == "vision" else "run_text", poisoned)
    with ThreadPool(ImageSpec.of(model.manifest, 10**8), 8, 1) as pool:
        result = next(Pipeline(model, pool, batch_size=8).run([Work(paths, ["a cat", "a dog", "a bird"])]))
    assert result.errors[0] == result.errors[2] == ""
    assert result.errors[1] == f"{errors.NON_FINITE}: the model gave NaN or inf for this " \
                               f"{'image' if tower == 'vision' else 'text'}"
    assert np.isnan(result.scores[1]) and np.isfinite(result.scores[[0, 2]]).all()


def test_score_chunk_scores_as_the_model_does(tmp_path, model):
    from longclip.runtime.engines.chunk import score_chunk

    paths = _images(tmp_path, 2) + [str(tmp_path / "missing.jpg")]
    result = score_chunk(model, paths, ["a cat", "a dog", "a bird"], batch_size=2)
    np.testing.assert_allclose(result.scores[:2], model.score(paths[:2], ["a cat", "a dog"]), rtol=1e-6)
    assert result.errors[:2] == ["", ""] and result.errors[2].startswith(f"{errors.MISSING_FILE}: ")


def test_what_a_ray_worker_remembers_recording_stays_bounded_and_keeps_keys_met_again():
    """A Ray worker's pipeline cannot ask its store what it recorded (the driver indexes the parts), so it
    remembers: a plain set grew ~130 bytes per distinct image and text for the whole run. Now two generations: a
    key met every 50 keys is new once in 10,000; one met once is forgotten after at most 2 generations."""
    recent = RecentKeys(generation=100)
    new_hot, sizes = 0, []
    for i in range(10_000):
        new_hot += recent.add(b"hot") if i % 50 == 0 else 0
        assert recent.add(i.to_bytes(4, "big"))
        sizes.append(len(recent))
    assert new_hot == 1 and max(sizes) <= 200
    assert recent.add((0).to_bytes(4, "big"))  # forgotten: recorded again (a duplicate record; the newest wins)
    assert not recent.add((9_999).to_bytes(4, "big"))


@pytest.mark.parametrize(("tower", "scale"), [("vision", 1e30), ("text", 1e30), ("vision", 3e37), ("text", 1e-30)])
def test_an_embedding_of_huge_or_tiny_finite_values_scores_as_its_direction(tmp_path, model, monkeypatch, tower,
                                                                            scale):
    """Squares past float32's range (1e30**2) or below it (1e-30**2) made the norm inf or 0: the row came back NaN
    with an empty reason, and an embeddings folder refused the vector. Scaled first, the row scores as the same
    vector of ordinary size does, and is kept."""
    from longclip.runtime.embeddings.identity import StoreIdentity
    from longclip.runtime.embeddings.store import EmbeddingStore

    paths = [str(IMG / name) for name in DISTINCT]
    texts = ["a cat", "a dog", "a bird"]
    with ThreadPool(ImageSpec.of(model.manifest, 10**8), 8, 1) as pool:
        plain = next(Pipeline(model, pool, batch_size=8).run([Work(paths, texts)]))
    name = "run_vision" if tower == "vision" else "run_text"
    real = getattr(model, name)

    def scaled(batch, stop=None):
        out = real(batch, stop)
        out[1] = out[1] * np.float32(scale) / np.abs(out[1]).max()  # largest value exactly `scale`
        return out

    monkeypatch.setattr(model, name, scaled)
    with ThreadPool(ImageSpec.of(model.manifest, 10**8), 8, 1) as pool, \
            EmbeddingStore(tmp_path / "emb", StoreIdentity.of(model.manifest)) as store:
        result = next(Pipeline(model, pool, batch_size=8, store=store).run([Work(paths, texts)]))
    assert result.errors == ["", "", ""]
    assert len(pd.read_parquet(tmp_path / "emb" / ("images" if tower == "vision" else "texts"))) == 3
    np.testing.assert_allclose(result.scores, plain.scores, rtol=1e-5)
    np.testing.assert_array_equal(result.scores[[0, 2]], plain.scores[[0, 2]])  # other rows: bit for bit


@pytest.mark.parametrize(("tower", "poison", "gave"), [
    ("vision", 0.0, "a vector of zeros (no direction)"), ("text", 0.0, "a vector of zeros (no direction)"),
    ("vision", -np.inf, "NaN or inf"), ("text", np.inf, "NaN or inf")])
def test_an_embedding_with_no_direction_costs_its_row_and_is_not_kept(tmp_path, model, monkeypatch, tower, poison,
                                                                     gave):
    from longclip.runtime.embeddings.identity import StoreIdentity
    from longclip.runtime.embeddings.store import EmbeddingStore

    paths = [str(IMG / name) for name in DISTINCT]
    name = "run_vision" if tower == "vision" else "run_text"
    real = getattr(model, name)

    def poisoned(batch, stop=None):
        out = real(batch, stop)
        out[1] = 0.0
        out[1, 0] = poison  # zeros, or one infinity among zeros
        return out

    monkeypatch.setattr(model, name, poisoned)
    with ThreadPool(ImageSpec.of(model.manifest, 10**8), 8, 1) as pool, \
            EmbeddingStore(tmp_path / "emb", StoreIdentity.of(model.manifest)) as store:
        result = next(Pipeline(model, pool, batch_size=8, store=store).run([Work(paths, ["a cat", "a dog", "a bird"])]))
    what = "image" if tower == "vision" else "text"
    assert result.errors == ["", f"{errors.NON_FINITE}: the model gave {gave} for this {what}", ""]
    assert np.isnan(result.scores[1]) and np.isfinite(result.scores[[0, 2]]).all()
    kept = pd.read_parquet(tmp_path / "emb" / ("images" if tower == "vision" else "texts"))
    assert len(kept) == 2  # the row's image (or text) has no record; the others have theirs
