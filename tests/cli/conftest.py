"""Command-line tests: the small models run on one thread (they gain nothing from two, and on a busy
machine each parallel region would wait for a core); MiniLM tests keep the default."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread_for_small_models(request):
    if request.node.get_closest_marker("model") is not None:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
