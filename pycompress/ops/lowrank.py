"""Fused low-rank GEMM: y = (x v^T) u^T + bias in one kernel.

Op
    lowrank_mm(x [M, K], v [r, K], u [N, r], bias [N]?) -> [M, N] x.dtype
        t = x @ v^T  ([M, r], products summed in float32), rounded to x.dtype (a no-op for float32;
            for float16 / bfloat16 it is the operand precision of the second tensor-core product, and
            what two separate matmuls in that dtype do);
        y = t @ u^T + bias, summed in float32, cast to x.dtype.
    v and u have x's dtype (float32, float16 or bfloat16); bias any float dtype; 1 <= r.
    The fused kernels keep t on chip (registers / shared memory / cache): it is never written to
    global memory.
    Differentiable in x, v, u and bias (the backward is plain PyTorch: dt = dy u, dx = dt v,
    dv = dt^T x, du = dy^T t), so LowRankLinear's factors train through it.

Backends: cpu (csrc/cpu/lowrank.cpp), cuda (csrc/cuda/lowrank.cu), triton (kernels/lowrank.py) and the
reference below.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from pycompress import registry
from pycompress.ops._backends import register_standard, with_direct_path
from pycompress.ops._checks import FLOAT_DTYPES, check_tensor


# ---------------------------------------------------------------------------------------------
# reference


def lowrank_mm_reference(x: Tensor, v: Tensor, u: Tensor, bias: Optional[Tensor]) -> Tensor:
    t = (x.float() @ v.float().T).to(x.dtype).float()
    y = t @ u.float().T
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype)


# ---------------------------------------------------------------------------------------------
# validation


def _check(x, v, u, bias) -> None:
    op = "lowrank_mm"
    check_tensor(op, "x", x, dtypes=FLOAT_DTYPES, shape=(None, None), shape_doc="[M, K]")
    K = x.shape[1]
    if K == 0:
        raise ValueError(f"{op}: x must have K >= 1 columns (got shape {list(x.shape)})")
    check_tensor(op, "v", v, dtypes=(x.dtype,), shape=(None, K),
                 shape_doc="[r, K] with K == x.shape[1], same dtype as x", device=x.device)
    r = v.shape[0]
    if r == 0:
        raise ValueError(f"{op}: v must have rank r >= 1 rows (got shape {list(v.shape)})")
    check_tensor(op, "u", u, dtypes=(x.dtype,), shape=(None, r),
                 shape_doc="[N, r] with r == v.shape[0], same dtype as x", device=x.device)
    if bias is not None:
        check_tensor(op, "bias", bias, dtypes=FLOAT_DTYPES, shape=(u.shape[0],),
                     shape_doc="[N] with N == u.shape[0]", device=x.device)


# ---------------------------------------------------------------------------------------------
# the public op


def _lowrank_mm(x: Tensor, v: Tensor, u: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """y = (x @ v^T) @ u^T + bias with the [M, r] intermediate kept on chip."""
    _check(x, v, u, bias)
    if x.shape[0] == 0 or u.shape[0] == 0:
        return x.new_empty((x.shape[0], u.shape[0]))
    return registry.select("lowrank_mm", registry.device_type(x)).fn(
        x.contiguous(), v.contiguous(), u.contiguous(), None if bias is None else bias.contiguous())


_lowrank_mm_op = torch.library.custom_op("pycompress::lowrank_mm", mutates_args=())(_lowrank_mm)
_lowrank_mm_checked = with_direct_path(_lowrank_mm, _lowrank_mm_op)


def _with_cpu_fast_path(checked):
    """``checked`` (the op's public function) behind a fast path for the common eager CPU call: plain
    tensors (or Parameters) on the CPU, no autograd graph to record, no compile tracing, mode or
    transform, and the native cpu backend already selected for this op. Such a call goes straight to the
    native op, which takes its arguments as they are only when they are valid, contiguous and of its
    dtypes, and raises otherwise; every other call, and every call the native op refuses, goes through
    ``checked``, which validates (naming the argument), converts, selects and runs.

    The conditions are those of ``checked`` (direct_call_ok, registry.select), written as one expression
    over names bound here: after a large GEMM has evicted the interpreter's data from the caches, each
    function call and attribute lookup of the checked path costs microseconds, and that path was measured
    at 10-20% of a (64, 1536, 384) rank-96 call on two CPU threads."""
    from torch._C._functorch import peek_interpreter_stack

    plain = torch.Tensor
    param = torch.nn.Parameter
    is_compiling = torch.compiler.is_compiling
    dispatch_stack = torch._C._len_torch_dispatch_stack
    function_mode = torch._C._is_torch_function_mode_enabled
    grad_enabled = torch.is_grad_enabled
    selected = registry._SELECTED
    impls = registry._IMPLS
    override = registry._override
    env_var = registry.ENV_VAR
    native = getenv = None

    def lowrank_mm(x: Tensor, v: Tensor, u: Tensor, bias: Optional[Tensor] = None) -> Tensor:
        nonlocal native, getenv
        tx, tv, tu = type(x), type(v), type(u)
        if ((tx is plain or tx is param) and (tv is plain or tv is param) and (tu is plain or tu is param)
                and (bias is None or type(bias) is plain or type(bias) is param)
                and not (is_compiling() or dispatch_stack() or function_mode() or peek_interpreter_stack() is not None)
                and not (grad_enabled() and (x.requires_grad or v.requires_grad or u.requires_grad
                                             or (bias is not None and bias.requires_grad)))
                and x.is_cpu and v.is_cpu and u.is_cpu and (bias is None or bias.is_cpu)):
            if native is None:  # resolved on first use: the extension loads lazily
                from pycompress import _native

                if _native._C is None:
                    return checked(x, v, u, bias)
                native = torch.ops.pycompress_C.lowrank_mm.default
                getenv = _native._C.getenv
            impl = selected.get(("lowrank_mm", "cpu", override.get(), getenv(env_var)))
            if impl is not None and impl.backend == "cpu" and impls["lowrank_mm"].get("cpu") is impl:
                try:
                    return native(x, v, u, bias)
                except RuntimeError:
                    pass  # refused: checked names the bad argument, or converts what the kernel does not take
        return checked(x, v, u, bias)

    lowrank_mm.__doc__ = checked.__doc__
    lowrank_mm.__wrapped__ = checked
    return lowrank_mm


lowrank_mm = _with_cpu_fast_path(_lowrank_mm_checked)


@_lowrank_mm_op.register_fake
def _(x, v, u, bias=None):
    _check(x, v, u, bias)
    return x.new_empty((x.shape[0], u.shape[0]))


def _setup_context(ctx, inputs, output) -> None:
    x, v, u, bias = inputs
    ctx.save_for_backward(x, v, u)
    ctx.bias_dtype = None if bias is None else bias.dtype


def _backward(ctx, dy: Tensor):
    x, v, u = ctx.saved_tensors
    dx = dv = du = dbias = None
    dt = dy @ u  # [M, r]
    if ctx.needs_input_grad[0]:
        dx = dt @ v
    if ctx.needs_input_grad[1]:
        dv = dt.T @ x
    if ctx.needs_input_grad[2]:
        du = dy.T @ (x @ v.T)
    if ctx.bias_dtype is not None and ctx.needs_input_grad[3]:
        dbias = dy.sum(0).to(ctx.bias_dtype)
    return dx, dv, du, dbias


_lowrank_mm_op.register_autograd(_backward, setup_context=_setup_context)

register_standard("lowrank_mm", "lowrank", lowrank_mm_reference)
