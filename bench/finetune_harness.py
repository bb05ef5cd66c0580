"""The finetune benchmark's harness: model, data, clocks, peak, tables (bench_finetune.py's
variants run through it; a new variant is a recipe or a `Trial` there).

The model is the Qwen2.5-0.5B architecture (its real config) with random weights; the data is
synthetic chat examples (seeded lengths 64..1024 tokens, the first ~30% of each a prompt), the same
for every variant. Each variant trains through webslm.training.build_trainer, the code
`webslm finetune` runs. Tokens are real (non-pad) tokens; model FLOPs count what a LoRA step must
compute: forward 2N and input-gradient 2N per token for the frozen linear layers (4N, not the 6N
of full training: frozen weights get no weight gradient), the LM head only on the tokens that carry
loss (TRL's fused head skips the rest), 3x the causal attention forward, and nothing for padding
or recomputation. Steady tokens/s: the timed steps that recorded no CUDA graph, on the GPU's clock
(`steady_steps`); the whole timed window, recordings included, is printed beside it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import itertools
import math
import os
import random
import shutil
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
from webslm.cudagraphs import CudaGraphRecording
from webslm.recipe import COMPILED_LOG_EVERY, Recipe, pick_precision
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


@dataclasses.dataclass(frozen=True)
class Trial:
    """Settings tried beside a recipe: Inductor's config, and module constants of webslm
    (webslm.training's are read when the trainer is built and while it trains;
    webslm.fusedlora's at each kernel launch)."""

    inductor: dict = dataclasses.field(default_factory=dict)
    constants: dict[str, dict] = dataclasses.field(default_factory=dict)


def run_variant(name: str, recipe: Recipe, examples: list[TokenizedExample], steps: int,
                warmup: int, world_size: int, out: Path, model_config: dict,
                profile: bool = False, timeline: bool = False, trial: Trial = Trial()) -> dict:
    """Train one variant on a fresh model for `warmup` + `steps` optimizer steps; its figures."""
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
    with torch._inductor.config.patch(**trial.inductor), contextlib.ExitStack() as set_constants:
        for module, values in trial.constants.items():
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
                            max_steps=warmup + steps, logging_steps=COMPILED_LOG_EVERY,
                            callbacks=[timer])
    marks = Timeline(trainer, warmup) if timeline and cuda else None
    if marks:
        trainer.add_callback(marks)
    layers = decoder_stack(trainer.model).layers
    timer.recording_clock = lambda: (getattr(layers, "recorded", 0),
                                     getattr(layers, "recording_seconds", 0.0))
    timer.token_clock = lambda counted=trainer: counted.real_tokens
    trainer.train()
    if trainer.compile_key is not None:  # where the compile's seconds went (this process so far)
        print(f"{name}: torch.compile's phases, all variants so far:\n"
              f"{torch._dynamo.utils.compile_times(repr='str', aggregate=True)}", flush=True)
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
        # the same in the order the steps ran: does a variant warm up (issue 32, point 5)?
        "step_tokens_per_s_in_order": [n / s for n, s in steady],
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


