"""CUDA-graph replay of the decoder layers (webslm.cudagraphs), as training uses it.

A CUDA graph cannot be recorded on this CPU-only machine, so most tests here use
`RerunRecorder`, a TEST STAND-IN for `CudaGraphRecorder` at that boundary: it keeps the real
recorder's static buffers and contract (inputs copied into fixed tensors, one output buffer and
one flat gradient buffer overwritten by every replay) and runs the recorded function again
instead of replaying kernels. Everything around it (which calls replay, the autograd wiring,
fresh gradients under accumulation, the shapes, the names) is the product's code. The last test
runs the real recorder and is skipped without a CUDA GPU (it ran on the lent H200:
bench/RESULTS.md, fifth pass).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_finetune import LR, write_data

from webslm import training
from webslm.chatdata import load_tokenizer, read_chat_data, tokenize_all
from webslm.cudagraphs import GraphedLayers, Run, fresh_grads
from webslm.errors import StageFailed
from webslm.recipe import Recipe


@dataclasses.dataclass
class RerunRecording:
    """TEST STAND-IN for `CudaGraphRecording`: the same buffers, the function run again."""

    run: Run
    inputs: tuple[torch.Tensor, ...]
    wrt_input: bool
    params: tuple[torch.Tensor, ...]
    output: torch.Tensor | None = None
    flat_param_grads: torch.Tensor | None = None

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        for static, new in zip(self.inputs, inputs, strict=True):
            static.detach().copy_(new)
        with torch.enable_grad():
            self.output = self.run(*self.inputs)
        return self.output.detach()

    def backward(self, output_grad: torch.Tensor
                 ) -> tuple[torch.Tensor | None, tuple[torch.Tensor, ...]]:
        assert self.output is not None
        wrt = [*self.inputs[:1], *self.params] if self.wrt_input else list(self.params)
        grads = torch.autograd.grad(self.output, wrt, output_grad, materialize_grads=True)
        flat = torch.cat([g.reshape(-1) for g in grads[len(grads) - len(self.params):]])
        if self.flat_param_grads is None:
            self.flat_param_grads = torch.empty_like(flat)
        self.flat_param_grads.copy_(flat)  # the static buffer every replay overwrites
        return fresh_grads(grads[0] if self.wrt_input else None, self.flat_param_grads,
                           self.params)


@dataclasses.dataclass
class RerunRecorder:
    """TEST STAND-IN for `CudaGraphRecorder` (see the module docstring)."""

    recorded: list[tuple[int, ...]] = dataclasses.field(default_factory=list)
    releases: int = 0

    def supports(self, hidden: torch.Tensor) -> bool:
        return True

    def release(self) -> None:
        self.releases += 1

    def record(self, run: Run, inputs: Sequence[torch.Tensor],
               params: Sequence[torch.Tensor]) -> RerunRecording:
        self.recorded.append(tuple(inputs[0].shape))
        static = tuple(t.detach().clone().requires_grad_(t.requires_grad) for t in inputs)
        return RerunRecording(run, static, inputs[0].requires_grad, tuple(params))


def train(tiny_qwen2: Path, tmp_path: Path, recipe: Recipe, recorder: RerunRecorder | None,
          monkeypatch: pytest.MonkeyPatch) -> tuple[list[float], dict, object]:
    monkeypatch.setattr(training, "COMPILE_BACKEND", "aot_eager")  # Inductor: minutes on 2 cores
    monkeypatch.setattr(training, "graph_recorder", lambda recipe, world_size: recorder)
    tmp_path.mkdir()
    tokenizer = load_tokenizer(tiny_qwen2)
    examples = tokenize_all(tokenizer, read_chat_data([write_data(tmp_path / "c.jsonl")]), 1024)
    torch.manual_seed(0)
    model = training.load_base_model(tiny_qwen2, "fp32", recipe)
    trainer = training.build_trainer(model, tokenizer, examples, recipe, tmp_path / "run",
                                     precision="fp32", world_size=1)
    trainer.train()
    trainer.model.save_pretrained(str(tmp_path / "adapter"))
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    layers = training.decoder_stack(trainer.model).layers
    return losses, load_file(tmp_path / "adapter" / "adapter_model.safetensors"), layers


@pytest.mark.parametrize("budget", [0.5, None])
def test_replayed_layers_train_exactly_like_eager(tiny_qwen2: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  budget: float | None) -> None:
    """Two micro batches per step (accumulated gradients), rows padded to buckets, layers
    replayed: the same losses and adapter as eager training, under the same names."""
    # dropout 0: eager and compiled code draw dropout masks from different generators
    base = Recipe(epochs=2, learning_rate=float(LR), lora_dropout=0.0, global_batch=8,
                  micro_batch=4, activation_budget=budget)
    eager_losses, eager_adapter, eager_layers = train(
        tiny_qwen2, tmp_path / "eager", dataclasses.replace(base, compile_layers="off"), None,
        monkeypatch)
    recorder = RerunRecorder()
    losses, adapter, layers = train(tiny_qwen2, tmp_path / "graphs",
                                    dataclasses.replace(base, compile_layers="on"), recorder,
                                    monkeypatch)
    assert not isinstance(eager_layers, GraphedLayers)
    assert isinstance(layers, GraphedLayers)
    # 16 conversations, 8 per step in micro batches of 4: 4 steps of 2 replays, one shape
    assert layers.replays == 8
    assert [shape[:2] for shape in recorder.recorded] == [(1, training.TOKEN_BUCKET)]
    assert layers.pending == 0
    assert losses == pytest.approx(eager_losses, rel=1e-4)
    assert adapter.keys() == eager_adapter.keys()
    worst = max((adapter[k] - eager_adapter[k]).abs().max().item() for k in adapter)
    assert worst < 1e-4, worst  # padded rows sum in another order: ~1e-5 apart
    assert any((adapter[k] != 0).any() for k in adapter if "lora_B" in k)  # it trained


class Doubler(torch.nn.Module):
    """A stand-in decoder layer: h * w + cos, so every input matters."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.tensor(2.0))

    def forward(self, hidden: torch.Tensor, position_embeddings: tuple[torch.Tensor, ...],
                **kwargs: object) -> torch.Tensor:
        return hidden * self.weight + position_embeddings[0]


