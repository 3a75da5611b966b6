"""DecodePool (SPEC §3.5): hangs are killed, crashes are reported, the pool carries on, nothing leaks."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from emo.decode.sampling import SamplingConfig
from emo.decode.video import DecodeError, decode_item
from emo.decode.workers import SINGLE_THREAD_ENV, DecodePool, default_workers
from tests import videos

# --- tasks: module-level so that the spawned workers can unpickle them ---------------------------------


def square(x: int) -> int:
    return x * x


def big_array(n_bytes: int, value: int) -> np.ndarray:
    return np.full(n_bytes, value, dtype=np.uint8)


def sleep_then(seconds: float, value: object) -> object:
    time.sleep(seconds)
    return value


def write_pid_then_sleep(path: str, seconds: float) -> None:
    Path(path).write_text(str(os.getpid()))
    time.sleep(seconds)


def exit_hard(code: int) -> None:
    os._exit(code)


def segfault() -> None:
    os.kill(os.getpid(), signal.SIGSEGV)
    time.sleep(10)


def raise_value_error() -> None:
    raise ValueError("bad value")


def raise_decode_error() -> None:
    raise DecodeError("not a video: no video stream (audio only)")


def unpicklable_result():
    return lambda: None


def pid() -> int:
    return os.getpid()


def torch_imported() -> bool:
    return "torch" in sys.modules


# --- tests ---------------------------------------------------------------------------------------------


def _collect(pool: DecodePool) -> dict[str, tuple[object, str | None]]:
    out = {}
    for task_id, result, error in pool.results():
        assert task_id not in out, f"{task_id} reported twice"
        out[task_id] = (result, error)
    return out


def _assert_reaped(pids) -> None:
    """Gone, not zombies: a zombie still answers kill(pid, 0)."""
    for p in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(p, 0)


def test_all_results_arrive_including_large_arrays():
    with DecodePool(workers=2, timeout=60) as pool:
        for i in range(20):
            pool.submit(f"sq{i}", square, i)
        for i in range(3):
            pool.submit(f"big{i}", big_array, 8 * 2**20, i)  # 8 MB results through the pipes
        got = _collect(pool)
    assert {k: v for k, v in got.items() if k.startswith("sq")} == {
        f"sq{i}": (i * i, None) for i in range(20)
    }
    for i in range(3):
        array, error = got[f"big{i}"]
        assert error is None and array.shape == (8 * 2**20,) and array[0] == i and array[-1] == i


def test_hanging_task_is_killed_and_the_others_finish():
    with DecodePool(workers=2, timeout=3) as pool:
        pool.submit("hang", sleep_then, 120, "never")
        for i in range(8):
            pool.submit(f"quick{i}", sleep_then, 0.05, i)
        t0 = time.monotonic()
        got = _collect(pool)
        elapsed = time.monotonic() - t0
    assert got["hang"] == (None, "timeout after 3s")
    assert all(got[f"quick{i}"] == (i, None) for i in range(8))
    assert elapsed < 30


@pytest.mark.parametrize(
    "fn, args, error",
    [
        (segfault, (), "decoder process died (signal 11: SIGSEGV)"),
        (exit_hard, (3,), "decoder process died (exit code 3)"),
    ],
)
def test_crashing_task_is_reported_and_the_pool_carries_on(fn, args, error):
    with DecodePool(workers=1, timeout=60) as pool:
        pool.submit("before", square, 2)
        pool.submit("crash", fn, *args)
        pool.submit("after1", square, 3)  # queued on the same worker as the crash
        pool.submit("after2", square, 4)
        got = _collect(pool)
    assert got == {"before": (4, None), "crash": (None, error), "after1": (9, None), "after2": (16, None)}


def test_exceptions_are_reported_with_type_and_message():
    with DecodePool(workers=1, timeout=60) as pool:
        pool.submit("value", raise_value_error)
        pool.submit("decode", raise_decode_error)
        pool.submit("pickle", unpicklable_result)
        pool.submit("ok", square, 5)
        got = _collect(pool)
    assert got["value"][1].startswith("ValueError: bad value (at test_workers.py:")
    assert got["decode"] == (None, "DecodeError: not a video: no video stream (audio only)")
    assert got["pickle"][0] is None and got["pickle"][1].startswith("cannot pickle the result:")
    assert got["ok"] == (25, None)


def test_inline_mode_reports_the_same_way():
    with DecodePool(workers=0, timeout=1) as pool:
        pool.submit("ok", square, 6)
        pool.submit("value", raise_value_error)
        pool.submit("decode", raise_decode_error)
        pool.submit("local", lambda: os.getpid())  # inline: no pickling, anything callable
        got = _collect(pool)
    assert got["ok"] == (36, None) and got["local"] == (os.getpid(), None)
    assert got["value"][1].startswith("ValueError: bad value")
    assert got["decode"][1] == "DecodeError: not a video: no video stream (audio only)"


def test_tasks_submitted_while_iterating_are_included():
    with DecodePool(workers=2, timeout=60) as pool:
        pool.submit("a", square, 1)
        seen = []
        for task_id, _, _ in pool.results():
            seen.append(task_id)
            if task_id == "a":
                pool.submit("b", square, 2)
        assert seen == ["a", "b"]
        assert list(pool.results()) == []  # nothing left


def test_unpicklable_task_fails_at_submit():
    with DecodePool(workers=1, timeout=60) as pool, pytest.raises(Exception, match="pickle|lambda"):
        pool.submit("local", lambda: 1)


def test_no_process_left_after_close(tmp_path):
    marker = tmp_path / "pid"
    pool = DecodePool(workers=2, timeout=60)
    pool.submit("crash", exit_hard, 1)
    for i in range(4):
        pool.submit(f"pid{i}", pid)
    pids = {r for _, r, e in pool.results() if e is None}
    pool.submit("busy", write_pid_then_sleep, str(marker), 120)  # still running at close
    deadline = time.monotonic() + 30
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    busy_pid = int(marker.read_text())
    t0 = time.monotonic()
    pool.close()
    assert time.monotonic() - t0 < 10  # a busy worker is killed, not waited for
    pool.close()  # twice is fine
    assert mp.active_children() == []
    _assert_reaped(pids | {busy_pid})
    with pytest.raises(RuntimeError):
        pool.submit("late", square, 1)


def test_decode_in_workers_without_torch(tmp_path):
    good = videos.make_video(tmp_path / "good.mp4", 20)
    bad = videos.make_text_as_mp4(tmp_path / "bad.mp4")
    cfg = SamplingConfig(segments=4, image_size=16)
    with DecodePool(workers=1, timeout=60) as pool:
        pool.submit("good", decode_item, str(good), cfg, "good")
        pool.submit("bad", decode_item, str(bad), cfg, "bad")
        pool.submit("torch", torch_imported)
        got = _collect(pool)
    item, error = got["good"]
    assert error is None and item.pixels.shape == (4, 1, 1, 16, 16, 3)
    assert [videos.decode_colour(item.pixels[m, 0, 0]) for m in range(4)] == item.frame_index[:, 0].tolist()
    assert got["bad"] == (None, "DecodeError: not a video: Invalid data found when processing input")
    assert got["torch"] == (False, None)


def thread_settings() -> dict:
    import torch  # a script's __main__ may bring torch into a worker; its pool must be one thread too

    return {**{name: os.environ.get(name) for name in SINGLE_THREAD_ENV}, "torch": torch.get_num_threads()}


def test_a_worker_is_one_thread_of_every_numeric_library():
    with DecodePool(workers=1, timeout=120) as pool:
        pool.submit("t", thread_settings)
        ((_, result, error),) = list(pool.results())
    assert error is None, error
    assert result == {**dict.fromkeys(SINGLE_THREAD_ENV, "1"), "torch": 1}


def _threads() -> int:
    return int(next(line for line in Path("/proc/self/status").read_text().splitlines()
                    if line.startswith("Threads:")).split()[1])


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="counts threads through /proc")
@pytest.mark.parametrize("backend", ["pyav", "decord"])
def test_the_decoders_run_on_the_calling_thread_only(tmp_path, monkeypatch, backend):
    # threads alive while frames are being cropped, i.e. while the decoder is open, against before;
    # decord decodes on a thread of its own (its ThreadedDecoder) while the caller waits: one, not 1 + cores
    import emo.decode.frames as video

    path = videos.make_video(tmp_path / "b.mp4", 40, size=(320, 240), bframes=True)
    before, seen = _threads(), []
    crop = video.pil_views

    def counting(*args):
        seen.append(_threads())
        return crop(*args)

    monkeypatch.setattr(video, "pil_views", counting)
    item = decode_item(path, SamplingConfig(segments=8), "x", backend=backend)
    assert item.backend == backend and seen
    own = {"pyav": 0, "decord": 1}[backend]
    assert max(seen) - before == own, f"{backend} ran {max(seen) - before} extra thread(s)"


def test_default_workers_leave_one_core_to_the_encoder(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert default_workers() == 15
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert default_workers() == 1


def test_results_of_one_group_leave_the_others_for_later():
    # the extraction collects shard k's videos while shard k+1's already run in the same pool
    with DecodePool(workers=2, timeout=60) as pool:
        for i in range(4):
            pool.submit(f"a{i}", sleep_then, 0.2, f"a{i}")
        for i in range(3):
            pool.submit(f"b{i}", square, i)
        first = {task_id: result for task_id, result, _ in pool.results(only=["a0", "a1", "a2", "a3"])}
        assert first == {f"a{i}": f"a{i}" for i in range(4)}
        assert pool.waiting() == 0
        second = {task_id: result for task_id, result, _ in pool.results(only=["b0", "b1", "b2"])}
        assert second == {"b0": 0, "b1": 1, "b2": 4}
        assert list(pool.results()) == []
    with DecodePool(workers=0, timeout=60) as pool:  # inline: only the asked tasks run
        pool.submit("x", square, 3)
        pool.submit("y", square, 4)
        assert list(pool.results(only=["y"])) == [("y", 16, None)]
        assert pool.waiting() == 1 and list(pool.results()) == [("x", 9, None)]
