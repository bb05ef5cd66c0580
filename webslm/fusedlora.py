"""LoRA's input dropout drawn inside its A product (Triton), instead of written out.

PEFT computes `B(A(dropout(x)))`: the dropout writes a copy of `x` and a mask for each adapted
projection (seven per Qwen2 layer, the widest 4864 columns), and the backward reads the mask
back. Once the layers replay as CUDA graphs those passes are the largest elementwise traffic in
a step: training without dropout measured 1.19x the tokens/s. Here the mask is never stored
(1.05x the tokens/s of PEFT's dropout at 0.92x the peak memory: bench/RESULTS.md, tenth pass).
Each kernel draws it again from one seed per call, with Triton's Philox generator keyed by the
element's position, so the forward and both gradients see the same mask (p below is the drawn
probability, `drawn_probability`):

- forward: `h = (x * keep / (1 - p)) @ A.T`, the dropped-out `x` only in registers;
- input gradient: `keep / (1 - p) * (g @ A)`;
- weight gradient: `g.T @ (x * keep / (1 - p))`, summed over row splits in a fixed order (no
  atomics), so it is the same on every run.

The maths is PEFT's: the kept values are rounded to the input's dtype before the product, as
Inductor's dropout does; only the random numbers differ (another generator). On a CPU the same
kernels run in Triton's interpreter (TRITON_INTERPRET=1), which the tests use.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl
from torch.library import custom_op

ROWS = 64  # row tile of the gradients' kernels
FORWARD_ROWS = 32  # the forward's (two programs per multiprocessor at ~8k tokens)
COLUMNS = 64  # column tile (the input's features) of every kernel
SPLIT_PROGRAMS = 264  # the weight gradient aims at two programs per H100/H200 multiprocessor
# Each 32-bit word of Philox gives two 16-bit draws, so p is drawn as a multiple of 1/65536
# (`drawn_probability`). Philox4x32 with 7 rounds passes TestU01's BigCrush (Salmon et al.,
# "Parallel random numbers: as easy as 1, 2, 3", SC 2011); its default 10 add a safety margin.
# 7 rounds measured 1.06x the step's tokens/s of 10 (bench/RESULTS.md, tenth pass).
DRAWS_PER_WORD = 2
PHILOX_ROUNDS = 7


@triton.jit
def _kept(seed, rows, first_col, columns, threshold, row_tile: tl.constexpr,
          column_tile: tl.constexpr, halves: tl.constexpr, rounds: tl.constexpr):
    """Whether each element of a tile survives dropout: the same draw wherever it is asked.

    One Philox call gives four 32-bit words, for 4 * `halves` neighbouring columns (tiles
    start at multiples of eight); an element is kept when its draw is at least `threshold`.
    """
    per_call: tl.constexpr = 4 * halves
    groups = (columns + per_call - 1) // per_call
    calls = rows[:, None] * groups + (first_col // per_call
                                      + tl.arange(0, column_tile // per_call))[None, :]
    r0, r1, r2, r3 = tl.randint4x(seed, calls, rounds)
    words = tl.join(tl.join(r0, r1), tl.join(r2, r3))
    if halves == 2:
        draws = tl.join(words & 0xFFFF, words >> 16)
    else:
        draws = words >> 1
    return tl.reshape(draws, (row_tile, column_tile)) >= threshold


@triton.jit
def _dropped_tile(x_ptr, seed, rows, first_col, row_end, columns, threshold, scale,
                  row_tile: tl.constexpr, column_tile: tl.constexpr, halves: tl.constexpr,
                  rounds: tl.constexpr):
    """A tile of x after dropout (rows below `row_end`), in x's dtype, never written out."""
    cols = first_col + tl.arange(0, column_tile)
    inside = (rows[:, None] < row_end) & (cols[None, :] < columns)
    x = tl.load(x_ptr + rows[:, None] * columns + cols[None, :], mask=inside, other=0.0)
    keep = _kept(seed, rows, first_col, columns, threshold, row_tile, column_tile, halves,
                 rounds)
    return tl.where(keep, x.to(tl.float32) * scale, 0.0).to(x.dtype)


