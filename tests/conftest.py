"""Shared test fixtures."""
import os

import pytest
import torch

# Stages run by the tests (in this process or as subprocesses) use one thread per core whatever else the
# machine runs (compute.threads 0 would otherwise follow the load): runs the tests compare stay comparable.
os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))


@pytest.fixture
def one_thread():
    """Tiny models: one intra-op thread (two threads only contend on a shared 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
