"""Decode workers: pixels equal to in-process decoding, every hostile image its reason, a crash or a hang costs
one image (and the worker is replaced), workers ignore Ctrl-C and die with their parent, nothing blocks."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_preprocess import _dds_unknown_pixel_format

from conftest import GOLDENS
from longclip.runtime.contract import errors
from longclip.runtime.decode.pool import DecodePool, ImageSpec, ThreadPool
from longclip.runtime.decode.preprocess import decode_image

SPEC = ImageSpec(64, (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711), 1_000_000)
SMALL = GOLDENS / "images" / "small_41x97.jpg"


class _Unpickles:
    """A job argument whose unpickling, in the worker, runs ``fn(*args)``: a crash or a hang, on cue."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _collect(pool, n, timeout=600):  # a hang guard (minutes: CI machines are loaded), never a speed claim
    got, deadline = {}, time.monotonic() + timeout
    while len(got) < n:
        event = pool.events.get(timeout=max(0.1, deadline - time.monotonic()))
        got[event[1]] = event
    return got


@pytest.fixture(params=["processes", "threads"])
def pool(request):
    made = DecodePool(SPEC, 16, 2, timeout=3) if request.param == "processes" else ThreadPool(SPEC, 16, 2)
    yield made
    made.close()


def test_every_hostile_image_gets_its_reason_and_nothing_blocks(tmp_path, pool):
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "odd.dds").write_bytes(_dds_unknown_pixel_format())
    Image.new("L", (1, 2000)).save(tmp_path / "thin.png")  # at 64 px: 64x128,000, over the 1,000,000 cap
    os.symlink("loop.png", tmp_path / "loop.png")
    cases = {str(tmp_path / "pipe.png"): errors.NOT_A_FILE, "/dev/null": errors.NOT_A_FILE,
             str(tmp_path / "odd.dds"): errors.UNDECODABLE, str(tmp_path / "thin.png"): errors.TOO_MANY_PIXELS,
             str(tmp_path / "loop.png"): errors.BAD_PATH, str(tmp_path / "none.png"): errors.MISSING_FILE,
             str(SMALL): ""}
    for job, path in enumerate(cases):
        pool.submit(("image", job, path, job, None, None))
    got = _collect(pool, len(cases), timeout=20)
    assert [errors.error_code(got[job][2]) for job in range(len(cases))] == list(cases.values())
    np.testing.assert_array_equal(pool.slots[len(cases) - 1], decode_image(SMALL, 64, SPEC.mean, SPEC.std))


def test_texts_are_tokenized_as_in_process(pool):
    from longclip.runtime.decode.tokenizer import tokenize

    texts = ["a photo of a cat", "word " * 300, "Ünïcödé &amp; more"]
    pool.submit(("text", 7, texts, 248))
    (_, job, ids, lengths), = _collect(pool, 1).values()
    np.testing.assert_array_equal(ids, tokenize(texts))
    assert job == 7 and lengths.tolist()[0] == 7 and lengths[1] > 248


def test_a_crash_costs_one_image_and_the_worker_is_replaced():
    with DecodePool(SPEC, 8, 1, timeout=30) as pool:
        pool.submit(("image", 0, str(SMALL), 0, None, None))
        pool.submit(("image", 1, _Unpickles(os._exit, 3), 1, None, None))  # the worker dies reading this job
        pool.submit(("image", 2, str(SMALL), 2, None, None))  # sent to the same worker before it died: sent again
        pool.submit(("text", 3, ["after the crash"], 248))
        got = _collect(pool, 4)
    assert got[0][2] == "" and got[2][2] == "" and got[3][2] is not None
    assert got[1][2].startswith(f"{errors.DECODER_CRASHED}: the decoder crashed on ") and "(exit 3)" in got[1][2]


def test_a_hang_costs_one_image_after_the_timeout():
    with DecodePool(SPEC, 8, 1, timeout=1.5) as pool:
        pool.submit(("image", 0, _Unpickles(time.sleep, 600), 0, None, None))
        pool.submit(("image", 1, str(SMALL), 1, None, None))
        got = _collect(pool, 2)
    assert got[0][2].startswith(f"{errors.DECODE_TIMEOUT}: decoding ") and "more than 1.5 s" in got[0][2]
    assert got[1][2] == ""  # the 600 s hang was cut by the timeout, or this image would not be back


def test_a_busy_worker_loses_no_image_to_the_timeout():
    """The timeout clock restarts when a worker answers: six jobs of 1 s each, queued on one worker, take 6 s
    together, more than the 4 s timeout, and none of them is cut (a clock started at the first job would cut the
    fifth)."""
    with DecodePool(SPEC, 8, 1, timeout=4) as pool:
        for job in range(6):
            pool.submit(("image", job, _Unpickles(time.sleep, 1.0), job, f"{job}.png", None))
        got = _collect(pool, 6)
    assert sorted(got) == list(range(6))
    assert not [reason for _, _, reason, *_ in got.values() if reason.startswith(errors.DECODE_TIMEOUT)], got


def test_a_crashed_text_job_comes_back_for_the_caller_to_tokenize():
    with DecodePool(SPEC, 8, 1, timeout=30) as pool:
        pool.submit(("text", 0, _Unpickles(os._exit, 9), 248))
        (event,) = _collect(pool, 1).values()
    assert event == ("text", 0, None, None)


