"""LoRA SFT throughput and peak GPU memory: webslm's recipe against the plain recipe, Qwen2.5-0.5B.

The model is the Qwen2.5-0.5B architecture (its real config) with random weights; the data is
synthetic chat examples (seeded lengths 64..1024 tokens, the first ~30% of each a prompt), the same
for every variant. Each variant trains through webslm.training.build_trainer, the code
`webslm finetune` runs, so "ours" is the product's recipe (webslm.finetune.Recipe defaults).
Tokens are real (non-pad) tokens; model FLOPs count what a LoRA step must compute: forward 2N and
input-gradient 2N per token for the frozen linear layers (4N, not the 6N of full training: frozen
weights get no weight gradient), the LM head only on the tokens that carry loss (TRL's fused head
skips the rest), 3x the causal attention forward, and nothing for padding or recomputation.
Tokens/s is the steady state: the timed steps that recorded no CUDA graph, on the GPU's clock
(`steady_steps`); the whole timed window, recordings included, is printed beside it.

Run: `python bench/bench_finetune.py` (one GPU); data-parallel scaling: `python -m
torch.distributed.run --standalone --nproc_per_node 2 bench/bench_finetune.py --variants eager,ours`
(strong: same global batch) and the same with `--global-batch 32` (weak: 16 per GPU); end to end:
`python bench/bench_finetune.py --e2e finetune/data/medical.jsonl` (wall time of `webslm finetune`
from process start to merged checkpoint, on a random Qwen2.5-0.5B-shaped base it writes first).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import itertools
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import torch
from tokenizers import Tokenizer, models
from transformers import (
    AutoModelForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    TrainerCallback,
    set_seed,
)

from webslm.chatdata import TokenizedExample
from webslm.checkout import checkout_path
from webslm.crash import exit_on_error
from webslm.cudagraphs import CudaGraphRecording
from webslm.finetune import (
    COMPILE_MIN_STEPS,
    Recipe,
    finetune,
    logging_interval,
    pick_precision,
)
from webslm.training import (
    attention_for,
    build_trainer,
    decoder_stack,
    load_base_model,
    master_weight_dtype,
)

# The tiny byte-level BPE tokenizer, chat template and generation config of the real-tiny fixture
# (a tiny random Qwen2's), in the repository.
TINY_MODEL = checkout_path("tests", "fixtures", "real-tiny", "model")
QWEN25_05B = dict(  # Qwen/Qwen2.5-0.5B-Instruct config.json
    hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
    intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True, rope_theta=1000000.0,
    max_position_embeddings=32768, rms_norm_eps=1e-6, hidden_act="silu", bos_token_id=151643,
    eos_token_id=151645,
)
PLAIN = Recipe(micro_batch=2, padding_free=False, assistant_only_loss=False,
               gradient_checkpointing=False, precision="fp16", compile_layers="off")
OURS = Recipe()
LONG_RUN = dataclasses.replace(OURS, compile_layers="on")  # Recipe() on >= COMPILE_MIN_STEPS steps
# The third pass's default: compiled layers, each checkpointed whole, no CUDA graphs.
THIRD_PASS = dataclasses.replace(LONG_RUN, activation_budget=None, cuda_graphs=False)
VARIANTS = {  # Liger patches transformers' RoPE module-wide: the variants with it run last
    "plain": PLAIN,
    "eager": dataclasses.replace(OURS, compile_layers="off"),  # the recipe before issue 16
    "compiled": THIRD_PASS,  # the recipe of long runs before CUDA graphs
    "ours": LONG_RUN,
    "ours-budget0.5": dataclasses.replace(LONG_RUN, activation_budget=0.5),
    "ours-keep-all": dataclasses.replace(LONG_RUN, activation_budget=1.0),
    "ours-m8-budget0.5": dataclasses.replace(LONG_RUN, micro_batch=8, activation_budget=0.5),
    "ours-m8-keep-all": dataclasses.replace(LONG_RUN, micro_batch=8, activation_budget=1.0),
    "compiled-no-ckpt": dataclasses.replace(THIRD_PASS, gradient_checkpointing=False),
    "eager-no-ckpt": dataclasses.replace(OURS, compile_layers="off",
                                         gradient_checkpointing=False),
    "ours-no-dropout": dataclasses.replace(LONG_RUN, lora_dropout=0.0),
    "qlora": dataclasses.replace(OURS, bits=4, compile_layers="off"),  # --bits 4, short run
    "qlora-compiled": dataclasses.replace(LONG_RUN, bits=4),
    "ours-liger": dataclasses.replace(OURS, compile_layers="off", fused_kernels=True),
}


def _log_probs_and_logit_grads(logits: torch.Tensor, labels: torch.Tensor
                               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's log-probability of its label, and its gradient in the logits (one-hot minus
    softmax), in the logits' dtype."""
    wide = logits.float()
    log_z = torch.logsumexp(wide, dim=-1, keepdim=True)
    chosen = wide.gather(1, labels[:, None])
    grads = -torch.exp(wide - log_z)
    grads.scatter_add_(1, labels[:, None], torch.ones_like(chosen))
    return (chosen - log_z).squeeze(1), grads.to(logits.dtype)


