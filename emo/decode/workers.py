"""A pool of decoder processes with a per-task wall-clock timeout (README, Stage 1).

Decoders are C libraries fed with files from the wild: a bad file can make them hang or crash the
process. ``DecodePool`` runs every task in a child process; a task that runs past ``timeout`` has its
process killed, a task whose process dies (segfault, ``os._exit``) is reported as such, and either
way the pool starts a fresh process and carries on with the other tasks. Results come back through
one pipe per worker, pickled with protocol 5.

At most ``_PER_WORKER`` tasks wait on one worker's pipe (the running one and the next), so a worker
never idles while the parent is busy, and tasks stuck behind a killed one are few; they are handed
to other workers, not failed. ``results(only=ids)`` collects one group of tasks while later groups
run (an extraction submits the next shard's videos before it has written the current shard).
``workers=0`` runs tasks inline in the calling process, for debugging.

Workers are started with ``spawn`` by default and import only what the tasks' functions need (the
decoders, numpy, PIL); torch only when a task decodes on the GPU (``emo.decode.gpu``). Each worker is one decoding thread: the decoders are asked for one
thread (``emo.decode.video``), and OpenMP/BLAS pools (and torch's, if a script imported it) are held
to one thread before the first task, so ``workers`` processes use ``workers`` cores; a worker pool is
sized to the cores the process may use, less one for the encoding process (``default_workers``). Note that ``spawn`` re-imports the parent's ``__main__`` script
in each worker, so an entry point must keep heavy imports inside functions.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import signal
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.connection import Connection, wait
from typing import NamedTuple

__all__ = ["DecodePool", "SINGLE_THREAD_ENV", "default_workers"]

_PER_WORKER = 2  # tasks in flight on one worker's pipe
_STARTUP_GRACE = 60.0  # seconds a new process may take to report ready, on top of the task timeout
_REAP_WAIT = 5.0  # seconds to wait for a process whose pipe closed to finish exiting
_STOP = b""  # parent -> worker: exit after the current task
_PICKLE = 5
# thread pools of the numeric libraries a task might import, held to one thread in every worker
SINGLE_THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
                     "VECLIB_MAXIMUM_THREADS")


def default_workers(sharing: int = 1) -> int:
    """Decode processes for this machine: the CPUs this process may run on, shared by ``sharing`` encoding
    processes (dask workers on one host), less one for each encoder; at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, sharing) - 1)


class _Task(NamedTuple):
    task_id: str
    payload: bytes  # pickled (fn, args, kwargs)


class _Worker:
    """One child process, its pipe, and the tasks sent to it in order (the head one is running)."""

    def __init__(self, ctx) -> None:
        self.conn, child = ctx.Pipe(duplex=True)
        self.process = ctx.Process(target=_worker_main, args=(child,), name="emo-decode", daemon=True)
        self.process.start()
        child.close()
        self.queue: deque[_Task] = deque()
        self.spawned = time.monotonic()
        self.ready = False  # the child reported that it runs
        self.started = self.spawned  # when the head task began, monotonic seconds

    def deadline(self, timeout: float) -> float:
        """Monotonic time at which the head task is overdue (inf when idle)."""
        if not self.queue:
            return float("inf")
        if not self.ready:
            return self.spawned + timeout + _STARTUP_GRACE
        return self.started + timeout

    def ask_to_stop(self) -> None:
        try:
            self.conn.send_bytes(_STOP)
        except OSError:  # already gone
            pass

    def stop(self, grace: float) -> None:
        """Wait ``grace`` seconds for the process to exit, then SIGKILL it; reap it either way."""
        if grace > 0:
            self.process.join(grace)
        if self.process.is_alive():
            self.process.kill()
        self.process.join()
        self.conn.close()
        self.process.close()


