"""Backend registry: for each op and device, which backends exist, which run here, and why not.

Backends are ``cuda`` (csrc/cuda), ``triton`` (kernels/), ``cpu`` (csrc/cpu) and ``reference``
(plain PyTorch, the test oracle). Selection, for one call of an op on tensors of one device type:

1. an explicit request: the innermost ``use_backend(...)`` context, else ``PYCOMPRESS_BACKEND``
   (``triton`` for every op, or ``int8_mm=triton,quantize_per_token=cpu`` per op). A requested backend
   that the op lacks or that cannot run here raises ``BackendUnavailableError`` with the reason;
   nothing falls back silently.
2. otherwise the first *validated* available backend in the device's preference order
   (cuda: cuda, triton, reference; cpu: cpu, reference). A backend whose kernels have never passed
   their tests on real hardware of that device is *experimental* and is only used when asked for.
   When the default is not the first preference, a warning (once per op and device) says why.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import os
import warnings
from typing import Callable, Iterator, Optional

BACKENDS = ("cuda", "triton", "cpu", "reference")
DEVICE_PREFERENCE = {
    "cuda": ("cuda", "triton", "reference"),
    "cpu": ("cpu", "reference"),
}
ENV_VAR = "PYCOMPRESS_BACKEND"


class BackendUnavailableError(RuntimeError):
    """A backend was asked for by name but cannot run this op here."""


@dataclasses.dataclass(frozen=True)
class BackendImpl:
    """One backend of one op.

    ``availability(device_type)`` returns None when the backend can run on that device type in this
    process, else the reason it cannot. ``experimental`` maps a device type to the reason the backend
    is not yet trusted there (never run on that hardware); such a backend runs only when asked for.
    """

    op: str
    backend: str
    fn: Callable
    devices: tuple[str, ...]
    availability: Callable[[str], Optional[str]]
    experimental: dict = dataclasses.field(default_factory=dict)

    def unavailable_reason(self, device_type: str) -> Optional[str]:
        if device_type not in self.devices:
            return f"runs on {', '.join(self.devices)} only"
        return self.availability(device_type)


_IMPLS: dict[str, dict[str, BackendImpl]] = {}
_override: contextvars.ContextVar[tuple] = contextvars.ContextVar("pycompress_backend", default=())
_warned: set = set()


def register(op: str, backend: str, fn: Callable, *, devices, availability=None, experimental=None):
    """Register ``fn`` as backend ``backend`` of ``op``."""
    if backend not in BACKENDS:
        raise ValueError(f"register: backend must be one of {BACKENDS} (got {backend!r})")
    impl = BackendImpl(
        op=op,
        backend=backend,
        fn=fn,
        devices=tuple(devices),
        availability=availability or (lambda device_type: None),
        experimental=dict(experimental or {}),
    )
    _IMPLS.setdefault(op, {})[backend] = impl
    return impl


def ops() -> list[str]:
    return sorted(_IMPLS)


def impls(op: str) -> dict[str, BackendImpl]:
    if op not in _IMPLS:
        raise KeyError(f"unknown op {op!r}; known ops: {', '.join(ops())}")
    return _IMPLS[op]


def _parse_request(spec: str, op: str) -> Optional[str]:
    """The backend asked for ``op`` by a spec such as ``triton`` or ``int8_mm=triton,x=cpu``."""
    chosen = None
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        if "=" in part:
            name, backend = (s.strip() for s in part.split("=", 1))
            if name == op:
                chosen = backend
        else:
            chosen = part
    if chosen is not None and chosen not in BACKENDS:
        raise BackendUnavailableError(
            f"{op}: backend {chosen!r} requested (in {spec!r}) is not one of {', '.join(BACKENDS)}"
        )
    return chosen


def requested_backend(op: str) -> tuple[Optional[str], str]:
    """The explicitly requested backend for ``op`` and where the request came from."""
    for spec in reversed(_override.get()):
        chosen = _parse_request(spec, op)
        if chosen is not None:
            return chosen, f"use_backend({spec!r})"
    env = os.environ.get(ENV_VAR, "")
    if env:
        chosen = _parse_request(env, op)
        if chosen is not None:
            return chosen, f"{ENV_VAR}={env}"
    return None, ""


@contextlib.contextmanager
def use_backend(spec: str) -> Iterator[None]:
    """Run ops with the backend(s) named by ``spec`` inside the block.

    ``spec`` is a backend name for every op (``"triton"``) or per-op assignments
    (``"int8_mm=triton,quantize_per_token=cpu"``). Inner blocks take precedence.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"use_backend: spec must be a non-empty string (got {spec!r})")
    for part in spec.split(","):
        name = part.split("=", 1)[-1].strip()
        if name and name not in BACKENDS:
            raise ValueError(f"use_backend: backend must be one of {', '.join(BACKENDS)} (got {name!r})")
    token = _override.set(_override.get() + (spec,))
    try:
        yield
    finally:
        _override.reset(token)


