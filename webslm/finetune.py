"""`webslm data check`, `webslm finetune` and `webslm merge`: LoRA SFT to a merged checkpoint.

The flow: check the chat data (every problem at once), resolve the base model the way a build
does, train a LoRA adapter with TRL and PEFT on assistant tokens only, merge it into the base in
fp16 and write a model folder that `webslm build` accepts as it is, with `webslm.json` saying
where it came from. The output folder appears whole or not at all.

The training recipe is one frozen dataclass, `Recipe`; the benchmark in bench/ trains with the
same code and the same defaults, so its figures describe what users run. Several GPUs: the
same training script runs data-parallel under torchrun (or `accelerate launch`); the global
batch stays 16 conversations, split across the GPUs, so results do not depend on the count,
unless the user raises it (`--global-batch`), which is what scales (bench/RESULTS.md).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from webslm.chatdata import (
    ChatData,
    TokenizedExample,
    load_tokenizer,
    read_chat_data,
    summary_lines,
    tokenize_all,
)
from webslm.checkout import checkout_path, require
from webslm.errors import BadInput, MissingEnvironment, StageFailed
from webslm.files import atomic_directory, atomic_write_text, canonical_json
from webslm.hubapi import push_folder

TRAIN_SCRIPT = checkout_path("finetune", "train.py")
ADAPTER_DIR = "adapter"
METADATA_FILE = "webslm.json"
PRECISIONS = ("bf16", "fp16", "fp32")
PROBLEMS_SHOWN = 50  # data problems printed; the rest are counted
COMPILE_CHOICES = ("auto", "on", "off")
# Compiling the decoder layers costs ~60 s once per process and saves ~0.2 s per step of 16
# conversations on an H200: "auto" compiles only for runs of at least this many optimizer steps
# (bench/RESULTS.md, issue 16).
COMPILE_MIN_STEPS = 300
COMPILE_BACKEND = "inductor"  # torch.compile's own; the CPU tests swap in "aot_eager" for time


@dataclass(frozen=True)
class Recipe:
    """How a LoRA SFT run trains. Defaults are the known-good recipe for small chat models.

    `micro_batch` conversations go through one forward pass per GPU, flattened into a single
    padding-free row (no pad tokens computed); gradients accumulate up to `global_batch`.
    `fused_kernels` trades speed for memory, not the maths: see `speed_up`.
    `compile_layers` ("auto", "on", "off") compiles each decoder layer, LoRA included, with
    `torch.compile`, checkpointed from outside except every `keep_every`-th layer (0: all
    checkpointed), which keeps its activations: see `compile_decoder_layers`. "auto" compiles
    on a GPU when the run is long enough to repay the compile time. Neither changes the batch,
    the steps or the loss a user gets.
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
    keep_every: int = 0

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Recipe:
        return cls(**data)


@dataclass(frozen=True)
class TrainResult:
    """What a training run did: its logged losses and how much it processed."""

    losses: tuple[float, ...]
    steps: int
    precision: str
    world_size: int


def check_recipe(recipe: Recipe) -> None:
    """Refuse settings that cannot train, before loading anything."""
    if recipe.bits not in (16, 4):
        raise BadInput(f"--bits {recipe.bits} is not supported", "pass 16 (LoRA) or 4 (QLoRA)")
    for name in ("epochs", "learning_rate", "lora_r", "lora_alpha", "max_seq_len", "global_batch"):
        if getattr(recipe, name) <= 0:
            flag = "--" + name.replace("_", "-").replace("learning-rate", "lr")
            raise BadInput(f"{flag} must be positive", f"pass a value above 0 for {flag}")
    if recipe.precision not in ("auto", *PRECISIONS):
        raise BadInput(f"unknown precision {recipe.precision!r}", "use auto, bf16, fp16 or fp32")
    if recipe.compile_layers not in COMPILE_CHOICES:
        raise BadInput(f"unknown compile_layers {recipe.compile_layers!r}", "use auto, on or off")
    if recipe.keep_every < 0:
        raise BadInput("keep_every must not be negative", "pass 0 to checkpoint every layer")


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


