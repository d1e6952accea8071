"""Pruning criteria, structures, schedules and masks, on digits with fixed seeds."""

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from pycompress.data.digits import accuracy, load_digits_split, train_classifier
from pycompress.prune import PruneConfig, make_permanent, prune_, prune_gradually, scheduled_sparsity, sparsity_report

pytest.importorskip("sklearn")


@pytest.fixture(scope="module")
def split():
    return load_digits_split(seed=0)


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))


@pytest.fixture(scope="module")
def dense(split):
    return train_classifier(_mlp(), split, epochs=20, seed=0)


def test_magnitude_beats_random_at_equal_sparsity(dense, split):
    for sparsity in (0.7, 0.85):
        magnitude = prune_(copy.deepcopy(dense), PruneConfig(sparsity))
        random = prune_(copy.deepcopy(dense), PruneConfig(sparsity, method="random"))
        assert sparsity_report(magnitude)["total"] == pytest.approx(sparsity, abs=0.01)
        assert sparsity_report(random)["total"] == pytest.approx(sparsity, abs=0.01)
        assert accuracy(magnitude, split) > accuracy(random, split) + 0.05


def test_gradual_pruning_to_90_percent_within_one_point(dense, split):
    model = copy.deepcopy(dense)

    def finetune(m, step):
        train_classifier(m, split, epochs=3, lr=1e-3, seed=step)

    prune_gradually(model, PruneConfig(0.9), steps=8, schedule="agp", finetune=finetune)
    assert sparsity_report(model)["total"] == pytest.approx(0.9, abs=0.01)
    assert accuracy(model, split) >= accuracy(dense, split) - 0.01
    make_permanent(model)
    assert not any(hasattr(m, "weight_mask") for m in model.modules())
    assert sparsity_report(model)["total"] == pytest.approx(0.9, abs=0.01)


def test_masks_hold_through_optimizer_steps(dense, split):
    model = prune_(copy.deepcopy(dense), PruneConfig(0.5, scope="global"))
    zero_before = [m.weight == 0 for m in model if isinstance(m, nn.Linear)]
    train_classifier(model, split, epochs=1, lr=1e-2)
    zero_after = [m.weight == 0 for m in model if isinstance(m, nn.Linear)]
    for before, after in zip(zero_before, zero_after):
        assert after[before].all()


def test_taylor_needs_data_and_prunes(dense, split):
    with pytest.raises(ValueError, match="method='taylor' needs data"):
        prune_(copy.deepcopy(dense), PruneConfig(0.5, method="taylor"))
    batches = [(split.x_train[i:i + 128], split.y_train[i:i + 128]) for i in range(0, 512, 128)]
    model = prune_(copy.deepcopy(dense), PruneConfig(0.7, method="taylor"), data=batches,
                   loss_fn=nn.functional.cross_entropy)
    random = prune_(copy.deepcopy(dense), PruneConfig(0.7, method="random"))
    assert sparsity_report(model)["total"] == pytest.approx(0.7, abs=0.01)
    assert accuracy(model, split) > accuracy(random, split)


def test_structures(dense):
    rows = prune_(copy.deepcopy(dense), PruneConfig(0.5, structure="ln", norm=1, dim=0))
    w = rows[0].weight
    zero_rows = (w == 0).all(dim=1)
    assert zero_rows.sum().item() == 128 and ((w != 0).any(dim=1) | zero_rows).all()
    cols = prune_(copy.deepcopy(dense), PruneConfig(0.25, structure="ln", dim=1))
    assert (cols[2].weight == 0).all(dim=0).sum().item() == 64
    nm = prune_(copy.deepcopy(dense), PruneConfig(0.5, structure="nm"))
    groups = (nm[2].weight != 0).reshape(-1, 4).sum(dim=1)
    assert (groups <= 2).all() and sparsity_report(nm)[str(2)] == pytest.approx(0.5)


def test_interoperates_with_torch_prune(dense):
    model = copy.deepcopy(dense)
    torch_prune.l1_unstructured(model[0], "weight", amount=0.3)
    assert sparsity_report(model)["0"] == pytest.approx(0.3, abs=0.01)
    prune_(model, PruneConfig(0.6))
    assert sparsity_report(model)["0"] == pytest.approx(0.6, abs=0.01)
    make_permanent(model)
    assert not hasattr(model[0], "weight_orig") and sparsity_report(model)["0"] == pytest.approx(0.6, abs=0.01)


def test_schedule_and_errors():
    assert scheduled_sparsity(0, 10, 0.9) == 0.0 and scheduled_sparsity(10, 10, 0.9) == pytest.approx(0.9)
    assert scheduled_sparsity(5, 10, 0.9) == pytest.approx(0.9 * (1 - 0.5**3))
    assert scheduled_sparsity(5, 10, 0.9, "iterative") == pytest.approx(0.45)
    with pytest.raises(ValueError, match=r"PruneConfig: sparsity must be a number in \[0, 1\) \(got 1.0\)"):
        PruneConfig(1.0)
    with pytest.raises(ValueError, match="PruneConfig: method must be one of magnitude, random, taylor"):
        PruneConfig(0.5, method="obd")
    with pytest.raises(ValueError, match="scope='global' applies to structure='unstructured' only"):
        PruneConfig(0.5, structure="nm", scope="global")
    with pytest.raises(ValueError, match="schedule must be one of agp, iterative"):
        scheduled_sparsity(1, 2, 0.5, "cosine")
    with pytest.raises(ValueError, match="nm_mask: the last dimension \\(6\\) must be a multiple of m = 4"):
        prune_(nn.Sequential(nn.Linear(6, 2)), PruneConfig(0.5, structure="nm"))


@pytest.mark.parametrize("scope, dim", [("row", 1), ("column", 0)])
def test_row_and_column_scopes(scope, dim):
    """Every output row (input column) loses the same number of weights: its smallest."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, 24), nn.Conv2d(3, 8, 3))
    original = [m.weight.detach().abs().reshape(m.weight.shape[0], -1).clone() for m in model]
    prune_(model, PruneConfig(0.25, scope=scope))
    for module, magnitude in zip(model, original):
        pruned = module.weight.detach().reshape(module.weight.shape[0], -1) == 0
        zeros = pruned.sum(dim)
        assert torch.equal(zeros, torch.full_like(zeros, round(0.25 * pruned.shape[dim])))
        largest_pruned = torch.where(pruned, magnitude, -1.0).amax(dim)
        smallest_kept = torch.where(pruned, float("inf"), magnitude).amin(dim)
        assert (largest_pruned <= smallest_kept).all()
