"""Physical structured pruning: channels, attention heads and FFN neurons are removed for real, so the
dense layers shrink (fewer parameters and multiply-accumulates) and the model's output shape stays.

Channels, on a generic nn.Module traced with torch.fx:
    A producer (nn.Linear, or nn.Conv1d/2d/3d with groups == 1) with C output channels loses channel c:
    row c of its weight and entry c of its bias. Following its output to the layers that read it:
    BatchNorm loses entry c of its weight, bias and running statistics; a depthwise conv loses its
    filter c; elementwise ops (activations, dropout, scalar arithmetic), pooling and reductions over
    other dims pass c through; a flatten or reshape of [..., C, *S] into [..., C * prod(S)] maps c to
    the feature block [c * prod(S), (c + 1) * prod(S)); each consumer (nn.Linear, nn.ConvNd with
    groups == 1) loses the input columns of c. Anything else on the way (a residual add, a concat,
    LayerNorm over the channels, a reshape that mixes channels, an op torch.fx records but this
    tracer does not know, the model's output) makes the producer unprunable, with that reason.
Heads, on BERT-style attention (``attn.self.query/key/value`` and ``attn.output.dense``):
    head h of size d is rows [h*d, (h+1)*d) of query, key and value and the same columns of
    output.dense; ``num_attention_heads`` and ``all_head_size`` follow.
FFN neurons, on BERT-style layers (``layer.intermediate.dense`` -> activation -> ``layer.output.dense``):
    neuron j is row j of intermediate.dense and column j of output.dense.

Importance (the lowest scores go): the Ln norm of a unit's weights, a user's scores, or, for heads and
FFN neurons, calibration statistics of the unit's contribution to the block's output (head h: the
mean over real tokens of ||ctx_h W_o[:, h]^T||; neuron j: sqrt(E[a_j^2]) * ||W_out[:, j]||). With
calibration data the removed units' mean contribution is folded into the output projection's bias
(b += W_out[:, removed] E[a_removed]), so that the block's output keeps its mean.
Per layer, round((1 - amount) * n) units are kept, at least 1, rounded to a multiple of ``round_to``
where asked. Parameters are replaced by smaller ones: optimizers built before pruning must be rebuilt.
"""

from __future__ import annotations

from collections.abc import Mapping
import contextlib
import dataclasses
import logging
import math
import operator
from collections import Counter
from typing import Iterable, Optional

import torch
from torch import Tensor, nn
from torch.fx import Node
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn import functional as F
from torch.nn.modules.batchnorm import _BatchNorm

log = logging.getLogger("pycompress")

TARGETS = ("channels", "heads", "ffn")
IMPORTANCES = ("norm", "data")

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.GELU, nn.SiLU, nn.Mish, nn.ELU, nn.CELU, nn.SELU, nn.Sigmoid,
    nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus, nn.Identity, nn.Dropout, nn.Dropout1d,
    nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
)
_POOL_MODULES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)
_ELEMENTWISE_FUNCTIONS = {
    F.relu, torch.relu, F.relu6, F.leaky_relu, F.gelu, F.silu, F.mish, F.elu, F.celu, F.selu, F.hardswish,
    F.hardsigmoid, F.hardtanh, F.softplus, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, torch.sigmoid,
    torch.tanh, F.sigmoid, F.tanh, torch.abs, torch.neg, operator.neg,
}
_POOL_FUNCTIONS = {
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool1d, F.adaptive_max_pool2d,
    F.adaptive_max_pool3d,
}
# Arithmetic with numbers keeps channels apart; with another tensor (a residual add) it does not.
_ARITHMETIC_FUNCTIONS = {operator.add, operator.sub, operator.mul, operator.truediv, torch.add, torch.sub,
                         torch.mul, torch.div}
_ELEMENTWISE_METHODS = {"relu", "sigmoid", "tanh", "abs", "neg", "contiguous", "clone", "detach"}
_ARITHMETIC_METHODS = {"add", "sub", "mul", "div"}
_RESHAPE_METHODS = {"view", "reshape", "flatten"}
_REDUCTION_METHODS = {"mean", "sum", "amax"}
_REDUCTION_FUNCTIONS = {torch.mean, torch.sum, torch.amax}
_METADATA_ATTRIBUTES = {"dtype", "device", "ndim", "is_cuda"}


@dataclasses.dataclass(frozen=True)
class StructuredPruneConfig:
    """Physical structured pruning of ``target`` (channels | heads | ffn): the fraction ``amount`` of
    units per layer removed, ranked by the Ln norm (``norm``) of their weights or, with
    ``importance="data"``, by calibration statistics (heads and ffn); kept counts are rounded to a
    multiple of ``round_to`` (channels and ffn)."""

    amount: float
    norm: float = 2.0
    target: str = "channels"
    round_to: int = 1
    importance: str = "norm"

    def __post_init__(self):
        _check_amount("StructuredPruneConfig", self.amount)
        _check_norm("StructuredPruneConfig", self.norm)
        _check_round_to("StructuredPruneConfig", self.round_to)
        if self.target not in TARGETS:
            raise ValueError(f"StructuredPruneConfig: target must be one of {', '.join(TARGETS)} (got {self.target!r})")
        if self.importance not in IMPORTANCES:
            raise ValueError(f"StructuredPruneConfig: importance must be one of {', '.join(IMPORTANCES)} "
                             f"(got {self.importance!r})")
        if self.target == "channels" and self.importance != "norm":
            raise ValueError("StructuredPruneConfig: target='channels' ranks channels by weight norm; use importance='norm'")
        if self.target == "heads" and self.round_to != 1:
            raise ValueError("StructuredPruneConfig: round_to applies to target='channels' or 'ffn', not 'heads'")


