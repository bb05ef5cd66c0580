"""LoRA's dropout drawn inside its A product (webslm.fusedlora), as replayed training uses it.

The Triton kernels are the product's own. Without a GPU they run in Triton's CPU interpreter
(conftest sets TRITON_INTERPRET=1 there), which executes the same kernel code on CPU tensors.
What a user relies on: the forward and both gradients are PEFT's dropout-then-A maths for the
mask the kernel drew, one mask per call shared by the forward and the backward, about 1 - p of
the inputs kept, no dropout in evaluation, and an adapter saved under PEFT's own names.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file
from test_cudagraphs import RerunRecorder, train, train_on_gpu
from test_finetune import LR
from transformers import AutoModelForCausalLM

from webslm import training
from webslm.fusedlora import (
    DroppedLoraA,
    drawn_probability,
    dropped_lora_a,
    dropped_lora_a_input_grad,
    dropped_lora_a_weight_grad,
    fuse_lora_dropout,
)
from webslm.recipe import Recipe

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # the real kernels, or interpreted


def kept_inputs(x: torch.Tensor, rank: int, seed: torch.Tensor, p: float) -> torch.Tensor:
    """What the kernel multiplied A by: x after its dropout, read back through one-hot As."""
    columns = x.shape[1]
    out = torch.empty_like(x)
    with torch.no_grad():
        for first in range(0, columns, rank):
            picks = torch.zeros(rank, columns, device=x.device)
            taken = range(first, min(first + rank, columns))
            picks[torch.arange(len(taken)), torch.tensor(taken)] = 1.0
            out[:, first:first + len(taken)] = dropped_lora_a(x, picks, seed, p)[:, :len(taken)]
    return out


def weight_grad_inputs(x: torch.Tensor, rank: int, seed: torch.Tensor, p: float
                       ) -> torch.Tensor:
    """What the weight gradient's kernel multiplied g by: x after its dropout, read back through
    one-hot gradients (row i of A's gradient is then exactly row first + i of the dropped x)."""
    tokens = x.shape[0]
    out = torch.empty_like(x)
    for first in range(0, tokens, rank):
        taken = range(first, min(first + rank, tokens))
        g = torch.zeros(tokens, rank, dtype=x.dtype, device=x.device)
        g[torch.tensor(taken), torch.arange(len(taken))] = 1.0
        grad = dropped_lora_a_weight_grad(g, x, seed, p)
        out[first:first + len(taken)] = grad[:len(taken)].to(x.dtype)
    return out


@pytest.mark.parametrize(("dtype", "rank", "p"), [(torch.float32, 8, 0.25),
                                                  (torch.bfloat16, 16, 0.1)])
def test_the_forward_and_both_gradients_draw_one_mask_bit_for_bit(dtype: torch.dtype,
                                                                  rank: int, p: float) -> None:
    """The mask is drawn three times, by kernels with other tiles (32-row forward tiles, 64-row
    gradient tiles, the weight gradient's row splits): each must draw it bit for bit, or the
    backward is not the forward's gradient. Read back exactly, not through sums: the dropped
    x the forward used, the one the weight gradient used (300 rows: two row splits), and the
    input gradient's zeros."""
    torch.manual_seed(1)
    tokens, columns = 300, 200
    x = torch.randn(tokens, columns, dtype=dtype, device=DEVICE)
    seed = torch.tensor([987], device=DEVICE)
    forward = kept_inputs(x, rank, seed, p)
    assert torch.equal(forward, kept_inputs(x, rank, seed, p))  # the same draw, call after call
    assert torch.equal(weight_grad_inputs(x, rank, seed, p), forward)
    ones = torch.ones(tokens, rank, dtype=dtype, device=DEVICE)
    input_grad = dropped_lora_a_input_grad(ones, torch.ones(rank, columns, device=DEVICE), seed,
                                           p, columns)
    assert torch.equal(input_grad != 0, forward != 0)
    assert 0 < (forward == 0).float().mean().item() < 2 * p


@pytest.mark.parametrize(("dtype", "rank", "p"), [(torch.float32, 8, 0.25),
                                                  (torch.bfloat16, 16, 0.1)])
def test_the_kernels_compute_dropout_then_a_and_its_gradients(dtype: torch.dtype, rank: int,
                                                              p: float) -> None:
    """Odd sizes (tails in every tile), a rank below tl.dot's 16 and one at it; a p the draws
    hold exactly and one they round (0.1 is drawn as 6554/65536)."""
    torch.manual_seed(0)
    tokens, columns = 130, 200
    drawn = drawn_probability(p)
    assert abs(drawn - p) <= 2**-17
    x = torch.randn(tokens, columns, dtype=dtype, device=DEVICE, requires_grad=True)
    a = torch.randn(rank, columns, device=DEVICE, requires_grad=True)  # fp32, as in PEFT
    seed = torch.tensor([1234], device=DEVICE)
    dropped = kept_inputs(x.detach(), rank, seed, p)
    kept = dropped != 0
    # kept values are x * (1 / (1 - p)) in x's dtype, as torch's dropout gives them (within
    # one rounding: Triton's CPU interpreter truncates to bf16 where a GPU rounds to nearest)
    scaled = x.detach().float() * (1 / (1 - drawn))
    ulp = torch.finfo(dtype).eps
    assert torch.allclose(dropped[kept].float(), scaled[kept], rtol=ulp, atol=0)
    share = kept.float().mean().item()
    spread = 4 * ((1 - p) * p / kept.numel()) ** 0.5
    assert abs(share - (1 - p)) < spread, share
    # sums of products: within a share of the summed magnitudes (bf16 rounds every input)
    share_of_magnitude = {torch.float32: 1e-5, torch.bfloat16: 2e-2}[dtype]
    a_used = a.detach().to(dtype).double()

    h = dropped_lora_a(x, a, seed, p)
    assert h.dtype == dtype and h.shape == (tokens, rank)
    assert_sums_close(h, dropped.double(), a_used.T, share_of_magnitude)

    g = torch.randn(tokens, rank, dtype=dtype, device=DEVICE)
    h.backward(g)
    assert x.grad is not None and a.grad is not None
    assert x.grad.dtype == dtype and a.grad.dtype == torch.float32
    assert (x.grad[~kept] == 0).all()  # the backward dropped what the forward dropped
    assert_sums_close(x.grad * (1 - drawn), g.double(), a_used, share_of_magnitude, kept)
    assert_sums_close(a.grad, g.double().T, dropped.double(), share_of_magnitude)


def assert_sums_close(got: torch.Tensor, left: torch.Tensor, right: torch.Tensor,
                      share: float, where: torch.Tensor | None = None) -> None:
    """got == left @ right (where `where`), each entry within `share` of |left| @ |right|."""
    where = torch.ones_like(got, dtype=torch.bool) if where is None else where
    error = (got.double() - left @ right).abs()[where]
    bound = share * (left.abs() @ right.abs())[where] + 1e-12
    assert (error <= bound).all(), (error / bound).max().item()


def test_each_training_call_draws_a_new_mask_and_evaluation_none() -> None:
    torch.manual_seed(0)
    lora_a = torch.nn.Linear(48, 16, bias=False, device=DEVICE)
    layer = DroppedLoraA(lora_a, 0.5)
    assert layer.weight is lora_a.weight  # the optimizer's parameter, the adapter's name
    x = torch.randn(2, 40, 48, device=DEVICE)
    first, second = layer(x), layer(x)
    assert first.shape == (2, 40, 16)
    assert not torch.equal(first, second)
    layer.eval()
    assert torch.equal(layer(x), torch.nn.functional.linear(x, lora_a.weight))


def peft_model(tiny_qwen2: Path, dropout: float) -> torch.nn.Module:
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_qwen2)
    return get_peft_model(base, LoraConfig(r=16, lora_alpha=32, lora_dropout=dropout,
                                           target_modules="all-linear", task_type="CAUSAL_LM"))


