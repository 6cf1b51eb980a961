"""Worker processes: attacks, grid settings and sweep trials in parallel, one torch thread each.

Not in the paper; what keeps parallel runs safe on a laptop and on a cluster node:

    spawned, not forked   forking a process that has run torch can deadlock its thread pools
    one torch thread      two busy threads per core run 10-25x slower
    Ctrl-C                is the parent's: workers start with SIGINT ignored (an ignored signal stays ignored
                          through exec), so a terminal's Ctrl-C prints no traceback per worker
    a killed parent       takes its workers with it, even on SIGKILL (Linux PR_SET_PDEATHSIG)
    a dead worker         (the out-of-memory killer) is one error line in the parent, never a wait forever
    any error exit        terminates the workers at once: discarded work is never waited for

Use:  with Workers(2) as pool:
          results = list(pool.map(fn, jobs))           # in order;  or  future = pool.submit(fn, job)
      results = logged_map(fn, {key: job}, log, 2)     # each result kept in `log` as it ends; a rerun runs the rest
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import ctypes
import multiprocessing
import os
import signal
import threading
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch

import cli
from cli import UserError
from storage import append_jsonl, resumed_jsonl


def _init(parent: int) -> None:
    torch.set_num_threads(1)
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG: SIGKILL this worker when its parent dies
    except (OSError, AttributeError):  # not Linux: a worker ends when its parent closes the pool
        pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


@contextlib.contextmanager
def _ctrl_c_ignored():
    """SIGINT ignored while workers may be started (the pool starts them as work is submitted)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class Workers:
    """A pool of `n` spawned worker processes (see the module docstring), used as a `with` block."""

    def __init__(self, n: int):
        self.n = n

    def __enter__(self) -> "Workers":
        self.executor = cf.ProcessPoolExecutor(self.n, mp_context=multiprocessing.get_context("spawn"),
                                               initializer=_init, initargs=(os.getpid(),))
        return self

    def submit(self, fn: Callable, *args) -> cf.Future:
        with _ctrl_c_ignored():
            return self.executor.submit(fn, *args)

    def map(self, fn: Callable, items: Iterable) -> Iterator:
        """fn(item) for every item, in order, each as soon as it and those before it are done."""
        futures = [self.submit(fn, x) for x in items]
        return (result(f) for f in futures)

    def __exit__(self, exc_type, *_):
        if exc_type is not None:  # no public way to stop running workers before Python 3.14
            for p in list((getattr(self.executor, "_processes", None) or {}).values()):
                p.terminate()
        self.executor.shutdown(wait=True, cancel_futures=True)


def result(future: cf.Future):
    """A worker's result; a worker that died (out of memory, killed) is one error line."""
    try:
        return future.result()
    except BrokenProcessPool:
        raise UserError("a worker process died (out of memory? try fewer --workers)") from None


def logged_map(fn: Callable, jobs: dict[str, object], log: Path, workers: int, desc: str = "jobs") -> dict:
    """{key: fn(job)} for every job, each result appended to the JSONL `log` ({"key", "result"}) as it ends, so a
    crash or Ctrl-C loses no finished job; jobs whose key is already in `log` are not run again."""
    done = {r["key"]: r["result"] for r in resumed_jsonl(log, ("key", "result"))}
    todo = [k for k in jobs if k not in done]
    if todo:
        with Workers(min(workers, len(todo))) as pool, cli.progress(len(todo), desc, unit="run") as bar:
            futures = {pool.submit(fn, jobs[k]): k for k in todo}
            for future in cf.as_completed(futures):
                k = futures[future]
                done[k] = result(future)
                append_jsonl(log, [{"key": k, "result": done[k]}])
                bar.update(1)
    return {k: done[k] for k in jobs}