def structured_prune_(model: nn.Module, config: StructuredPruneConfig, *, example_inputs=None,
                      data: Optional[Iterable] = None) -> nn.Module:
    """Apply ``config`` to ``model`` in place and return it. ``example_inputs`` (channels) are the
    inputs of one forward, used to trace shapes; ``data`` (importance="data") are calibration batches."""
    if not isinstance(config, StructuredPruneConfig):
        raise TypeError(f"structured_prune_: config must be a StructuredPruneConfig (got {type(config).__name__})")
    if config.target == "channels":
        if example_inputs is None:
            raise ValueError("structured_prune_: target='channels' needs example_inputs (the inputs of one forward)")
        return prune_channels_(model, config.amount, example_inputs=example_inputs, norm=config.norm,
                               round_to=config.round_to)
    if config.importance == "data" and data is None:
        raise ValueError("structured_prune_: importance='data' needs data (calibration batches)")
    calibration = data if config.importance == "data" else None
    if config.target == "heads":
        return prune_heads_(model, config.amount, data=calibration, norm=config.norm)
    return prune_ffn_(model, config.amount, data=calibration, norm=config.norm, round_to=config.round_to)


# ---------------------------------------------------------------------------------------------------
# Shared helpers


def _check_amount(fn: str, amount) -> None:
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not 0.0 <= amount < 1.0:
        raise ValueError(f"{fn}: amount must be a number in [0, 1), the fraction of units removed per layer "
                         f"(got {amount!r})")


def _check_norm(fn: str, norm) -> None:
    if isinstance(norm, bool) or not isinstance(norm, (int, float)) or not norm > 0:
        raise ValueError(f"{fn}: norm must be a positive number (1, 2, math.inf, ...) (got {norm!r})")


def _check_round_to(fn: str, round_to) -> None:
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise ValueError(f"{fn}: round_to must be a positive int (got {round_to!r})")


def kept_count(n: int, amount: float, round_to: int = 1) -> int:
    """Units kept out of ``n``: round((1 - amount) * n) (the count ln_structured_mask keeps), at least
    1, then the nearest multiple of ``round_to`` (ties up; at least ``round_to``, at most ``n``)."""
    keep = max(1, int(round((1.0 - amount) * n)))
    if round_to > 1:
        keep = min(n, max(round_to, round_to * math.floor(keep / round_to + 0.5)))
    return keep


def _keep_indices(score: Tensor, keep: int) -> Tensor:
    # Sorted so that the surviving units keep their order.
    return torch.topk(score.detach().float(), keep, sorted=False).indices.sort().values


def _block_index(keep: Tensor, block: int) -> Tensor:
    """Indices [c*block, (c+1)*block) for every kept channel c, in order."""
    return (keep[:, None] * block + torch.arange(block, device=keep.device)).flatten()


def _slice_(module: nn.Module, name: str, index: Tensor, dim: int) -> None:
    """Replace ``module.<name>`` (a parameter or buffer; skipped when None) by its slice along ``dim``."""
    tensor = getattr(module, name)
    if tensor is None:
        return
    sliced = tensor.detach().index_select(dim, index.to(tensor.device))
    if isinstance(tensor, nn.Parameter):
        setattr(module, name, nn.Parameter(sliced, requires_grad=tensor.requires_grad))
    else:
        setattr(module, name, sliced)


def _check_plain(fn: str, name: str, module: nn.Module) -> None:
    if hasattr(module, "weight_orig") or torch.nn.utils.parametrize.is_parametrized(module):
        raise ValueError(f"{fn}: {name!r} carries a pruning mask or parametrization; fold it into the weight first "
                         "(pycompress.prune.make_permanent)")


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    """Eval mode and no autograd for measuring forwards: BatchNorm must not update its statistics."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, mode in modes:
            m.training = mode


def _forward_batch(model: nn.Module, batch):
    """``model(**batch)`` for a dict (a Hugging Face batch), ``model(*batch)`` for a tuple or list,
    else ``model(batch)``."""
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def _token_mask(batch, shape) -> Optional[Tensor]:
    """The batch's ``attention_mask`` as booleans when it matches the leading dims ``shape`` of a
    hidden state (so that padding tokens are left out of statistics), else None (every token counts)."""
    if isinstance(batch, Mapping) and isinstance(batch.get("attention_mask"), Tensor):
        mask = batch["attention_mask"]
        if tuple(mask.shape) == tuple(shape):
            return mask.bool()
    return None


def count_params(model: nn.Module) -> int:
    """Number of parameters (shared parameters once)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, example_inputs) -> int:
    """Multiply-accumulates of the nn.Linear and nn.ConvNd layers in one forward on ``example_inputs``
    (a tensor, a tuple of positional inputs or a dict of keyword inputs): output elements times
    ``in_features`` for a Linear, output elements times ``in_channels / groups * prod(kernel_size)`` for a
    conv. Attention score matmuls, norms and activations are not counted. FLOPs are about 2x MACs."""
    total = 0

    def hook(module, args, output):
        nonlocal total
        if isinstance(module, nn.Linear):
            total += output.numel() * module.in_features
        else:
            total += output.numel() * module.in_channels // module.groups * math.prod(module.kernel_size)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Linear,) + _CONVS)]
    try:
        with _eval_mode(model):
            _forward_batch(model, example_inputs)
    finally:
        for h in handles:
            h.remove()
    return total


