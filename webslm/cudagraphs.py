"""Replay a training step's decoder layers as two CUDA graphs: one forward, one backward.

Why: LoRA training of a 0.5B model is bound by the CPU launching ~3,500 small kernels a step,
not by the GPU's arithmetic (bench/RESULTS.md, issue 16). A CUDA graph replays every kernel of a
recorded region with one launch. torch.compile's own CUDA graphs (`mode="reduce-overhead"`)
crashed on this step (graph trees, dynamic shapes: fourth pass), so the layers are recorded here
by hand, as `torch.cuda.make_graphed_callables` does, with what training needs besides:

- one recording per row shape (rows come padded to a few lengths: `training.BucketedRows`),
  all in one memory pool, whose blocks shorter rows' recordings reuse; a row longer than any
  recorded starts the pool over (`GraphedLayers.start_pool_over`);
- the gradients handed to autograd are fresh tensors (`make_graphed_callables` hands out its
  static buffers, which the next replay overwrites: wrong under gradient accumulation);
- a replay only while no earlier replay waits for its backward (the recordings share their
  memory); otherwise, and for anything not recorded, the layers simply run.

One process only: under DDP the first capture failed (`training.graph_recorder`).
`GraphedLayers` takes the place of a transformers model's layer list. Parameter names, the
module tree and the saved adapter stay as they were.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from webslm.errors import StageFailed

# A row shape gets recorded once; beyond this many shapes the layers run unrecorded.
MAX_RECORDINGS = 16
# Runs before each recording, outside it: they compile, autotune and allocate what a recording
# must not do, and load the kernels of a new row length (cuBLAS loads them lazily, which fails
# inside a capture: seen on the H200, bench/RESULTS.md, sixth pass).
WARMUP_RUNS = 2
# What may come with a call that replays; anything else runs unrecorded. A recording passes
# the layers `cu_seq_lens_q` (as both boundaries) and `max_length_q`, all that
# `training.varlen_attention` reads; it ignores `seq_idx` and `position_ids`.
REPLAYED_KWARGS = frozenset({"cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k",
                             "seq_idx"})

Key = tuple[Any, ...]
Run = Callable[..., torch.Tensor]


class Recording(Protocol):
    """One row shape's layers, forward and backward, replayable over new inputs."""

    params: tuple[torch.Tensor, ...]  # what the backward gives gradients of, in this order

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor: ...

    def backward(self, output_grad: torch.Tensor
                 ) -> tuple[torch.Tensor | None, tuple[torch.Tensor, ...]]:
        """(gradient of the first input or None, fresh gradients of the parameters)."""
        ...


class Recorder(Protocol):
    """Makes recordings: `CudaGraphRecorder` on a GPU; the tests bring a CPU stand-in."""

    def supports(self, hidden: torch.Tensor) -> bool: ...

    def record(self, run: Run, inputs: Sequence[torch.Tensor],
               params: Sequence[torch.Tensor]) -> Recording: ...

    def release(self) -> None:
        """Let go of the memory of the recordings made so far (they are no longer used)."""
        ...


def fresh_grads(input_grad: torch.Tensor | None, flat_param_grads: torch.Tensor,
                params: Sequence[torch.Tensor]
                ) -> tuple[torch.Tensor | None, tuple[torch.Tensor, ...]]:
    """Copies of a recording's gradient buffers, which its next replay overwrites: the
    parameters' in one copy, split into views of their shapes."""
    fresh = flat_param_grads.clone()
    grads = tuple(g.view_as(p) for g, p in
                  zip(fresh.split([p.numel() for p in params]), params, strict=True))
    return (None if input_grad is None else input_grad.clone()), grads


@dataclass
class CudaGraphRecording:
    """Static buffers and the two graphs that read and write them."""

    inputs: tuple[torch.Tensor, ...]
    output: torch.Tensor
    output_grad: torch.Tensor
    input_grad: torch.Tensor | None
    flat_param_grads: torch.Tensor
    params: tuple[torch.Tensor, ...]
    forward_graph: torch.cuda.CUDAGraph
    backward_graph: torch.cuda.CUDAGraph

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        for static, new in zip(self.inputs, inputs, strict=True):
            static.copy_(new)
        self.forward_graph.replay()
        return self.output.detach()

    def backward(self, output_grad: torch.Tensor
                 ) -> tuple[torch.Tensor | None, tuple[torch.Tensor, ...]]:
        self.output_grad.copy_(output_grad)
        self.backward_graph.replay()
        return fresh_grads(self.input_grad, self.flat_param_grads, self.params)