def launch_command(gpus: int, base: Path, data: Sequence[Path], adapter_out: Path,
                   recipe: Recipe, python: str = sys.executable) -> list[str]:
    """The torchrun command that trains on `gpus` processes (DDP) with finetune/train.py."""
    return [
        python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
        str(require(TRAIN_SCRIPT)), "--base", str(base), "--adapter-out", str(adapter_out),
        "--recipe", json.dumps(recipe.to_json(), sort_keys=True),
        *[arg for path in data for arg in ("--data", str(path))],
    ]


def checked_data(files: Sequence[Path]) -> ChatData:
    """Read the data; print every problem and raise BadInput (exit 2) when any line is bad."""
    data = read_chat_data(files)
    for warning in data.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if data.problems:
        for problem in data.problems[:PROBLEMS_SHOWN]:
            print(problem, file=sys.stderr)
        hidden = len(data.problems) - PROBLEMS_SHOWN
        if hidden > 0:
            print(f"... and {hidden} more", file=sys.stderr)
        count = len(data.problems)
        raise BadInput(f"{count} problem{'' if count == 1 else 's'} in the chat data",
                       f"fix the {'first ' if hidden > 0 else ''}lines listed above and run "
                       "again")
    return data


def data_check_command(files: list[Path], tokenizer: str | None) -> int:
    data = checked_data(files)
    examples = None
    if tokenizer is not None:
        examples = tokenize_all(load_tokenizer(tokenizer), data, max_len=1 << 30)
    for line in summary_lines(data, examples):
        print(line)
    return 0


# --- training ---------------------------------------------------------------------------------

VARLEN_ATTENTION = "webslm_varlen"
# Causal varlen attention: a window reaching every earlier token and none after (torch >= 2.11).
CAUSAL_WINDOW = (-1, 0)


def varlen_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any,
                     scaling: float | None = None, dropout: float = 0.0,
                     **kwargs: Any) -> tuple[Any, None]:
    """Causal attention within each packed conversation of a padding-free row, never across.

    TRL's padding-free collator flattens a micro batch into one row and passes the boundaries
    (`cu_seq_lens_q`). SDPA would need a dense row-by-row mask (quadratic in the whole row's
    length); this computes only the per-conversation blocks: FlashAttention varlen on a GPU,
    one causal SDPA call per conversation elsewhere.
    """
    import torch
    import torch.nn.functional as F

    bounds = kwargs.get("cu_seq_lens_q")
    if attention_mask is not None or query.shape[0] != 1:
        raise ValueError(f"{VARLEN_ATTENTION} attention serves padding-free rows only")
    if bounds is None:
        bounds = torch.tensor([0, query.shape[2]], dtype=torch.int32)
    q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # (tokens, heads, dim)
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        from torch.nn.attention.varlen import varlen_attn

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
        pieces.append(F.scaled_dot_product_attention(
            query[:, :, start:end], key[:, :, start:end], value[:, :, start:end],
            is_causal=True, scale=scaling, enable_gqa=True))
    return torch.cat(pieces, dim=2).transpose(1, 2).contiguous(), None


def register_varlen_attention() -> str:
    """Make `attn_implementation="webslm_varlen"` known to transformers; return the name."""
    from transformers import AttentionInterface, AttentionMaskInterface
    from transformers.masking_utils import flash_attention_mask

    AttentionInterface.register(VARLEN_ATTENTION, varlen_attention)
    AttentionMaskInterface.register(VARLEN_ATTENTION, flash_attention_mask)
    return VARLEN_ATTENTION


def master_weight_dtype(precision: str):  # noqa: ANN201
    """The dtype the base weights are loaded in: bf16 under bf16; under fp16 mixed precision
    (and fp32) the weights stay fp32 masters and autocast runs the matrix work in fp16."""
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float32, "fp32": torch.float32}[precision]


def attention_for(recipe: Recipe) -> str:
    return register_varlen_attention() if recipe.padding_free else "sdpa"