# ---------------------------------------------------------------------------------------------------
# Channels


@dataclasses.dataclass
class ChannelGroup:
    """What removing output channels of ``producer`` touches. Consumers are (name, block): channel c is
    the consumer's input features [c*block, (c+1)*block)."""

    producer: str
    channels: int
    norms: list = dataclasses.field(default_factory=list)
    depthwise: list = dataclasses.field(default_factory=list)
    consumers: list = dataclasses.field(default_factory=list)


class _Unprunable(Exception):
    """Why one producer's channels cannot be removed (collected per producer, raised as ValueError)."""


def _is_producer(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (isinstance(module, _CONVS) and module.groups == 1)


def _is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, _CONVS) and module.groups == module.in_channels == module.out_channels > 1


def _shape(node: Node) -> tuple:
    meta = node.meta.get("tensor_meta")
    if meta is None or not hasattr(meta, "shape"):
        raise _Unprunable(f"{node.name} is not a single tensor with a known shape")
    return tuple(meta.shape)


def _as_args(example_inputs) -> tuple:
    if isinstance(example_inputs, Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)) and all(isinstance(x, Tensor) for x in example_inputs):
        return tuple(example_inputs)
    raise TypeError("prune_channels_: example_inputs must be a tensor or a tuple of tensors, the positional inputs "
                    f"of one forward (got {type(example_inputs).__name__})")


def _reshaped(src: tuple, out: tuple, dim: int, block: int, what: str) -> tuple[int, int]:
    """(dim, block) of the channels after reshaping ``src`` into ``out``."""
    tail = src[dim:]
    if len(out) >= len(tail) and out[len(out) - len(tail):] == tail:
        # The channel dim and all after it unchanged: only leading dims merged or split.
        return len(out) - len(tail), block
    if out[:dim] == src[:dim] and len(out) == dim + 1:
        # The channel dim flattened with all after it: channel c becomes a contiguous block.
        return dim, block * math.prod(src[dim + 1:])
    raise _Unprunable(f"{what} reshapes {list(src)} to {list(out)}, which does not keep channel dim {dim} "
                      "as whole blocks")


def _reduced(node: Node, ndim: int, dim: int) -> int:
    """The channel dim after a mean/sum/amax over other dims."""
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
    if dims is None:
        raise _Unprunable(f"{node.name} reduces over every dim, channels included")
    dims = [d % ndim for d in ((dims,) if isinstance(dims, int) else dims)]
    if dim in dims:
        raise _Unprunable(f"{node.name} reduces over the channel dim {dim}")
    return dim if keepdim else dim - sum(d < dim for d in dims)


def _only_input(user: Node, src: Node) -> None:
    others = [n.name for n in user.all_input_nodes if n is not src]
    if others:
        raise _Unprunable(f"{user.name} combines it with {', '.join(others)} (e.g. a residual add); both sides "
                          "would need the same channels removed")


def _channel_query_users(node: Node, dim: int) -> None:
    """``x.shape`` is harmless when only other dims are read from it."""
    for user in node.users:
        if not (user.op == "call_function" and user.target is operator.getitem and isinstance(user.args[1], int)
                and user.args[1] % len(_shape(node.args[0])) != dim):
            raise _Unprunable(f"{node.name} reads the shape and may use the channel count")