WORKERS_OF_A_KILLED_PARENT = """
import os, sys, time
from longclip.runtime.decode.pool import DecodePool, ImageSpec
pool = DecodePool(ImageSpec(32, (0.5,) * 3, (0.5,) * 3, 10**6), 4, 2)
pool.submit(("text", 0, ["warm up"], 248))
pool.events.get(timeout=60)
children = [c for t in os.listdir("/proc/self/task") for c in open(f"/proc/self/task/{t}/children").read().split()]
print(" ".join(children), flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_workers_die_with_their_parent_and_ignore_ctrl_c():
    parent = subprocess.Popen([sys.executable, "-c", WORKERS_OF_A_KILLED_PARENT], stdout=subprocess.PIPE, text=True)
    try:
        workers = [int(p) for p in parent.stdout.readline().split()]
        assert len(workers) == 2 and all(_alive(p) for p in workers)
        for pid in workers:
            os.kill(pid, signal.SIGINT)  # what a terminal's Ctrl-C sends to a foreground group
        time.sleep(0.5)
        assert all(_alive(p) for p in workers)  # ignored: the parent decides
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(p) for p in workers), "orphaned decode workers"


def test_a_script_without_a_main_guard_can_use_workers(tmp_path):
    """Workers are fresh interpreters, never forks: a user's script is not imported again in them."""
    script = tmp_path / "user_script.py"
    script.write_text(textwrap.dedent(f"""
        from longclip.runtime.decode.pool import DecodePool, ImageSpec
        print("script body ran", flush=True)
        pool = DecodePool(ImageSpec(32, (0.5,) * 3, (0.5,) * 3, 10**6), 4, 2)
        pool.submit(("image", 0, {str(SMALL)!r}, 0, None, None))
        print(pool.events.get(timeout=60))
        pool.close()
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("script body ran") == 1 and "('image', 0, '', None, False)" in proc.stdout


def test_small_shared_memory_falls_back_to_the_temp_folder(monkeypatch, tmp_path):
    from longclip.runtime.decode import pool as decode_pool

    monkeypatch.setattr(decode_pool.tempfile, "gettempdir", lambda: str(tmp_path))
    real = os.posix_fallocate

    def no_room_in_shm(fd, offset, length):
        if os.readlink(f"/proc/self/fd/{fd}").startswith(("/dev/shm", "/memfd:")):
            raise OSError(28, "No space left on device")
        return real(fd, offset, length)

    monkeypatch.setattr(decode_pool.os, "posix_fallocate", no_room_in_shm)
    fd, buffer = decode_pool.shared_buffer(1 << 20)
    try:
        assert Path(os.readlink(f"/proc/self/fd/{fd}")).parent == tmp_path and len(buffer) == 1 << 20
        assert list(tmp_path.iterdir()) == []  # unlinked at once: nothing to leave behind
    finally:
        buffer.close()
        os.close(fd)


def test_shared_memory_is_memfd_when_the_system_has_it():
    from longclip.runtime.decode import pool as decode_pool

    if not hasattr(os, "memfd_create"):
        pytest.skip("no memfd_create here")
    fd, buffer = decode_pool.shared_buffer(1 << 20)
    try:
        assert os.readlink(f"/proc/self/fd/{fd}").startswith("/memfd:longclip-pixels")  # no /dev/shm size limit
    finally:
        buffer.close()
        os.close(fd)


def test_no_shared_memory_at_all_decodes_on_threads(monkeypatch, caplog):
    from longclip.runtime.decode import pool as decode_pool

    def nothing(nbytes):
        raise OSError("no room for it anywhere")

    monkeypatch.setattr(decode_pool, "shared_buffer", nothing)
    with decode_pool.make_pool(SPEC, 8, 2) as pool:
        assert isinstance(pool, ThreadPool)
    assert "decoding on threads of this process instead of 2 worker processes: no room" in caplog.text


def test_a_large_job_queued_behind_a_hang_does_not_stop_the_timeout():
    import io

    buffer = io.BytesIO()  # noise: a PNG of ~270 KB, more than a pipe holds
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)).save(buffer, "PNG")
    assert len(buffer.getvalue()) > 1 << 17
    with DecodePool(SPEC, 8, 1, timeout=1.5) as pool:
        pool.submit(("image", 0, _Unpickles(time.sleep, 600), 0, None, None))
        pool.submit(("image", 1, buffer.getvalue(), 1, None, None))
        got = _collect(pool, 2)
    assert got[0][2].startswith(f"{errors.DECODE_TIMEOUT}: ") and got[1][2] == ""


def test_workers_that_cannot_start_fail_the_pool_instead_of_respawning_forever(monkeypatch):
    monkeypatch.setattr(sys, "executable", "/bin/false")
    with DecodePool(SPEC, 8, 2, timeout=30) as pool:
        pool.submit(("image", 0, str(SMALL), 0, None, None))
        event = pool.events.get(timeout=30)
    assert event[0] == "pool_failed" and "decode workers in a row exited or hung before they started" in event[1]
    assert "--decode-workers 0" in event[1]


def test_an_image_hashed_for_an_embeddings_folder_is_not_read_whole_beyond_the_cap(monkeypatch):
    from longclip.runtime.contract import constants
    from longclip.runtime.decode.worker import image_job

    slots = np.zeros((1, 3, SPEC.size, SPEC.size), np.float32)
    ok = image_job(("image", 0, str(SMALL), 0, None, ""), slots, SPEC, {})
    assert ok[2] == "" and ok[3][1] == SMALL.stat().st_size
    monkeypatch.setattr(constants, "MAX_MEMBER_BYTES", SMALL.stat().st_size - 1)
    _, _, reason, meta, cached = image_job(("image", 1, str(SMALL), 0, None, ""), slots, SPEC, {})
    assert reason.startswith(f"{errors.TOO_MANY_PIXELS}: image file ") and "bytes, more than the" in reason
    assert (meta, cached) == (None, False)
