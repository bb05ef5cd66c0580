"""Issue 32, point 4: the fused dropout's masks in Triton's interpreter, read back exactly.

Run from the repository root: TRITON_INTERPRET=1 PYTHONPATH=<triton+numpy under test>:. python
bench/raw/issue32/2-interpreter-masks.py (its outputs: 2-interpreter-masks-*.log).
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))

import numpy
import torch
import triton
from test_fusedlora import kept_inputs, weight_grad_inputs

from webslm.fusedlora import dropped_lora_a, dropped_lora_a_input_grad

print("numpy", numpy.__version__, "triton", triton.__version__, "torch", torch.__version__,
      flush=True)
start = time.time()
torch.manual_seed(0)
dtype, rank, p = torch.bfloat16, 16, 0.1
tokens, columns = 130, 200
x = torch.randn(tokens, columns, dtype=dtype, requires_grad=True)
a = torch.randn(rank, columns, requires_grad=True)
seed = torch.tensor([1234])
forward = kept_inputs(x.detach(), rank, seed, p)
kept = forward != 0
h = dropped_lora_a(x, a, seed, p)
h.backward(torch.randn(tokens, rank, dtype=dtype))
assert x.grad is not None
print("x.grad nonzero where forward dropped:", int((x.grad[~kept] != 0).sum()), "of",
      int((~kept).sum()), flush=True)
ones = torch.ones(tokens, rank, dtype=dtype)
input_grad = dropped_lora_a_input_grad(ones, torch.ones(rank, columns), seed, p, columns)
print("input-grad mask != forward mask:", int(((input_grad != 0) != kept).sum()), flush=True)
weight = weight_grad_inputs(x.detach(), rank, seed, p)
print("weight-grad dropped x != forward dropped x:", int((weight != forward).sum()), flush=True)
print("x.grad==0 where kept (g@A rounding to 0?):", int((x.grad[kept] == 0).sum()),
      time.time() - start)
