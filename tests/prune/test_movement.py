"""Movement pruning: the score update, the schedule, the masks, and fine-tuning on digits."""

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import prune as torch_prune

from pycompress.prune import MovementPruner, PruneConfig, make_permanent, prune_, scheduled_sparsity, sparsity_report


def test_scores_accumulate_minus_weight_times_straight_through_gradient():
    torch.manual_seed(0)
    layer = nn.Linear(6, 4)
    torch_prune.random_unstructured(layer, "weight", amount=0.25)
    pruner = MovementPruner(layer, PruneConfig(0.5, method="movement"), steps=4)
    expected = torch.zeros(4, 6)
    for step in range(1, 3):
        x, target = torch.randn(8, 6), torch.randn(8, 4)
        # the gradient with respect to the masked weight, as if the mask were the identity
        masked = (layer.weight_orig * layer.weight_mask).detach().requires_grad_()
        F.mse_loss(F.linear(x, masked, layer.bias), target).backward()
        expected -= layer.weight_orig.detach() * masked.grad
        F.mse_loss(layer(x), target).backward()
        pruner.step()
        torch.testing.assert_close(pruner.scores[""], expected)
        layer.zero_grad()
    # pruned weights still get a score (they could come back)
    assert (pruner.scores[""][~layer.weight_mask.bool()] != 0).any()


def test_schedule_masks_and_warmup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    pruner = MovementPruner(model, PruneConfig(0.8, method="movement"), steps=5, warmup=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(1, 10):
        F.mse_loss(model(torch.randn(16, 16)), torch.randn(16, 8)).backward()
        opt.step()
        pruner.step()
        opt.zero_grad()
        target = scheduled_sparsity(min(max(step - 2, 0), 5), 5, 0.8)
        assert pruner.sparsity(step) == pytest.approx(target)
        for name in ("0", "2"):
            layer = model.get_submodule(name)
            assert int((layer.weight_mask == 0).sum()) == round(target * layer.weight.numel())
            # pruned weights are zero in the weight the forward pass uses, and the mask is the top scores
            assert (layer.weight[layer.weight_mask == 0] == 0).all()
            kept = layer.weight_mask.bool()
            if 0 < kept.sum() < kept.numel():
                assert pruner.scores[name][kept].min() >= pruner.scores[name][~kept].max()
    assert sparsity_report(model)["total"] == pytest.approx(0.8, abs=0.01)


def test_global_scope_and_earlier_masks_stay():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))
    torch_prune.l1_unstructured(model[2], "weight", amount=0.5)
    before = model[2].weight_mask.bool().clone()
    pruner = MovementPruner(model, PruneConfig(0.6, method="movement", scope="global"), steps=3)
    for _ in range(3):
        F.mse_loss(model(torch.randn(16, 16)), torch.randn(16, 8)).backward()
        pruner.step()
        model.zero_grad()
    masks = [model[0].weight_mask, model[2].weight_mask]
    assert int(sum((m == 0).sum() for m in masks)) == round(0.6 * sum(m.numel() for m in masks))
    assert not model[2].weight_mask.bool()[~before].any()
    pruner.remove()
    make_permanent(model)
    assert not hasattr(model[0], "weight_orig") and sparsity_report(model)["total"] == pytest.approx(0.6, abs=0.01)


def test_movement_errors():
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(ValueError, match="MovementPruner: config.method must be 'movement' \\(got 'magnitude'\\)"):
        MovementPruner(model, PruneConfig(0.5), steps=10)
    with pytest.raises(ValueError, match="MovementPruner: steps must be a positive int \\(got 0\\)"):
        MovementPruner(model, PruneConfig(0.5, method="movement"), steps=0)
    with pytest.raises(ValueError, match="schedule must be one of agp, iterative"):
        MovementPruner(model, PruneConfig(0.5, method="movement"), steps=10, schedule="cosine")
    with pytest.raises(TypeError, match="config must be a PruneConfig"):
        MovementPruner(model, {"sparsity": 0.5}, steps=10)
    with pytest.raises(ValueError, match="method='movement' supports structure='unstructured' only"):
        PruneConfig(0.5, method="movement", structure="nm")
    with pytest.raises(ValueError, match=r"scores weights while fine-tuning; call MovementPruner\(model, config"):
        prune_(model, PruneConfig(0.5, method="movement"))
    pruner = MovementPruner(model, PruneConfig(0.5, method="movement"), steps=10)
    with pytest.raises(ValueError, match="layer 0 has no gradient; call step\\(\\) after loss.backward\\(\\)"):
        pruner.step()
    model(torch.randn(2, 4)).sum().backward()
    pruner.step()
    with pytest.raises(ValueError, match="layer 0 has no gradient"):
        pruner.step()
    with torch.no_grad():
        model(torch.randn(2, 4))
    with pytest.raises(ValueError, match="layer 0 has no gradient"):
        pruner.step()
    pruner.remove()
    with pytest.raises(ValueError, match="the pruner was removed"):
        pruner.step()


@pytest.fixture(scope="module")
def digits():
    pytest.importorskip("sklearn")
    from pycompress.data.digits import accuracy, load_digits_split, train_classifier

    split = load_digits_split(seed=0)
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    return split, train_classifier(mlp, split, epochs=20, seed=0), accuracy


def _fine_tune_with_movement(model, split, sparsity, epochs=8, batch_size=64):
    """Adam fine-tuning; one epoch of warm-up, the cubic ramp over five, two more at the final sparsity."""
    per_epoch = -(-len(split.x_train) // batch_size)
    pruner = MovementPruner(model, PruneConfig(sparsity, method="movement"), steps=5 * per_epoch, warmup=per_epoch)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(split.x_train), generator=g)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            F.cross_entropy(model(split.x_train[idx]), split.y_train[idx]).backward()
            opt.step()
            pruner.step()
            opt.zero_grad()
    pruner.remove()
    return model.eval()


def test_digits_movement_pruning_keeps_accuracy(digits):
    split, dense, accuracy = digits
    dense_accuracy = accuracy(dense, split)
    # measured: dense 0.973; movement 90% 0.978, 95% 0.960 (one-shot magnitude: 0.820, 0.428)
    for sparsity, floor in ((0.9, dense_accuracy - 0.01), (0.95, 0.94)):
        model = _fine_tune_with_movement(copy.deepcopy(dense), split, sparsity)
        assert sparsity_report(model)["total"] == pytest.approx(sparsity, abs=0.005)
        assert accuracy(model, split) >= floor, sparsity
        magnitude = prune_(copy.deepcopy(dense), PruneConfig(sparsity))
        assert accuracy(model, split) > accuracy(magnitude, split) + 0.1
