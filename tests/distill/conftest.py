"""Distillation tests train small models: they run on one thread, restored afterwards. Their matmuls are
too small to gain from a second thread, and on a busy machine an OpenMP team waiting for a descheduled
thread made the same runs 5 to 30 times slower (measured: MiniLM, 30 steps, 9 s on one thread, 68 s on two)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