def _step(user: Node, src: Node, dim: int, block: int, model: nn.Module, calls: Counter,
          group: ChannelGroup) -> list:
    """Where the channels of ``src`` (channel dim ``dim``, feature blocks of ``block``) go in ``user``:
    the (node, dim, block) to follow further; consumers, norms and depthwise convs are added to group."""
    shape = _shape(src)
    if user.op == "output":
        raise _Unprunable("its channels reach the model's output (pruning would change the output shape)")
    if user.op == "call_module":
        module = model.get_submodule(user.target)
        kind = f"{user.target} ({type(module).__name__})"
        stateful = _is_producer(module) or _is_depthwise(module) or isinstance(module, _BatchNorm)
        if stateful and calls[user.target] > 1:
            raise _Unprunable(f"it feeds {kind}, which is called {calls[user.target]} times (shared weights)")
        if stateful:
            _only_input(user, src)
        if isinstance(module, nn.Linear):
            if dim != len(shape) - 1:
                raise _Unprunable(f"it feeds {kind} with its channels on dim {dim}, not the last dim")
            group.consumers.append((user.target, block))
            return []
        if isinstance(module, _CONVS) and (module.groups == 1 or _is_depthwise(module)):
            if dim != 1 or block != 1:
                raise _Unprunable(f"it feeds {kind} with its channels on dim {dim}, not dim 1")
            if module.groups == 1:
                group.consumers.append((user.target, 1))
                return []
            group.depthwise.append(user.target)
            return [(user, 1, 1)]
        if isinstance(module, _CONVS):
            raise _Unprunable(f"it feeds the grouped convolution {kind} (groups={module.groups}), which mixes the "
                              "channels of each group; only depthwise convs (groups == in == out channels) are "
                              "supported")
        if isinstance(module, _BatchNorm):
            if dim != 1 or block != 1:
                raise _Unprunable(f"it feeds {kind}, which normalizes dim 1, not the channel dim {dim}")
            group.norms.append(user.target)
            return [(user, 1, 1)]
        if isinstance(module, nn.LayerNorm):
            if dim >= len(shape) - len(module.normalized_shape):
                raise _Unprunable(f"it feeds {kind}, which normalizes over the channels: removing channels would "
                                  "change the statistics of those that stay")
            return [(user, dim, block)]
        if isinstance(module, nn.PReLU) and module.num_parameters > 1:
            raise _Unprunable(f"it feeds {kind}, which has one slope per channel")
        if isinstance(module, _ELEMENTWISE_MODULES):
            return [(user, dim, block)]
        if isinstance(module, _POOL_MODULES):
            if dim != 1 or block != 1:
                raise _Unprunable(f"it feeds {kind}, which pools dims after 1, with its channels on dim {dim}")
            return [(user, 1, 1)]
        if isinstance(module, nn.Flatten):
            return [(user, *_reshaped(shape, _shape(user), dim, block, kind))]
        raise _Unprunable(f"it feeds {kind}, whose use of the channels cannot be traced")
    if user.op == "call_function":
        fn = user.target
        kind = f"{user.name} ({getattr(fn, '__name__', fn)})"
        if fn in _ELEMENTWISE_FUNCTIONS or fn in _ARITHMETIC_FUNCTIONS:
            _only_input(user, src)
            return [(user, dim, block)]
        if fn in _POOL_FUNCTIONS:
            _only_input(user, src)
            if dim != 1 or block != 1 or user.kwargs.get("return_indices", False):
                raise _Unprunable(f"it feeds the pooling {kind} with its channels on dim {dim}, or with indices")
            return [(user, 1, 1)]
        if fn in (torch.flatten, torch.reshape):
            return [(user, *_reshaped(shape, _shape(user), dim, block, kind))]
        if fn in _REDUCTION_FUNCTIONS:
            return [(user, _reduced(user, len(shape), dim), block)]
        if fn is getattr and user.args[1] in _METADATA_ATTRIBUTES:
            return []
        if fn is getattr and user.args[1] == "shape":
            _channel_query_users(user, dim)
            return []
        raise _Unprunable(f"it feeds {kind}, whose use of the channels cannot be traced")
    if user.op == "call_method":
        method = user.target
        kind = f"{user.name} (.{method})"
        if method in _ELEMENTWISE_METHODS or method in _ARITHMETIC_METHODS:
            _only_input(user, src)
            return [(user, dim, block)]
        if method in _RESHAPE_METHODS:
            return [(user, *_reshaped(shape, _shape(user), dim, block, kind))]
        if method in _REDUCTION_METHODS:
            return [(user, _reduced(user, len(shape), dim), block)]
        if method == "dim":
            return []
        if method == "size":
            if len(user.args) > 1 and isinstance(user.args[1], int) and user.args[1] % len(shape) != dim:
                return []
            if len(user.args) == 1:
                _channel_query_users(user, dim)
                return []
            raise _Unprunable(f"{kind} reads the channel count")
        raise _Unprunable(f"it feeds {kind}, whose use of the channels cannot be traced")
    raise _Unprunable(f"it feeds {user.name} ({user.op}), whose use of the channels cannot be traced")