class HeadGradInForward(torch.autograd.Function):
    """Trial (not the product's): the row loss's LM head with its gradient taken in the forward.

    TRL's head (`ChunkedLogProbFunction`, the product's) tiles the vocabulary, so the softmax is
    known only after every tile and the backward computes the logits again: three products the
    size of the vocabulary. Tiling rows instead, each tile sees its whole vocabulary: one product
    for the logits, one for the gradient in the hidden states, kept for the backward (which only
    scales it). Same call as TRL's for what `training.add_row_loss` passes; no bias, no logit
    transforms (`training.plain_lm_head`), the weight frozen.
    """

    ROWS = 512  # a tile's logits: 512 x 151,936 bf16 = 156 MB, as TRL's 32k-column tiles
    helper = None

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, *_):
        if bias is not None or weight.requires_grad:
            raise ValueError("the trial head takes a frozen weight without bias")
        if HeadGradInForward.helper is None:
            HeadGradInForward.helper = (torch.compile(_log_probs_and_logit_grads, dynamic=True)
                                        if hidden.is_cuda else _log_probs_and_logit_grads)
        device = hidden.device.type
        dtype = (torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device)
                 else hidden.dtype)
        head = weight.to(dtype)
        log_probs = torch.empty(hidden.shape[0], device=hidden.device, dtype=torch.float32)
        grads = torch.empty(hidden.shape, device=hidden.device, dtype=torch.float32)
        for start in range(0, hidden.shape[0], HeadGradInForward.ROWS):
            rows = slice(start, start + HeadGradInForward.ROWS)
            logits = hidden[rows].to(dtype) @ head.t()
            log_probs[rows], logit_grads = HeadGradInForward.helper(logits, labels[rows])
            grads[rows] = logit_grads @ head
        ctx.save_for_backward(grads)
        ctx.hidden_dtype = hidden.dtype
        return log_probs, None, None, None, None

    @staticmethod
    def backward(ctx, grad_log_probs, *_):
        (grads,) = ctx.saved_tensors
        hidden_grad = (grad_log_probs.float()[:, None] * grads).to(ctx.hidden_dtype)
        return (hidden_grad, *[None] * 8)