class DecodePool:
    """Run picklable callables in worker processes, each task under a wall-clock ``timeout`` (seconds).

    ``submit`` queues a task; ``results`` yields ``(task_id, result, error)`` in completion order until
    every task submitted so far is done, with exactly one of ``result``/``error`` set (``result`` may be
    ``None`` itself). ``error`` is a readable string: ``"timeout after 120s"``, ``"decoder process died
    (signal 11: SIGSEGV)"``, ``"DecodeError: <reason>"``, or ``"<Type>: <message> (at file:line in
    function)"`` for any other exception. Use as a context manager, or call ``close``: children are
    killed and reaped.
    """

    def __init__(self, workers: int, timeout: float, mp_context: str = "spawn") -> None:
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        self.timeout = float(timeout)
        self._ctx = mp.get_context(mp_context)
        self._pending: deque[_Task] = deque()  # submitted, not yet sent to a worker
        self._inline: deque[tuple[str, Callable, tuple, dict]] = deque()
        self._done: deque[tuple[str, object | None, str | None]] = deque()
        self._workers = [_Worker(self._ctx) for _ in range(workers)]
        self._n_workers = workers
        self._closed = False

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def submit(self, task_id: str, fn: Callable, *args, **kwargs) -> None:
        """Queue ``fn(*args, **kwargs)``. ``fn`` and its arguments are pickled now (keep them small)."""
        if self._closed:
            raise RuntimeError("DecodePool is closed")
        if self._n_workers == 0:
            self._inline.append((task_id, fn, args, kwargs))
        else:
            self._pending.append(_Task(task_id, pickle.dumps((fn, args, kwargs), protocol=_PICKLE)))
            self._dispatch()  # start at once where a worker has room

    def results(self, only: Iterable[str] | None = None) -> Iterator[tuple[str, object | None, str | None]]:
        """``(task_id, result, error)`` for every task, as tasks finish, until all submitted are done.

        With ``only`` (ids of tasks submitted before): just those, until all of them are done; the other
        tasks keep running and their results wait for a later call (a caller may submit the next group
        of tasks before it has collected the current one, so that no worker waits between groups).
        """
        wanted = None if only is None else set(only)
        while True:  # workers=0: run the wanted inline tasks now, in submission order
            entry = next((e for e in self._inline if wanted is None or e[0] in wanted), None)
            if entry is None:
                break
            self._inline.remove(entry)
            if wanted is not None:
                wanted.discard(entry[0])
            yield entry[0], *_call(*entry[1:])
        while wanted is None or wanted:
            done = self._take(wanted)
            if done is not None:
                yield done
                continue
            if self._closed or not (self._pending or any(w.queue for w in self._workers)):
                return
            self._dispatch()
            self._wait()

    def waiting(self) -> int:
        """Tasks submitted that no worker has started or queued yet."""
        return len(self._pending) + len(self._inline)

    def close(self) -> None:
        """Stop and reap every worker; tasks not yet finished are dropped. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for w in self._workers:
            if not w.queue:  # idle: ask it to exit; a busy worker may be stuck, it gets no grace
                w.ask_to_stop()
        deadline = time.monotonic() + 1.0
        for w in self._workers:
            w.stop(grace=0.0 if w.queue else max(0.0, deadline - time.monotonic()))
        self._workers = []
        self._pending.clear()

    # --- internals --------------------------------------------------------------------------------

    def _take(self, wanted: set[str] | None) -> tuple[str, object | None, str | None] | None:
        """The first finished task (of ``wanted``, which loses its id), or None."""
        for done in self._done:
            if wanted is None or done[0] in wanted:
                self._done.remove(done)
                if wanted is not None:
                    wanted.discard(done[0])
                return done
        return None

    def _dispatch(self) -> None:
        """Send pending tasks to the least loaded workers, up to ``_PER_WORKER`` each."""
        while self._pending:
            w = min(self._workers, key=lambda w: len(w.queue))
            if len(w.queue) >= _PER_WORKER:
                return
            task = self._pending.popleft()
            try:
                w.conn.send_bytes(task.payload)
            except OSError:  # the process is gone: its running task (if any) killed it
                self._pending.appendleft(task)
                self._replace(w, _death_message(w.process))
                continue
            if not w.queue:
                w.started = time.monotonic()
            w.queue.append(task)

    def _wait(self) -> None:
        """Block until a worker answers, dies, or a task is overdue; then handle that."""
        now = time.monotonic()
        first_deadline = min(w.deadline(self.timeout) for w in self._workers)
        wait_for = max(0.0, first_deadline - now) if first_deadline != float("inf") else None
        handles = [w.conn for w in self._workers] + [w.process.sentinel for w in self._workers]
        ready = set(wait(handles, wait_for))
        for w in list(self._workers):
            if w.conn in ready and not self._receive(w):
                continue  # replaced
            if w.process.sentinel in ready:
                while w.conn.poll() and self._receive(w):  # answers sent just before dying
                    pass
                if w in self._workers:
                    self._replace(w, _death_message(w.process))
        now = time.monotonic()
        for w in list(self._workers):
            if w.queue and now >= w.deadline(self.timeout):
                if w.ready:
                    self._replace(w, f"timeout after {self.timeout:g}s")
                else:
                    self._replace(
                        w, f"decoder process did not start within {self.timeout + _STARTUP_GRACE:g}s"
                    )

    def _receive(self, w: _Worker) -> bool:
        """Read one message from ``w``; False when the pipe broke (the worker was then replaced)."""
        try:
            message = pickle.loads(w.conn.recv_bytes())
        except (EOFError, OSError):
            self._replace(w, _death_message(w.process))
            return False
        now = time.monotonic()
        if message[0] == "ready":
            w.ready, w.started = True, now
            return True
        _, result, error = message
        task = w.queue.popleft()
        w.started = now
        self._done.append((task.task_id, result, error))
        return True

    def _replace(self, w: _Worker, error: str) -> None:
        """Kill ``w`` and start a fresh worker: its head task fails with ``error``, the ones behind it
        go back to the front of the pending queue."""
        if w.queue:
            head = w.queue.popleft()
            self._done.append((head.task_id, None, error))
        self._pending.extendleft(reversed(w.queue))
        w.queue.clear()
        w.stop(grace=0.0)
        self._workers[self._workers.index(w)] = _Worker(self._ctx)


def _death_message(process) -> str:
    """Why ``process`` went away. Its pipe and sentinel close a moment before it can be reaped: wait."""
    process.join(_REAP_WAIT)
    code = process.exitcode
    if code is None:
        return "decoder process stopped answering"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "unknown"
        return f"decoder process died (signal {-code}: {name})"
    return f"decoder process died (exit code {code})"


def _describe(e: BaseException) -> str:
    """``"Type: message"``; other than for ``DecodeError`` (an expected, bad-input failure), with where."""
    text = f"{type(e).__name__}: {e}"
    if type(e).__name__ == "DecodeError":
        return text
    frames = traceback.extract_tb(e.__traceback__)
    if frames:
        last = frames[-1]
        text += f" (at {os.path.basename(last.filename)}:{last.lineno} in {last.name})"
    return text


def _call(fn: Callable, args: tuple, kwargs: dict) -> tuple[object | None, str | None]:
    """Run one task; any exception becomes the task's error (the pool's contract), never the pool's."""
    try:
        return fn(*args, **kwargs), None
    except Exception as e:
        return None, _describe(e)