def layer_kwargs(tokens: int) -> dict:
    embeddings = (torch.ones(1, tokens, 2), torch.zeros(1, tokens, 2))
    return {"position_embeddings": embeddings, "position_ids": torch.arange(tokens)[None],
            "cu_seq_lens_q": torch.tensor([0, tokens], dtype=torch.int32), "max_length_q": tokens}


def test_only_training_forwards_of_padding_free_rows_replay() -> None:
    layers = GraphedLayers([Doubler(), Doubler()], RerunRecorder())
    assert layers[:2] == [layers.run_all]  # what transformers' loop iterates
    assert [type(m) for m in layers[:1]] == [Doubler] and len(list(layers)) == 2
    assert list(dict(layers.named_parameters())) == ["0.weight", "1.weight"]
    hidden = torch.ones(1, 3, 2)
    expected = (hidden * 2 + 1) * 2 + 1
    for blocked in ({"max_length_q": None}, {"cu_seq_lens_q": None}, {"use_cache": True},
                    {"attention_mask": torch.ones(1, 3)}):
        assert torch.equal(layers.run_all(hidden, **{**layer_kwargs(3), **blocked}), expected)
    with torch.no_grad():
        assert torch.equal(layers.run_all(hidden, **layer_kwargs(3)), expected)
    layers.eval()
    assert torch.equal(layers.run_all(hidden, **layer_kwargs(3)), expected)
    assert layers.replays == 0 and not layers.recordings
    layers.train()
    assert torch.equal(layers.run_all(hidden, **layer_kwargs(3)), expected)
    assert layers.replays == 1 and len(layers.recordings) == 1


def test_a_second_forward_before_the_backward_runs_unrecorded() -> None:
    """Recordings share memory: a replay waiting for its backward must not be overwritten."""
    layers = GraphedLayers([Doubler()], RerunRecorder())
    first = layers.run_all(torch.full((1, 3, 2), 1.0), **layer_kwargs(3))
    second = layers.run_all(torch.full((1, 3, 2), 5.0), **layer_kwargs(3))
    assert layers.replays == 1 and layers.pending == 1
    (first.sum() + second.sum()).backward()
    assert layers.pending == 0
    assert layers[0].weight.grad.item() == pytest.approx(6 * 1.0 + 6 * 5.0)
    dropped = layers.run_all(torch.ones(1, 3, 2), **layer_kwargs(3))  # never backpropagated
    del dropped
    assert layers.pending == 0  # its lease died with its graph
    layers.run_all(torch.ones(1, 3, 2), **layer_kwargs(3))
    assert layers.replays == 3


