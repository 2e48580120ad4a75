"""Analytic cost of a forward pass, per layer, from the shapes of what it computes.

Formulas (multiply-accumulates, MACs; batch B, output H x W, N input and M output
channels, K x K kernel, G groups):

    standard conv    B * H*W * N * K^2 * M
    grouped conv     B * H*W * N * K^2 * M / G
    depthwise conv   B * H*W * K^2 * N            (G = N = M)
    pointwise conv   B * H*W * N * M              (K = 1)
    linear           B * N * M                    (and matmul: the product of the sizes)

Everything else (BatchNorm, activations, pooling, adds, concat, channel shuffle) costs no
MACs: it is memory traffic. ``bytes_moved`` of an op is what it reads plus what it
writes: input tensors, weights and buffers (BN statistics, a shuffle's index), output
tensors. An op whose output is a view of its input (split, flatten, view) moves nothing;
an in-place op reads and writes its tensor once. A channel shuffle therefore costs zero
MACs and one full read and one full write of the tensor.

**MAC/FLOP factor: torch's FlopCounterMode counts 2 FLOPs per MAC** (a multiply and an
add), so ``counted_macs = FlopCounterMode total / 2``; on every zoo model it equals the
analytic total (tests/test_costmodel.py).

Rows are the model's leaf modules, plus one row for the ops a non-leaf module runs in its
own ``forward`` (the residual add, concat, split of a block), so the rows add up to the
whole forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

MAC_PER_FLOP = 0.5  # FlopCounterMode: 1 MAC = 2 FLOPs


def conv_macs(
    batch: int, out_hw: int, in_ch: int, out_ch: int, kernel_elems: int, groups: int = 1
) -> int:
    """Standard conv ``H*W*N*K^2*M``, divided by ``G`` when grouped. Depthwise (G=N=M)
    gives ``H*W*K^2*N`` and pointwise (K=1) ``H*W*N*M``. ``out_hw`` is the number of
    output positions (H*W), ``kernel_elems`` the kernel's K^2 (any rank)."""
    if in_ch % groups or out_ch % groups:
        raise ValueError(f"{groups} groups do not divide {in_ch} -> {out_ch} channels")
    return batch * out_hw * in_ch * kernel_elems * out_ch // groups


def depthwise_macs(batch: int, out_hw: int, channels: int, kernel_elems: int) -> int:
    return conv_macs(batch, out_hw, channels, channels, kernel_elems, groups=channels)


def pointwise_macs(batch: int, out_hw: int, in_ch: int, out_ch: int) -> int:
    return conv_macs(batch, out_hw, in_ch, out_ch, 1)


def linear_macs(rows: int, in_features: int, out_features: int) -> int:
    return rows * in_features * out_features


def _conv(args: tuple, kwargs: dict, out: Tensor) -> int:
    weight = args[1] if len(args) > 1 else kwargs["weight"]
    groups = args[6] if len(args) > 6 else kwargs.get("groups", 1)
    out_ch, in_per_group, *kernel = weight.shape
    return conv_macs(
        out.shape[0], math.prod(out.shape[2:]), in_per_group * groups, out_ch,
        math.prod(kernel), groups,
    )  # fmt: skip


def _linear(args: tuple, kwargs: dict, out: Tensor) -> int:
    weight = args[1] if len(args) > 1 else kwargs["weight"]
    return linear_macs(out.numel() // weight.shape[0], weight.shape[1], weight.shape[0])


def _matmul(args: tuple, kwargs: dict, out: Tensor) -> int:
    a, b = (args[1], args[2]) if len(args) > 2 else (args[0], args[1])  # addmm: (c, a, b)
    return out.numel() * a.shape[-1] if b.dim() > 0 else 0


MAC_RULES: dict[Callable, Callable[[tuple, dict, Tensor], int]] = {
    F.conv1d: _conv, F.conv2d: _conv, F.conv3d: _conv,
    torch.conv1d: _conv, torch.conv2d: _conv, torch.conv3d: _conv,
    F.linear: _linear,
    torch.matmul: _matmul, torch.mm: _matmul, torch.bmm: _matmul, torch.addmm: _matmul,
    torch.baddbmm: _matmul, Tensor.matmul: _matmul, Tensor.__matmul__: _matmul,
}  # fmt: skip


@dataclass
class LayerCost:
    """One row: a leaf module, or the ops a non-leaf module runs itself."""

    name: str
    type: str
    output_shape: tuple[int, ...]
    param_count: int
    macs: int = 0
    bytes_moved: int = 0
    ops: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["output_shape"] = list(self.output_shape)
        return d


@dataclass
class Totals:
    param_count: int
    macs: int
    counted_macs: int  # torch's FlopCounterMode FLOPs / 2
    bytes_moved: int


def _tensors(value: Any) -> Iterator[Tensor]:
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)


