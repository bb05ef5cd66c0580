"""The fine-tuning recipe and the pure decisions made from it, before anything trains.

Both halves of fine-tuning read this module: `webslm.finetune` (the commands, light: no torch)
and `webslm.training` (the training itself, heavy). It imports neither, so the two stay one
layer above it and the CLI starts without torch.

The training recipe is one frozen dataclass, `Recipe`; the benchmark in bench/ trains with the
same code and the same defaults, so its figures describe what users run.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from webslm.errors import BadInput

PRECISIONS = ("bf16", "fp16", "fp32")
COMPILE_CHOICES = ("auto", "on", "off")
BITS_CHOICES = (16, 4)  # --bits: LoRA on the model's own weights, or QLoRA on 4-bit ones
# What "auto" weighs (Qwen2.5-0.5B, 16 conversations a step, bench/RESULTS.md, issue 32, raw
# issue32/1, one H100): tokens/s of the uncompiled recipe (14.7k there; 19.7k on the H200) and
# of the compiled one replayed as CUDA graphs on one GPU (98.0k; 106.8k on the H200) or, on
# several, unrecorded (35k on the H200); and the seconds compiling and recording cost once per
# process: ~117 s with Inductor's caches empty, ~17 s with them filled by an earlier run of the
# same shape (`webslm.compilecache`), each rounded up.
EAGER_TOKENS_PER_S = 15_000.0
REPLAYED_TOKENS_PER_S = 95_000.0
UNRECORDED_TOKENS_PER_S = 35_000.0
COMPILE_SECONDS = 120.0
CACHED_COMPILE_SECONDS = 20.0
# Compiled runs log every this many steps, not every step: a log reads the loss back from the
# GPU, a host sync that leaves the GPU idle while the CPU starts the next step (bench/RESULTS.md,
# issue 16, sixth pass). The last step is always logged.
COMPILED_LOG_EVERY = 10
LOGGED_STEPS = 100  # runs shorter than this log every step


@dataclass(frozen=True)
class Recipe:
    """How a LoRA SFT run trains. Defaults are the known-good recipe for small chat models.

    `micro_batch` conversations go through one forward pass per GPU, flattened into a single
    padding-free row (no pad tokens computed); gradients accumulate up to `global_batch`.
    `fused_kernels` trades speed for memory, not the maths (`training.speed_up`).
    `compile_layers` ("auto", "on", "off") compiles each decoder layer, LoRA included, with
    `torch.compile`; "auto" compiles on a GPU when the run is long enough to repay the compile
    time (`should_compile`). With `cuda_graphs`, the compiled layers of a padding-free run on
    one GPU replay as recorded CUDA graphs (`webslm.cudagraphs`) and, under
    `gradient_checkpointing`, keep `activation_budget` of their activations and recompute the
    rest (None: each layer checkpointed whole, as compiled layers always are without graphs):
    see `training.compile_decoder_layers`. None of these changes the batch, the steps or the
    loss a user gets.
    """

    epochs: float = 3.0
    learning_rate: float = 2e-4
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    global_batch: int = 16
    micro_batch: int = 16
    max_seq_len: int = 1024
    bits: int = 16
    seed: int = 0
    warmup: float = 0.03
    padding_free: bool = True
    assistant_only_loss: bool = True
    gradient_checkpointing: bool = True
    precision: str = "auto"
    fused_kernels: bool = False
    compile_layers: str = "auto"
    activation_budget: float | None = 0.3
    cuda_graphs: bool = True

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Recipe:
        return cls(**data)


def check_recipe(recipe: Recipe) -> None:
    """Refuse settings that cannot train, before loading anything."""
    if recipe.bits not in BITS_CHOICES:
        raise BadInput(f"--bits {recipe.bits} is not supported", "pass 16 (LoRA) or 4 (QLoRA)")
    for name in ("epochs", "learning_rate", "lora_r", "lora_alpha", "max_seq_len", "global_batch"):
        if not getattr(recipe, name) > 0:  # NaN too
            flag = "--" + name.replace("_", "-").replace("learning-rate", "lr")
            raise BadInput(f"{flag} must be positive", f"pass a value above 0 for {flag}")
    if recipe.precision not in ("auto", *PRECISIONS):
        raise BadInput(f"unknown precision {recipe.precision!r}", "use auto, bf16, fp16 or fp32")
    if recipe.compile_layers not in COMPILE_CHOICES:
        raise BadInput(f"unknown compile_layers {recipe.compile_layers!r}", "use auto, on or off")
    budget = recipe.activation_budget
    if budget is not None and not 0.0 < budget <= 1.0:
        raise BadInput(f"--activation-budget {budget} is outside (0, 1]",
                       "pass the share of the activations to keep, e.g. 0.5 (1 keeps all)")


def pick_precision(requested: str, cuda: bool, bf16_supported: bool) -> str:
    """bf16 where the GPU has it, else fp16 on a GPU, else fp32 on the CPU."""
    if requested != "auto":
        if requested != "fp32" and not cuda:
            raise BadInput(f"{requested} training needs a CUDA GPU", "use auto on a CPU")
        return requested
    if not cuda:
        return "fp32"
    return "bf16" if bf16_supported else "fp16"


def batch_split(recipe: Recipe, world_size: int) -> tuple[int, int]:
    """(conversations per GPU per forward pass, accumulation steps) giving the global batch."""
    per_gpu, rest = divmod(recipe.global_batch, world_size)
    if rest or per_gpu == 0:
        raise BadInput(f"the global batch of {recipe.global_batch} conversations does not split "
                       f"evenly over {world_size} processes", "use a GPU count that divides it")
    micro = min(recipe.micro_batch, per_gpu)
    if per_gpu % micro:
        raise BadInput(f"micro batch {micro} does not divide {per_gpu} conversations per GPU",
                       "pick a micro batch that divides it")
    return micro, per_gpu // micro


def planned_steps(recipe: Recipe, examples: int, max_steps: int = -1) -> int:
    """Optimizer steps the run will take (the Trainer's own count: whole batches per epoch)."""
    if max_steps > 0:
        return max_steps
    return max(1, math.ceil(math.ceil(examples / recipe.global_batch) * recipe.epochs))


def planned_tokens(recipe: Recipe, lengths: Sequence[int], max_steps: int = -1) -> float:
    """Tokens the run will train on: every example once per epoch, or `max_steps` batches of
    the mean example."""
    if not lengths:
        return 0.0
    if max_steps > 0:
        return max_steps * recipe.global_batch * sum(lengths) / len(lengths)
    return recipe.epochs * sum(lengths)


def replays(recipe: Recipe, world_size: int) -> bool:
    """Whether compiled layers would replay as CUDA graphs: padding-free rows in one process
    (under DDP the first recording failed: `training.graph_recorder`)."""
    return recipe.cuda_graphs and recipe.padding_free and world_size == 1


def should_compile(recipe: Recipe, cuda: bool, tokens: float, world_size: int = 1,
                   cached: bool = False) -> bool:
    """Compile when asked, or ("auto") on a GPU when the run's estimated time is shorter
    compiled, compile time included: `tokens` to train, with Inductor's caches filled for this
    model's shape (`cached`) or not."""
    if recipe.compile_layers != "auto":
        return recipe.compile_layers == "on"
    if not cuda:
        return False
    compiled_rate = REPLAYED_TOKENS_PER_S if replays(recipe, world_size) else \
        UNRECORDED_TOKENS_PER_S
    compile_seconds = CACHED_COMPILE_SECONDS if cached else COMPILE_SECONDS
    return compile_seconds + tokens / compiled_rate < tokens / EAGER_TOKENS_PER_S


def logging_interval(steps: int, compiled: bool) -> int:
    """Optimizer steps between logged losses: compiled runs of many steps log every few (a log
    is a host sync); a short run logs every step."""
    return COMPILED_LOG_EVERY if compiled and steps >= LOGGED_STEPS else 1