def test_a_longer_row_starts_the_pool_over() -> None:
    """Recordings share one memory pool, and a recording fits only blocks at least as large
    as its own: before a row longer than any recorded, the recordings and their pool go, and
    shorter rows are recorded again as they come, into the longer one's blocks."""
    recorder = RerunRecorder()
    layers = GraphedLayers([Doubler()], recorder)
    for tokens in (3, 5, 3, 4, 5, 6, 3):
        hidden = torch.ones(1, tokens, 2, requires_grad=True)
        out = layers.run_all(hidden, **layer_kwargs(tokens))
        out.sum().backward()
        assert torch.equal(out, torch.full((1, tokens, 2), 3.0))
        assert torch.equal(hidden.grad, torch.full((1, tokens, 2), 2.0))
    assert [shape[1] for shape in recorder.recorded] == [3, 5, 3, 4, 6, 3]
    assert recorder.releases == 2  # before 5 and before 6
    assert layers.recorded == 6 and layers.replays == 7
    assert sorted(key[0][1] for key in layers.recordings) == [3, 6]


def test_a_shape_that_cannot_be_recorded_runs_unrecorded(capsys: pytest.CaptureFixture) -> None:
    class Failing(RerunRecorder):
        def record(self, *args: object, **kwargs: object) -> RerunRecording:
            raise RuntimeError("operation not permitted when stream is capturing\nmore")

    layers = GraphedLayers([Doubler()], Failing())
    out = layers.run_all(torch.ones(1, 3, 2), **layer_kwargs(3))
    assert torch.equal(out, torch.full((1, 3, 2), 3.0)) and layers.replays == 0
    layers.run_all(torch.ones(1, 3, 2), **layer_kwargs(3))
    err = capsys.readouterr().err
    assert err.count("note: CUDA graphs are off for rows of (1, 3, 2)") == 1  # said once
    assert "operation not permitted" in err and "more" not in err


def test_a_failed_capture_stops_training_with_what_to_do() -> None:
    """A capture that fails part-way leaves the process's CUDA state unusable (seen under
    DDP), so it is not run around: training stops with one line."""
    class Broken(RerunRecorder):
        def record(self, *args: object, **kwargs: object) -> RerunRecording:
            raise StageFailed("recording the decoder layers as a CUDA graph failed (x)",
                              "train with --compile off")

    layers = GraphedLayers([Doubler()], Broken())
    with pytest.raises(StageFailed, match="--compile off"):
        layers.run_all(torch.ones(1, 3, 2), **layer_kwargs(3))


def test_cuda_graphs_only_for_one_padding_free_gpu_process(monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(training, "CudaGraphRecorder", RerunRecorder)
    assert isinstance(training.graph_recorder(Recipe(), 1), RerunRecorder)
    assert training.graph_recorder(Recipe(), 2) is None  # DDP: bench/RESULTS.md, fifth pass
    assert training.graph_recorder(Recipe(cuda_graphs=False), 1) is None
    assert training.graph_recorder(Recipe(padding_free=False), 1) is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert training.graph_recorder(Recipe(), 1) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="records real CUDA graphs")
def test_cuda_graph_replays_train_like_unrecorded_layers(tiny_qwen2: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU: the real recorder, Inductor, bf16; losses as without CUDA graphs."""
    base = Recipe(epochs=2, learning_rate=float(LR), lora_dropout=0.0, global_batch=8,
                  micro_batch=4, compile_layers="on")
    plain_losses, plain_layers = train_on_gpu(
        tiny_qwen2, tmp_path / "plain", dataclasses.replace(base, cuda_graphs=False))
    losses, layers = train_on_gpu(tiny_qwen2, tmp_path / "graphs", base)
    assert getattr(plain_layers, "replays", 0) == 0 and layers.replays == 8
    assert losses == pytest.approx(plain_losses, rel=2e-2)


def train_on_gpu(tiny_qwen2: Path, tmp_path: Path, recipe: Recipe
                 ) -> tuple[list[float], torch.nn.Module]:
    """Train the tiny model in bf16 on the GPU as `webslm finetune` would; losses and layers."""
    tmp_path.mkdir()
    tokenizer = load_tokenizer(tiny_qwen2)
    examples = tokenize_all(tokenizer, read_chat_data([write_data(tmp_path / "c.jsonl")]), 1024)
    # compiled afresh, as each `webslm finetune` process compiles: layers compiled by an earlier
    # test of this process (other options, dynamic shapes) filled dynamo's cache for the same
    # forward, and a checkpointed recomputation then ran uncompiled (bench/raw/issue16/49-*)
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = training.load_base_model(tiny_qwen2, "bf16", recipe).cuda()
    trainer = training.build_trainer(model, tokenizer, examples, recipe, tmp_path / "run",
                                     precision="bf16", world_size=1)
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return losses, training.decoder_stack(trainer.model).layers