def load_base_model(path: Path, precision: str, recipe: Recipe):  # noqa: ANN201
    """The base model for training: bf16 weights under bf16, fp32 master weights under fp16."""
    import torch
    from transformers import AutoModelForCausalLM

    bits = recipe.bits
    kwargs: dict[str, Any] = {"dtype": master_weight_dtype(precision),
                              "attn_implementation": attention_for(recipe)}
    if bits == 4:
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as error:
            raise MissingEnvironment("--bits 4 (QLoRA) needs the bitsandbytes package",
                                     "pip install bitsandbytes, or use --bits 16") from error
        if not torch.cuda.is_available():
            raise MissingEnvironment("--bits 4 (QLoRA) needs a CUDA GPU", "use --bits 16 on a CPU")
        from transformers import BitsAndBytesConfig

        compute = torch.bfloat16 if precision == "bf16" else torch.float16
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute)
    return AutoModelForCausalLM.from_pretrained(str(path), trust_remote_code=False, **kwargs)


def lora_config(recipe: Recipe):  # noqa: ANN201
    """LoRA on every linear projection of attention and MLP (PEFT's all-linear skips lm_head)."""
    from peft import LoraConfig

    return LoraConfig(r=recipe.lora_r, lora_alpha=recipe.lora_alpha,
                      lora_dropout=recipe.lora_dropout, target_modules="all-linear",
                      bias="none", task_type="CAUSAL_LM")


def training_dataset(examples: Sequence[TokenizedExample], assistant_only_loss: bool):  # noqa: ANN201
    """A pre-tokenized dataset; TRL turns `assistant_masks` into labels (-100 elsewhere)."""
    from datasets import Dataset

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
    import torch

    if not recipe.fused_kernels or precision != "bf16" or not torch.cuda.is_available():
        return ()
    try:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance
    except ImportError:
        print("note: liger-kernel is not installed; training without fused kernels",
              file=sys.stderr)
        return ()
    # TRL's fused LM head already avoids the full logits; keep the model's own forward
    _apply_liger_kernel_to_instance(model=model, fused_linear_cross_entropy=False,
                                    cross_entropy=False)
    return ("liger",)


def planned_steps(recipe: Recipe, examples: int, max_steps: int = -1) -> int:
    """Optimizer steps the run will take (the Trainer's own count: whole batches per epoch)."""
    if max_steps > 0:
        return max_steps
    return max(1, math.ceil(math.ceil(examples / recipe.global_batch) * recipe.epochs))


def should_compile(recipe: Recipe, cuda: bool, steps: int) -> bool:
    """Compile when asked, or ("auto") on a GPU for runs long enough to repay the compile."""
    if recipe.compile_layers != "auto":
        return recipe.compile_layers == "on"
    return cuda and steps >= COMPILE_MIN_STEPS