def status(op: str, backend: str, device_type: str) -> tuple[str, str]:
    """(state, reason) of one backend: state is 'ok', 'experimental', 'unavailable' or 'missing'."""
    impl = impls(op).get(backend)
    if impl is None:
        return "missing", "not implemented"
    reason = impl.unavailable_reason(device_type)
    if reason is not None:
        return "unavailable", reason
    if device_type in impl.experimental:
        return "experimental", impl.experimental[device_type]
    return "ok", ""


# select() runs on every call of every op. Its answer for (op, device type, use_backend stack,
# PYCOMPRESS_BACKEND) is kept when it is the requested backend or the device's first preference: then it
# depends only on that one backend, whose availability is fixed for the process, and the entry is used only
# while the registry still holds that very BackendImpl. A fallback (with its warning) is worked out anew.
_SELECTED: dict = {}


def device_type(t) -> str:
    """``t.device.type``, without building the device object for CPU tensors (the common case)."""
    return "cpu" if t.is_cpu else t.device.type


def select(op: str, device_type: str) -> BackendImpl:
    """The backend that runs ``op`` on ``device_type`` now (see the module docstring)."""
    key = (op, device_type, _override.get(), os.environ.get(ENV_VAR, ""))
    impl = _SELECTED.get(key)
    if impl is not None and _IMPLS[op].get(impl.backend) is impl:
        return impl
    impl, cacheable = _select(op, device_type)
    if cacheable:
        _SELECTED[key] = impl
    return impl


def _select(op: str, device_type: str) -> tuple[BackendImpl, bool]:
    table = impls(op)
    chosen, source = requested_backend(op)
    if chosen is not None:
        impl = table.get(chosen)
        if impl is None:
            raise BackendUnavailableError(
                f"{op}: backend {chosen!r} was requested by {source} but {op} has no {chosen} backend "
                f"(it has: {', '.join(table)})"
            )
        reason = impl.unavailable_reason(device_type)
        if reason is not None:
            raise BackendUnavailableError(
                f"{op}: backend {chosen!r} was requested by {source} but cannot run on {device_type}: {reason}"
            )
        return impl, True
    preference = DEVICE_PREFERENCE.get(device_type)
    if preference is None:
        raise BackendUnavailableError(f"{op}: tensors on device type {device_type!r} are not supported")
    skipped = []
    for backend in preference:
        state, reason = status(op, backend, device_type)
        if state == "ok":
            if skipped and (op, device_type) not in _warned:
                _warned.add((op, device_type))
                warnings.warn(
                    f"pycompress: {op} on {device_type} uses the {backend} backend because "
                    + "; ".join(f"{b}: {r}" for b, r in skipped)
                    + f" (ask for one explicitly with {ENV_VAR} or pycompress.use_backend)",
                    stacklevel=4,
                )
            return table[backend], not skipped
        skipped.append((backend, reason))
    raise BackendUnavailableError(
        f"{op}: no backend can run on {device_type}: " + "; ".join(f"{b}: {r}" for b, r in skipped)
    )


def table(device_types=None) -> list[dict]:
    """Rows of op x backend x device type with state and reason, for ``pycompress.info()``."""
    if device_types is None:
        device_types = ["cpu"]
        import torch

        if torch.cuda.is_available():
            device_types.append("cuda")
    rows = []
    for op in ops():
        for device_type in device_types:
            try:
                default = select_quietly(op, device_type)
            except BackendUnavailableError:
                default = None
            for backend in BACKENDS:
                state, reason = status(op, backend, device_type)
                rows.append(
                    dict(op=op, device=device_type, backend=backend, state=state, reason=reason,
                         default=backend == default)
                )
    return rows


def select_quietly(op: str, device_type: str) -> Optional[str]:
    """Name of the default backend (ignoring explicit requests), without warning."""
    for backend in DEVICE_PREFERENCE.get(device_type, ()):
        if status(op, backend, device_type)[0] == "ok":
            return backend
    return None
