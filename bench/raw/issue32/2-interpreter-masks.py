import sys, time
sys.path.insert(0, "/work/wt-h32/tests")
import numpy, triton, torch
print("numpy", numpy.__version__, "triton", triton.__version__, "torch", torch.__version__, flush=True)
from test_fusedlora import kept_inputs, weight_grad_inputs
from webslm.fusedlora import dropped_lora_a, dropped_lora_a_input_grad
t = time.time()
torch.manual_seed(0)
dtype, rank, p = torch.bfloat16, 16, 0.1
tokens, columns = 130, 200
x = torch.randn(tokens, columns, dtype=dtype, requires_grad=True)
a = torch.randn(rank, columns, requires_grad=True)
seed = torch.tensor([1234])
fwd = kept_inputs(x.detach(), rank, seed, p)
kept = fwd != 0
h = dropped_lora_a(x, a, seed, p)
g = torch.randn(tokens, rank, dtype=dtype)
h.backward(g)
print("x.grad nonzero where forward dropped:", int((x.grad[~kept] != 0).sum()), "of", int((~kept).sum()), flush=True)
ig = dropped_lora_a_input_grad(torch.ones(tokens, rank, dtype=dtype), torch.ones(rank, columns), seed, p, columns)
print("input-grad mask != forward mask:", int(((ig != 0) != kept).sum()), flush=True)
wg = weight_grad_inputs(x.detach(), rank, seed, p)
print("weight-grad dropped x != forward dropped x:", int((wg != fwd).sum()), flush=True)
print("x.grad==0 where kept (g@A rounding to 0?):", int((x.grad[kept] == 0).sum()), time.time() - t)
