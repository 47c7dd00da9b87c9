"""Shared test fixtures."""
import pytest
import torch


@pytest.fixture
def one_thread():
    """Tiny models: one intra-op thread (two threads only contend on a shared 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
