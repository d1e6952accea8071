"""The training loop on a GPU: amp="auto" is float16 autocast with a GradScaler, and a run interrupted and
resumed from its checkpoint (CUDA RNG state included) ends where an uninterrupted one does."""

import pytest
import torch
from torch import nn

from pycompress.distill import DistillConfig, Distiller, distill
from pycompress.distill.trainer import resolve_amp


def _mlp(seed, dropout=0.0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Dropout(dropout), nn.Linear(64, 8)).cuda()


def _data():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(16, 32, generator=g) for _ in range(6)]


@pytest.mark.cuda
def test_auto_amp_is_fp16_with_grad_scaler_and_learns():
    assert resolve_amp("auto", torch.device("cuda")) == (torch.float16, True)
    teacher = _mlp(0)
    with torch.no_grad():
        teacher[-1].weight.mul_(10.0)
    student = _mlp(1)
    dtypes = set()
    student.register_forward_hook(lambda module, args, out: dtypes.add(out.dtype) if module.training else None)
    distiller = Distiller(student, teacher, DistillConfig(steps=40, lr=1e-2, alpha=1.0, log_every=10))
    distiller.fit(_data(), progress=False)
    assert dtypes == {torch.float16} and all(p.dtype == torch.float32 for p in student.parameters())
    assert distiller.history[-1]["loss"] < 0.5 * distiller.history[0]["loss"]


class _Interrupted(Exception):
    pass


class _StopAfter:
    def __init__(self, batches, limit):
        self.batches, self.limit, self.served = batches, limit, 0

    def __iter__(self):
        for batch in self.batches:
            if self.served == self.limit:
                raise _Interrupted
            self.served += 1
            yield batch


@pytest.mark.cuda
def test_resume_on_gpu_matches_uninterrupted_run(tmp_path):
    teacher = _mlp(0)
    config = DistillConfig(steps=8, lr=1e-2, checkpoint_every=4, seed=3)
    whole = distill(_mlp(1, dropout=0.3), teacher, _data(), config, progress=False)
    with pytest.raises(_Interrupted):
        distill(_mlp(1, dropout=0.3), teacher, _StopAfter(_data(), 4), config, checkpoint_dir=tmp_path, progress=False)
    resumed = distill(_mlp(1, dropout=0.3), teacher, _data(), config, checkpoint_dir=tmp_path, progress=False)
    for (name, a), b in zip(whole.named_parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