def trace_channel_groups(model: nn.Module, example_inputs) -> tuple[dict, dict]:
    """Trace ``model`` with torch.fx and shape-propagate ``example_inputs`` (a tensor or tuple of
    positional inputs) through it. Returns (groups, reasons): producer name -> ChannelGroup for the
    producers whose output channels can be removed, and producer name -> why not for the others."""
    args = _as_args(example_inputs)
    try:
        graph_module = torch.fx.symbolic_trace(model)
    except Exception as exc:  # noqa: BLE001 -- fx raises many types for untraceable Python; all mean the same here
        raise ValueError(f"prune_channels_: torch.fx cannot trace {type(model).__name__} "
                         f"({type(exc).__name__}: {exc}); channel dependencies need a traceable forward") from exc
    with _eval_mode(model):
        ShapeProp(graph_module).propagate(*args)
    graph = graph_module.graph
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    attributes = [n.target for n in graph.nodes if n.op == "get_attr"]
    groups, reasons = {}, {}
    for node in graph.nodes:
        if node.op != "call_module" or not _is_producer(model.get_submodule(node.target)):
            continue
        name = node.target
        module = model.get_submodule(name)
        try:
            if calls[name] > 1:
                raise _Unprunable(f"it is called {calls[name]} times (shared weights)")
            channel_dim = len(_shape(node)) - 1 if isinstance(module, nn.Linear) else 1
            channels = module.out_features if isinstance(module, nn.Linear) else module.out_channels
            group = ChannelGroup(name, channels)
            frontier = [(user, node, channel_dim, 1) for user in node.users]
            while frontier:
                user, src, dim, block = frontier.pop()
                for nxt, nxt_dim, nxt_block in _step(user, src, dim, block, model, calls, group):
                    frontier += [(u, nxt, nxt_dim, nxt_block) for u in nxt.users]
            touched = [name, *group.norms, *group.depthwise, *(c for c, _ in group.consumers)]
            direct = [a for a in attributes if any(a.startswith(t + ".") for t in touched)]
            if direct:
                raise _Unprunable(f"the forward reads {direct[0]} directly, outside its module")
            groups[name] = group
        except _Unprunable as why:
            reasons[name] = str(why)
    return groups, reasons


def _apply_channels(model: nn.Module, group: ChannelGroup, keep: Tensor) -> None:
    producer = model.get_submodule(group.producer)
    _slice_(producer, "weight", keep, 0)
    _slice_(producer, "bias", keep, 0)
    if isinstance(producer, nn.Linear):
        producer.out_features = len(keep)
    else:
        producer.out_channels = len(keep)
    for name in group.norms:
        norm = model.get_submodule(name)
        for attr in ("weight", "bias", "running_mean", "running_var"):
            _slice_(norm, attr, keep, 0)
        norm.num_features = len(keep)
    for name in group.depthwise:
        conv = model.get_submodule(name)
        _slice_(conv, "weight", keep, 0)
        _slice_(conv, "bias", keep, 0)
        conv.in_channels = conv.out_channels = conv.groups = len(keep)
    for name, block in group.consumers:
        consumer = model.get_submodule(name)
        index = _block_index(keep, block)
        _slice_(consumer, "weight", index, 1)
        if isinstance(consumer, nn.Linear):
            consumer.in_features = len(index)
        else:
            consumer.in_channels = len(index)


def channel_norms(module: nn.Module, norm: float = 2.0) -> Tensor:
    """Ln norm of each output channel's weights (rows of a Linear, filters of a conv)."""
    return torch.linalg.vector_norm(module.weight.detach().float().flatten(1), ord=norm, dim=1)


def prune_channels_(model: nn.Module, amount: float, *, example_inputs, layers: Optional[Iterable[str]] = None,
                    norm: float = 2.0, scores: Optional[dict] = None, round_to: int = 1) -> nn.Module:
    """Remove the fraction ``amount`` of the output channels of each producer in ``layers`` (module
    names; None: every producer whose channels can be traced, the others are left and logged) and the
    matching slices of the layers downstream. Channels are ranked by ``scores[name]`` (a [channels]
    tensor, higher kept) where given, else by the Ln norm (``norm``) of their weights. Modules are
    shrunk in place; returns ``model``.

    Raises ValueError for an amount outside [0, 1), an unknown layer name, or a named producer whose
    channels cannot be traced (the reason says which layer and why)."""
    _check_amount("prune_channels_", amount)
    _check_norm("prune_channels_", norm)
    _check_round_to("prune_channels_", round_to)
    groups, reasons = trace_channel_groups(model, example_inputs)
    if layers is None:
        chosen = list(groups)
        if not chosen:
            detail = "; ".join(f"{n}: {r}" for n, r in reasons.items()) or "it has no nn.Linear or nn.ConvNd"
            raise ValueError(f"prune_channels_: no layer of the model has removable channels ({detail})")
        for name, why in reasons.items():
            log.info("prune_channels_: %s keeps its channels: %s", name, why)
    else:
        chosen = [layers] if isinstance(layers, str) else list(layers)
        for name in chosen:
            if name in reasons:
                raise ValueError(f"prune_channels_: cannot remove output channels of {name!r}: {reasons[name]}")
            if name not in groups:
                raise ValueError(f"prune_channels_: layers names {name!r}, which is not an nn.Linear or nn.ConvNd "
                                 f"(groups=1) called in the forward (known: {', '.join(list(groups) + list(reasons))})")
    scores = dict(scores or {})
    for name, score in scores.items():
        if name not in chosen:
            raise ValueError(f"prune_channels_: scores names {name!r}, which is not among the layers pruned")
        if not isinstance(score, Tensor) or tuple(score.shape) != (groups[name].channels,):
            raise ValueError(f"prune_channels_: scores[{name!r}] must be a tensor of shape [{groups[name].channels}] "
                             f"(got {getattr(score, 'shape', type(score).__name__)})")
    keeps = {}
    for name in chosen:
        module = model.get_submodule(name)
        group = groups[name]
        for touched in (name, *group.norms, *group.depthwise, *(c for c, _ in group.consumers)):
            _check_plain("prune_channels_", touched, model.get_submodule(touched))
        # Scored on the unpruned weights: a producer's rows shrink when it is also another group's consumer.
        score = scores[name] if name in scores else channel_norms(module, norm)
        keeps[name] = _keep_indices(score, kept_count(group.channels, amount, round_to))
    for name in chosen:
        _apply_channels(model, groups[name], keeps[name].to(model.get_submodule(name).weight.device))
    return model


