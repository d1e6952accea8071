import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    # These tests run many tiny matmuls, for which OpenMP threads on a shared CPU cost far more than
    # they give (a 4-layer BERT forward: ~0.6 s with 2 threads on a busy 2-core machine, ~7 ms with 1).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