def _nbytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


def _aliases(out: Tensor, inputs: list[Tensor]) -> bool:
    ptr = out.untyped_storage().data_ptr()
    return any(t.untyped_storage().data_ptr() == ptr for t in inputs)


def op_bytes(func: Callable, args: tuple, kwargs: dict, out: Any) -> int:
    """Bytes read plus bytes written by one op (see the module docstring)."""
    inputs = list(_tensors(args)) + list(_tensors(kwargs))
    outputs = list(_tensors(out))
    name = getattr(func, "__name__", "")
    if kwargs.get("inplace") or (name.endswith("_") and not name.endswith("__")):
        touched = {id(t): t for t in inputs}
        return sum(_nbytes(t) for t in touched.values()) + sum(_nbytes(t) for t in outputs)
    written = [t for t in outputs if not _aliases(t, inputs)]
    if not written:  # a view: nothing is read or written
        return 0
    return sum(_nbytes(t) for t in inputs) + sum(_nbytes(t) for t in written)


class _Recorder(TorchFunctionMode):
    """Attributes every torch call to the innermost running module."""

    def __init__(self, rows: Callable[[], LayerCost | None]) -> None:
        super().__init__()
        self.current = rows

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        row = self.current()
        if row is None or not any(True for _ in _tensors(out)):
            return out
        rule = MAC_RULES.get(func)
        if rule is not None:
            row.macs += rule(args, kwargs, out)
        row.bytes_moved += op_bytes(func, args, kwargs, out)
        name = getattr(func, "__name__", str(func))
        if name not in row.ops:
            row.ops.append(name)
        return out


@contextmanager
def module_stack(model: nn.Module, on_enter=None, on_exit=None, stack: list | None = None):
    """Forward hooks that keep ``stack``, the running modules' qualified names, current
    (and call ``on_enter(name, module)`` / ``on_exit(name, module, output)``)."""
    stack = [] if stack is None else stack
    handles = []
    for name, module in model.named_modules():

        def pre(mod, inputs, name=name):
            stack.append(name)
            if on_enter:
                on_enter(name, mod)

        def post(mod, inputs, output, name=name):
            if on_exit:
                on_exit(name, mod, output)
            stack.pop()

        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))
    try:
        yield stack
    finally:
        for h in handles:
            h.remove()


def _first_shape(output: Any) -> tuple[int, ...]:
    for t in _tensors(output):
        return tuple(t.shape)
    return ()


def layer_costs(model: nn.Module, example_inputs: Tensor) -> list[LayerCost]:
    """Cost rows in execution order, for one forward pass on ``example_inputs``."""
    model = model.eval()
    rows = {
        name: LayerCost(
            name or "(model)",
            type(m).__name__,
            (),
            sum(p.numel() for p in m.parameters(recurse=False)),
        )
        for name, m in model.named_modules()
    }
    order: list[str] = []

    def enter(name: str, module: nn.Module) -> None:
        if name not in order:
            order.append(name)

    def leave(name: str, module: nn.Module, output: Any) -> None:
        rows[name].output_shape = _first_shape(output)

    stack: list[str] = []
    recorder = _Recorder(lambda: rows.get(stack[-1]) if stack else None)
    with module_stack(model, enter, leave, stack), torch.no_grad(), recorder:
        model(example_inputs)
    leaves = {name for name, m in model.named_modules() if not any(True for _ in m.children())}
    # A non-leaf module is a row only if it runs ops of its own (or owns parameters).
    return [rows[n] for n in order if n in leaves or rows[n].ops or rows[n].param_count]


def counted_macs(model: nn.Module, example_inputs: Tensor) -> int:
    """MACs as torch's own FlopCounterMode counts them (FLOPs x MAC_PER_FLOP)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(example_inputs)
    return int(counter.get_total_flops() * MAC_PER_FLOP)


def totals(model: nn.Module, example_inputs: Tensor, rows: list[LayerCost]) -> Totals:
    return Totals(
        param_count=sum(p.numel() for p in model.parameters()),
        macs=sum(r.macs for r in rows),
        counted_macs=counted_macs(model, example_inputs),
        bytes_moved=sum(r.bytes_moved for r in rows),
    )