# ---------------------------------------------------------------------------------------------------
# Attention heads and FFN neurons of BERT-style encoders


def attention_blocks(model: nn.Module) -> list:
    """(name, module) of the BERT-style attention modules: ``.self`` with query/key/value nn.Linear,
    num_attention_heads and attention_head_size, and ``.output.dense`` an nn.Linear."""
    found = []
    for name, module in model.named_modules():
        inner, output = getattr(module, "self", None), getattr(module, "output", None)
        if (isinstance(inner, nn.Module) and all(isinstance(getattr(inner, p, None), nn.Linear)
                                                  for p in ("query", "key", "value"))
                and hasattr(inner, "num_attention_heads") and hasattr(inner, "attention_head_size")
                and isinstance(getattr(output, "dense", None), nn.Linear)):
            found.append((name, module))
    return found


def ffn_blocks(model: nn.Module) -> list:
    """(name, module) of the BERT-style layers: ``.intermediate.dense`` -> elementwise activation ->
    ``.output.dense``, both nn.Linear with matching inner size."""
    found = []
    for name, module in model.named_modules():
        up = getattr(getattr(module, "intermediate", None), "dense", None)
        down = getattr(getattr(module, "output", None), "dense", None)
        if isinstance(up, nn.Linear) and isinstance(down, nn.Linear) and up.out_features == down.in_features:
            found.append((name, module))
    return found


def _heads(attention: nn.Module, name: str, fn: str) -> tuple[int, int]:
    inner = attention.self
    heads, size = inner.num_attention_heads, inner.attention_head_size
    widths = {p: getattr(inner, p).out_features for p in ("query", "key", "value")}
    widths["output.dense in"] = attention.output.dense.in_features
    if any(w != heads * size for w in widths.values()):
        raise ValueError(f"{fn}: {name!r} has num_attention_heads={heads}, attention_head_size={size} "
                         f"but widths {widths}; expected {heads * size}")
    return heads, size


def _calibrate(model: nn.Module, data: Iterable, hooks: list, fn: str) -> None:
    """Run every batch of ``data`` through ``model`` in eval mode, with ``hooks`` [(module,
    hook(module, args, output, batch))] registered as forward hooks."""
    current = {}
    handles = [module.register_forward_hook(lambda m, args, out, hook=hook: hook(m, args, out, current["batch"]))
               for module, hook in hooks]
    batches = 0
    try:
        with _eval_mode(model):
            for batch in data:
                current["batch"] = batch
                _forward_batch(model, batch)
                batches += 1
    finally:
        for h in handles:
            h.remove()
    if batches == 0:
        raise ValueError(f"{fn}: data yielded no batches")


def _check_tokens(fn: str, counts: dict) -> None:
    empty = [name for name, count in counts.items() if count == 0]
    if empty:
        raise ValueError(f"{fn}: data gave no real (unmasked) tokens to {', '.join(empty)}")


def _masked_tokens(x: Tensor, batch) -> Tensor:
    """The rows of x [..., features] that are real tokens (not padding), as [tokens, features]."""
    mask = _token_mask(batch, x.shape[:-1])
    flat = x.detach().float()
    return flat[mask] if mask is not None else flat.reshape(-1, x.shape[-1])


def _weight_head_scores(blocks: list, shapes: dict, norm: float) -> dict:
    scores = {}
    for name, attn in blocks:
        heads, _ = shapes[name]
        parts = [getattr(attn.self, p).weight.detach().float().view(heads, -1) for p in ("query", "key", "value")]
        parts.append(attn.output.dense.weight.detach().float().t().reshape(heads, -1))
        scores[name] = torch.linalg.vector_norm(torch.cat(parts, 1), ord=norm, dim=1)
    return scores