def decoder_layers(model: Any) -> list[Any]:
    """The transformer blocks of a (PEFT-wrapped) transformers model, in order."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def compile_decoder_layers(model: Any, checkpointed: bool, keep_every: int = 0) -> int:
    """Compile each decoder layer (LoRA inside it) and checkpoint it from outside; return the count.

    Why: a 0.5B model's step is bound by kernel launches, thousands of small elementwise kernels
    (norms, RoPE, SwiGLU, LoRA's dtype casts and dropout) around the matrix products. Inductor
    fuses them, and all layers share one compiled graph. Transformers' own checkpointing wraps the
    layer's forward, inside the compiled region, which dynamo cannot trace; here the compiled
    forward is checkpointed (non-reentrant) from outside instead; with `keep_every` = k > 0,
    every k-th layer keeps its activations (less recomputation for more memory). The module
    tree, parameter names and saved adapter stay as they were.
    """
    import torch
    from torch.utils.checkpoint import checkpoint

    layers = decoder_layers(model)
    for index, layer in enumerate(layers):
        compiled = torch.compile(layer.forward, backend=COMPILE_BACKEND)
        keeps = keep_every > 0 and index % keep_every == keep_every - 1
        if checkpointed and not keeps:
            layer.forward = functools.partial(checkpoint, compiled, use_reentrant=False)
        else:
            layer.forward = compiled
    return len(layers)


def build_trainer(model: Any, tokenizer: Any, examples: Sequence[TokenizedExample],
                  recipe: Recipe, output_dir: Path, *, precision: str, world_size: int,
                  max_steps: int = -1, callbacks: Sequence[Any] = ()):
    """An SFTTrainer for the recipe. The benchmark builds its trainers here too."""
    from trl import SFTConfig, SFTTrainer

    micro, accumulation = batch_split(recipe, world_size)
    speed_up(model, recipe, precision)
    on_gpu = precision != "fp32"  # fp32 trains on the CPU (use_cpu below)
    compiled = should_compile(recipe, on_gpu, planned_steps(recipe, len(examples), max_steps))
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
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=False,
        dataloader_drop_last=False,
        ddp_find_unused_parameters=False,
    )
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=training_dataset(examples, recipe.assistant_only_loss),
        processing_class=tokenizer,
        peft_config=lora_config(recipe),
        callbacks=list(callbacks),
    )
    if compiled:
        compile_decoder_layers(trainer.model, recipe.gradient_checkpointing, recipe.keep_every)
    return trainer


def train_adapter(base: Path, examples: Sequence[TokenizedExample], recipe: Recipe,
                  adapter_out: Path, max_steps: int = -1) -> TrainResult:
    """Train a LoRA adapter on the examples and save it (on the main process) to adapter_out."""
    import torch
    from transformers import set_seed

    precision = pick_precision(recipe.precision, torch.cuda.is_available(),
                               torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    set_seed(recipe.seed)
    tokenizer = load_tokenizer(base)
    model = load_base_model(base, precision, recipe)
    trainer = build_trainer(model, tokenizer, examples, recipe, adapter_out / "checkpoints",
                            precision=precision, world_size=world_size, max_steps=max_steps)
    trainer.train()
    if trainer.is_world_process_zero():
        trainer.model.save_pretrained(str(adapter_out), safe_serialization=True)
        shutil.rmtree(adapter_out / "checkpoints", ignore_errors=True)
    losses = tuple(float(e["loss"]) for e in trainer.state.log_history if "loss" in e)
    return TrainResult(losses=losses, steps=trainer.state.global_step, precision=precision,
                       world_size=world_size)


# --- merging ----------------------------------------------------------------------------------

def metadata(*, base_model: str, base_revision: str | None, data_digest: str | None,
             system_prompt: str | None, recipe: dict[str, Any]) -> dict[str, Any]:
    """The webslm.json record: what the merged model was made from and how."""
    from webslm import __version__

    return {"base_model": base_model, "base_revision": base_revision,
            "data_digest": data_digest, "system_prompt": system_prompt, "recipe": recipe,
            "webslm_version": __version__}


def _copy_tokenizer_files(source: Path, target: Path) -> None:
    """Copy the base's tokenizer files byte for byte (re-saving could change their format)."""
    from webslm.hub import TOKENIZER_FILES

    for name in (*TOKENIZER_FILES, "generation_config.json"):
        if (source / name).is_file():
            shutil.copyfile(source / name, target / name)


def check_adapter(adapter: Path) -> dict[str, Any]:
    """Refuse an adapter folder that is incomplete or pickled; return its adapter_config."""
    config_path = adapter / "adapter_config.json"
    if not config_path.is_file():
        raise BadInput(f"{adapter} has no adapter_config.json", "point at a saved PEFT adapter")
    if not (adapter / "adapter_model.safetensors").is_file():
        pickled = (adapter / "adapter_model.bin").is_file()
        raise BadInput(f"{adapter} has no adapter_model.safetensors"
                       + (" (only a pickle .bin, which can run code)" if pickled else ""),
                       "save the adapter with safe_serialization=True")
    config: dict[str, Any] = json.loads(config_path.read_text(encoding="utf-8"))
    if config.get("peft_type") != "LORA":
        raise BadInput(f"{adapter} is a {config.get('peft_type')} adapter, not LoRA",
                       "merge a LoRA adapter")
    return config


def merge_into(base: Path, adapter: Path, out: Path) -> None:
    """Merge the adapter into the base in fp16 and save a complete model folder into out."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from webslm.normalize import normalize_path

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float16,
                                                 trust_remote_code=False)
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    merged.config.use_cache = True
    merged.save_pretrained(str(out), safe_serialization=True)
    _copy_tokenizer_files(base, out)
    normalize_path(out)


def _resolve_base(base: str):  # noqa: ANN202
    from webslm.hub import resolve_model
    from webslm.spec import resolve_spec

    return resolve_model(resolve_spec(model=base))


def merge_command(base: str, adapter: Path, out: Path) -> int:
    """Merge an adapter trained anywhere; reuse its training record when webslm trained it."""
    adapter_config = check_adapter(adapter)
    resolved = _resolve_base(base)
    record_path = adapter / METADATA_FILE
    record = json.loads(record_path.read_text(encoding="utf-8")) if record_path.is_file() else {}
    recipe = record.get("recipe") or {k: adapter_config.get(k) for k in (
        "r", "lora_alpha", "lora_dropout", "target_modules")}
    with atomic_directory(out, METADATA_FILE) as staging:
        merge_into(resolved.path, adapter, staging)
        atomic_write_text(staging / METADATA_FILE, canonical_json(metadata(
            base_model=resolved.repo_id or str(resolved.path), base_revision=resolved.revision,
            data_digest=record.get("data_digest"), system_prompt=record.get("system_prompt"),
            recipe=recipe)))
    print(f"merged model written to {out}")
    return 0


# --- the finetune command ---------------------------------------------------------------------

def _train(gpus: int, base: Path, files: Sequence[Path], examples: Sequence[TokenizedExample],
           recipe: Recipe, adapter_out: Path) -> None:
    """Train in this process on one device, or under torchrun on several GPUs."""
    if gpus <= 1:
        result = train_adapter(base, examples, recipe, adapter_out)
        print(f"trained {result.steps} steps ({result.precision}); loss "
              f"{result.losses[0]:.4f} -> {result.losses[-1]:.4f}")
        return
    import torch

    if recipe.global_batch == Recipe.global_batch:
        print(f"note: {gpus} GPUs split the {recipe.global_batch} conversations of each step; at "
              "this batch a small model trains slower on several GPUs than on one (bench/"
              f"RESULTS.md). --global-batch {recipe.global_batch * gpus} keeps "
              f"{recipe.global_batch} per GPU, which scales, with {gpus}x fewer, larger steps.",
              file=sys.stderr)
    if torch.cuda.device_count() < gpus:
        raise MissingEnvironment(f"--gpus {gpus} asks for more GPUs than this machine has "
                                 f"({torch.cuda.device_count()})", "pass a smaller --gpus")
    command = launch_command(gpus, base, files, adapter_out, recipe)
    if subprocess.call(command) != 0:
        raise StageFailed(f"training on {gpus} GPUs failed", "see the output above")


def _push(out: Path, repo: str) -> None:
    print(f"pushed {out} to {push_folder(out, repo)}")


def finetune_command(data: Sequence[Path], base: str, out: Path, recipe: Recipe, *,
                     gpus: int = 1, push: str | None = None) -> int:
    finetune(data, base, out, recipe, gpus=gpus)
    if push:
        _push(out, push)
    return 0


def finetune(files: Sequence[Path], base: str, out: Path, recipe: Recipe, gpus: int = 1) -> None:
    """Check the data, train the adapter, merge: what `webslm finetune` does (the e2e bench too)."""
    check_recipe(recipe)
    if gpus < 1:
        raise BadInput("--gpus must be at least 1", "pass --gpus 1 or more")
    batch_split(recipe, gpus)
    data = checked_data(files)
    resolved = _resolve_base(base)
    examples = tokenize_all(load_tokenizer(resolved.path), data, recipe.max_seq_len)
    for line in summary_lines(data, examples, recipe.max_seq_len):
        print(line)
    if not examples:
        raise BadInput(f"no conversation has an assistant token within {recipe.max_seq_len} "
                       "tokens", "raise --max-seq-len or shorten the conversations")
    with atomic_directory(out, METADATA_FILE) as staging:
        adapter_out = staging / ADAPTER_DIR
        _train(gpus, resolved.path, files, examples, recipe, adapter_out)
        record = metadata(base_model=resolved.repo_id or str(resolved.path),
                          base_revision=resolved.revision, data_digest=data.digest,
                          system_prompt=data.system_prompt,
                          recipe={**recipe.to_json(), "gpus": gpus})
        atomic_write_text(adapter_out / METADATA_FILE, canonical_json(record))
        merge_into(resolved.path, adapter_out, staging)
        atomic_write_text(staging / METADATA_FILE, canonical_json(record))
    print(f"merged model written to {out} (adapter in {out / ADAPTER_DIR})")
