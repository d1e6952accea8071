"""distill() and train() under DistributedDataParallel: two CPU ranks (gloo) end with identical weights,
equal to one process training on the same batches, resume bit-exactly from rank 0's checkpoint, and train
a QAT model (prepare_qat) the same way."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from pycompress.distill import distill, train

WORKER = Path(__file__).with_name("ddp_worker.py")

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="needs torch.distributed with the gloo backend")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(WORKER), str(out)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)], out


def _equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _single_process(build_and_train):
    # One process, the same 8 batches, the 2 ranks' 2 micro-batches of a step as 4 micro-batches: DDP
    # averages the ranks' gradients, so the result matches up to the order of float sums.
    sys.path.insert(0, str(WORKER.parent))
    try:
        import ddp_worker
    finally:
        sys.path.remove(str(WORKER.parent))
    torch.set_num_threads(1)
    return build_and_train(ddp_worker)


def test_ranks_end_identical_and_match_one_process(ranks):
    (r0, r1), _ = ranks
    assert _equal(r0["distill"], r1["distill"])
    assert not torch.equal(r0["distill"]["0.weight"], r0["initial"]["0.weight"])

    def single(w):
        student = w.mlp([8, 16, 4], 1)
        assert _equal(student.state_dict(), r0["initial"])
        distill(student, w.teacher(), w.batches(), w.distill_config(grad_accum=2 * w.GRAD_ACCUM), progress=False)
        return student.state_dict()

    expected = _single_process(single)
    for name, value in expected.items():
        torch.testing.assert_close(r0["distill"][name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_resume_under_ddp_is_bit_exact_and_only_rank_0_writes(ranks):
    (r0, r1), out = ranks
    assert r0["files_after_interrupt"] == r1["files_after_interrupt"] == ["checkpoint-00000002.pt"]
    assert sorted(p.name for p in (out / "ckpt").iterdir()) == ["checkpoint-00000002.pt", "checkpoint-00000004.pt"]
    checkpoint = torch.load(out / "ckpt" / "checkpoint-00000004.pt", weights_only=True)
    assert len(checkpoint["rng"]) == 2 and not torch.equal(checkpoint["rng"][0]["cpu"], checkpoint["rng"][1]["cpu"])
    assert _equal(r0["resumed"], r0["distill"]) and _equal(r1["resumed"], r1["distill"])


def test_parameters_without_gradient_under_ddp(ranks):
    # Without find_unused_parameters DDP fails at the second step ("Expected to have finished reduction in the
    # prior iteration"): the spare layer's gradient never arrives.
    (r0, r1), _ = ranks
    assert _equal(r0["spare"], r1["spare"])
    assert torch.equal(r0["spare"]["spare.weight"], r0["spare_initial"]["spare.weight"])
    assert torch.equal(r0["spare"]["body.0.weight"], r0["distill"]["0.weight"])


def test_qat_under_ddp(ranks):
    (r0, r1), _ = ranks
    assert "FakeQuantLinear" in r0["qat_types"]
    assert _equal(r0["qat"], r1["qat"])
    assert not torch.equal(r0["qat"]["0.weight"], r0["qat_initial"]["0.weight"])

    def single(w):
        import torch.nn.functional as F

        model = w.qat_model()
        train(model, w.batches(), lambda out, y: F.cross_entropy(out, y),
              w.TrainConfig(steps=w.STEPS, grad_accum=2 * w.GRAD_ACCUM, lr=1e-2, amp=None, seed=0), progress=False)
        return model.state_dict()

    for name, value in _single_process(single).items():
        torch.testing.assert_close(r0["qat"][name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_fsdp2_sharded_student_is_refused(tmp_path):
    from torch import nn
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from pycompress.distill import DistillConfig

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        student = nn.Sequential(nn.Linear(8, 4))
        fully_shard(student, mesh=init_device_mesh("cpu", (1,)))
        with pytest.raises(ValueError, match="sharded with FSDP"):
            distill(student, nn.Linear(8, 4), [torch.randn(2, 8)], DistillConfig(steps=1), progress=False)
    finally:
        dist.destroy_process_group()