@dataclass
class CudaGraphRecorder:
    """Records on the current CUDA device; every recording shares one memory pool, and the
    warm-ups share one side stream (the caching allocator keeps a stream's freed blocks for
    that stream: with a new stream per recording, four recordings reserved 19.9 GiB, not 13.5)."""

    pool: Any = field(default_factory=lambda: torch.cuda.graph_pool_handle())
    side: torch.cuda.Stream = field(default_factory=lambda: torch.cuda.Stream())

    def supports(self, hidden: torch.Tensor) -> bool:
        return hidden.is_cuda

    def record(self, run: Run, inputs: Sequence[torch.Tensor],
               params: Sequence[torch.Tensor]) -> CudaGraphRecording:
        if len({p.dtype for p in params}) != 1:
            raise ValueError("the trained parameters do not share one dtype")
        static = tuple(t.detach().clone().requires_grad_(t.requires_grad) for t in inputs)
        wrt = [*static[:1], *params] if static[0].requires_grad else list(params)
        self.side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(self.side):
            for _ in range(WARMUP_RUNS):
                out = run(*static)
                torch.autograd.grad(out, wrt, torch.ones_like(out), allow_unused=True)
        torch.cuda.current_stream().wait_stream(self.side)
        del out
        torch.cuda.empty_cache()  # the warm-ups' cached blocks, before the pool takes its own
        forward_graph, backward_graph = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(forward_graph, pool=self.pool):
                output = run(*static)
            output_grad = torch.empty_like(output)
            with torch.cuda.graph(backward_graph, pool=self.pool):
                grads = torch.autograd.grad(output, wrt, output_grad, materialize_grads=True)
                param_grads = grads[len(wrt) - len(params):]
                flat = torch.cat([g.reshape(-1) for g in param_grads])
        except RuntimeError as error:  # seen under DDP: bench/RESULTS.md, fifth pass
            raise StageFailed(
                f"recording the decoder layers as a CUDA graph failed "
                f"({str(error).splitlines()[0]}); a failed recording leaves the GPU's random "
                f"number state unusable for this process", "train with --compile off") from error
        return CudaGraphRecording(
            inputs=static, output=output.detach(),  # the recording's autograd graph goes
            output_grad=output_grad,
            input_grad=grads[0] if len(grads) > len(params) else None,
            flat_param_grads=flat, params=tuple(params),
            forward_graph=forward_graph, backward_graph=backward_graph)

    def release(self) -> None:
        self.pool = torch.cuda.graph_pool_handle()  # the old pool goes with its graphs
        torch.cuda.empty_cache()


class Lease:
    """Marks a replay whose backward has not run; released by the backward or, if it never
    comes, when autograd drops the step's graph (the lease dies with it)."""

    def __init__(self, owner: GraphedLayers) -> None:
        self.owner: GraphedLayers | None = owner
        owner.pending += 1

    def release(self) -> None:
        if self.owner is not None:
            self.owner.pending -= 1
            self.owner = None

    def __del__(self) -> None:
        self.release()


class Replay(torch.autograd.Function):
    """Autograd's view of a replay: the recorded backward gives the gradients of the first
    input (when it requires grad) and of the trained parameters."""

    @staticmethod
    def forward(ctx: Any, owner: GraphedLayers, recording: Recording,
                hidden: torch.Tensor, rest: tuple[torch.Tensor, ...],
                *params: torch.Tensor) -> torch.Tensor:
        ctx.recording = recording
        ctx.lease = Lease(owner)
        return recording.forward((hidden, *rest))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, output_grad: torch.Tensor) -> tuple[Any, ...]:
        input_grad, param_grads = ctx.recording.backward(output_grad)
        ctx.lease.release()
        return (None, None, input_grad, None, *param_grads)