def test_fusing_keeps_the_adapters_names_and_evaluation(tiny_qwen2: Path) -> None:
    plain, fused = peft_model(tiny_qwen2, 0.1), peft_model(tiny_qwen2, 0.1)
    fused.load_state_dict(plain.state_dict())
    params = {name: id(p) for name, p in fused.named_parameters()}
    layers = len(training.decoder_layers(fused))
    assert fuse_lora_dropout(fused) == 7 * layers  # q k v o gate up down
    assert {name: id(p) for name, p in fused.named_parameters()} == params
    assert fused.state_dict().keys() == plain.state_dict().keys()
    assert not any(isinstance(m, torch.nn.Dropout) for m in fused.modules())
    assert sum(isinstance(m, DroppedLoraA) for m in fused.modules()) == 7 * layers
    ids = torch.tensor([[5, 9, 2, 7, 11, 3]])
    plain.eval()
    fused.eval()
    with torch.no_grad():
        assert torch.equal(fused(ids).logits, plain(ids).logits)
    assert fuse_lora_dropout(peft_model(tiny_qwen2, 0.0)) == 0  # nothing to draw


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU, the test below runs it for real")
def test_replayed_training_draws_lora_dropout_in_the_kernels(tiny_qwen2: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    """Replayed layers (TEST STAND-IN recorder, see test_cudagraphs) with dropout 0.1: the
    kernels run in every step, the adapter keeps PEFT's names and learns as PEFT's dropout
    does (other random numbers, so close, not equal)."""
    # two micro batches per step (accumulated gradients); ~2 minutes in Triton's interpreter
    base = Recipe(epochs=2, learning_rate=float(LR), lora_dropout=0.1, global_batch=8,
                  micro_batch=4)
    eager_losses, eager_adapter, _ = train(
        tiny_qwen2, tmp_path / "eager", dataclasses.replace(base, compile_layers="off"), None,
        monkeypatch)
    losses, adapter, layers = train(tiny_qwen2, tmp_path / "fused",
                                    dataclasses.replace(base, compile_layers="on"),
                                    RerunRecorder(), monkeypatch)
    assert layers.replays == 8
    assert sum(isinstance(m, DroppedLoraA) for m in layers.modules()) == 7 * len(layers)
    assert not any(isinstance(m, torch.nn.Dropout) for m in layers.modules())
    assert adapter.keys() == eager_adapter.keys()
    assert losses[-1] < losses[0]  # it learns
    assert losses == pytest.approx(eager_losses, rel=0.1)
    saved = load_file(tmp_path / "fused" / "adapter" / "adapter_model.safetensors")
    assert all(torch.isfinite(t).all() for t in saved.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="records real CUDA graphs")
def test_on_a_gpu_fused_dropout_trains_like_peft_dropout(tiny_qwen2: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The real recorder, Inductor, bf16, dropout 0.1: with the kernels as with PEFT's."""
    recipe = Recipe(epochs=2, learning_rate=float(LR), lora_dropout=0.1, global_batch=8,
                    micro_batch=4, compile_layers="on")
    monkeypatch.setattr(training, "FUSED_LORA_DROPOUT", False)
    peft_losses, peft_layers = train_on_gpu(tiny_qwen2, tmp_path / "peft", recipe)
    monkeypatch.setattr(training, "FUSED_LORA_DROPOUT", True)
    losses, layers = train_on_gpu(tiny_qwen2, tmp_path / "fused", recipe)
    assert peft_layers.replays == layers.replays == 8
    assert not any(isinstance(m, DroppedLoraA) for m in peft_layers.modules())
    assert sum(isinstance(m, DroppedLoraA) for m in layers.modules()) == 7 * len(layers)
    assert losses == pytest.approx(peft_losses, rel=5e-2)
