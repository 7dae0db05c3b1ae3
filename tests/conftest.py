import contextlib

import pytest
import torch


@contextlib.contextmanager
def torch_threads(n: int):
    """torch's intra-op threads set to `n` for the block. Tests that train use one: on a busy 2-core machine
    two threads per process spin against each other (measured: the same tiny run 0.8 s on one thread, 32 s on
    two), and torchrun gives its processes one each anyway."""
    threads = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def one_thread():
    with torch_threads(1):
        yield