def _data_head_scores(model: nn.Module, blocks: list, shapes: dict, data: Iterable) -> tuple[dict, dict]:
    """(scores, means): the mean over real tokens of ||ctx_h W_o[:, h]^T||_2 per head, and the mean
    input of output.dense, per attention module."""
    sums = {name: torch.zeros(shapes[name][0], dtype=torch.float64) for name, _ in blocks}
    totals = {name: torch.zeros(shapes[name][0] * shapes[name][1], dtype=torch.float64) for name, _ in blocks}
    counts = dict.fromkeys(sums, 0)

    def observe(name):
        heads, size = shapes[name]

        def hook(dense, args, output, batch):
            ctx = _masked_tokens(args[0], batch)
            w = dense.weight.detach().float().view(dense.out_features, heads, size)
            # ||ctx_h W_h^T||^2 = ctx_h (W_h^T W_h) ctx_h^T: d x d per head instead of d x out.
            gram = torch.einsum("ohd,ohe->hde", w, w)
            per_head = ctx.view(-1, heads, size)
            squared = (torch.einsum("thd,hde->the", per_head, gram) * per_head).sum(-1)
            sums[name] += squared.clamp(min=0).sqrt().sum(0).double().cpu()
            totals[name] += ctx.sum(0).double().cpu()
            counts[name] += ctx.shape[0]

        return hook

    _calibrate(model, data, [(attn.output.dense, observe(name)) for name, attn in blocks], "head_importance")
    _check_tokens("head_importance", counts)
    return ({name: (sums[name] / counts[name]).float() for name in sums},
            {name: (totals[name] / counts[name]).float() for name in sums})


def head_importance(model: nn.Module, data: Optional[Iterable] = None, *, norm: float = 2.0) -> dict:
    """Attention module name -> [heads] scores. Without data: the Ln norm of each head's query, key and
    value rows and output.dense columns. With data (batches of model inputs): the mean over real tokens
    of the L2 norm of each head's contribution ctx_h @ W_o[:, h]^T to the attention output."""
    _check_norm("head_importance", norm)
    blocks = _attention_or_raise(model, "head_importance")
    shapes = {name: _heads(attn, name, "head_importance") for name, attn in blocks}
    if data is None:
        return _weight_head_scores(blocks, shapes, norm)
    return _data_head_scores(model, blocks, shapes, data)[0]


def _data_ffn_scores(model: nn.Module, blocks: list, data: Iterable) -> tuple[dict, dict]:
    """(scores, means): sqrt(E[a_j^2]) * ||W_out[:, j]||_2 and E[a_j] over real tokens, per FFN."""
    squares = {name: torch.zeros(layer.output.dense.in_features, dtype=torch.float64) for name, layer in blocks}
    totals = {name: torch.zeros_like(squares[name]) for name in squares}
    counts = dict.fromkeys(squares, 0)

    def observe(name):
        def hook(dense, args, output, batch):
            a = _masked_tokens(args[0], batch)
            squares[name] += a.square().sum(0).double().cpu()
            totals[name] += a.sum(0).double().cpu()
            counts[name] += a.shape[0]

        return hook

    _calibrate(model, data, [(layer.output.dense, observe(name)) for name, layer in blocks], "ffn_importance")
    _check_tokens("ffn_importance", counts)
    scores = {name: (squares[name] / counts[name]).sqrt().float()
              * torch.linalg.vector_norm(layer.output.dense.weight.detach().float(), dim=0).cpu()
              for name, layer in blocks}
    return scores, {name: (totals[name] / counts[name]).float() for name in squares}


def ffn_importance(model: nn.Module, data: Optional[Iterable] = None, *, norm: float = 2.0) -> dict:
    """FFN layer name -> [inner] scores. Without data: the Ln norm of each neuron's intermediate.dense
    row. With data: sqrt(E[a_j^2]) over real tokens times ||W_out[:, j]||_2, the scale of neuron j's
    contribution to the layer's output."""
    _check_norm("ffn_importance", norm)
    blocks = _ffn_or_raise(model, "ffn_importance")
    if data is None:
        return {name: channel_norms(layer.intermediate.dense, norm) for name, layer in blocks}
    return _data_ffn_scores(model, blocks, data)[0]


def _attention_or_raise(model: nn.Module, fn: str) -> list:
    blocks = attention_blocks(model)
    if not blocks:
        raise ValueError(f"{fn}: the model has no BERT-style attention (module.self.query/key/value and "
                         "module.output.dense)")
    return blocks


def _ffn_or_raise(model: nn.Module, fn: str) -> list:
    blocks = ffn_blocks(model)
    if not blocks:
        raise ValueError(f"{fn}: the model has no BERT-style FFN (module.intermediate.dense and module.output.dense)")
    return blocks


def _compensate_(dense: nn.Linear, removed: Tensor, mean: Tensor) -> None:
    """Fold the mean contribution of the removed inputs into the bias: the output keeps its mean and
    only loses the removed inputs' fluctuation around it."""
    removed = removed.to(dense.weight.device)
    shift = dense.weight.detach()[:, removed] @ mean.to(dense.weight)[removed]
    if dense.bias is None:
        dense.bias = nn.Parameter(shift)
    else:
        dense.bias = nn.Parameter(dense.bias.detach() + shift, requires_grad=dense.bias.requires_grad)


def _removed(size: int, kept: Tensor) -> Tensor:
    removed = torch.ones(size, dtype=torch.bool)
    removed[kept.cpu()] = False
    return removed


def _check_scores(fn: str, scores: dict, sizes: dict) -> None:
    for name, score in scores.items():
        if name not in sizes:
            raise ValueError(f"{fn}: scores names {name!r}, which is not one of {', '.join(sizes)}")
        if not isinstance(score, Tensor) or tuple(score.shape) != (sizes[name],):
            raise ValueError(f"{fn}: scores[{name!r}] must be a tensor of shape [{sizes[name]}] "
                             f"(got {getattr(score, 'shape', type(score).__name__)})")
    missing = [name for name in sizes if name not in scores]
    if missing:
        raise ValueError(f"{fn}: scores must cover every block (missing {', '.join(missing)})")


