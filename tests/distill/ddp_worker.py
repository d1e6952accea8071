"""Two CPU ranks (gloo) training tiny models with distill() / train() under DDP; run by test_ddp.py as
``python ddp_worker.py OUT_DIR``. Each rank writes OUT_DIR/rank<r>.pt with the weights before and after
each scenario; test_ddp.py compares them across ranks and with one process training on the same data."""

import socket
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

import pycompress
from pycompress.distill import DistillConfig, TrainConfig, distill, train

WORLD = 2
STEPS = 4
GRAD_ACCUM = 2


def mlp(widths, seed):
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def teacher():
    model = mlp([8, 32, 4], 0)
    with torch.no_grad():
        model[-1].weight.mul_(10.0)
    return model


def batches():
    """8 batches of 8: each rank takes 4 per epoch, 2 optimizer steps with GRAD_ACCUM = 2."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    y = torch.randint(0, 4, (64,), generator=g)
    return [(x[i:i + 8], y[i:i + 8]) for i in range(0, 64, 8)]


def distill_config(**changes):
    return DistillConfig(**{**dict(steps=STEPS, grad_accum=GRAD_ACCUM, lr=1e-2, amp=None, seed=0), **changes})


def qat_model():
    return pycompress.prepare_qat(mlp([8, 16, 4], 2), pycompress.QATConfig())


def ce(out, y):
    return F.cross_entropy(out, y)


class WithSpare(nn.Module):
    """A student with a parameter the loss never reaches (like a BERT pooler under feature distillation)."""

    def __init__(self):
        super().__init__()
        self.body = mlp([8, 16, 4], 1)
        self.spare = nn.Linear(4, 4)

    def forward(self, x):
        return self.body(x)


class Interrupted(Exception):
    pass


class StopAfter:
    def __init__(self, data, limit):
        self.data, self.limit, self.served = data, limit, 0

    def __iter__(self):
        for batch in self.data:
            if self.served == self.limit:
                raise Interrupted
            self.served += 1
            yield batch


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def run(rank, port, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    result = {}
    student = mlp([8, 16, 4], 1)
    result["initial"] = state(student)
    distill(student, teacher(), batches(), distill_config(), progress=False)
    result["distill"] = state(student)

    # Interrupted after 2 of 4 steps (the data raises on every rank at the same batch), then resumed.
    ckpt = Path(out) / "ckpt"
    student = mlp([8, 16, 4], 1)
    config = distill_config(checkpoint_every=2, keep_checkpoints=5)
    try:
        # Each rank reads 2 rounds of WORLD batches per step.
        distill(student, teacher(), StopAfter(batches(), 2 * GRAD_ACCUM * WORLD), config, checkpoint_dir=ckpt,
                progress=False)
    except Interrupted:
        pass
    dist.barrier()
    result["files_after_interrupt"] = sorted(p.name for p in ckpt.iterdir())
    student = mlp([8, 16, 4], 1)
    distill(student, teacher(), batches(), config, checkpoint_dir=ckpt, progress=False)
    result["resumed"] = state(student)

    student = WithSpare()
    result["spare_initial"] = state(student)
    distill(student, teacher(), batches(), distill_config(), progress=False)
    result["spare"] = state(student)

    model = qat_model()
    result["qat_initial"] = state(model)
    train(model, batches(), ce, TrainConfig(steps=STEPS, grad_accum=GRAD_ACCUM, lr=1e-2, amp=None, seed=0),
          progress=False)
    result["qat"] = state(model)
    result["qat_types"] = sorted({type(m).__name__ for m in model.modules()})
    torch.save(result, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    mp.spawn(run, args=(free_port(), sys.argv[1]), nprocs=WORLD)
