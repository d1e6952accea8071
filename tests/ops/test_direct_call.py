"""The direct eager path of the public op functions: taken only when no autograd graph, tracing, mode or
transform needs the custom op, and then the same result and the same errors as the custom op."""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import pycompress
from pycompress.ops import codebook as C
from pycompress.ops import lowrank as L
from pycompress.ops._backends import direct_call_ok


def _lowrank_args(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(7, 40, generator=g), torch.randn(5, 40, generator=g), torch.randn(9, 5, generator=g), \
        torch.randn(9, generator=g)


def _codebook_args(seed=0):
    g = torch.Generator().manual_seed(seed)
    idx = C.pack_indices(torch.randint(0, 16, (9, 40), generator=g, dtype=torch.uint8), 4)
    return torch.randn(7, 40, generator=g), idx, torch.randn(9, 16, generator=g), torch.randn(9, generator=g)


def test_conditions():
    x = torch.randn(3, 4)
    w = torch.nn.Parameter(torch.randn(3, 4))
    assert direct_call_ok(x, None, 2)
    assert not direct_call_ok(x, w)  # a parameter that requires grad, grad mode on: autograd needed
    with torch.no_grad():
        assert direct_call_ok(x, w)
    with torch.inference_mode():
        assert direct_call_ok(x, w)
    assert direct_call_ok(x, w.detach())
    with torch.device("cpu"):  # a function mode
        assert not direct_call_ok(x)
    with FakeTensorMode() as mode:
        assert not direct_call_ok(mode.from_tensor(x))
    seen = []
    torch.vmap(lambda row: (seen.append(direct_call_ok(row)), row)[1])(x)
    assert seen == [False]


def _dispatched(fn) -> set:
    """Names of the ops the dispatcher ran during fn()."""
    with torch.autograd.profiler.profile() as prof:
        fn()
    return {event.name for event in prof.function_events}


@pytest.mark.parametrize("op, args", [(L.lowrank_mm, _lowrank_args()), (C.codebook_mm, _codebook_args())])
def test_direct_and_custom_op_agree(op, args):
    name = op.__name__
    with torch.no_grad():
        direct = op(*args)
        ran = _dispatched(lambda: op(*args))
    assert f"pycompress_C::{name}" in ran and f"pycompress::{name}" not in ran
    through_op = getattr(torch.ops.pycompress, name)(*args)
    assert f"pycompress::{name}" in _dispatched(lambda: getattr(torch.ops.pycompress, name)(*args))
    assert torch.equal(direct, through_op)
    # With autograd needed the public function goes through the custom op and records a graph.
    leaf = args[0].clone().requires_grad_()
    assert f"pycompress::{name}" in _dispatched(lambda: op(leaf, *args[1:]))
    y = op(leaf, *args[1:])
    assert y.grad_fn is not None
    assert torch.equal(y.detach(), direct)


def test_direct_path_keeps_the_checks():
    x, v, u, bias = _lowrank_args()
    with torch.no_grad(), pytest.raises(ValueError, match=r"lowrank_mm: u must be float32 of shape \[N, r\]"):
        pycompress.ops.lowrank_mm(x, v, u[:, :4], bias)
    x, idx, codebook, bias = _codebook_args()
    with torch.no_grad(), pytest.raises(ValueError, match="codebook_mm: bias must be"):
        pycompress.ops.codebook_mm(x, idx, codebook, bias[:3])
    with torch.no_grad(), pytest.raises(TypeError, match="lowrank_mm: x must be"):
        pycompress.ops.lowrank_mm("x", v, u, None)


def test_compile_still_sees_the_custom_op():
    x, v, u, bias = _lowrank_args()
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(str(gm.graph))
        return gm

    with torch.no_grad():
        out = torch.compile(pycompress.ops.lowrank_mm, backend=backend, fullgraph=True)(x, v, u, bias)
    assert any("pycompress.lowrank_mm" in g for g in graphs)
    torch.testing.assert_close(out, pycompress.ops.lowrank_mm(x, v, u, bias))