def prune_heads_(model: nn.Module, amount: float, *, data: Optional[Iterable] = None, scores: Optional[dict] = None,
                 norm: float = 2.0) -> nn.Module:
    """Remove the fraction ``amount`` of the attention heads of every BERT-style attention module (at
    least one head stays) and return ``model``, shrunk in place: query, key, value and output.dense,
    with num_attention_heads and all_head_size updated.

    Heads are ranked by ``scores`` (attention name -> [heads]) where given; else, with ``data``
    (calibration batches of model inputs), by their mean output norm (head_importance with data);
    else by their weights' Ln norm. With data the mean contribution of the removed heads is also
    folded into output.dense's bias."""
    _check_amount("prune_heads_", amount)
    blocks = _attention_or_raise(model, "prune_heads_")
    shapes = {name: _heads(attn, name, "prune_heads_") for name, attn in blocks}
    for name, attn in blocks:
        for part in ("self.query", "self.key", "self.value", "output.dense"):
            _check_plain("prune_heads_", f"{name}.{part}", attn.get_submodule(part))
    means = None
    if data is not None:
        data_scores, means = _data_head_scores(model, blocks, shapes, data)
        scores = data_scores if scores is None else scores
    elif scores is None:
        scores = _weight_head_scores(blocks, shapes, norm)
    _check_scores("prune_heads_", scores, {name: heads for name, (heads, _) in shapes.items()})
    for name, attn in blocks:
        heads, size = shapes[name]
        keep = _keep_indices(scores[name], kept_count(heads, amount))
        index = _block_index(keep, size)
        if means is not None:
            _compensate_(attn.output.dense, _removed(heads * size, index), means[name])
        for part in ("query", "key", "value"):
            linear = getattr(attn.self, part)
            _slice_(linear, "weight", index, 0)
            _slice_(linear, "bias", index, 0)
            linear.out_features = len(index)
        _slice_(attn.output.dense, "weight", index, 1)
        attn.output.dense.in_features = len(index)
        attn.self.num_attention_heads = len(keep)
        attn.self.all_head_size = len(index)
    return model


def prune_ffn_(model: nn.Module, amount: float, *, data: Optional[Iterable] = None, scores: Optional[dict] = None,
               norm: float = 2.0, round_to: int = 1) -> nn.Module:
    """Remove the fraction ``amount`` of the inner neurons of every BERT-style FFN (kept counts rounded
    to a multiple of ``round_to``) and return ``model``, shrunk in place.

    Neurons are ranked by ``scores`` (layer name -> [inner]) where given; else, with ``data``, by
    sqrt(E[a_j^2]) * ||W_out[:, j]|| (ffn_importance with data); else by the Ln norm of their
    intermediate.dense rows. With data the removed neurons' mean contribution is folded into
    output.dense's bias. When every layer ends with the same inner size,
    ``model.config.intermediate_size`` is set to it."""
    _check_amount("prune_ffn_", amount)
    _check_round_to("prune_ffn_", round_to)
    blocks = _ffn_or_raise(model, "prune_ffn_")
    for name, layer in blocks:
        _check_plain("prune_ffn_", f"{name}.intermediate.dense", layer.intermediate.dense)
        _check_plain("prune_ffn_", f"{name}.output.dense", layer.output.dense)
    means = None
    if data is not None:
        data_scores, means = _data_ffn_scores(model, blocks, data)
        scores = data_scores if scores is None else scores
    elif scores is None:
        scores = {name: channel_norms(layer.intermediate.dense, norm) for name, layer in blocks}
    _check_scores("prune_ffn_", scores, {name: layer.intermediate.dense.out_features for name, layer in blocks})
    for name, layer in blocks:
        up, down = layer.intermediate.dense, layer.output.dense
        keep = _keep_indices(scores[name], kept_count(up.out_features, amount, round_to))
        if means is not None:
            _compensate_(down, _removed(up.out_features, keep), means[name])
        _slice_(up, "weight", keep, 0)
        _slice_(up, "bias", keep, 0)
        up.out_features = len(keep)
        _slice_(down, "weight", keep, 1)
        down.in_features = len(keep)
    sizes = {layer.intermediate.dense.out_features for _, layer in blocks}
    config = getattr(model, "config", None)
    if len(sizes) == 1 and hasattr(config, "intermediate_size"):
        # Keeps the config describing the model, so that it can be rebuilt from the config.
        config.intermediate_size = sizes.pop()
    return model


__all__ = [
    "ChannelGroup", "StructuredPruneConfig", "attention_blocks", "channel_norms", "count_macs", "count_params",
    "ffn_blocks", "ffn_importance", "head_importance", "kept_count", "prune_channels_", "prune_ffn_",
    "prune_heads_", "structured_prune_", "trace_channel_groups",
]
