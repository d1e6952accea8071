"""The training loop of distill() / train(): outputs it understands, its errors, accumulation, mixed
precision, checkpoints and resumption, and the recipe stage."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pycompress.distill import DistillConfig, Distiller, TrainConfig, distill, train, uniform_layer_map
from pycompress.distill.trainer import resolve_amp
from pycompress.recipe import Stage, StageContext
from pycompress.recipe.stages import stage_type


def _mlp(widths, seed, dropout=0.0):
    torch.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers += [nn.ReLU(), nn.Dropout(dropout)] if dropout else [nn.ReLU()]
    return nn.Sequential(*layers)


def _data(n_batches=4, batch=8, features=8, classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_batches * batch, features, generator=g)
    y = torch.randint(0, classes, (n_batches * batch,), generator=g)
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, len(x), batch)]


def _confident_teacher():
    # At initialisation an MLP's logits are nearly flat: a student that fits its argmax labels then drifts
    # away from its soft targets. Scaled up, its soft targets and labels agree, like a trained teacher's.
    teacher = _mlp([8, 32, 4], 0)
    with torch.no_grad():
        teacher[-1].weight.mul_(10.0)
    return teacher


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("kwargs, field", [
    ({"steps": 0}, "steps"), ({"lr": 0.0}, "lr"), ({"grad_accum": 0}, "grad_accum"), ({"amp": "fp8"}, "amp"),
    ({"schedule": "step"}, "schedule"), ({"warmup_steps": 200}, "warmup_steps"), ({"temperature": 0}, "temperature"),
    ({"alpha": -0.1}, "alpha"), ({"layer_map": "every"}, "layer_map"), ({"layer_map": (0, -1)}, "layer_map"),
    ({"feature_weight": -1.0}, "feature_weight"), ({"feature_loss": "l1"}, "feature_loss"),
    ({"checkpoint_every": 0}, "checkpoint_every"), ({"seed": 1.5}, "seed"), ({"max_grad_norm": 0}, "max_grad_norm"),
])
def test_config_validation(kwargs, field):
    with pytest.raises(ValueError, match=f"DistillConfig: {field} (given as teacher layers )?must"):
        DistillConfig(**kwargs)


def test_uniform_layer_map_is_rounded_half_up():
    from fractions import Fraction
    import math

    for ls, lt in ((3, 6), (4, 6), (2, 12), (6, 6), (5, 3), (1, 4)):
        expected = tuple(math.floor(Fraction((i + 1) * lt, ls) + Fraction(1, 2)) - 1 for i in range(ls))
        assert uniform_layer_map(ls, lt) == expected
        assert expected[-1] == lt - 1
    assert uniform_layer_map(4, 6) == (1, 2, 4, 5)  # 1.5 and 4.5 round up, not to even
    with pytest.raises(ValueError, match="layer counts must be ints >= 1"):
        uniform_layer_map(0, 6)


def test_logit_shape_mismatch_raises_at_first_batch_before_any_step(tmp_path):
    student, teacher = _mlp([8, 16, 5], 1), _mlp([8, 16, 10], 0)
    before = _weights(student)
    with pytest.raises(ValueError, match=r"student logits \[8, 5\] and teacher logits \[8, 10\]"):
        distill(student, teacher, _data(), DistillConfig(steps=5, checkpoint_every=1), checkpoint_dir=tmp_path,
                progress=False)
    assert _same(before, _weights(student)) and not list(tmp_path.iterdir())
    assert student.training  # the mode it came in with


def test_logits_against_hidden_states_raises():
    from transformers.modeling_outputs import BaseModelOutput

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(8, 4)

        def forward(self, x):
            return BaseModelOutput(last_hidden_state=self.proj(x))

    with pytest.raises(ValueError, match="the student returns logits and the teacher does not"):
        distill(_mlp([8, 4], 0), Encoder(), [torch.randn(4, 8)], DistillConfig(steps=1), progress=False)
    with pytest.raises(ValueError, match="carry labels but the models return no logits"):
        distill(Encoder(), Encoder(), _data(), DistillConfig(steps=1), progress=False)


def test_bad_arguments_and_data():
    student, teacher = _mlp([8, 4], 1), _mlp([8, 4], 0)
    with pytest.raises(TypeError, match="config must be a DistillConfig"):
        distill(student, teacher, _data(), TrainConfig())
    with pytest.raises(TypeError, match="teacher must be an nn.Module"):
        distill(student, lambda x: x, _data())
    with pytest.raises(TypeError, match="data must be an iterable of batches"):
        distill(student, teacher, 3, DistillConfig(steps=1), progress=False)
    with pytest.raises(ValueError, match="data yielded fewer than 1 batch"):
        distill(student, teacher, [], DistillConfig(steps=1), progress=False)
    with pytest.raises(TypeError, match=r"each batch must be .* \(got tuple of length 3\)"):
        distill(student, teacher, [(torch.randn(2, 8),) * 3], DistillConfig(steps=1), progress=False)
    # A one-shot iterator runs out on the second epoch: a clear error, not a silent early stop.
    with pytest.raises(ValueError, match="must be re-iterable"):
        distill(student, teacher, iter(_data(n_batches=2)), DistillConfig(steps=3), progress=False)
    with pytest.raises(TypeError, match="loss_fn must return a scalar tensor"):
        train(student, _data(), lambda out, y: F.cross_entropy(out, y, reduction="none"), TrainConfig(steps=1),
              progress=False)


def test_teacher_frozen_in_eval_and_modes_restored():
    student, teacher = _mlp([8, 16, 4], 1, dropout=0.5), _mlp([8, 16, 4], 0, dropout=0.5)
    teacher.train()
    student.eval()
    seen = []
    teacher.register_forward_pre_hook(lambda module, args: seen.append((module.training, torch.is_grad_enabled())))
    before = _weights(teacher)
    distill(student, teacher, _data(), DistillConfig(steps=6, lr=1e-2), progress=False)
    assert seen and all(mode == (False, False) for mode in seen)
    assert teacher.training and not student.training
    assert _same(before, _weights(teacher)) and all(p.grad is None for p in teacher.parameters())


def test_kd_with_labels_learns_and_logs_both_terms():
    teacher = _confident_teacher()
    data = [(x, teacher(x).argmax(-1).detach()) for x, _ in _data(n_batches=8)]
    student = _mlp([8, 16, 4], 1)
    distiller = Distiller(student, teacher, DistillConfig(steps=60, lr=1e-2, alpha=0.5, log_every=10))
    distiller.fit(data, progress=False)
    first, last = distiller.history[0], distiller.history[-1]
    assert set(first) == {"step", "loss", "kd", "hard"}
    assert [h["step"] for h in distiller.history] == list(range(10, 61, 10))
    assert last["kd"] < 0.5 * first["kd"] and last["hard"] < first["hard"]


def test_dict_batches_take_labels_out_before_calling_the_model():
    class Net(nn.Module):
        def __init__(self, seed):
            super().__init__()
            self.body = _mlp([8, 16, 4], seed)

        def forward(self, x):  # no labels argument: the loop must not pass them
            return self.body(x)

    data = [{"x": x, "labels": y} for x, y in _data()]
    distiller = Distiller(Net(1), Net(0), DistillConfig(steps=4, log_every=2))
    distiller.fit(data, progress=True)
    assert "hard" in distiller.history[-1]


def test_grad_accum_matches_one_large_batch():
    teacher = _mlp([8, 16, 4], 0)
    small = _data(n_batches=8, batch=4)
    large = [(torch.cat([small[i][0], small[i + 1][0]]), torch.cat([small[i][1], small[i + 1][1]]))
             for i in range(0, 8, 2)]
    a = distill(_mlp([8, 8, 4], 1), teacher, small, DistillConfig(steps=6, grad_accum=2, lr=1e-2), progress=False)
    b = distill(_mlp([8, 8, 4], 1), teacher, large, DistillConfig(steps=6, grad_accum=1, lr=1e-2), progress=False)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
    assert not torch.equal(a[0].weight, _mlp([8, 8, 4], 1)[0].weight)


def test_custom_loss_fn_and_supervised_train():
    teacher = _mlp([8, 16, 4], 0)
    calls = []

    def loss_fn(s_out, t_out, labels):
        calls.append(labels is not None)
        return F.mse_loss(s_out, t_out), {"mse": F.mse_loss(s_out, t_out)}

    distiller = Distiller(_mlp([8, 16, 4], 1), teacher, DistillConfig(steps=30, lr=1e-2, log_every=10), loss_fn=loss_fn)
    distiller.fit(_data(), progress=False)
    assert all(calls) and distiller.history[-1]["mse"] < 0.5 * distiller.history[0]["mse"]

    history = []
    data = _data(n_batches=4, classes=2)
    data = [(x, (x[:, 0] > 0).long()) for x, _ in data]
    model = train(_mlp([8, 16, 2], 2), data, lambda out, y: F.cross_entropy(out, y),
                  TrainConfig(steps=40, lr=1e-2, log_every=10), progress=False, history=history)
    assert isinstance(model, nn.Sequential) and history[-1]["loss"] < 0.7 * history[0]["loss"]  # measured 0.61 -> 0.32


def test_amp_bf16_runs_on_cpu_and_the_loss_decreases():
    teacher = _confident_teacher()
    student = _mlp([8, 16, 4], 1)
    dtypes = set()
    student.register_forward_hook(lambda module, args, out: dtypes.add(out.dtype) if module.training else None)
    distiller = Distiller(student, teacher, DistillConfig(steps=40, lr=1e-2, alpha=1.0, amp="bf16", log_every=10))
    distiller.fit(_data(), progress=False)
    assert dtypes == {torch.bfloat16}
    # Measured: mean KD loss 1.70 over steps 1-10, 0.30 over steps 31-40.
    assert distiller.history[-1]["loss"] < 0.3 * distiller.history[0]["loss"]
    assert all(p.dtype == torch.float32 for p in student.parameters())
    assert resolve_amp("bf16", torch.device("cpu")) == (torch.bfloat16, False)
    assert resolve_amp("fp16", torch.device("cpu")) == (torch.float16, True)
    assert resolve_amp(None, torch.device("cpu")) == (None, False)


class _Interrupted(Exception):
    pass


class _StopAfter:
    """Re-iterable batches that raise after ``limit`` batches in all (a crash in the middle of a run)."""

    def __init__(self, batches, limit):
        self.batches, self.limit, self.served = batches, limit, 0

    def __iter__(self):
        for batch in self.batches:
            if self.served == self.limit:
                raise _Interrupted
            self.served += 1
            yield batch


def test_checkpoint_resume_is_bit_exact(tmp_path):
    teacher = _mlp([8, 32, 4], 0)
    data = _data(n_batches=6)
    config = DistillConfig(steps=8, grad_accum=2, lr=1e-2, schedule="cosine", warmup_steps=2, checkpoint_every=4,
                           keep_checkpoints=1, amp=None, seed=3)
    # Dropout makes the result depend on the RNG state, which the checkpoint must carry.
    whole = distill(_mlp([8, 16, 4], 1, dropout=0.3), teacher, data, config, progress=False)

    student = _mlp([8, 16, 4], 1, dropout=0.3)
    with pytest.raises(_Interrupted):
        distill(student, teacher, _StopAfter(data, limit=4 * 2), config, checkpoint_dir=tmp_path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-00000004.pt"]
    resumed = distill(_mlp([8, 16, 4], 1, dropout=0.3), teacher, data, config, checkpoint_dir=tmp_path,
                      progress=False)
    assert _same(_weights(whole), _weights(resumed))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-00000008.pt"]
    # Without resuming, the interrupted half alone differs from the whole run.
    assert not _same(_weights(whole), _weights(student))

    # A finished run resumes to its final weights without training; another config is refused.
    again = distill(_mlp([8, 16, 4], 1, dropout=0.3), teacher, _StopAfter(data, limit=1), config,
                    checkpoint_dir=tmp_path, progress=False)
    assert _same(_weights(whole), _weights(again))
    with pytest.raises(ValueError, match="another config .*differs in lr"):
        distill(_mlp([8, 16, 4], 1), teacher, data, DistillConfig(**{**config.__dict__, "lr": 1e-3}),
                checkpoint_dir=tmp_path, progress=False)
    fresh = distill(_mlp([8, 16, 4], 1, dropout=0.3), teacher, data, config, checkpoint_dir=tmp_path, resume=False,
                    progress=False)
    assert _same(_weights(whole), _weights(fresh))


transformers = pytest.importorskip("transformers")


def _bert(hidden, layers, heads, seed, attn="eager"):
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=50, hidden_size=hidden, num_hidden_layers=layers,
                                     num_attention_heads=heads, intermediate_size=2 * hidden,
                                     max_position_embeddings=32, attn_implementation=attn)
    return transformers.BertModel(config).eval()


def _token_batches(pad_id=0, seed=0):
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(3):
        ids = torch.randint(1, 50, (6, 10), generator=g)
        mask = torch.ones_like(ids)
        mask[:3, 6:] = 0
        ids[mask == 0] = pad_id
        batches.append({"input_ids": ids, "attention_mask": mask})
    return batches


def test_encoder_distillation_with_projections_and_mapped_layers():
    teacher, student = _bert(32, 4, 4, 0), _bert(16, 2, 2, 1)
    distiller = Distiller(student, teacher, DistillConfig(steps=30, lr=3e-3, layer_map="uniform",
                                                          attention_weight=1.0, log_every=10))
    distiller.fit(_token_batches(), progress=False)
    heads = distiller.heads
    assert sorted(heads) == ["last", "layer0", "layer1"]
    assert all(h.projection.weight.shape == (32, 16) for h in heads.values())
    first, last = distiller.history[0], distiller.history[-1]
    assert set(first) == {"step", "loss", "feat", "layers", "attn"}
    assert last["feat"] < 0.7 * first["feat"] and last["layers"] < 0.7 * first["layers"]


def test_encoder_distillation_ignores_padding():
    # Real tokens never attend to padding and the losses skip padded positions, so the padded ids do not matter.
    results = []
    for pad_id in (0, 7):
        student = _bert(16, 2, 2, 1)
        distill(student, _bert(32, 4, 4, 0), _token_batches(pad_id),
                DistillConfig(steps=5, lr=3e-3, layer_map="uniform"), progress=False)
        results.append(_weights(student))
    for name in results[0]:
        torch.testing.assert_close(results[0][name], results[1][name], rtol=1e-5, atol=1e-6, msg=name)


def test_pruned_student_learns_from_the_layers_it_kept():
    from pycompress.prune.layers import prune_layers_

    teacher = _bert(32, 4, 4, 0)
    student = prune_layers_(copy.deepcopy(teacher), remove=[1, 2])
    distiller = Distiller(student, teacher, DistillConfig(steps=40, lr=3e-3, layer_map=(0, 3), log_every=10))
    distiller.fit(_token_batches(), progress=False)
    assert sorted(distiller.heads) == ["last", "layer0", "layer1"]
    assert not list(distiller.heads.parameters())  # same widths: identity projections
    first, last = distiller.history[0], distiller.history[-1]
    # Measured: last hidden state 0.108 -> 0.065, mapped layers 0.112 -> 0.068 (dropout keeps them above 0).
    assert last["feat"] < 0.75 * first["feat"] and last["layers"] < 0.75 * first["layers"]


def test_attention_distillation_needs_attention_maps():
    with pytest.raises(ValueError, match="needs the student's attentions.*attn_implementation='eager'"):
        distill(_bert(16, 2, 2, 1, attn="sdpa"), _bert(32, 4, 4, 0), _token_batches(),
                DistillConfig(steps=1, layer_map="uniform", attention_weight=1.0), progress=False)
    with pytest.raises(ValueError, match=r"layer_map \(0, 1, 5\) must give one teacher layer in \[0, 4\)"):
        distill(_bert(16, 3, 2, 1), _bert(32, 4, 4, 0), _token_batches(),
                DistillConfig(steps=1, layer_map=(0, 1, 5)), progress=False)


def test_recipe_stage_distils_the_pattern_only():
    registered = stage_type(DistillConfig)
    assert registered is not None and registered.trains
    teacher = _mlp([8, 32, 4], 0)
    student = _mlp([8, 16, 4], 1)
    before = _weights(student)
    config = DistillConfig(steps=10, lr=1e-2, log_every=5)
    with pytest.raises(ValueError, match="needs a teacher"):
        registered.run(student, Stage(config), StageContext(train_data=_data()))
    with pytest.raises(ValueError, match="needs training batches"):
        registered.run(student, Stage(config, name="kd"), StageContext(teacher=teacher))
    with pytest.raises(ValueError, match="pattern 'head' matches no module"):
        registered.run(student, Stage(config, pattern="head"), StageContext(teacher=teacher, train_data=_data()))
    summary = registered.run(student, Stage(config, pattern="2"),
                             StageContext(teacher=teacher, train_data=_data(), progress=False))
    after = _weights(student)
    assert summary["steps"] == 10 and summary["final_loss"] > 0
    assert torch.equal(before["0.weight"], after["0.weight"]) and not torch.equal(before["2.weight"], after["2.weight"])
    assert all(p.requires_grad for p in student.parameters())