# Settings tried beside the default recipe: Inductor's config, and module constants of webslm
# (webslm.training's are read when the trainer is built and while it trains; webslm.fusedlora's
# at each kernel launch).
TRIALS: dict[str, tuple[dict, dict[str, dict]]] = {
    "ours-head-grad-in-forward": ({}, {"webslm.training": {
        "ChunkedLogProbFunction": HeadGradInForward}}),
    "ours-cdt": ({"coordinate_descent_tuning": True}, {}),
    "ours-peft-dropout": ({}, {"webslm.training": {"FUSED_LORA_DROPOUT": False}}),  # 8th pass
    "ours-head76k": ({}, {"webslm.training": {"HEAD_TILE": 151936 // 2}}),
    "ours-bucket1024": ({}, {"webslm.training": {"TOKEN_BUCKET": 1024}}),
    "ours-no-combo": ({}, {"webslm.training": {"LAYER_INDUCTOR_CONFIG": {}}}),
    "ours-seventh": ({}, {"webslm.training": {"TOKEN_BUCKET": 1024,  # the seventh pass's default
                                              "LAYER_INDUCTOR_CONFIG": {}}}),
    # the ninth pass's default: one 31-bit draw per Philox word, 10 rounds
    "ours-ninth": ({}, {"webslm.fusedlora": {"DRAWS_PER_WORD": 1, "PHILOX_ROUNDS": 10}}),
    "ours-philox10": ({}, {"webslm.fusedlora": {"PHILOX_ROUNDS": 10}}),
    "ours-31bit": ({}, {"webslm.fusedlora": {"DRAWS_PER_WORD": 1}}),
}
VARIANTS.update({name: LONG_RUN for name in TRIALS})
VARIANTS.update({f"ours-budget{share}": dataclasses.replace(LONG_RUN, activation_budget=share)
                 for share in (0.35, 0.4)})
DEFAULT_VARIANTS = "plain,eager,compiled,ours,ours-budget0.5,ours-keep-all"
# Every variant logs as a run long enough to compile does (the runs timed here are short).
LONG_RUN_LOGGING = logging_interval(COMPILE_MIN_STEPS)
H100_BF16_PEAK = 989e12  # dense bf16, H100 SXM datasheet


def synthetic_examples(count: int, seed: int = 0) -> list[TokenizedExample]:
    """Chat-like examples: log-normal lengths (median ~400 tokens) clipped to 64..1024."""
    rng = random.Random(seed)
    examples = []
    for _ in range(count):
        length = int(min(1024, max(64, rng.lognormvariate(math.log(400), 0.6))))
        prompt = max(8, int(length * rng.uniform(0.15, 0.45)))
        ids = tuple(rng.randrange(151643) for _ in range(length))
        examples.append(TokenizedExample(ids, (0,) * prompt + (1,) * (length - prompt)))
    return examples


def pad_tokenizer():
    """The trainer needs a tokenizer only for its pad token; the data is already token ids."""
    tokenizer = Tokenizer(models.WordLevel({"<|endoftext|>": 0, "<unk>": 1}, unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<|endoftext|>",
                                   unk_token="<unk>")


def training_flops_per_token(config: dict, mean_sq_len: float, mean_len: float,
                             loss_fraction: float) -> float:
    """LoRA-step model FLOPs per real token (see the module docstring).

    `loss_fraction`: the share of tokens whose next token carries loss, the only ones the LM head
    projects.
    """
    d, layers = config["hidden_size"], config["num_hidden_layers"]
    kv = d // config["num_attention_heads"] * config["num_key_value_heads"]
    linear = layers * (2 * d * d + 2 * d * kv + 3 * d * config["intermediate_size"])
    linear += config["vocab_size"] * d * loss_fraction  # lm_head
    attention_fwd_per_token = layers * 2 * d * (mean_sq_len / mean_len)  # causal: 2 s^2 d / s
    return 4 * linear + 3 * attention_fwd_per_token


def measured_matmul_peak() -> float:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(20):
        a @ b
    torch.cuda.synchronize()
    return 20 * 2 * 8192**3 / (time.perf_counter() - start)


@dataclasses.dataclass(frozen=True)
class Mark:
    """A point in a timed run: wall clock, optimizer step, CUDA-graph recordings so far (count
    and seconds), real tokens so far, and a CUDA event on the training stream (None on a CPU)."""

    seconds: float
    step: int
    recordings: int
    recording_seconds: float
    tokens: int
    event: torch.cuda.Event | None


def steady_steps(marks: list[Mark]) -> list[tuple[int, float]]:
    """(real tokens, seconds) of each timed step that recorded no CUDA graph, timed by the
    GPU's clock (the events' spacing: the stream's time, idle time included) where there is one.

    A long run records its few row shapes early and then only replays. Taking a recording's
    own seconds out of the wall clock instead overstated tokens/s by up to 15%: the CPU waits
    there for steps already queued on the GPU, whose time went out with it (bench/RESULTS.md,
    eighth pass).
    """
    steps = []
    for before, after in itertools.pairwise(marks):
        if after.recordings != before.recordings:
            continue
        seconds = (before.event.elapsed_time(after.event) / 1e3
                   if before.event is not None and after.event is not None
                   else after.seconds - before.seconds)
        steps.append((after.tokens - before.tokens, seconds))
    return steps


def all_processes(count: int) -> int:
    """`count` summed over every process of a distributed run."""
    total = torch.tensor(count, dtype=torch.int64)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        total = total.cuda()
        torch.distributed.all_reduce(total)
    return int(total)


def timed_loss(log_history: list[dict], warmup: int) -> float:
    """Mean training loss over the steps after `warmup`, each log weighted by the steps it
    averages (runs modelled as long ones log every few steps)."""
    logged = [(e["step"], e["loss"]) for e in log_history if "loss" in e]
    weighted = [(step - before, loss) for (before, _), (step, loss)
                in zip([(0, 0.0), *logged[:-1]], logged, strict=True) if step > warmup]
    return sum(n * loss for n, loss in weighted) / max(1, sum(n for n, _ in weighted))


class StepTimer(TrainerCallback):
    """Trainer callback: marks the end of warm-up, every timed step and the end (as step numbers).

    Each mark also reads the real tokens trained so far (`StepTrainer.real_tokens`: the
    conversations' own tokens, not a bucketed row's padding) and the CUDA-graph recordings so
    far: a row shape first seen in the timed steps is recorded there once (~1 s), which is not
    the steady state (`steady_steps`). The wall clock is read after a sync at the first and last
    mark only; every mark records a CUDA event.
    """

    def __init__(self, warmup_steps: int, profile: bool = False) -> None:
        super().__init__()
        self.warmup_steps = warmup_steps
        self.profile = profile
        self.profiler = None
        self.began: float | None = None
        self.marks: list[Mark] = []
        self.recording_clock = lambda: (0, 0.0)
        self.token_clock = lambda: 0

    @property
    def start(self) -> Mark | None:
        return self.marks[0] if self.marks else None

    @property
    def end(self) -> Mark | None:
        return self.marks[-1] if len(self.marks) > 1 else None

    def _mark(self, step: int, sync: bool) -> Mark:
        event = None
        if torch.cuda.is_available():
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            if sync:
                torch.cuda.synchronize()
        recordings, recording_seconds = self.recording_clock()
        return Mark(time.perf_counter(), step, recordings, recording_seconds, self.token_clock(),
                    event)

    def on_train_begin(self, args, state, control, **kwargs):
        self.began = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.warmup_steps:
            self.marks.append(self._mark(state.global_step, sync=state.global_step in (
                self.warmup_steps, state.max_steps)))
        if state.global_step == self.warmup_steps and self.profile:
            self.profiler = torch.profiler.profile(activities=[
                torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA])
            self.profiler.__enter__()
        elif state.global_step == self.warmup_steps + 1 and self.profiler is not None:
            self.profiler.__exit__(None, None, None)
            averages = self.profiler.key_averages()
            print(averages.table(sort_by="self_cuda_time_total", row_limit=60,
                                 max_name_column_width=90))
            print(averages.table(sort_by="cpu_time_total", row_limit=40,
                                 max_name_column_width=50))
            self.profiler = None


class Timeline(TrainerCallback):
    """Where a timed step's time goes, read from both clocks at marked points of each step:
    the CPU's when it got there, the GPU's when its stream did (a CUDA event, recorded without a
    sync). `lead` is how far the CPU runs ahead of the GPU at a point: near 0, the GPU had run
    out of queued work there and waited for the CPU.

    Points: `fetch` (the Trainer starts to gather the step's batches, copying them to the GPU),
    `fetched`, `forward` and `backward` (each micro batch), `clipped`, `stepped` (optimizer),
    `end` (after the step's callbacks and logging); with CUDA graphs also `graph fwd` and
    `graph bwd` (just before each replay) and `graph fwd'd` and `graph bwd'd` (just after).
    """

    replays = (CudaGraphRecording.forward, CudaGraphRecording.backward)

    def __init__(self, trainer, warmup_steps: int) -> None:
        super().__init__()
        self.warmup_steps = warmup_steps
        self.marks: list[tuple[int, str, float, torch.cuda.Event]] = []
        self.origin: tuple[float, torch.cuda.Event] | None = None
        self.step = 0
        self.points: list[dict] = []
        for method, point, before in (("get_batch_samples", "fetch", True),
                                      ("compute_loss", "forward", False),
                                      ("training_step", "backward", False)):
            setattr(trainer, method, self._marking(getattr(trainer, method), point, before))
        for replay, point in zip(self.replays, ("graph fwd", "graph bwd"), strict=True):
            setattr(CudaGraphRecording, replay.__name__, self._marking(
                self._marking(replay, point, True), point + "'d", False))

    def on_train_end(self, args, state, control, **kwargs):
        for replay in self.replays:
            setattr(CudaGraphRecording, replay.__name__, replay)

    def _marking(self, call, point: str, before: bool):
        def marked(*args, **kwargs):
            if before:
                self.mark(point)
            result = call(*args, **kwargs)
            if not before:
                self.mark(point)
            return result
        return marked

    def mark(self, point: str) -> None:
        if self.origin is not None:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append((self.step, point, time.perf_counter(), event))

    def on_step_begin(self, args, state, control, **kwargs):
        self.mark("fetched")

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.mark("clipped")

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.mark("stepped")

    def on_step_end(self, args, state, control, **kwargs):
        self.mark("end")
        self.step = state.global_step + 1
        if state.global_step == self.warmup_steps:
            torch.cuda.synchronize()
            origin = torch.cuda.Event(enable_timing=True)
            origin.record()
            self.origin = (time.perf_counter(), origin)
        elif state.global_step == state.max_steps and self.origin is not None:
            torch.cuda.synchronize()
            self.points = self.summary()
            self.origin = None

    def summary(self) -> list[dict]:
        """Per point (in step order), averaged over the timed steps: CPU ms since the step's
        fetch, GPU ms since the step's fetch, and the lead at the point."""
        assert self.origin is not None
        cpu_origin, gpu_origin = self.origin
        per_step: dict[int, list[tuple[str, float, float]]] = {}
        for step, point, cpu, event in self.marks:
            per_step.setdefault(step, []).append(
                (point, (cpu - cpu_origin) * 1e3, gpu_origin.elapsed_time(event)))
        steps = [marks for marks in per_step.values() if marks[0][0] == "fetch"]
        same = [marks for marks in steps if len(marks) == len(steps[0])]
        rows = []
        for index, (point, _, _) in enumerate(steps[0]):
            rows.append({
                "point": point,
                "cpu_ms": sum(m[index][1] - m[0][1] for m in same) / len(same),
                "gpu_ms": sum(m[index][2] - m[0][1] for m in same) / len(same),
                "lead_ms": sum(m[index][2] - m[index][1] for m in same) / len(same),
            })
        return rows


def print_timeline(points: list[dict]) -> None:
    print(f"{'point':10} {'CPU ms':>8} {'GPU ms':>8} {'lead ms':>8}   (since the step's fetch, "
          "on the CPU's clock; lead ~0: the GPU waited for the CPU)")
    for p in points:
        print(f"{p['point']:10} {p['cpu_ms']:8.1f} {p['gpu_ms']:8.1f} {p['lead_ms']:8.1f}")


def run_variant(name: str, recipe: Recipe, examples: list[TokenizedExample], steps: int,
                warmup: int, world_size: int, out: Path, model_config: dict,
                profile: bool = False, timeline: bool = False) -> dict:
    # Each variant compiles afresh: dynamo caches compiled code per function, so a variant
    # compiled with other settings (an activation budget) would otherwise run the graph an
    # earlier variant compiled (seen on the H200: bench/raw/issue16/11-budget.*).
    torch._dynamo.reset()
    cuda = torch.cuda.is_available()
    precision = pick_precision(recipe.precision if cuda else "auto", cuda,
                               cuda and torch.cuda.is_bf16_supported())
    set_seed(recipe.seed)
    config = Qwen2Config(**model_config)
    device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if cuda else "cpu"
    if cuda:
        torch.cuda.set_device(device)
        torch.cuda.reset_peak_memory_stats()
    if recipe.bits == 4:  # quantized on load: through a saved copy, as `webslm finetune` loads
        saved = out / "base-4bit-source"
        if not saved.is_dir():
            AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(saved)
        torch.cuda.reset_peak_memory_stats()
        model = load_base_model(saved, precision, recipe)
    else:
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(config, dtype=master_weight_dtype(precision),
                                                     attn_implementation=attention_for(recipe))
    inductor, constants = TRIALS.get(name, ({}, {}))
    with torch._inductor.config.patch(**inductor), contextlib.ExitStack() as set_constants:
        for module, values in constants.items():
            set_constants.enter_context(mock.patch.multiple(module, **values))
        result = train_variant(name, recipe, model, precision, examples, steps, warmup,
                               world_size, out, profile, timeline)
    del model
    gc.collect()  # the timer and the trainer refer to each other
    if cuda:
        torch.cuda.empty_cache()
    return result


def train_variant(name: str, recipe: Recipe, model, precision: str,
                  examples: list[TokenizedExample], steps: int, warmup: int, world_size: int,
                  out: Path, profile: bool, timeline: bool) -> dict:
    cuda = torch.cuda.is_available()
    timer = StepTimer(warmup, profile)
    trainer = build_trainer(model, pad_tokenizer(), examples, recipe, out / name,
                            precision=precision, world_size=world_size,
                            max_steps=warmup + steps, logging_steps=LONG_RUN_LOGGING,
                            callbacks=[timer])
    marks = Timeline(trainer, warmup) if timeline and cuda else None
    if marks:
        trainer.add_callback(marks)
    layers = decoder_stack(trainer.model).layers
    timer.recording_clock = lambda: (getattr(layers, "recorded", 0),
                                     getattr(layers, "recording_seconds", 0.0))
    timer.token_clock = lambda counted=trainer: counted.real_tokens
    trainer.train()
    assert timer.began and timer.start and timer.end, "timer did not fire"
    window_seconds = timer.end.seconds - timer.start.seconds
    window_tokens = all_processes(timer.end.tokens - timer.start.tokens)
    steady = steady_steps(timer.marks)
    tokens, seconds = all_processes(sum(n for n, _ in steady)), sum(s for _, s in steady)
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    result = {
        "variant": name, "precision": precision, "world_size": world_size,
        "global_batch": recipe.global_batch, "micro_batch": recipe.micro_batch,
        "padding_free": recipe.padding_free, "compile_layers": recipe.compile_layers,
        "gradient_checkpointing": recipe.gradient_checkpointing,
        "activation_budget": recipe.activation_budget, "cuda_graphs": recipe.cuda_graphs,
        "steps": steps, "replays": getattr(layers, "replays", 0),
        "recordings": getattr(layers, "recorded", 0),
        "recording_seconds": getattr(layers, "recording_seconds", 0.0),
        "recording_seconds_in_timed_steps": (timer.end.recording_seconds
                                             - timer.start.recording_seconds),
        # the steady state: timed steps that recorded nothing, on the GPU's clock
        "steady_steps": len(steady), "tokens": tokens, "seconds": seconds,
        "tokens_per_s": tokens / seconds if seconds else math.nan,
        "step_tokens_per_s": sorted(n / s for n, s in steady),  # this process's, ascending
        # every timed step on the wall clock, recordings included
        "window_tokens_per_s": window_tokens / window_seconds,
        "warmup_seconds": timer.start.seconds - timer.began,
        "peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0,
        "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30 if cuda else 0.0,
        "losses": losses,
        "mean_timed_loss": timed_loss(trainer.state.log_history, warmup),
        "timeline": marks.points if marks else [],
    }
    if marks:
        print_timeline(marks.points)
    return result


def write_base_model(folder: Path, model_config: dict) -> Path:
    """A Qwen2.5-0.5B-shaped random model folder, bf16 safetensors, with the test tokenizer.

    The Hub is out of reach on the benchmark machine: the tokenizer is the real-tiny fixture's tiny
    byte-level BPE (stand-in for Qwen's), so token counts differ from the real model's.
    """
    if not (TINY_MODEL / "tokenizer.json").is_file():
        sys.exit(f"bench_finetune: no tokenizer at {TINY_MODEL} (the real-tiny fixture, "
                 "<repo>/tests/fixtures/real-tiny); --e2e needs it for its base model")
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(Qwen2Config(**model_config),
                                                 dtype=torch.bfloat16)
    model.save_pretrained(str(folder), safe_serialization=True)
    for name in os.listdir(TINY_MODEL):  # tokenizer, chat template, generation config
        if name != "config.json" and not name.startswith("model"):
            shutil.copyfile(TINY_MODEL / name, folder / name)
    return folder


E2E_RUNS = {  # name: (recipe, webslm finetune flags for the same thing, or None)
    "plain": (PLAIN, None),
    "ours": (OURS, []),
    "ours --compile on": (LONG_RUN, ["--compile", "on"]),
    "ours --bits 4": (dataclasses.replace(OURS, bits=4), ["--bits", "4"]),
}


def e2e_child(name: str, data: Path, base: Path, out: Path, gpus: int) -> int:
    """One end-to-end run in this (fresh) process: the product's finetune() with a recipe."""
    recipe, _ = E2E_RUNS[name]
    finetune([data], str(base), out, dataclasses.replace(recipe, epochs=3.0), gpus=gpus)
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
    print(json.dumps({"peak_allocated_gib_main_process": peak}))
    return 0


def end_to_end(data: Path, names: list[str], gpus: int, work: Path, model_config: dict) -> list:
    """Wall time from process start to merged checkpoint, model load and merge counted.

    Runs that the CLI can express go through `python -m webslm finetune` itself; the plain
    recipe has no flag, so it runs the same finetune() in a fresh process.
    """
    base = write_base_model(work / "base", model_config)
    results = []
    for name in names:
        recipe, flags = E2E_RUNS[name]
        out = work / ("out-" + name.replace(" ", "_").replace("-", ""))
        shutil.rmtree(out, ignore_errors=True)
        if flags is None:
            command = [sys.executable, __file__, "--e2e-child", name, "--e2e", str(data),
                       "--e2e-base", str(base), "--e2e-out", str(out), "--gpus", str(gpus)]
        else:
            command = [sys.executable, "-m", "webslm", "finetune", "--data", str(data),
                       "--base", str(base), "--out", str(out), "--epochs", "3",
                       "--gpus", str(gpus), *flags]
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=False,
                              cwd=checkout_path())
        wall = time.perf_counter() - start
        trained = [line for line in done.stdout.splitlines() if line.startswith("trained ")]
        print(f"e2e {name}: exit {done.returncode}, {wall:.1f} s; {' '.join(trained)}")
        if done.returncode:
            print(done.stdout[-2000:], done.stderr[-4000:])
        results.append({"run": name, "gpus": gpus, "exit": done.returncode, "wall_s": wall,
                        "trained": trained, "command": command[1:]})
    return results


def print_table(results: list[dict]) -> None:
    """Tokens/s and MFU of the steady state (`steady_steps`); beside them, per-step tokens/s and
    the whole timed window's, CUDA-graph recordings included."""
    baseline = next((r for r in results if r["variant"] == "plain"), None)
    print(f"\n{'variant':16} {'tok/s':>8} {'x plain':>7} {'MFU(meas)':>9} {'MFU(989)':>8} "
          f"{'step min/med/max':>18} {'window':>8} {'peak GiB':>8} {'reserved':>8} "
          f"{'GFLOP/tok':>9} {'loss':>6} {'warmup s':>8} {'replays':>7} {'recs':>4} {'rec s':>6}")
    for r in results:
        ratio = r["tokens_per_s"] / baseline["tokens_per_s"] if baseline else float("nan")
        rates = r["step_tokens_per_s"] or [math.nan]
        spread = "/".join(f"{rate / 1e3:.0f}k" for rate in
                          (rates[0], rates[len(rates) // 2], rates[-1]))
        print(f"{r['variant']:16} {r['tokens_per_s']:8.0f} {ratio:7.2f} "
              f"{r['mfu_vs_measured_matmul']:9.1%} {r['mfu_vs_datasheet']:8.1%} {spread:>18} "
              f"{r['window_tokens_per_s']:8.0f} "
              f"{r['peak_allocated_gib']:8.2f} {r['peak_reserved_gib']:8.2f} "
              f"{r['flops_per_token'] / 1e9:9.2f} "
              f"{r['mean_timed_loss']:6.3f} {r['warmup_seconds']:8.1f} "
              f"{r['replays']:7d} {r['recordings']:4d} {r['recording_seconds']:6.1f}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=DEFAULT_VARIANTS)
    parser.add_argument("--steps", type=int, default=30, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=6,
                        help="untimed optimizer steps first (compiles happen here)")
    parser.add_argument("--global-batch", type=int, default=OURS.global_batch,
                        help="conversations per optimizer step (weak scaling: 16 x GPUs)")
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument("--profile", action="store_true",
                        help="print the top GPU kernels of the first timed step of each variant")
    parser.add_argument("--timeline", action="store_true",
                        help="print where the timed steps' time goes, CPU against GPU")
    parser.add_argument("--smoke", action="store_true",
                        help="a 2-layer, narrow model: checks the plumbing on a CPU, no figures")
    parser.add_argument("--e2e", type=Path, metavar="JSONL",
                        help="instead: end-to-end finetune wall times on this chat data")
    parser.add_argument("--e2e-runs", default="plain,ours,ours --compile on")
    parser.add_argument("--gpus", type=int, default=1, help="--gpus of the end-to-end runs")
    parser.add_argument("--e2e-child", help=argparse.SUPPRESS)
    parser.add_argument("--e2e-base", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--e2e-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    model_config = dict(QWEN25_05B)
    if args.smoke:
        model_config.update(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                            intermediate_size=128)
    elif not torch.cuda.is_available():
        print("bench_finetune needs a CUDA GPU (or --smoke)")
        return 1
    if args.e2e_child:
        return e2e_child(args.e2e_child, args.e2e, args.e2e_base, args.e2e_out, args.gpus)
    work = Path(os.environ.get("TMPDIR", "/tmp")) / "bench_finetune"
    if args.e2e:
        results = end_to_end(args.e2e, args.e2e_runs.split(","), args.gpus, work, model_config)
        print(f"\n{'end to end (3 epochs)':24} {'gpus':>4} {'exit':>4} {'wall s':>8}")
        for r in results:
            print(f"{r['run']:24} {r['gpus']:4} {r['exit']:4} {r['wall_s']:8.1f}")
        if args.json:
            Path(args.json).write_text(json.dumps({"e2e": results}, indent=2))
        return 0
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:  # before any variant runs: a typo must not cost the GPU time of the others
        print(f"unknown variant {', '.join(unknown)}: choose from {', '.join(VARIANTS)}")
        return 2
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    examples = synthetic_examples(args.global_batch * (args.steps + args.warmup) * 2)
    lengths = [len(e.input_ids) for e in examples]
    mean_len = sum(lengths) / len(lengths)
    mean_sq = sum(n * n for n in lengths) / len(lengths)
    assistant_share = sum(sum(e.assistant_mask) for e in examples) / sum(lengths)
    peak = measured_matmul_peak() if rank == 0 and torch.cuda.is_available() else math.nan
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU (smoke)"
    if rank == 0:
        print(f"GPU: {device} x{world_size}; global batch {args.global_batch}; bf16 matmul "
              f"8192^3 measured {peak / 1e12:.0f} TFLOP/s; mean example {mean_len:.0f} tokens, "
              f"{assistant_share:.0%} of them assistant tokens")
    results = []
    for name in names:
        recipe = dataclasses.replace(VARIANTS[name], global_batch=args.global_batch,
                                     micro_batch=min(VARIANTS[name].micro_batch,
                                                     args.global_batch // world_size))
        try:
            result = run_variant(name, recipe, examples, args.steps, args.warmup, world_size,
                                 work, model_config, args.profile, args.timeline)
        except Exception as error:  # noqa: BLE001 - one broken variant must not hide the others
            print(f"variant {name} failed: {type(error).__name__}: {error}")
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            continue
        share = assistant_share if recipe.assistant_only_loss else 1.0
        result["flops_per_token"] = training_flops_per_token(model_config, mean_sq, mean_len,
                                                             share)
        achieved = result["tokens_per_s"] * result["flops_per_token"]
        result["mfu_vs_datasheet"] = achieved / (H100_BF16_PEAK * world_size)
        result["mfu_vs_measured_matmul"] = achieved / (peak * world_size)
        results.append(result)
        if rank != 0:
            continue
        print_table(results)  # after every variant: a run cut short keeps what it measured
        if args.json:
            Path(args.json).write_text(json.dumps(
                {"gpu": device, "global_batch": args.global_batch, "matmul_peak": peak,
                 "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    exit_on_error("bench_finetune", main)
