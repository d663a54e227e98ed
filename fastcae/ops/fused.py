"""What every fused op (fastcae/ops/encode.py, activate.py, hessian.py) shares:
its pair of kernels, and which path a call takes.

A call with no autograd watching launches the forward kernel directly; a
differentiable call goes through the op's autograd.Function, whose backward
launches the backward kernel unless a graph of the gradient is needed (then
the closed form of fastcae/ops/reference.py runs, which autograd can
differentiate again).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class KernelPair:
    """A forward and a backward kernel: the registered ops, and how eager calls launch them.

    The C++ ops are launched through the dispatcher (cheap). A Python custom op
    costs tens of µs per call, so eager calls launch the Triton kernels
    directly; the ops are used while torch.compile traces (they have fake
    kernels) and under torch.func (vmap needs their registered rule).
    """

    forward_op: Callable
    backward_op: Callable
    forward_launch: Callable
    backward_launch: Callable

    def forward(self, *args):
        return (self.forward_op if traced() else self.forward_launch)(*args)

    def backward(self, *args):
        return (self.backward_op if traced() else self.backward_launch)(*args)


def traced() -> bool:
    """torch.compile is tracing, or a torch.func transform is active."""
    return torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active()


def graph_needed(*tensors: Tensor | None) -> bool:
    """Whether a backward must itself be differentiable: create_graph=True with
    something to differentiate, or a torch.func transform around it."""
    if torch._C._are_functorch_transforms_active():
        return True
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def no_autograd(*tensors: Tensor | None) -> bool:
    """No autograd of any kind is watching this call (nothing requires grad, no
    forward-mode dual tensors, no torch.func transform): the forward kernel can
    run without the op's Function."""
    if torch._C._are_functorch_transforms_active() or torch.autograd.forward_ad._current_level >= 0:
        return False
    return not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors))


class OpAutograd:
    """An op's one autograd (forward, setup_context, backward, jvp), in the form each call needs.

    - ``compiled``: the Function without a custom jvp, which Dynamo can trace;
    - ``transformed``: the Function with its jvp, in the setup_context style
      that torch.func transforms require;
    - ``eager``: the same methods restated in the ctx style, for every other
      differentiable call. Only ``Function.apply``'s cost differs: for the
      setup_context style it binds the arguments through ``inspect.signature``,
      about 15 µs per call warm and several times that right after a large
      kernel, when the caches are cold (a few percent of a CPU training step).
    """

    def __init__(self, compiled: type[torch.autograd.Function], transformed: type[torch.autograd.Function]):
        self.compiled = compiled
        self.transformed = transformed

        class Eager(torch.autograd.Function):
            @staticmethod
            def forward(ctx, *inputs):
                output = transformed.forward(*inputs)
                transformed.setup_context(ctx, inputs, output)
                return output

            backward = staticmethod(transformed.backward)
            jvp = staticmethod(transformed.jvp)

        Eager.__name__ = Eager.__qualname__ = f"{transformed.__name__}Eager"
        self.eager = Eager

    def apply(self, *inputs):
        if torch.compiler.is_compiling():
            return self.compiled.apply(*inputs)
        if torch._C._are_functorch_transforms_active():
            return self.transformed.apply(*inputs)
        return self.eager.apply(*inputs)

    def op(self, pair: KernelPair, kernels: str, name: str, outputs: int | None = None) -> Callable:
        """The differentiable op over ``pair``: (*tensors, activation) -> the forward's
        outputs (its first ``outputs``). A call with no autograd watching launches the
        forward kernel directly; any other goes through this autograd (with ``kernels``,
        the key of the pair in the op's KERNELS)."""

        def op(*args):
            if not torch.compiler.is_compiling() and no_autograd(*args[:-1]):
                result = pair.forward_launch(*args)
            else:
                result = self.apply(*args, kernels)
            return result if outputs is None else result[:outputs]

        op.__name__ = f"{name}_{kernels}"
        return op


# A backward kernel returns None for the gradients output_mask does not ask
# for; a Python custom op cannot return None, so the Triton ones return empty
# tensors there instead. These convert, and make fake gradients of either kind.


def fake_grads(like: Tensor, shapes, output_mask, *, custom_op: bool = False) -> tuple:
    """Uninitialized gradients of ``shapes`` where output_mask asks for them, else None
    (an empty tensor for a custom op)."""
    absent = (lambda: like.new_empty(0)) if custom_op else (lambda: None)
    return tuple(
        like.new_empty(shape) if need else absent() for shape, need in zip(shapes, output_mask, strict=True)
    )


def to_custom_op_grads(grads, like: Tensor) -> tuple[Tensor, ...]:
    return tuple(g if g is not None else like.new_empty(0) for g in grads)


def from_custom_op_grads(grads, output_mask) -> tuple:
    return tuple(g if need else None for g, need in zip(grads, output_mask, strict=True))
