"""The heavy half of fine-tuning: train a LoRA adapter with TRL and PEFT, merge it into its base.

Everything here needs torch, transformers, PEFT, TRL and datasets (seconds to import), so this
module imports them at its top and only a command that trains or merges imports it:
`webslm.finetune` holds the data check and the commands, and stays light for the CLI's
start-up and `webslm data check`; both take the recipe from `webslm.recipe`. finetune/train.py
(one torchrun process) and the benchmark in bench/ train through `train_adapter` and
`build_trainer` here, the code `webslm finetune` runs.

Training is padding-free (a micro batch flattened into one row, attention kept within each
conversation: `varlen_attention`) on assistant tokens only; long GPU runs compile each decoder
layer (`compile_decoder_layers`) and, in one process, replay them as CUDA graphs
(`webslm.cudagraphs`) with LoRA's dropout drawn inside its A products (`webslm.fusedlora`). The
merge writes fp16 weights and the base's tokenizer files byte for byte, normalized for MLC-LLM.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
import time
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from peft import LoraConfig, PeftModel
from torch.nn.attention.varlen import varlen_attn
from torch.nn.functional import scaled_dot_product_attention
from torch.utils.checkpoint import checkpoint
from transformers import (
    AttentionInterface,
    AutoModelForCausalLM,
    BitsAndBytesConfig,
    PreTrainedModel,
    TrainerCallback,
    set_seed,
)
from transformers.modeling_layers import GradientCheckpointingLayer
from trl import SFTConfig, SFTTrainer
from trl.kernels import ChunkedLogProbFunction

from webslm.chatdata import TokenizedExample, load_tokenizer
from webslm.compilecache import (
    cache_folder,
    compile_key,
    keep_inductor_caches,
    mark_compiled,
    was_compiled,
)
from webslm.cudagraphs import CudaGraphRecorder, Recorder, replay_layers
from webslm.errors import MissingEnvironment
from webslm.hub import TOKENIZER_FILES
from webslm.normalize import normalize_path
from webslm.recipe import (
    Recipe,
    batch_split,
    logging_interval,
    pick_precision,
    planned_steps,
    planned_tokens,
    replays,
    should_compile,
)

COMPILE_BACKEND = "inductor"  # torch.compile's own; the CPU tests swap in "aot_eager" for time
VARLEN_ATTENTION = "webslm_varlen"
# Rows replayed as CUDA graphs are padded to a multiple of this many tokens, so that a run
# records a handful of shapes (16 conversations of ~450 tokens: ~7k, so ~3.5% padding; 1024
# padded ~7% and was 0.97x as fast: bench/RESULTS.md, eighth pass).
TOKEN_BUCKET = 512
# Inductor's settings for layers replayed as CUDA graphs. Combo kernels launch independent
# small kernels (each LoRA weight's cast to bf16, ...) as one: 1.02x the tokens/s on the H200,
# same loss, less memory (bench/RESULTS.md, eighth pass). Unrecorded layers compile without
# them: each launch costs CPU time there, and the one unrecorded run with them was slower
# (0.76x the seventh pass's figure, where the uncompiled recipe, bound by the same CPU, was 0.87x).
LAYER_INDUCTOR_CONFIG: dict[str, Any] = {"combo_kernels": True}
# Replayed layers draw LoRA's dropout inside its A product (webslm.fusedlora): 1.05x the tokens/s
# of PEFT's dropout at 0.92x the peak memory (bench/RESULTS.md, tenth pass).
FUSED_LORA_DROPOUT = True
# Causal varlen attention: a window reaching every earlier token and none after (torch >= 2.11).
CAUSAL_WINDOW = (-1, 0)
# Batch entries the collator adds for `StepTrainer`, which takes them out before the model runs.
REAL_TOKENS = "webslm_real_tokens"
LOSS_ROWS = "webslm_loss_rows"
# Vocabulary columns per LM-head tile of the row loss: TRL's own for its fused head.
HEAD_TILE = 32768
# Config fields that transform the logits before the softmax (TRL's fused head reads them); a
# model with any of them set keeps TRL's loss.
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "output_multiplier",
                    "lm_head_multiplier", "logits_scaling")


@dataclass(frozen=True)
class TrainResult:
    """What a training run did: its logged losses, how much it processed, and where its
    seconds went (loading the base model; training, compiling included; saving the adapter)."""

    losses: tuple[float, ...]
    steps: int
    precision: str
    world_size: int
    load_seconds: float
    train_seconds: float


# --- training ---------------------------------------------------------------------------------

def varlen_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any,
                     scaling: float | None = None, dropout: float = 0.0,
                     **kwargs: Any) -> tuple[Any, None]:
    """Causal attention within each packed conversation of a padding-free row, never across.

    TRL's padding-free collator flattens a micro batch into one row and passes the boundaries
    (`cu_seq_lens_q`). SDPA would need a dense row-by-row mask (quadratic in the whole row's
    length); this computes only the per-conversation blocks: FlashAttention varlen on a GPU,
    one causal SDPA call per conversation elsewhere.
    """
    bounds = kwargs.get("cu_seq_lens_q")
    if attention_mask is not None or query.shape[0] != 1:
        raise ValueError(f"{VARLEN_ATTENTION} attention serves padding-free rows only")
    if bounds is None:
        bounds = torch.tensor([0, query.shape[2]], dtype=torch.int32)
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # (tokens, heads, dim)
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        bounds = bounds.to(device=q.device, dtype=torch.int32)
        longest = int(kwargs.get("max_length_q") or int((bounds[1:] - bounds[:-1]).max()))
        if k.shape[1] != q.shape[1]:  # grouped-query attention: one K/V head per query group
            k, v = (t.repeat_interleave(q.shape[1] // t.shape[1], dim=1) for t in (k, v))
        out = varlen_attn(q.contiguous(), k.contiguous(), v.contiguous(), bounds, bounds,
                          longest, longest, scale=scaling, window_size=CAUSAL_WINDOW)
        assert isinstance(out, torch.Tensor)  # no return_aux asked for
        return out.unsqueeze(0), None
    pieces = []
    for start, end in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        if end == start:  # the empty sequences a bucketed row ends with
            continue
        pieces.append(scaled_dot_product_attention(
            query[:, :, start:end], key[:, :, start:end], value[:, :, start:end],
            is_causal=True, scale=scaling, enable_gqa=True))
    return torch.cat(pieces, dim=2).transpose(1, 2).contiguous(), None


def register_varlen_attention() -> str:
    """Make `attn_implementation="webslm_varlen"` known to transformers; return the name.

    No mask function is registered with it: the attention reads the sequence boundaries, and
    for an attention with a mask function transformers looks for packed sequences in the
    position ids on the host (`find_packed_sequence_indices`), a GPU sync in every forward
    (bench/RESULTS.md, seventh pass).
    """
    AttentionInterface.register(VARLEN_ATTENTION, varlen_attention)
    return VARLEN_ATTENTION


def master_weight_dtype(precision: str) -> torch.dtype:
    """The dtype the base weights are loaded in: bf16 under bf16; under fp16 mixed precision
    (and fp32) the weights stay fp32 masters and autocast runs the matrix work in fp16."""
    return {"bf16": torch.bfloat16, "fp16": torch.float32, "fp32": torch.float32}[precision]


def attention_for(recipe: Recipe) -> str:
    return register_varlen_attention() if recipe.padding_free else "sdpa"


def load_base_model(path: Path, precision: str, recipe: Recipe) -> PreTrainedModel:
    """The base model for training: bf16 weights under bf16, fp32 master weights under fp16."""
    bits = recipe.bits
    # use_kernels: transformers (>= 5.25, with `kernels` installed) otherwise swaps layers for
    # kernels fetched from the Hub when the model trains on a GPU: code the recipe did not
    # measure, and a failure offline ("could not verify publisher trust status")
    kwargs: dict[str, Any] = {"dtype": master_weight_dtype(precision),
                              "attn_implementation": attention_for(recipe), "use_kernels": False}
    if bits == 4:
        try:  # optional even with the finetune extra: only --bits 4 needs it
            import bitsandbytes  # noqa: F401
        except ImportError as error:
            raise MissingEnvironment("--bits 4 (QLoRA) needs the bitsandbytes package",
                                     "pip install bitsandbytes, or use --bits 16") from error
        if not torch.cuda.is_available():
            raise MissingEnvironment("--bits 4 (QLoRA) needs a CUDA GPU", "use --bits 16 on a CPU")
        compute = torch.bfloat16 if precision == "bf16" else torch.float16
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute)
    return AutoModelForCausalLM.from_pretrained(str(path), trust_remote_code=False, **kwargs)


def lora_config(recipe: Recipe) -> LoraConfig:
    """LoRA on every linear projection of attention and MLP (PEFT's all-linear skips lm_head)."""
    return LoraConfig(r=recipe.lora_r, lora_alpha=recipe.lora_alpha,
                      lora_dropout=recipe.lora_dropout, target_modules="all-linear",
                      bias="none", task_type="CAUSAL_LM")


def training_dataset(examples: Sequence[TokenizedExample], assistant_only_loss: bool) -> Dataset:
    """A pre-tokenized dataset; TRL turns `assistant_masks` into labels (-100 elsewhere)."""
    columns: dict[str, list[Any]] = {"input_ids": [list(e.input_ids) for e in examples]}
    if assistant_only_loss:
        columns["assistant_masks"] = [list(e.assistant_mask) for e in examples]
    return Dataset.from_dict(columns)


def speed_up(model: Any, recipe: Recipe, precision: str) -> tuple[str, ...]:
    """With `fused_kernels` on a bf16 GPU run, Liger's Triton kernels for RMSNorm, RoPE, SwiGLU.

    Measured (bench/RESULTS.md): 23% less peak memory, ~5% fewer tokens/s on Qwen2.5-0.5B, so
    off by default. Elsewhere (CPU, fp16/fp32, liger-kernel absent) the model stays as it is.
    Call before PEFT wraps the model; returns what was applied.
    """
    if not recipe.fused_kernels or precision != "bf16" or not torch.cuda.is_available():
        return ()
    try:  # optional, in no extra: training runs without it
        from liger_kernel.transformers import _apply_liger_kernel_to_instance
    except ImportError:
        print("note: liger-kernel is not installed; training without fused kernels",
              file=sys.stderr)
        return ()
    # TRL's fused LM head already avoids the full logits; keep the model's own forward
    _apply_liger_kernel_to_instance(model=model, fused_linear_cross_entropy=False,
                                    cross_entropy=False)
    return ("liger",)


def decoder_layers(model: Any) -> list[Any]:
    """The transformer blocks of a (PEFT-wrapped) transformers model, in order."""
    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def causal_lm(model: Any) -> PreTrainedModel:
    """The transformers model (decoder and LM head) inside a PEFT-wrapped one."""
    inner: PreTrainedModel = model.get_base_model()
    return inner


def decoder_stack(model: Any) -> Any:
    """The transformers decoder inside a PEFT-wrapped model: the module whose `layers` the
    CUDA-graph replays take over (`webslm.cudagraphs.GraphedLayers`)."""
    return causal_lm(model).base_model


def compile_decoder_layers(model: Any, checkpointed: bool, activation_budget: float | None,
                           replayed: bool = False) -> int:
    """Compile each decoder layer (LoRA inside it); return the count.

    Why: a 0.5B model's step is bound by kernel launches, thousands of small elementwise kernels
    (norms, RoPE, SwiGLU, LoRA's dtype casts and dropout) around the matrix products. Inductor
    fuses them, and all layers share one compiled graph. Memory, when `checkpointed`: with no
    `activation_budget`, each compiled forward is checkpointed (non-reentrant) from outside
    (transformers' own checkpointing wraps the forward inside the compiled region, which dynamo
    cannot trace); with a budget, the compiler keeps that share of the activations (1.0: all)
    and recomputes the cheapest rest, which CUDA graphs can record. The module tree, parameter
    names and saved adapter stay as they were.

    `replayed`: the layers will replay as CUDA graphs (`webslm.cudagraphs`), so they compile
    for the few row lengths of bucketed rows (dynamic shapes) and with `LAYER_INDUCTOR_CONFIG`.
    """
    layers = decoder_layers(model)
    budget = activation_budget if checkpointed and activation_budget is not None else 1.0
    within = torch._functorch.config.patch(activation_memory_budget=budget)
    # as options, not a config patch around the call: the backward compiles later, outside it
    options = LAYER_INDUCTOR_CONFIG if replayed and COMPILE_BACKEND == "inductor" else None
    for layer in layers:
        compiled = within(torch.compile(layer.forward, backend=COMPILE_BACKEND,
                                        dynamic=True if replayed else None, options=options))
        if checkpointed and activation_budget is None:
            layer.forward = functools.partial(checkpoint, compiled, use_reentrant=False)
        else:
            layer.forward = compiled
    return len(layers)


@dataclass(frozen=True)
class BucketedRows:
    """A padding-free collator whose rows come in few shapes, for CUDA graphs.

    A CUDA graph replays one shape. TRL's padding-free row is as long as its conversations,
    a new length almost every step; this pads the row up to a multiple of `bucket` tokens
    with one extra pad sequence (labels -100: no loss, attention within itself), gives the
    boundaries a fixed count (empty sequences at the end) and the longest-sequence bound a
    fixed value, so rows repeat a handful of shapes. The loss is unchanged.
    """

    collate: Callable[[list[dict[str, Any]]], dict[str, Any]]
    bucket: int
    conversations: int
    longest: int

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = dict(self.collate(examples))
        pad_id = int(getattr(self.collate, "pad_token_id", 0))
        return pad_packed_row(batch, self.bucket, self.conversations + 1, self.longest, pad_id)


def pad_packed_row(batch: dict[str, Any], bucket: int, sequences: int, longest: int,
                   pad_id: int) -> dict[str, Any]:
    """`batch` (one padding-free row) padded to a multiple of `bucket`, with `sequences`
    sequence boundaries after the leading 0; see `BucketedRows`."""
    length = batch["input_ids"].shape[1]
    extra = -length % bucket
    bounds = batch["cu_seq_lens_q"]
    if extra:
        def grow(tensor: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
            return torch.cat([tensor, fill.to(tensor.dtype)[None]], dim=1)
        batch["input_ids"] = grow(batch["input_ids"], torch.full((extra,), pad_id))
        batch["labels"] = grow(batch["labels"], torch.full((extra,), -100))
        batch["position_ids"] = grow(batch["position_ids"], torch.arange(extra))
        bounds = torch.cat([bounds, bounds.new_tensor([length + extra])])
    if bounds.numel() - 1 > sequences:
        raise ValueError(f"a row of {bounds.numel() - 1} sequences exceeds {sequences}")
    total = length + extra
    bounds = torch.cat([bounds, bounds.new_full((sequences + 1 - bounds.numel(),), total)])
    batch["cu_seq_lens_q"] = batch["cu_seq_lens_k"] = bounds
    batch["max_length_q"] = batch["max_length_k"] = max(longest, int(bounds.diff().max()))
    if "seq_idx" in batch:
        batch["seq_idx"] = torch.repeat_interleave(
            torch.arange(sequences, dtype=torch.int32), bounds.diff())[None]
    return batch


@dataclass(frozen=True)
class StepExtras:
    """A collator's batches plus what `StepTrainer` reads and the model never sees.

    Every batch counts its conversations' own tokens (`REAL_TOKENS`: TRL's `num_tokens`
    counts a bucketed row's padding too). With `with_loss_rows`, a padding-free row also carries the
    positions whose next token carries loss, and those tokens (`LOSS_ROWS`), found here on the
    CPU: TRL's fused head finds them on the GPU (`hidden[mask]`), a host sync in every step.
    """

    collate: Callable[[list[dict[str, Any]]], dict[str, Any]]
    with_loss_rows: bool

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = dict(self.collate(examples))
        batch[REAL_TOKENS] = sum(len(e["input_ids"]) for e in examples)
        if self.with_loss_rows:
            batch[LOSS_ROWS] = loss_rows(batch["labels"])
        return batch


def loss_rows(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions of a one-row batch whose next label is not -100, those labels)."""
    following = labels[0, 1:]
    positions = (following != -100).nonzero().flatten()
    return positions, following[positions]


def plain_lm_head(model: PreTrainedModel) -> bool:
    """Whether the model's logits are its LM head's product alone (no scale, no softcap)."""
    config = model.config.get_text_config()
    return all(getattr(config, name, None) is None for name in LOGIT_TRANSFORMS)


def add_row_loss(model: PreTrainedModel) -> None:
    """Let `model(..., loss_rows=(positions, labels))` return those positions' log-probabilities.

    The same tiled LM head as TRL's fused one (`ChunkedLogProbFunction`), fed the positions the
    collator found (`StepExtras`), so the step has no host sync; other calls go to the forward
    there was (TRL's). Patched on the model, under PEFT's and DDP's wrappers, which pass the
    keyword through.
    """
    forward_before = model.forward

    @functools.wraps(type(model).forward)
    def forward(self: Any, *args: Any, loss_rows: tuple[torch.Tensor, torch.Tensor] | None = None,
                **kwargs: Any) -> Any:
        if loss_rows is None:
            return forward_before(*args, **kwargs)
        for name in ("labels", "fused_lm_head", "num_items_in_batch", "use_cache"):
            kwargs.pop(name, None)
        hidden = self.base_model(*args, use_cache=False, **kwargs).last_hidden_state
        positions, labels = loss_rows
        head = self.get_output_embeddings()
        picked = hidden.flatten(0, 1).index_select(0, positions)
        return ChunkedLogProbFunction.apply(picked, head.weight, head.bias, labels, 1.0,
                                            HEAD_TILE, None, 1.0, ())[0]

    model.forward = types.MethodType(forward, model)


class StepTrainer(SFTTrainer):
    """TRL's SFTTrainer that counts real tokens (`real_tokens`), computes the loss of a batch
    with `LOSS_ROWS` without a host sync (`add_row_loss`) and spares the step its walks over
    every module (`spare_module_walks`).

    That loss is TRL's: the summed negative log-probabilities over the batch's count of loss
    tokens (`num_items_in_batch`). TRL's per-step entropy and token accuracy (each an `.item()`)
    are not computed for such batches.
    """

    real_tokens = 0
    compile_key: str | None = None  # set by build_trainer when the layers are compiled

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        model: Any = self.model  # the PEFT-wrapped model (SFTTrainer wraps it)
        self.trained_parameters = spare_module_walks(model)
        self.non_embedding_parameters = int(model.num_parameters(exclude_embeddings=True))

    def floating_point_ops(self, inputs: dict[str, Any]) -> int:
        """The Trainer's estimate, 6 x tokens x non-embedding parameters, with the parameters
        counted once (the count walks every module, and the Trainer asks every micro batch)."""
        ids = inputs.get(getattr(self.model, "main_input_name", "input_ids"))
        return 6 * ids.numel() * self.non_embedding_parameters if ids is not None else 0

    def _clip_grad_norm(self, model: Any) -> Any:
        """The Trainer's clipping over the trained parameters, the only ones with gradients
        (`model.parameters()` walks every module)."""
        return self.accelerator.clip_grad_norm_(self.trained_parameters, self.args.max_grad_norm)

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        self.real_tokens += int(inputs.pop(REAL_TOKENS, 0))
        rows = inputs.pop(LOSS_ROWS, None)
        if rows is None or return_outputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        model_inputs = {k: v for k, v in inputs.items() if k != "labels"}
        log_probs = model(**model_inputs, loss_rows=rows)
        count = rows[0].numel() if num_items_in_batch is None else num_items_in_batch
        loss = -log_probs.sum() / torch.as_tensor(count).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())  # as TRL's
        return loss


def spare_module_walks(model: torch.nn.Module) -> tuple[torch.nn.Parameter, ...]:
    """Make `model.train()` and `model.zero_grad()`, which the Trainer calls every micro batch
    and every step, cheap; return the parameters that train.

    Each call walks every module: ~2,000 in a PEFT-wrapped Qwen2.5-0.5B, 7-16 ms of CPU a call
    on 2 cores. Once the layers replay as CUDA graphs the GPU waits for the CPU's step
    (bench/RESULTS.md, seventh pass). So `train(mode)` walks only when the mode it last set
    differs (eval() goes through it too; a mode set on a single submodule is not seen), and
    `zero_grad()` clears the trained parameters' gradients, the only ones there are.
    """
    trained = tuple(p for p in model.parameters() if p.requires_grad)
    walk_train, walk_zero_grad = model.train, model.zero_grad
    last_mode: list[bool] = []

    def train(self: torch.nn.Module, mode: bool = True) -> torch.nn.Module:
        if last_mode != [mode] or self.training != mode:
            walk_train(mode)
            last_mode[:] = [mode]
        return self

    def zero_grad(self: torch.nn.Module, set_to_none: bool = True) -> None:
        if not set_to_none:
            walk_zero_grad(set_to_none)
            return
        for parameter in trained:
            parameter.grad = None

    model.train = types.MethodType(train, model)  # type: ignore[method-assign]
    model.zero_grad = types.MethodType(zero_grad, model)  # type: ignore[method-assign]
    return trained


class LogLastStep(TrainerCallback):
    """Log the last step too when the log interval does not divide the run."""

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if state.global_step == state.max_steps:
            control.should_log = True
        return control


def adapters_take_compute_dtype(model: Any) -> None:
    """LoRA's input stays in the compute dtype (PEFT casts it to the fp32 adapter weights'
    dtype, dropout runs on that copy, and autocast casts it back for the bf16 product).

    Once the layers replay as CUDA graphs the step is bound by the GPU, and those casts are
    the largest elementwise kernels in it (bench/RESULTS.md, fifth pass). Inductor computes
    dropout in fp32 either way and rounds once, so the product sees the same values.
    """
    for module in model.modules():
        if hasattr(module, "cast_input_dtype_enabled"):  # PEFT's LoRA layers
            module.cast_input_dtype_enabled = False


def graph_recorder(recipe: Recipe, world_size: int) -> Recorder | None:
    """What records the compiled layers as CUDA graphs, when the recipe and machine allow.

    One process only. Under DDP on two H200s the first recording failed ("operation failed due
    to a previous error during capture": most likely NCCL's watchdog thread querying events
    during the capture) and left the process unable to draw random numbers (bench/RESULTS.md,
    fifth pass); several GPUs train the compiled layers unrecorded.
    """
    if replays(recipe, world_size) and torch.cuda.is_available():
        return CudaGraphRecorder()
    return None


def layers_compile_key(model: Any, recipe: Recipe, precision: str, world_size: int) -> str:
    """The `webslm.compilecache` key of this run's compiled layers."""
    settings = {name: getattr(recipe, name) for name in (
        "lora_r", "bits", "micro_batch", "max_seq_len", "gradient_checkpointing",
        "activation_budget", "cuda_graphs", "padding_free", "fused_kernels")}
    settings.update(dropout=recipe.lora_dropout > 0, precision=precision, world_size=world_size)
    # torch's version pins Triton's; the base's folder is no part of its shape
    versions = {"torch": torch.__version__,
                "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}
    shape = {k: v for k, v in model.config.to_dict().items() if k != "_name_or_path"}
    return compile_key(shape, settings, versions)


def build_trainer(model: Any, tokenizer: Any, examples: Sequence[TokenizedExample],
                  recipe: Recipe, output_dir: Path, *, precision: str, world_size: int,
                  max_steps: int = -1, logging_steps: int | None = None,
                  callbacks: Sequence[Any] = ()) -> StepTrainer:
    """A trainer for the recipe. The benchmark builds its trainers here too.

    `logging_steps`: None logs as `webslm finetune` does for a run of this length.
    Compiled runs (the long ones) also collate in a data-loader worker and, on padding-free rows
    of a model with a plain LM head, take the loss without host syncs (`StepTrainer`): the
    replayed layers leave the GPU waiting on the CPU otherwise (bench/RESULTS.md, sixth pass).
    """
    micro, accumulation = batch_split(recipe, world_size)
    speed_up(model, recipe, precision)
    on_gpu = precision != "fp32"  # fp32 trains on the CPU (use_cpu below)
    tokens = planned_tokens(recipe, [len(e.input_ids) for e in examples], max_steps)
    key = layers_compile_key(model, recipe, precision, world_size)
    compiled = should_compile(recipe, on_gpu, tokens / world_size, world_size,
                              cached=was_compiled(cache_folder(), key))
    steps = planned_steps(recipe, len(examples), max_steps)
    if compiled:
        keep_inductor_caches(cache_folder())
    config = SFTConfig(
        output_dir=str(output_dir),
        num_train_epochs=recipe.epochs,
        max_steps=max_steps,
        learning_rate=recipe.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=recipe.warmup,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=accumulation,
        max_length=None,
        padding_free=recipe.padding_free,
        packing=False,
        activation_checkpointing=recipe.gradient_checkpointing and not compiled,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=precision == "fp32",
        seed=recipe.seed,
        data_seed=recipe.seed,
        logging_steps=logging_steps or logging_interval(steps, compiled),
        logging_nan_inf_filter=False,  # its isnan() is a host sync per micro batch
        save_strategy="no",
        report_to="none",
        disable_tqdm=False,
        dataloader_drop_last=False,
        dataloader_num_workers=1 if compiled else 0,
        dataloader_persistent_workers=compiled,
        # pinned batches copied without waiting for the GPU (accelerate waits by default)
        dataloader_pin_memory=on_gpu,
        accelerator_config={"non_blocking": on_gpu},
        ddp_find_unused_parameters=False,
    )
    trainer = StepTrainer(
        model=model,
        args=config,
        train_dataset=training_dataset(examples, recipe.assistant_only_loss),
        processing_class=tokenizer,
        peft_config=lora_config(recipe),
        callbacks=[LogLastStep(), *callbacks],
    )
    trainer.compile_key = key if compiled else None
    lm = causal_lm(trainer.model)
    row_loss = compiled and recipe.padding_free and plain_lm_head(lm)
    if row_loss:
        add_row_loss(lm)
    collate = trainer.data_collator
    if compiled:
        recorder = graph_recorder(recipe, world_size)
        if recorder and FUSED_LORA_DROPOUT:
            # here, not at the top: Triton ships with torch's CUDA builds, and this is a GPU path
            from webslm.fusedlora import fuse_lora_dropout
            fuse_lora_dropout(trainer.model)
        # The budget pays only under CUDA graphs (bench/RESULTS.md, fourth pass: unrecorded,
        # the same speed as checkpointing each layer at 3x the memory)
        compile_decoder_layers(trainer.model, recipe.gradient_checkpointing,
                               recipe.activation_budget if recorder else None,
                               replayed=recorder is not None)
        if recorder:
            adapters_take_compute_dtype(trainer.model)
            replay_layers(decoder_stack(trainer.model), recorder)
            collate = BucketedRows(collate, TOKEN_BUCKET, micro,
                                   max(recipe.max_seq_len, TOKEN_BUCKET))
    trainer.data_collator = StepExtras(collate, with_loss_rows=row_loss)
    return trainer


def train_adapter(base: Path, examples: Sequence[TokenizedExample], recipe: Recipe,
                  adapter_out: Path, max_steps: int = -1) -> TrainResult:
    """Train a LoRA adapter on the examples and save it (on the main process) to adapter_out."""
    precision = pick_precision(recipe.precision, torch.cuda.is_available(),
                               torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    set_seed(recipe.seed)
    began = time.perf_counter()
    tokenizer = load_tokenizer(base)
    model = load_base_model(base, precision, recipe)
    loaded = time.perf_counter()
    trainer = build_trainer(model, tokenizer, examples, recipe, adapter_out / "checkpoints",
                            precision=precision, world_size=world_size, max_steps=max_steps)
    trainer.train()
    if trainer.compile_key is not None:
        mark_compiled(cache_folder(), trainer.compile_key)
    if trainer.is_world_process_zero():
        assert isinstance(trainer.model, PeftModel)  # SFTTrainer wraps it (peft_config)
        trainer.model.save_pretrained(str(adapter_out), safe_serialization=True)
        shutil.rmtree(adapter_out / "checkpoints", ignore_errors=True)
    losses = tuple(float(e["loss"]) for e in trainer.state.log_history if "loss" in e)
    return TrainResult(losses=losses, steps=trainer.state.global_step, precision=precision,
                       world_size=world_size, load_seconds=loaded - began,
                       train_seconds=time.perf_counter() - loaded)


def gpu_count() -> int:
    """CUDA GPUs this process can use (0 on a CPU-only machine)."""
    return torch.cuda.device_count()


# --- merging ----------------------------------------------------------------------------------

def _copy_tokenizer_files(source: Path, target: Path) -> None:
    """Copy the base's tokenizer files byte for byte (re-saving could change their format)."""
    for name in (*TOKENIZER_FILES, "generation_config.json"):
        if (source / name).is_file():
            shutil.copyfile(source / name, target / name)


def merge_into(base: Path, adapter: Path, out: Path) -> None:
    """Merge the adapter into the base in fp16 and save a complete model folder into out."""
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float16,
                                                 trust_remote_code=False)
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    merged.config.use_cache = True
    merged.save_pretrained(str(out), safe_serialization=True)
    _copy_tokenizer_files(base, out)
    normalize_path(out)
