"""Independent tasks over worker processes: the same results as a loop, in order, only sooner.

Workers come from a fork server (multiprocessing's "forkserver"), not from a fork of the stage itself:
a stage runs other threads (the one opening its MLflow run imports modules in the background), and a
child forked while another thread holds an import lock waits on it forever.
"""
from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from typing import Callable

from threadpoolctl import threadpool_limits

from dreamdiffusion.core.progress import progress


@contextmanager
def task_map(workers: int, preload: tuple[str, ...] = ()):
    """Yield `map(fn, items, **progress_kwargs) -> list`, run over `workers` processes (in this process
    when `workers` <= 1 or the platform has no fork server); `preload`: modules the fork server imports
    once for all workers. `fn` and the items must pickle; each task must draw from its own random stream,
    so the results do not depend on `workers`. Each worker's BLAS runs one thread (the cores go to the
    workers; OpenBLAS splits a product by output blocks, so its results do not depend on that either)."""
    if workers <= 1 or "forkserver" not in multiprocessing.get_all_start_methods():
        yield sequential_map
        return
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(preload))
    with ProcessPoolExecutor(workers, mp_context=context, initializer=threadpool_limits, initargs=(1,)) as pool:
        yield lambda fn, items, **bar: _pooled(pool, fn, list(items), bar)


def _pooled(pool: ProcessPoolExecutor, fn: Callable, items: list, bar: dict) -> list:
    """`[fn(item) for item in items]` over the pool, with a progress bar over finished tasks."""
    return list(progress(pool.map(fn, items), total=len(items), **bar))


def sequential_map(fn: Callable, items, **bar) -> list:
    """`[fn(item) for item in items]` with a progress bar: what `task_map` yields for one worker."""
    return [fn(item) for item in progress(list(items), **bar)]