@triton.jit
def _dot(left, right, acc, dot_fp32: tl.constexpr):
    """acc + left @ right, on values already in the input's dtype (see `_dot_fp32`)."""
    if dot_fp32:
        return tl.dot(left.to(tl.float32), right.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(left, right, acc)


@triton.jit
def _dropped_a_kernel(x_ptr, a_ptr, h_ptr, seed_ptr, tokens,
                      columns, threshold, scale, rank: tl.constexpr,
                      rank_tile: tl.constexpr, row_tile: tl.constexpr, column_tile: tl.constexpr,
                      dot_fp32: tl.constexpr, halves: tl.constexpr, rounds: tl.constexpr):
    rows = tl.program_id(0) * row_tile + tl.arange(0, row_tile)
    ranks = tl.arange(0, rank_tile)
    seed = tl.load(seed_ptr)
    acc = tl.zeros((row_tile, rank_tile), dtype=tl.float32)
    for start in range(0, columns, column_tile):
        cols = start + tl.arange(0, column_tile)
        dropped = _dropped_tile(x_ptr, seed, rows, start, tokens, columns, threshold, scale,
                                row_tile, column_tile, halves, rounds)
        a = tl.load(a_ptr + ranks[None, :] * columns + cols[:, None],
                    mask=(ranks[None, :] < rank) & (cols[:, None] < columns), other=0.0)
        acc = _dot(dropped, a.to(dropped.dtype), acc, dot_fp32)
    tl.store(h_ptr + rows[:, None] * rank + ranks[None, :], acc.to(h_ptr.dtype.element_ty),
             mask=(rows[:, None] < tokens) & (ranks[None, :] < rank))


@triton.jit
def _input_grad_kernel(g_ptr, a_ptr, gx_ptr, seed_ptr, tokens,
                       columns, threshold, scale, rank: tl.constexpr,
                       rank_tile: tl.constexpr, row_tile: tl.constexpr, column_tile: tl.constexpr,
                       dot_fp32: tl.constexpr, halves: tl.constexpr, rounds: tl.constexpr):
    rows = tl.program_id(0) * row_tile + tl.arange(0, row_tile)
    first_col = tl.program_id(1) * column_tile
    cols = first_col + tl.arange(0, column_tile)
    ranks = tl.arange(0, rank_tile)
    seed = tl.load(seed_ptr)
    g = tl.load(g_ptr + rows[:, None] * rank + ranks[None, :],
                mask=(rows[:, None] < tokens) & (ranks[None, :] < rank), other=0.0)
    a = tl.load(a_ptr + ranks[:, None] * columns + cols[None, :],
                mask=(ranks[:, None] < rank) & (cols[None, :] < columns), other=0.0)
    acc = _dot(g, a.to(g.dtype), tl.zeros((row_tile, column_tile), dtype=tl.float32), dot_fp32)
    keep = _kept(seed, rows, first_col, columns, threshold, row_tile, column_tile, halves, rounds)
    grad = tl.where(keep, acc * scale, 0.0)
    tl.store(gx_ptr + rows[:, None] * columns + cols[None, :], grad.to(gx_ptr.dtype.element_ty),
             mask=(rows[:, None] < tokens) & (cols[None, :] < columns))


@triton.jit
def _weight_grad_kernel(g_ptr, x_ptr, part_ptr, seed_ptr, tokens,
                        columns, rows_per_split, threshold, scale,
                        rank: tl.constexpr, rank_tile: tl.constexpr, row_tile: tl.constexpr,
                        column_tile: tl.constexpr, dot_fp32: tl.constexpr, halves: tl.constexpr,
                        rounds: tl.constexpr):
    first_col = tl.program_id(0) * column_tile
    cols = first_col + tl.arange(0, column_tile)
    split = tl.program_id(1)
    ranks = tl.arange(0, rank_tile)
    seed = tl.load(seed_ptr)
    first = split * rows_per_split
    end = tl.minimum(first + rows_per_split, tokens)
    acc = tl.zeros((rank_tile, column_tile), dtype=tl.float32)
    for start in range(first, end, row_tile):
        rows = start + tl.arange(0, row_tile)
        g = tl.load(g_ptr + rows[None, :] * rank + ranks[:, None],
                    mask=(rows[None, :] < end) & (ranks[:, None] < rank), other=0.0)
        dropped = _dropped_tile(x_ptr, seed, rows, first_col, end, columns, threshold, scale,
                                row_tile, column_tile, halves, rounds)
        acc = _dot(g, dropped, acc, dot_fp32)
    tl.store(part_ptr + split * rank * columns + ranks[:, None] * columns + cols[None, :], acc,
             mask=(ranks[:, None] < rank) & (cols[None, :] < columns))


def _rank_tile(rank: int) -> int:
    """tl.dot's smallest side is 16: ranks below pad up to it, others to a power of two."""
    return max(16, triton.next_power_of_2(rank))


def _dot_fp32(x: torch.Tensor) -> bool:
    """The products run in the input's dtype on a GPU. Triton's CPU interpreter multiplies
    bf16 wrongly, so there they run in fp32 on the same (already rounded) values: products of
    bf16 numbers are exact in fp32, and both sum in fp32."""
    return x.device.type == "cpu" or x.dtype == torch.float32


def _tiles(rank: int, row_tile: int, x: torch.Tensor) -> dict[str, Any]:
    """The compile-time settings every kernel takes: the tiles and the products' dtype."""
    return {"rank": rank, "rank_tile": _rank_tile(rank), "row_tile": row_tile,
            "column_tile": COLUMNS, "dot_fp32": _dot_fp32(x), "halves": DRAWS_PER_WORD,
            "rounds": PHILOX_ROUNDS}


def drawn_probability(p: float) -> float:
    """The dropout probability the kernels draw: p to the nearest multiple of the draws' step
    (1/65536 with two draws per word, 1/2**31 with one); kept values are scaled by its
    complement, so their mean stays x's."""
    return _threshold(p) / _draw_levels()


def _draw_levels() -> int:
    return 2**16 if DRAWS_PER_WORD == 2 else 2**31


def _threshold(p: float) -> int:
    """The least draw kept under dropout p."""
    return round(p * _draw_levels())


def _threshold_and_scale(p: float) -> tuple[int, float]:
    """The kernels' arguments for dropout p: the least draw kept, and the kept values' scale."""
    return _threshold(p), 1.0 / (1.0 - drawn_probability(p))


def _splits(tokens: int, columns: int) -> int:
    """Row splits of the weight gradient: enough programs to fill the GPU, each with at least
    four row tiles to sum; fixed per shape, so the sum's order is too."""
    most = SPLIT_PROGRAMS // triton.cdiv(columns, COLUMNS)
    return max(1, min(most, triton.cdiv(tokens, 4 * ROWS)))


@custom_op("webslm::dropped_lora_a", mutates_args=())
def dropped_lora_a(x: torch.Tensor, a: torch.Tensor, seed: torch.Tensor,
                   p: float) -> torch.Tensor:
    """`dropout(x, p) @ a.T` for x (tokens, features) and a (rank, features), in x's dtype."""
    tokens, columns = x.shape
    rank = a.shape[0]
    h = x.new_empty((tokens, rank))
    _dropped_a_kernel[(triton.cdiv(tokens, FORWARD_ROWS),)](
        x, a, h, seed, tokens, columns, *_threshold_and_scale(p), **_tiles(rank, FORWARD_ROWS, x))
    return h


@custom_op("webslm::dropped_lora_a_input_grad", mutates_args=())
def dropped_lora_a_input_grad(g: torch.Tensor, a: torch.Tensor, seed: torch.Tensor, p: float,
                              columns: int) -> torch.Tensor:
    tokens, rank = g.shape
    grad = g.new_empty((tokens, columns))
    _input_grad_kernel[(triton.cdiv(tokens, ROWS), triton.cdiv(columns, COLUMNS))](
        g, a, grad, seed, tokens, columns, *_threshold_and_scale(p), **_tiles(rank, ROWS, g))
    return grad


@custom_op("webslm::dropped_lora_a_weight_grad", mutates_args=())
def dropped_lora_a_weight_grad(g: torch.Tensor, x: torch.Tensor, seed: torch.Tensor,
                               p: float) -> torch.Tensor:
    tokens, columns = x.shape
    rank = g.shape[1]
    splits = _splits(tokens, columns)
    rows_per_split = triton.cdiv(triton.cdiv(tokens, splits), ROWS) * ROWS
    parts = x.new_empty((splits, rank, columns), dtype=torch.float32)
    _weight_grad_kernel[(triton.cdiv(columns, COLUMNS), splits)](
        g, x, parts, seed, tokens, columns, rows_per_split, *_threshold_and_scale(p),
        **_tiles(rank, ROWS, x))
    return parts.sum(0)


@dropped_lora_a.register_fake
def _(x: torch.Tensor, a: torch.Tensor, seed: torch.Tensor, p: float) -> torch.Tensor:
    return x.new_empty((x.shape[0], a.shape[0]))


@dropped_lora_a_input_grad.register_fake
def _(g: torch.Tensor, a: torch.Tensor, seed: torch.Tensor, p: float,
      columns: int) -> torch.Tensor:
    return g.new_empty((g.shape[0], columns))


@dropped_lora_a_weight_grad.register_fake
def _(g: torch.Tensor, x: torch.Tensor, seed: torch.Tensor, p: float) -> torch.Tensor:
    return x.new_empty((g.shape[1], x.shape[1]), dtype=torch.float32)


def _backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    x, a, seed = ctx.saved_tensors
    grad = grad.contiguous()
    input_grad = weight_grad = None
    if ctx.needs_input_grad[0]:
        input_grad = dropped_lora_a_input_grad(grad, a, seed, ctx.p, x.shape[1])
    if ctx.needs_input_grad[1]:
        weight_grad = dropped_lora_a_weight_grad(grad, x, seed, ctx.p).to(a.dtype)
    return input_grad, weight_grad, None, None


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    x, a, seed, p = inputs
    ctx.save_for_backward(x, a, seed)
    ctx.p = p


dropped_lora_a.register_autograd(_backward, setup_context=_setup_context)


class DroppedLoraA(torch.nn.Linear):
    """PEFT's `lora_A` with the adapter's dropout inside it: the same weight (the same name in
    the saved adapter), PEFT's own dropout module replaced by an identity."""

    def __init__(self, lora_a: torch.nn.Linear, p: float) -> None:
        super().__init__(lora_a.in_features, lora_a.out_features, bias=False, device="meta")
        self.weight = lora_a.weight
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return super().forward(x)
        if x.numel() >= 2**31:  # past the kernels' 32-bit offsets: PEFT's way
            return super().forward(torch.nn.functional.dropout(x, self.p))
        features = x.shape[-1]
        seed = torch.randint(0, 2**31 - 1, (1,), device=x.device)
        h = dropped_lora_a(x.reshape(-1, features).contiguous(), self.weight, seed, self.p)
        return h.reshape(*x.shape[:-1], self.out_features)


def fuse_lora_dropout(model: Any) -> int:
    """Move each LoRA adapter's dropout into its A product; return how many were moved.

    Adapters without dropout, and anything but PEFT's plain LoRA Linear, stay as they were.
    """
    moved = 0
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, torch.nn.ModuleDict):
            continue
        adapters: Any = module.lora_A
        for name, dropout in list(dropouts.items()):
            lora_a = adapters[name]
            if (isinstance(dropout, torch.nn.Dropout) and 0 < dropout.p < 1
                    and name not in getattr(module, "lora_variant", {})  # DoRA and others
                    and type(lora_a) is torch.nn.Linear and lora_a.bias is None):
                adapters[name] = DroppedLoraA(lora_a, dropout.p)
                dropouts[name] = torch.nn.Identity()
                moved += 1
    return moved
