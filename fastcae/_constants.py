"""Constants built once per set of arguments: masks, lookup tables, layer geometries."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import torch

T = TypeVar("T")


def constant_tensors(build: Callable[..., T]) -> Callable[..., T]:
    """Memoizes ``build`` (hashable arguments, e.g. shapes, dtype, device -> tensors that
    nothing writes to, or tuples of ints), for the per-call Python and small ops it saves.

    The tensors are made outside inference mode, so one first made there can still be
    saved for backward later. While torch.compile traces, ``build`` runs uncached: its
    ops then go into the graph, without a cache lookup for Dynamo to trace.
    """

    @functools.lru_cache(maxsize=128)
    def cached(*args):
        with torch.inference_mode(False):
            return build(*args)

    @functools.wraps(build)
    def constants(*args):
        return build(*args) if torch.compiler.is_compiling() else cached(*args)

    return constants
