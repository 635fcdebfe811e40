"""Whole training steps replayed as CUDA graphs (``cuda_graph=true``, ``Accel(graph=True)``)."""

from __future__ import annotations

from typing import Any, Callable

import torch


class GraphedStep:
    """One whole training step replayed as a CUDA graph (``Accel(graph=True)`` on CUDA), for
    loops whose time goes to launching many small kernels (the WGAN-GP prior: 5 critic steps
    with a double-backward penalty and a generator step per call).

    ``fn`` must do the same work on tensors at the same addresses on every call: its inputs are
    written into static tensors before each call, its optimisers are built with
    ``capturable=True``. The first ``warmup`` calls run ``fn`` eagerly on a side stream (cuDNN
    autotuning and allocator warm-up, as the CUDA-graph documentation requires); the next call
    captures ``fn`` (capturing runs nothing) and replays it; later calls replay it. So every call
    is one real step. Returns ``fn``'s outputs (static tensors after the capture, overwritten by
    the next call)."""

    def __init__(self, fn: Callable[[], Any], warmup: int = 3):
        self.fn, self.warmup, self.calls = fn, warmup, 0
        self.graph: Any = None
        self.out: Any = None
        self.stream = torch.cuda.Stream()

    def __call__(self) -> Any:
        self.calls += 1
        if self.calls <= self.warmup:
            self.stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.stream):
                out = self.fn()
            torch.cuda.current_stream().wait_stream(self.stream)
            return out
        if self.graph is None:
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.out = self.fn()
        self.graph.replay()
        return self.out
