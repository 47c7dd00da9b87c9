"""Independent tasks over worker processes: the same results as a loop, in order, only sooner.

Workers come from a fork server (multiprocessing's "forkserver"), not from a fork of the stage itself:
a stage runs other threads (the one opening its MLflow run imports modules in the background), and a
child forked while another thread holds an import lock waits on it forever.

A stop signal (SIGTERM, SIGINT) is never raised inside the pool's own code: an exception there can leave
a started worker unknown to the pool, which then waits for tasks forever and keeps the stage's stderr
open. It waits until that code returns: the tasks not yet started are cancelled, the running ones end,
and the stop is raised.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor, wait
from contextlib import contextmanager
from typing import Callable

from threadpoolctl import threadpool_limits

from dreamdiffusion.core.fileio import process_alive, process_start, stop_deferred, stop_pending
from dreamdiffusion.core.progress import progress

POLL_SECONDS = 0.1  # how often a wait for a task looks for a held stop signal
OWNER_POLL_SECONDS = 1.0  # how often a worker looks whether the stage's process still runs


@contextmanager
def task_map(workers: int, preload: tuple[str, ...] = ()):
    """Yield `map(fn, items, **progress_kwargs) -> list`, run over `workers` processes (in this process
    when `workers` <= 1 or the platform has no fork server); `preload`: modules the fork server imports
    once for all workers. `fn` and the items must pickle; each task must draw from its own random stream,
    so the results do not depend on `workers`. Every task's BLAS runs one thread, in a worker or in this
    process (the cores go to the workers; and a product split over BLAS threads can differ in the last bit
    from one thread's, as OpenBLAS's AVX2 kernels do, so the bytes would depend on `workers`)."""
    if workers <= 1 or "forkserver" not in multiprocessing.get_all_start_methods():
        with threadpool_limits(1):
            yield sequential_map
        return
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(preload))
    with stop_deferred():
        pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                                   initargs=(os.getpid(), process_start(os.getpid())))
    try:
        yield lambda fn, items, **bar: _pooled(pool, fn, list(items), bar)
    finally:
        with stop_deferred():
            pool.shutdown(wait=True, cancel_futures=True)


def _start_worker(owner: int, owner_start: str) -> None:
    """A worker's setup: one BLAS thread; SIGINT and SIGTERM ignored (Ctrl-C reaches the terminal's whole
    process group), as the stage's process `owner` owns the stop and ends its workers; and a thread that
    ends the worker if `owner` is killed (SIGKILL, out of memory), which nothing else would: a worker waits
    for tasks on a queue it holds open itself, and keeps the fork server and the stage's stderr alive."""
    for each in (signal.SIGINT, signal.SIGTERM):
        signal.signal(each, signal.SIG_IGN)
    threadpool_limits(1)
    threading.Thread(target=_exit_after, args=(owner, owner_start), daemon=True).start()


def _exit_after(owner: int, owner_start: str) -> None:
    """Exit this process once process `owner` (started at `owner_start`) no longer runs."""
    while process_alive(owner, owner_start):
        time.sleep(OWNER_POLL_SECONDS)
    os._exit(1)


def _pooled(pool: ProcessPoolExecutor, fn: Callable, items: list, bar: dict) -> list:
    """`[fn(item) for item in items]` over the pool, with a progress bar over finished tasks. A stop signal
    that comes meanwhile cancels the tasks not yet started; it is raised as the deferred block ends."""
    with stop_deferred():
        futures = [pool.submit(fn, item) for item in items]
        for future in progress(futures, **bar):
            while not (future.done() or stop_pending()):
                wait([future], timeout=POLL_SECONDS)
            if stop_pending():
                for each in futures:
                    each.cancel()
                break
    return [future.result() for future in futures]  # (a cancelled one raises CancelledError)


def sequential_map(fn: Callable, items, **bar) -> list:
    """`[fn(item) for item in items]` with a progress bar: what `task_map` yields for one worker."""
    return [fn(item) for item in progress(list(items), **bar)]