def _one_thread() -> None:
    """Hold this process's numeric thread pools to one thread (before a task imports the libraries)."""
    for name in SINGLE_THREAD_ENV:
        os.environ[name] = "1"
    torch = sys.modules.get("torch")  # only if the parent's __main__, re-imported by spawn, brought it
    if torch is not None:
        torch.set_num_threads(1)


def _worker_main(conn: Connection) -> None:
    """Child process loop: receive a pickled task, run it, send back ``("done", result, error)``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it kills us
    _one_thread()
    conn.send_bytes(pickle.dumps(("ready", os.getpid()), protocol=_PICKLE))
    while True:
        try:
            payload = conn.recv_bytes()
        except (EOFError, OSError):
            return
        if payload == _STOP:
            return
        try:
            fn, args, kwargs = pickle.loads(payload)
        except Exception as e:
            result, error = None, f"cannot unpickle the task: {_describe(e)}"
        else:
            result, error = _call(fn, args, kwargs)
        try:
            reply = pickle.dumps(("done", result, error), protocol=_PICKLE)
        except Exception as e:
            reply = pickle.dumps(
                ("done", None, f"cannot pickle the result: {_describe(e)}"), protocol=_PICKLE
            )
        try:
            conn.send_bytes(reply)
        except OSError:  # the parent is gone
            return