class GraphedLayers(torch.nn.ModuleList):
    """A model's decoder layers; the model's loop over them replays a recording when it can.

    Transformers' decoder models run `for layer in self.layers[:num_hidden_layers]`; that full
    slice here gives one callable, `run_all`, which runs every layer. A training forward of a
    padding-free row (the varlen attention's boundaries, no mask, no cache) replays the
    recording of its shape, recording it first; any other call runs the layers one by one.
    """

    def __init__(self, layers: Sequence[torch.nn.Module], recorder: Recorder,
                 max_recordings: int = MAX_RECORDINGS) -> None:
        super().__init__(layers)
        self.recorder = recorder
        self.max_recordings = max_recordings
        self.recordings: dict[Key, Recording | None] = {}  # None: could not record
        self.longest = 0  # the longest row recorded into the recorder's current pool
        self.pending = 0
        self.replays = 0
        self.recorded = 0  # recordings made, counting those let go for a longer row
        self.recording_seconds = 0.0

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            picked = list(self._modules.values())[index]
            if len(picked) == len(self) and picked:
                return [self.run_all]
            return torch.nn.ModuleList(picked)
        return super().__getitem__(index)

    def run_layers(self, hidden_states: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        for layer in self:
            hidden_states = layer(hidden_states, **kwargs)
        return hidden_states

    def run_all(self, hidden_states: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        key = self.replay_key(hidden_states, kwargs)
        recording = self.recording_for(key, hidden_states, kwargs) if key is not None else None
        if recording is None:
            return self.run_layers(hidden_states, **kwargs)
        cos, sin = kwargs["position_embeddings"]
        rest = (cos, sin, kwargs["cu_seq_lens_q"])
        self.replays += 1
        return Replay.apply(self, recording, hidden_states, rest, *recording.params)

    def replay_key(self, hidden: torch.Tensor, kwargs: dict[str, Any]) -> Key | None:
        """The shape a replay depends on, or None when this call must run unrecorded."""
        embeddings = kwargs.get("position_embeddings")
        bounds = kwargs.get("cu_seq_lens_q")
        longest = kwargs.get("max_length_q")
        others = {k for k, v in kwargs.items() if v is not None} - {
            "position_embeddings", "position_ids", "use_cache", *REPLAYED_KWARGS}
        if (others or self.pending or not self.training or not torch.is_grad_enabled()
                or kwargs.get("use_cache") or not self.recorder.supports(hidden)
                or not isinstance(bounds, torch.Tensor) or not isinstance(longest, int)
                or not isinstance(embeddings, tuple) or len(embeddings) != 2):
            return None
        cos, sin = embeddings
        device = hidden.device.type
        return (tuple(hidden.shape), hidden.dtype, hidden.requires_grad, tuple(cos.shape),
                cos.dtype, tuple(bounds.shape), bounds.dtype, longest,
                torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))

    def recording_for(self, key: Key, hidden: torch.Tensor,
                      kwargs: dict[str, Any]) -> Recording | None:
        if key in self.recordings:
            return self.recordings[key]
        if len(self.recordings) >= self.max_recordings:
            return None
        if hidden.shape[1] > self.longest:
            self.start_pool_over(hidden.shape[1])
        longest = kwargs["max_length_q"]

        def run(hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                bounds: torch.Tensor) -> torch.Tensor:
            return self.run_layers(hidden, position_embeddings=(cos, sin),
                                   cu_seq_lens_q=bounds, cu_seq_lens_k=bounds,
                                   max_length_q=longest, max_length_k=longest)

        cos, sin = kwargs["position_embeddings"]
        device = hidden.device.type
        autocast = torch.autocast(device, dtype=torch.get_autocast_dtype(device),
                                  enabled=torch.is_autocast_enabled(device),
                                  cache_enabled=False)  # cached casts would outlive a replay
        began = time.perf_counter()
        try:
            with autocast:
                recording: Recording | None = self.recorder.record(
                    run, (hidden, cos, sin, kwargs["cu_seq_lens_q"]),
                    [p for p in self.parameters() if p.requires_grad])
        except (RuntimeError, ValueError) as error:  # before recording: see CudaGraphRecorder
            print(f"note: CUDA graphs are off for rows of {tuple(hidden.shape)} "
                  f"({str(error).splitlines()[0]}); those steps run unrecorded", file=sys.stderr)
            recording = None
        self.recording_seconds += time.perf_counter() - began
        self.recordings[key] = recording
        self.recorded += recording is not None
        return recording

    def start_pool_over(self, length: int) -> None:
        """Before recording a row longer than any so far: let go of the recordings and their
        pool, so shorter rows, recorded again as they come, reuse the longer one's blocks.

        A recording's activations fit only blocks at least as large, so recorded shortest
        first, the pool grew by each row length's whole size. Four lengths of a 0.5B model
        reserved 13.8 GiB for a peak allocation of 5.6; starting over, 9.6 GiB, for 8
        recordings instead of 4 (bench/RESULTS.md, seventh pass).
        """
        if any(recording is not None for recording in self.recordings.values()):
            self.recordings = {k: v for k, v in self.recordings.items() if v is None}
            self.recorder.release()
        self.longest = length


def replay_layers(backbone: Any, recorder: Recorder) -> GraphedLayers:
    """Put `GraphedLayers` in place of `backbone.layers` (a transformers decoder model)."""
    layers = backbone.layers
    assert isinstance(layers, torch.nn.ModuleList)
    graphed = GraphedLayers(list(layers), recorder)
    backbone.layers = graphed
    return graphed
