"""scikit-learn's bundled digits data set (8x8 images, 10 classes) for small training experiments,
with a minimal classifier training loop and accuracy measure."""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn


@dataclasses.dataclass(frozen=True)
class Split:
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor


def load_digits_split(test_fraction: float = 0.25, seed: int = 0, image: bool = False) -> Split:
    """Digits as float32 tensors, standardised per pixel with training statistics; ``image=True``
    gives [N, 1, 8, 8] inputs for CNNs, else [N, 64]."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise ImportError("the digits experiments need scikit-learn: pip install scikit-learn") from exc
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32)
    y = torch.tensor(data.target, dtype=torch.int64)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_test = int(len(x) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    mean, std = x[train].mean(0), x[train].std(0).clamp(min=1.0)
    x = (x - mean) / std
    if image:
        x = x.view(-1, 1, 8, 8)
    return Split(x[train], y[train], x[test], y[test])


def train_classifier(model: nn.Module, split: Split, *, epochs: int = 30, lr: float = 1e-2, batch_size: int = 64,
                     seed: int = 0, optimizer: str = "adam") -> nn.Module:
    """Cross-entropy training with a fixed seed; returns the model in eval mode."""
    g = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=lr) if optimizer == "adam" else torch.optim.SGD(params, lr=lr, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    model.train()
    n = len(split.x_train)
    for _ in range(epochs):
        order = torch.randperm(n, generator=g)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            loss = nn.functional.cross_entropy(model(split.x_train[idx]), split.y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, split: Split) -> float:
    """Top-1 accuracy on the test part."""
    return (model(split.x_test).argmax(-1) == split.y_test).float().mean().item()
