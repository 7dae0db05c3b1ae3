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


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Every test trains in one process of one thread unless it says otherwise: fast on a busy machine, the same
    sums in every run, and `resnets train` in the test's own process (its auto layout starts two processes when
    there are two threads; tests of that layout ask for torch_threads(2))."""
    with torch_threads(1):
        yield
